"""Benchmark a whole rollout against fleet size: request -> approvals -> execution on the twin.

Run: ``.venv/bin/python bench/scale.py [--sizes 1000,10000,100000] [--backends sqlite,postgres]``
or ``.venv/bin/python bench/scale.py --devices 10000`` (one size, SQLite, prints ``per device``).

Every device of a 20-site fleet is targeted by one safety-class rollout. The world (catalog,
fleet import, the twin, device key enrolment) is built first, in a process of its own, and
not timed; the orchestrator
time is ``submit`` (intake, planner, validator, policy) plus the approvals plus ``work``
(every wave dispatched to the twin, settled and recorded), less the time spent inside the
twin simulating the devices (running each command, signing each report, the twin's own
store): that is the devices' work, and is printed beside it. The control plane's checks
of every report (signature, addressee, clock) are the orchestrator's, wherever called.
Each size runs in a fresh process, so that its peak RSS is the rollout's. Printed per run:
seconds, milliseconds per device, the policy decision's latency and the size of its input
(summaries: flat in the fleet), and peak RSS; then the growth exponent (slope of log time
against log devices) and the PostgreSQL/SQLite ratio per size, for the orchestrator and
end to end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SITES = 20
SEED = 0
APPROVERS = ("saf-lee", "rm-kim", "cmp-ivo")
PG_DSN = os.environ.get("FIELDGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
GOALS = "goals: 100k on SQLite <= 20 s (0.2 ms/device); PostgreSQL <= 1.5x; exponent <= 1.05"


def scenario_of(devices: int) -> Any:
    """A safety-class rollout to every one of ``devices`` gateways over 20 sites."""
    from fieldgate.scenario import Scenario

    sites = [f"site-{n:02d}" for n in range(SITES)]
    return Scenario.model_validate(
        {
            "apiVersion": "fieldgate/v1",
            "kind": "Scenario",
            "id": f"scale-{devices}",
            "category": "approval",
            "description": "scale benchmark",
            "context": {"now": "2026-11-21T10:00:00Z", "freeze": False},
            "roster": {
                "eng-ana": ["engineer"],
                "saf-lee": ["safety"],
                "rm-kim": ["release-manager"],
                "cmp-ivo": ["compliance"],
            },
            "actor": "eng-ana",
            "fleet": {
                "sites": [
                    {
                        "id": s,
                        "region": "eu-central",
                        "kind": "field",
                        "timezone": "Europe/Berlin",
                        "maintenance": ["Sat 01:00-05:00"],
                    }
                    for s in sites
                ],
                "generate": [
                    {
                        "sites": sites,
                        "class": "hvac-gw",
                        "per_site": devices // SITES,
                        "arch": "arm64",
                        "memory_mb": 1024,
                        "installed": {"edge-runtime": "3.2.0", "hvac-controller": "2.3.4"},
                    }
                ],
            },
            "catalog": [
                {
                    "name": "hvac-controller",
                    "version": v,
                    "safety": "high",
                    "device_classes": ["hvac-gw"],
                    "arch": ["arm64"],
                    "min_memory_mb": 512,
                    "requires": [{"module": "edge-runtime", "range": ">=3.0,<4"}],
                    "signed": True,
                }
                for v in ("2.3.4", "2.4.1")
            ],
            "request": "Roll out hvac-controller 2.4.1 to all hvac gateways in eu-central",
            "approvals": [],
            "expect": {},
        }
    )


@contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh database URL: a temporary SQLite file, or a PostgreSQL schema dropped after."""
    if backend == "sqlite":
        workdir = Path(tempfile.mkdtemp(prefix="fg-bench-scale-"))
        yield f"sqlite:///{workdir}/fieldgate.db"
        return
    import psycopg

    schema = "fgscale_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


CRYPTO_CPU = {"sign": 0.0, "device_sign": 0.0, "verify": 0.0}
"""Process CPU seconds in ed25519: the control plane signing commands, the simulated
devices signing their reports, and the control plane verifying them."""

DEVICE_SIDE = {"wall": 0.0, "cpu": 0.0}
"""Seconds spent simulating the devices: inside the fleet twin (delivering, running and
reporting commands, the devices' signatures, the twin's own store), not counting the
control plane's checks of each report that the twin calls back into."""
_SIDE: list[str] = []
_SIDE_STARTED = [0.0, 0.0]


def _switch(to: str | None) -> None:
    """Charge the time since the last switch to the side on top, then put ``to`` on top."""
    now = (time.perf_counter(), time.process_time())
    if _SIDE and _SIDE[-1] == "devices":
        DEVICE_SIDE["wall"] += now[0] - _SIDE_STARTED[0]
        DEVICE_SIDE["cpu"] += now[1] - _SIDE_STARTED[1]
    _SIDE_STARTED[:] = now
    if to is None:
        _SIDE.pop()
    else:
        _SIDE.append(to)


