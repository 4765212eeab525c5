"""Compare two ``results.json`` documents: regressions and improvements per scenario."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from fieldgate.contract import read_text
from fieldgate.errors import InputInvalid
from fieldgate.evals._results import EvalResults, ScenarioResult, figure
from fieldgate.terminal import shown


class Change(StrEnum):
    """How a scenario moved between two results."""

    regression = "regression"
    improvement = "improvement"
    unchanged = "unchanged"
    added = "added"
    removed = "removed"


@dataclass
class ScenarioChange:
    """One scenario in both results (or in one of them)."""

    id: str
    change: Change
    old_pass_1: float | None = None
    new_pass_1: float | None = None
    old_pass_k: float | None = None
    new_pass_k: float | None = None
    old_violations: int = 0
    new_violations: int = 0
    newly_failing: list[str] = field(default_factory=list)
    """Checks that fail in some new run but in no old run."""
    fixed: list[str] = field(default_factory=list)
    """Checks that failed in some old run and in no new run."""


@dataclass
class Comparison:
    """Every scenario's change, and the summaries side by side."""

    old: EvalResults
    new: EvalResults
    changes: list[ScenarioChange]

    def of(self, change: Change) -> list[ScenarioChange]:
        """The scenarios with this kind of change."""
        return [c for c in self.changes if c.change is change]

    @property
    def regressions(self) -> list[ScenarioChange]:
        """Scenarios that got worse."""
        return self.of(Change.regression)


def read_results(path: str | Path) -> EvalResults:
    """Read a ``results.json`` file, naming the file on any problem."""
    source = str(path)
    text = read_text(path)
    try:
        return EvalResults.from_json(text)
    except RecursionError:
        raise InputInvalid(source, [("", "nested too deeply to read")]) from None
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise InputInvalid(source, [("", f"not a fieldgate eval results.json ({first})")]) from None


def _failing(result: ScenarioResult) -> set[str]:
    checks = {c.check for run in result.runs for c in run.failed_checks}
    if any(run.error for run in result.runs):
        checks.add("error")
    return checks


def _violations(result: ScenarioResult) -> int:
    return sum(run.safety_violations for run in result.runs)


def compare(old: EvalResults, new: EvalResults) -> Comparison:
    """Line up the scenarios of ``old`` and ``new`` by id and say how each moved."""
    before = {s.id: s for s in old.scenarios}
    after = {s.id: s for s in new.scenarios}
    changes = []
    for scenario_id in [*before, *(i for i in after if i not in before)]:
        a, b = before.get(scenario_id), after.get(scenario_id)
        if a is None and b is not None:
            changes.append(
                ScenarioChange(
                    scenario_id,
                    Change.added,
                    new_pass_1=b.pass_1,
                    new_pass_k=b.pass_k,
                    new_violations=_violations(b),
                )
            )
            continue
        if b is None and a is not None:
            changes.append(
                ScenarioChange(
                    scenario_id,
                    Change.removed,
                    old_pass_1=a.pass_1,
                    old_pass_k=a.pass_k,
                    old_violations=_violations(a),
                )
            )
            continue
        assert a is not None and b is not None
        newly = sorted(_failing(b) - _failing(a))
        fixed = sorted(_failing(a) - _failing(b))
        worse = (
            b.pass_1 < a.pass_1
            or b.pass_k < a.pass_k
            or _violations(b) > _violations(a)
            or bool(newly)
        )
        better = b.pass_1 > a.pass_1 or b.pass_k > a.pass_k or _violations(b) < _violations(a)
        change = Change.regression if worse else Change.improvement if better else Change.unchanged
        changes.append(
            ScenarioChange(
                scenario_id,
                change,
                a.pass_1,
                b.pass_1,
                a.pass_k,
                b.pass_k,
                _violations(a),
                _violations(b),
                newly,
                fixed,
            )
        )
    return Comparison(old, new, changes)


_STYLE = {
    Change.regression: "red bold",
    Change.improvement: "green",
    Change.added: "cyan",
    Change.removed: "yellow",
    Change.unchanged: "dim",
}


def change_lines(comparison: Comparison) -> list[str]:
    """One line per regressed or improved scenario: what moved."""
    lines = []
    for c in comparison.changes:
        if c.change not in (Change.regression, Change.improvement):
            continue
        notes = [
            f"pass^1 {figure(c.old_pass_1)} → {figure(c.new_pass_1)}",
            f"pass^k {figure(c.old_pass_k)} → {figure(c.new_pass_k)}",
        ]
        if c.old_violations != c.new_violations:
            notes.append(f"safety violations {c.old_violations} → {c.new_violations}")
        if c.newly_failing:
            notes.append("now failing: " + ", ".join(c.newly_failing))
        if c.fixed:
            notes.append("fixed: " + ", ".join(c.fixed))
        lines.append(f"{c.id}: {c.change.value}: " + "; ".join(notes))
    return lines


def comparison_report(comparison: Comparison, show_unchanged: bool = False) -> Group:
    """The changed scenarios in a table, what moved in each, and the two summaries."""
    old, new = comparison.old.summary, comparison.new.summary
    table = Table(title="per scenario", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("scenario", overflow="fold", max_width=40)
    for column in ("change", "pass^1", "pass^k", "safety"):
        table.add_column(column, no_wrap=True)
    for c in comparison.changes:
        if c.change is Change.unchanged and not show_unchanged:
            continue
        table.add_row(
            shown(c.id),
            Text(c.change.value, style=_STYLE[c.change]),
            f"{figure(c.old_pass_1)} → {figure(c.new_pass_1)}",
            f"{figure(c.old_pass_k)} → {figure(c.new_pass_k)}",
            f"{c.old_violations} → {c.new_violations}",
        )
    totals = Table(title="summary", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("", "old", "new"):
        totals.add_column(column)
    totals.add_row("model", shown(old.model), shown(new.model))
    totals.add_row("k", str(old.k), str(new.k))
    totals.add_row("scenarios", str(old.scenarios), str(new.scenarios))
    totals.add_row("pass^1", figure(old.pass_1), figure(new.pass_1))
    totals.add_row("pass^k", figure(old.pass_k), figure(new.pass_k))
    totals.add_row("safety violations", str(old.safety_violations), str(new.safety_violations))
    totals.add_row("errors", str(old.errors), str(new.errors))
    plural = {Change.regression: "regressions", Change.improvement: "improvements"}
    counts = ", ".join(
        f"{n} {plural.get(change, change.value) if n != 1 else change.value}"
        for change in Change
        if (n := len(comparison.of(change))) or change is Change.regression
    )
    parts: list[Table | Text] = [table]
    parts.extend(
        Text(shown(line, markup=False), style="red" if ": regression:" in line else "green")
        for line in change_lines(comparison)
    )
    parts += [totals, Text(counts, style="red" if comparison.regressions else "green")]
    return Group(*parts)
