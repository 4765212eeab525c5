"""The rollout graph's nodes. Each returns a partial state update; routers do no I/O."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from langgraph.config import get_config
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import BaseModel, ValidationError
from sqlmodel import Session

from fieldgate.agents import planning_context
from fieldgate.agents._structured import ModelFailed, ModelOutputInvalid, total_tokens
from fieldgate.agents.executor import next_action
from fieldgate.agents.planner import PlanDraft, run_planner
from fieldgate.agents.validator import run_validator
from fieldgate.approvals import Approval, draft_hash
from fieldgate.audit import ActorKind, EventKind
from fieldgate.contract import validation_problems
from fieldgate.errors import FieldgateError, NotFound
from fieldgate.fleet import Site
from fieldgate.graphs.approval import ApprovalAnswer, ApprovalResume, approval_request
from fieldgate.graphs.state import RolloutState
from fieldgate.manifest import ModuleManifest
from fieldgate.plan import RolloutPlan, assign_waves, select_devices
from fieldgate.policy import (
    approvals_input,
    rollout_input,
    tool_input,
    verify_approvals,
    verify_artifact,
)
from fieldgate.runtime import Context
from fieldgate.store import NewEvent
from fieldgate.tools import (
    TOOL_ARGS,
    Execution,
    ToolContext,
    WaveRun,
    deploy_wave,
    device_telemetry,
    fleet_status,
    rollback,
    tool_specs,
)
from fieldgate.validation import DryRun, check_plan, dry_run


def _context(runtime: Runtime[Context]) -> Context:
    """The run's context; a graph served by a LangGraph API server builds it from the env."""
    if runtime.context is not None:
        return runtime.context
    from fieldgate.graphs.compose import served_context

    return served_context()


def _audit(
    ctx: Context,
    state: RolloutState,
    kind: EventKind,
    actor_kind: ActorKind,
    actor: str,
    payload: dict[str, Any],
    *,
    tx: Session | None = None,
    at: datetime | None = None,
) -> None:
    _audit_many(ctx, state, [(kind, actor_kind, actor, payload)], tx=tx, at=at)


def _audit_many(
    ctx: Context,
    state: RolloutState,
    events: list[tuple[EventKind, ActorKind, str, dict[str, Any]]],
    *,
    tx: Session | None = None,
    at: datetime | None = None,
) -> None:
    """Append events in order, in one transaction (``tx``, when the caller has one).

    They are stamped ``at`` (default: the run's clock).
    """
    at = at or ctx.now()
    ctx.store.audit.append_many(
        (
            NewEvent(
                kind=kind,
                actor_kind=actor_kind,
                actor=actor,
                payload=payload,
                plan_id=state.get("plan_id"),
                thread_id=state.get("thread_id"),
                at=at,
            )
            for kind, actor_kind, actor, payload in events
        ),
        tx=tx,
    )


def _finish(outcome: str, *reasons: str) -> dict[str, Any]:
    return {"outcome": outcome, "reasons": list(reasons)}


def _plan(state: RolloutState) -> RolloutPlan:
    return RolloutPlan.model_validate(state["plan"])


def _manifest(ctx: Context, module: str, version: str) -> ModuleManifest | None:
    try:
        return ctx.store.catalog.get(module, version)
    except NotFound:
        return None


def _model_failed(ctx: Context, state: RolloutState, node: str, exc: ModelFailed) -> dict[str, Any]:
    """End the run on a model that gave no usable answer; audit what it said and spent."""
    _audit(
        ctx,
        state,
        EventKind.validation,
        ActorKind.agent,
        node,
        {"error": str(exc), "invalid_model_output": exc.rejected(), "tokens": exc.usage.as_dict()},
    )
    what = "no valid answer" if isinstance(exc, ModelOutputInvalid) else "no answer"
    return {
        "tokens": {node: exc.usage.as_dict()},
        **_finish("failed", f"the {node} model gave {what}: {exc}"),
    }


# --------------------------------------------------------------------------- intake


