"""One object for the database behind one URL and every store on it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from fieldgate.config import Config
from fieldgate.errors import StoreError
from fieldgate.store._approvals import ApprovalStore
from fieldgate.store._audit import install_audit_guards
from fieldgate.store._catalog import CatalogStore
from fieldgate.store._checkpoints import (
    CheckpointStore,
    WatchedAuditLog,
    install_checkpoint_guards,
    owns_audit_tables,
)
from fieldgate.store._conversations import ConversationStore
from fieldgate.store._engine import (
    creating_tables,
    for_writing,
    open_engine,
    reason_of,
    transaction,
)
from fieldgate.store._fleet import FleetStore
from fieldgate.store._freeze import FreezeStore
from fieldgate.store._keys import KeyStore
from fieldgate.store._plans import PlanStore
from fieldgate.store._runs import RunStore, StopStore
from fieldgate.store._table import StoreTable


class Store:
    """The database behind one URL: catalog, keys, fleet, plans, approvals and audit log."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        """The SQLAlchemy engine every store shares."""
        self._writer = for_writing(engine)
        self.catalog = CatalogStore(engine)
        """Module manifests with provenance."""
        self.keys = KeyStore(engine)
        """Trusted public keys."""
        self.fleet = FleetStore(engine)
        """Sites, devices and installed modules."""
        self.plans = PlanStore(engine)
        """Plan revisions."""
        self.approvals = ApprovalStore(engine)
        """Signed approvals."""
        self.audit = WatchedAuditLog(engine)
        """The hash-chained audit log."""
        self.checkpoints = CheckpointStore(engine, self.audit)
        """Signed checkpoints of the audit chain's head (the store's copy)."""
        self.runs = RunStore(engine)
        """Rollout runs, recorded before they start."""
        self.stops = StopStore(engine)
        """Kill switches."""
        self.freeze = FreezeStore(engine)
        """The change freeze."""
        self.conversations = ConversationStore(engine)
        """Chat conversations (``fieldgate chat --resume``)."""

    @classmethod
    def open(cls, url: str | None = None) -> Store:
        """Open the database at ``url`` (default ``FIELDGATE_DB``) and create what is missing."""
        store = cls(open_engine(url or Config.from_env().database_url))
        try:
            store.init()
        except BaseException:
            store.close()
            raise
        return store

    def init(self) -> None:
        """Create the tables, the audit triggers, head and log id if missing (idempotent)."""
        try:
            with creating_tables(self.engine) as conn:
                StoreTable.metadata.create_all(conn)
                # A restricted role (``fieldgate db roles``) finds the guards its owner made.
                if owns_audit_tables(conn):
                    install_audit_guards(conn)
                    install_checkpoint_guards(conn)
        except SQLAlchemyError as exc:
            where = self.engine.url.render_as_string(hide_password=True)
            raise StoreError(f"cannot open the database {where}: {reason_of(exc)}") from exc

    @contextmanager
    def writing(self, what: str) -> Iterator[Session]:
        """One write transaction for several stores: all their writes land, or none does.

        Pass the session as ``tx`` to the write methods that take it::

            with store.writing("recording the plan") as tx:
                store.plans.add(plan, tx=tx)
                store.audit.append_many(events, tx=tx)

        On SQLite it takes the write lock at the start (``BEGIN IMMEDIATE``). A database
        error becomes :class:`StoreError` naming ``what``.
        """
        with transaction(self._writer, what) as session:
            yield session

    def close(self) -> None:
        """Release every database connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
