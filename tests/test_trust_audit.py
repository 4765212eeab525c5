"""The anchored audit log: signed checkpoints, the witness outside the database, attacks on both.

Every attack below is made as an attacker with the database but none of the keys
would make it: on SQLite by dropping the guarding triggers, on PostgreSQL as the
superuser the application used to connect as, with ``session_replication_role =
replica`` so the triggers do not fire. The hash chain alone still verifies after
each of them; the checkpoints in the witness file name what was done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from fieldgate.audit import GENESIS_HASH, AuditCheckpoint
from fieldgate.audit_witness import read_witness
from fieldgate.cli import app
from fieldgate.config import Config
from fieldgate.errors import ConfigInvalid
from fieldgate.graphs.compose import configured_witness
from fieldgate.signing import SigningKey
from fieldgate.store import NewEvent, Store
from fieldgate.store._audit import body_json

runner = CliRunner()
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
COLUMNS = "seq, at, plan_id, thread_id, actor_kind, actor, kind, payload, prev_hash, hash"


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """FIELDGATE_HOME in the test's directory, so keys and the witness land there."""
    monkeypatch.setenv("FIELDGATE_HOME", str(tmp_path / "home"))
    for name in ("FIELDGATE_AUDIT_WITNESS", "FIELDGATE_AUDIT_CHECKPOINT_EVERY", "FIELDGATE_DB"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def store(db_url: str, home: Path) -> Iterator[Store]:
    with Store.open(db_url) as opened:
        yield opened


def witness_file(home: Path) -> Path:
    return home / "audit-witness.jsonl"


def fill(store: Store, n: int) -> None:
    store.audit.append_many(
        NewEvent("tool_call", "agent", "executor", {"i": i}, plan_id="p-1", at=T0 + timedelta(i))
        for i in range(n)
    )


def checkpoint(url: str) -> str:
    code, out = invoke("audit", "checkpoint", "--db", url)
    assert code == 0, out
    return out


def verify(url: str, *more: str) -> tuple[int, str]:
    return invoke("audit", "verify", "--db", url, *more)


def tamper(store: Store, *statements: tuple[str, dict[str, Any]]) -> None:
    """Run ``statements`` past the guarding triggers, as an attacker with the database can."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            for name in (
                "audit_event_no_update",
                "audit_event_no_delete",
                "audit_head_no_delete",
                "audit_checkpoint_no_update",
                "audit_checkpoint_no_delete",
            ):
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        else:
            # The superuser's way past every trigger, for this transaction only.
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        for statement, params in statements:
            conn.execute(text(statement), params)


def stored_rows(store: Store) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        query = text(f"SELECT {COLUMNS} FROM audit_event ORDER BY seq")
        return [tuple(row) for row in conn.execute(query)]


def rechain_after_edit(store: Store, edited: int) -> None:
    """Edit event ``edited``'s payload and re-chain every event after it, then move the head."""
    rows = stored_rows(store)
    prev = rows[edited - 2][9] if edited > 1 else GENESIS_HASH
    statements: list[tuple[str, dict[str, Any]]] = []
    for seq, at, plan_id, thread_id, actor_kind, actor, kind, payload, _, _ in rows[edited - 1 :]:
        if seq == edited:
            payload = '{"i":999}'
        body = body_json(seq, at, plan_id, thread_id, actor_kind, actor, kind, payload)
        new_hash = hashlib.sha256((prev + body).encode("utf-8")).hexdigest()
        statements.append(
            (
                "UPDATE audit_event SET payload = :payload, prev_hash = :prev, hash = :hash "
                "WHERE seq = :seq",
                {"payload": payload, "prev": prev, "hash": new_hash, "seq": seq},
            )
        )
        prev = new_hash
    statements.append(("UPDATE audit_head SET hash = :hash", {"hash": prev}))
    tamper(store, *statements)


# -- checkpoints are made ----------------------------------------------------------------------


def test_checkpoint_signs_the_head_into_store_and_witness(
    store: Store, db_url: str, home: Path
) -> None:
    fill(store, 10)
    out = checkpoint(db_url)
    assert "sequence 10" in out
    [entry] = read_witness(witness_file(home))
    [kept] = store.checkpoints.stored()
    assert entry.checkpoint == kept
    assert (kept.seq, kept.head_hash) == (10, stored_rows(store)[-1][9])
    assert kept.log_id == store.checkpoints.log_id()
    [control] = store.keys.for_purpose("control-plane")
    assert kept.key_id == control.key_id
    code, out = verify(db_url)
    assert code == 0, out
    assert "audit chain ok: 10 events verified; the witnessed checkpoint at sequence 10" in out


def test_a_checkpoint_every_n_events_counted_on_append(
    store: Store, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDGATE_AUDIT_CHECKPOINT_EVERY", "4")
    configured_witness(Config.from_env(), store)
    for i in range(10):
        store.audit.append("tool_call", "agent", "executor", {"i": i})
    assert [e.checkpoint.seq for e in read_witness(witness_file(home))] == [4, 8]
    # Events that join a transaction are checkpointed once it commits, not before.
    with store.writing("three more") as tx:
        fill_events = [NewEvent("tool_call", "agent", "executor", {"j": j}) for j in range(3)]
        store.audit.append_many(fill_events, tx=tx)
        assert len(read_witness(witness_file(home))) == 2
    assert [e.checkpoint.seq for e in read_witness(witness_file(home))] == [4, 8, 13]
    assert [c.seq for c in store.checkpoints.stored()] == [4, 8, 13]


def test_the_checkpoint_interval_must_be_a_positive_count() -> None:
    with pytest.raises(ConfigInvalid, match="FIELDGATE_AUDIT_CHECKPOINT_EVERY='0'"):
        Config.from_env({"FIELDGATE_AUDIT_CHECKPOINT_EVERY": "0"})
    witness = Config.from_env({"FIELDGATE_AUDIT_WITNESS": "/x/w.jsonl", "FIELDGATE_HOME": "/h"})
    assert witness.witness_path == Path("/x/w.jsonl")
    assert Config.from_env({"FIELDGATE_HOME": "/h"}).witness_path == Path("/h/audit-witness.jsonl")


def test_a_clean_rollout_is_checkpointed_at_its_end_and_verifies(
    db_url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIELDGATE_DB", db_url)
    for name in ("FIELDGATE_USER", "FIELDGATE_MODEL", "FIELDGATE_FREEZE", "FIELDGATE_ROSTER"):
        monkeypatch.delenv(name, raising=False)
    assert invoke("init")[0] == 0
    result = runner.invoke(
        app, ["chat", "--as", "eng-ana"], input="Roll out hvac-controller 2.4.1 to muc-01\n"
    )
    assert result.exit_code == 0, result.output
    with Store.open(db_url) as store:
        plan_id = store.runs.list()[-1].plan_id
    assert invoke("keys", "init", "--as", "saf-lee")[0] == 0
    assert invoke("keys", "enroll", "saf-lee")[0] == 0  # by the root holder who ran init
    code, out = invoke("approvals", "approve", plan_id, "--as", "saf-lee", "--comment", "ok")
    assert code == 0, out
    code, out = invoke("worker", "--once")
    assert code == 0, out
    with Store.open(db_url) as store:
        head = store.audit.head()
        assert head is not None and head.kind == "done"
        latest = read_witness(witness_file(home))[-1].checkpoint
        assert (latest.seq, latest.head_hash) == (head.seq, head.hash)
    code, out = verify(db_url)
    assert code == 0, out
    assert f"the witnessed checkpoint at sequence {head.seq}" in out and "matches" in out


def test_one_witness_serves_several_databases(tmp_path: Path, home: Path) -> None:
    urls = [f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"]
    for n, url in enumerate(urls, start=3):
        with Store.open(url) as store:
            fill(store, n)
        checkpoint(url)
    for n, url in enumerate(urls, start=3):
        code, out = verify(url)
        assert code == 0 and f"checkpoint at sequence {n}" in out, out


# -- attacks -----------------------------------------------------------------------------------


def test_deleting_the_last_events_and_moving_the_head_is_named(store: Store, db_url: str) -> None:
    fill(store, 10)
    checkpoint(db_url)
    tamper(
        store,
        ("DELETE FROM audit_event WHERE seq > 7", {}),
        ("UPDATE audit_head SET seq = 7, hash = (SELECT hash FROM audit_event WHERE seq = 7)", {}),
        ("DELETE FROM audit_checkpoint", {}),
    )
    assert store.audit.verify().ok  # the chain alone cannot tell
    code, out = verify(db_url)
    assert code == 1, out
    assert "audit log tampered: events after sequence 7 are missing" in out
    # Nothing is signed over the cut either.
    code, out = invoke("audit", "checkpoint", "--db", db_url)
    assert code == 1 and "events after sequence 7 are missing" in out


def test_an_edit_rechained_to_the_end_is_named_at_the_checkpoint(store: Store, db_url: str) -> None:
    fill(store, 10)
    checkpoint(db_url)
    rechain_after_edit(store, 4)
    assert store.audit.verify().ok  # the chain alone cannot tell
    code, out = verify(db_url)
    assert code == 1, out
    assert "audit log tampered: checkpoint hash mismatch at 10" in out
    assert "the log was rewritten at or before event 10" in out
    code, out = invoke("audit", "checkpoint", "--db", db_url)
    assert code == 1 and "checkpoint hash mismatch at 10" in out


def test_a_forged_checkpoint_in_the_store_is_named(store: Store, db_url: str) -> None:
    fill(store, 10)
    checkpoint(db_url)
    [genuine] = store.checkpoints.stored()
    head = stored_rows(store)[-1][9]
    forged = AuditCheckpoint(
        checkpoint_id="ckpt-forged",
        log_id=genuine.log_id,
        seq=10,
        head_hash=head,
        at=genuine.at + timedelta(seconds=1),
        key_id=genuine.key_id,
    )
    intruder = SigningKey.generate("control-plane")
    row = {**forged.model_dump(mode="json"), "signature": intruder.sign(forged.signed_body())}
    row["at"] = genuine.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    tamper(
        store,
        (
            "INSERT INTO audit_checkpoint (checkpoint_id, log_id, seq, head_hash, at, key_id, "
            "signature) VALUES (:checkpoint_id, :log_id, :seq, :head_hash, :at, :key_id, "
            ":signature)",
            row,
        ),
    )
    code, out = verify(db_url)
    assert code == 1, out
    assert (
        "checkpoint signature mismatch at 10: the stored checkpoint ckpt-forged has a "
        f"signature that does not verify against key {genuine.key_id}"
    ) in out


def test_a_witness_line_signed_by_an_untrusted_key_is_named(
    store: Store, db_url: str, home: Path
) -> None:
    fill(store, 4)
    checkpoint(db_url)
    [genuine] = store.checkpoints.stored()
    intruder = SigningKey.generate("intruder")
    forged = genuine.model_copy(update={"key_id": intruder.key_id, "seq": 4})
    forged = forged.model_copy(update={"signature": intruder.sign(forged.signed_body())})
    with witness_file(home).open("a") as fp:
        fp.write(json.dumps(forged.model_dump(mode="json")) + "\n")
    code, out = verify(db_url)
    assert code == 1, out
    assert (
        f"checkpoint signature mismatch at 4: witness line 2 is signed by key "
        f"{intruder.key_id}, which is not a trusted control-plane key"
    ) in out


def test_a_witness_whose_head_moved_backwards_is_named(
    store: Store, db_url: str, home: Path
) -> None:
    fill(store, 5)
    checkpoint(db_url)
    fill(store, 5)
    checkpoint(db_url)
    lines = witness_file(home).read_text().splitlines()
    # An old, genuinely signed checkpoint appended again would let a cut after 5 pass.
    witness_file(home).write_text("\n".join([*lines, lines[0]]) + "\n")
    code, out = verify(db_url)
    assert code == 1, out
    assert (
        "audit log tampered: head moved backwards: witness line 3 records sequence 5 "
        "after line 2 recorded sequence 10"
    ) in out


def test_a_garbled_witness_is_bad_input_named_by_file_and_line(
    store: Store, db_url: str, home: Path
) -> None:
    fill(store, 3)
    checkpoint(db_url)
    path = witness_file(home)
    good = path.read_text()
    path.write_text(good + '{"seq": 3, "log_id": \n')
    code, out = verify(db_url)
    assert code == 2, out
    assert out.strip() == f"{path}: line 2: not JSON (Expecting value, column 22)"
    path.write_text(good.replace('"seq":3,', ""))
    code, out = verify(db_url)
    assert code == 2, out
    assert out.strip() == f"{path}: line 1: not a checkpoint (seq: Field required)"
    path.unlink()
    code, out = verify(db_url)
    assert code == 2, out
    assert f"{path}: no witness file here, but the database holds 1 checkpoints" in out


# -- the restricted PostgreSQL role ------------------------------------------------------------


@pytest.fixture
def app_role(pg_url: str) -> Iterator[str]:
    """A role name for this test; dropped with everything it owns afterwards."""
    import uuid

    import psycopg
    from conftest import PG_DSN

    name = "fg_app_" + uuid.uuid4().hex[:10]
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


def make_role(pg_url: str, role: str) -> str:
    code, out = invoke("db", "roles", "--admin-url", pg_url, "--app-role", role)
    assert code == 0, out
    assert f"role {role}: not superuser; audit_event: SELECT, INSERT;" in out
    return out.split("FIELDGATE_DB=", 1)[1].strip()


@pytest.mark.postgres
def test_the_app_role_cannot_rewrite_the_audit_log_or_skip_its_guards(
    pg_url: str, app_role: str, home: Path
) -> None:
    app_url = make_role(pg_url, app_role)
    assert f"{app_role}@" in app_url and "search_path" in app_url
    with Store.open(app_url) as store:
        fill(store, 6)
        checkpoint(app_url)
        refused = {
            "UPDATE audit_event SET actor = 'mallory'": "permission denied for table audit_event",
            "DELETE FROM audit_event WHERE seq > 3": "permission denied for table audit_event",
            "TRUNCATE audit_event": "permission denied for table audit_event",
            "DELETE FROM audit_head": "permission denied for table audit_head",
            "DELETE FROM audit_checkpoint": "permission denied for table audit_checkpoint",
            "UPDATE audit_checkpoint SET seq = 1": "permission denied for table audit_checkpoint",
            "SET session_replication_role = replica": (
                'permission denied to set parameter "session_replication_role"'
            ),
            "DROP TRIGGER audit_event_append_only ON audit_event": "must be owner",
        }
        for statement, reason in refused.items():
            with pytest.raises(Exception, match=reason), store.engine.begin() as conn:
                conn.exec_driver_sql(statement)
        with store.engine.connect() as conn:
            superuser = conn.exec_driver_sql(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            )
            assert superuser.scalar() is False
    code, out = verify(app_url)
    assert code == 0 and "6 events verified; the witnessed checkpoint at sequence 6" in out, out


@pytest.mark.postgres
def test_a_rollout_runs_as_the_app_role(
    pg_url: str, app_role: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_url = make_role(pg_url, app_role)
    monkeypatch.setenv("FIELDGATE_DB", app_url)
    for name in ("FIELDGATE_USER", "FIELDGATE_MODEL", "FIELDGATE_FREEZE", "FIELDGATE_ROSTER"):
        monkeypatch.delenv(name, raising=False)
    code, out = invoke("init")
    assert code == 0, out
    request = "Roll out hvac-controller 2.4.1 to muc-01\n"
    result = runner.invoke(app, ["chat", "--as", "eng-ana"], input=request)
    assert result.exit_code == 0, result.output
    with Store.open(app_url) as store:
        plan_id = store.runs.list()[-1].plan_id
    assert invoke("keys", "init", "--as", "saf-lee")[0] == 0
    assert invoke("keys", "enroll", "saf-lee")[0] == 0  # by the root holder who ran init
    assert invoke("approvals", "approve", plan_id, "--as", "saf-lee")[0] == 0
    code, out = invoke("worker", "--once")
    assert code == 0, out
    code, out = verify(app_url)
    assert code == 0 and "matches" in out, out
    # Running it again (after an upgrade, say) keeps the rights as they were.
    assert make_role(pg_url, app_role) == app_url


def test_roles_need_postgresql_and_a_plain_name(sqlite_url: str) -> None:
    code, out = invoke("db", "roles", "--admin-url", sqlite_url, "--app-role", "fieldgate_app")
    assert code == 2
    assert out.strip() == (
        "--admin-url: database roles need PostgreSQL (postgresql+psycopg://…); SQLite has none"
    )
    never_reached = "postgresql://admin@127.0.0.1:9/none"
    code, out = invoke(
        "db", "roles", "--admin-url", never_reached, "--app-role", 'x"; DROP TABLE y'
    )
    assert code == 2
    assert out.strip().startswith("--app-role: 'x\"; DROP TABLE y' is not a role name")
