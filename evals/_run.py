"""Run one scenario once: build its world, drive the rollout graph, settle, score and inspect.

The run goes through :class:`~fieldgate.graphs.runner.Orchestrator` exactly as the CLI and
the worker do: submit the request, answer the approval interrupt with the scenario's scripted
approvals (signed with each person's key, stored by the approvals store), let the worker
execute a queued run. Faults and injections are the fleet twin's; the virtual clock moves as
the executor waits for devices. A run still waiting on approvers once the scripted approvals
are used up settles as ``awaiting_approval``: the clock is not run on to its deadline.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fieldgate.agents.models import make_model
from fieldgate.audit import AuditEvent, EventKind
from fieldgate.commands import Action, ReportStatus
from fieldgate.errors import EvalError, NotFound
from fieldgate.evals._results import RunResult
from fieldgate.evals._safety import PolicyFacts, detect_violations
from fieldgate.evals._scorers import score
from fieldgate.evals._world import World, build_world
from fieldgate.graphs.checkpoint import open_checkpointer
from fieldgate.graphs.runner import Orchestrator, RunView
from fieldgate.policy import PolicyEngine
from fieldgate.scenario import Outcome, Scenario
from fieldgate.store import PlanRecord
from fieldgate.twin import Effect

AWAITING = Outcome.awaiting_approval.value
MAX_STEPS = 200
"""Most graph resumptions in one run (approvals plus worker pickups)."""
SETTLE_MINUTES = 24 * 60
"""After the run ends, how long the twin may deliver commands still queued for offline devices."""
HALTED = frozenset({Outcome.aborted.value, Outcome.rolled_back.value})


@dataclass
class FinishedRun:
    """A settled run and what scorers and detectors read: the world, the graph state, the logs."""

    scenario: Scenario
    world: World
    view: RunView
    outcome: str
    events: list[AuditEvent]
    """The run's audit log, in order."""
    effects: list[Effect]
    """The twin's effect ledger: every command a device received."""
    revisions: list[PlanRecord]
    """Every revision of the run's plan, oldest first."""

    @property
    def reasons(self) -> list[str]:
        """Why the run ended as it did."""
        return list(self.view.values.get("reasons") or [])

    @property
    def last_plan(self) -> PlanRecord | None:
        """The last plan revision proposed, if any."""
        return self.revisions[-1] if self.revisions else None


def drive(orchestrator: Orchestrator, world: World) -> tuple[RunView, str]:
    """Submit the request and answer the run until it settles; return its view and outcome."""
    scenario = world.scenario
    view = orchestrator.submit(
        scenario.request, scenario.actor, ticket=world.ticket, plan_id=world.plan_id
    )
    scripted = list(scenario.approvals)
    for _ in range(MAX_STEPS):
        if view.status == "done":
            return view, str(view.outcome)
        if view.status == "awaiting_approval":
            if not scripted:
                return view, AWAITING
            step = scripted.pop(0)
            view = orchestrator.decide(
                view.thread_id, world.keys[step.by], step.decision.value, step.comment
            )
        elif view.next:
            view = orchestrator.work(view.thread_id)
        else:
            raise EvalError(f"run {view.thread_id} stopped without an outcome")
    raise EvalError(f"run {view.thread_id} did not settle within {MAX_STEPS} resumptions")


def finish(world: World, view: RunView, outcome: str) -> FinishedRun:
    """Let the twin deliver what is still queued, then collect the logs the checks read."""
    world.twin.settle(SETTLE_MINUTES)
    try:
        latest = world.store.plans.get(world.plan_id).revision
    except NotFound:
        latest = 0
    revisions = [world.store.plans.get(world.plan_id, r) for r in range(1, latest + 1)]
    return FinishedRun(
        scenario=world.scenario,
        world=world,
        view=view,
        outcome=outcome,
        events=world.store.audit.events(),
        effects=world.twin.effects(),
        revisions=revisions,
    )


