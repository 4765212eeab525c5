"""Reports for people in a terminal: the per-scenario table, the categories and the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from fieldgate.evals._results import (
    CategorySummary,
    CheckResult,
    EvalResults,
    ScenarioResult,
    Summary,
    figure,
)
from fieldgate.terminal import shown


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_check(check: CheckResult) -> str:
    """One line: the check, what was expected, what happened."""
    return f"{check.check}: expected {_short(check.expected)}, got {_short(check.actual)}"


def _outcomes(result: ScenarioResult) -> str:
    seen = list(dict.fromkeys(r.outcome for r in result.runs))
    return ", ".join(seen)


def failure_lines(results: EvalResults, limit: int = 3) -> list[str]:
    """For each scenario that failed a run: per failing run, its first ``limit`` problems."""
    lines = []
    for result in results.scenarios:
        for run in result.runs:
            problems = [f"error: {_short(run.error, 200)}"] if run.error else []
            problems += [describe_check(c) for c in run.failed_checks]
            problems += [f"safety {v.kind.value}: {_short(v.detail, 200)}" for v in run.violations]
            if not problems:
                continue
            more = f" (+{len(problems) - limit} more)" if len(problems) > limit else ""
            lines.append(f"{result.id} s{run.seed}: " + "; ".join(problems[:limit]) + more)
    for error in results.errors:
        lines.extend(error.error.splitlines() or [f"{error.file}: not run"])
    return lines


def scenario_table(results: EvalResults) -> Table:
    """One row per scenario: passes, pass^k, outcomes and safety violations."""
    k = results.summary.k
    table = Table(
        title=f"fieldgate eval · {shown(results.summary.model)} · k={k}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("scenario", overflow="fold", max_width=34)
    table.add_column("category", no_wrap=True)
    table.add_column("passed", justify="right", no_wrap=True)
    table.add_column(f"pass^{k}", justify="right", no_wrap=True)
    table.add_column("outcome", overflow="fold", min_width=10)
    table.add_column("safety", justify="right", no_wrap=True)
    for result in results.scenarios:
        ok = result.passes == len(result.runs)
        violations = sum(r.safety_violations for r in result.runs)
        table.add_row(
            shown(result.id),
            shown(result.category),
            Text(f"{result.passes}/{len(result.runs)}", style="green" if ok else "red"),
            figure(result.pass_k),
            shown(_outcomes(result)),
            Text(str(violations), style="red bold" if violations else "dim"),
        )
    for error in results.errors:
        table.add_row(
            shown(Path(error.file).name), "-", Text("error", style="red bold"), "-", "not run", "-"
        )
    return table


def category_table(results: EvalResults) -> Table:
    """pass^1 and pass^k per category, and overall."""
    summary = results.summary
    table = Table(title="by category", title_justify="left", box=box.SIMPLE_HEAD)
    many = summary.k > 1
    columns = ["category", "scenarios", "pass^1", *([f"pass^{summary.k}"] if many else [])]
    for column in (*columns, "safety violations"):
        table.add_column(column, justify="left" if column == "category" else "right")
    rows: list[tuple[str | Text, CategorySummary | Summary]] = [
        (shown(name), figures) for name, figures in summary.by_category.items()
    ]
    rows.append((Text("all", style="bold"), summary))
    for name, figures in rows:
        rates = [figure(figures.pass_1), *([figure(figures.pass_k)] if many else [])]
        table.add_row(
            name,
            str(figures.scenarios),
            *rates,
            str(figures.safety_violations),
        )
    return table


def summary_text(results: EvalResults) -> Text:
    """The summary in one paragraph."""
    s = results.summary
    parts = [
        f"{s.scenarios} scenarios × k={s.k} = {s.runs} runs",
        f"pass^1 {figure(s.pass_1)}" + (f" · pass^{s.k} {figure(s.pass_k)}" if s.k > 1 else ""),
        f"safety violations {s.safety_violations}",
        f"errors {s.errors}",
        f"tokens {s.tokens_in} in / {s.tokens_out} out",
    ]
    if s.blast_radius_mean is not None:
        parts.append(f"fault blast radius {s.blast_radius_mean:g} devices")
    if s.time_to_halt_minutes_mean is not None:
        parts.append(f"time to halt {s.time_to_halt_minutes_mean:g} min (virtual)")
    parts.append(f"wall time {s.wall_time_s:.1f} s")
    style = "green" if s.pass_k == 1.0 and not s.errors and not s.safety_violations else "yellow"
    return Text(" · ".join(parts), style=style)


def terminal_report(results: EvalResults) -> Group:
    """The tables and the summary, ready for ``console.print``."""
    failures = failure_lines(results)
    parts: list[Table | Text] = [scenario_table(results)]
    if failures:
        parts.append(Text("failures", style="bold"))
        parts.extend(Text(shown(line, markup=False), style="red") for line in failures)
    parts += [category_table(results), summary_text(results)]
    return Group(*parts)
