"""The rollout graph's state: JSON-ready values, so every checkpointer can keep them."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict


def merge_tokens(
    left: dict[str, dict[str, int]] | None, right: dict[str, dict[str, int]] | None
) -> dict[str, dict[str, int]]:
    """Add token counts per node."""
    merged = {node: dict(counts) for node, counts in (left or {}).items()}
    for node, counts in (right or {}).items():
        into = merged.setdefault(node, {})
        for key, value in counts.items():
            into[key] = into.get(key, 0) + value
    return merged


class RolloutState(TypedDict, total=False):
    """Everything one rollout run knows between steps."""

    request: str
    """What the engineer asked."""
    actor: str
    """Who asked."""
    plan_id: str
    """Id of the plan the run works on (every revision shares it)."""
    thread_id: str
    """The graph thread."""
    ticket: str
    """Ticket text attached to the request (untrusted)."""
    plan: dict[str, Any]
    """The current plan revision, as JSON."""
    plan_hash: str
    """Its hash: approvals and tool calls are bound to it."""
    revisions: int
    """Plan revisions proposed so far."""
    feedback: list[str]
    """Validator concerns the planner must address."""
    clarification: dict[str, Any]
    """The question for the engineer, when the request cannot be planned."""
    findings: dict[str, Any]
    """The validator's deterministic findings."""
    dry_run: dict[str, Any]
    """The dry run on the twin's model."""
    review: dict[str, Any]
    """The validator model's review."""
    decision: dict[str, Any]
    """The rollout policy decision."""
    approvals: dict[str, Any]
    """The approvals policy decision."""
    approval_requested_at: str
    """When approvals were first asked for (ISO time)."""
    approved: bool
    """Whether the quorum was reached for the current revision."""
    edited: bool
    """Whether an approver just edited the plan (it goes back through validation)."""
    execution: dict[str, Any]
    """The executor's progress."""
    last_tool_result: str
    """What the last tool call returned (shown to the executor model as data)."""
    outcome: str
    """How the run ended."""
    reasons: list[str]
    """Why it ended that way."""
    tokens: Annotated[dict[str, dict[str, int]], merge_tokens]
    """Tokens in and out per node."""
