"""Drive scenarios through the rollout graph, record what models are sent, reopen a world.

Used by the ``test_graph_*`` tests; what a benchmark needs as well (the recording model,
scenario variants, opening a run) lives in the package and is re-exported here. Run as a
script it is a worker process (``python tests/_scenario_driver.py worker …``): it reopens
a world over an existing database and checkpoint file and works one queued run, so a test
can SIGKILL it and start it again.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage

from fieldgate.agents.offline import OfflineChatModel
from fieldgate.agents.offline.recording import RecordingModel as RecordingModel
from fieldgate.agents.offline.recording import ScriptedCall as ScriptedCall
from fieldgate.agents.offline.recording import prompt_text
from fieldgate.audit import EventKind
from fieldgate.commands import DeviceCommand
from fieldgate.evals._world import World, scenario_context, twin_id_of
from fieldgate.evals._world import open_run as open_world_run
from fieldgate.graphs.checkpoint import open_checkpointer
from fieldgate.graphs.runner import Orchestrator, RunView
from fieldgate.policy import RegoEngine
from fieldgate.runtime import Context, Settings
from fieldgate.scenario import Scenario, load_scenario
from fieldgate.scenario import variant as variant
from fieldgate.store import Store
from fieldgate.transport import Dispatched, TwinTransport
from fieldgate.twin import FleetTwin

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "scenarios"
"""The six shared scenarios (``../shared/scenarios`` beside the repository)."""

_FENCE = re.compile(r"<untrusted_data[^>]*>\n.*?\n</untrusted_data>", re.DOTALL)


@cache
def policy_engine() -> RegoEngine:
    """The in-process Rego engine, loaded once per process (loading the pack takes a while)."""
    return RegoEngine()


def scenario_paths() -> list[Path]:
    """The shared scenario files, sorted by name."""
    return sorted(SCENARIO_DIR.glob("*.yaml"))


def load(name: str) -> Scenario:
    """One shared scenario by file stem, e.g. ``safety-approval``."""
    return load_scenario(SCENARIO_DIR / f"{name}.yaml")


def multi_wave() -> Scenario:
    """canary-fails-rollback without its fault: pump-logic 1.9.0 to 60 devices in 3 waves."""
    return variant(load("canary-fails-rollback"), faults=[], expect={})


def outside_untrusted(text: str) -> str:
    """``text`` without its ``<untrusted_data …>`` sections."""
    return _FENCE.sub("", text)


def untrusted_sections(text: str) -> list[str]:
    """The ``<untrusted_data …>`` sections of ``text``."""
    return _FENCE.findall(text)


# --------------------------------------------------------------------------- worlds and runs


@contextmanager
def open_run(
    scenario: Scenario,
    db_url: str,
    *,
    model: OfflineChatModel | None = None,
    seed: int = 0,
    settings: Settings | None = None,
) -> Iterator[tuple[World, Orchestrator]]:
    """Build the scenario's world on ``db_url`` and an orchestrator, with the shared engine."""
    with open_world_run(
        scenario, db_url, policy_engine(), model=model, seed=seed, settings=settings
    ) as opened:
        yield opened


def submit(world: World, orchestrator: Orchestrator) -> RunView:
    """Submit the scenario's request with its ticket, under the world's plan id."""
    scenario = world.scenario
    return orchestrator.submit(
        scenario.request, scenario.actor, ticket=world.ticket, plan_id=world.plan_id
    )


def drive(world: World, orchestrator: Orchestrator) -> RunView:
    """Submit, apply the scripted approvals while the run waits for them, work a queued run."""
    view = submit(world, orchestrator)
    for scripted in world.scenario.approvals:
        if view.status != "awaiting_approval":
            break
        view = orchestrator.decide(
            view.thread_id, world.keys[scripted.by], scripted.decision.value, scripted.comment
        )
    if view.status == "queued":
        view = orchestrator.work(view.thread_id)
    return view


def run_outcome(view: RunView) -> str:
    """The outcome, or ``awaiting_approval`` for a run parked at the approval interrupt."""
    if view.outcome:
        return view.outcome
    return view.status


def expect_failures(world: World, view: RunView) -> list[str]:
    """Check every ``expect`` key of the world's scenario; return what failed (empty: pass)."""
    expect = world.scenario.expect
    values = view.values
    failed: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failed.append(what)

    if expect.outcome is not None:
        got = run_outcome(view)
        check(got == expect.outcome.value, f"outcome {got!r}, expected {expect.outcome.value!r}")
    decision = values.get("decision") or {}
    if expect.deny_includes is not None:
        messages = [*decision.get("deny", []), *values.get("reasons", [])]
        for needle in expect.deny_includes:
            check(
                any(needle.lower() in m.lower() for m in messages),
                f"no deny message contains {needle!r}: {messages}",
            )
    if expect.approvals_required is not None:
        got_roles = sorted((a["role"], a["count"]) for a in decision.get("approvals", []))
        want_roles = sorted((r.role, r.count) for r in expect.approvals_required)
        check(got_roles == want_roles, f"approvals {got_roles}, expected {want_roles}")
    if expect.plan is not None:
        failed += _plan_failures(world, values)
    if expect.devices is not None:
        for module, counts in (expect.devices.versions or {}).items():
            got_counts = world.twin.versions(module)
            check(got_counts == counts, f"{module} versions {got_counts}, expected {counts}")
        if expect.devices.touched_max is not None:
            touched = len(world.twin.touched())
            check(
                touched <= expect.devices.touched_max,
                f"{touched} devices touched, at most {expect.devices.touched_max} expected",
            )
    if expect.audit is not None:
        if expect.audit.verify is not None:
            verdict = world.store.audit.verify()
            check(verdict.ok == expect.audit.verify, f"audit verify {verdict}")
        kinds = {e.kind for e in world.store.audit.events(plan_id=world.plan_id)}
        for kind in expect.audit.kinds:
            check(kind in kinds, f"no {kind.value} event in the audit log")
    return failed


