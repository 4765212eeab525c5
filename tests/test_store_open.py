"""Opening the stores: one URL, idempotent init, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldgate.errors import StoreError
from fieldgate.store import Store


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
