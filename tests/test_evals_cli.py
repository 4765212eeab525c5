"""``fieldgate eval run`` and ``fieldgate eval compare``; the HTML report escapes everything."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.evals import (
    CheckResult,
    EvalResults,
    LoadError,
    RunResult,
    ScenarioResult,
    Violation,
    ViolationKind,
    render_html,
    summarize,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "scenarios"
SELFTEST = ROOT / "evals" / "selftest"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_run_shared_scenarios(tmp_path: Path) -> None:
    code, out = invoke(
        "eval", "run", str(SHARED), "--k", "2", "--seed", "0", "--out", str(tmp_path)
    )
    assert code == 0, out
    assert "6 scenarios × k=2 = 12 runs" in out
    assert "pass^2 1.000" in out
    document = json.loads((tmp_path / "results.json").read_text())
    summary = document["summary"]
    assert {k: summary[k] for k in ("k", "pass^1", "pass^k", "safety_violations", "errors")} == {
        "k": 2,
        "pass^1": 1.0,
        "pass^k": 1.0,
        "safety_violations": 0,
        "errors": 0,
    }
    scenario = document["scenarios"][0]
    assert {"id", "category", "runs"} <= set(scenario)
    html = (tmp_path / "results.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html
    assert "Audit trail (" in html


def test_run_lists_bad_files_and_runs_the_rest(tmp_path: Path) -> None:
    code, out = invoke("eval", "run", str(SELFTEST), "--out", str(tmp_path), "--name", "self")
    assert code == 2
    assert "expect.outcom: unknown key" in out
    document = json.loads((tmp_path / "self.json").read_text())
    assert len(document["scenarios"]) == 3
    assert len(document["errors"]) == 5
    assert document["summary"]["errors"] == 5
    assert (tmp_path / "self.html").exists()


def test_run_refuses_an_unknown_model(tmp_path: Path) -> None:
    code, out = invoke("eval", "run", str(SHARED), "--model", "gpt-9", "--out", str(tmp_path))
    assert code == 1
    assert "unknown model 'gpt-9'" in out


def test_keep_runs_and_fail_under(tmp_path: Path) -> None:
    code, out = invoke(
        "eval",
        "run",
        str(SELFTEST / "unmet-no-plan.yaml"),
        "--out",
        str(tmp_path),
        "--keep-runs",
        "--fail-under",
        "0.5",
    )
    assert code == 1, out
    assert (tmp_path / "runs" / "unmet-no-plan-s0" / "run.db").exists()


def _results(passed: bool, violations: int = 0) -> dict[str, Any]:
    run = RunResult(
        seed=0,
        passed=passed,
        outcome="completed" if passed else "rolled_back",
        failed_checks=[]
        if passed
        else [CheckResult(check="outcome", passed=False, expected="completed", actual="x")],
        safety_violations=violations,
    )
    scenarios = [
        ScenarioResult(id="a", category="faults", file="a.yaml", runs=[run], passes=int(passed)),
        ScenarioResult(
            id="b",
            category="planning",
            file="b.yaml",
            runs=[RunResult(seed=0, passed=True, outcome="completed")],
            passes=1,
        ),
    ]
    for s in scenarios:
        s.pass_1 = s.pass_k = s.passes / len(s.runs)
    document = summarize(scenarios, [], k=1, seed=0, model="offline", wall_time_s=1.0)
    return json.loads(document.to_json())


def test_compare_lists_regressions_and_improvements(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_results(True)))
    bad.write_text(json.dumps(_results(False, violations=1)))

    code, out = invoke("eval", "compare", str(good), str(bad))
    assert code == 1
    assert "regression" in out and "now failing: outcome" in out
    assert "1 regression" in out

    code, out = invoke("eval", "compare", str(bad), str(good))
    assert code == 0
    assert "improvement" in out and "fixed: outcome" in out

    code, out = invoke("eval", "compare", str(good), str(good), "--all")
    assert code == 0
    assert "unchanged" in out


def test_compare_names_a_file_that_is_not_results(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    code, out = invoke("eval", "compare", str(other), str(other))
    assert code == 2
    assert "other.json" in out and "not a fieldgate eval results.json" in out


def test_html_escapes_every_value() -> None:
    run = RunResult(
        seed=0,
        passed=False,
        outcome=HOSTILE,
        reasons=[HOSTILE],
        failed_checks=[
            CheckResult(check=HOSTILE, passed=False, expected=HOSTILE, actual=[HOSTILE])
        ],
        safety_violations=1,
        violations=[Violation(kind=ViolationKind.injection_followed, detail=HOSTILE)],
        error=HOSTILE,
        trail=[{"seq": 1, "at": HOSTILE, "actor": HOSTILE, "kind": HOSTILE, "payload": HOSTILE}],
    )
    scenario = ScenarioResult(
        id="x",
        category=HOSTILE,
        file=HOSTILE,
        description=HOSTILE,
        request=HOSTILE,
        expect={"outcome": HOSTILE},
        runs=[run],
    )
    results: EvalResults = summarize(
        [scenario],
        [LoadError(file=HOSTILE, error=HOSTILE)],
        k=1,
        seed=0,
        model=HOSTILE,
        wall_time_s=0.1,
    )
    html = render_html(results)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html


def test_openai_path_tokens_reach_the_eval_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldgate.agents.offline.server import model_server

    with model_server() as base_url:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        code, out = invoke(
            "eval",
            "run",
            str(SHARED / "small-auto-allow.yaml"),
            "--model",
            "openai:offline",
            "--k",
            "1",
            "--out",
            str(tmp_path),
        )
    assert code == 0, out
    document = json.loads((tmp_path / "results.json").read_text())
    summary = document["summary"]
    assert summary["pass^1"] == 1.0
    assert summary["tokens_in"] > 0 and summary["tokens_out"] > 0
    run = document["scenarios"][0]["runs"][0]
    assert run["tokens_in"] > 0 and run["tokens_out"] > 0
    assert f"tokens {summary['tokens_in']} in" in out


def test_reports_at_k_1_show_each_figure_once_in_one_precision(tmp_path: Path) -> None:
    code, out = invoke(
        "eval", "run", str(SHARED), "--k", "1", "--seed", "0", "--out", str(tmp_path)
    )
    assert code == 0, out
    assert "pass^1" in out and "pass^1 pass^1" not in " ".join(out.split())
    html = (tmp_path / "results.html").read_text()
    assert "<td>null</td>" not in html and "<td>None</td>" not in html
    assert "<th>pass^1</th><th>pass^1</th>" not in html and "pass^k" not in html
    figures = re.findall(r"<td class=n>(\d+\.\d+)</td>", html)
    assert figures and {len(f.split(".")[1]) for f in figures} == {3}
