"""What every node of the rollout graph shares: audit records, run endings, the plan at hand."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session

from fieldgate.audit import ActorKind, EventKind
from fieldgate.errors import ModelFailed, ModelOutputInvalid, NotFound
from fieldgate.graphs.state import RolloutState
from fieldgate.manifest import ModuleManifest
from fieldgate.plan import RolloutPlan
from fieldgate.runtime import Context
from fieldgate.store import NewEvent


def audit(
    ctx: Context,
    state: RolloutState,
    kind: EventKind,
    actor_kind: ActorKind,
    actor: str,
    payload: dict[str, Any],
    *,
    tx: Session | None = None,
    at: datetime | None = None,
    once: str | None = None,
) -> None:
    """Append one event of the run (see :func:`audit_many`); with ``once``, only the first
    append under that key lands."""
    audit_many(ctx, state, [(kind, actor_kind, actor, payload)], tx=tx, at=at, once=once)


def audit_many(
    ctx: Context,
    state: RolloutState,
    events: list[tuple[EventKind, ActorKind, str, dict[str, Any]]],
    *,
    tx: Session | None = None,
    at: datetime | None = None,
    once: str | None = None,
) -> None:
    """Append events in order, in one transaction (``tx``, when the caller has one).

    They are stamped ``at`` (default: the clock of what people do, the wall clock outside
    scenarios); a simulated run's virtual time goes in each payload as ``virtual_at``.
    With ``once`` (for one event), an append under a key already used is dropped.
    """
    at = at or ctx.people_now()
    ctx.store.audit.append_many(
        (
            NewEvent(
                kind=kind,
                actor_kind=actor_kind,
                actor=actor,
                payload=ctx.with_virtual_at(payload),
                plan_id=state.get("plan_id"),
                thread_id=state.get("thread_id"),
                at=at,
                once=once,
            )
            for kind, actor_kind, actor, payload in events
        ),
        tx=tx,
    )


def finish(outcome: str, *reasons: str) -> dict[str, Any]:
    """The state update that ends a run: how, and why."""
    return {"outcome": outcome, "reasons": list(reasons)}


def plan_of(ctx: Context, state: RolloutState) -> RolloutPlan:
    """The plan revision the run works on (parsed once per process, see ``Context.plans``)."""
    return ctx.plans.plan(state["plan"], state["plan_hash"])


def manifest_or_none(ctx: Context, module: str, version: str) -> ModuleManifest | None:
    """The catalog's manifest of ``module`` ``version``, or None when it has none."""
    try:
        return ctx.store.catalog.get(module, version)
    except NotFound:
        return None


def model_failed(ctx: Context, state: RolloutState, node: str, exc: ModelFailed) -> dict[str, Any]:
    """End the run on a model that gave no usable answer; audit what it said and spent."""
    audit(
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
        **finish("failed", f"the {node} model gave {what}: {exc}"),
    }
