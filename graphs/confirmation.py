"""The confirm node: a plan policy allows without approvals waits for its requester's yes.

Only runs submitted with ``confirm`` (the chat, unless told ``--yes`` or
``FIELDGATE_CONFIRM=0``) come here; the eval harness and scripts that drive the
orchestrator directly queue such plans at once, as before.
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import BaseModel, Field

from fieldgate.audit import ActorKind, EventKind
from fieldgate.graphs._record import audit, plan_of
from fieldgate.graphs.state import RolloutState
from fieldgate.runtime import Context

CONFIRMATION = "confirmation"
"""The ``kind`` of the confirm interrupt's payload (approval requests carry none)."""


class ConfirmResume(BaseModel):
    """What resumes the confirm interrupt: the requester's yes."""

    confirmed_by: str = Field(min_length=1)
    """Who says yes; only the requester's yes counts."""
    plan_hash: str = Field(min_length=1)
    """The revision they saw: a yes to another revision does not count."""


def confirmation_request(state: RolloutState) -> dict[str, Any]:
    """The interrupt payload: which revision waits for whose yes (pure: no I/O)."""
    plan = state.get("plan", {})
    return {
        "kind": CONFIRMATION,
        "plan_id": plan.get("plan_id"),
        "revision": plan.get("revision"),
        "plan_hash": state.get("plan_hash"),
        "requester": state.get("actor"),
    }


def confirm(state: RolloutState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Wait for the requester's yes; audit it and queue the run, or audit why it did not count."""
    ctx = runtime.context
    answer = ConfirmResume.model_validate(interrupt(confirmation_request(state)))
    plan = plan_of(ctx, state)
    refused = None
    if answer.confirmed_by != state["actor"]:
        refused = f"only the requester {state['actor']} confirms their plan"
    elif answer.plan_hash != plan.plan_hash:
        refused = "the confirmation names another revision than the one waiting"
    payload: dict[str, Any] = {"confirmed": refused is None, "plan_hash": answer.plan_hash}
    if refused:
        payload["refused"] = refused
    audit(
        ctx,
        state,
        EventKind.approval,
        ActorKind.human,
        answer.confirmed_by,
        payload,
        at=ctx.people_now(),
    )
    if refused:
        return {}
    return {"approved": True, "awaiting_confirmation": False}


def route_after_confirm(state: RolloutState) -> Literal["confirm", "queue", "report"]:
    """A yes queues the run; a withdrawal ends it; anything else waits on."""
    if state.get("outcome"):
        return "report"
    return "queue" if state.get("approved") else "confirm"
