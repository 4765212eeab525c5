"""Garbage files end in one line naming the file and the problem, exit 2, nothing stored.

A key file that holds no key, a YAML file that is not UTF-8 and a YAML file nested 20,000
levels deep each ended in a Python traceback. Each case runs through the CLI on a real
SQLite database.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.contract import read_json, read_yaml
from fieldgate.errors import InputInvalid
from fieldgate.policy import PolicyPack
from fieldgate.store import Store

runner = CliRunner()

HVAC = "Roll out hvac-controller 2.4.1 to muc-01"

NOT_UTF8 = b"kind: Module\nname: caf\xe9\n"
DEEP = "[" * 20000
DEEP_CLOSED = "[" * 20000 + "]" * 20000

BAD_FILES = {
    "not-utf8": (NOT_UTF8, "not UTF-8 text (byte 0xe9 at offset 22)"),
    "deep": (DEEP.encode(), "nested too deeply to read"),
    "deep-closed": (DEEP_CLOSED.encode(), "nested too deeply to read"),
}


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args} raised {result.exception!r}"
    )
    return result.exit_code, result.output


def assert_one_line(out: str, path: Path, problem: str) -> None:
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines == [f"{path}: {problem}"], out


@pytest.fixture
def db(initialised_db: str) -> str:
    """The sample deployment (see ``initialised_db``)."""
    return initialised_db


def stored(url: str) -> tuple[int, int, int]:
    with Store.open(url) as store:
        return len(store.catalog.list()), store.fleet.summary().devices, len(store.audit.events())


# --------------------------------------------------------------------------- key files


@pytest.mark.parametrize(
    "content",
    [b"not base64!!\n", b"c2hvcnQ=\n", b"QUFB" * 20 + b"\n", b"\xff\xfe\x00garbage"],
    ids=["not-base64", "too-short", "too-long", "not-text"],
)
def test_a_garbage_key_file_names_the_file_and_decides_nothing(
    db: str, tmp_path: Path, content: bytes
) -> None:
    code, out = invoke("chat", "--as", "eng-ana", stdin=HVAC + "\n")
    assert code == 0, out
    with Store.open(db) as store:
        run = store.runs.list()[-1]
    keys = tmp_path / "home" / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    path = keys / "saf-lee.key"
    path.write_bytes(content)
    before = stored(db)
    code, out = invoke("approvals", "approve", run.plan_id, "--as", "saf-lee", "-m", "ok")
    assert code == 2, out
    assert_one_line(
        out,
        path,
        "not a private key (expected the base64 of 32 bytes, as `fieldgate keys init` writes "
        "it); `fieldgate keys init --as saf-lee --force` makes a new one",
    )
    assert stored(db) == before
    with Store.open(db) as store:
        assert store.approvals.for_plan(run.plan_id) == []
        assert store.runs.for_plan(run.plan_id).status == "awaiting_approval"
    # keys list says so instead of failing; keys init --force replaces it
    code, out = invoke("keys", "list")
    assert code == 0, out
    code, out = invoke("keys", "init", "--as", "saf-lee")
    assert code == 2 and f"{path}: not a private key" in out
    assert invoke("keys", "init", "--as", "saf-lee", "--force")[0] == 0


# --------------------------------------------------------------------------- YAML files


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_catalog_file_names_the_file_and_stores_nothing(
    db: str, tmp_path: Path, case: str
) -> None:
    content, problem = BAD_FILES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(content)
    before = stored(db)
    code, out = invoke("catalog", "import", str(path))
    assert code == 2, out
    assert_one_line(out, path, problem)
    assert stored(db) == before


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_fleet_file_names_the_file_and_stores_nothing(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    url = db_url
    monkeypatch.setenv("FIELDGATE_DB", url)
    assert invoke("init", "--empty")[0] == 0
    before = stored(url)  # the root of trust's audit event only
    content, problem = BAD_FILES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(content)
    code, out = invoke("fleet", "import", str(path))
    assert code == 2, out
    assert_one_line(out, path, problem)
    assert stored(url) == before == (0, 0, 1)
    code, out = invoke("fleet", "list")
    assert code == 0 and "0 devices match" in out


def test_bad_scenario_files_are_named_and_not_run(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    for case, (content, _) in BAD_FILES.items():
        (suite / f"{case}.yaml").write_bytes(content)
    out_dir = tmp_path / "out"
    result = runner.invoke(app, ["eval", "run", str(suite), "--out", str(out_dir), "-q"])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for case, (_, problem) in BAD_FILES.items():
        assert f"{suite / case}.yaml: {problem}\n" in result.output
    document = json.loads((out_dir / "results.json").read_text())
    assert document["scenarios"] == [] and len(document["errors"]) == 3


def test_bad_policy_data_names_the_file(tmp_path: Path) -> None:
    pack = PolicyPack.load()
    for case, (content, problem) in BAD_FILES.items():
        directory = tmp_path / case
        directory.mkdir()
        for module in pack.modules:
            (directory / module.name).write_text(module.source, encoding="utf-8")
        (directory / "data.json").write_bytes(content)
        code, out = invoke("policy", "show", "--dir", str(directory))
        assert code == 2, out
        assert_one_line(out, directory / "data.json", problem)


def test_the_readers_raise_the_kind_they_are_given(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(DEEP.encode())
    with pytest.raises(InputInvalid, match="nested too deeply"):
        read_yaml(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(InputInvalid, match="not UTF-8"):
        read_json(path)
