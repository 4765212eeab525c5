"""``fieldgate agent`` and ``fieldgate fleet up`` as an operator runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _edge_support import (
    CONTROL,
    clear_retained,
    command,
    enroll,
    shared_broker,
    state_key,
    wait_until,
)
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.commands import ReportStatus
from fieldgate.edge import Broker, Gateway, HelloWatcher
from fieldgate.fleet import FleetInventory
from fieldgate.store import Store

SITE = "osl-01"


def fieldgate(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fieldgate.cli import main; main()", *args]


def broker_args(broker: Broker) -> list[str]:
    return ["--broker", broker.url, "--topic-root", broker.topic_root]


def test_an_agent_refuses_to_start_without_an_explicit_control_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FIELDGATE_CONTROL_KEY", raising=False)
    result = CliRunner().invoke(
        app, ["agent", "--device-id", "osl-01-dev-01", "--state", str(tmp_path), "--site", SITE]
    )
    assert result.exit_code == 2
    assert "never trusted on first use" in result.output
    result = CliRunner().invoke(
        app,
        ["agent", "--device-id", "d1", "--state", str(tmp_path), "--control-key", "not-a-key"],
    )
    assert result.exit_code == 2
    assert "not a base64 ed25519 public key" in result.output


@pytest.mark.mqtt
def test_fieldgate_agent_applies_a_command_and_stops_cleanly(tmp_path: Path) -> None:
    broker = shared_broker()
    device = "osl-01-env-sensor-01"
    inventory = FleetInventory.model_validate(
        {
            "sites": [{"id": SITE, "region": "eu-north", "timezone": "Europe/Oslo"}],
            "devices": [
                {
                    "id": device,
                    "site": SITE,
                    "class": "env-sensor",
                    "arch": "armv7",
                    "memory_mb": 256,
                    "installed": {"air-quality-model": "1.1.0"},
                },
            ],
        }
    )
    env = dict(os.environ, FIELDGATE_CONTROL_KEY=CONTROL.public_b64)
    agent = subprocess.Popen(
        fieldgate(
            "agent",
            "--device-id",
            device,
            "--state",
            str(tmp_path / "state"),
            "--site",
            SITE,
            "--install",
            "air-quality-model=1.1.0",
            *broker_args(broker),
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with Store.open(f"sqlite:///{tmp_path}/control.db") as store, HelloWatcher(broker) as w:
            store.fleet.import_inventory(inventory, source="test", actor="test")
            assert w.wait([device], timeout=30), "the agent did not come online"
            enroll(store, {device: state_key(tmp_path / "state", device)})
            cmd = command(device, "air-quality-model", "1.2.0", plan_id="pl-cli")
            with Gateway(
                store, broker, control_key=CONTROL.public_b64, client_id=broker.topic_root
            ) as gateway:
                gateway.send([cmd])
                reports = gateway.collect({cmd.command_id}, 20)
                assert [r.status for r in reports] == [ReportStatus.applied]
                assert store.fleet.device(device).installed["air-quality-model"] == "1.2.0"
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=15) == 0
            assert w.wait([device], online=False, timeout=10), "no goodbye"
    finally:
        if agent.poll() is None:
            agent.kill()
    clear_retained(broker)
    output = agent.communicate()[0].decode()
    assert "obeying control key ed25519:" in output and "agent: stopped" in output


@pytest.mark.mqtt
def test_fleet_up_runs_the_fleet_and_restarts_crashed_agents(tmp_path: Path) -> None:
    broker = shared_broker()
    db = f"sqlite:///{tmp_path}/control.db"
    env = dict(os.environ, FIELDGATE_HOME=str(tmp_path / "home"), FIELDGATE_DB=db)
    env.pop("FIELDGATE_CONTROL_KEY", None)
    seeded = subprocess.run(
        fieldgate("fleet", "seed", "--sites", "2", "--devices-per-site", "3"),
        env=env,
        capture_output=True,
        check=False,
    )
    assert seeded.returncode == 0, seeded.stderr.decode()
    with Store.open(db) as store:
        devices = [d.id for d in store.fleet.devices()][:5]
    up = subprocess.Popen(
        fieldgate(
            "fleet",
            "up",
            "--devices",
            "5",
            "--per-process",
            "2",
            "--state",
            str(tmp_path / "agents"),
            *broker_args(broker),
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with HelloWatcher(broker) as watcher:
            assert watcher.wait(devices, timeout=60), "the fleet did not come online"
            # Kill one agent process the hard way: the supervisor starts it again.
            spec = sorted((tmp_path / "agents").glob("agents-*.json"))[0]
            victims = _pids_running(spec)
            assert victims
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: _pids_running(spec) not in ([], victims), 30, "a restart")
            assert watcher.wait(devices, timeout=30)
            up.send_signal(signal.SIGINT)
            assert up.wait(timeout=30) == 0
            assert watcher.wait(devices, online=False, timeout=15)
    finally:
        if up.poll() is None:
            up.kill()
    clear_retained(broker)
    output = up.communicate()[0].decode()
    assert "5 devices in 3 processes" in output
    assert "agent process 0 ended; starting it again" in output
    assert "fleet up: stopped" in output


def _pids_running(spec: Path) -> list[int]:
    """Pids of agent processes started with ``spec``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(spec).encode() in cmdline and b"fieldgate.edge" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


