"""The append-only audit log and its hash chain, on SQLite or PostgreSQL.

Every event is one row whose columns are exactly what its hash covers: ``at`` is
kept as text and ``payload`` as canonical JSON text, so a row reads back into the
same canonical JSON on either database. A one-row head table records the last
sequence number and hash; appends lock it (``BEGIN IMMEDIATE`` on SQLite,
``SELECT … FOR UPDATE`` on PostgreSQL) so concurrent writers queue up, and
verification compares the chain's end with it, which exposes events cut from the
end. Triggers refuse UPDATE and DELETE on the log; verification does not rely on
them.
"""

from __future__ import annotations

import csv
import hashlib
import json.encoder
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import ValidationError
from sqlalchemy import BigInteger, Integer, Text, bindparam, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session

from fieldgate.audit import GENESIS_HASH, ActorKind, AuditEvent, EventKind, chain_hash
from fieldgate.batches import chunks
from fieldgate.contract import canonical_json, problems_of
from fieldgate.errors import AuditBroken, StoreError
from fieldgate.store._engine import for_writing, is_sqlite, reason_of
from fieldgate.store._table import StoreTable, table_of

_SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")  # SQLite: the rowid itself
_VERIFY_BATCH = 20_000
_HEAD_ID = 1


class AuditEventRow(StoreTable, table=True):
    """One event of the log; the columns are exactly what the event's hash covers."""

    __tablename__ = "audit_event"

    seq: int = Field(sa_type=_SEQ_TYPE, primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: str
    """UTC time, fixed width: ``2026-01-01T10:00:00.000000Z`` (sorts as text)."""
    plan_id: str | None = Field(default=None, index=True)
    thread_id: str | None = None
    actor_kind: str
    actor: str
    kind: str
    payload: str = Field(sa_type=Text)
    """Canonical JSON text."""
    prev_hash: str
    hash: str


class AuditHeadRow(StoreTable, table=True):
    """The single row naming the last event; the lock appends queue on."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = Field(sa_type=BigInteger)
    hash: str


class AuditOnceRow(StoreTable, table=True):
    """An event appended under a key that lets it be appended once (see ``NewEvent.once``)."""

    __tablename__ = "audit_once"

    key: str = Field(primary_key=True)
    """The event's key: ``report:<command id>``, ``run:<thread>:<step>:<kind>``."""
    seq: int = Field(sa_type=BigInteger)
    """The event appended under it."""


_EVENTS = table_of(AuditEventRow)
_HEAD = table_of(AuditHeadRow)
_ONCE = table_of(AuditOnceRow)
_COLUMNS = (
    _EVENTS.c.seq,
    _EVENTS.c.at,
    _EVENTS.c.plan_id,
    _EVENTS.c.thread_id,
    _EVENTS.c.actor_kind,
    _EVENTS.c.actor,
    _EVENTS.c.kind,
    _EVENTS.c.payload,
    _EVENTS.c.prev_hash,
    _EVENTS.c.hash,
)

# Statements built once: a single append runs four of them.
_LOCK_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == _HEAD_ID).with_for_update()
_LAST_EVENT = select(_EVENTS.c.seq, _EVENTS.c.hash).order_by(_EVENTS.c.seq.desc()).limit(1)
_INSERT_EVENTS = insert(_EVENTS)
_INSERT_ONCE = insert(_ONCE)
_MOVE_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == _HEAD_ID)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_SELECT_ALL = f"SELECT {', '.join(c.name for c in _COLUMNS)} FROM audit_event ORDER BY seq"