def time_device_side() -> None:
    """Time the twin's calls as the devices' side, the transport's report checks inside
    them as the control plane's (the calls themselves are not changed)."""
    from fieldgate.transport import TwinTransport
    from fieldgate.twin import FleetTwin

    def on(side: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _switch(side)
            try:
                return function(*args, **kwargs)
            finally:
                _switch(None)

        return wrapper

    for name in ("dispatch", "advance", "advance_while", "settle"):
        setattr(FleetTwin, name, on("devices", getattr(FleetTwin, name)))
    TwinTransport._trusted = on("control plane", TwinTransport._trusted)  # type: ignore[method-assign]


def time_crypto() -> None:
    """Count the CPU time of every signature made and checked (the checks are not changed)."""
    import fieldgate.signing as signing
    from fieldgate.twin._keys import TwinKeys

    def timed(kind: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                CRYPTO_CPU[kind] += time.process_time() - began

        return wrapper

    signing._verifies = timed("verify", signing._verifies)
    signing.SigningKey.sign = timed("sign", signing.SigningKey.sign)  # type: ignore[method-assign]
    TwinKeys.sign = timed("device_sign", TwinKeys.sign)  # type: ignore[method-assign]


def build(devices: int, url: str) -> float:
    """Build the world of ``devices`` on ``url`` (catalog, fleet, twin, keys); seconds taken."""
    from fieldgate.agents.offline import OfflineChatModel
    from fieldgate.evals._world import build_world
    from fieldgate.policy import RegoEngine

    began = time.perf_counter()
    world = build_world(scenario_of(devices), url, SEED, OfflineChatModel(), RegoEngine())
    world.store.close()
    return time.perf_counter() - began


def one_run(devices: int, url: str) -> dict[str, Any]:
    """Reopen the world ``build`` made on ``url`` (in another process, so this process's
    peak RSS is the rollout's), then time request -> approvals -> execution."""
    time_crypto()
    time_device_side()
    from fieldgate.agents.offline import OfflineChatModel
    from fieldgate.audit import EventKind
    from fieldgate.evals._world import scenario_context, twin_id_of
    from fieldgate.graphs.checkpoint import open_checkpointer
    from fieldgate.graphs.runner import Orchestrator
    from fieldgate.policy import RegoEngine
    from fieldgate.signing import SigningKey
    from fieldgate.store import Store
    from fieldgate.transport import TwinTransport
    from fieldgate.twin import FleetTwin

    class MeasuredEngine(RegoEngine):
        """The in-process engine, recording the size of every input it decides on."""

        sizes: list[tuple[str, int]] = []

        def decide(self, path: str, document: Any) -> Any:
            self.sizes.append((path.rsplit("/", 1)[-1], len(json.dumps(document, default=str))))
            return super().decide(path, document)

    scenario = scenario_of(devices)
    engine = MeasuredEngine()
    began = time.perf_counter()
    store = Store.open(url)
    twin = FleetTwin.load(store.engine, twin_id_of(scenario, SEED))
    ctx = scenario_context(scenario, SEED, store, TwinTransport(twin), OfflineChatModel(), engine)
    # The approvers' keys build_world enrolled (derived from the scenario and the seed).
    keys = {
        person: SigningKey.from_seed(person, f"{scenario.id}:{SEED}:{person}".encode())
        for person in APPROVERS
    }
    with store, open_checkpointer(url) as checkpointer:
        orch = Orchestrator(ctx, checkpointer)
        setup = time.perf_counter() - began
        began, cpu = time.perf_counter(), time.process_time()
        crypto_before, devices_before = dict(CRYPTO_CPU), dict(DEVICE_SIDE)
        view = orch.submit(scenario.request, scenario.actor, plan_id="scale")
        planned = time.perf_counter() - began
        for person in APPROVERS:
            if view.status == "awaiting_approval":
                view = orch.decide(view.thread_id, keys[person], "approve", "bench")
        view = orch.work(view.thread_id)
        seconds = time.perf_counter() - began
        cpu = time.process_time() - cpu
        crypto = {k: CRYPTO_CPU[k] - crypto_before[k] for k in CRYPTO_CPU}
        device_side = {k: DEVICE_SIDE[k] - devices_before[k] for k in DEVICE_SIDE}
        decisions = [
            e.payload
            for e in store.audit.events(plan_id="scale", kinds=[EventKind.policy_decision])
        ]
        versions: dict[str, int] = {}
        for device in store.fleet.devices():
            v = device.installed.get("hvac-controller", "-")
            versions[v] = versions.get(v, 0) + 1
    return {
        "devices": devices,
        "backend": "postgres" if url.startswith("postgresql") else "sqlite",
        "setup": setup,
        "planning": planned,
        "seconds": seconds,
        "cpu": cpu,
        "crypto": crypto,
        "device_side": device_side,
        "orchestrator": seconds - device_side["wall"],
        "orchestrator_cpu": cpu - device_side["cpu"],
        "outcome": view.outcome,
        "installed": versions,
        "policy_ms": [round(d.get("latency_ms", 0.0), 2) for d in decisions],
        "policy_input_chars": sorted(set(MeasuredEngine.sizes)),
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(devices: int, backend: str) -> dict[str, Any]:
    """Build one size's world in a process, then run it in a fresh one (its own peak RSS)."""
    with database(backend) as url:
        for argv in (["--build", str(devices)], ["--child", str(devices)]):
            out = subprocess.run(
                [sys.executable, __file__, *argv, "--url", url],
                check=True,
                capture_output=True,
                text=True,
            )
        run: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return run


def show(run: dict[str, Any]) -> None:
    n = run["devices"]
    per = run["seconds"] / n * 1000
    print(
        f"  {run['backend']:<8} {n:>7} devices: {run['seconds']:8.2f} s "
        f"({run['cpu']:.2f} s CPU; planning {run['planning']:.2f} s), {per:.3f} ms/device "
        f"({run['cpu'] / n * 1000:.3f} CPU), peak RSS "
        f"{run['rss_mib']:.0f} MiB, reopening the world {run['setup']:.1f} s (not timed), outcome "
        f"{run['outcome']}, installed {run['installed']}"
    )
    side = run["device_side"]
    print(
        f"           orchestrator {run['orchestrator']:.2f} s ({run['orchestrator_cpu']:.2f} s "
        f"CPU), {run['orchestrator'] / n * 1000:.3f} ms/device; the simulated devices "
        f"(inside the twin) {side['wall']:.2f} s ({side['cpu']:.2f} s CPU)"
    )
    crypto = run["crypto"]
    ours = crypto["sign"] + crypto["verify"]
    print(
        f"           ed25519: control plane signing {crypto['sign']:.2f} s + verifying "
        f"{crypto['verify']:.2f} s CPU = {ours * 1000 / n:.3f} ms/device "
        f"({ours / run['orchestrator_cpu']:.0%} of the orchestrator's CPU); devices signing "
        f"{crypto['device_sign']:.2f} s"
    )
    print(f"           policy decisions {run['policy_ms']} ms")
    sizes = ", ".join(f"{name} {chars}" for name, chars in run["policy_input_chars"])
    print(f"           policy input chars (summaries: flat in the fleet): {sizes}")


def exponent(runs: list[dict[str, Any]], key: str = "seconds") -> float | None:
    """The least-squares slope of log(``key``: seconds or cpu) against log(devices)."""
    if len(runs) < 2:
        return None
    xs = [math.log(r["devices"]) for r in runs]
    ys = [math.log(r[key]) for r in runs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, help="one size on SQLite; prints per device")
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated sizes")
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--build", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        print(json.dumps({"built": build(args.build, args.url)}))
        return 0
    if args.child:
        print(json.dumps(one_run(args.child, args.url)))
        return 0
    if args.devices:
        run = child(args.devices, "sqlite")
        show(run)
        print(f"per device: {run['orchestrator'] / run['devices'] * 1000:.3f} ms (orchestrator)")
        end_to_end = run["seconds"] / run["devices"] * 1000
        print(f"per device (end to end, with the simulated devices): {end_to_end:.3f} ms")
        print(f"per device (process CPU): {run['cpu'] / run['devices'] * 1000:.3f} ms")
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    results: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    print(f"request -> approvals -> execution, {SITES} sites, every device targeted")
    for size in sizes:
        for backend in backends:
            run = child(size, backend)
            results[backend].append(run)
            show(run)
            sys.stdout.flush()
    for backend, runs in results.items():
        k, k_cpu, k_ours = exponent(runs), exponent(runs, "cpu"), exponent(runs, "orchestrator")
        if k is not None and k_cpu is not None and k_ours is not None:
            print(
                f"  growth exponent {backend}: {k_ours:.3f} orchestrator, {k:.3f} end to end, "
                f"{k_cpu:.3f} process CPU"
            )
    if "sqlite" in results and "postgres" in results:
        for s, p in zip(results["sqlite"], results["postgres"], strict=True):
            print(
                f"  {s['devices']:>7} devices: PostgreSQL/SQLite "
                f"{p['orchestrator'] / s['orchestrator']:.2f}x orchestrator, "
                f"{p['seconds'] / s['seconds']:.2f}x end to end"
            )
    print(f"  {GOALS}; peak RSS <= 400 MiB at 100k")
    return 0


if __name__ == "__main__":
    sys.exit(main())
