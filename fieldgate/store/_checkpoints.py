"""Signed checkpoints of the audit chain's head, as the store keeps them.

The control plane signs the head (see ``fieldgate.audit_witness``); the store keeps a
copy of every checkpoint in ``audit_checkpoint`` and the id of its log in
``audit_log_id``, both guarded like the log. The authoritative copy is the witness
file outside the database: an attacker who can rewrite the database can rewrite
these rows too, but not what the witness already holds.

:class:`WatchedAuditLog` is the audit log that counts appends, so that a checkpoint
is written every N events.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import BigInteger, Text, event, insert, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session

from fieldgate.audit import AuditCheckpoint, AuditEvent
from fieldgate.batches import chunks
from fieldgate.errors import AuditBroken, StoreError
from fieldgate.store._audit import (
    _COLUMNS,
    _EVENTS,
    _HEAD,
    AuditLog,
    NewEvent,
    body_json,
    install_postgres_guards,
)
from fieldgate.store._audit import stored_at as stored_time
from fieldgate.store._engine import for_writing, is_sqlite, reason_of
from fieldgate.store._table import StoreTable, table_of

_LOG_ID = 1
_IN_CHUNK = 500


class AuditLogIdRow(StoreTable, table=True):
    """The single row naming this database's audit log, so checkpoints name their log."""

    __tablename__ = "audit_log_id"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    log_id: str
    created_at: str


class AuditCheckpointRow(StoreTable, table=True):
    """One signed checkpoint of the chain's head, as the control plane made it."""

    __tablename__ = "audit_checkpoint"

    checkpoint_id: str = Field(primary_key=True)
    log_id: str
    seq: int = Field(sa_type=BigInteger, index=True)
    head_hash: str
    at: str
    """UTC time, fixed width, as in ``audit_event.at``."""
    key_id: str
    signature: str = Field(sa_type=Text)


_LOG = table_of(AuditLogIdRow)
_CHECKPOINTS = table_of(AuditCheckpointRow)
AUDIT_TABLES = ("audit_event", "audit_head", "audit_once", "audit_checkpoint", "audit_log_id")
"""Every table of the audit log: the restricted database role may not rewrite them."""