@pytest.mark.mqtt
def test_open_mqtt_orchestrator_runs_the_graph_over_the_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldgate.cli._edge import open_mqtt_orchestrator
    from fieldgate.edge import BrokerUnreachable

    broker = shared_broker()
    db = f"sqlite:///{tmp_path}/control.db"
    monkeypatch.setenv("FIELDGATE_HOME", str(tmp_path / "home"))
    assert CliRunner().invoke(app, ["init", "--db", db]).exit_code == 0
    with open_mqtt_orchestrator(db, "offline", broker=broker) as orchestrator:
        transport = orchestrator.ctx.transport
        assert transport.name == "mqtt" and transport.records_installed
        gateway = transport.gateway  # type: ignore[attr-defined]
        assert gateway.connected
        assert gateway.control_key == orchestrator.ctx.control_key.public_b64
    nowhere = Broker(host="127.0.0.1", port=1, reconnect_max=1)
    with (
        pytest.raises(BrokerUnreachable),
        open_mqtt_orchestrator(db, "offline", broker=nowhere, connect_timeout=1),
    ):
        pass


@pytest.mark.mqtt
def test_edge_demo_rolls_a_failed_canary_back_on_real_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldgate.cli._edge import edge_demo
    from fieldgate.plan import Selector

    broker = shared_broker()
    db = f"sqlite:///{tmp_path}/control.db"
    monkeypatch.setenv("FIELDGATE_HOME", str(tmp_path / "home"))
    for name in ("FIELDGATE_ROSTER", "FIELDGATE_FREEZE", "FIELDGATE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert CliRunner().invoke(app, ["init", "--db", db]).exit_code == 0
    with Store.open(db) as store:
        sensors = [d.id for d in store.fleet.devices(Selector(sites=["lyon-02"]))]
    failing = {d: ["air-quality-model@1.2.0"] for d in sensors}
    with (
        edge_demo(
            db,
            tmp_path / "agents",
            broker=broker,
            selector=Selector(sites=["lyon-02"]),
            fail_installs=failing,
        ) as opener,
        opener(db, "offline") as orchestrator,
    ):
        view = orchestrator.submit("Update air-quality-model to 1.2.0 at lyon-02", "eng-ana")
        assert view.status == "queued", view.values.get("reasons")
        view = orchestrator.work(view.thread_id)
        assert view.outcome == "rolled_back", view.values.get("reasons")
        versions = orchestrator.ctx.store.fleet.summary().installed["air-quality-model"]
    clear_retained(broker)
    assert versions.get("1.2.0", 0) == 0
