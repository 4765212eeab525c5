"""Maintenance windows as an operator meets them: how many windows an install may wait
through (``FIELDGATE_COMMAND_WINDOWS``), and a status that says which devices wait for one.

End to end on the command line (chat, approvals, worker, status) and the fleet twin of the
sample: HVAC controllers at muc-01 roll out in its Saturday 01:00-05:00 window (Berlin);
and over a real Mosquitto to field agent processes, in a window open now.
"""

from __future__ import annotations

import getpass
import json
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from _edge_support import Mosquitto, wait_until
from _scenario_driver import open_run
from rich.console import Console
from rich.text import Text
from test_ops_freeze_stop import invoke
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.cli._output import console
from fieldgate.cli._status import run_status, status_renderable, window_line
from fieldgate.commands import Action
from fieldgate.config import Config
from fieldgate.edge import DeviceSpec, Gateway, HelloWatcher, LocalFleet
from fieldgate.graphs.compose import build_context, default_twin
from fieldgate.runtime import Settings
from fieldgate.scenario import Fault, FaultKind, Scenario
from fieldgate.store import Store
from fieldgate.transport import MqttTransport
from fieldgate.views import WindowWait

HVAC = "Roll out hvac-controller 2.4.1 to muc-01"
"""24 HVAC controllers at muc-01 in three waves; one safety approval; in maintenance windows."""
SITE, ZONE = "muc-01", "Europe/Berlin"


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables one row to a line, so that a device's state is never folded."""
    monkeypatch.setattr(console, "_width", 200)


def approved_hvac() -> str:
    """The HVAC plan asked for and approved by saf-lee; its plan id (queued)."""
    code, out = invoke("chat", "--as", "eng-ana", "--yes", stdin=HVAC + "\n")
    assert code == 0, out
    with Store.open() as store:
        plan = store.runs.list()[-1].plan_id
    assert invoke("keys", "init", "--as", "saf-lee")[0] == 0
    assert invoke("keys", "enroll", "saf-lee", "--as", getpass.getuser())[0] == 0
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee", "-m", "window checked")
    assert code == 0 and "queued for a worker" in out, out
    return plan


# --------------------------------------------------------------------------- the setting


