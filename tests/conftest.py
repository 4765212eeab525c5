"""Shared fixtures: databases (real SQLite and real PostgreSQL) and service checks.

Tests that need PostgreSQL or Mosquitto skip with the reason when the service is
down, except under ``CI=true``, where a missing service fails the run.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_DSN = os.environ.get("FIELDGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MQTT_HOST = os.environ.get("FIELDGATE_TEST_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("FIELDGATE_TEST_MQTT_PORT", "1883"))


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip the test when the service is down, or fail under CI=true."""
    if _port_open(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if _in_ci():
        pytest.fail(f"{message} (CI=true: services are required)")
    pytest.skip(message)


def require_postgres() -> None:
    """Skip or fail when PostgreSQL is down."""
    require_service("PostgreSQL", "127.0.0.1", 5432)


def require_mqtt() -> None:
    """Skip or fail when the MQTT broker is down."""
    require_service("Mosquitto", MQTT_HOST, MQTT_PORT)


@pytest.fixture(autouse=True)
def _own_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own FIELDGATE_HOME (keys, the pinned root of trust), never the
    user's ~/.fieldgate; a test that sets its own replaces it."""
    monkeypatch.setenv("FIELDGATE_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    require_postgres()
    import psycopg

    schema = "fgtest_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """A SQLite file URL in the test's temporary directory."""
    return f"sqlite:///{tmp_path}/fieldgate.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[str]:
    """Run the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/fieldgate.db"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def initialised_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database made by ``fieldgate init`` with the sample, on SQLite and on PostgreSQL;
    FIELDGATE_HOME and FIELDGATE_DB point at it, the other settings are unset."""
    from typer.testing import CliRunner

    from fieldgate.cli import app

    monkeypatch.setenv("FIELDGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FIELDGATE_DB", db_url)
    for name in ("FIELDGATE_USER", "FIELDGATE_MODEL", "FIELDGATE_FREEZE", "FIELDGATE_ROSTER"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["init"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return db_url