_GUARDED = [
    (table, op) for table in ("audit_checkpoint", "audit_log_id") for op in ("UPDATE", "DELETE")
]
_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}
    BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only: {op} on {table} is refused');
    END"""
    for table, op in _GUARDED
]
_POSTGRES_GUARDS = [
    guard
    for table in ("audit_checkpoint", "audit_log_id")
    for guard in (
        (f"{table}_append_only", table, "UPDATE OR DELETE", "ROW"),
        (f"{table}_no_truncate", table, "TRUNCATE", "STATEMENT"),
    )
]


def owns_audit_tables(conn: Connection) -> bool:
    """Tell whether this connection's role may install the audit guards (owns the tables).

    The restricted role ``fieldgate db roles`` makes does not: the owner installed the
    guards, and the restricted role must leave them be.
    """
    if is_sqlite(conn):
        return True
    owner = conn.execute(
        text(
            "SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c "
            "WHERE c.oid = to_regclass('audit_event')"
        )
    ).scalar()
    return owner is None or bool(owner)


def install_checkpoint_guards(conn: Connection) -> None:
    """Guard the checkpoint tables like the log, and name the log (idempotent).

    Runs after ``install_audit_guards``, whose trigger function PostgreSQL reuses.
    """
    if is_sqlite(conn):
        for statement in _SQLITE_TRIGGERS:
            conn.execute(text(statement))
    else:
        install_postgres_guards(conn, _POSTGRES_GUARDS)
    if conn.execute(select(_LOG.c.id)).first() is None:
        conn.execute(
            insert(_LOG).values(
                id=_LOG_ID, log_id=uuid.uuid4().hex, created_at=stored_time(datetime.now(UTC))
            )
        )


def _checkpoint(row: Any) -> AuditCheckpoint:
    checkpoint_id, log_id, seq, head_hash, at, key_id, signature = row
    try:
        return AuditCheckpoint.model_validate(
            {
                "checkpoint_id": checkpoint_id,
                "log_id": log_id,
                "seq": seq,
                "head_hash": head_hash,
                "at": at,
                "key_id": key_id,
                "signature": signature,
            }
        )
    except ValidationError as exc:
        raise AuditBroken(
            int(seq) if isinstance(seq, int) else 0,
            f"checkpoint signature mismatch at {seq}: the stored checkpoint {checkpoint_id!r} "
            f"cannot be read ({exc.errors()[0]['msg']})",
        ) from None


class CheckpointStore:
    """The store's copy of the signed checkpoints, and the reads that making one needs."""

    def __init__(self, engine: Engine, log: AuditLog) -> None:
        self._engine = engine
        self._writer = for_writing(engine)
        self._log = log

    def log_id(self) -> str:
        """The id of this database's audit log.

        Raises:
            AuditBroken: the row naming the log is missing.
        """
        try:
            with self._engine.connect() as conn:
                found = conn.execute(select(_LOG.c.log_id)).scalar()
        except SQLAlchemyError as exc:
            raise StoreError(f"reading the audit log id failed: {reason_of(exc)}") from exc
        if found is None:
            raise AuditBroken(0, "the audit log id is missing: its row was deleted")
        return str(found)

    def add(self, checkpoint: AuditCheckpoint) -> None:
        """Keep a signed checkpoint."""
        row = checkpoint.model_dump(mode="json")
        row["at"] = stored_time(checkpoint.at)
        try:
            with self._writer.begin() as conn:
                conn.execute(insert(_CHECKPOINTS).values(**row))
        except SQLAlchemyError as exc:
            raise StoreError(f"storing audit checkpoint failed: {reason_of(exc)}") from exc

    def stored(self) -> list[AuditCheckpoint]:
        """Every stored checkpoint, by sequence number and time.

        Raises:
            AuditBroken: a stored row is not a checkpoint (named with its sequence).
        """
        c = _CHECKPOINTS.c
        query = select(c.checkpoint_id, c.log_id, c.seq, c.head_hash, c.at, c.key_id, c.signature)
        try:
            with self._engine.connect() as conn:
                rows = list(conn.execute(query.order_by(c.seq, c.at)))
        except SQLAlchemyError as exc:
            raise StoreError(f"reading audit checkpoints failed: {reason_of(exc)}") from exc
        return [_checkpoint(tuple(row)) for row in rows]

    def event_hashes(self, seqs: Iterable[int]) -> dict[int, str]:
        """The stored hash of each event in ``seqs`` that exists."""
        wanted = sorted(set(seqs))
        found: dict[int, str] = {}
        try:
            with self._engine.connect() as conn:
                for chunk in chunks(wanted, _IN_CHUNK):
                    query = select(_EVENTS.c.seq, _EVENTS.c.hash).where(_EVENTS.c.seq.in_(chunk))
                    found.update((int(seq), str(hash_)) for seq, hash_ in conn.execute(query))
        except SQLAlchemyError as exc:
            raise StoreError(f"reading the audit log failed: {reason_of(exc)}") from exc
        return found

    def extend(self, seq: int, head_hash: str) -> tuple[int, str]:
        """Check that the chain still holds ``head_hash`` at ``seq`` and goes on intact.

        Walks only the events after ``seq`` (the last witnessed checkpoint), so a
        checkpoint every N events costs N events of hashing.

        Returns:
            The sequence number and hash of the head now.

        Raises:
            AuditBroken: naming truncation, a rewrite at ``seq`` or a broken link after it.
        """
        sha256 = hashlib.sha256
        try:
            with self._log._snapshot() as conn:
                head = conn.execute(select(_HEAD.c.seq, _HEAD.c.hash)).first()
                if head is None:
                    raise AuditBroken(0, "the audit head record is missing")
                if seq > 0:
                    at_seq = self._hash_at(conn, seq)
                    if at_seq is None:
                        last = conn.execute(
                            select(_EVENTS.c.seq).order_by(_EVENTS.c.seq.desc()).limit(1)
                        )
                        kept = last.scalar() or 0
                        raise AuditBroken(
                            kept + 1,
                            f"events after sequence {kept} are missing: the last witnessed "
                            f"checkpoint covers sequence {seq}",
                        )
                    if at_seq != head_hash:
                        raise AuditBroken(seq, rewritten(seq, at_seq, head_hash))
                expected, prev = seq + 1, head_hash
                rows = conn.execution_options(yield_per=5_000).execute(
                    select(*_COLUMNS).where(_EVENTS.c.seq > seq).order_by(_EVENTS.c.seq)
                )
                for row in rows:
                    number = row[0]
                    body = body_json(*row[:8])
                    if number != expected or row[8] != prev:
                        raise AuditBroken(expected, f"event {expected} does not follow the chain")
                    if sha256((prev + body).encode("utf-8")).hexdigest() != row[9]:
                        raise AuditBroken(number, f"hash of event {number} does not match it")
                    expected, prev = expected + 1, row[9]
                if (head.seq, head.hash) != (expected - 1, prev):
                    raise AuditBroken(
                        expected, f"the head record (event {head.seq}) is not the log's end"
                    )
                return expected - 1, prev
        except SQLAlchemyError as exc:
            raise StoreError(f"reading the audit log failed: {reason_of(exc)}") from exc

    @staticmethod
    def _hash_at(conn: Connection, seq: int) -> str | None:
        found = conn.execute(select(_EVENTS.c.hash).where(_EVENTS.c.seq == seq)).scalar()
        return None if found is None else str(found)


def rewritten(seq: int, stored: str, witnessed: str) -> str:
    """The reason given when the chain no longer holds a witnessed head hash at ``seq``."""
    return (
        f"checkpoint hash mismatch at {seq}: event {seq} hashes to {stored[:16]}… but the "
        f"witnessed checkpoint recorded {witnessed[:16]}…: the log was rewritten at or "
        f"before event {seq}"
    )


class WatchedAuditLog(AuditLog):
    """The audit log that calls back once every ``every`` events appended (by sequence).

    The callback runs after the events are committed (after the caller's transaction,
    when the events joined one), so a checkpoint never covers an event that was
    rolled back. Crossing a multiple of ``every`` is what counts, so among several
    writers exactly one makes each checkpoint.
    """

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._every = 0
        self._due: Callable[[], object] | None = None

    def watch(self, every: int, due: Callable[[], object]) -> None:
        """Call ``due`` each time the log passes a multiple of ``every`` events."""
        if every < 1:
            raise StoreError(f"audit checkpoints every {every} events: expected 1 or more")
        self._every, self._due = every, due

    def append_many(
        self, events: Iterable[NewEvent], *, tx: Session | None = None
    ) -> list[AuditEvent]:
        """Append events in order in one transaction (see :meth:`AuditLog.append_many`).

        When they carry the log past a multiple of the watched count, the callback
        given to :meth:`watch` runs once they are committed.
        """
        appended = super().append_many(events, tx=tx)
        due = self._due
        if due is None or not appended:
            return appended
        every = self._every
        if appended[-1].seq // every > (appended[0].seq - 1) // every:
            if tx is None:
                due()
            else:
                event.listen(tx, "after_commit", lambda _session: due(), once=True)
        return appended
