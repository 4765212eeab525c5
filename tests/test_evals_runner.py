"""The eval runner: loading suites, scoring, pass^k, determinism, parallel runs, self-tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fieldgate.agents.offline import OfflineChatModel
from fieldgate.evals import (
    SCORERS,
    EvalResults,
    build_world,
    drive,
    finish,
    load_suite,
    pass_hat_k,
    run_suite,
)
from fieldgate.graphs.checkpoint import open_checkpointer
from fieldgate.graphs.runner import Orchestrator
from fieldgate.policy import RegoEngine
from fieldgate.scenario import Expect, load_scenario

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "scenarios"
SELFTEST = ROOT / "evals" / "selftest"
SUITES = ROOT / "evals" / "suites"


@pytest.fixture(scope="module")
def engine() -> RegoEngine:
    return RegoEngine()


def without_wall_times(results: EvalResults) -> dict[str, Any]:
    document = json.loads(results.to_json())
    document["summary"].pop("wall_time_s")
    for scenario in document["scenarios"]:
        for run in scenario["runs"]:
            run.pop("wall_time_s")
    return document


def test_pass_hat_k() -> None:
    assert pass_hat_k(3, 3, 3) == 1.0
    assert pass_hat_k(2, 3, 3) == 0.0
    assert pass_hat_k(2, 3, 1) == pytest.approx(2 / 3)
    assert pass_hat_k(2, 4, 2) == pytest.approx(1 / 6)
    assert pass_hat_k(0, 0, 1) == 0.0


def test_every_expect_key_has_a_scorer() -> None:
    assert set(SCORERS) == set(Expect.model_fields)


def test_shared_scenarios_pass_every_run(engine: RegoEngine) -> None:
    results = run_suite(load_suite([SHARED]), k=2, seed=0, engine=engine)
    document = json.loads(results.to_json())
    summary = document["summary"]
    assert (summary["k"], summary["pass^1"], summary["pass^k"]) == (2, 1.0, 1.0)
    assert (summary["safety_violations"], summary["errors"]) == (0, 0)
    assert summary["by_category"]["faults"] == {
        "scenarios": 1,
        "pass^1": 1.0,
        "pass^k": 1.0,
        "safety_violations": 0,
    }
    assert summary["blast_radius_mean"] == 3.0
    assert summary["time_to_halt_minutes_mean"] > 0
    assert summary["tokens_in"] > 0 and summary["tokens_out"] > 0
    ids = [s["id"] for s in document["scenarios"]]
    assert ids == sorted(p.stem for p in SHARED.glob("*.yaml"))
    run = document["scenarios"][0]["runs"][1]
    assert {"seed", "passed", "outcome", "failed_checks", "safety_violations"} <= set(run)
    assert run["seed"] == 1
    assert "trail" not in run  # audit trails go to the HTML report only


def test_same_seed_same_results(engine: RegoEngine) -> None:
    suite = load_suite(
        [SHARED / "canary-fails-rollback.yaml", SUITES / "faults" / "late-wave-degradation.yaml"]
    )
    first = run_suite(suite, k=2, seed=7, engine=engine)
    second = run_suite(suite, k=2, seed=7, engine=engine)
    assert without_wall_times(first) == without_wall_times(second)
    assert [r.seed for r in first.scenarios[0].runs] == [7, 8]


def test_parallel_runs_match_serial_runs(engine: RegoEngine) -> None:
    suite = load_suite([SHARED / "small-auto-allow.yaml", SHARED / "unsigned-denied.yaml", SHARED])
    assert len(suite.entries) == 6  # a file named twice runs once
    serial = run_suite(suite, k=1, seed=3, engine=engine)
    parallel = run_suite(suite, k=1, seed=3, jobs=2)
    assert without_wall_times(serial) == without_wall_times(parallel)


def test_waiting_run_does_not_run_the_clock(tmp_path: Path, engine: RegoEngine) -> None:
    scenario = load_scenario(SHARED / "telemetry-injection.yaml")
    url = f"sqlite:///{tmp_path}/run.db"
    world = build_world(scenario, url, 0, OfflineChatModel(), engine)
    with open_checkpointer(url) as checkpointer:
        view, outcome = drive(Orchestrator(world.ctx, checkpointer), world)
    finished = finish(world, view, outcome)
    assert outcome == "awaiting_approval"
    assert world.twin.now == scenario.context.now
    assert finished.effects == []


def test_scripted_approvals_run_out(tmp_path: Path, engine: RegoEngine) -> None:
    # safety-approval without its real approver: the requester's own approval is used up
    scenario = load_scenario(SHARED / "safety-approval.yaml")
    scenario = scenario.model_copy(update={"approvals": scenario.approvals[:1]})
    url = f"sqlite:///{tmp_path}/run.db"
    world = build_world(scenario, url, 0, OfflineChatModel(), engine)
    with open_checkpointer(url) as checkpointer:
        _, outcome = drive(Orchestrator(world.ctx, checkpointer), world)
    assert outcome == "awaiting_approval"
    assert [a.approver for a in world.store.approvals.for_plan(world.plan_id)] == ["eng-ana"]


def test_selftest_scenarios_fail_with_the_right_checks(engine: RegoEngine) -> None:
    results = run_suite(load_suite([SELFTEST]), k=1, engine=engine)
    by_id = {s.id: s.runs[0] for s in results.scenarios}
    assert set(by_id) == {"unmet-every-key", "unmet-no-plan", "unmet-met"}

    every = by_id["unmet-every-key"]
    assert every.outcome == "completed" and not every.passed
    assert every.checks == 13
    assert [c.check for c in every.failed_checks] == [
        "outcome",
        "deny_includes",
        "approvals_required",
        "plan.version",
        "plan.targets",
        "plan.first_wave_max",
        "plan.waves_min",
        "plan.schedule",
        "devices.versions.air-quality-model",
        "devices.touched_max",
        "audit.verify",
        "audit.kinds",
    ]
    failed = {c.check: c for c in every.failed_checks}
    assert (failed["outcome"].expected, failed["outcome"].actual) == ("denied", "completed")
    assert (failed["plan.targets"].expected, failed["plan.targets"].actual) == (7, 6)
    assert failed["devices.versions.air-quality-model"].actual == {"1.2.0": 6}
    assert failed["audit.kinds"].detail == "no approval, rollback event in the audit log"

    no_plan = by_id["unmet-no-plan"]
    assert no_plan.outcome == "needs_clarification"
    assert [c.check for c in no_plan.failed_checks] == [
        "outcome",
        "deny_includes",
        "approvals_required",
        "plan.targets",
    ]
    assert "no plan was proposed" in no_plan.failed_checks[-1].detail
    assert by_id["unmet-met"].passed and by_id["unmet-met"].checks == 12  # deny_includes: []

    errors = {Path(e.file).name: e.error for e in results.errors}
    assert results.summary.errors == 5
    assert "expect.outcom: unknown key" in errors["unknown-key.yaml"]
    assert (
        "expect.devices.touched_max: Input should be a valid integer" in errors["wrong-type.yaml"]
    )
    assert (
        "faults[0].devices: unknown device 'lyon-02-env-sensor-99'"
        in (errors["unknown-device.yaml"])
    )
    assert (
        "expect.devices.versions.air-quality-modle: unknown module"
        in (errors["unknown-module.yaml"])
    )
    assert "line 4, column 11: invalid YAML" in errors["broken-yaml.yaml"]
    for name, error in errors.items():
        assert error.startswith(str(SELFTEST / "bad" / name)), error


def test_duplicate_ids_and_missing_paths_are_errors(tmp_path: Path) -> None:
    copy = tmp_path / "again.yaml"
    copy.write_text((SHARED / "small-auto-allow.yaml").read_text())
    suite = load_suite([SHARED, copy, tmp_path / "nowhere"])
    assert len(suite.entries) == 6
    messages = [e.error for e in suite.errors]
    assert any("id: 'small-auto-allow' is already the id of" in m for m in messages)
    assert any("nowhere: no such file or directory" in m for m in messages)


def test_project_suite_loads_cleanly() -> None:
    suite = load_suite([SUITES])
    assert suite.errors == []
    assert len(suite.entries) >= 60
    categories = {e.scenario.category.value for e in suite.entries}
    assert categories == {
        "planning",
        "policy",
        "approval",
        "execution",
        "faults",
        "injection",
        "clarification",
    }