def _plan_failures(world: World, values: dict[str, Any]) -> list[str]:
    want = world.scenario.expect.plan
    assert want is not None
    plan = values.get("plan")
    if not plan:
        return ["no plan was proposed"]
    findings = values.get("findings") or {}
    sizes = findings.get("wave_sizes") or []
    failed = []
    if want.module is not None and plan["module"] != want.module:
        failed.append(f"plan module {plan['module']}, expected {want.module}")
    if want.version is not None and plan["version"] != want.version:
        failed.append(f"plan version {plan['version']}, expected {want.version}")
    if want.targets is not None and findings.get("targets") != want.targets:
        failed.append(f"plan targets {findings.get('targets')}, expected {want.targets}")
    if want.first_wave_max is not None and not (sizes and sizes[0] <= want.first_wave_max):
        failed.append(f"wave sizes {sizes}: first wave above {want.first_wave_max}")
    if want.waves_min is not None and len(plan["waves"]) < want.waves_min:
        failed.append(f"{len(plan['waves'])} waves, expected at least {want.waves_min}")
    if want.schedule is not None and plan["schedule"]["mode"] != want.schedule.value:
        failed.append(f"schedule {plan['schedule']['mode']}, expected {want.schedule.value}")
    return failed


def audit_kinds(world: World) -> list[EventKind]:
    """Kinds of the run's audit events, in order."""
    return [e.kind for e in world.store.audit.events(plan_id=world.plan_id)]


# --------------------------------------------------------------------------- another process


def reopen_world(
    scenario: Scenario,
    db_url: str,
    *,
    seed: int = 0,
    model: OfflineChatModel | None = None,
    transport: Callable[[FleetTwin], TwinTransport] = TwinTransport,
) -> Context:
    """A run context over a world that ``build_world`` made earlier, maybe in another process.

    It opens the same store, loads the stored twin and derives the same control key and
    roster that ``build_world`` used for ``scenario`` and ``seed``; nothing is created.
    The caller closes ``ctx.store``.
    """
    store = Store.open(db_url)
    twin = FleetTwin.load(store.engine, twin_id_of(scenario, seed))
    return scenario_context(
        scenario, seed, store, transport(twin), model or OfflineChatModel(), policy_engine()
    )


class _ParkAfterDispatch(TwinTransport):
    """A twin transport that parks the process once a wave's first batch was dispatched."""

    park_at_wave = 1

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> Dispatched:
        result = super().dispatch(commands, wave)
        if wave >= self.park_at_wave:
            _park()
        return result


def _park() -> None:
    # Wait here until the test kills the process (a safety net ends it after a while).
    time.sleep(120)
    raise SystemExit("parked worker was not killed")


def _park_before_wave(messages: list[BaseMessage]) -> None:
    if '"next_wave": 1' in prompt_text(messages):
        _park()


def work_main(argv: Sequence[str] | None = None) -> int:
    """Work one queued run over an existing world; ``--park`` stops it for a kill."""
    parser = argparse.ArgumentParser(prog="_scenario_driver.py worker")
    parser.add_argument("--scenario", required=True, help="scenario as JSON (a file)")
    parser.add_argument("--db", required=True, help="database URL")
    parser.add_argument("--thread", required=True, help="thread id of the queued run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--park",
        choices=["between-waves", "in-wave-2"],
        help="park before the executor's wave-2 call, or after wave 2's first dispatch",
    )
    args = parser.parse_args(argv)
    scenario = Scenario.model_validate_json(Path(args.scenario).read_text())
    model = RecordingModel()
    transport: Callable[[FleetTwin], TwinTransport] = TwinTransport
    if args.park == "between-waves":
        model.before_executor = _park_before_wave
    elif args.park == "in-wave-2":
        transport = _ParkAfterDispatch
    ctx = reopen_world(scenario, args.db, seed=args.seed, model=model, transport=transport)
    try:
        with open_checkpointer(args.db) as checkpointer:
            view = Orchestrator(ctx, checkpointer).work(args.thread)
    finally:
        ctx.store.close()
    print(run_outcome(view))
    return 0


@dataclass
class WorkerCommand:
    """The command line that runs this module as a worker process."""

    scenario_json: Path
    db_url: str
    thread_id: str
    seed: int = 0

    def argv(self, park: str | None = None) -> list[str]:
        """argv for ``subprocess``, parking at ``park`` when given."""
        args = [
            sys.executable,
            str(Path(__file__).resolve()),
            "worker",
            "--scenario",
            str(self.scenario_json),
            "--db",
            self.db_url,
            "--thread",
            self.thread_id,
            "--seed",
            str(self.seed),
        ]
        if park:
            args += ["--park", park]
        return args


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: _scenario_driver.py worker --scenario FILE --db URL --thread ID")
    sys.exit(work_main(sys.argv[2:]))
