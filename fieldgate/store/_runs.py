"""Runs and stops: every accepted rollout run is recorded before it starts; kill switches.

A run is one graph thread working on one request. It is written before the graph
is invoked, so an accepted request is never silently lost: a worker finds every
run that has not reached an outcome and continues it from its checkpoint.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, insert, literal, text, union_all, update
from sqlalchemy import select as sql_select
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, col, select

from fieldgate.errors import NotFound
from fieldgate.store._engine import for_writing, joined, read_rows, read_scalar, transaction
from fieldgate.store._freeze import Freeze, FreezeRow
from fieldgate.store._table import (
    StoreTable,
    as_utc,
    from_json_text,
    json_text,
    table_of,
    utc_now,
    utc_time_field,
)

OPEN_STATUSES = (
    "accepted",
    "awaiting_confirmation",
    "awaiting_approval",
    "queued",
    "executing",
    "held",
)
"""Statuses of runs that have not reached an outcome."""


class RunRow(StoreTable, table=True):
    """One rollout run (one graph thread)."""

    __tablename__ = "rollout_run"

    thread_id: str = Field(primary_key=True)
    plan_id: str = Field(index=True)
    request: str
    actor: str
    status: str = Field(index=True)
    outcome: str | None = None
    detail_json: str = "{}"
    created_at: datetime = utc_time_field()
    updated_at: datetime = utc_time_field()


@dataclass(frozen=True)
class Run:
    """A rollout run and where it stands."""

    thread_id: str
    """Graph thread id."""
    plan_id: str
    """Plan the run works on."""
    request: str
    """What the engineer asked."""
    actor: str
    """Who asked."""
    status: str
    """accepted (and being planned), awaiting_confirmation (by the requester),
    awaiting_approval, queued, executing, held (by the kill switch, the change freeze or a
    policy engine error) or done."""
    outcome: str | None
    """How it ended (completed, denied, …) once done."""
    detail: dict[str, Any]
    """Extra facts: the scenario, the model, the last reason."""
    created_at: datetime
    updated_at: datetime


_RUN_FIELDS = tuple(RunRow.model_fields)
_RUN_COLUMNS = tuple(col(getattr(RunRow, name)) for name in _RUN_FIELDS)
# Statements built once (building one costs as much as running it); ``run_id`` names the run.
_BY_ID = col(RunRow.thread_id) == bindparam("run_id")
_RUN_EXISTS = select(col(RunRow.thread_id)).where(_BY_ID)
_RUN_DETAIL = select(col(RunRow.detail_json)).where(_BY_ID)
_INSERT_RUN = insert(RunRow)
_UPDATE_RUN = update(RunRow).where(_BY_ID)  # SET: the columns the parameters name
_RUN_BY_ID = select(*_RUN_COLUMNS).where(_BY_ID)


def _run(row: RunRow) -> Run:
    return _run_of(*(getattr(row, name) for name in _RUN_FIELDS))


def _run_of(
    thread_id: str,
    plan_id: str,
    request: str,
    actor: str,
    status: str,
    outcome: str | None,
    detail_json: str,
    created_at: datetime,
    updated_at: datetime,
) -> Run:
    """A run from its column values, in the order of :data:`_RUN_FIELDS`."""
    return Run(
        thread_id,
        plan_id,
        request,
        actor,
        status,
        outcome,
        from_json_text(detail_json),
        as_utc(created_at),
        as_utc(updated_at),
    )


class RunStore:
    """Rollout runs, recorded before they start."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)

    def start(
        self,
        thread_id: str,
        plan_id: str,
        request: str,
        actor: str,
        detail: dict[str, Any] | None = None,
        *,
        tx: Session | None = None,
    ) -> Run:
        """Record a new run as ``accepted`` (in the transaction ``tx`` when given)."""
        now = utc_now()
        run = Run(
            thread_id, plan_id, request, actor, "accepted", None, dict(detail or {}), now, now
        )
        values = {
            "thread_id": thread_id,
            "plan_id": plan_id,
            "request": request,
            "actor": actor,
            "status": run.status,
            "detail_json": json_text(run.detail),
            "created_at": now,
            "updated_at": now,
        }
        with joined(tx, self._writer, f"recording run {thread_id}") as session:
            session.connection().execute(_INSERT_RUN, values)
        return run

    def update(
        self,
        thread_id: str,
        status: str,
        outcome: str | None = None,
        detail: dict[str, Any] | None = None,
        *,
        tx: Session | None = None,
    ) -> None:
        """Move a run to ``status`` (and ``outcome``); merge ``detail`` into its facts.

        In the transaction ``tx`` when given (see :meth:`Store.writing`).

        Raises:
            NotFound: no run has this thread id.
        """
        values: dict[str, Any] = {"run_id": thread_id, "status": status, "updated_at": utc_now()}
        if outcome is not None:
            values["outcome"] = outcome
        with joined(tx, self._writer, f"updating run {thread_id}") as session:
            session.flush()  # rows added earlier in a shared transaction must be visible
            conn = session.connection()
            if detail:
                facts = conn.execute(_RUN_DETAIL, {"run_id": thread_id}).scalar()
                if facts is not None:
                    values["detail_json"] = json_text({**from_json_text(facts), **detail})
            moved = conn.execute(_UPDATE_RUN, values)
            if moved.rowcount != 1:
                raise NotFound(f"no run with thread id {thread_id!r}")

    def exists(self, thread_id: str) -> bool:
        """Whether a run with this thread id is recorded."""
        found = read_scalar(self._engine, _RUN_EXISTS, "reading runs", {"run_id": thread_id})
        return found is not None

    def get(self, thread_id: str) -> Run:
        """The run with this thread id."""
        rows = read_rows(self._engine, _RUN_BY_ID, "reading runs", {"run_id": thread_id})
        if not rows:
            raise NotFound(f"no run with thread id {thread_id!r}")
        return _run_of(*rows[0])

    def for_plan(self, plan_id: str) -> Run:
        """The newest run working on ``plan_id``."""
        with transaction(self._engine, "reading runs") as session:
            row = session.exec(
                select(RunRow)
                .where(col(RunRow.plan_id) == plan_id)
                .order_by(col(RunRow.created_at).desc())
            ).first()
            if row is None:
                raise NotFound(f"no run for plan {plan_id!r}")
            return _run(row)

    @contextmanager
    def exclusive(self, thread_id: str) -> Iterator[bool]:
        """Hold the right to execute one run; yield whether this process got it.

        Two workers must never execute the same run at once. The lock dies with its
        process (a PostgreSQL session advisory lock, or an flock on a file beside the
        SQLite database), so a worker killed with -9 leaves nothing to clean up.
        """
        digest = hashlib.sha256(thread_id.encode()).digest()
        if self._engine.dialect.name == "postgresql":
            key = int.from_bytes(digest[:8], "big", signed=True)
            # Autocommit: a session's advisory lock needs no transaction, and a transaction
            # left open for the whole run would make every CREATE INDEX CONCURRENTLY in the
            # database (the checkpointer's setup in another worker) wait for it to end.
            with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                got = bool(
                    conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
                )
                try:
                    yield got
                finally:
                    if got:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            return
        database = self._engine.url.database
        if not database or database == ":memory:":
            yield True
            return
        folder = Path(database).with_suffix(".locks")
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{digest.hex()[:32]}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def list(self, statuses: tuple[str, ...] | None = None) -> builtins.list[Run]:
        """Runs, oldest first, optionally only those in ``statuses``."""
        with transaction(self._engine, "reading runs") as session:
            query = select(RunRow).order_by(col(RunRow.created_at), col(RunRow.thread_id))
            if statuses:
                query = query.where(col(RunRow.status).in_(statuses))
            return [_run(r) for r in session.exec(query)]