def accept_run(
    ctx: Context,
    thread_id: str,
    plan_id: str,
    request: str,
    actor: str,
    *,
    ticket: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record a run and audit its request in one transaction, before any node works on it.

    The request event is written with the run, so a run in the table always has its
    request on the record, and a rerun of ``intake`` after a crash adds nothing.
    """
    payload: dict[str, Any] = {"text": request, "actor": actor}
    if ticket:
        payload["ticket"] = {"untrusted": True, "text": ticket}
    store = ctx.store
    with store.writing(f"accepting run {thread_id}") as tx:
        store.runs.start(thread_id, plan_id, request, actor, detail, tx=tx)
        store.audit.append(
            EventKind.request,
            ActorKind.human,
            actor,
            payload,
            plan_id=plan_id,
            thread_id=thread_id,
            at=ctx.people_now(),
            tx=tx,
        )


def intake(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Make sure the run and its request are on the record.

    Runs submitted through fieldgate were recorded before the graph started; a run
    started by a LangGraph API client (which knows only ``request`` and ``actor``) is
    recorded here.
    """
    ctx = _context(runtime)
    ids: dict[str, Any] = {}
    if not state.get("thread_id"):
        ids["thread_id"] = str(get_config()["configurable"]["thread_id"])
    if not state.get("plan_id"):
        ids["plan_id"] = ids.get("thread_id") or state["thread_id"]
    thread_id = ids.get("thread_id") or state["thread_id"]
    if not ctx.store.runs.exists(thread_id):
        accept_run(
            ctx,
            thread_id,
            ids.get("plan_id") or state["plan_id"],
            state["request"],
            state["actor"],
            ticket=state.get("ticket"),
        )
    return {"revisions": 0, "feedback": [], **ids}


# --------------------------------------------------------------------------- planner


def planner(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Ask the planner model for a plan (or a question); store and audit the revision."""
    ctx = _context(runtime)
    store = ctx.store
    manifests = [r.manifest for r in store.catalog.list()]
    sites, devices = store.fleet.snapshot()
    summary = planning_context(devices, manifests, ctx.now(), sites=sites)
    previous = _plan(state) if state.get("plan") else None
    try:
        call = run_planner(
            ctx.model,
            state["request"],
            summary,
            feedback=state.get("feedback") or None,
            ticket=state.get("ticket"),
            previous=previous,
            retries=ctx.settings.model_retries,
        )
    except ModelFailed as exc:
        return _model_failed(ctx, state, "planner", exc)
    tokens = {"planner": call.usage.as_dict()}
    if call.errors:
        _audit(
            ctx,
            state,
            EventKind.validation,
            ActorKind.agent,
            "planner",
            {"invalid_model_output": call.rejected()},
        )
    decision = call.value
    if decision.kind == "clarify" or decision.plan is None:
        question = decision.question or "Please say which module, version and devices you mean."
        _audit(
            ctx,
            state,
            EventKind.rationale,
            ActorKind.agent,
            "planner",
            {"clarification": question, "candidates": decision.candidates},
        )
        return {
            "clarification": {"question": question, "candidates": decision.candidates},
            "tokens": tokens,
            **_finish("needs_clarification", question),
        }
    revision = state.get("revisions", 0) + 1
    try:
        plan = decision.plan.to_plan(
            state["plan_id"], state["actor"], revision=revision, parent_hash=state.get("plan_hash")
        )
    except (ValueError, FieldgateError) as exc:
        return {"tokens": tokens, **_finish("failed", f"the planner's plan is invalid: {exc}")}
    plan_json = plan.model_dump(mode="json")
    with store.writing(f"recording plan {plan.plan_id} revision {revision}") as tx:
        plan_hash = store.plans.add(plan, tx=tx).plan_hash
        _audit_many(
            ctx,
            state,
            [
                (
                    EventKind.rationale,
                    ActorKind.agent,
                    "planner",
                    {"revision": revision, "rationale": plan.rationale},
                ),
                (
                    EventKind.plan,
                    ActorKind.agent,
                    "planner",
                    {
                        "revision": revision,
                        "plan_hash": plan_hash,
                        "plan": plan_json,
                        "tokens": tokens["planner"],
                    },
                ),
            ],
            tx=tx,
        )
    return {
        "plan": plan_json,
        "plan_hash": plan_hash,
        "revisions": revision,
        "feedback": [],
        "approved": False,
        "tokens": tokens,
    }


def route_after_planner(state: RolloutState) -> Literal["validator", "report"]:
    """A question or an error ends the run; a plan goes to the validator."""
    return "report" if state.get("outcome") else "validator"


# --------------------------------------------------------------------------- validator


def validator(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Check the plan, dry-run it on the twin's model, and have the validator model review it."""
    ctx = _context(runtime)
    plan = _plan(state)
    manifest = _manifest(ctx, plan.module, plan.version)
    fleet_sites, devices = ctx.store.fleet.snapshot()
    sites = {s.id: s for s in fleet_sites}
    findings = check_plan(plan, manifest, devices, sites)
    target_sites = sorted({d.site for d in select_devices(plan.target, devices, sites)})
    forecast = (
        dry_run(plan, findings.wave_sizes, [sites[s] for s in target_sites], ctx.now())
        if findings.wave_sizes
        else DryRun(targets=0, waves=[], starts_at=None, predicted_minutes=0, blast_radius=0)
    )
    try:
        call = run_validator(
            ctx.model,
            plan,
            findings,
            forecast,
            description=manifest.description if manifest else "",
            retries=ctx.settings.model_retries,
        )
    except ModelFailed as exc:
        return _model_failed(ctx, state, "validator", exc)
    review = call.value
    findings_json = findings.model_dump(mode="json")
    forecast_json = forecast.model_dump(mode="json")
    _audit_many(
        ctx,
        state,
        [
            (
                EventKind.validation,
                ActorKind.agent,
                "validator",
                {
                    "plan_hash": plan.plan_hash,
                    "findings": findings_json,
                    "verdict": review.verdict,
                    "summary": review.summary,
                    "concerns": review.concerns,
                    "invalid_model_output": call.rejected(),
                    "tokens": call.usage.as_dict(),
                },
            ),
            (EventKind.dry_run, ActorKind.agent, "validator", forecast_json),
        ],
    )
    update: dict[str, Any] = {
        "findings": findings_json,
        "dry_run": forecast_json,
        "review": review.model_dump(mode="json"),
        "tokens": {"validator": call.usage.as_dict()},
        # An approver's edit is validated now; later answers must not send it round again.
        "edited": False,
    }
    if review.verdict == "revise":
        concerns = review.concerns or findings.problems or ["the validator asked for a revision"]
        if state.get("revisions", 0) >= ctx.settings.max_revisions:
            update.update(
                _finish(
                    "denied",
                    *[f"validation: {c}" for c in concerns],
                    f"no valid plan after {state.get('revisions')} revisions",
                )
            )
        else:
            update["feedback"] = concerns
    return update


def route_after_validator(state: RolloutState) -> Literal["planner", "policy_gate", "report"]:
    """Concerns go back to the planner; a clean plan goes to policy."""
    if state.get("outcome"):
        return "report"
    return "planner" if state.get("feedback") else "policy_gate"


# --------------------------------------------------------------------------- policy gate


def policy_gate(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Ask policy whether the plan may run and who must approve it."""
    ctx = _context(runtime)
    store = ctx.store
    plan = _plan(state)
    versions = {r.manifest.version: r for r in store.catalog.list(plan.module)}
    record = versions.get(plan.version) or store.catalog.record(plan.module, plan.version)
    manifest = record.manifest
    keys = {k.key_id: k.public_b64 for k in store.keys.for_purpose("artifact")}
    check = verify_artifact(manifest, keys, record.observed_digest)
    fleet_sites, fleet = store.fleet.snapshot()
    sites = {s.id: s for s in fleet_sites}
    devices = select_devices(plan.target, fleet, sites)
    installed = {(plan.module, v): r.manifest for v, r in versions.items()}
    decision = ctx.policy.rollout(
        rollout_input(
            plan,
            manifest,
            check,
            devices,
            sites,
            installed,
            actor=state["actor"],
            now=ctx.now(),
            freeze=ctx.freeze,
        ),
        thread_id=state.get("thread_id"),
    )
    update: dict[str, Any] = {"decision": decision.model_dump(mode="json")}
    if not decision.allow:
        store.plans.set_status(plan.plan_id, "denied", plan.revision)
        update.update(_finish("denied", *decision.deny))
        return update
    if decision.approvals:
        with store.writing(f"marking plan {plan.plan_id} as awaiting approval") as tx:
            store.plans.set_status(plan.plan_id, "awaiting_approval", plan.revision, tx=tx)
            store.runs.update(state["thread_id"], "awaiting_approval", tx=tx)
        update["approval_requested_at"] = ctx.people_now().isoformat()
        update["approvals"] = {
            "satisfied": False,
            "missing": [{"role": a.role, "count": a.count} for a in decision.approvals],
            "rejected_by": [],
        }
    else:
        update["approved"] = True
    return update


def route_after_gate(state: RolloutState) -> Literal["approval", "queue", "report"]:
    """Deny ends the run; approvals wait; otherwise the run is queued for execution."""
    if state.get("outcome"):
        return "report"
    return "queue" if state.get("approved") else "approval"


# --------------------------------------------------------------------------- approval


def approval(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Wait for an approver's decision; record it, count approvals by policy, route on."""
    ctx = _context(runtime)
    requested = datetime.fromisoformat(state["approval_requested_at"])
    deadline = requested + ctx.settings.approval_deadline
    answer = interrupt(
        approval_request(dict(state), deadline.isoformat()), response_schema=ApprovalAnswer
    ).root
    # Everything below runs only once a resume value arrived: no side effects before it.
    decision = answer.decisions[0]
    plan = _plan(state)
    if decision.type == "expire":
        if ctx.people_now() < deadline:
            return {}
        with ctx.store.writing(f"expiring plan {plan.plan_id}") as tx:
            _audit(
                ctx,
                state,
                EventKind.approval,
                ActorKind.system,
                "worker",
                {"expired": True, "deadline": deadline.isoformat()},
                tx=tx,
                at=ctx.people_now(),
            )
            ctx.store.plans.set_status(plan.plan_id, "expired", plan.revision, tx=tx)
        return _finish("expired", f"no quorum before the approval deadline {deadline.isoformat()}")
    if decision.type == "edit":
        return _edit(ctx, state, answer)
    record = answer.approval
    if record is None:
        _audit(
            ctx,
            state,
            EventKind.approval,
            ActorKind.human,
            answer.approver,
            {"refused": "an approve or reject decision must carry a signed approval"},
            at=ctx.people_now(),
        )
        return {}
    not_stored = _record_approval(ctx, state, record)
    unrecorded = (record, not_stored) if not_stored is not None else None
    return _count_approvals(ctx, state, plan, unrecorded)


def _record_approval(ctx: Context, state: RolloutState, record: Approval) -> str | None:
    """Store and audit an approval; return why it could not be stored, if it could not."""
    reason: str | None = None
    try:
        ctx.store.approvals.add(record)
    except FieldgateError as exc:
        reason = str(exc)
    payload: dict[str, Any] = {
        "approver": record.approver,
        "decision": record.decision.value,
        "plan_hash": record.plan_hash,
        "comment": record.comment,
        "key_id": record.key_id,
    }
    if reason is not None:
        payload["not_stored"] = reason
    _audit(
        ctx,
        state,
        EventKind.approval,
        ActorKind.human,
        record.approver,
        payload,
        at=ctx.people_now(),
    )
    return reason


def _count_approvals(
    ctx: Context,
    state: RolloutState,
    plan: RolloutPlan,
    unrecorded: tuple[Approval, str] | None = None,
) -> dict[str, Any]:
    received = ctx.store.approvals.for_plan(plan.plan_id)
    keys = {
        person: key.public_b64
        for person in {a.approver for a in received}
        for key in ctx.store.keys.for_owner(person, "approver")[-1:]
    }
    valid = verify_approvals(received, keys)
    required = state.get("decision", {}).get("approvals", [])
    counted = ctx.policy.approvals(
        approvals_input(
            plan.plan_hash,
            plan.requested_by,
            received,
            valid,
            ctx.roster or None,
            required,
            plan_id=plan.plan_id,
        ),
        thread_id=state.get("thread_id"),
    )
    update: dict[str, Any] = {"approvals": counted.model_dump(mode="json")}
    if unrecorded is not None:
        # The store refused it (it names no stored revision of this plan), so policy never
        # saw it; the approver still learns why it did not count.
        record, reason = unrecorded
        update["approvals"]["ignored"].append(
            {"index": len(received), "approver": record.approver, "reason": reason}
        )
    if counted.rejected:
        ctx.store.plans.set_status(plan.plan_id, "rejected", plan.revision)
        update.update(_finish("rejected", f"rejected by {', '.join(counted.rejected_by)}"))
    elif counted.satisfied:
        ctx.store.plans.set_status(plan.plan_id, "approved", plan.revision)
        update["approved"] = True
    return update


def _edit_refused(ctx: Context, answer: ApprovalResume, current: RolloutPlan) -> str | None:
    """Why an approver's edit cannot be taken, or None when it is signed as it must be."""
    edited = answer.decisions[0].edited_action
    if edited is None or not isinstance(edited.args.get("plan"), dict):
        return "an edit carries the plan draft in edited_action.args.plan"
    record = answer.edit
    if record is None:
        return "an edit must carry a signed edit record"
    if record.editor != answer.approver:
        return f"the edit record is {record.editor}'s, not {answer.approver}'s"
    if (record.plan_id, record.plan_hash) != (current.plan_id, current.plan_hash):
        return "the edit record names another plan revision than the one waiting"
    if record.draft_hash != draft_hash(edited.args["plan"]):
        return "the draft is not the one the edit record signs"
    keys = ctx.store.keys.for_owner(record.editor, "approver")[-1:]
    if (
        not keys
        or keys[0].key_id != record.key_id
        or not record.signature_valid(keys[0].public_b64)
    ):
        return f"the edit's signature does not verify with {record.editor}'s approver key"
    return None


def _edit(ctx: Context, state: RolloutState, answer: ApprovalResume) -> dict[str, Any]:
    edited = answer.decisions[0].edited_action
    current = _plan(state)
    revision = state.get("revisions", 0) + 1
    refused = _edit_refused(ctx, answer, current)
    plan: RolloutPlan | None = None
    if refused is None and edited is not None:
        try:
            plan = PlanDraft.model_validate(edited.args["plan"]).to_plan(
                current.plan_id,
                current.requested_by,
                revision=revision,
                parent_hash=current.plan_hash,
            )
        except ValueError as exc:
            refused = str(exc)
    if plan is None:
        _audit(
            ctx,
            state,
            EventKind.approval,
            ActorKind.human,
            answer.approver,
            {"refused_edit": refused},
            at=ctx.people_now(),
        )
        return {}
    with ctx.store.writing(f"recording the edit of plan {plan.plan_id}") as tx:
        ctx.store.plans.add(plan, tx=tx)
        _audit(
            ctx,
            state,
            EventKind.plan,
            ActorKind.human,
            answer.approver,
            {
                "revision": revision,
                "plan_hash": plan.plan_hash,
                "edited_by": answer.approver,
                "key_id": answer.edit.key_id if answer.edit else "",
                "plan": plan.model_dump(mode="json"),
            },
            tx=tx,
            at=ctx.people_now(),
        )
    return {
        "plan": plan.model_dump(mode="json"),
        "plan_hash": plan.plan_hash,
        "revisions": revision,
        "approved": False,
        "approvals": {},
        "feedback": [],
        "edited": True,
    }


def route_after_approval(
    state: RolloutState,
) -> Literal["approval", "validator", "queue", "report"]:
    """Quorum: queue; rejection or expiry: report; an edit: validate again; else wait on."""
    if state.get("outcome"):
        return "report"
    if state.get("approved"):
        return "queue"
    if state.get("edited"):
        return "validator"
    return "approval"


# --------------------------------------------------------------------------- queue


def queue(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Hand the approved run to a worker (the graph pauses after this node)."""
    ctx = _context(runtime)
    plan = _plan(state)
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


def _policy_args(tc: ToolContext, name: str, args: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The call as the enforcement point checks it: what it would send to which devices."""
    plan = tc.plan
    if name == "deploy_wave":
        wave = args["wave"]
        devices = tc.execution.waves[wave].devices if 0 <= wave < len(tc.execution.waves) else []
        return {
            **args,
            "plan_hash": tc.plan_hash,
            "module": plan.module,
            "version": plan.version,
            "digest": tc.manifest.artifact.digest,
            "devices": devices,
        }, len(devices)
    if name == "rollback":
        return {
            **args,
            "plan_hash": tc.plan_hash,
            "module": plan.module,
            "version": plan.rollback.version if plan.rollback else None,
            "devices": list(tc.execution.touched),
        }, len(tc.execution.touched)
    return dict(args), 0


def _outcome_of(ex: Execution) -> tuple[str, str]:
    if ex.rolled_back:
        return "rolled_back", ex.abort.reason or "rolled back"
    if ex.paused:
        return "aborted", "dispatch stopped"
    if ex.abort.tripped:
        return "aborted", ex.abort.reason
    if ex.finished_waves:
        return "completed", f"all {len(ex.waves)} waves passed their gates"
    return "aborted", "the executor stopped before every wave had run"


def executor(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """One executor step: the model picks a tool call, policy checks it, the tool runs."""
    ctx = _context(runtime)
    store = ctx.store
    plan = _plan(state)
    manifest = store.catalog.get(plan.module, plan.version)
    rollback_manifest = (
        _manifest(ctx, plan.module, plan.rollback.version)
        if plan.rollback and plan.rollback.version
        else None
    )
    sites = {s.id: s for s in store.fleet.sites()}
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
        failed = _model_failed(ctx, state, "executor", exc)
        return {**failed, **_give_up(tc, state, failed["reasons"][0])}
    execution.steps += 1
    update: dict[str, Any] = {"tokens": {"executor": choice.usage.as_dict()}}
    if choice.name is None:
        outcome, reason = _outcome_of(execution)
        update.update({"execution": execution.model_dump(mode="json"), **_finish(outcome, reason)})
        return update
    # The switch may have been pulled while the model was thinking: check the call against
    # the switch as it is now, not as it was when the situation was shown.
    stop = store.stops.engaged(plan.plan_id)
    name, result = choice.name, _run_call(tc, state, choice.name, choice.args, stop)
    if result.get("refused"):
        execution.refused_calls += 1
        if execution.refused_calls > ctx.settings.model_retries * 3:
            update.update(_give_up(tc, state, f"the executor kept making refused calls: {result}"))
    if name == "rollback" and execution.rolled_back:
        _audit(ctx, state, EventKind.rollback, ActorKind.agent, "executor", result)
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
        result = _run_call(tc, state, "rollback", args, stop)
        if ex.rolled_back:
            _audit(tc.ctx, state, EventKind.rollback, ActorKind.system, "fieldgate", result)
            reasons.append(
                f"rolled back {result['rolled_back']} of {len(ex.touched)} touched devices "
                f"to {result['to_version']}"
                + (f" ({result['not_confirmed']} not confirmed)" if result["not_confirmed"] else "")
            )
        else:
            why = result.get("refused") or result.get("error") or "no rollback"
            reasons.append(f"the {len(ex.touched)} touched devices were not rolled back: {why}")
    return {"execution": ex.model_dump(mode="json"), **_finish("failed", *reasons)}


def _run_call(
    tc: ToolContext, state: RolloutState, name: str, args: dict[str, Any], stop: str | None
) -> dict[str, Any]:
    """Validate, authorize, audit and run one tool call; never raise for the model's mistakes."""
    ctx = tc.ctx
    schema = TOOL_ARGS.get(name)
    if schema is None:
        _audit(
            ctx,
            state,
            EventKind.tool_call,
            ActorKind.agent,
            "executor",
            {"tool": name, "args": args, "allow": False, "reason": "unknown tool"},
        )
        return {"refused": f"unknown tool {name!r}; use one of {sorted(TOOL_ARGS)}"}
    try:
        parsed = _tool_arguments(schema, args)
    except ValueError as exc:
        _audit(
            ctx,
            state,
            EventKind.tool_call,
            ActorKind.agent,
            "executor",
            {"tool": name, "args": args, "allow": False, "reason": f"invalid arguments: {exc}"},
        )
        return {"refused": f"invalid arguments for {name}: {exc}"}
    checked, device_count = _policy_args(tc, name, parsed)
    ex = tc.execution
    current = ex.current if ex.current < len(ex.waves) else None
    decision = ctx.policy.tool(
        tool_input(
            name,
            checked,
            plan=tc.plan,
            digest=tc.manifest.artifact.digest,
            approved=bool(state.get("approved")),
            plan_devices=[d for w in ex.waves for d in w.devices],
            wave_index=current,
            wave_devices=ex.waves[current].devices if current is not None else (),
            previous_gate_passed=current == 0
            or (current is not None and ex.waves[current - 1].status == "passed"),
            kill_switch=stop is not None,
        ),
        thread_id=tc.thread_id,
    )
    shown = {k: v for k, v in checked.items() if k != "devices"}
    _audit(
        ctx,
        state,
        EventKind.tool_call,
        ActorKind.agent,
        "executor",
        {
            "tool": name,
            "args": shown,
            "devices": device_count,
            "allow": decision.allow,
            "reason": decision.reason,
        },
    )
    if not decision.allow:
        return {"refused": decision.reason}
    result = _dispatch_tool(tc, name, parsed, stop)
    _audit(
        ctx,
        state,
        EventKind.tool_result,
        ActorKind.agent,
        "executor",
        {"tool": name, "result": result},
    )
    if ex.abort.tripped and name == "deploy_wave":
        _audit(
            ctx,
            state,
            EventKind.abort,
            ActorKind.agent,
            "executor",
            {"reason": ex.abort.reason, "failures": ex.failures, "executed": ex.executed},
        )
    return result


def _tool_arguments(schema: type[BaseModel], args: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments, checked: valid JSON, and the tool's schema (no extra arguments)."""
    if "__invalid__" in args:
        raise ValueError(f"the arguments are not valid JSON: {args['__invalid__']}")
    try:
        return schema.model_validate(args).model_dump()
    except ValidationError as exc:
        raise ValueError(validation_problems(exc)) from None


def _dispatch_tool(
    tc: ToolContext, name: str, args: dict[str, Any], stop: str | None
) -> dict[str, Any]:
    ex = tc.execution
    if name == "deploy_wave":
        result = deploy_wave(tc, args["wave"])
        if "halted" in result:
            _audit(
                tc.ctx,
                {"plan_id": tc.plan_id, "thread_id": tc.thread_id},
                EventKind.stop,
                ActorKind.system,
                "kill-switch",
                {"reason": result["halted"], "wave": args["wave"]},
            )
        return result
    if name == "rollback":
        return rollback(tc, args["reason"])
    if name == "pause":
        ex.paused = True
        if stop:
            _audit(
                tc.ctx,
                {"plan_id": tc.plan_id, "thread_id": tc.thread_id},
                EventKind.stop,
                ActorKind.system,
                "kill-switch",
                {"reason": stop},
            )
        return {"paused": True, "reason": args["reason"]}
    if name == "resume":
        ex.paused = False
        return {"paused": False}
    if name == "fleet_status":
        return fleet_status(tc, args.get("wave"))
    return device_telemetry(tc, args["device_id"])


# --------------------------------------------------------------------------- report


def report(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Close the run: the outcome goes to the audit log, the runs table and the plan."""
    ctx = _context(runtime)
    outcome = state.get("outcome", "failed")
    reasons = state.get("reasons", [])
    store = ctx.store
    with store.writing(f"closing run {state['thread_id']}") as tx:
        _audit(
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
            plan = _plan(state)
            store.plans.set_status(plan.plan_id, outcome, plan.revision, tx=tx)
    return {}


def route_after_executor(state: RolloutState) -> Literal["executor", "report"]:
    """Loop until the executor reaches an outcome."""
    return "report" if state.get("outcome") else "executor"
