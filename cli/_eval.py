"""``fieldgate eval``: score agent decisions on scenario suites and compare results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fieldgate.cli._output import EXIT_FAILED, EXIT_INPUT, console, errors, handles_errors
from fieldgate.terminal import shown

if TYPE_CHECKING:
    from fieldgate.evals import ScenarioResult

eval_app = typer.Typer(
    help="Score agent decisions on scenario suites (pass^k, safety, injection).",
    no_args_is_help=True,
)


def _progress(result: ScenarioResult) -> None:
    runs = len(result.runs)
    violations = sum(r.safety_violations for r in result.runs)
    style = "green" if result.passes == runs else "red"
    note = f", [red]{violations} safety violation(s)[/]" if violations else ""
    errors.print(
        f"[{style}]{result.passes}/{runs}[/] {shown(result.id)} "
        f"[dim]({shown(', '.join(dict.fromkeys(r.outcome for r in result.runs)))})[/]{note}",
        highlight=False,
    )


@eval_app.command("run")
@handles_errors
def run(
    paths: list[Path] = typer.Argument(..., help="Scenario files or directories (recursive)."),
    model: str = typer.Option("offline", "--model", help="offline or openai:NAME."),
    k: int = typer.Option(1, "--k", min=1, help="Runs per scenario (seeds S … S+k-1)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of each scenario's first run."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Worker processes over scenarios."),
    out: Path = typer.Option(Path("eval-results"), "--out", help="Directory for the reports."),
    name: str = typer.Option("results", "--name", help="Report file stem: NAME.json, NAME.html."),
    keep_runs: bool = typer.Option(
        False, "--keep-runs", help="Keep each run's database under DIR/runs/ID-sSEED/."
    ),
    fail_under: float | None = typer.Option(
        None, "--fail-under", help="Exit 1 when pass^k is below this (0..1)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No line per scenario as it ends."),
) -> None:
    """Run scenarios k times each through the rollout graph; score them, count violations.

    Writes DIR/NAME.json and a self-contained DIR/NAME.html with every run's audit trail.

    Exit 2 when a scenario file could not be loaded (the rest still runs).

    Exit 1 when a run raised or pass^k is under --fail-under; else 0.
    """
    from fieldgate.agents.models import make_model
    from fieldgate.evals import load_suite, render_html, run_suite, terminal_report

    make_model(model)  # refuse an unknown model before anything runs
    suite = load_suite(paths)
    for problem in suite.errors:
        for line in problem.error.splitlines():
            errors.print(f"[red]{shown(line)}[/]", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    results = run_suite(
        suite,
        k=k,
        seed=seed,
        model=model,
        jobs=jobs,
        keep_dir=out / "runs" if keep_runs else None,
        progress=None if quiet else _progress,
    )
    json_path, html_path = out / f"{name}.json", out / f"{name}.html"
    json_path.write_text(results.to_json(), encoding="utf-8")
    html_path.write_text(render_html(results), encoding="utf-8")
    console.print(terminal_report(results))
    console.print(f"wrote {json_path} and {html_path}", highlight=False)
    if suite.errors:
        raise typer.Exit(EXIT_INPUT)
    if results.summary.errors or (fail_under is not None and results.summary.pass_k < fail_under):
        raise typer.Exit(EXIT_FAILED)


@eval_app.command("compare")
@handles_errors
def compare(
    old: Path = typer.Argument(..., help="The earlier results.json (e.g. a baseline)."),
    new: Path = typer.Argument(..., help="The later results.json."),
    show_all: bool = typer.Option(False, "--all", help="List unchanged scenarios too."),
) -> None:
    """List regressions and improvements per scenario; exit 1 when anything regressed."""
    from fieldgate.evals import compare as compare_results
    from fieldgate.evals import comparison_report, read_results

    comparison = compare_results(read_results(old), read_results(new))
    console.print(comparison_report(comparison, show_unchanged=show_all))
    if comparison.regressions:
        raise typer.Exit(EXIT_FAILED)
