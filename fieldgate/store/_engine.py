"""Open the database behind one URL: SQLite by default, PostgreSQL with the same code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Executable, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlmodel import Session, create_engine

from fieldgate.errors import StoreError

_SQLITE_BEGIN = "fieldgate_sqlite_begin"
"""Execution option naming the statement that opens a SQLite transaction."""


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite files get their directory, WAL and foreign keys.

    On SQLite, SQLAlchemy emits ``BEGIN`` itself (the sqlite3 module's own transaction
    handling is turned off) so that reads are repeatable inside a transaction and
    :func:`for_writing` can take the write lock up front with ``BEGIN IMMEDIATE``.
    """
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a terse message
        raise StoreError(f"FIELDGATE_DB: {url!r} is not a database URL ({exc})") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            if database and database != ":memory:":
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            begin = conn.get_execution_options().get(_SQLITE_BEGIN, "BEGIN")
            if begin:  # empty for a single-statement read, which SQLite keeps consistent alone
                conn.exec_driver_sql(begin)

        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    raise StoreError(
        f"FIELDGATE_DB: unsupported database {parsed.get_backend_name()!r} "
        "(use sqlite:///PATH or postgresql+psycopg://…)"
    )


def is_sqlite(engine: Engine | Connection) -> bool:
    """Tell whether ``engine`` talks to SQLite."""
    return engine.dialect.name == "sqlite"


def for_writing(engine: Engine) -> Engine:
    """Return ``engine`` set to take SQLite's write lock when a transaction begins.

    Writers that read before they write (the audit head, existing manifests) would
    otherwise fail with "database is locked" when another writer commits between
    their read and their write; ``BEGIN IMMEDIATE`` makes them wait their turn.
    PostgreSQL ignores the option.
    """
    return engine.execution_options(**{_SQLITE_BEGIN: "BEGIN IMMEDIATE"})


CREATING_TABLES_LOCK = 0x6669656C64676174  # "fieldgat"
"""The PostgreSQL advisory lock that processes creating tables take in turn."""


@contextmanager
def creating_tables(engine: Engine) -> Iterator[Connection]:
    """A write transaction for creating missing tables, one process at a time.

    PostgreSQL does not make a CREATE TABLE wait for another process creating the same
    table: the second fails on a duplicate catalog row (``pg_type``) once the first one
    commits, as when two workers start on a new database. Creators therefore queue on a
    transaction-scoped advisory lock, and the second finds the tables made. SQLite's
    write lock (``BEGIN IMMEDIATE``) queues them already.
    """
    with for_writing(engine).begin() as conn:
        if not is_sqlite(conn):
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CREATING_TABLES_LOCK})
        yield conn


def reason_of(exc: SQLAlchemyError) -> str:
    """Return the database's own words for ``exc``, without SQLAlchemy's statement dump."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).strip().splitlines()[0]
    return str(exc).strip().splitlines()[0]


@contextmanager
def transaction(engine: Engine, what: str) -> Iterator[Session]:
    """Run one transaction on ``engine``: commit on success, roll back on any error.

    Database errors become :class:`StoreError` naming ``what`` was being done;
    fieldgate's own errors pass through unchanged (after the rollback).
    """
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    except SQLAlchemyError as exc:
        raise StoreError(f"{what} failed: {reason_of(exc)}") from exc


@contextmanager
def joined(session: Session | None, engine: Engine, what: str) -> Iterator[Session]:
    """Run in the caller's transaction ``session`` if there is one, else in a new one.

    A store method that takes a ``tx`` writes through here: given the session of
    :meth:`Store.writing`, its writes land together with the others made there,
    or not at all; without one it commits on its own as before.
    """
    if session is not None:
        yield session
        return
    with transaction(engine, what) as own:
        yield own


def read_scalar(
    engine: Engine, statement: Executable, what: str, params: dict[str, Any] | None = None
) -> Any:
    """The first column of the first row ``statement`` returns (None for no row).

    A plain connection rather than an ORM session: revision checks run before every
    cached read, where a session would cost three times the query.
    """
    return next(iter(read_rows(engine, statement, what, params)), (None,))[0]


def read_rows(
    engine: Engine, statement: Executable, what: str, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Every row ``statement`` returns, read on a plain connection (see :func:`read_scalar`).

    One statement sees one consistent state on its own, so SQLite is spared the
    ``BEGIN`` that multi-statement reads need.
    """
    try:
        with engine.connect() as conn:
            conn.execution_options(**{_SQLITE_BEGIN: ""})
            return [tuple(row) for row in conn.execute(statement, params)]
    except SQLAlchemyError as exc:
        raise StoreError(f"{what} failed: {reason_of(exc)}") from exc
