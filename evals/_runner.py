"""Run a suite: every scenario k times with seeds S..S+k-1, in parallel over scenarios.

Parallelism is by process (``--jobs``): each worker process compiles one policy engine and
shares it across its runs (the roster travels in each policy input). Each run gets its own
SQLite database and checkpoint file in a temporary directory, or under ``keep_dir`` when the
databases are to be kept for ``fieldgate audit`` and friends.
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path

from fieldgate.config import Config
from fieldgate.evals._metrics import scenario_figures, summarize
from fieldgate.evals._results import EvalResults, LoadError, RunResult, ScenarioResult
from fieldgate.evals._run import run_once
from fieldgate.evals._safety import PolicyFacts
from fieldgate.evals._suite import Suite, SuiteEntry
from fieldgate.policy import PolicyEngine, configured_engine
from fieldgate.scenario import Scenario

Progress = Callable[[ScenarioResult], None]
"""Called with each scenario's result as it completes."""

_engine: PolicyEngine | None = None
_facts: PolicyFacts | None = None


def _process_engine() -> tuple[PolicyEngine, PolicyFacts]:
    """The policy engine of this process, compiled on first use."""
    global _engine, _facts
    if _engine is None or _facts is None:
        _engine = configured_engine(Config.from_env())
        _facts = PolicyFacts.of(_engine)
    return _engine, _facts


def run_scenario(
    entry: SuiteEntry,
    seeds: Sequence[int],
    model: str,
    keep_dir: Path | None = None,
    engine: PolicyEngine | None = None,
) -> ScenarioResult:
    """Run one scenario once per seed (in order) and return its runs with pass^k unset."""
    if engine is None:
        engine, facts = _process_engine()
    else:
        facts = PolicyFacts.of(engine)
    scenario: Scenario = entry.scenario
    runs: list[RunResult] = []
    for seed in seeds:
        if keep_dir is not None:
            workdir = keep_dir / f"{scenario.id}-s{seed}"
            shutil.rmtree(workdir, ignore_errors=True)  # a kept run of an earlier eval
            runs.append(run_once(scenario, seed, model, engine, workdir, facts))
            continue
        with tempfile.TemporaryDirectory(prefix=f"fieldgate-eval-{scenario.id}-") as tmp:
            runs.append(run_once(scenario, seed, model, engine, Path(tmp), facts))
    return ScenarioResult(
        id=scenario.id,
        category=scenario.category.value,
        file=entry.file,
        description=scenario.description,
        request=scenario.request,
        expect=scenario.expect.model_dump(mode="json", exclude_unset=True),
        runs=runs,
    )


def run_suite(
    suite: Suite,
    *,
    k: int = 1,
    seed: int = 0,
    model: str = "offline",
    jobs: int = 1,
    keep_dir: Path | None = None,
    progress: Progress | None = None,
    engine: PolicyEngine | None = None,
) -> EvalResults:
    """Run every scenario of ``suite`` k times; return the results in suite order.

    Args:
        suite: the loaded scenarios and the files that failed to load.
        k: runs per scenario, with seeds ``seed`` … ``seed + k - 1``.
        seed: the first seed.
        model: ``offline`` or ``openai:NAME``.
        jobs: worker processes (1 runs in this process).
        keep_dir: keep each run's database under this directory.
        progress: called with each scenario's result as it completes.
        engine: the policy engine for in-process runs (default: one compiled here).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    started = time.perf_counter()
    seeds = list(range(seed, seed + k))
    done: dict[str, ScenarioResult] = {}

    def record(result: ScenarioResult) -> None:
        scenario_figures(result, k)
        done[result.id] = result
        if progress is not None:
            progress(result)

    if jobs <= 1 or len(suite.entries) <= 1:
        for entry in suite.entries:
            record(run_scenario(entry, seeds, model, keep_dir, engine))
    else:
        context = multiprocessing.get_context("spawn")
        workers = min(jobs, len(suite.entries))
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures: dict[Future[ScenarioResult], SuiteEntry] = {
                pool.submit(run_scenario, entry, seeds, model, keep_dir): entry
                for entry in _longest_first(suite.entries)
            }
            for future in as_completed(futures):
                try:
                    record(future.result())
                except Exception as exc:  # a worker that died takes only its scenario down
                    record(_broken(futures[future], seeds, f"{type(exc).__name__}: {exc}"))
    scenarios = [done[e.scenario.id] for e in suite.entries]
    errors: list[LoadError] = list(suite.errors)
    return summarize(
        scenarios,
        errors,
        k=k,
        seed=seed,
        model=model,
        wall_time_s=time.perf_counter() - started,
    )


def _longest_first(entries: Sequence[SuiteEntry]) -> list[SuiteEntry]:
    """Big fleets first, so that no worker is left with the longest run at the end."""
    return sorted(entries, key=lambda e: -len(e.scenario.fleet.all_devices()))


def _broken(entry: SuiteEntry, seeds: Sequence[int], error: str) -> ScenarioResult:
    scenario = entry.scenario
    return ScenarioResult(
        id=scenario.id,
        category=scenario.category.value,
        file=entry.file,
        description=scenario.description,
        request=scenario.request,
        expect=scenario.expect.model_dump(mode="json", exclude_unset=True),
        runs=[RunResult(seed=s, passed=False, outcome="error", error=error) for s in seeds],
    )
