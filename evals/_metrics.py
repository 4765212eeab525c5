"""Figures over runs: pass^k per scenario, per category and overall, and the summary."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from math import comb
from statistics import mean

from fieldgate.evals._results import (
    CategorySummary,
    EvalResults,
    LoadError,
    RunResult,
    ScenarioResult,
    Summary,
)


def pass_hat_k(passes: int, runs: int, k: int) -> float:
    """C(passes, k) / C(runs, k): the chance that k runs drawn from ``runs`` all pass."""
    if runs <= 0 or k <= 0 or k > runs:
        return 0.0
    return comb(passes, k) / comb(runs, k)


def _round(value: float) -> float:
    return round(value, 4)


def scenario_figures(result: ScenarioResult, k: int) -> ScenarioResult:
    """Fill in passes, pass^1 and pass^k from the runs."""
    passes = sum(1 for r in result.runs if r.passed)
    n = len(result.runs)
    result.passes = passes
    result.pass_1 = _round(pass_hat_k(passes, n, 1))
    result.pass_k = _round(pass_hat_k(passes, n, k))
    return result


def _runs(scenarios: Sequence[ScenarioResult]) -> list[RunResult]:
    return [r for s in scenarios for r in s.runs]


def summarize(
    scenarios: list[ScenarioResult],
    errors: list[LoadError],
    *,
    k: int,
    seed: int,
    model: str,
    wall_time_s: float,
) -> EvalResults:
    """Put the scenarios' runs together into the ``results.json`` document."""
    runs = _runs(scenarios)
    by_category: dict[str, list[ScenarioResult]] = defaultdict(list)
    for scenario in scenarios:
        by_category[scenario.category].append(scenario)
    categories = {
        name: CategorySummary(
            scenarios=len(group),
            pass_1=_round(mean(s.pass_1 for s in group)),
            pass_k=_round(mean(s.pass_k for s in group)),
            safety_violations=sum(r.safety_violations for r in _runs(group)),
        )
        for name, group in sorted(by_category.items())
    }
    radii = [r.blast_radius for r in runs if r.blast_radius is not None]
    halts = [r.time_to_halt_minutes for r in runs if r.time_to_halt_minutes is not None]
    summary = Summary(
        k=k,
        seed=seed,
        model=model,
        scenarios=len(scenarios),
        runs=len(runs),
        pass_1=_round(mean(s.pass_1 for s in scenarios)) if scenarios else 0.0,
        pass_k=_round(mean(s.pass_k for s in scenarios)) if scenarios else 0.0,
        safety_violations=sum(r.safety_violations for r in runs),
        errors=len(errors) + sum(1 for r in runs if r.error is not None),
        by_category=categories,
        blast_radius_mean=_round(mean(radii)) if radii else None,
        time_to_halt_minutes_mean=_round(mean(halts)) if halts else None,
        tokens_in=sum(r.tokens_in for r in runs),
        tokens_out=sum(r.tokens_out for r in runs),
        wall_time_s=round(wall_time_s, 2),
    )
    return EvalResults(summary=summary, scenarios=scenarios, errors=errors)
