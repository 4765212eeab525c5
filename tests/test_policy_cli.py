"""``fieldgate policy test | show | eval`` through the real command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.policy import PolicyPack, default_policy_dir
from fieldgate.scenario import load_scenario
from fieldgate.signing import SigningKey

SCENARIOS = Path(__file__).resolve().parents[2] / "shared" / "scenarios"
"""The shared scenarios (``../shared/scenarios`` beside the repository)."""
TEST_NAMES = [rule for m in PolicyPack.load().tests for rule, _ in m.tests()]
runner = CliRunner()

PLAN = {
    "apiVersion": "fieldgate/v1",
    "kind": "RolloutPlan",
    "plan_id": "p-pump",
    "module": "pump-logic",
    "version": "1.9.0",
    "requested_by": "eng-ana",
    "target": {"sites": ["rtm-05"]},
    "waves": [
        {
            "name": "canary",
            "count": 3,
            "health_gate": {"min_success_rate": 1.0, "max_failures": 0, "soak_minutes": 30},
        },
        {
            "name": "rest",
            "percent": 100,
            "health_gate": {"min_success_rate": 0.95, "max_failures": 2, "soak_minutes": 15},
        },
    ],
    "abort": {"failure_threshold": 0.05},
    "rollback": {"version": "1.8.0"},
    "schedule": {"mode": "now"},
}


def write_plan(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**PLAN, **changes}))
    return path


def test_policy_test_passes_and_counts(tmp_path: Path) -> None:
    result = runner.invoke(app, ["policy", "test"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"{len(TEST_NAMES)} passed, 0 failed"
    assert "PASS rollout_test.rego:" in result.output
    assert "fieldgate.rollout_test.test_d5_large_first_wave_denies" in result.output
    quiet = runner.invoke(app, ["policy", "test", "-q"])
    assert quiet.output.splitlines() == [f"{len(TEST_NAMES)} passed, 0 failed"]


def test_policy_test_names_file_and_line_of_a_syntax_error(tmp_path: Path) -> None:
    target = tmp_path / "policies"
    shutil.copytree(
        default_policy_dir(), target, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    lines = (target / "rollout.rego").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, start=1) if text.startswith("regions := "))
    lines[line - 1] = "regions := == ]"
    (target / "rollout.rego").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["policy", "test", "--dir", str(target)])
    assert result.exit_code == 1
    assert f"FAIL rollout.rego:{line} <compile>" in result.output


def test_policy_test_fails_a_failing_rego_test(tmp_path: Path) -> None:
    (tmp_path / "tools.rego").write_text(
        'package fieldgate.tools\n\ndecision := {"allow": false, "reason": "r"}\n'
    )
    (tmp_path / "tools_test.rego").write_text(
        "package fieldgate.tools_test\n\nimport data.fieldgate.tools\n\n"
        "test_allows if {\n\ttools.decision.allow\n}\n"
    )
    result = runner.invoke(app, ["policy", "test", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "FAIL tools_test.rego:5 fieldgate.tools_test.test_allows: undefined" in result.output
    assert "0 passed, 1 failed" in result.output


def test_policy_show_lists_each_rule_in_one_line() -> None:
    result = runner.invoke(app, ["policy", "show"])
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if line and line[0] in "ACDOT"]
    assert len(lines) == len(PolicyPack.load().rules())
    canary = next(line for line in lines if line.startswith("D5 canary"))
    assert "rollout.rego:" in canary and "5%" in canary


def test_policy_eval_with_a_scenario(tmp_path: Path) -> None:
    scenario = str(SCENARIOS / "canary-fails-rollback.yaml")
    allowed = runner.invoke(
        app,
        ["policy", "eval", "--plan", str(write_plan(tmp_path)), "--scenario", scenario, "--json"],
    )
    assert allowed.exit_code == 0, allowed.output
    decision = json.loads(allowed.output)
    assert (
        decision["allow"] is True and decision["targets"] == 60 and decision["engine"] == "regorus"
    )
    big = write_plan(
        tmp_path,
        waves=[
            {
                "name": "all",
                "percent": 100,
                "health_gate": {"min_success_rate": 1, "max_failures": 0},
            }
        ],
    )
    denied = runner.invoke(app, ["policy", "eval", "--plan", str(big), "--scenario", scenario])
    assert denied.exit_code == 1
    assert "denied" in denied.output and "canary" in denied.output


def test_policy_eval_with_fleet_and_catalog_files(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIOS / "canary-fails-rollback.yaml")
    factory = SigningKey.from_seed("factory", b"cli-test")
    manifests = [e.to_manifest(factory)[0].model_dump(mode="json") for e in scenario.catalog]
    (tmp_path / "catalog.yaml").write_text(
        yaml.safe_dump(
            {
                "kind": "Catalog",
                "signers": {factory.key_id: factory.public_b64},
                "modules": manifests,
            }
        )
    )
    (tmp_path / "fleet.yaml").write_text(
        yaml.safe_dump(scenario.fleet.model_dump(mode="json", by_alias=True))
    )
    args = [
        "policy",
        "eval",
        "--plan",
        str(write_plan(tmp_path)),
        "--fleet",
        str(tmp_path / "fleet.yaml"),
        "--catalog",
        str(tmp_path / "catalog.yaml"),
    ]
    result = runner.invoke(app, [*args, "--now", "2026-11-21T10:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "allowed" in result.output and "60 targets" in result.output
    # a catalog whose signer is not the one that signed: D1 denies
    other = SigningKey.from_seed("factory", b"someone else")
    (tmp_path / "catalog.yaml").write_text(
        yaml.safe_dump(
            {"kind": "Catalog", "signers": {other.key_id: other.public_b64}, "modules": manifests}
        )
    )
    unsigned = runner.invoke(app, [*args, "--json"])
    assert unsigned.exit_code == 1
    assert any("signed" in m for m in json.loads(unsigned.output)["deny"])


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"version": 1.9}, "version: version must be a string"),
        ({"waves": []}, "waves: List should have at least 1 item"),
        (
            {"version": "7.7.7"},
            "version: pump-logic@7.7.7 is not in the catalog (known: 1.8.0, 1.9.0)",
        ),
    ],
)
def test_policy_eval_bad_plan_exits_2_naming_file_field_rule(
    tmp_path: Path, changes: dict[str, object], where: str
) -> None:
    plan = write_plan(tmp_path, **changes)
    result = runner.invoke(
        app,
        [
            "policy",
            "eval",
            "--plan",
            str(plan),
            "--scenario",
            str(SCENARIOS / "canary-fails-rollback.yaml"),
        ],
    )
    assert result.exit_code == 2
    assert f"{plan}: {where}" in result.output.replace("\n", " ")


def test_policy_eval_with_the_store_logs_the_decision(tmp_path: Path, sqlite_url: str) -> None:
    from fieldgate.store import Store

    scenario = load_scenario(SCENARIOS / "canary-fails-rollback.yaml")
    factory = SigningKey.from_seed("factory", b"cli-store-test")
    # the factory key counts once a root holder enrolled it; the decision judges it afresh
    assert runner.invoke(app, ["init", "--empty", "--db", sqlite_url]).exit_code == 0
    enroll = ["keys", "enroll", "factory", "--purpose", "factory", "--public-key"]
    result = runner.invoke(app, [*enroll, factory.public_b64, "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    with Store.open(sqlite_url) as store:
        store.catalog.import_manifests(
            [(e.to_manifest(factory)[0], None) for e in scenario.catalog], source="t", actor="t"
        )
        store.fleet.import_inventory(scenario.fleet, source="t", actor="t")
    result = runner.invoke(
        app, ["policy", "eval", "--plan", str(write_plan(tmp_path)), "--db", sqlite_url]
    )
    assert result.exit_code == 0, result.output
    with Store.open(sqlite_url) as store:
        events = store.audit.events(plan_id="p-pump")
        assert store.audit.verify().ok
    assert [e.kind.value for e in events] == ["policy_decision"]
    assert events[0].payload["result"]["allow"] is True
