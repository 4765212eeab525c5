"""The policy gate: evaluate, time, and write every decision to the audit log."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel

from fieldgate.audit import VIRTUAL_AT, ActorKind, EventKind
from fieldgate.contract import canonical_json, sha256_hex
from fieldgate.policy._decision import (
    ApprovalsDecision,
    OperationDecision,
    RolloutDecision,
    ToolDecision,
    read_decision,
)
from fieldgate.policy._engine import (
    APPROVALS,
    OPERATIONS,
    ROLLOUT,
    TOOLS,
    PolicyEngine,
    fail_closed,
    normalize_path,
)
from fieldgate.policy._input import ApprovalsInput, OperationInput, RolloutInput, ToolInput


class AuditSink(Protocol):
    """Where decisions are written: the audit store (``store.audit``) or anything like it."""

    def append(
        self,
        kind: Any,
        actor_kind: Any,
        actor: str,
        payload: dict[str, Any],
        plan_id: str | None = None,
        thread_id: str | None = None,
        at: datetime | None = None,
    ) -> Any:
        """Append one event; raise when it could not be written."""
        ...


def input_document(input: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    """The JSON document of a policy input (models dumped with field aliases)."""
    if isinstance(input, BaseModel):
        return input.model_dump(mode="json", by_alias=True)
    return dict(input)


def input_digest(document: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a policy input."""
    return sha256_hex(canonical_json(dict(document)))


class PolicyGate:
    """Every policy decision of fieldgate goes through here.

    It evaluates with the engine, measures the latency, and appends a
    ``policy_decision`` event ``{path, input_digest, result, policy_revision,
    engine, latency_ms}`` to the audit log. When the event cannot be written the
    decision is a deny: nothing happens that the log does not show.
    """

    def __init__(
        self,
        engine: PolicyEngine,
        audit: AuditSink,
        *,
        actor: str = "policy-gate",
        clock: Callable[[], datetime] | None = None,
        virtual_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.actor = actor
        self.clock = clock
        """The clock of the events' times (the wall clock on the command line, a scenario's
        virtual clock in evals); None: now."""
        self.virtual_clock = virtual_clock
        """The twin's virtual clock of a simulated run: its reading goes in each decision's
        payload as ``virtual_at``; None: the run is on the wall clock."""

    def decide(
        self,
        path: str,
        input: Mapping[str, Any] | BaseModel,
        *,
        plan_id: str | None = None,
        thread_id: str | None = None,
    ) -> dict[str, Any]:
        """Evaluate ``path`` for ``input``, log it, return the result (a deny on any failure)."""
        path = normalize_path(path)
        document = input_document(input)
        started = time.perf_counter()
        try:
            result = self.engine.decide(path, document)
        except Exception as exc:  # an engine must not raise; if one does, deny
            result = fail_closed(path, f"{type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - started) * 1000
        payload = {
            "path": path,
            "input_digest": input_digest(document),
            "result": result,
            "policy_revision": self.engine.revision,
            "engine": self.engine.name,
            "latency_ms": round(latency_ms, 3),
        }
        if self.virtual_clock is not None:
            payload[VIRTUAL_AT] = self.virtual_clock().isoformat()
        try:
            self.audit.append(
                EventKind.policy_decision,
                ActorKind.system,
                self.actor,
                payload,
                plan_id=plan_id,
                thread_id=thread_id,
                at=self.clock() if self.clock is not None else None,
            )
        except Exception as exc:
            return fail_closed(path, f"the decision could not be written to the audit log: {exc}")
        return result

    def rollout(self, input: RolloutInput, *, thread_id: str | None = None) -> RolloutDecision:
        """Decide whether a plan may run and who must approve it."""
        result = self.decide(ROLLOUT, input, plan_id=input.plan.id, thread_id=thread_id)
        decision: RolloutDecision = read_decision(ROLLOUT, result)
        return decision

    def approvals(
        self, input: ApprovalsInput, *, thread_id: str | None = None
    ) -> ApprovalsDecision:
        """Count the approvals on a plan revision."""
        result = self.decide(APPROVALS, input, plan_id=input.plan_id, thread_id=thread_id)
        decision: ApprovalsDecision = read_decision(APPROVALS, result)
        return decision

    def tool(self, input: ToolInput, *, thread_id: str | None = None) -> ToolDecision:
        """Check one tool call at the enforcement point."""
        plan_id = input.plan.id if input.plan else None
        result = self.decide(TOOLS, input, plan_id=plan_id, thread_id=thread_id)
        decision: ToolDecision = read_decision(TOOLS, result)
        return decision

    def operation(self, input: OperationInput) -> OperationDecision:
        """Decide whether a person may carry out a fleet-wide operation (the change freeze)."""
        result = self.decide(OPERATIONS, input)
        decision: OperationDecision = read_decision(OPERATIONS, result)
        return decision
