"""A worker's claim on a run holds no transaction open on PostgreSQL.

A worker holds a session advisory lock for as long as it executes a run. Taken on a
connection left inside a transaction, the lock kept that transaction open for the whole
run, and PostgreSQL makes every ``CREATE INDEX CONCURRENTLY`` in the database wait for
all open transactions: the checkpointer's setup in a second worker (or any command that
opens the graph) hung until the first worker's run ended.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import conftest
import pytest

from fieldgate.store import Store

pytestmark = pytest.mark.postgres


@pytest.fixture
def second_pg_url() -> Iterator[str]:
    """Another fresh schema: a database whose checkpointer tables do not exist yet."""
    yield from conftest.pg_url.__wrapped__()  # type: ignore[attr-defined]


def test_another_process_sets_the_checkpointer_up_while_a_run_is_claimed(
    pg_url: str, second_pg_url: str
) -> None:
    store = Store.open(pg_url)
    try:
        with store.runs.exclusive("thread-held-by-a-worker") as got:
            assert got
            opener = textwrap.dedent(
                f"""
                from fieldgate.graphs.checkpoint import open_checkpointer
                with open_checkpointer({second_pg_url!r}):
                    print("opened")
                """
            )
            try:
                done = subprocess.run(
                    [sys.executable, "-c", opener], capture_output=True, text=True, timeout=60
                )
            except subprocess.TimeoutExpired:
                pytest.fail("the checkpointer's setup waited for the worker's claim to end")
            assert done.returncode == 0 and "opened" in done.stdout, done.stderr
            # Still claimed: a second claim on the same run is refused meanwhile.
            with (
                Store.open(pg_url) as other,
                other.runs.exclusive("thread-held-by-a-worker") as two,
            ):
                assert not two
    finally:
        store.close()
