"""The rollout graph's second half: queue, executor and report.

The executor node asks the model for the next tool call and hands it to the
enforcement point in ``tools``; it never runs a tool itself.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from langgraph.runtime import Runtime

from fieldgate.agents.executor import next_action
from fieldgate.audit import ActorKind, EventKind
from fieldgate.errors import ModelFailed
from fieldgate.fleet import Site
from fieldgate.graphs._record import audit, finish, manifest_or_none, model_failed, plan_of
from fieldgate.graphs.state import RolloutState
from fieldgate.plan import RolloutPlan, assign_waves
from fieldgate.runtime import Context
from fieldgate.store import Run
from fieldgate.tools import (
    Execution,
    Hold,
    ToolContext,
    WaveRun,
    call_tool,
    hold_for,
    settle,
    tool_specs,
    tools_with_role,
)
from fieldgate.usage import total_tokens


def queue(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Hand the approved run to a worker (the graph pauses after this node)."""
    ctx = runtime.context
    plan = plan_of(ctx, state)
    with ctx.store.writing(f"queueing plan {plan.plan_id}") as tx:
        ctx.store.plans.set_status(plan.plan_id, "approved", plan.revision, tx=tx)
        ctx.store.runs.update(state["thread_id"], "queued", tx=tx)
    return {"edited": False}


# --------------------------------------------------------------------------- executor


def _new_execution(ctx: Context, plan: RolloutPlan, sites: dict[str, Site]) -> Execution:
    targets = ctx.store.fleet.devices(plan.target)
    waves = assign_waves(plan, targets, sites)
    return Execution(
        waves=[
            WaveRun(index=i, name=spec.name, devices=devices)
            for i, (spec, devices) in enumerate(zip(plan.waves, waves, strict=True))
        ],
        device_sites={d.id: d.site for d in targets},
    )


def _situation(plan: RolloutPlan, ex: Execution, kill_switch: str | None) -> dict[str, Any]:
    return {
        "plan_id": plan.plan_id,
        "module": plan.module,
        "version": plan.version,
        "waves": [
            {
                "index": w.index,
                "name": w.name,
                "devices": len(w.devices),
                "status": w.status,
                "applied": len(w.applied),
                "failed": len(w.failed),
                "unreachable": len(w.unreachable),
                "gate": w.gate.reason if w.gate else None,
            }
            for w in ex.waves
        ],
        "next_wave": ex.next_wave(),
        "kill_switch": kill_switch is not None,
        "paused": ex.paused,
        "abort": ex.abort.model_dump(),
        "rolled_back": ex.rolled_back,
        "rollback_automatic": bool(plan.rollback and plan.rollback.automatic),
        "rollback_version": plan.rollback.version if plan.rollback else None,
    }


def _outcome_of(ex: Execution) -> tuple[str, str]:
    if ex.rolled_back:
        reason = ex.abort.reason or "rolled back"
        if ex.rollback_failed:
            # Said in the outcome, not only in a tool result: these devices may still run
            # the version that was rolled back.
            shown = ", ".join(ex.rollback_failed[:5])
            more = f" and {len(ex.rollback_failed) - 5} more" if len(ex.rollback_failed) > 5 else ""
            reason += (
                f"; the rollback was not confirmed on {len(ex.rollback_failed)} device(s): "
                f"{shown}{more}"
            )
        return "rolled_back", reason
    if ex.paused:
        return "aborted", "dispatch stopped"
    if ex.abort.tripped:
        return "aborted", ex.abort.reason
    if ex.finished_waves:
        return "completed", f"all {len(ex.waves)} waves passed their gates"
    return "aborted", "the executor stopped before every wave had run"


def _tool_context(ctx: Context, state: RolloutState) -> ToolContext:
    """The run's tool context: the execution so far, or a new one for a run not yet started."""
    store = ctx.store
    plan = plan_of(ctx, state)
    rollback_manifest = (
        manifest_or_none(ctx, plan.module, plan.rollback.version)
        if plan.rollback and plan.rollback.version
        else None
    )
    sites = store.fleet.site_map()
    if state.get("execution"):
        execution = Execution.model_validate(state["execution"])
    else:
        execution = _new_execution(ctx, plan, sites)
    return ToolContext(
        ctx,
        plan,
        state["plan_hash"],
        store.catalog.get(plan.module, plan.version),
        rollback_manifest,
        sites,
        state["thread_id"],
        execution,
        rollback_plan=bool((state.get("decision") or {}).get("rollback")),
    )


