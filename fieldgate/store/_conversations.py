"""Chat conversations: what one engineer and fieldgate said, so ``chat --resume`` continues.

A conversation is bookkeeping for the chat, not a record of decisions: every request it
submits is audited as the run's request, and confirmations and withdrawals are audited
with their plan. It keeps the turns, the last plan the conversation is about, and the
request that plan (or the open question) read, which follow-ups revise.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, col, select

from fieldgate.errors import NotFound
from fieldgate.store._engine import for_writing, joined, transaction
from fieldgate.store._table import (
    StoreTable,
    as_utc,
    from_json_text,
    json_text,
    utc_now,
    utc_time_field,
)


class ConversationRow(StoreTable, table=True):
    """One chat conversation."""

    __tablename__ = "chat_conversation"

    conversation_id: str = Field(primary_key=True)
    requester: str = Field(index=True)
    turns_json: str = "[]"
    last_plan_id: str | None = None
    pending_json: str = "{}"
    created_at: datetime = utc_time_field()
    updated_at: datetime = utc_time_field()


@dataclass
class Conversation:
    """A chat conversation and where it stands."""

    conversation_id: str
    """``cv-`` and random hex."""
    requester: str
    """Who talks."""
    turns: list[dict[str, Any]] = field(default_factory=list)
    """``{"role": "user" | "assistant", "text": …, "plan_id": …}``, oldest first."""
    last_plan_id: str | None = None
    """The plan the conversation is about: ``/why``, ``status?`` and follow-ups mean it."""
    pending: dict[str, Any] = field(default_factory=dict)
    """The request under discussion: ``request`` (the text the last plan or question
    read), ``question`` and ``candidates`` while a clarification is open."""
    updated_at: datetime | None = None
    """When it last changed."""


class ConversationStore:
    """Chat conversations, one row each."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)

    def start(self, requester: str, *, tx: Session | None = None) -> Conversation:
        """A new, empty conversation of ``requester``."""
        conversation = Conversation(f"cv-{secrets.token_hex(5)}", requester)
        self.save(conversation, tx=tx)
        return conversation

    def save(self, conversation: Conversation, *, tx: Session | None = None) -> None:
        """Write ``conversation`` as it stands now."""
        now = utc_now()
        with joined(tx, self._writer, f"saving conversation {conversation.conversation_id}") as s:
            row = s.get(ConversationRow, conversation.conversation_id) or ConversationRow(
                conversation_id=conversation.conversation_id,
                requester=conversation.requester,
                created_at=now,
                updated_at=now,
            )
            row.turns_json = json_text(conversation.turns)
            row.last_plan_id = conversation.last_plan_id
            row.pending_json = json_text(conversation.pending)
            row.updated_at = now
            s.add(row)
        conversation.updated_at = now

    def get(self, conversation_id: str) -> Conversation:
        """The conversation ``conversation_id`` (NotFound when there is none)."""
        with transaction(self._engine, "reading a conversation") as session:
            row = session.get(ConversationRow, conversation_id)
            if row is None:
                raise NotFound(f"no conversation {conversation_id!r}")
            return _conversation(row)

    def latest(self, requester: str) -> Conversation | None:
        """``requester``'s most recently changed conversation that has turns, if any."""
        with transaction(self._engine, "reading conversations") as session:
            row = session.exec(
                select(ConversationRow)
                .where(ConversationRow.requester == requester)
                .where(ConversationRow.turns_json != "[]")
                .order_by(col(ConversationRow.updated_at).desc())
                .limit(1)
            ).first()
            return _conversation(row) if row is not None else None


def _conversation(row: ConversationRow) -> Conversation:
    return Conversation(
        conversation_id=row.conversation_id,
        requester=row.requester,
        turns=list(from_json_text(row.turns_json)),
        last_plan_id=row.last_plan_id,
        pending=dict(from_json_text(row.pending_json)),
        updated_at=as_utc(row.updated_at),
    )
