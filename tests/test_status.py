"""``fieldgate status``: a run followed from another terminal while a worker executes it.

The worker and the watcher are two orchestrators on one database, as two processes
would be; the worker is driven one graph step at a time on the fleet twin, and the watch
view is rendered to a recording console. Nothing is mocked: the twin transport is only
watched (at a soak, status is read from the other orchestrator before time passes).
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from rich.console import Console
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.cli._output import console
from fieldgate.cli._status import status_renderable, status_report, watch
from fieldgate.commands import DeviceReport
from fieldgate.graphs.compose import open_orchestrator
from fieldgate.graphs.runner import Orchestrator
from fieldgate.store import Store
from fieldgate.transport import TwinTransport
from fieldgate.twin import FleetTwin

runner = CliRunner()

PUMP = "roll out pump-logic 1.9.0 to rtm-05"
HVAC = "Roll out hvac-controller 2.4.1 to muc-01"
ATTACK = "\x1b[2J\x1b]0;owned\x07 \x9b31m \u202eevil\u202c [red]boom[/red] [link=http://x]y[/link]"
CURSOR = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
"""What rich Live writes to redraw a frame in place."""
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=stdin, catch_exceptions=False)
    return result.exit_code, result.output


def ask(request: str) -> str:
    code, out = invoke("chat", "--as", "eng-ana", "--yes", stdin=request + "\n")
    assert code == 0, out
    with Store.open() as store:
        return store.runs.list()[-1].plan_id


def recording() -> Console:
    return Console(record=True, width=140, force_terminal=True, color_system=None)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "_width", 200)


class _Watched(TwinTransport):
    """The twin, with a look from the other terminal each time the executor soaks."""

    def __init__(self, twin: FleetTwin, watcher: Orchestrator, plan_id: str) -> None:
        super().__init__(twin)
        self.watcher, self.plan_id = watcher, plan_id
        self.soaks: list[Any] = []
        """(status report, its rendering) at the start of each soak."""

    def sleep_until(self, until: datetime) -> list[DeviceReport]:
        report = status_report(self.watcher, self.plan_id, self.now())
        if any(w.kind == "soak" for w in report.runs[0].waiting):
            shown = recording()
            shown.print(status_renderable(report.runs[0], report.at))
            self.soaks.append((report, shown.export_text()))
        return super().sleep_until(until)


@pytest.fixture
def two_terminals(initialised_db: str) -> Iterator[tuple[str, Orchestrator, _Watched]]:
    """A queued pump-logic run; the worker's orchestrator on a watched twin, and another's."""
    plan = ask(PUMP)
    with open_orchestrator() as watcher, open_orchestrator() as worker:
        transport = worker.ctx.transport
        assert isinstance(transport, TwinTransport)
        watched = _Watched(transport.twin, watcher, plan)
        checkpointer = worker.graph.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        ctx = dataclasses.replace(worker.ctx, transport=watched)
        yield plan, Orchestrator(ctx, checkpointer), watched


def steps(worker: Orchestrator, plan: str) -> Iterator[str]:
    """Run the worker's graph one node at a time; yield each node's name."""
    stream = worker.graph.stream(
        None,
        worker.config(plan),
        context=worker.ctx,
        durability="sync",
        stream_mode="updates",
    )
    for chunk in stream:
        yield from chunk


def test_watch_follows_a_run_on_the_twin_step_by_step_until_it_completes(
    two_terminals: tuple[str, Orchestrator, _Watched],
) -> None:
    plan, worker, watched = two_terminals
    twin = watched.twin
    driven = steps(worker, plan)
    frames: list[str] = []

    def one_step(_: float) -> None:  # between two polls of the store, the worker moves
        frames.append(next(driven))

    shown = recording()
    with open_orchestrator() as watcher:
        final = watch(watcher, plan, 0.5, target=shown, clock=lambda: twin.now, sleep=one_step)
    out = CURSOR.sub("", shown.export_text())

    run = final.runs[0]
    assert run.outcome == "completed" and run.settled
    assert run.states["applied"] == 60 and run.states["pending"] == 0
    assert frames.count("executor") >= 3  # polled between the executor's steps
    # Frame by frame: queued, then the canary passed with the rest pending, then done.
    assert "waiting for: approved, queued for a worker" in out
    assert re.search(r"1 canary\s+passed\s+3: 3 applied\s", out), out
    assert re.search(r"2 wave-2\s+pending\s+12: 12 pending", out), out
    assert re.search(r"3 wave-3\s+passed\s+45: 45 applied", out), out
    assert f"{plan}: completed" in out
    assert (
        out.index("queued for a worker") < out.index("3: 3 applied") < out.index("45: 45 applied")
    )
    assert out.rstrip().endswith("settled")


def test_status_from_another_terminal_shows_the_soak_time_remaining(
    two_terminals: tuple[str, Orchestrator, _Watched],
) -> None:
    plan, worker, watched = two_terminals
    view = worker.work(plan)
    assert view.outcome == "completed"

    assert len(watched.soaks) == 3  # one soak a wave, each seen while it lasted
    report, text = watched.soaks[0]
    run = report.runs[0]
    [waiting] = run.waiting
    assert waiting.kind == "soak" and not waiting.people and not run.settled
    canary = run.waves[0]
    assert canary.status == "soaking" and canary.soak_minutes == 30
    assert canary.soak_remaining_seconds == 30 * 60
    assert canary.states["applied"] == 3  # reported before the checkpoint moved
    assert waiting.until == canary.soak_until
    assert "30m left of 30 min" in text
    assert "waiting for: wave 1 soaks (until" in text and "in 30m" in text
    second, text = watched.soaks[1]
    assert second.runs[0].waves[0].status == "passed"
    assert second.runs[0].waves[1].soak_remaining_seconds == 15 * 60
    assert "15m left of 15 min" in text
    # Once the run moved on, nothing says it soaks.
    with Store.open() as store:
        assert store.runs.for_plan(plan).detail["waiting"] is None
    code, out = invoke("status", plan)
    assert code == 0 and "left of" not in out and "soaks" not in out


def test_status_of_a_held_run_names_the_kill_switch_and_what_lifts_it(
    initialised_db: str,
) -> None:
    plan = ask(PUMP)
    code, out = invoke(
        "stop", plan, "--reason", f"smoke at the pump house {ATTACK}", "--as", "op-ola"
    )
    assert code == 0, out
    code, out = invoke("status", plan)
    assert code == 0, out
    assert f"{plan}: queued" in out
    assert "waiting for: held by the kill switch: kill switch for plan" in out
    assert "smoke at the pump house" in out
    assert f"fieldgate stop --release {plan}" in out
    assert RAW.search(out) is None and "␛[2J" in out and "[red]boom[/red]" in out
    assert invoke("worker", "--once")[0] == 0
    code, out = invoke("status", plan)
    assert f"{plan}: held" in out and "waiting for: held by the kill switch" in out
    code, out = invoke("status", plan, "--watch", "--interval", "0.2")  # settled: returns
    assert code == 0 and "held by the kill switch" in out and "settled" in out


def test_status_of_a_frozen_run_names_the_change_freeze(initialised_db: str) -> None:
    plan = ask(PUMP)
    code, out = invoke("freeze", "on", "--reason", "storm season", "--as", "saf-lee")
    assert code == 0, out
    code, out = invoke("status", plan)
    assert code == 0, out
    assert "change freeze in force" in out
    assert "waiting for: held by the change freeze" in out and "storm season" in out
    assert "fieldgate freeze off" in out


def test_status_lists_the_active_runs_and_what_each_waits_for(initialised_db: str) -> None:
    queued = ask(PUMP)
    waiting = ask(f"{HVAC} {ATTACK}")
    code, out = invoke("status")
    assert code == 0, out
    assert out.index(queued) < out.index(waiting)
    assert "waiting for: approved, queued for a worker" in out
    assert "waiting for: approvals from 1× safety (until" in out
    assert f"approvers: `fieldgate approvals show {waiting}`" in out
    # The hostile request is shown inert in the headline and the events.
    assert RAW.search(out) is None
    assert "␛[2J␛]0;owned␇ <U+009B>31m <U+202E>evil<U+202C> [red]boom[/red]" in out
    assert "[link=http://x]y[/link]" in out
    assert invoke("worker", "--once")[0] == 0
    code, out = invoke("status")
    assert queued not in out and waiting in out


def test_chat_status_shares_the_renderer(initialised_db: str) -> None:
    plan = ask(PUMP)
    assert invoke("worker", "--once")[0] == 0
    code, out = invoke("chat", "--as", "eng-ana", stdin=f"/status {plan}\n")
    assert code == 0, out
    assert re.search(r"1 canary\s+passed\s+3: 3 applied", out), out
    assert "last events" in out and "outcome completed" in out
    assert f"{plan}: completed" in out


def test_watch_of_a_run_waiting_for_people_returns_at_once(initialised_db: str) -> None:
    plan = ask(HVAC)
    shown = recording()
    with open_orchestrator() as watcher:

        def never(_: float) -> None:
            raise AssertionError("a run waiting for approvals does not need polling")

        final = watch(watcher, plan, 1.0, target=shown, sleep=never)
    assert final.runs[0].settled and final.runs[0].waiting[0].kind == "approvals"
    assert "waiting for: approvals from 1× safety" in shown.export_text()


@pytest.mark.mqtt
def test_status_follows_a_soak_over_mqtt_from_another_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _edge_support import clear_retained, shared_broker

    from fieldgate.cli._edge import edge_demo
    from fieldgate.plan import Selector

    broker = shared_broker()
    db = f"sqlite:///{tmp_path}/control.db"
    monkeypatch.setenv("FIELDGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FIELDGATE_DB", db)
    for name in ("FIELDGATE_ROSTER", "FIELDGATE_FREEZE", "FIELDGATE_MODEL", "FIELDGATE_USER"):
        monkeypatch.delenv(name, raising=False)
    assert invoke("init")[0] == 0
    seen: list[Any] = []
    ended: list[Any] = []
    with (
        edge_demo(
            db, tmp_path / "agents", broker=broker, selector=Selector(sites=["lyon-02"])
        ) as opener,
        opener(db, "offline") as worker,
        open_orchestrator(db) as watcher,  # the other terminal: its own store and twin
    ):
        view = worker.submit("Update air-quality-model to 1.2.0 at lyon-02", "eng-ana")
        assert view.status == "queued", view.values.get("reasons")
        working = threading.Thread(target=lambda: ended.append(worker.work(view.thread_id)))
        working.start()
        while working.is_alive():
            seen.append(status_report(watcher, view.plan_id))
            time.sleep(0.2)
        working.join()
        final = status_report(watcher, view.plan_id).runs[0]
    clear_retained(broker)
    assert ended and ended[0].outcome == "completed", ended and ended[0].values.get("reasons")
    soaking = [r for r in seen if r.runs[0].waiting and r.runs[0].waiting[0].kind == "soak"]
    assert soaking, [r.runs[0].waiting for r in seen]
    run, at = soaking[0].runs[0], soaking[0].at
    wave = next(w for w in run.waves if w.status == "soaking")
    assert wave.soak_remaining_seconds is not None and 0 < wave.soak_remaining_seconds <= 2
    assert wave.states["applied"] == wave.devices  # the reports, before the checkpoint moved
    shown = recording()
    shown.print(status_renderable(run, at))
    assert re.search(r"soaking .* [0-2]s left of \d+ min", shown.export_text()), shown.export_text()
    assert final.outcome == "completed" and final.states["applied"] == 20
