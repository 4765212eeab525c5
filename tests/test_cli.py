"""The command line: init, imports with bad input, schema, audit commands, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.edge._tables import EdgeTable, upsert_devices
from fieldgate.store import Store

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def counts(url: str) -> tuple[int, int, int, int]:
    with Store.open(url) as store:
        summary = store.fleet.summary()
        return (
            len(store.catalog.list()),
            summary.devices,
            summary.sites,
            len(store.audit.events()),
        )


def test_init_loads_sample_and_is_idempotent(db_url: str) -> None:
    code, out = invoke("init", "--db", db_url)
    assert code == 0, out
    assert "23 new manifests, 314 devices" in out and "made now" in out
    # The root of trust is made once; it, the sample's throwaway factory key and both
    # imports are audited.
    assert counts(db_url) == (23, 314, 9, 4)
    code, out = invoke("init", "--db", db_url)
    assert code == 0 and "0 new manifests" in out and "pinned already" in out
    assert counts(db_url) == (23, 314, 9, 6)


def test_bad_inventory_exits_2_names_field_and_stores_nothing(db_url: str, tmp_path: Path) -> None:
    invoke("init", "--db", db_url)
    before = counts(db_url)
    bad = tmp_path / "fleet.yaml"
    bad.write_text(
        "sites:\n  - {id: new-01, region: eu-west, timezone: Europe/Paris}\n"
        "devices:\n"
        "  - {id: new-01-a, site: new-01, class: pump-ctl, arch: arm64, memory_mb: 512}\n"
        "  - {id: new-01-b, site: new-01, class: pump-ctl, arch: arm64, memory_mb: -5}\n"
    )
    result = runner.invoke(app, ["fleet", "import", str(bad), "--db", db_url])
    assert result.exit_code == 2
    assert f"{bad}: devices[1].memory_mb: Input should be greater than 0" in result.output
    assert counts(db_url) == before


def test_bad_manifest_in_second_file_keeps_first_file_out_too(db_url: str, tmp_path: Path) -> None:
    invoke("init", "--db", db_url, "--empty")
    good = tmp_path / "good.yaml"
    good.write_text(
        "kind: Module\nname: demo-mod\nversion: 1.0.0\nsafety: low\ndevice_classes: [x]\n"
        "arch: [arm64]\nartifact: {uri: 'oci://x', digest: 'sha256:" + "a" * 64 + "'}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("safety: low", "safety: extreme"))
    result = runner.invoke(app, ["catalog", "import", str(good), str(bad), "--db", db_url])
    assert result.exit_code == 2
    assert f"{bad}: safety: Input should be 'none', 'low', 'high' or 'critical'" in result.output
    assert counts(db_url)[0] == 0


def test_changed_manifest_for_existing_version_is_refused(db_url: str, tmp_path: Path) -> None:
    invoke("init", "--db", db_url)
    catalog = Path(__file__).resolve().parents[1] / "fieldgate" / "data" / "catalog.yaml"
    changed = tmp_path / "changed.yaml"
    changed.write_text(catalog.read_text().replace("min_memory_mb: 512", "min_memory_mb: 64", 1))
    result = runner.invoke(app, ["catalog", "import", str(changed), "--db", db_url])
    assert result.exit_code == 2, result.output
    assert "immutable" in result.output or "differs" in result.output
    assert counts(db_url)[0] == 23


def test_catalog_and_fleet_views(sqlite_url: str) -> None:
    invoke("init", "--db", sqlite_url)
    code, out = invoke("catalog", "list", "--db", sqlite_url)
    assert code == 0 and "safety-interlock" in out and "23 manifests" in out
    code, out = invoke("catalog", "show", "hvac-controller", "2.4.1", "--db", sqlite_url)
    assert code == 0 and "edge-runtime >=3.2,<4" in out and "factory-sample" in out
    code, out = invoke("catalog", "show", "nope", "--db", sqlite_url)
    assert code == 2 and "nope" in out
    code, out = invoke(
        "fleet", "list", "--site", "rtm-05", "--class", "pump-ctl", "--db", sqlite_url
    )
    assert code == 0 and "60 devices match" in out
    code, out = invoke("fleet", "list", "--class", "camera-node", "--db", sqlite_url)
    text = " ".join(out.split())
    assert code == 0 and "fleet: 32 devices at 2 sites" in text and "(of 314 devices" in text
    assert "hvac" not in text and "pump-ctl" not in text, "the summary counts only the matches"
    code, out = invoke("fleet", "list", "--class", "camera-nod", "--db", sqlite_url)
    assert code == 2 and "--class 'camera-nod': no such name" in out and "camera-node" in out
    code, out = invoke("fleet", "list", "--site", "rotterdam", "--db", sqlite_url)
    assert code == 2 and "devices match" not in out
    code, out = invoke("fleet", "show", "ber-03", "--db", sqlite_url)
    assert code == 0 and "24 devices" in out and "regulated" in out
    code, out = invoke("fleet", "show", "ber-03-hvac-gw-07", "--db", sqlite_url)
    assert code == 0 and "hvac-controller 2.3.4" in out and "Europe/Berlin" in out
    assert "never heard from by a gateway" in out and "not enrolled" in out
    with Store.open(sqlite_url) as store:
        EdgeTable.metadata.create_all(store.engine)
        with store.engine.begin() as conn:
            health = {"ok": False, "score": 0.2, "note": "\x1b[2Jvalve stuck"}
            row = {
                "device_id": "ber-03-hvac-gw-07",
                "site": "ber-03",
                "online": False,
                "seen_us": 1_796_000_000_000_000,
                "hlc_wall": 0,
                "hlc_counter": 0,
                "installed": "{}",
                "health": json.dumps(health),
            }
            upsert_devices(conn, [row])
    code, out = invoke("fleet", "show", "ber-03-hvac-gw-07", "--db", sqlite_url)
    assert code == 0 and "offline, 2026-11-30 00:53:20 UTC" in out and "not ok, score 0.2" in out
    assert "\x1b" not in out and "␛[2Jvalve stuck" in out
    code, out = invoke("fleet", "show", "ber-03-hvac-gw-07", "--json", "--db", sqlite_url)
    seen = json.loads(out)["seen"]
    assert seen["online"] is False and seen["health"]["score"] == 0.2
    code, out = invoke("fleet", "show", "ghost-1", "--db", sqlite_url)
    assert code == 2 and "no device or site named 'ghost-1'" in out


def test_fleet_seed_is_reproducible(sqlite_url: str, tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for path in (first, second):
        code, _ = invoke(
            "fleet",
            "seed",
            "--sites",
            "4",
            "--devices-per-site",
            "30",
            "--seed",
            "7",
            "--out",
            str(path),
        )
        assert code == 0
    assert first.read_text() == second.read_text()
    code, out = invoke("fleet", "import", str(first), "--db", sqlite_url)
    assert code == 0 and "4 sites, 120 devices" in out
    code, out = invoke(
        "fleet",
        "seed",
        "--sites",
        "2",
        "--devices-per-site",
        "5",
        "--seed",
        "1",
        "--db",
        sqlite_url,
    )
    assert code == 0 and "seeded 10 devices" in out


def test_schema_command() -> None:
    code, out = invoke("schema", "plan")
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "RolloutPlan" and schema["additionalProperties"] is False
    code, out = invoke("schema")
    assert code == 0 and "scenario" in out
    result = runner.invoke(app, ["schema", "plans"])
    assert result.exit_code == 2 and "no contract named 'plans'" in result.output


def test_audit_commands(sqlite_url: str, tmp_path: Path) -> None:
    with Store.open(sqlite_url) as store:
        store.audit.append("request", "human", "eng-ana", {"text": "roll out"}, plan_id="p1")
        store.audit.append("plan", "agent", "planner", {"waves": 2}, plan_id="p1")
        store.audit.append("request", "human", "eng-bo", {"text": "other"}, plan_id="p2")
    code, out = invoke("audit", "verify", "--db", sqlite_url)
    assert code == 0 and "3 events verified" in out
    code, out = invoke("audit", "show", "p1", "--db", sqlite_url)
    assert code == 0 and "2 events of plan p1" in out and "eng-bo" not in out
    target = tmp_path / "audit.jsonl"
    code, out = invoke(
        "audit", "export", "--format", "jsonl", "--out", str(target), "--db", sqlite_url
    )
    assert code == 0
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [e["seq"] for e in lines] == [1, 2, 3] and lines[1]["prev_hash"] == lines[0]["hash"]


def test_every_command_has_help() -> None:
    for args in (
        ["--help"],
        ["init", "--help"],
        ["catalog", "import", "--help"],
        ["fleet", "seed", "--help"],
        ["audit", "verify", "--help"],
        ["demo", "--help"],
    ):
        code, out = invoke(*args)
        assert code == 0 and "Usage" in out


def test_installed_console_script_runs_the_demo(tmp_path: Path) -> None:
    env = {**os.environ, "FIELDGATE_HOME": str(tmp_path), "COLUMNS": "120"}
    exe = Path(sys.executable).with_name("fieldgate")
    if not exe.exists():
        pytest.fail(f"console script not installed next to {sys.executable}")
    done = subprocess.run([str(exe), "demo"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "314 devices at 9 sites" in done.stdout and "audit chain ok" in done.stdout


def _commands(group: Any, prefix: list[str]) -> list[list[str]]:
    found = [prefix]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found += _commands(command, [*prefix, name])
        else:
            found.append([*prefix, name])
    return found


def test_no_help_page_shows_a_type_for_a_flag() -> None:
    root = typer.main.get_command(app)
    pages = _commands(root, [])
    assert len(pages) > 30
    for args in pages:
        result = runner.invoke(app, [*args, "--help"], terminal_width=120)
        assert result.exit_code == 0, (args, result.output)
        assert "<bool>" not in result.output, args
