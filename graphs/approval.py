"""The approval node: the request, its answer, and the bookkeeping of who approved.

The request is in langchain v1's human-in-the-loop shape: it carries
``action_requests`` and ``review_configs`` so Agent-Inbox-style clients can render
it; the answer carries ``decisions`` plus who answered and the signed approval (or
edit) record. Approvals are stored and audited as they arrive and counted by the
approvals policy; an approver's signed edit becomes a new plan revision.
"""

from __future__ import annotations

import copy
from datetime import datetime
from functools import cache
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import BaseModel, Field, RootModel, TypeAdapter
from pydantic.json_schema import GetJsonSchemaHandler, JsonSchemaValue
from pydantic_core import CoreSchema

from fieldgate.agents.planner import PlanDraft
from fieldgate.approvals import Approval, PlanEdit, draft_hash
from fieldgate.audit import ActorKind, EventKind
from fieldgate.errors import FieldgateError
from fieldgate.graphs._record import audit, finish, plan_of
from fieldgate.graphs.state import RolloutState
from fieldgate.plan import RolloutPlan
from fieldgate.policy import approval_timing, approvals_input, verify_approvals
from fieldgate.runtime import Context

ACTION_NAME = "execute_rollout_plan"


class EditedAction(BaseModel):
    """An approver's edit: the same action with a changed plan."""

    name: str = ACTION_NAME
    args: dict[str, Any]
    """``{"plan": PlanDraft}``: the plan as the approver wants it. Checked as a ``PlanDraft``
    when the edit is applied (kept loose here so that the interrupt's response schema, which
    is rebuilt at every interrupt, stays small)."""


class ReviewDecision(BaseModel):
    """One decision on the action request."""

    type: Literal["approve", "edit", "reject", "expire"]
    """approve, edit or reject; ``expire`` is sent by a worker once the deadline passed."""
    message: str = ""
    """Comment."""
    edited_action: EditedAction | None = None
    """The edited plan, for ``edit``."""


class ApprovalResume(BaseModel):
    """What resumes the approval interrupt."""

    decisions: list[ReviewDecision] = Field(min_length=1, max_length=1)
    """Exactly one decision (one action is reviewed)."""
    approver: str = Field(min_length=1)
    """Who answers."""
    approval: Approval | None = None
    """The signed approval record, for approve and reject."""
    edit: PlanEdit | None = None
    """The signed edit record, for edit: binds the edited draft to the approver's key."""


class ApprovalAnswer(RootModel[ApprovalResume]):
    """The approval interrupt's ``response_schema``: validates an answer as ``ApprovalResume``.

    LangGraph turns a response schema into JSON Schema at every interrupt, which for
    ``ApprovalResume`` costs more than the rest of the approval node; this model
    validates exactly like it but hands out a JSON Schema built once.
    """

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return copy.deepcopy(resume_json_schema())


@cache
def resume_json_schema() -> dict[str, Any]:
    """``ApprovalResume``'s JSON Schema with its definitions written in place (no ``$ref``)."""
    schema = TypeAdapter(ApprovalResume).json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = definitions[node["$ref"].removeprefix("#/$defs/")]
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return inline({**target, **rest})
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


def _markdown(state: dict[str, Any]) -> str:
    plan = state.get("plan", {})
    decision = state.get("decision", {})
    dry_run = state.get("dry_run", {})
    approvals = state.get("approvals", {})
    missing = approvals.get("missing") or decision.get("approvals") or []
    lines = [
        f"### Plan {plan.get('plan_id')} r{plan.get('revision')}: "
        f"{plan.get('module')} {plan.get('version')} ({plan.get('intent')})",
        f"Requested by **{plan.get('requested_by')}**; "
        f"plan hash `{state.get('plan_hash', '')[:16]}`",
        "",
        "| wave | devices | max parallel | gate |",
        "|---|---|---|---|",
    ]
    for index, wave in enumerate(plan.get("waves", [])):
        size = (state.get("findings", {}).get("wave_sizes") or [None] * 99)[index]
        gate = wave.get("health_gate") or {}
        rate = gate.get("min_success_rate")
        healthy = "?" if rate is None else f"{rate * 100:g}%"
        lines.append(
            f"| {index + 1} {wave.get('name')} | {size} | {wave.get('max_parallel')} | "
            f"≥{healthy} healthy, ≤{gate.get('max_failures', '?')} "
            f"failures, soak {gate.get('soak_minutes', 0)} min |"
        )
    # Blank lines between the bold lines: markdown viewers would run them together.
    lines += [
        "",
        f"**Schedule:** {plan.get('schedule', {}).get('mode')}; **rollback to:** "
        f"{(plan.get('rollback') or {}).get('version')}",
        "",
        f"**Dry run:** {dry_run.get('targets')} targets, about {dry_run.get('predicted_minutes')} "
        f"min, blast radius {dry_run.get('blast_radius')} if the first wave fails.",
        "",
        "**Policy:** allowed with approvals; warnings: "
        + (", ".join(decision.get("warn", [])) or "none"),
        "",
        "**Approvals missing:** "
        + (", ".join(f"{a['count']}× {a['role']}" for a in missing) or "none"),
        "",
        "**Rationale:** " + str(plan.get("rationale", "")),
    ]
    return "\n".join(lines)


