"""``python -m fieldgate.edge --spec FILE``: the agent process :class:`LocalFleet` starts.

``--print-key`` provisions the spec's device states instead (each device's key is made
then) and prints one line per device, ``DEVICE PUBLIC-KEY``, for ``fieldgate fleet enroll``.

People start agents with ``fieldgate agent``; supervisors (``fieldgate fleet up``,
tests, benchmarks) write an :class:`AgentSpec` and start this lighter entry point,
which loads neither the command line nor the agents' graph.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fieldgate.config import Config
from fieldgate.edge._agent import AgentSpec, open_agents, run_agents
from fieldgate.errors import FieldgateError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the devices of one spec file until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m fieldgate.edge")
    parser.add_argument("--spec", required=True, type=Path, help="AgentSpec JSON file")
    parser.add_argument(
        "--print-key",
        action="store_true",
        help="print each device's public key (DEVICE KEY lines) and exit",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    spec = AgentSpec.model_validate_json(args.spec.read_text())
    try:
        password = Config.from_env().mqtt_password
        if password:
            spec = spec.model_copy(update={"broker": replace(spec.broker, password=password)})
        agents = open_agents(spec)
    except FieldgateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.print_key:
        for agent in agents:
            print(agent.device_id, agent.device.store.public_key)
            agent.device.store.close()
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_agents(agents, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
