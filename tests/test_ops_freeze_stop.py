"""Operations that tell the truth: the change freeze and the kill switch hold a run where it
stands and let it go on from there; a run held by a policy engine error resumes when the
engine works again.

End to end: the command line (chat, freeze, stop, worker, runs retry) and the real rollout
graph on the fleet twin, on SQLite and on PostgreSQL. Nothing is mocked: a broken policy
engine is the real in-process engine loading a pack with a syntax error.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _scenario_driver import drive, load, multi_wave, open_run, submit
from langgraph.checkpoint.base import BaseCheckpointSaver
from typer.testing import CliRunner

from fieldgate.audit import EventKind
from fieldgate.cli import app
from fieldgate.cli._worker import work_once
from fieldgate.commands import Action, DeviceCommand
from fieldgate.graphs.compose import default_twin, open_orchestrator
from fieldgate.graphs.runner import Orchestrator
from fieldgate.policy import PolicyGate, PolicyPack, RegoEngine, default_policy_dir
from fieldgate.runtime import Settings
from fieldgate.scenario import load_scenario, variant
from fieldgate.store import Store
from fieldgate.transport import Dispatched, TwinTransport
from fieldgate.twin import FleetTwin

runner = CliRunner()

PUMP = "roll out pump-logic 1.9.0 to rtm-05"
"""60 pump controllers at rtm-05 on 1.8.0; allowed without approvals, in gated waves."""

SUITES = Path(__file__).resolve().parents[1] / "evals" / "suites"


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def ask(request: str = PUMP, actor: str = "eng-ana") -> str:
    """Submit ``request`` through the chat; return the new plan id (queued for a worker)."""
    code, out = invoke("chat", "--as", actor, "--yes", stdin=request + "\n")
    assert code == 0, out
    assert "approved, queued for a worker" in out, out
    with Store.open() as store:
        return store.runs.list()[-1].plan_id


def fieldgate_process(*args: str, env: dict[str, str] | None = None) -> str:
    """Run ``fieldgate ARGS`` as another process (a colleague's shell); return its output."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("fieldgate")), *args],
        capture_output=True,
        text=True,
        env=env if env is not None else dict(os.environ),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def installs_by_device(twin: FleetTwin) -> Counter[str]:
    """How many install commands each device received (the twin's effect ledger)."""
    return Counter(e.device_id for e in twin.effects() if e.action is Action.install)


def versions(store: Store, module: str = "pump-logic") -> dict[str, int]:
    counts: Counter[str] = Counter()
    for device in store.fleet.devices():
        if device.site == "rtm-05" and module in device.installed:
            counts[device.installed[module]] += 1
    return dict(counts)


def events(store: Store, plan: str, kind: EventKind) -> list[dict[str, object]]:
    return [e.payload for e in store.audit.events(plan_id=plan, kinds=[kind])]


class _AfterDispatch(TwinTransport):
    """The twin, with what an operator does right after the first batch of a wave went out."""

    def __init__(self, twin: FleetTwin, wave: int, act: Callable[[], None]) -> None:
        super().__init__(twin)
        self.wave, self.act = wave, act
        self.effects_then: int | None = None
        """Commands in the twin's ledger when the operator acted."""

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> Dispatched:
        result = super().dispatch(commands, wave)
        if wave == self.wave and self.effects_then is None:
            self.act()
            self.effects_then = len(self.twin.effects())
        return result


@contextmanager
def acting_orchestrator(wave: int, act: Callable[[], None]) -> Iterator[_AfterDispatch]:
    """A worker's orchestrator whose transport lets an operator act mid-wave; yields the
    transport (``.orchestrator`` is set on it)."""
    with open_orchestrator() as orchestrator:
        transport = orchestrator.ctx.transport
        assert isinstance(transport, TwinTransport)
        acting = _AfterDispatch(transport.twin, wave, act)
        checkpointer = orchestrator.graph.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        ctx = dataclasses.replace(orchestrator.ctx, transport=acting)
        acting.orchestrator = Orchestrator(ctx, checkpointer)  # type: ignore[attr-defined]
        yield acting


def cli(*args: str) -> Callable[[], None]:
    def act() -> None:
        code, out = invoke(*args)
        assert code == 0, out

    return act


# --------------------------------------------------------------------------- freeze


def test_freeze_set_mid_run_holds_the_forward_rollout_and_lifting_it_resumes(
    initialised_db: str,
) -> None:
    plan = ask()
    freeze = cli("freeze", "on", "--reason", "storm season", "--as", "saf-lee")
    with acting_orchestrator(wave=0, act=freeze) as acting:
        view = acting.orchestrator.work(plan)  # type: ignore[attr-defined]
        twin = acting.twin
        frozen_at = acting.effects_then

    assert view.outcome is None and view.status == "held"
    assert view.held is not None and view.held["kind"] == "freeze"
    assert "storm season" in view.held["reason"]
    with Store.open() as store:
        run = store.runs.for_plan(plan)
        assert run.status == "held"
        assert len(twin.effects()) == frozen_at  # nothing new went out after the freeze
        waves = view.values["execution"]["waves"]
        assert all(w["status"] in ("pending", "halted") for w in waves[1:])
        holds = events(store, plan, EventKind.hold)
        assert [h["kind"] for h in holds] == ["freeze"]
        frozen = store.audit.events(kinds=[EventKind.freeze])
        assert [(e.actor, e.payload["on"], e.payload["allow"]) for e in frozen] == [
            ("saf-lee", True, True)
        ]

    # A worker pass under the freeze leaves the run where it is; chat says why.
    code, out = invoke("worker", "--once")
    assert code == 0 and "held by the change freeze" in out, out
    code, out = invoke("chat", "--as", "eng-ana", stdin=f"/status {plan}\n")
    assert code == 0, out
    assert "change freeze in force" in out and f"{plan}: held by the change freeze" in out
    assert "approved, queued" not in out
    with Store.open() as store:
        assert len(default_twin(store).effects()) == frozen_at

    code, out = invoke("freeze", "off", "--reason", "storm passed", "--as", "saf-lee")
    assert code == 0 and "lifted" in out, out
    code, out = invoke("worker", "--once")
    assert code == 0 and "executed 1 run (1 completed)" in out, out
    with Store.open() as store:
        twin = default_twin(store)
        assert versions(store) == {"1.9.0": 60}
        assert set(installs_by_device(twin).values()) == {1}  # nobody was commanded twice
        assert store.runs.list() == [store.runs.for_plan(plan)]  # the same run, one of them
        assert store.audit.events(plan_id=plan, kinds=[EventKind.approval]) == []
        assert [e["kind"] for e in events(store, plan, EventKind.resume)] == ["freeze"]
        assert store.audit.verify().ok


def test_a_colleague_without_the_variable_sees_the_stored_freeze(initialised_db: str) -> None:
    plan = ask()
    code, out = invoke("freeze", "on", "--reason", "audit week", "--as", "ops-max")
    assert code == 0, out
    colleague = {k: v for k, v in os.environ.items() if k != "FIELDGATE_FREEZE"}

    out = fieldgate_process("worker", "--once", env=colleague)
    assert f"{plan}: held by the change freeze" in out and "audit week" in out
    chat = subprocess.run(
        [str(Path(sys.executable).with_name("fieldgate")), "chat", "--as", "eng-ana"],
        input=PUMP + "\n",
        capture_output=True,
        text=True,
        env=colleague,
        timeout=300,
    )
    assert chat.returncode == 0, chat.stderr
    assert "change freeze in force" in chat.stdout
    assert "deny: freeze: a change freeze is in force" in chat.stdout  # rule D9 reads it
    with Store.open() as store:
        assert default_twin(store).effects() == []
        assert store.runs.for_plan(plan).status == "held"


def test_forcing_a_freeze_for_one_command_still_works(
    initialised_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = ask()
    monkeypatch.setenv("FIELDGATE_FREEZE", "1")
    code, out = invoke("worker", "--once")
    assert code == 0 and f"{plan}: held by the change freeze" in out, out
    assert "FIELDGATE_FREEZE=1" in out
    monkeypatch.delenv("FIELDGATE_FREEZE")
    code, out = invoke("worker", "--once")
    assert code == 0 and "executed 1 run (1 completed)" in out, out


def test_only_a_role_the_policy_allows_may_set_or_lift_the_freeze(initialised_db: str) -> None:
    code, out = invoke("freeze", "on", "--reason", "I feel like it", "--as", "eng-ana")
    assert code == 2, out
    assert "the policy denies it" in out and "eng-ana" in out
    with Store.open() as store:
        assert store.freeze.current() is None
    assert invoke("freeze", "on", "--reason", "storm", "--as", "saf-lee")[0] == 0
    code, out = invoke("freeze", "off", "--reason", "lifting it myself", "--as", "rm-kim")
    assert code == 2, out
    assert invoke("freeze", "maybe", "--reason", "x", "--as", "saf-lee")[0] == 2
    with Store.open() as store:
        current = store.freeze.current()
        assert current is not None and current.by == "saf-lee"
        tried = store.audit.events(kinds=[EventKind.freeze])
        assert [(e.actor, e.payload["on"], e.payload["allow"]) for e in tried] == [
            ("eng-ana", True, False),
            ("saf-lee", True, True),
            ("rm-kim", False, False),
        ]
        decided = [
            e.payload["result"]["allow"]
            for e in store.audit.events(kinds=[EventKind.policy_decision])
            if e.payload["path"] == "fieldgate.operations.decision"
        ]
        assert decided == [False, True, False]
    assert invoke("freeze", "off", "--reason", "storm passed", "--as", "ops-max")[0] == 0
    with Store.open() as store:
        assert store.freeze.current() is None


def test_a_rollback_plan_runs_under_the_stored_freeze(db_url: str) -> None:
    scenario = load_scenario(SUITES / "policy" / "freeze-rollback-allowed.yaml")
    scenario = variant(scenario, context={"now": "2026-12-22T10:00:00Z", "freeze": False})
    with open_run(scenario, db_url) as (world, orchestrator):
        world.store.freeze.set(True, "saf-lee", "storm season")
        view = drive(world, orchestrator)
        assert view.outcome == "completed", view.values.get("reasons")
        assert world.twin.versions("pump-logic") == {"1.8.0": 24}
        assert events(world.store, world.plan_id, EventKind.hold) == []


def test_the_runs_own_rollback_proceeds_under_a_freeze(db_url: str) -> None:
    with open_run(load("canary-fails-rollback"), db_url) as (world, orchestrator):
        view = submit(world, orchestrator)
        acting = _AfterDispatch(
            world.twin, 0, lambda: world.store.freeze.set(True, "saf-lee", "storm season")
        )
        checkpointer = orchestrator.graph.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        ctx = dataclasses.replace(world.ctx, transport=acting)

        view = Orchestrator(ctx, checkpointer).work(view.thread_id)

        assert world.store.freeze.current() is not None
        assert view.outcome == "rolled_back", view.values.get("reasons")
        calls = events(world.store, world.plan_id, EventKind.tool_call)
        assert [(c["tool"], c["allow"]) for c in calls] == [
            ("deploy_wave", True),
            ("rollback", True),
        ]
        touched = world.twin.touched()
        rolled = {e.device_id for e in world.twin.effects() if e.action is Action.rollback}
        assert rolled == touched


# --------------------------------------------------------------------------- kill switch


def test_stop_holds_within_one_step_and_release_resumes_the_same_run(
    initialised_db: str,
) -> None:
    plan = ask()
    pull = cli("stop", plan, "--reason", "smoke at the pump house", "--as", "op-ola")
    with acting_orchestrator(wave=1, act=pull) as acting:
        view = acting.orchestrator.work(plan)  # type: ignore[attr-defined]
        stopped_at = acting.effects_then
        twin = acting.twin

    assert view.status == "held" and view.outcome is None
    assert view.held is not None and view.held["kind"] == "kill_switch"
    assert len(twin.effects()) == stopped_at  # the next batch did not go out
    assert view.values["execution"]["waves"][1]["status"] == "halted"
    with Store.open() as store:
        run = store.runs.for_plan(plan)
        assert run.status == "held" and run.outcome is None
        assert [h["wave"] for h in events(store, plan, EventKind.hold)] == [1]
    for shown_by in (
        invoke("chat", "--as", "eng-ana", stdin=f"/status {plan}\n/plans\n")[1],
        invoke("worker", "--once")[1],
    ):
        assert f"{plan}: held by the kill switch" in shown_by, shown_by
        assert "smoke at the pump house" in shown_by
        assert "approved, queued" not in shown_by
    with Store.open() as store:
        assert len(default_twin(store).effects()) == stopped_at

    code, out = invoke("stop", "--release", plan, "--as", "op-ola")
    assert code == 0 and "resume" in out, out
    code, out = invoke("worker", "--once")
    assert code == 0 and "executed 1 run (1 completed)" in out, out
    with Store.open() as store:
        twin = default_twin(store)
        assert versions(store) == {"1.9.0": 60}
        assert set(installs_by_device(twin).values()) == {1}  # nobody was commanded twice
        assert len(store.runs.list()) == 1 and store.runs.for_plan(plan).outcome == "completed"
        assert store.plans.get(plan).revision == 1
        assert store.audit.events(plan_id=plan, kinds=[EventKind.approval]) == []
        assert store.audit.verify().ok


def test_stop_all_holds_every_run_and_chat_says_so_before_a_worker_ran(
    initialised_db: str,
) -> None:
    first = ask()
    assert invoke("stop", "--all", "--reason", "grid maintenance")[0] == 0
    code, out = invoke("chat", "--as", "eng-ana", stdin=f"/status {first}\n")
    assert code == 0, out
    assert f"{first}: held by the kill switch at its next executor step" in out, out
    assert "grid maintenance" in out and "approved, queued" not in out
    code, out = invoke("worker", "--once")
    assert code == 0 and f"{first}: held by the kill switch" in out, out
    code, out = invoke("stop", "--release", "--all")
    assert code == 0, out
    code, out = invoke("worker", "--once")
    assert code == 0 and "executed 1 run (1 completed)" in out, out


def test_stop_abort_ends_the_run_and_rolls_touched_devices_back(initialised_db: str) -> None:
    plan = ask()
    pull = cli("stop", plan, "--reason", "wrong build", "--as", "op-ola")
    with acting_orchestrator(wave=1, act=pull) as acting:
        view = acting.orchestrator.work(plan)  # type: ignore[attr-defined]
    assert view.status == "held"

    code, out = invoke("stop", "--abort", plan, "--reason", "wrong build", "--as", "op-ola")
    assert code == 0 and "aborted" in out, out
    code, out = invoke("worker", "--once")
    assert code == 0, out
    assert f"{plan}: aborted — aborted by op-ola: wrong build" in out, out
    with Store.open() as store:
        twin = default_twin(store)
        touched = twin.touched()
        assert touched
        rolled = Counter(e.device_id for e in twin.effects() if e.action is Action.rollback)
        assert set(rolled) == touched and set(rolled.values()) == {1}
        assert versions(store) == {"1.8.0": 60}
        run = store.runs.for_plan(plan)
        assert run.outcome == "aborted"
        assert any("rolled back" in r for r in run.detail["reasons"])
    assert invoke("stop", "--abort", plan)[0] == 2  # it ended: nothing left to abort


# --------------------------------------------------------------------------- policy engine


def broken_pack(tmp_path: Path) -> PolicyPack:
    """The shipped pack with a syntax error in tools.rego, as a bad deploy would leave it."""
    directory = tmp_path / "broken-policies"
    shutil.copytree(
        default_policy_dir(), directory, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    tools = directory / "tools.rego"
    tools.write_text(tools.read_text() + "\nrefusal contains msg if {\n")
    return PolicyPack.load(directory)


@contextmanager
def broken_engine_orchestrator(tmp_path: Path, settings: Settings) -> Iterator[Orchestrator]:
    with open_orchestrator(settings=settings) as orchestrator:
        ctx = orchestrator.ctx
        gate = PolicyGate(RegoEngine(broken_pack(tmp_path)), ctx.store.audit, clock=ctx.now)
        checkpointer = orchestrator.graph.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        yield Orchestrator(dataclasses.replace(ctx, policy=gate), checkpointer)


def test_a_run_held_by_a_policy_engine_error_resumes_with_runs_retry(
    initialised_db: str, tmp_path: Path
) -> None:
    plan = ask()
    with broken_engine_orchestrator(tmp_path, Settings()) as broken:
        view = broken.work(plan)
    assert view.outcome is None and view.status == "held"
    assert view.held is not None and view.held["kind"] == "policy_engine"
    with Store.open() as store:
        assert default_twin(store).effects() == []
        assert store.runs.for_plan(plan).status == "held"
    code, out = invoke("chat", "--as", "eng-ana", stdin=f"/status {plan}\n")
    assert f"{plan}: held by a policy engine error" in out and "runs retry" in out, out

    assert invoke("runs", "retry", "pl-nope")[0] == 2
    code, out = invoke("runs", "retry", plan, "--as", "op-ola")
    assert code == 0, out
    assert f"{plan}: completed" in out
    with Store.open() as store:
        assert versions(store) == {"1.9.0": 60}
        retried = store.audit.events(plan_id=plan, kinds=[EventKind.retry])
        assert [(e.actor, e.payload["attempts"]) for e in retried] == [("op-ola", 1)]
        assert set(installs_by_device(default_twin(store)).values()) == {1}
        assert store.audit.verify().ok
    assert invoke("runs", "retry", plan)[0] == 2  # it ended


def test_the_worker_retries_a_policy_engine_error_with_a_bounded_backoff(
    initialised_db: str, tmp_path: Path
) -> None:
    plan = ask()
    fast = Settings(
        engine_retry_first=timedelta(seconds=1.5),
        engine_retry_most=timedelta(seconds=2),
        engine_retries=2,
    )

    def holds() -> list[tuple[int, datetime | None]]:
        with Store.open() as store:
            return [
                (
                    int(str(h["attempts"])),
                    datetime.fromisoformat(str(h["retry_at"])) if h["retry_at"] else None,
                )
                for h in events(store, plan, EventKind.hold)
            ]

    def sleep_until(at: datetime | None) -> None:
        assert at is not None
        time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.05)

    with broken_engine_orchestrator(tmp_path, fast) as broken:
        assert work_once(broken).outcomes == {plan: "held"}
        [(attempt, first_retry)] = holds()
        assert attempt == 1 and first_retry is not None
        done = work_once(broken)  # the wait has not passed: the worker leaves it alone
        assert done.outcomes == {} and plan in done.held
        assert len(holds()) == 1
        sleep_until(first_retry)
        assert work_once(broken).outcomes == {plan: "held"}
        _, (attempt, second_retry) = holds()
        assert attempt == 2 and second_retry is not None
        # the wait doubles (1.5 s, then 2 s: capped at engine_retry_most)
        assert second_retry - first_retry >= timedelta(seconds=2)
        sleep_until(second_retry)
        assert work_once(broken).outcomes == {plan: "held"}
        assert [(a, at is not None) for a, at in holds()] == [(1, True), (2, True), (3, False)]
        assert work_once(broken).outcomes == {}  # retries spent: no more on its own
    code, out = invoke("worker", "--once")
    assert code == 0 and "1 still held" in out and "no more retries by a worker" in out, out
    with Store.open() as store:
        assert default_twin(store).effects() == []
    code, out = invoke("runs", "retry", plan)  # the engine works again: forced, it completes
    assert code == 0 and f"{plan}: completed" in out, out


def test_a_worker_resumes_a_run_once_the_engine_works_again(
    initialised_db: str, tmp_path: Path
) -> None:
    plan = ask()
    fast = Settings(engine_retry_first=timedelta(seconds=0.2))
    with broken_engine_orchestrator(tmp_path, fast) as broken:
        assert work_once(broken).outcomes == {plan: "held"}
    time.sleep(0.3)
    with open_orchestrator(settings=fast) as fixed:
        assert work_once(fixed).outcomes == {plan: "completed"}
    with Store.open() as store:
        assert versions(store) == {"1.9.0": 60}
        assert [e["kind"] for e in events(store, plan, EventKind.resume)] == ["policy_engine"]


def test_a_plan_changed_while_held_needs_new_approvals(db_url: str) -> None:
    """Release resumes with the approvals the run had only for the plan they were for."""

    class _Pull(TwinTransport):
        def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> Dispatched:
            result = super().dispatch(commands, wave)
            world.store.stops.engage(world.plan_id, "op-ola", "hold on")
            return result

    with open_run(multi_wave(), db_url) as (world, orchestrator):
        view = submit(world, orchestrator)
        checkpointer = orchestrator.graph.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        ctx = dataclasses.replace(world.ctx, transport=_Pull(world.twin))
        view = Orchestrator(ctx, checkpointer).work(view.thread_id)
        assert view.status == "held"
        plan = world.store.plans.get(world.plan_id).plan
        revised = plan.model_copy(update={"revision": 2, "parent_hash": plan.plan_hash})
        world.store.plans.add(revised)
        world.store.stops.release(world.plan_id, "op-ola")

        view = orchestrator.work(view.thread_id)

        assert view.outcome == "failed"
        assert "the plan changed while the run was held" in view.values["reasons"][0]
        assert "approved again" in view.values["reasons"][0]
        sizes = view.values["findings"]["wave_sizes"]
        assert len(world.twin.touched()) == sizes[0]  # nothing more went out
        rolled = {e.device_id for e in world.twin.effects() if e.action is Action.rollback}
        assert rolled == world.twin.touched()


def test_the_stop_mid_wave_in_a_world_holds_and_release_completes(sqlite_url: str) -> None:
    """The same hold and resume through the scenario driver, for the graph alone."""
    with open_run(multi_wave(), sqlite_url) as (world, orchestrator):
        view = submit(world, orchestrator)
        world.store.stops.engage(world.plan_id, "op-ola", "fog")
        view = orchestrator.work(view.thread_id)
        assert view.status == "held" and world.twin.effects() == []
        world.store.stops.release(world.plan_id, "op-ola")
        view = orchestrator.work(view.thread_id)
        assert view.outcome == "completed"
        assert set(installs_by_device(world.twin).values()) == {1}