def executor(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """One executor step: the model picks a tool call, policy checks it, the tool runs.

    Before the model is asked, the step looks at what holds the run: an operator's abort
    ends it (touched devices go back), the kill switch or the change freeze hold it where
    it stands (nothing is dispatched, the run waits for a worker to take it up again),
    and a run that held resumes once nothing does, with the approvals it had.
    """
    ctx = runtime.context
    store = ctx.store
    tc = _tool_context(ctx, state)
    plan, execution = tc.plan, tc.execution
    started = bool(state.get("execution"))
    run = store.runs.get(state["thread_id"])
    if run.detail.get("abort"):
        return _abort(tc, state, run.detail["abort"])
    held = tc.hold()
    if held is not None:
        return _hold(tc, state, held)
    if execution.held is not None:
        resumed = _resume(tc, state)
        if resumed.get("outcome"):
            return resumed
    elif not started or run.status == "held":
        # A new run, or one whose hold was written but whose worker died before the
        # checkpoint that would have kept it: either way it executes now.
        with store.writing(f"starting the execution of plan {plan.plan_id}") as tx:
            store.runs.update(state["thread_id"], "executing", tx=tx)
            store.plans.set_status(plan.plan_id, "executing", plan.revision, tx=tx)
    if execution.steps >= ctx.settings.executor_steps:
        return _give_up(tc, state, f"the executor took more than {execution.steps} steps")
    try:
        choice = next_action(
            ctx.model,
            tool_specs(),
            # Nothing held the run a moment ago; a switch pulled since is caught at the call.
            _situation(plan, execution, None),
            state.get("last_tool_result"),
        )
    except ModelFailed as exc:
        failed = model_failed(ctx, state, "executor", exc)
        return {**failed, **_give_up(tc, state, failed["reasons"][0])}
    execution.steps += 1
    update: dict[str, Any] = {"tokens": {"executor": choice.usage.as_dict()}}
    if choice.name is None:
        outcome, reason = _outcome_of(execution)
        update.update({"execution": execution.model_dump(mode="json"), **finish(outcome, reason)})
        return update
    # The switch may have been pulled while the model was thinking: check the call against
    # the switch as it is now, not as it was when the situation was shown.
    stop = store.stops.engaged(plan.plan_id)
    approved = bool(state.get("approved"))
    name, result = (
        choice.name,
        call_tool(tc, choice.name, choice.args, approved=approved, stop=stop),
    )
    if result.get("engine_error"):
        return {**update, **_engine_held(tc, state, str(result["refused"]))}
    execution.engine_failures = 0
    if execution.held is not None:  # held between two batches of a wave
        return {**update, **_hold(tc, state, execution.held, after_step=True)}
    if result.get("refused"):
        held = tc.hold()
        if held is not None:  # refused because the switch or the freeze came on meanwhile
            return {**update, **_hold(tc, state, held)}
        execution.refused_calls += 1
        if execution.refused_calls > ctx.settings.model_retries * 3:
            update.update(_give_up(tc, state, f"the executor kept making refused calls: {result}"))
    if name in tools_with_role("rollback") and execution.rolled_back:
        tc.audit(EventKind.rollback, ActorKind.agent, "executor", result)
    update["execution"] = execution.model_dump(mode="json")
    update["last_tool_result"] = json.dumps(result, sort_keys=True, default=str)
    return update


# --------------------------------------------------------------------------- holds


def _hold(
    tc: ToolContext, state: RolloutState, held: Hold, *, after_step: bool = False
) -> dict[str, Any]:
    """Hold the run where it stands: nothing more is dispatched until the hold lifts.

    The hold is audited and written to the runs table when it starts or changes (a worker
    taking up a run that is still held writes nothing); the graph then pauses for a worker.
    """
    ctx, ex = tc.ctx, tc.execution
    previous = ex.held if not after_step else None
    ex.held = held
    # What devices said while the run was held, or before a crash, goes on the record.
    unknown = settle(tc)
    if previous is None or previous.model_dump() != held.model_dump():
        current = ex.current if ex.current < len(ex.waves) else None
        with ctx.store.writing(f"holding plan {tc.plan_id}") as tx:
            tc.audit(
                EventKind.hold,
                ActorKind.system,
                held.kind.replace("_", "-"),
                {
                    "kind": held.kind,
                    "reason": held.reason,
                    "wave": current,
                    "attempts": held.attempts,
                    "retry_at": held.retry_at.isoformat() if held.retry_at else None,
                    "unknown": unknown,
                },
                tx=tx,
            )
            ctx.store.runs.update(
                tc.thread_id,
                "held",
                detail={"held": held.model_dump(mode="json"), "unknown": unknown},
                tx=tx,
            )
            ctx.store.plans.set_status(tc.plan_id, "held", tc.plan.revision, tx=tx)
    elif unknown != tc.ctx.store.runs.get(tc.thread_id).detail.get("unknown"):
        ctx.store.runs.update(tc.thread_id, "held", detail={"unknown": unknown})
    return {"execution": ex.model_dump(mode="json")}


def _engine_held(tc: ToolContext, state: RolloutState, reason: str) -> dict[str, Any]:
    """Hold a run whose tool call the policy engine could not decide: a worker retries it
    after a wait that doubles each time, up to ``engine_retries`` times; then it waits for
    ``fieldgate runs retry``."""
    ex, settings = tc.execution, tc.ctx.settings
    ex.engine_failures += 1
    retry_at = None
    if ex.engine_failures <= settings.engine_retries:
        wait = settings.engine_retry_first * 2 ** (ex.engine_failures - 1)
        retry_at = tc.ctx.people_now() + min(wait, settings.engine_retry_most)
    held = Hold(kind="policy_engine", reason=reason, attempts=ex.engine_failures, retry_at=retry_at)
    return _hold(tc, state, held, after_step=True)


def _resume(tc: ToolContext, state: RolloutState) -> dict[str, Any]:
    """Take a held run up again where it stood, with the approvals it had, unless the plan
    they were given for changed meanwhile (then it ends: a new plan needs new approvals)."""
    ctx, ex, plan = tc.ctx, tc.execution, tc.plan
    held = ex.held
    assert held is not None
    current = ctx.store.plans.get(plan.plan_id)
    if current.plan_hash != tc.plan_hash:
        return _give_up(
            tc,
            state,
            f"the plan changed while the run was {held.describe()} (revision "
            f"{current.revision}); its approvals were for the earlier one, so it must be "
            "approved again",
        )
    settle(tc)
    ex.held = None
    ex.paused = False  # the operator let the run go on
    for wave in ex.waves:
        if wave.status == "halted":
            wave.status = "pending"
    with ctx.store.writing(f"resuming plan {plan.plan_id}") as tx:
        tc.audit(
            EventKind.resume,
            ActorKind.system,
            "fieldgate",
            {"kind": held.kind, "was": held.reason, "attempts": held.attempts},
            tx=tx,
        )
        ctx.store.runs.update(
            tc.thread_id, "executing", detail={"held": None, "unknown": None}, tx=tx
        )
        ctx.store.plans.set_status(plan.plan_id, "executing", plan.revision, tx=tx)
    return {}


def _abort(tc: ToolContext, state: RolloutState, request: dict[str, Any]) -> dict[str, Any]:
    """End the run an operator aborted (``fieldgate stop --abort``), rolling touched
    devices back first; while a kill switch still holds the run, the rollback waits."""
    reason = f"aborted by {request.get('by')}: {request.get('reason')}"
    ex = tc.execution
    if ex.touched and not ex.rolled_back:
        held = hold_for(tc.ctx, tc.plan_id, forward=False)
        if held is not None:
            return _hold(tc, state, held)
    ex.held = None
    return _end(tc, state, "aborted", reason)


def hold_now(ctx: Context, values: dict[str, Any], plan_id: str) -> Hold | None:
    """What holds a run (graph state ``values``) at its next executor step: the kill switch,
    or the change freeze when the run moves devices forward."""
    execution = values.get("execution") or {}
    forward = not (values.get("decision") or {}).get("rollback") and not (
        (execution.get("abort") or {}).get("tripped")
    )
    return hold_for(ctx, plan_id, forward=forward)


def due(ctx: Context, values: dict[str, Any], run: Run) -> bool:
    """Whether a worker should take up a held run (graph state ``values``) now: its hold
    lifted, an operator aborted it, or a policy engine retry is due."""
    execution = values.get("execution") or {}
    held = run.detail.get("held") or execution.get("held")
    if not held or run.detail.get("abort"):
        return True
    if held.get("kind") == "policy_engine":
        retry_at = held.get("retry_at")
        return retry_at is not None and datetime.fromisoformat(retry_at) <= ctx.people_now()
    return hold_now(ctx, values, run.plan_id) is None


def _give_up(tc: ToolContext, state: RolloutState, reason: str) -> dict[str, Any]:
    """End a rollout the executor cannot finish, first sending touched devices back.

    A model that gives no usable answer, a run past its step bound or one that keeps
    making refused calls would leave devices half-way with nobody driving. As when abort
    criteria trip, every touched device goes back to the plan's rollback version, by the
    same rollback tool and through the same tools policy (so a pulled kill switch still
    stops it); then the run ends ``failed``.
    """
    return _end(tc, state, "failed", reason)


def _end(tc: ToolContext, state: RolloutState, outcome: str, reason: str) -> dict[str, Any]:
    """End the run with ``outcome``, first rolling every touched device back."""
    ex = tc.execution
    reasons = [reason]
    settle(tc)  # a device that changed is on the record and goes back with the others
    if ex.touched and not ex.rolled_back:
        stop = tc.ctx.store.stops.engaged(tc.plan_id)
        args = {"reason": f"fieldgate stops the rollout: {reason}"}
        result = call_tool(tc, "rollback", args, approved=bool(state.get("approved")), stop=stop)
        if ex.rolled_back:
            tc.audit(EventKind.rollback, ActorKind.system, "fieldgate", result)
            reasons.append(
                f"rolled back {result['rolled_back']} of {len(ex.touched)} touched devices "
                f"to {result['to_version']}"
                + (f" ({result['not_confirmed']} not confirmed)" if result["not_confirmed"] else "")
            )
        else:
            why = result.get("refused") or result.get("error") or "no rollback"
            reasons.append(f"the {len(ex.touched)} touched devices were not rolled back: {why}")
    return {"execution": ex.model_dump(mode="json"), **finish(outcome, *reasons)}


# --------------------------------------------------------------------------- report


def report(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Close the run: the outcome goes to the audit log, the runs table and the plan;
    then the audit chain's head is checkpointed."""
    ctx = runtime.context
    outcome = state.get("outcome", "failed")
    reasons = state.get("reasons", [])
    store = ctx.store
    with store.writing(f"closing run {state['thread_id']}") as tx:
        audit(
            ctx,
            state,
            EventKind.done,
            ActorKind.system,
            "fieldgate",
            {
                "outcome": outcome,
                "reasons": reasons,
                "model": ctx.model_name,
                "tokens": state.get("tokens", {}),
                "tokens_total": total_tokens(state.get("tokens", {})),
            },
            tx=tx,
            once=f"done:{state['thread_id']}",  # a report replayed after a crash
        )
        store.runs.update(
            state["thread_id"], "done", outcome=outcome, detail={"reasons": reasons}, tx=tx
        )
        if state.get("plan"):
            plan = plan_of(ctx, state)
            store.plans.set_status(plan.plan_id, outcome, plan.revision, tx=tx)
    ctx.checkpoint_audit()
    return {}


def hold(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Where a held run waits for a worker (the graph pauses after this node)."""
    return {}


def route_after_executor(state: RolloutState) -> Literal["executor", "hold", "report"]:
    """Loop until the executor reaches an outcome; a held run waits at ``hold``."""
    if state.get("outcome"):
        return "report"
    if (state.get("execution") or {}).get("held"):
        return "hold"
    return "executor"
