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
    key = "key"
    catalog = "catalog"
    fleet = "fleet"
    settings = "settings"


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

    def body(self) -> dict[str, Any]:
        """The fields the hash covers besides ``prev_hash``."""
        return self.model_dump(mode="json", exclude={"hash", "prev_hash"})


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """The hash of an event whose other fields are ``body``, following ``prev_hash``."""
    return sha256_hex(prev_hash.encode("ascii") + canonical_json(body))