def _tokens(view: RunView) -> tuple[int, int]:
    nodes = view.values.get("tokens") or {}
    return (
        sum(int(n.get("input", 0)) for n in nodes.values()),
        sum(int(n.get("output", 0)) for n in nodes.values()),
    )


def _first_failure(effects: list[Effect]) -> datetime | None:
    times = [
        e.reported_at
        for e in effects
        if e.action is Action.install
        and e.reported_at is not None
        and e.report is not None
        and (e.status is not ReportStatus.applied or not e.report.health.ok)
    ]
    return min(times) if times else None


def fault_figures(run: FinishedRun) -> tuple[int | None, float | None]:
    """Blast radius and time to halt of a run of a scenario with faults.

    Both are about a rollout going wrong, so they are given only for runs where an install
    failed or degraded, or that halted. Blast radius: devices that received an install of the
    plan (all of them when the rollout went on regardless). Time to halt: virtual minutes from
    the first failed or unhealthy install report to the first ``abort`` or ``rollback`` event
    (or the end of a run that halted without one).
    """
    if not run.scenario.faults:
        return None, None
    failed_at = _first_failure(run.effects)
    halted = run.outcome in HALTED
    if failed_at is None and not halted:
        return None, None
    radius = len({e.device_id for e in run.effects if e.action is Action.install})
    if failed_at is None or not halted:
        return radius, None
    halts = [
        e.run_time()
        for e in run.events
        if e.kind in (EventKind.abort, EventKind.rollback, EventKind.done)
        and e.run_time() >= failed_at
    ]
    if not halts:
        return radius, None
    return radius, round((min(halts) - failed_at).total_seconds() / 60, 2)


def trail(events: list[AuditEvent]) -> list[dict[str, Any]]:
    """The audit trail as plain rows for the HTML report."""
    return [
        {
            "seq": e.seq,
            "at": e.at.isoformat(),
            "actor": f"{e.actor_kind.value}:{e.actor}",
            "kind": e.kind.value,
            "payload": e.payload,
        }
        for e in events
    ]


def inspect_run(run: FinishedRun, facts: PolicyFacts, engine: PolicyEngine) -> RunResult:
    """Score a settled run, look for safety violations, and put the figures together."""
    checks = score(run.scenario.expect, run)
    violations = detect_violations(run, facts, engine)
    failed = [c for c in checks if not c.passed]
    radius, halt = fault_figures(run)
    tokens_in, tokens_out = _tokens(run.view)
    return RunResult(
        seed=run.world.seed,
        passed=not failed,
        outcome=run.outcome,
        reasons=run.reasons,
        checks=len(checks),
        failed_checks=failed,
        safety_violations=len(violations),
        violations=violations,
        touched=len({e.device_id for e in run.effects}),
        blast_radius=radius,
        time_to_halt_minutes=halt,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        trail=trail(run.events),
    )


def describe_error(exc: BaseException) -> str:
    """The exception and where it was raised (file name and line), in one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_once(
    scenario: Scenario,
    seed: int,
    model_name: str,
    engine: PolicyEngine,
    workdir: Path,
    facts: PolicyFacts | None = None,
) -> RunResult:
    """Run ``scenario`` once with ``seed`` in a fresh database under ``workdir``.

    Never raises for what goes wrong inside the run: an exception becomes a failed run
    with outcome ``error`` and the message.
    """
    started = time.perf_counter()
    facts = facts or PolicyFacts.of(engine)
    workdir.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{workdir}/run.db"
    world: World | None = None
    try:
        world = build_world(scenario, db_url, seed, make_model(model_name), engine, model_name)
        with open_checkpointer(db_url) as checkpointer:
            view, outcome = drive(Orchestrator(world.ctx, checkpointer), world)
        result = inspect_run(finish(world, view, outcome), facts, engine)
    except Exception as exc:  # a run that breaks is scored as an error, the suite goes on
        result = RunResult(seed=seed, passed=False, outcome="error", error=describe_error(exc))
    finally:
        if world is not None:
            world.store.close()
    result.wall_time_s = round(time.perf_counter() - started, 3)
    return result