def approval_request(state: dict[str, Any], deadline: str) -> dict[str, Any]:
    """The interrupt payload for the current plan revision (pure: no I/O)."""
    plan = state.get("plan", {})
    return {
        "action_requests": [
            {
                "name": ACTION_NAME,
                "args": {
                    "plan_id": plan.get("plan_id"),
                    "revision": plan.get("revision"),
                    "plan_hash": state.get("plan_hash"),
                    "module": plan.get("module"),
                    "version": plan.get("version"),
                    "targets": state.get("findings", {}).get("targets"),
                    "plan": plan,
                },
                "description": _markdown(state),
            }
        ],
        "review_configs": [
            {"action_name": ACTION_NAME, "allowed_decisions": ["approve", "edit", "reject"]}
        ],
        "plan_id": plan.get("plan_id"),
        "plan_hash": state.get("plan_hash"),
        "approvals_missing": (state.get("approvals") or {}).get("missing")
        or (state.get("decision") or {}).get("approvals", []),
        "deadline": deadline,
    }


SIGNED_APPROVAL_NEEDED = "an approve or reject decision must carry a signed approval"


def _refused(ctx: Context, state: RolloutState, approver: str, payload: dict[str, Any]) -> None:
    """Audit an answer that could not be taken, on people's clock."""
    audit(ctx, state, EventKind.approval, ActorKind.human, approver, payload, at=ctx.people_now())


UNVERIFIED = "the signature does not verify"
"""The approvals policy's reason for an approval whose signature does not verify (C1)."""


def _deadline(ctx: Context, state: RolloutState) -> datetime:
    """When the approval request of the current run expires."""
    return datetime.fromisoformat(state["approval_requested_at"]) + ctx.settings.approval_deadline


def approval(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Wait for an approver's decision; record it, count approvals by policy, route on."""
    ctx = runtime.context
    deadline = _deadline(ctx, state)
    answer = interrupt(
        approval_request(dict(state), deadline.isoformat()), response_schema=ApprovalAnswer
    ).root
    # Everything below runs only once a resume value arrived: no side effects before it.
    decision = answer.decisions[0]
    plan = plan_of(ctx, state)
    if decision.type == "expire":
        if ctx.people_now() < deadline:
            return {}
        with ctx.store.writing(f"expiring plan {plan.plan_id}") as tx:
            audit(
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
        return finish("expired", f"no quorum before the approval deadline {deadline.isoformat()}")
    if decision.type == "edit":
        return _edit(ctx, state, answer)
    record = answer.approval
    if record is None:
        _refused(ctx, state, answer.approver, {"refused": SIGNED_APPROVAL_NEEDED})
        return {}
    not_stored = _record_approval(ctx, state, record)
    unrecorded = (record, not_stored) if not_stored is not None else None
    return _count_approvals(ctx, state, plan, unrecorded)


def _record_approval(ctx: Context, state: RolloutState, record: Approval) -> str | None:
    """Store and audit an approval; return why it could not be stored, if it could not."""
    reason: str | None = None
    try:
        ctx.store.approvals.add(record, received_at=ctx.people_now())
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
    audit(
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
    arrived = ctx.store.approvals.received(plan.plan_id)
    received = [approval for approval, _ in arrived]
    trust = ctx.store.keys.judge(ctx.root)
    keys = trust.public_keys("approver")
    valid = verify_approvals(received, keys)
    deadline = _deadline(ctx, state)
    skew = ctx.settings.approval_skew
    timing = {
        index: approval_timing(approval, at, deadline, skew)
        for index, (approval, at) in enumerate(arrived)
    }
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
            timing=timing,
        ),
        thread_id=state.get("thread_id"),
    )
    update: dict[str, Any] = {"approvals": counted.model_dump(mode="json")}
    for entry in update["approvals"]["ignored"]:
        # Name why a signature did not verify when the approver has no enrolled key.
        person = entry.get("approver", "")
        if entry.get("reason") == UNVERIFIED and person not in keys:
            entry["reason"] = f"{UNVERIFIED}: {trust.why_not(person, 'approver')}"
    if unrecorded is not None:
        # The store refused it (it names no stored revision of this plan), so policy never
        # saw it; the approver still learns why it did not count.
        record, reason = unrecorded
        update["approvals"]["ignored"].append(
            {"index": len(received), "approver": record.approver, "reason": reason}
        )
    if counted.rejected:
        ctx.store.plans.set_status(plan.plan_id, "rejected", plan.revision)
        update.update(finish("rejected", f"rejected by {', '.join(counted.rejected_by)}"))
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
    trust = ctx.store.keys.judge(ctx.root)
    key = trust.current(record.editor, "approver")
    if key is None:
        why = trust.why_not(record.editor, "approver")
        return f"{record.editor} has no trusted approver key: {why}"
    if key.key_id != record.key_id or not record.signature_valid(key.public_b64):
        return f"the edit's signature does not verify with {record.editor}'s approver key"
    return None


def _edit(ctx: Context, state: RolloutState, answer: ApprovalResume) -> dict[str, Any]:
    edited = answer.decisions[0].edited_action
    current = plan_of(ctx, state)
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
        _refused(ctx, state, answer.approver, {"refused_edit": refused})
        return {}
    with ctx.store.writing(f"recording the edit of plan {plan.plan_id}") as tx:
        ctx.store.plans.add(plan, tx=tx)
        audit(
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
