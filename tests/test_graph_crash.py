"""A worker killed with SIGKILL between waves, then started again, finishes the rollout
without any command taking effect twice, and the audit chain still verifies.

The world is built here; the worker is a separate process (``_scenario_driver.py
worker``) that reopens it over the same SQLite database and checkpoint file. It parks
at a chosen point so that the kill lands there every time; the test sees from the
database that it got there, then kills it.

Two more tests crash the worker in-process right after commands went out (before any
report): the resumed wave or rollback must wait for those commands, not judge without them.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from _scenario_driver import (
    WorkerCommand,
    expect_failures,
    load,
    multi_wave,
    open_run,
    reopen_world,
    submit,
    variant,
)
from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy import func, select
from sqlmodel import col

from fieldgate.agents.planner import PlanDraft
from fieldgate.audit import EventKind
from fieldgate.commands import Action, DeviceCommand
from fieldgate.evals._world import open_run as open_world_run
from fieldgate.graphs.checkpoint import open_checkpointer
from fieldgate.graphs.runner import Orchestrator, RunView
from fieldgate.plan import RolloutPlan
from fieldgate.policy import PolicyPack, RegoEngine
from fieldgate.store import Store
from fieldgate.transport import Dispatched, TwinTransport
from fieldgate.twin import EffectPhase, FleetTwin, TwinEffectRow

TIMEOUT = 60.0


def wait_for(condition: Callable[[], bool], child: subprocess.Popen[bytes], what: str) -> None:
    """Poll ``condition`` until it holds; fail if the child ends or time runs out first."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if child.poll() is not None:
            _, err = child.communicate()
            pytest.fail(f"the worker ended ({child.returncode}) before {what}:\n{err.decode()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("park", ["between-waves", "in-wave-2"])
def test_worker_killed_after_wave_one_resumes_and_applies_nothing_twice(
    park: str, tmp_path: Path
) -> None:
    scenario = multi_wave()
    db_url = f"sqlite:///{tmp_path}/fieldgate.db"
    with open_run(scenario, db_url) as (world, orchestrator):
        view = submit(world, orchestrator)
        assert view.status == "queued"
        sizes = view.values["findings"]["wave_sizes"]
        assert len(sizes) >= 3 and sum(sizes) == 60
        batch = view.values["plan"]["waves"][1]["max_parallel"]
        assert batch < sizes[1]  # wave 2 goes out in more than one batch
        thread, plan_id, twin_id = view.thread_id, world.plan_id, world.twin.twin_id

    scenario_json = tmp_path / "scenario.json"
    scenario_json.write_text(scenario.model_dump_json(by_alias=True))
    worker = WorkerCommand(scenario_json, db_url, thread)
    ctx = reopen_world(scenario, db_url)
    try:
        with open_checkpointer(db_url) as checkpointer:
            watcher = Orchestrator(ctx, checkpointer)

            def wave_one_checkpointed() -> bool:
                execution = watcher.view(thread).values.get("execution") or {}
                return execution.get("current") == 1

            def wave_two_dispatching() -> bool:
                twin = FleetTwin.load(ctx.store.engine, twin_id)
                return any(e.wave == 1 for e in twin.effects())

            child = subprocess.Popen(
                worker.argv(park), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            try:
                if park == "between-waves":
                    wait_for(wave_one_checkpointed, child, "wave 1 was checkpointed")
                else:
                    wait_for(wave_two_dispatching, child, "wave 2 was dispatched")
                os.kill(child.pid, signal.SIGKILL)
                child.communicate(timeout=TIMEOUT)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
            assert child.returncode == -signal.SIGKILL

            # Where the kill landed: wave 1 done, the run not finished.
            killed_at = FleetTwin.load(ctx.store.engine, twin_id)
            by_wave = Counter(e.wave for e in killed_at.effects() if e.action is Action.install)
            assert by_wave[0] == sizes[0]
            assert by_wave[1] == (0 if park == "between-waves" else batch)
            assert not ctx.store.audit.events(plan_id=plan_id, kinds=[EventKind.done])
            assert watcher.view(thread).outcome is None

            rerun = subprocess.run(worker.argv(), capture_output=True, timeout=TIMEOUT)
            assert rerun.returncode == 0, rerun.stderr.decode()
            assert rerun.stdout.decode().split() == ["completed"]

            view = watcher.view(thread)
            assert view.outcome == "completed"
    finally:
        ctx.store.close()

    store = Store.open(db_url)
    try:
        twin = FleetTwin.load(store.engine, twin_id)
        assert twin.versions("pump-logic") == {"1.9.0": 60}
        effects = twin.effects()
        assert Counter((e.device_id, e.command_id) for e in effects).most_common(1)[0][1] == 1
        installs = Counter(e.device_id for e in effects if e.action is Action.install)
        assert len(installs) == 60 and set(installs.values()) == {1}
        assert not [e for e in effects if e.action is not Action.install]
        # The ledger as stored, not as loaded: one install row per device.
        device, action = col(TwinEffectRow.device_id), col(TwinEffectRow.action)
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(device, action, func.count())
                .where(col(TwinEffectRow.twin_id) == twin_id)
                .group_by(device, action)
            ).all()
        assert len(rows) == 60
        assert {(a, n) for _, a, n in rows} == {("install", 1)}
        # Each device reported its install once, however often the command was sent.
        reports = store.audit.events(plan_id=plan_id, kinds=[EventKind.device_report])
        applied = Counter(
            r.payload["command_id"] for r in reports if r.payload["status"] == "applied"
        )
        assert len(applied) == 60 and set(applied.values()) == {1}
        assert store.audit.verify().ok
        assert store.runs.get(thread).outcome == "completed"
    finally:
        store.close()


class _CrashAfterDispatch(TwinTransport):
    """Dies right after the first dispatch of ``action``: the commands went out, no report."""

    def __init__(self, twin: FleetTwin, action: Action) -> None:
        super().__init__(twin)
        self.action = action

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> Dispatched:
        result = super().dispatch(commands, wave)
        if any(c.action is self.action for c in commands):
            raise RuntimeError("worker died")
        return result


def _without_soak(view: RunView) -> PlanDraft:
    draft = PlanDraft.of(RolloutPlan.model_validate(view.values["plan"]))
    waves = []
    for wave in draft.waves:
        assert wave.health_gate is not None
        gate = wave.health_gate.model_copy(update={"soak_minutes": 0})
        waves.append(wave.model_copy(update={"health_gate": gate}))
    return draft.model_copy(update={"waves": waves})


def test_a_wave_resumed_after_a_crash_waits_for_commands_sent_before_it(
    sqlite_url: str,
) -> None:
    """Without a soak, nothing else lets the clock run until the re-sent canary reports.

    The shipped pack's floors (D11) deny a plan without soaks, so this run's pack has none.
    """
    scenario = variant(load("safety-approval"), approvals=[])
    no_soak_floor = {"rollout": {"high": {"min_soak_minutes": 0}}}
    pack = PolicyPack.load().with_data({"fieldgate": {"config": {"gate_floors": no_soak_floor}}})
    with open_world_run(scenario, sqlite_url, RegoEngine(pack)) as (world, orchestrator):
        view = submit(world, orchestrator)
        view = orchestrator.edit(
            view.thread_id, world.keys["saf-lee"], _without_soak(view), "no soak"
        )
        view = orchestrator.decide(view.thread_id, world.keys["saf-lee"], "approve", "ok")
        assert view.status == "queued"
        crashing = dataclasses.replace(
            world.ctx, transport=_CrashAfterDispatch(world.twin, Action.install)
        )
        checkpointer = orchestrator.graph.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        with pytest.raises(RuntimeError, match="worker died"):
            Orchestrator(crashing, checkpointer).work(view.thread_id)
        assert {e.phase for e in world.twin.effects()} == {EffectPhase.running}

        view = orchestrator.work(view.thread_id)

        assert view.outcome == "completed", view.values["reasons"]
        assert world.twin.versions("hvac-controller") == {"2.4.1": 40}
        assert len(world.twin.effects()) == 40


def test_a_rollback_resumed_after_a_crash_waits_for_commands_sent_before_it(
    sqlite_url: str,
) -> None:
    with open_run(load("canary-fails-rollback"), sqlite_url) as (world, orchestrator):
        view = submit(world, orchestrator)
        crashing = dataclasses.replace(
            world.ctx, transport=_CrashAfterDispatch(world.twin, Action.rollback)
        )
        checkpointer = orchestrator.graph.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        with pytest.raises(RuntimeError, match="worker died"):
            Orchestrator(crashing, checkpointer).work(view.thread_id)

        view = orchestrator.work(view.thread_id)

        assert view.outcome == "rolled_back"
        assert view.values["execution"]["rollback_failed"] == []
        assert expect_failures(world, view) == []
        rollbacks = Counter(
            e.device_id for e in world.twin.effects() if e.action is Action.rollback
        )
        assert set(rollbacks.values()) == {1}
