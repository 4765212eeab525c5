"""The audit log on real SQLite and PostgreSQL: chain, fast path, tampering, concurrency."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from fieldgate.audit import GENESIS_HASH, AuditEvent, chain_hash
from fieldgate.contract import canonical_json
from fieldgate.errors import AuditBroken, StoreError
from fieldgate.store import NewEvent, Store
from fieldgate.store._audit import body_json

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url) as opened:
        yield opened


def fill(store: Store, n: int = 10) -> list[AuditEvent]:
    return store.audit.append_many(
        NewEvent("tool_call", "agent", "executor", {"i": i}, plan_id="p-1", at=T0 + timedelta(i))
        for i in range(n)
    )


def sql(store: Store, *statements: str) -> None:
    with store.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def drop_triggers(store: Store) -> None:
    if store.engine.dialect.name == "sqlite":
        sql(
            store,
            "DROP TRIGGER audit_event_no_update",
            "DROP TRIGGER audit_event_no_delete",
            "DROP TRIGGER audit_head_no_delete",
        )
    else:
        sql(
            store,
            "DROP TRIGGER audit_event_append_only ON audit_event",
            "DROP TRIGGER audit_head_no_delete ON audit_head",
        )


def stored_rows(store: Store) -> list[tuple[object, ...]]:
    columns = "seq, at, plan_id, thread_id, actor_kind, actor, kind, payload, prev_hash, hash"
    with store.engine.connect() as conn:
        return [
            tuple(r) for r in conn.execute(text(f"SELECT {columns} FROM audit_event ORDER BY seq"))
        ]


# -- appending and reading -------------------------------------------------------------------


def test_append_chains_events_and_verifies(store: Store) -> None:
    first = store.audit.append("request", "human", "ana", {"text": "roll out hvac 2.4.1"})
    second = store.audit.append("plan", "agent", "planner", {"waves": 3}, plan_id="p-1")
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert second.hash == chain_hash(first.hash, second.body())
    assert store.audit.head() == second
    assert store.audit.verify().ok
    assert store.audit.verify().count == 2


def test_empty_log_verifies(store: Store) -> None:
    result = store.audit.verify()
    assert (result.ok, result.count, result.first_broken_seq) == (True, 0, None)
    assert store.audit.head() is None
    assert store.audit.append_many([]) == []


def test_events_read_back_exactly_as_appended(store: Store) -> None:
    berlin = timezone(timedelta(hours=2))
    appended = [
        store.audit.append("request", "human", "ana", {"b": 1, "a": [1, 2]}, at=T0),
        store.audit.append(
            "approval",
            "human",
            "bo",
            {"ok": True},
            plan_id="p-1",
            thread_id="t-9",
            at=datetime(2026, 3, 1, 10, 0, 0, 250, tzinfo=berlin),
        ),
        store.audit.append("done", "system", "worker", at=datetime(2026, 3, 1, 9, 0)),
    ]
    assert store.audit.events() == appended
    assert appended[1].at == datetime(2026, 3, 1, 8, 0, 0, 250, tzinfo=UTC)
    assert appended[2].at == datetime(2026, 3, 1, 9, 0, tzinfo=UTC), "naive times are UTC"


def test_events_filter_by_plan_kind_since_and_limit(store: Store) -> None:
    fill(store, 6)
    store.audit.append("abort", "system", "gate", plan_id="p-2", at=T0 + timedelta(days=3, hours=1))
    audit = store.audit
    assert [e.seq for e in audit.events(plan_id="p-2")] == [7]
    assert [e.seq for e in audit.events(kinds=["abort"])] == [7]
    assert [e.seq for e in audit.events(since=5)] == [6, 7]
    assert [e.seq for e in audit.events(since=T0 + timedelta(days=3))] == [4, 5, 6, 7]
    assert [e.seq for e in audit.events(since=T0 + timedelta(days=3, microseconds=1))] == [5, 6, 7]
    assert [e.seq for e in audit.events(plan_id="p-1", limit=2)] == [1, 2]


def test_malformed_event_is_refused_and_nothing_is_written(store: Store) -> None:
    fill(store, 2)
    batch = [NewEvent("plan", "agent", "planner"), NewEvent("party", "agent", "planner")]
    with pytest.raises(StoreError, match="kind"):
        store.audit.append_many(batch)
    with pytest.raises(StoreError, match="actor_kind"):
        store.audit.append("plan", "robot", "r2")
    with pytest.raises(StoreError, match="not valid Unicode"):
        store.audit.append("plan", "agent", "planner", {"text": "lone \ud800 surrogate"})
    with pytest.raises(StoreError, match="actor contains NUL"):
        store.audit.append("plan", "agent", "nul\x00")
    assert store.audit.verify().count == 2


def test_export_jsonl_writes_one_canonical_line_per_event(store: Store) -> None:
    events = fill(store, 3)
    out = io.StringIO()
    assert store.audit.export_jsonl(out) == 3
    lines = out.getvalue().splitlines()
    assert lines == [canonical_json(e.model_dump(mode="json")).decode() for e in events]
    assert AuditEvent.model_validate(json.loads(lines[2])) == events[2]


# -- the fast path is the pydantic path ------------------------------------------------------

_AWKWARD = [
    "plain",
    "é ü ß 中文 😀",
    'quote " backslash \\ slash /',
    "control \n\t\r\b\f \x00 \x1f \x7f",
    "separators \u2028 \u2029",
    "",
]


def _payload(rng: random.Random, depth: int = 0) -> dict[str, object]:
    leaves: list[object] = [
        rng.choice(_AWKWARD),
        rng.randint(-(2**70), 2**70),
        rng.random() * 10 ** rng.randint(-8, 20),
        0.1,
        -0.0,
        1e16,
        1e-7,
        True,
        False,
        None,
        T0,
    ]
    payload: dict[str, object] = {}
    for _ in range(rng.randint(0, 5)):
        key = rng.choice(_AWKWARD) + str(rng.randint(0, 9))
        if depth < 2 and rng.random() < 0.3:
            payload[key] = _payload(rng, depth + 1)
        elif depth < 2 and rng.random() < 0.3:
            payload[key] = [rng.choice(leaves), _payload(rng, depth + 1)]
        else:
            payload[key] = rng.choice(leaves)
    return payload


def test_fast_canonical_body_equals_pydantic_body(store: Store) -> None:
    rng = random.Random(7)
    appended = store.audit.append_many(
        NewEvent(
            kind=rng.choice(["plan", "tool_call", "device_report"]),
            actor_kind=rng.choice(["agent", "human", "device"]),
            actor=rng.choice(_AWKWARD[:3]),
            payload=_payload(rng),
            plan_id=rng.choice([None, "p-1", "plan ✓"]),
            thread_id=rng.choice([None, "t-1"]),
            at=T0
            + timedelta(seconds=rng.randint(0, 10**6), microseconds=rng.choice([0, 1, 500_000])),
        )
        for _ in range(300)
    )
    prev = GENESIS_HASH
    for event, row in zip(appended, stored_rows(store), strict=True):
        fast = body_json(*row[:8])  # type: ignore[arg-type]
        assert fast == canonical_json(event.body()).decode()
        fast_hash = hashlib.sha256((prev + fast).encode()).hexdigest()
        assert fast_hash == chain_hash(prev, event.body()) == event.hash == row[9]
        prev = event.hash
    assert store.audit.events() == appended
    assert store.audit.verify().ok


# -- tampering, done in SQL after dropping the triggers ---------------------------------------


def test_triggers_refuse_update_and_delete(store: Store) -> None:
    fill(store, 3)
    for statement in (
        "UPDATE audit_event SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_event WHERE seq = 3",
        "DELETE FROM audit_head",
    ):
        with pytest.raises(SQLAlchemyError, match="append-only"):
            sql(store, statement)
    if store.engine.dialect.name == "postgresql":
        for table in ("audit_event", "audit_head"):
            with pytest.raises(SQLAlchemyError, match=f"append-only: TRUNCATE on {table}"):
                sql(store, f"TRUNCATE {table}")
    assert store.audit.verify().ok


def test_init_restores_dropped_triggers(store: Store) -> None:
    fill(store, 2)
    drop_triggers(store)
    store.init()
    with pytest.raises(SQLAlchemyError, match="append-only"):
        sql(store, "DELETE FROM audit_event")


@pytest.mark.postgres
def test_init_restores_disabled_triggers(pg_url: str) -> None:
    with Store.open(pg_url) as store:
        fill(store, 2)
        sql(store, "ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only")
        store.init()
        with pytest.raises(SQLAlchemyError, match="append-only"):
            sql(store, "DELETE FROM audit_event")


@pytest.mark.postgres
def test_opening_the_store_neither_waits_for_nor_deadlocks_an_append(pg_url: str) -> None:
    """Every worker and command opens the store. Opening once re-created the log's
    triggers, locking audit_event, then audit_head, while an append locks the head, then
    reads audit_event: a worker starting while the chat appended deadlocked one of them."""
    failed: list[Exception] = []

    def open_store() -> None:
        try:
            Store.open(pg_url).close()
        except Exception as exc:
            failed.append(exc)

    with Store.open(pg_url) as store:
        fill(store, 1)
        with store.engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT seq FROM audit_head FOR UPDATE"))  # an append's first step
            opening = threading.Thread(target=open_store)
            opening.start()
            opening.join(timeout=10)
            waited = opening.is_alive()
            conn.execute(text("SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1"))
        opening.join(timeout=30)
    assert not waited and not failed, failed


def _forged(seq: int, prev_hash: str) -> str:
    event = AuditEvent(
        seq=seq,
        at=T0,
        actor_kind="human",
        actor="mallory",
        kind="approval",
        payload={"decision": "approve"},
        prev_hash=prev_hash,
        hash=GENESIS_HASH,
    )
    h = chain_hash(prev_hash, event.body())
    return (
        "INSERT INTO audit_event (seq, at, actor_kind, actor, kind, payload, prev_hash, hash) "
        f"VALUES ({seq}, '2026-03-01T08:00:00.000000Z', 'human', 'mallory', 'approval', "
        f"'{{\"decision\":\"approve\"}}', '{prev_hash}', '{h}')"
    )


def _shift_up_from(store: Store, seq: int, last: int) -> list[str]:
    return [
        f"UPDATE audit_event SET seq = {s + 1} WHERE seq = {s}" for s in range(last, seq - 1, -1)
    ]


@pytest.mark.parametrize(
    ("tamper", "broken", "why"),
    [
        ("edit", 5, "was edited"),
        ("edit-and-rehash", 6, "prev_hash of event 6"),
        ("delete", 5, "event 5 is missing"),
        ("delete-last", 10, "cut from the end"),
        ("reorder", 4, "prev_hash of event 4"),
        ("insert", 6, "prev_hash of event 6"),
        ("insert-at-end", 11, "not appended through fieldgate"),
    ],
)
def test_verify_names_the_first_broken_seq(
    store: Store, tamper: str, broken: int, why: str
) -> None:
    events = fill(store, 10)
    drop_triggers(store)
    if tamper == "edit":
        sql(store, """UPDATE audit_event SET payload = '{"i":99}' WHERE seq = 5""")
    elif tamper == "edit-and-rehash":
        edited = events[4].model_copy(update={"actor": "mallory"})
        rehash = chain_hash(edited.prev_hash, edited.body())
        sql(store, f"UPDATE audit_event SET actor = 'mallory', hash = '{rehash}' WHERE seq = 5")
    elif tamper == "delete":
        sql(store, "DELETE FROM audit_event WHERE seq = 5")
    elif tamper == "delete-last":
        sql(store, "DELETE FROM audit_event WHERE seq = 10")
    elif tamper == "reorder":
        sql(
            store,
            "UPDATE audit_event SET seq = -4 WHERE seq = 4",
            "UPDATE audit_event SET seq = 4 WHERE seq = 5",
            "UPDATE audit_event SET seq = 5 WHERE seq = -4",
        )
    elif tamper == "insert":
        sql(store, *_shift_up_from(store, 5, 10), _forged(5, events[3].hash))
    elif tamper == "insert-at-end":
        sql(store, _forged(11, events[9].hash))
    result = store.audit.verify()
    assert not result.ok
    assert result.first_broken_seq == broken
    assert why in result.reason
    assert result.count == broken - 1
    with pytest.raises(AuditBroken, match=f"sequence {broken}"):
        result.check()


def test_append_fails_closed_when_the_end_of_the_log_was_cut(store: Store) -> None:
    fill(store, 3)
    drop_triggers(store)
    sql(store, "DELETE FROM audit_event WHERE seq = 3")
    with pytest.raises(AuditBroken, match="head records event 3"):
        store.audit.append("plan", "agent", "planner")
    assert store.audit.verify().first_broken_seq == 3


def test_a_database_failure_fails_closed_with_the_reason(store: Store) -> None:
    fill(store, 2)
    sql(store, "DROP TABLE audit_event")
    with pytest.raises(StoreError, match=r"appending to the audit log failed: .*audit_event"):
        store.audit.append("tool_call", "agent", "executor")
    with pytest.raises(StoreError, match="reading the audit log failed"):
        store.audit.verify()


def test_a_deleted_head_is_reported_and_not_recreated(store: Store) -> None:
    fill(store, 3)
    drop_triggers(store)
    sql(store, "DELETE FROM audit_head")
    store.init()
    result = store.audit.verify()
    assert (result.ok, result.count, result.first_broken_seq) == (False, 3, None)
    assert "head record is missing" in result.reason
    with pytest.raises(AuditBroken, match="head record is missing"):
        store.audit.append("plan", "agent", "planner")


# -- concurrency ---------------------------------------------------------------------------


def assert_clean_chain(store: Store, count: int) -> None:
    result = store.audit.verify()
    assert result.ok, result.reason
    assert result.count == count
    assert [row[0] for row in stored_rows(store)] == list(range(1, count + 1))


def test_concurrent_appends_from_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(40):
                if i % 10 == 0:
                    store.audit.append_many(
                        NewEvent("tool_call", "agent", f"w{worker}") for _ in range(3)
                    )
                else:
                    store.audit.append("tool_call", "agent", f"w{worker}", {"i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_clean_chain(store, 4 * (36 + 4 * 3))


_WRITER = """
import sys, time
from fieldgate.store import Store
with Store.open(sys.argv[1]) as store:
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(int(sys.argv[2])):
        store.audit.append("device_report", "device", sys.argv[3], {"i": i})
        time.sleep(0.001)  # like a real writer: without pauses SQLite lets one process hog
"""


def test_concurrent_appends_from_processes(store: Store, db_url: str) -> None:
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, db_url, "80", f"dev-{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    for writer in writers:  # start together, once both are connected
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for i in range(40):
        store.audit.append("tool_call", "agent", "main", {"i": i})
        time.sleep(0.001)
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    assert_clean_chain(store, 200)
    actors = [e.actor for e in store.audit.events()]
    switches = sum(a != b for a, b in itertools.pairwise(actors))
    assert switches > 2, "the writers never ran at the same time"