_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}
    BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only: {op} on {table} is refused');
    END"""
    for table, op in (
        ("audit_event", "UPDATE"),
        ("audit_event", "DELETE"),
        ("audit_head", "DELETE"),
    )
]
_POSTGRES_GUARDS = (
    # (trigger, table, when, level)
    ("audit_event_append_only", "audit_event", "UPDATE OR DELETE", "ROW"),
    ("audit_event_no_truncate", "audit_event", "TRUNCATE", "STATEMENT"),
    ("audit_head_no_delete", "audit_head", "DELETE", "ROW"),
    ("audit_head_no_truncate", "audit_head", "TRUNCATE", "STATEMENT"),
)
_POSTGRES_FUNCTION = """CREATE OR REPLACE FUNCTION fieldgate_audit_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the audit log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME;
    END $$"""
_TRIGGER_BITS = {"ROW": 1, "BEFORE": 2, "INSERT": 4, "DELETE": 8, "UPDATE": 16, "TRUNCATE": 32}
"""``pg_trigger.tgtype``'s bits."""
_GUARD_IN_PLACE = text(
    "SELECT count(*) FROM pg_trigger t WHERE t.tgname = :name "
    "AND t.tgrelid = to_regclass(:table) AND t.tgtype = :bits AND t.tgenabled = 'O' "
    "AND t.tgfoid = to_regproc('fieldgate_audit_append_only')"
)


def install_postgres_guards(conn: Connection, guards: Iterable[tuple[str, str, str, str]]) -> None:
    """Create each append-only trigger of ``guards`` (trigger, table, when, level) that is
    missing, disabled, on other events or calling another function (idempotent).

    One in place is left alone: every command opens the store, also while a worker appends
    to the log, and DROP TRIGGER takes an ACCESS EXCLUSIVE lock on its table (reinstalling
    them at every open deadlocked concurrent appends).
    """
    for name, table, when, level in guards:
        events = [part.strip() for part in when.split(" OR ")]
        bits = _TRIGGER_BITS["BEFORE"] + (_TRIGGER_BITS["ROW"] if level == "ROW" else 0)
        bits += sum(_TRIGGER_BITS[e] for e in events)
        if conn.execute(_GUARD_IN_PLACE, {"name": name, "table": table, "bits": bits}).scalar():
            continue
        # DROP + CREATE rather than CREATE OR REPLACE TRIGGER, which needs PostgreSQL 14.
        conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
        conn.execute(
            text(
                f"CREATE TRIGGER {name} BEFORE {when} ON {table} "
                f"FOR EACH {level} EXECUTE FUNCTION fieldgate_audit_append_only()"
            )
        )


def install_audit_guards(conn: Connection) -> None:
    """Create the append-only triggers, and the head row of an empty log (idempotent).

    A log with events but no head row is left so: verification reports it and
    appends refuse, instead of a new head quietly accepting a truncated log.
    """
    if is_sqlite(conn):
        for statement in _SQLITE_TRIGGERS:
            conn.execute(text(statement))
    else:
        conn.execute(text(_POSTGRES_FUNCTION))
        install_postgres_guards(conn, _POSTGRES_GUARDS)
    empty = conn.execute(select(_EVENTS.c.seq).limit(1)).first() is None
    if empty and conn.execute(select(_HEAD.c.id)).first() is None:
        conn.execute(insert(_HEAD).values(id=_HEAD_ID, seq=0, hash=GENESIS_HASH))


# The fast path: build the canonical JSON of AuditEvent.body() straight from the
# columns, with the same string encoder json.dumps(ensure_ascii=False) uses and
# the keys in sorted order. tests/test_audit_log.py holds it to the pydantic path.
_quote = json.encoder.encode_basestring


