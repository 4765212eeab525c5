"""The approval request and its answer, in langchain v1's human-in-the-loop shape.

The request carries ``action_requests`` and ``review_configs`` so Agent-Inbox-style
clients can render it; the answer carries ``decisions`` plus who answered and the
signed approval record.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, Field, RootModel, TypeAdapter
from pydantic.json_schema import GetJsonSchemaHandler, JsonSchemaValue
from pydantic_core import CoreSchema

from fieldgate.approvals import Approval, PlanEdit

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
        lines.append(
            f"| {index + 1} {wave.get('name')} | {size} | {wave.get('max_parallel')} | "
            f"≥{gate.get('min_success_rate', '?')} healthy, ≤{gate.get('max_failures', '?')} "
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
