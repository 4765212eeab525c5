"""``fieldgate audit export``: JSON lines or CSV, filtered by plan and time, on both databases."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from fieldgate.audit import AuditEvent, chain_hash
from fieldgate.cli import app
from fieldgate.store import NewEvent, Store

runner = CliRunner()

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _events(url: str) -> None:
    with Store.open(url) as store:
        store.audit.append_many(
            [
                NewEvent("request", "human", "eng-ana", {"text": "roll out"}, "p1", at=T0),
                NewEvent("plan", "agent", "planner", {"w": 2}, "p1", at=T0.replace(hour=9)),
                NewEvent(
                    "request",
                    "human",
                    "=cmd|' /C calc'!A0",
                    {"text": "=1+1"},
                    "p2",
                    at=T0.replace(hour=10),
                ),
                NewEvent(
                    "policy_decision",
                    "system",
                    "policy",
                    {"ok": True},
                    "p1",
                    at=T0.replace(hour=11),
                ),
            ]
        )


def _export(url: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["audit", "export", "--db", url, *args])
    return result.exit_code, result.output


def test_export_filters_by_plan_and_time_and_each_line_keeps_its_hashes(db_url: str) -> None:
    _events(db_url)
    code, out = _export(
        db_url, "--plan", "p1", "--since", "2026-12-01T08:30", "--until", "2026-12-01T11:00Z"
    )
    assert code == 0, out
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["kind"], e["plan_id"]) for e in lines] == [("plan", "p1")]
    event = AuditEvent.model_validate(lines[0])
    assert event.hash == chain_hash(event.prev_hash, event.body())


def test_csv_export_has_a_header_and_defuses_formulas(db_url: str, tmp_path: Path) -> None:
    _events(db_url)
    target = tmp_path / "audit.csv"
    code, out = _export(db_url, "--format", "csv", "--out", str(target))
    assert code == 0 and "exported 4 events" in out
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["seq"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[2]["actor"] == "'=cmd|' /C calc'!A0"
    assert json.loads(rows[2]["payload"]) == {"text": "=1+1"}
    assert not (tmp_path / "audit.csv.partial").exists()


def test_a_bad_time_is_refused_with_one_line_and_nothing_written(
    sqlite_url: str, tmp_path: Path
) -> None:
    _events(sqlite_url)
    target = tmp_path / "out.jsonl"
    code, out = _export(sqlite_url, "--since", "yesterday", "--out", str(target))
    assert code == 2 and "--since: 'yesterday' is not an ISO 8601 time" in out
    assert not target.exists()
    code, out = _export(sqlite_url, "--since", "2026-12-02", "--until", "2026-12-01")
    assert code == 2 and "is not after --since" in out
