"""A large wave is written in a few large transactions and cut into a bounded number of batches.

The scale benchmark's rollout (bench/scale.py: a safety-class module to every gateway of
20 sites) on 2,000 devices: every device report must be audited once and every installed
version recorded, in a handful of fleet writes rather than one per batch of five; the
planner must give a wave of thousands of devices a parallelism that finishes it in at
most 50 batches; and a worker that dies mid-wave, with reports taken in but not yet
written, leaves nothing the next worker does not finish exactly once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
from _scenario_driver import open_run
from langgraph.checkpoint.base import BaseCheckpointSaver

from fieldgate.agents.offline.planning import MAX_BATCHES, parallel_for
from fieldgate.audit import EventKind
from fieldgate.commands import Action, DeviceCommand
from fieldgate.evals._world import World
from fieldgate.graphs.runner import Orchestrator, RunView
from fieldgate.scenario import Scenario
from fieldgate.transport import Dispatched, TwinTransport

BENCH = Path(__file__).resolve().parents[1] / "bench" / "scale.py"
DEVICES = 2_000


def scale_scenario(devices: int) -> Scenario:
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scenario: Scenario = module.scenario_of(devices)
    return scenario


@contextmanager
def approved(url: str, devices: int = DEVICES) -> Iterator[tuple[World, Orchestrator, RunView]]:
    """The scale rollout on ``devices`` gateways, planned and approved, not yet executed."""
    scenario = scale_scenario(devices)
    with open_run(scenario, url) as (world, orchestrator):
        view = orchestrator.submit(scenario.request, scenario.actor, plan_id="scale")
        for person in ("saf-lee", "rm-kim", "cmp-ivo"):
            if view.status == "awaiting_approval":
                view = orchestrator.decide(view.thread_id, world.keys[person], "approve", "t")
        assert view.status != "awaiting_approval", view.status
        yield world, orchestrator, view


def reports_by_command(world: World) -> Counter[str]:
    events = world.store.audit.events(plan_id="scale", kinds=[EventKind.device_report])
    return Counter(str(e.payload["command_id"]) for e in events)


def test_a_large_wave_takes_its_reports_in_with_a_few_writes(sqlite_url: str) -> None:
    with approved(sqlite_url) as (world, orchestrator, view):
        before = world.store.fleet.revision()
        view = orchestrator.work(view.thread_id)
        writes = world.store.fleet.revision() - before
        assert view.outcome == "completed"
        devices = world.store.fleet.devices()
        assert Counter(d.installed["hvac-controller"] for d in devices) == {"2.4.1": DEVICES}
        reports = reports_by_command(world)
        assert len(reports) == DEVICES and set(reports.values()) == {1}
        batches = sum(
            math.ceil(size / wave["max_parallel"])
            for size, wave in zip(
                view.values["findings"]["wave_sizes"], view.values["plan"]["waves"], strict=True
            )
        )
        # One fleet write per batch would be `batches` (over 80 here); a wave writes what
        # its batches took in together, at most once a second or every 2,000 reports.
        assert batches > 40 and writes <= 12, (batches, writes)


def test_a_wave_of_thousands_installs_enough_devices_at_once_to_end_in_fifty_batches() -> None:
    assert parallel_for(3, careful=True) == 3
    assert parallel_for(200, careful=True) == 5
    assert parallel_for(200, careful=False) == 10
    assert parallel_for(50_000, careful=True) == 1_000
    for size in (1, 9, 499, 5_000, 47_501, 95_000):
        for careful in (True, False):
            assert math.ceil(size / parallel_for(size, careful)) <= max(MAX_BATCHES, 1)


def test_the_planner_cuts_a_ten_thousand_device_rollout_into_bounded_batches(
    sqlite_url: str,
) -> None:
    with approved(sqlite_url, 10_000) as (_, _, view):
        plan, findings = view.values["plan"], view.values["findings"]
        sizes = findings["wave_sizes"]
        assert sum(sizes) == 10_000
        for size, wave in zip(sizes, plan["waves"], strict=True):
            assert math.ceil(size / wave["max_parallel"]) <= MAX_BATCHES, wave
        # Four waves of at most 50 installs in a row, plus the soaks: within a day, where
        # batches of five predicted weeks.
        assert view.values["dry_run"]["predicted_minutes"] <= 24 * 60, view.values["dry_run"]


class WorkerDied(Exception):
    """Stands for a worker killed at this point (mid-wave, reports not yet written)."""


class _DiesMidWave(TwinTransport):
    """The twin; the worker dies at the ``at``-th dispatch of the second wave."""

    def __init__(self, world: World, at: int) -> None:
        super().__init__(world.twin)
        self.at, self.calls = at, 0

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> Dispatched:
        if wave == 1:
            self.calls += 1
            if self.calls == self.at:
                raise WorkerDied("killed mid-wave")
        return super().dispatch(commands, wave)


@pytest.mark.parametrize("at", [2, 9])
def test_a_worker_dying_mid_wave_leaves_each_device_installed_and_audited_once(
    sqlite_url: str, at: int
) -> None:
    with approved(sqlite_url) as (world, orchestrator, view):
        checkpointer = orchestrator.graph.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        dying = Orchestrator(
            dataclasses.replace(world.ctx, transport=_DiesMidWave(world, at)), checkpointer
        )
        with pytest.raises(WorkerDied):
            dying.work(view.thread_id)
        view = orchestrator.work(view.thread_id)
        assert view.outcome == "completed"
        installs = Counter(
            (e.device_id, e.plan_id) for e in world.twin.effects() if e.action is Action.install
        )
        assert len(installs) == DEVICES and set(installs.values()) == {1}
        reports = reports_by_command(world)
        assert len(reports) == DEVICES and set(reports.values()) == {1}
        assert world.store.audit.verify().ok
