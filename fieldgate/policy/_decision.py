"""The decisions as typed values, read from what an engine returned.

A result that does not read as its decision is a deny: the model is built from
the engine's dict, and any mismatch turns into the fail-closed deny with the reason.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from fieldgate.contract import problems_of
from fieldgate.policy._engine import APPROVALS, OPERATIONS, ROLLOUT, TOOLS, fail_closed


class _Decision(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)


class Violation(_Decision):
    """One deny with the rule that raised it."""

    rule: str
    """Rule id, e.g. ``D5`` (``engine`` when the engine failed)."""
    message: str
    """The deny message."""


class ApprovalNeed(_Decision):
    """Approvals a plan needs from one role."""

    role: str
    """Role, e.g. ``safety``."""
    count: int
    """How many distinct people of that role."""
    reason: str = ""
    """Why the policy asks for them."""


class RolloutDecision(_Decision):
    """``data.fieldgate.rollout.decision``: whether a plan may run and who must approve it."""

    allow: bool
    """Whether no rule denies (approvals may still be needed)."""
    deny: list[str]
    """Deny messages, sorted."""
    warn: list[str] = []
    """Warnings shown to approvers."""
    approvals: list[ApprovalNeed] = []
    """Approvals needed before it runs; empty: it runs without waiting."""
    violations: list[Violation] = []
    """Each deny with its rule id."""
    rollback: bool = False
    """Whether the policy judged the plan a rollback."""
    targets: int = 0
    """Targets the policy counted."""
    error: str | None = None
    """Set when the engine could not decide (the deny is then fail-closed)."""

    @property
    def needs_approval(self) -> bool:
        """Whether the plan is allowed but must wait for approvals."""
        return self.allow and bool(self.approvals)

    @property
    def rules(self) -> list[str]:
        """Ids of the rules that denied, sorted, once each."""
        return sorted({v.rule for v in self.violations})


class RoleCount(_Decision):
    """A number of approvals from one role."""

    role: str
    """Role."""
    count: int
    """How many."""


class IgnoredApproval(_Decision):
    """An approval that did not count, and why."""

    index: int
    """Position in the list of approvals."""
    approver: str
    """Who decided."""
    reason: str
    """Why it does not count."""


class ApprovalsDecision(_Decision):
    """``data.fieldgate.approvals.decision``: whether the approvals fill the roles needed."""

    satisfied: bool
    """Whether the plan may run: every role filled and no counted rejection."""
    missing: list[RoleCount]
    """Approvals still needed, by role."""
    rejected_by: list[str]
    """People whose counted rejection ends the plan."""
    rejected: bool = False
    """Whether a counted rejection ended the plan."""
    counted: list[str] = []
    """People whose approval counted."""
    ignored: list[IgnoredApproval] = []
    """Approvals that did not count, with the reason."""
    errors: list[str] = []
    """Input problems (the count is then not satisfied)."""
    error: str | None = None
    """Set when the engine could not decide."""


class ToolDecision(_Decision):
    """``data.fieldgate.tools.decision``: whether one tool call may run."""

    allow: bool
    """Whether the call may run."""
    reason: str
    """Why (every refusal, joined)."""
    reasons: list[str] = []
    """Each refusal."""
    kind: str = "unknown"
    """read, halt, deploy, rollback or unknown."""
    error: str | None = None
    """Set when the engine could not decide."""


class OperationDecision(_Decision):
    """``data.fieldgate.operations.decision``: whether a person may carry out an operation."""

    allow: bool
    """Whether they may."""
    reason: str
    """Why (the roles that allow it, or every refusal joined)."""
    reasons: list[str] = []
    """Each refusal."""
    error: str | None = None
    """Set when the engine could not decide."""


_MODELS: dict[str, type[_Decision]] = {
    ROLLOUT: RolloutDecision,
    APPROVALS: ApprovalsDecision,
    TOOLS: ToolDecision,
    OPERATIONS: OperationDecision,
}


def read_decision(path: str, result: dict[str, Any]) -> Any:
    """Read ``result`` as the decision at ``path``; a result that does not fit is a deny."""
    model = _MODELS[path]
    try:
        return model.model_validate(result)
    except ValidationError as exc:
        problems = "; ".join(f"{where}: {rule}" for where, rule in problems_of(exc))
        return model.model_validate(fail_closed(path, f"malformed decision at {path}: {problems}"))
