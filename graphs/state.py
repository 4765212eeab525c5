"""The rollout graph's state: JSON-ready values, so every checkpointer can keep them."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field


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
    conversation: list[dict[str, str]]
    """Earlier turns of the chat this request continues (``role``, ``text``), oldest first."""
    revising: dict[str, Any]
    """The conversation's last plan (a draft), when the request revises it."""
    confirm: bool
    """Whether a plan policy allows without approvals waits for the requester's yes."""
    awaiting_confirmation: bool
    """Whether the run waits for the requester's yes (set by the policy gate)."""
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


class RolloutInput(BaseModel):
    """What starts a rollout run: the graph's declared input (``assistants.get_schemas``).

    fieldgate's own commands record the run before they start the graph and pass its ids;
    a LangGraph API client sends ``request`` (and ``actor`` unless the server authenticated
    the caller), and ``intake`` checks it against this schema before anything is recorded.
    """

    model_config = ConfigDict(extra="forbid")

    request: str = Field(min_length=1, max_length=4000)
    """What the engineer asks for, in their words."""
    actor: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$", max_length=64
    )
    """Who asks; taken from the authenticated caller when the server has one (and then it
    must be that caller)."""
    ticket: str | None = Field(default=None, max_length=20000)
    """Ticket text attached to the request (untrusted)."""
    plan_id: str | None = Field(default=None, max_length=128)
    """The plan's id (fieldgate's commands choose it; an API run takes the thread's)."""
    conversation: list[dict[str, str]] | None = Field(default=None, max_length=200)
    """Earlier turns of the conversation this request continues (``role``: user or
    assistant, ``text``), oldest first."""
    revising: dict[str, Any] | None = None
    """The conversation's last plan as a draft, when the request revises it."""
    confirm: bool | None = None
    """Wait for the requester's yes before queueing a plan that needs no approvals."""
    thread_id: str | None = Field(default=None, max_length=128)
    """The graph thread (an API run takes the thread's)."""