def _quote_or_null(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _body_at(stored_at: str) -> str:
    """Return the JSON form pydantic gives a stored UTC time (no fraction when it is zero)."""
    return stored_at[:19] + "Z" if stored_at[19:27] == ".000000Z" else stored_at


def stored_at(at: datetime) -> str:
    """Return the fixed-width UTC text kept in the ``at`` column (naive times are UTC)."""
    utc = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def body_json(
    seq: int,
    at: str,
    plan_id: str | None,
    thread_id: str | None,
    actor_kind: str,
    actor: str,
    kind: str,
    payload: str,
) -> str:
    """Build the canonical JSON of an event's body from its stored columns."""
    return (
        f'{{"actor":{_quote(actor)},"actor_kind":{_quote(actor_kind)},'
        f'"at":{_quote(_body_at(at))},"kind":{_quote(kind)},"payload":{payload},'
        f'"plan_id":{_quote_or_null(plan_id)},"seq":{seq},'
        f'"thread_id":{_quote_or_null(thread_id)}}}'
    )


def _event_json(row: tuple[Any, ...]) -> str:
    """Build the canonical JSON of a whole event (hashes included) from its stored columns."""
    seq, at, plan_id, thread_id, actor_kind, actor, kind, payload, prev_hash, hash_ = row
    return (
        f'{{"actor":{_quote(actor)},"actor_kind":{_quote(actor_kind)},'
        f'"at":{_quote(_body_at(at))},"hash":{_quote(hash_)},"kind":{_quote(kind)},'
        f'"payload":{payload},"plan_id":{_quote_or_null(plan_id)},'
        f'"prev_hash":{_quote(prev_hash)},"seq":{seq},"thread_id":{_quote_or_null(thread_id)}}}'
    )


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cells(row: tuple[Any, ...]) -> list[str]:
    """The CSV cells of one stored event; text that a spreadsheet would run as a formula is
    defused with a leading ``'`` (the JSON lines export is the one to verify hashes from)."""
    cells = []
    for value in row:
        text = "" if value is None else str(value)
        cells.append("'" + text if text.startswith(_FORMULA_START) else text)
    return cells


def _event(row: tuple[Any, ...]) -> AuditEvent:
    seq, at, plan_id, thread_id, actor_kind, actor, kind, payload, prev_hash, hash_ = row
    try:
        return AuditEvent.model_validate(
            {
                "seq": seq,
                "at": at,
                "plan_id": plan_id,
                "thread_id": thread_id,
                "actor_kind": actor_kind,
                "actor": actor,
                "kind": kind,
                "payload": json.loads(payload),
                "prev_hash": prev_hash,
                "hash": hash_,
            }
        )
    except (ValidationError, ValueError) as exc:
        raise AuditBroken(seq, f"the stored event cannot be read ({exc})") from None


@dataclass(frozen=True)
class NewEvent:
    """An event to append; the log assigns its sequence number and hashes."""

    kind: EventKind | str
    """What happened."""
    actor_kind: ActorKind | str
    """agent, human, system or device."""
    actor: str
    """Who."""
    payload: Mapping[str, Any] = field(default_factory=dict)
    """Details, as JSON."""
    plan_id: str | None = None
    """Plan the event belongs to."""
    thread_id: str | None = None
    """Graph thread the event belongs to."""
    at: datetime | None = None
    """When it happened; now when None; naive times are taken as UTC."""
    once: str | None = None
    """A key that makes the event land once: an append under a key already used is
    dropped (a worker that replays a step after a crash, a device report seen again)."""


@dataclass(frozen=True)
class VerifyResult:
    """What walking the chain found."""

    ok: bool
    """Whether every event and the head verify."""
    count: int
    """Events that verified before the first break (all of them when ok)."""
    first_broken_seq: int | None
    """Sequence number of the first broken link; None when ok."""
    reason: str
    """What is wrong there, or a one-line confirmation."""

    def check(self) -> None:
        """Raise :class:`AuditBroken` unless the chain verified."""
        if not self.ok:
            raise AuditBroken(self.first_broken_seq or 0, self.reason)


def _broken(count: int, seq: int | None, reason: str) -> VerifyResult:
    return VerifyResult(False, count, seq, reason)


class AuditLog:
    """The append-only, hash-chained log of everything that happened."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)

    def append(
        self,
        kind: EventKind | str,
        actor_kind: ActorKind | str,
        actor: str,
        payload: Mapping[str, Any] | None = None,
        plan_id: str | None = None,
        thread_id: str | None = None,
        at: datetime | None = None,
        *,
        tx: Session | None = None,
    ) -> AuditEvent:
        """Append one event and return it with its sequence number and hash.

        In the transaction ``tx`` when given (see :meth:`Store.writing`).

        Raises:
            StoreError: the event is malformed or the database refused the write.
            AuditBroken: the log's end no longer matches its head record.
        """
        event = NewEvent(kind, actor_kind, actor, payload or {}, plan_id, thread_id, at)
        return self.append_many([event], tx=tx)[0]

    def append_many(
        self, events: Iterable[NewEvent], *, tx: Session | None = None
    ) -> list[AuditEvent]:
        """Append events in order in one transaction: all of them or none.

        Batching is the fast way to write many events (one lock, one commit). Given
        ``tx`` (see :meth:`Store.writing`), the events join that transaction and land
        with the other writes made in it, or not at all.

        Raises:
            StoreError: an event is malformed or the database refused the write.
            AuditBroken: the log's end no longer matches its head record.
        """
        pending = list(events)
        if not pending:
            return []
        if tx is not None:
            return self._append(tx.connection(), pending)
        try:
            with self._writer.begin() as conn:
                return self._append(conn, pending)
        except SQLAlchemyError as exc:
            raise StoreError(f"appending to the audit log failed: {reason_of(exc)}") from exc

    def _append(self, conn: Connection, pending: list[NewEvent]) -> list[AuditEvent]:
        """Chain ``pending`` onto the head and move it, in ``conn``'s open transaction."""
        now = datetime.now(UTC)
        seq, prev = self._lock_head(conn)
        # Appends queue on the head lock, so no other writer can take a key meanwhile.
        used = _used_keys(conn, [new.once for new in pending if new.once is not None])
        appended: list[AuditEvent] = []
        rows: list[dict[str, Any]] = []
        keys: list[dict[str, Any]] = []
        for new in pending:
            if new.once is not None:
                if new.once in used:
                    continue
                used.add(new.once)
                keys.append({"key": new.once, "seq": seq + 1})
            seq += 1
            event, row = _chained(new, seq, prev, now)
            appended.append(event)
            rows.append(row)
            prev = event.hash
        if not rows:
            return []
        conn.execute(_INSERT_EVENTS, rows)
        if keys:
            conn.execute(_INSERT_ONCE, keys)
        conn.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev})
        return appended

    @staticmethod
    def _lock_head(conn: Connection) -> tuple[int, str]:
        head = conn.execute(_LOCK_HEAD).first()
        if head is None:
            raise AuditBroken(0, "the audit head record is missing; nothing can be appended")
        last = conn.execute(_LAST_EVENT).first()
        last_seq, last_hash = (last[0], last[1]) if last else (0, GENESIS_HASH)
        if last_seq != head.seq:
            raise AuditBroken(
                min(last_seq, head.seq) + 1,
                f"the log ends at event {last_seq} but its head records event {head.seq}: "
                "events were removed or added outside fieldgate; nothing is appended",
            )
        if last_hash != head.hash:
            raise AuditBroken(
                last_seq, f"event {last_seq} differs from the head record; nothing is appended"
            )
        return int(head.seq), str(head.hash)

    def events(
        self,
        plan_id: str | None = None,
        since: int | datetime | None = None,
        kinds: Iterable[EventKind | str] | None = None,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """Events in sequence order, filtered.

        Args:
            plan_id: Only this plan's events.
            since: A sequence number (events after it) or a time (events at or after it).
            kinds: Only events of these kinds.
            limit: At most this many, from the oldest that match.
        """
        query = select(*_COLUMNS).order_by(_EVENTS.c.seq)
        if plan_id is not None:
            query = query.where(_EVENTS.c.plan_id == plan_id)
        if isinstance(since, datetime):
            query = query.where(_EVENTS.c.at >= stored_at(since))
        elif since is not None:
            query = query.where(_EVENTS.c.seq > since)
        if kinds is not None:
            query = query.where(_EVENTS.c.kind.in_([str(k) for k in kinds]))
        if limit is not None:
            query = query.limit(limit)
        try:
            with self._engine.connect() as conn:
                return [_event(tuple(row)) for row in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"reading the audit log failed: {reason_of(exc)}") from exc

    def head(self) -> AuditEvent | None:
        """Return the last event, or None when the log is empty."""
        query = select(*_COLUMNS).order_by(_EVENTS.c.seq.desc()).limit(1)
        try:
            with self._engine.connect() as conn:
                row = conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"reading the audit log failed: {reason_of(exc)}") from exc
        return _event(tuple(row)) if row else None

    def verify(self) -> VerifyResult:
        """Walk the chain in sequence order and name the first broken link and why.

        Reads the log in batches from one snapshot, so it runs in constant memory
        while other processes keep appending.
        """
        try:
            with self._snapshot() as conn:
                head = conn.execute(select(_HEAD.c.seq, _HEAD.c.hash)).first()
                return _walk(self._rows(conn), head)
        except SQLAlchemyError as exc:
            raise StoreError(f"reading the audit log failed: {reason_of(exc)}") from exc

    def export_jsonl(self, fp: TextIO) -> int:
        """Write every event as one canonical JSON line, in sequence order; return the count."""
        return self.export(fp)

    def export(
        self,
        fp: TextIO,
        fmt: str = "jsonl",
        plan_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """Write the events that match, in sequence order; return how many were written.

        Args:
            fp: Where to write.
            fmt: ``jsonl`` (one canonical JSON line per event, hashes included: each line
                verifies on its own) or ``csv`` (a header row, then one row per event with
                the payload as canonical JSON; a cell that starts like a spreadsheet formula
                gets a leading ``'``).
            plan_id: Only this plan's events.
            since: Only events at or after this time (naive times are UTC).
            until: Only events before this time.
        """
        low = stored_at(since) if since is not None else None
        high = stored_at(until) if until is not None else None
        writer = csv.writer(fp, lineterminator="\n") if fmt == "csv" else None
        if writer is not None:
            writer.writerow([c.name for c in _COLUMNS])
        count = 0
        try:
            with self._snapshot() as conn:
                for row in self._rows(conn):
                    at = row[1]
                    if plan_id is not None and row[2] != plan_id:
                        continue
                    if (low is not None and at < low) or (high is not None and at >= high):
                        continue
                    if writer is None:
                        fp.write(_event_json(row))
                        fp.write("\n")
                    else:
                        writer.writerow(_csv_cells(row))
                    count += 1
        except SQLAlchemyError as exc:
            raise StoreError(f"reading the audit log failed: {reason_of(exc)}") from exc
        return count

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """Open a read transaction that sees one state of the log from start to end."""
        with self._engine.connect() as conn:
            if not is_sqlite(conn):
                # A server-side cursor is a snapshot by itself, but the head is read by
                # another statement; REPEATABLE READ makes both see the same state.
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @staticmethod
    def _rows(conn: Connection) -> Iterator[tuple[Any, ...]]:
        """Stream every row in sequence order (a server-side cursor on PostgreSQL).

        Rows come straight from the driver's cursor as plain tuples: building a
        SQLAlchemy row per event costs a third of the time to verify a long log.
        """
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None, "the connection is open"
        # On PostgreSQL a named cursor is a server-side cursor: rows arrive in batches.
        cursor = dbapi.cursor() if is_sqlite(conn) else dbapi.cursor(name="fieldgate_audit_walk")
        try:
            cursor.execute(_SELECT_ALL)
            while batch := cursor.fetchmany(_VERIFY_BATCH):
                yield from batch
        except conn.dialect.loaded_dbapi.Error as exc:
            raise StoreError(f"reading the audit log failed: {str(exc).strip()}") from exc
        finally:
            cursor.close()


def _used_keys(conn: Connection, keys: list[str]) -> set[str]:
    """Which of ``keys`` events were already appended under."""
    used: set[str] = set()
    for chunk in chunks(sorted(set(keys)), 500):
        used.update(conn.execute(select(_ONCE.c.key).where(_ONCE.c.key.in_(chunk))).scalars())
    return used


def _chained(
    new: NewEvent, seq: int, prev: str, now: datetime
) -> tuple[AuditEvent, dict[str, Any]]:
    """Validate ``new`` as event ``seq`` after ``prev``; return it hashed and its row.

    Raises:
        StoreError: naming the event and what is wrong with it.
    """
    refused = f"audit event refused ({new.kind} by {new.actor!r})"
    for name in ("actor", "plan_id", "thread_id"):
        value = getattr(new, name)
        if isinstance(value, str) and "\x00" in value:
            # PostgreSQL text cannot hold NUL; refuse it everywhere so both databases agree.
            raise StoreError(f"{refused}: {name} contains NUL")
    at = new.at or now
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    try:
        event = AuditEvent.model_validate(
            {
                "seq": seq,
                "at": at,
                "plan_id": new.plan_id,
                "thread_id": new.thread_id,
                "actor_kind": new.actor_kind,
                "actor": new.actor,
                "kind": new.kind,
                "payload": dict(new.payload),
                "prev_hash": prev,
                "hash": GENESIS_HASH,
            }
        )
        body = event.body()
        hash_ = chain_hash(prev, body)
        payload = canonical_json(body["payload"]).decode("utf-8")
    except ValidationError as exc:
        problems = "; ".join(f"{path}: {rule}" if path else rule for path, rule in problems_of(exc))
        raise StoreError(f"{refused}: {problems}") from None
    except UnicodeEncodeError as exc:
        raise StoreError(f"{refused}: text that is not valid Unicode ({exc.reason})") from None
    row = {
        "seq": seq,
        "at": stored_at(at),
        "plan_id": new.plan_id,
        "thread_id": new.thread_id,
        "actor_kind": body["actor_kind"],
        "actor": new.actor,
        "kind": body["kind"],
        "payload": payload,
        "prev_hash": prev,
        "hash": hash_,
    }
    # The event handed back holds the payload as stored: JSON values only.
    return event.model_copy(update={"hash": hash_, "payload": body["payload"]}), row


def _walk(rows: Iterable[tuple[Any, ...]], head: Any) -> VerifyResult:
    """Check each row against the one before it, then the end against the head record."""
    sha256 = hashlib.sha256
    expected = 1
    prev = GENESIS_HASH
    try:
        for (
            seq,
            at,
            plan_id,
            thread_id,
            actor_kind,
            actor,
            kind,
            payload,
            prev_hash,
            stored,
        ) in rows:
            if seq != expected:
                return _broken(
                    expected - 1,
                    expected,
                    f"event {expected} is missing (the next stored event is {seq}): "
                    "an event was deleted",
                )
            if prev_hash != prev:
                return _broken(
                    seq - 1,
                    seq,
                    f"prev_hash of event {seq} does not match the hash of event {seq - 1}: "
                    "an event was deleted, inserted or reordered",
                )
            body = body_json(seq, at, plan_id, thread_id, actor_kind, actor, kind, payload)
            if sha256((prev + body).encode("utf-8")).hexdigest() != stored:
                return _broken(
                    seq - 1,
                    seq,
                    f"hash of event {seq} does not match its content: the event was edited",
                )
            prev = stored
            expected += 1
    except (TypeError, ValueError, UnicodeError) as exc:
        return _broken(expected - 1, expected, f"event {expected} cannot be read ({exc})")
    count = expected - 1
    if head is None:
        return _broken(count, None, "the audit head record is missing")
    if head.seq > count:
        return _broken(
            count,
            count + 1,
            f"event {count + 1} is missing: the log ends at event {count} but its head "
            f"records event {head.seq} (events were cut from the end)",
        )
    if head.seq < count:
        return _broken(
            head.seq,
            head.seq + 1,
            f"event {head.seq + 1} was not appended through fieldgate: the head records "
            f"event {head.seq} but the log goes on to event {count}",
        )
    if head.hash != prev:
        return _broken(
            count - 1, count, f"event {count} differs from the head record: it was edited"
        )
    return VerifyResult(True, count, None, f"{count} events verify")