class StopRow(StoreTable, table=True):
    """A kill switch: for one plan, or for every plan (``scope`` ``*``)."""

    __tablename__ = "kill_switch"

    scope: str = Field(primary_key=True)
    engaged: bool
    by: str
    reason: str
    at: datetime = utc_time_field()


ALL_PLANS = "*"

_STOPS, _FREEZE = table_of(StopRow).c, table_of(FreezeRow).c
_HOLDING = union_all(
    sql_select(literal("stop"), _STOPS.scope, _STOPS.by, _STOPS.reason, _STOPS.at).where(
        col(StopRow.scope).in_([bindparam("every"), bindparam("plan")]), col(StopRow.engaged)
    ),
    sql_select(literal("freeze"), _FREEZE.scope, _FREEZE.by, _FREEZE.reason, _FREEZE.at).where(
        col(FreezeRow.on)
    ),
)
"""Engaged kill switches for a plan (or every plan) and the change freeze, in one read."""


class StopStore:
    """Kill switches: engaged ones hold dispatch within one step and refuse device changes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)

    def engage(
        self, plan_id: str | None, by: str, reason: str, *, tx: Session | None = None
    ) -> None:
        """Pull the switch for ``plan_id`` (every plan when None); in ``tx`` when given."""
        self._set(plan_id or ALL_PLANS, True, by, reason, tx)

    def release(
        self,
        plan_id: str | None,
        by: str,
        reason: str = "released",
        *,
        tx: Session | None = None,
    ) -> None:
        """Release the switch for ``plan_id`` (the global one when None); in ``tx`` when given.

        A run the switch held resumes where it stopped at a worker's next pass.
        """
        self._set(plan_id or ALL_PLANS, False, by, reason, tx)

    def _set(self, scope: str, engaged: bool, by: str, reason: str, tx: Session | None) -> None:
        with joined(tx, self._writer, "setting the kill switch") as session:
            row = session.get(StopRow, scope) or StopRow(
                scope=scope, engaged=engaged, by=by, reason=reason, at=utc_now()
            )
            row.engaged, row.by, row.reason, row.at = engaged, by, reason, utc_now()
            session.add(row)

    def engaged(self, plan_id: str) -> str | None:
        """Why dispatch for ``plan_id`` is stopped, or None when it is not."""
        return self.holding(plan_id)[0]

    def holding(self, plan_id: str) -> tuple[str | None, Freeze | None]:
        """What holds ``plan_id`` now: why its kill switch is pulled (None: it is not) and
        the change freeze in force (None: none), in one read for a running wave's batches."""
        rows = read_rows(
            self._engine, _HOLDING, "reading kill switches", {"every": ALL_PLANS, "plan": plan_id}
        )
        stops = [(scope, by, reason) for kind, scope, by, reason, _ in rows if kind == "stop"]
        freezes = [
            Freeze(by, reason, as_utc(at)) for kind, _, by, reason, at in rows if kind == "freeze"
        ]
        return _stop_reason(stops), (freezes[0] if freezes else None)


def _stop_reason(rows: Sequence[Sequence[Any]]) -> str | None:
    """Why the engaged switches in ``rows`` (scope, by, reason) stop dispatch (every plan's
    switch first)."""
    if not rows:
        return None
    scope, by, reason = min(rows, key=lambda row: row[0] != ALL_PLANS)
    target = "every plan" if scope == ALL_PLANS else f"plan {scope}"
    return f"kill switch for {target} pulled by {by}: {reason}"
