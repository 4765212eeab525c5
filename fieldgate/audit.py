"""Audit events and their hash chain.

Each event's hash is sha256 over the previous event's hash and the canonical
JSON of the event itself (sequence number included), so editing, deleting,
reordering or inserting a row breaks the chain at a nameable place.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from fieldgate.contract import Contract, canonical_json, sha256_hex

GENESIS_HASH = "0" * 64
"""The previous hash of the first event."""


class ActorKind(StrEnum):
    """Who caused an event."""

    agent = "agent"
    human = "human"
    system = "system"
    device = "device"


class EventKind(StrEnum):
    """What happened."""

    request = "request"
    rationale = "rationale"
    plan = "plan"
    validation = "validation"
    dry_run = "dry_run"
    policy_decision = "policy_decision"
    approval = "approval"
    tool_call = "tool_call"
    tool_result = "tool_result"
    device_report = "device_report"
    abort = "abort"
    rollback = "rollback"
    done = "done"
    stop = "stop"
    hold = "hold"
    resume = "resume"
    freeze = "freeze"
    retry = "retry"
    withdraw = "withdraw"
    key = "key"
    catalog = "catalog"
    fleet = "fleet"
    settings = "settings"
    broker = "broker"


VIRTUAL_AT = "virtual_at"
"""The payload key of an event's time on the twin's virtual clock, in a simulated run (the
event's ``at`` is the clock of what people do: the wall clock outside scenarios)."""


class AuditEvent(Contract):
    """One entry of the append-only audit log."""

    seq: int = Field(ge=1)
    """Position in the chain, from 1, without gaps."""
    at: datetime
    """When it happened (UTC)."""
    plan_id: str | None = None
    """Plan the event belongs to."""
    thread_id: str | None = None
    """Graph thread the event belongs to."""
    actor_kind: ActorKind
    """agent, human, system or device."""
    actor: str
    """Who: agent name, person id, component or device id."""
    kind: EventKind
    """What happened."""
    payload: dict[str, Any] = {}
    """Details, as JSON."""
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hash of the previous event (``GENESIS_HASH`` for the first)."""
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 over ``prev_hash`` and the canonical JSON of the event's other fields."""

    def virtual_at(self) -> datetime | None:
        """When it happened on the twin's virtual clock (payload ``virtual_at``), for an
        event of a simulated run; None otherwise or when the payload's value is no time."""
        value = self.payload.get(VIRTUAL_AT)
        if not isinstance(value, str):
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None

    def run_time(self) -> datetime:
        """When it happened on the run's clock: the virtual one in a simulated run (what
        scenarios are scored on), else :attr:`at`."""
        return self.virtual_at() or self.at

    def body(self) -> dict[str, Any]:
        """The fields the hash covers besides ``prev_hash``."""
        return self.model_dump(mode="json", exclude={"hash", "prev_hash"})


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """The hash of an event whose other fields are ``body``, following ``prev_hash``."""
    return sha256_hex(prev_hash.encode("ascii") + canonical_json(body))


class AuditCheckpoint(Contract):
    """A signed statement of the chain's head, like a transparency log's signed tree head.

    The control plane signs it; a copy goes to the store and one to the witness file
    outside the database, against which ``audit verify`` checks the chain.
    """

    checkpoint_id: str = Field(min_length=1)
    """Unique id of this checkpoint."""
    log_id: str = Field(min_length=1)
    """The audit log it is about (each database's log has its own id)."""
    seq: int = Field(ge=0)
    """Sequence number of the head event (0: the empty log)."""
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hash of the head event (``GENESIS_HASH`` for the empty log)."""
    at: datetime
    """When it was made (UTC)."""
    key_id: str = Field(min_length=1)
    """The control-plane key that signed it."""
    signature: str = ""
    """ed25519 signature over :meth:`signed_body`, base64."""

    def signed_body(self) -> dict[str, Any]:
        """What the signature covers: every field but the signature."""
        return self.model_dump(mode="json", exclude={"signature"})
