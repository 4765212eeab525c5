"""The rollout graph's first half: intake, planner, validator and the policy gate.

Each node returns a partial state update; routers do no I/O.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.config import get_config
from langgraph.runtime import Runtime
from pydantic import ValidationError

from fieldgate.agents import planning_context
from fieldgate.agents.planner import run_planner
from fieldgate.agents.validator import run_validator
from fieldgate.audit import ActorKind, EventKind
from fieldgate.contract import problems_of
from fieldgate.errors import FieldgateError, InputInvalid, ModelFailed
from fieldgate.graphs._record import (
    audit,
    audit_many,
    finish,
    manifest_or_none,
    model_failed,
    plan_of,
)
from fieldgate.graphs.state import RolloutInput, RolloutState
from fieldgate.plan import select_devices
from fieldgate.policy import rollout_input, verify_artifact
from fieldgate.runtime import Context
from fieldgate.validation import DryRun, check_plan, dry_run


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


def _api_actor(state: RolloutState, caller: str | None) -> str:
    """Check what a LangGraph API client sent against :class:`RolloutInput`; return who
    asks: the authenticated ``caller`` when the server has one, else the input's actor.

    Raises:
        InputInvalid: naming the missing or bad field; nothing was recorded.
    """
    given = {k: v for k, v in state.items() if k in RolloutInput.model_fields}
    try:
        sent = RolloutInput.model_validate(given)
    except ValidationError as exc:
        raise InputInvalid("rollout input", problems_of(exc, raw=True)) from None
    if caller and sent.actor and sent.actor != caller:
        problem = f"{sent.actor!r} is not the authenticated caller {caller!r}"
        raise InputInvalid("rollout input", [("actor", problem)])
    actor = sent.actor or caller
    if not actor:
        problem = "Field required (the server authenticated no caller to take it from)"
        raise InputInvalid("rollout input", [("actor", problem)])
    return actor


def intake(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Make sure the run and its request are on the record.

    Runs submitted through fieldgate were recorded before the graph started; a run
    started by a LangGraph API client (which knows only ``request`` and ``actor``) is
    checked against :class:`RolloutInput` and recorded here.
    """
    ctx = runtime.context
    configurable = get_config()["configurable"]
    thread_id = state.get("thread_id") or str(configurable["thread_id"])
    ids: dict[str, Any] = {} if state.get("thread_id") else {"thread_id": thread_id}
    if not state.get("plan_id"):
        ids["plan_id"] = thread_id
    if not ctx.store.runs.exists(thread_id):
        actor = _api_actor(state, configurable.get("langgraph_auth_user_id"))
        plan_id = state.get("plan_id") or thread_id
        accept_run(ctx, thread_id, plan_id, state["request"], actor, ticket=state.get("ticket"))
        ids["actor"] = actor
    return {"revisions": 0, "feedback": [], **ids}


# --------------------------------------------------------------------------- planner


def planner(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Ask the planner model for a plan (or a question); store and audit the revision."""
    ctx = runtime.context
    store = ctx.store
    manifests = [r.manifest for r in store.catalog.list()]
    sites, devices = store.fleet.snapshot()
    # What each device ran before, kept in the fleet store as versions change: one query,
    # not a read of every plan and device report in the audit log.
    history = store.fleet.previous_versions()
    summary = planning_context(devices, manifests, ctx.people_now(), sites=sites, previous=history)
    previous = plan_of(ctx, state) if state.get("plan") else None
    try:
        call = run_planner(
            ctx.model,
            state["request"],
            summary,
            feedback=state.get("feedback") or None,
            ticket=state.get("ticket"),
            previous=previous,
            retries=ctx.settings.model_retries,
            conversation=state.get("conversation") or None,
            revising=state.get("revising") or None,
        )
    except ModelFailed as exc:
        return model_failed(ctx, state, "planner", exc)
    tokens = {"planner": call.usage.as_dict()}
    if call.errors:
        audit(
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
        audit(
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
            **finish("needs_clarification", question),
        }
    revision = state.get("revisions", 0) + 1
    try:
        plan = decision.plan.to_plan(
            state["plan_id"], state["actor"], revision=revision, parent_hash=state.get("plan_hash")
        )
    except (ValueError, FieldgateError) as exc:
        return {"tokens": tokens, **finish("failed", f"the planner's plan is invalid: {exc}")}
    plan_json = plan.model_dump(mode="json")
    with store.writing(f"recording plan {plan.plan_id} revision {revision}") as tx:
        plan_hash = store.plans.add(plan, tx=tx).plan_hash
        audit_many(
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
    ctx = runtime.context
    plan = plan_of(ctx, state)
    manifest = manifest_or_none(ctx, plan.module, plan.version)
    _, devices = ctx.store.fleet.snapshot()
    sites = ctx.store.fleet.site_map()
    findings = check_plan(plan, manifest, devices, sites)
    target_sites = sorted({d.site for d in select_devices(plan.target, devices, sites)})
    forecast = (
        dry_run(plan, findings.wave_sizes, [sites[s] for s in target_sites], ctx.people_now())
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
        return model_failed(ctx, state, "validator", exc)
    review = call.value
    findings_json = findings.model_dump(mode="json")
    forecast_json = forecast.model_dump(mode="json")
    audit_many(
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
                finish(
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
    ctx = runtime.context
    store = ctx.store
    plan = plan_of(ctx, state)
    versions = {r.manifest.version: r for r in store.catalog.list(plan.module)}
    record = versions.get(plan.version) or store.catalog.record(plan.module, plan.version)
    manifest = record.manifest
    factory = store.keys.judge(ctx.root).trusted_keys("factory")
    keys = {key_id: key.public_b64 for key_id, key in factory.items()}
    check = verify_artifact(manifest, keys, record.observed_digest)
    _, fleet = store.fleet.snapshot()
    sites = store.fleet.site_map()
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
            now=ctx.people_now(),
            freeze=ctx.freeze_in_force() is not None,
        ),
        thread_id=state.get("thread_id"),
    )
    update: dict[str, Any] = {"decision": decision.model_dump(mode="json")}
    if not decision.allow:
        store.plans.set_status(plan.plan_id, "denied", plan.revision)
        update.update(finish("denied", *decision.deny))
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
    elif state.get("confirm"):
        with store.writing(f"marking plan {plan.plan_id} as awaiting confirmation") as tx:
            store.plans.set_status(plan.plan_id, "awaiting_confirmation", plan.revision, tx=tx)
            store.runs.update(state["thread_id"], "awaiting_confirmation", tx=tx)
        update["awaiting_confirmation"] = True
    else:
        update["approved"] = True
    return update


def route_after_gate(state: RolloutState) -> Literal["approval", "confirm", "queue", "report"]:
    """Deny ends the run; approvals wait; a plan that needs none waits for the requester's
    yes when asked to; otherwise the run is queued for execution."""
    if state.get("outcome"):
        return "report"
    if state.get("approved"):
        return "queue"
    return "confirm" if state.get("awaiting_confirmation") else "approval"
