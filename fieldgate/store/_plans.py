"""Plan revisions: immutable, addressed by plan id and revision or by hash."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, col, select

from fieldgate.contract import canonical_json, sha256_hex
from fieldgate.errors import NotFound, StoreError
from fieldgate.plan import RolloutPlan
from fieldgate.store._engine import for_writing, joined, transaction
from fieldgate.store._table import StoreTable, as_utc, utc_now, utc_time_field


class PlanRow(StoreTable, table=True):
    """One revision of one plan, exactly as proposed."""

    __tablename__ = "plan_revision"

    plan_id: str = Field(primary_key=True)
    revision: int = Field(primary_key=True)
    plan_hash: str = Field(unique=True)
    parent_hash: str | None = None
    module: str
    version: str
    requested_by: str
    plan_json: str
    created_at: datetime = utc_time_field()
    status: str


@dataclass(frozen=True)
class PlanRecord:
    """A stored plan revision and where it stands."""

    plan: RolloutPlan
    """The revision as proposed."""
    plan_hash: str
    """Its hash (what approvals and tool calls are bound to)."""
    status: str
    """Where it stands, e.g. ``proposed``, ``approved``, ``done``."""
    created_at: datetime
    """When it was stored (UTC)."""

    @property
    def plan_id(self) -> str:
        """Id shared by every revision of the plan."""
        return self.plan.plan_id

    @property
    def revision(self) -> int:
        """Revision number."""
        return self.plan.revision


def _record(row: PlanRow) -> PlanRecord:
    plan = RolloutPlan.model_validate_json(row.plan_json)
    if plan.plan_hash != row.plan_hash:
        # The hash is what approvals are bound to; content that no longer matches it
        # was changed behind fieldgate's back and must not be executed.
        raise StoreError(
            f"plan {row.plan_id} revision {row.revision} was altered in the database: "
            f"stored hash {row.plan_hash[:12]}… but its content hashes to {plan.plan_hash[:12]}…"
        )
    return PlanRecord(plan, row.plan_hash, row.status, as_utc(row.created_at))


# Statements built once (building one costs as much as running it).
_OF_PLAN = col(PlanRow.plan_id) == bindparam("key_plan")
_STORED_HASH = select(col(PlanRow.plan_hash)).where(
    _OF_PLAN, col(PlanRow.revision) == bindparam("key_revision")
)
_PARENT = select(col(PlanRow.plan_id)).where(col(PlanRow.plan_hash) == bindparam("key_hash"))
_INSERT_PLAN = insert(PlanRow)
_SET_STATUS = update(PlanRow).where(_OF_PLAN, col(PlanRow.revision) == bindparam("key_revision"))
_SET_LATEST_STATUS = update(PlanRow).where(
    _OF_PLAN,
    col(PlanRow.revision) == select(func.max(PlanRow.revision)).where(_OF_PLAN).scalar_subquery(),
)


class PlanStore:
    """Plan revisions and their status."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = for_writing(engine)

    def add(
        self, plan: RolloutPlan, status: str = "proposed", *, tx: Session | None = None
    ) -> PlanRecord:
        """Store a new revision; storing the identical revision again returns the stored one.

        In the transaction ``tx`` when given (see :meth:`Store.writing`).

        Raises:
            StoreError: the plan id and revision are taken by different content (a revision
                is immutable: propose the next revision), or ``parent_hash`` names no
                stored revision of the plan.
        """
        plan_json = canonical_json(plan.model_dump(mode="json", by_alias=True))
        plan_hash = sha256_hex(plan_json)  # what RolloutPlan.plan_hash computes, done once
        with joined(tx, self._writer, f"storing plan {plan.plan_id}") as session:
            session.flush()  # rows added earlier in a shared transaction must be visible
            conn = session.connection()
            key = {"key_plan": plan.plan_id, "key_revision": plan.revision}
            stored_hash = conn.execute(_STORED_HASH, key).scalar()
            if stored_hash is not None:
                stored = self._row(session, plan.plan_id, plan.revision)
                if stored.plan_hash != plan_hash:
                    raise StoreError(
                        f"plan {plan.plan_id} revision {plan.revision} already exists with hash "
                        f"{stored.plan_hash[:12]}…; a revision is immutable, so propose "
                        f"revision {self._next_revision(session, plan.plan_id)}"
                    )
                return _record(stored)
            if plan.parent_hash is not None:
                parent = conn.execute(_PARENT, {"key_hash": plan.parent_hash}).scalar()
                if parent != plan.plan_id:
                    raise StoreError(
                        f"plan {plan.plan_id} revision {plan.revision}: parent_hash "
                        f"{plan.parent_hash[:12]}… is not a stored revision of this plan"
                    )
            created_at = utc_now()
            conn.execute(
                _INSERT_PLAN,
                {
                    "plan_id": plan.plan_id,
                    "revision": plan.revision,
                    "plan_hash": plan_hash,
                    "parent_hash": plan.parent_hash,
                    "module": plan.module,
                    "version": plan.version,
                    "requested_by": plan.requested_by,
                    "plan_json": plan_json.decode(),
                    "created_at": created_at,
                    "status": status,
                },
            )
            return PlanRecord(plan, plan_hash, status, created_at)

    def get(self, plan_id: str, revision: int | None = None) -> PlanRecord:
        """Return revision ``revision`` of the plan (None: the latest); raise NotFound if absent."""
        with transaction(self._engine, f"reading plan {plan_id}") as session:
            return _record(self._row(session, plan_id, revision))

    def by_hash(self, plan_hash: str) -> PlanRecord:
        """Return the revision with this hash; raise NotFound if none has it."""
        with transaction(self._engine, "reading a plan by hash") as session:
            row = session.exec(select(PlanRow).where(PlanRow.plan_hash == plan_hash)).first()
            if row is None:
                raise NotFound(f"no stored plan revision has hash {plan_hash}")
            return _record(row)

    def list(self) -> builtins.list[PlanRecord]:
        """List the latest revision of every plan, in the order those revisions were stored."""
        latest = (
            select(PlanRow.plan_id, func.max(PlanRow.revision).label("revision"))
            .group_by(PlanRow.plan_id)
            .subquery()
        )
        query = (
            select(PlanRow)
            .join(
                latest,
                (col(PlanRow.plan_id) == latest.c.plan_id)
                & (col(PlanRow.revision) == latest.c.revision),
            )
            .order_by(col(PlanRow.created_at), col(PlanRow.plan_id))
        )
        with transaction(self._engine, "listing plans") as session:
            return [_record(row) for row in session.exec(query)]

    def set_status(
        self,
        plan_id: str,
        status: str,
        revision: int | None = None,
        *,
        tx: Session | None = None,
    ) -> None:
        """Set the status of a revision of the plan (the latest when None).

        In the transaction ``tx`` when given (see :meth:`Store.writing`).

        Raises:
            NotFound: the plan (or that revision of it) is not stored.
        """
        if not status:
            raise StoreError(f"plan {plan_id}: a status must not be empty")
        statement = _SET_LATEST_STATUS if revision is None else _SET_STATUS
        params = {"key_plan": plan_id, "key_revision": revision, "status": status}
        with joined(tx, self._writer, f"setting the status of plan {plan_id}") as session:
            session.flush()  # rows added earlier in a shared transaction must be visible
            if session.connection().execute(statement, params).rowcount != 1:
                self._row(session, plan_id, revision)  # raises NotFound naming what is missing
                raise StoreError(f"plan {plan_id}: the status was not set")

    @staticmethod
    def _row(session: Session, plan_id: str, revision: int | None) -> PlanRow:
        query = select(PlanRow).where(PlanRow.plan_id == plan_id)
        if revision is None:
            query = query.order_by(col(PlanRow.revision).desc())
        else:
            query = query.where(PlanRow.revision == revision)
        row = session.exec(query.limit(1)).first()
        if row is None:
            which = f"plan {plan_id!r}" + (f" revision {revision}" if revision is not None else "")
            raise NotFound(f"{which} is not stored")
        return row

    @staticmethod
    def _next_revision(session: Session, plan_id: str) -> int:
        latest = session.exec(select(func.max(PlanRow.revision)).where(PlanRow.plan_id == plan_id))
        return int(latest.one() or 0) + 1
