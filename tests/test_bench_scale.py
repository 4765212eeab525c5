"""bench/scale.py on small fleets: the rollout completes, and policy input stays flat.

Not a timed test: the figures are bench/scale.py's to print. What is checked is that a
whole rollout, request to execution, runs on every device, and that what the policy
engine is fed is summaries, not device lists (its size does not grow with the fleet).
The 10k-device variant is marked slow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "scale.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def largest_inputs(run: dict[str, Any]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for path, chars in run["policy_input_chars"]:
        sizes[path] = max(sizes.get(path, 0), chars)
    return sizes


def check(small: int, large: int) -> None:
    scale = bench()
    runs = []
    for n in (small, large):
        with scale.database("sqlite") as url:
            scale.build(n, url)
            runs.append(scale.one_run(n, url))
    for run in runs:
        assert run["outcome"] == "completed", run
        assert run["installed"] == {"2.4.1": run["devices"]}
    a, b = (largest_inputs(r) for r in runs)
    assert a.keys() == b.keys() and "fieldgate.rollout.decision" in a
    for path in a:
        # Only counts change (a digit or two), never a list of devices.
        assert b[path] <= a[path] * 1.02 + 8, (path, a[path], b[path])


def test_a_rollout_runs_on_every_device_and_policy_input_does_not_grow() -> None:
    check(200, 1000)


@pytest.mark.slow
def test_the_same_at_ten_thousand_devices() -> None:
    check(1000, 10_000)
