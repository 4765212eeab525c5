"""Opening the stores: one URL, idempotent init, clear errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from fieldgate.errors import StoreError
from fieldgate.store import NewEvent, Store


def test_open_twice_keeps_data_and_guards(db_url: str) -> None:
    with Store.open(db_url) as store:
        store.audit.append("request", "human", "ana", {"text": "hello"})
    with Store.open(db_url) as store:
        store.init()
        assert store.audit.verify().count == 1
        assert store.audit.append("done", "system", "worker").seq == 2


def test_default_url_is_a_sqlite_file_under_fieldgate_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FIELDGATE_DB", raising=False)
    monkeypatch.setenv("FIELDGATE_HOME", str(tmp_path / "home"))
    with Store.open() as store:
        store.audit.append("request", "human", "ana")
    assert (tmp_path / "home" / "fieldgate.db").exists()
    monkeypatch.setenv("FIELDGATE_DB", f"sqlite:///{tmp_path / 'other.db'}")
    with Store.open() as store:
        assert store.audit.head() is None
    assert (tmp_path / "other.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://root@localhost/db", "unsupported database 'mysql'"),
        ("postgresql://fieldgate:s3cret@127.0.0.1:1/none", "cannot open the database"),
    ],
)
def test_bad_urls_are_named(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as caught:
        Store.open(url)
    assert "s3cret" not in str(caught.value)


@pytest.mark.postgres
def test_opening_the_store_while_a_worker_appends_neither_deadlocks_nor_blocks(
    pg_url: str,
) -> None:
    """Every command opens the store; a worker appends to the audit log meanwhile (an
    operator's ``fieldgate stop`` or ``status`` during a run). Opening reinstalled the
    append-only triggers each time, DROP TRIGGER taking an ACCESS EXCLUSIVE lock on the
    audit tables: a concurrent append deadlocked ("appending to the audit log failed:
    deadlock detected") and the worker's run ended its pass in an error."""
    with Store.open(pg_url) as store:
        store.audit.append("request", "human", "ana")
    failures: list[str] = []
    done = threading.Event()

    def worker() -> None:
        with Store.open(pg_url) as store:
            while not done.is_set():
                try:
                    with store.writing("a step") as tx:
                        store.audit.append_many(
                            [NewEvent(kind="tool_call", actor_kind="agent", actor="executor")],
                            tx=tx,
                        )
                        store.checkpoints.log_id()
                except StoreError as error:
                    failures.append(f"append: {error}")

    def operator() -> None:
        while not done.is_set():
            try:
                Store.open(pg_url).close()
            except StoreError as error:
                failures.append(f"open: {error}")

    threads = [threading.Thread(target=worker), threading.Thread(target=operator)]
    threads += [threading.Thread(target=operator)]
    for thread in threads:
        thread.start()
    time.sleep(4.0)
    done.set()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    with Store.open(pg_url) as store:
        assert store.audit.verify().ok
        # Triggers in place are left alone; one disabled (or dropped) is put back at open.
        with store.engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only"))
    with (
        Store.open(pg_url) as store,
        pytest.raises(DBAPIError, match="append-only"),
        store.engine.begin() as conn,
    ):
        conn.execute(text("DELETE FROM audit_event"))