def test_fieldgate_command_windows_sets_how_many_windows_an_install_may_start_in(
    initialised_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = approved_hvac()
    monkeypatch.setenv("FIELDGATE_COMMAND_WINDOWS", "3")
    # --max-soak gives the worker run limits of its own: the configured count still holds.
    code, out = invoke("worker", "--once", "--max-soak", "600")
    assert code == 0 and f"{plan}: completed" in out, out
    with Store.open() as store:
        installs = [e for e in default_twin(store).effects() if e.action is Action.install]
        (site,) = [s for s in store.fleet.sites() if s.id == SITE]
    assert len(installs) == 24
    for install in installs:
        assert install.windows is not None and len(install.windows) == 3
        assert all(site.in_maintenance(w.opens) for w in install.windows)
        weeks = [b.opens - a.opens for a, b in pairwise(install.windows)]
        assert weeks == [timedelta(days=7)] * 2  # its window and the next two Saturdays'


def test_the_served_graph_reads_the_count_of_windows_from_the_environment(
    sqlite_url: str,
) -> None:
    assert invoke("init", "--db", sqlite_url)[0] == 0
    config = Config.from_env({"FIELDGATE_COMMAND_WINDOWS": "1"})
    with Store.open(sqlite_url) as store:
        assert build_context(config, store).settings.command_windows == 1
        assert build_context(Config(), store).settings.command_windows == 2


@pytest.mark.parametrize("value", ["0", "13", "two", "-1", "²", "2.5"])
def test_a_bad_count_of_windows_is_one_line_naming_the_variable_and_the_rule(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FIELDGATE_COMMAND_WINDOWS", value)
    result = CliRunner().invoke(app, ["worker", "--once"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert f"FIELDGATE_COMMAND_WINDOWS={value!r}" in line
    assert "expected a count of windows from 1 to 12" in line


# --------------------------------------------------------------------------- the status


def test_status_names_the_devices_whose_install_waits_for_their_next_window(
    initialised_db: str,
) -> None:
    """A controller offline through the whole window is back after it closed: its install
    waits for next Saturday's window. The run completed without it; status says so, by
    the device and its site's local time, not as plain pending or unreachable."""
    plan = approved_hvac()
    with Store.open() as store:
        twin = default_twin(store)
        (site,) = [s for s in store.fleet.sites() if s.id == SITE]
        opens = site.next_maintenance(twin.now)
        assert opens is not None
        late = sorted(d.id for d in store.fleet.devices() if d.site == SITE)[-1]
        back = opens + timedelta(hours=5)  # an hour after the window closed
        minutes = int((back - twin.now).total_seconds() // 60)
        twin.add_faults([Fault(kind=FaultKind.offline, devices=[late], duration_minutes=minutes)])
    code, out = invoke("worker", "--once")
    assert code == 0 and f"{plan}: completed" in out, out

    next_week = opens + timedelta(days=7)
    code, out = invoke("status", plan)
    assert code == 0, out
    said = " ".join(out.split())
    local = f"{next_week.astimezone(ZoneInfo(ZONE)):%a %Y-%m-%d} 01:00 CET, {ZONE}"
    assert f"{late}: waiting for its window (opens {local})" in said, out
    assert "1 waiting for a window" in said and "23 applied" in said, out

    code, out = invoke("status", plan, "--json")
    assert code == 0, out
    run = json.loads(out)["runs"][0]
    assert run["states"]["waiting_window"] == 1 and run["states"]["pending"] == 0
    assert run["states"]["unreachable"] == 0
    (wait,) = run["window_waits"]
    assert wait["devices"] == [late] and wait["site"] == SITE and wait["timezone"] == ZONE
    assert wait["opens"].startswith(next_week.strftime("%Y-%m-%dT%H:%M"))
    assert wait["opens_local"].endswith("01:00 CET")
    with Store.open() as store:
        (effect,) = [e for e in default_twin(store).effects() if e.device_id == late]
        assert effect.started_at is None  # the twin's device holds it, as an agent would


@pytest.mark.mqtt
def test_over_mqtt_status_names_the_device_whose_install_waits_for_its_next_window(
    tmp_path: Path,
) -> None:
    """Real agents on a private Mosquitto; one device's agent is down through the run. Its
    install went out in the window open now and is in the gateway's ledger, unanswered:
    while the window is open it is just unreachable; once it closed (status read an hour
    later) the install waits for tomorrow's window, named in Paris time. When the agent
    comes up inside the window it installs, and nothing waits any more."""
    paris = ZoneInfo("Europe/Paris")
    local = datetime.now(paris).replace(second=0, microsecond=0) - timedelta(minutes=10)
    window = f"daily {local:%H:%M}-{local + timedelta(hours=1):%H:%M}"
    broker = Mosquitto(tmp_path / "broker").start()
    settings = Settings(wave_deadline=timedelta(seconds=3), max_soak=timedelta(seconds=1))
    with ExitStack() as stack:
        stack.callback(broker.stop)
        world, orchestrator = stack.enter_context(
            open_run(
                windowed_sensors(window), f"sqlite:///{tmp_path}/control.db", settings=settings
            )
        )
        ids = sorted(d.id for d in world.store.fleet.devices())
        late = ids[-1]
        specs = [
            DeviceSpec(device_id=d, site="lyon-02", installed={"air-quality-model": "1.1.0"})
            for d in ids
        ]

        def agents(devices: list[DeviceSpec]) -> LocalFleet:
            fleet = LocalFleet(
                broker.broker(),
                tmp_path / "agents",
                world.ctx.control_key.public_b64,
                devices,
                log_dir=tmp_path / "logs",
                enroll_in=world.store,
                replace_keys=True,  # the agents stand in for the world's simulated devices
            ).start()
            stack.callback(fleet.stop)
            return fleet

        up = agents([s for s in specs if s.device_id != late])
        watcher = stack.enter_context(HelloWatcher(broker.broker()))
        assert watcher.wait(up.device_ids, timeout=60), "the agents did not come online"
        gateway = Gateway(
            world.store, broker.broker(), control_key=world.ctx.control_key.public_b64
        ).start()
        stack.callback(gateway.close)
        orchestrator.ctx = replace(world.ctx, transport=MqttTransport(gateway))

        view = orchestrator.submit(world.scenario.request, world.scenario.actor, plan_id="pl-w")
        assert view.status == "queued", view.values.get("reasons")
        assert view.values["plan"]["schedule"]["mode"] == "maintenance"
        view = orchestrator.work(view.thread_id)
        assert view.outcome == "completed", view.values.get("reasons")
        assert late not in view.values["execution"]["waves"][0]["devices"]
        run = world.store.runs.for_plan("pl-w")

        now = datetime.now(UTC)
        status = run_status(orchestrator, run, now)
        assert status.window_waits == [] and status.states["unreachable"] == 1
        closed = now + timedelta(hours=1)  # the window closed fifty minutes before
        status = run_status(orchestrator, run, closed)
        assert status.states["waiting_window"] == 1 and status.states["unreachable"] == 0
        (wait,) = status.window_waits
        tomorrow = (local + timedelta(days=1)).strftime("%a %Y-%m-%d %H:%M")
        assert (wait.devices, wait.timezone, wait.opens_local[:20]) == (
            [late],
            "Europe/Paris",
            tomorrow,
        )
        shown = Console(record=True, width=200, color_system=None)
        shown.print(status_renderable(status, closed))
        said = shown.export_text()
        assert f"{late}: waiting for its window (opens {wait.opens_local}, Europe/Paris)" in said

        agents([s for s in specs if s.device_id == late])  # back inside today's window
        wait_until(lambda: not gateway.outstanding(), 30, "the late install answered")
        status = run_status(orchestrator, world.store.runs.for_plan("pl-w"), closed)
        assert status.window_waits == [] and status.states["waiting_window"] == 0
        assert gateway.telemetry(late)["installed"]["air-quality-model"] == "1.2.0"


def windowed_sensors(window: str) -> Scenario:
    """Four env sensors at lyon-02 (Paris), maintained in ``window``; an update in it."""
    return Scenario.model_validate(
        {
            "apiVersion": "fieldgate/v1",
            "kind": "Scenario",
            "id": "ops-windows-mqtt",
            "category": "execution",
            "context": {"now": "2026-11-21T10:00:00Z"},
            "roster": {"eng-ana": ["engineer"]},
            "actor": "eng-ana",
            "fleet": {
                "sites": [
                    {
                        "id": "lyon-02",
                        "region": "eu-west",
                        "kind": "field",
                        "timezone": "Europe/Paris",
                        "maintenance": [window],
                    }
                ],
                "generate": [
                    {
                        "sites": ["lyon-02"],
                        "class": "env-sensor",
                        "per_site": 4,
                        "arch": "armv7",
                        "memory_mb": 256,
                        "installed": {"edge-runtime": "3.4.0", "air-quality-model": "1.1.0"},
                    }
                ],
            },
            "catalog": [
                {
                    "name": "air-quality-model",
                    "version": version,
                    "safety": "low",
                    "device_classes": ["env-sensor"],
                    "arch": ["armv7"],
                    "min_memory_mb": 128,
                    "downgrade_allowed": True,
                }
                for version in ("1.1.0", "1.2.0")
            ],
            "request": "Update air-quality-model to 1.2.0 on lyon-02 during the maintenance window",
            "expect": {"outcome": "completed"},
        }
    )


def test_many_devices_waiting_for_one_window_make_one_line() -> None:
    wait = WindowWait(
        site=SITE,
        timezone=ZONE,
        opens=datetime(2026, 12, 12, 0, 0, tzinfo=UTC),
        opens_local="Sat 2026-12-12 01:00 CET",
        devices=[f"muc-01-hvac-gw-{n:02d}" for n in range(1, 8)],
    )
    line = Text.from_markup(window_line(wait)).plain
    assert line == (
        "  7 devices at muc-01 (muc-01-hvac-gw-01, muc-01-hvac-gw-02, muc-01-hvac-gw-03, "
        "muc-01-hvac-gw-04, muc-01-hvac-gw-05 and 2 more): each waiting for its window "
        "(opens Sat 2026-12-12 01:00 CET, Europe/Berlin)"
    )
