"""The rollout graph's second half: queue, executor and report.

The executor node asks the model for the next tool call and hands it to the
enforcement point in ``tools``; it never runs a tool itself.
"""

from __future__ import annotations

import json
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
from fieldgate.tools import (
    Execution,
    ToolContext,
    WaveRun,
    call_tool,
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


def executor(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """One executor step: the model picks a tool call, policy checks it, the tool runs."""
    ctx = runtime.context
    store = ctx.store
    plan = plan_of(ctx, state)
    manifest = store.catalog.get(plan.module, plan.version)
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
        with store.writing(f"starting the execution of plan {plan.plan_id}") as tx:
            store.runs.update(state["thread_id"], "executing", tx=tx)
            store.plans.set_status(plan.plan_id, "executing", plan.revision, tx=tx)
    tc = ToolContext(
        ctx,
        plan,
        state["plan_hash"],
        manifest,
        rollback_manifest,
        sites,
        state["thread_id"],
        execution,
    )
    if execution.steps >= ctx.settings.executor_steps:
        return _give_up(tc, state, f"the executor took more than {execution.steps} steps")
    stop = store.stops.engaged(plan.plan_id)
    try:
        choice = next_action(
            ctx.model,
            tool_specs(),
            _situation(plan, execution, stop),
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
    if result.get("refused"):
        execution.refused_calls += 1
        if execution.refused_calls > ctx.settings.model_retries * 3:
            update.update(_give_up(tc, state, f"the executor kept making refused calls: {result}"))
    if name in tools_with_role("rollback") and execution.rolled_back:
        audit(ctx, state, EventKind.rollback, ActorKind.agent, "executor", result)
    update["execution"] = execution.model_dump(mode="json")
    update["last_tool_result"] = json.dumps(result, sort_keys=True, default=str)
    return update


def _give_up(tc: ToolContext, state: RolloutState, reason: str) -> dict[str, Any]:
    """End a rollout the executor cannot finish, first sending touched devices back.

    A model that gives no usable answer, a run past its step bound or one that keeps
    making refused calls would leave devices half-way with nobody driving. As when abort
    criteria trip, every touched device goes back to the plan's rollback version, by the
    same rollback tool and through the same tools policy (so a pulled kill switch still
    stops it); then the run ends ``failed``.
    """
    ex = tc.execution
    reasons = [reason]
    if ex.touched and not ex.rolled_back:
        stop = tc.ctx.store.stops.engaged(tc.plan_id)
        args = {"reason": f"fieldgate stops the rollout: {reason}"}
        result = call_tool(tc, "rollback", args, approved=bool(state.get("approved")), stop=stop)
        if ex.rolled_back:
            audit(tc.ctx, state, EventKind.rollback, ActorKind.system, "fieldgate", result)
            reasons.append(
                f"rolled back {result['rolled_back']} of {len(ex.touched)} touched devices "
                f"to {result['to_version']}"
                + (f" ({result['not_confirmed']} not confirmed)" if result["not_confirmed"] else "")
            )
        else:
            why = result.get("refused") or result.get("error") or "no rollback"
            reasons.append(f"the {len(ex.touched)} touched devices were not rolled back: {why}")
    return {"execution": ex.model_dump(mode="json"), **finish("failed", *reasons)}


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
        )
        store.runs.update(
            state["thread_id"], "done", outcome=outcome, detail={"reasons": reasons}, tx=tx
        )
        if state.get("plan"):
            plan = plan_of(ctx, state)
            store.plans.set_status(plan.plan_id, outcome, plan.revision, tx=tx)
    ctx.checkpoint_audit()
    return {}


def route_after_executor(state: RolloutState) -> Literal["executor", "report"]:
    """Loop until the executor reaches an outcome."""
    return "report" if state.get("outcome") else "executor"
