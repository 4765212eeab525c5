"""Which checkpointer a database URL gets: SqliteSaver beside a SQLite file, PostgresSaver on
PostgreSQL. Checkpoints are written synchronously (durability ``sync``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from sqlalchemy.engine import make_url

from fieldgate.store._engine import normalize_url


def checkpoint_path(db_url: str) -> Path | None:
    """The SQLite checkpoint file beside a SQLite database (None for other databases)."""
    url = make_url(normalize_url(db_url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    database = Path(url.database)
    return database.with_name(database.stem + ".checkpoints.sqlite")


@contextmanager
def open_checkpointer(db_url: str) -> Iterator[BaseCheckpointSaver[str]]:
    """Open the checkpointer that goes with ``db_url``; close it on exit."""
    url = make_url(normalize_url(db_url))
    backend = url.get_backend_name()
    if backend == "postgresql":
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with PostgresSaver.from_conn_string(conninfo) as postgres:
            postgres.setup()
            yield postgres
        return
    path = checkpoint_path(db_url)
    if path is None:
        yield InMemorySaver()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    try:
        saver = SqliteSaver(connection)
        saver.setup()
        yield saver
    finally:
        connection.close()
