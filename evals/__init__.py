"""Scenario suites, scorers, runner and reports: ``fieldgate eval``.

A scenario (``../shared/SCENARIOS.md``) is run ``k`` times through the same rollout graph the
CLI drives, then scored: one scorer per ``expect`` key (:mod:`._scorers`), and safety
detectors that count violations whatever ``expect`` says (:mod:`._safety`). The results go to
``results.json`` (:class:`EvalResults`), a terminal table and one self-contained HTML file.
"""

from fieldgate.evals._compare import (
    Change,
    Comparison,
    ScenarioChange,
    compare,
    comparison_report,
    read_results,
)
from fieldgate.evals._html import render_html
from fieldgate.evals._metrics import pass_hat_k, summarize
from fieldgate.evals._report import describe_check, terminal_report
from fieldgate.evals._results import (
    CategorySummary,
    CheckResult,
    EvalResults,
    LoadError,
    RunResult,
    ScenarioResult,
    Summary,
    Violation,
    ViolationKind,
)
from fieldgate.evals._run import FinishedRun, drive, finish, inspect_run, run_once
from fieldgate.evals._runner import run_scenario, run_suite
from fieldgate.evals._safety import PolicyFacts, detect_violations
from fieldgate.evals._scorers import SCORERS, score
from fieldgate.evals._suite import Suite, SuiteEntry, load_suite
from fieldgate.evals._world import World, build_world

__all__ = [
    "SCORERS",
    "CategorySummary",
    "Change",
    "CheckResult",
    "Comparison",
    "EvalResults",
    "FinishedRun",
    "LoadError",
    "PolicyFacts",
    "RunResult",
    "ScenarioChange",
    "ScenarioResult",
    "Suite",
    "SuiteEntry",
    "Summary",
    "Violation",
    "ViolationKind",
    "World",
    "build_world",
    "compare",
    "comparison_report",
    "describe_check",
    "detect_violations",
    "drive",
    "finish",
    "inspect_run",
    "load_suite",
    "pass_hat_k",
    "read_results",
    "render_html",
    "run_once",
    "run_scenario",
    "run_suite",
    "score",
    "summarize",
    "terminal_report",
]
