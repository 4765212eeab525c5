"""Benchmark the fleet twin: a full 4-wave rollout of one module over simulated devices.

Run: ``.venv/bin/python bench/twin.py [--devices 10000] [--repeat 3] [--mode both|calls|deferred]
[--db URL] [--trace-memory]``

A device-step is one command carried through on one device: delivered, run to
completion on the virtual clock, and reported. Each wave takes two steps per
device: the install, then a validate once the wave has settled. Steps per second
count only the time spent inside the twin (``dispatch`` and ``settle``, each
including its write-through to the store); building the commands, which a real
executor does too, is shown apart. Each rollout runs on a fresh SQLite file; the
best and the median of ``--repeat`` rollouts are shown, since a shared machine
makes single runs noisy.

Every report is signed with its device's ed25519 key (canonical JSON, then the
signature: about 40 us a report here, a floor the twin's own work cannot go under).
Steps per second are printed twice, side by side: with the signatures, and without
them (the twin's own cost: twin time less the time spent in ``TwinKeys.sign``).

Each rollout runs twice: call by call (every ``dispatch`` and ``settle`` written through
on its own, two transactions and two row writes per device-step), and deferred (each
dispatch and its settle inside ``FleetTwin.deferred``, one transaction and one row
write per device-step, as an executor grouping its calls does).
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fieldgate.commands import Action, DeviceCommand, command_id_for
from fieldgate.fleet import FleetInventory
from fieldgate.plan import RolloutPlan, assign_waves, select_devices
from fieldgate.store import open_engine
from fieldgate.twin import FleetTwin
from fieldgate.twin._keys import TwinKeys

SIGNING_S = [0.0]
"""Seconds spent in the devices' signatures (one per report: canonical JSON + ed25519).

Timed with ``perf_counter``: ``process_time`` is a system call that would add a few
microseconds to every report, more than some of the work it is meant to set apart.
"""
_sign = TwinKeys.sign


def _timed_sign(self: TwinKeys, device_id: str, payload: object) -> str:
    began = time.perf_counter()
    try:
        return _sign(self, device_id, payload)
    finally:
        SIGNING_S[0] += time.perf_counter() - began


TwinKeys.sign = _timed_sign  # type: ignore[method-assign]

COLLECTING_S = [0.0]
"""Seconds the cyclic garbage collector ran while the twin was at work (``IN_TWIN``)."""
IN_TWIN = [False]
_collection_began = [0.0]


def _time_collection(phase: str, _info: dict[str, int]) -> None:
    if not IN_TWIN[0]:
        return
    if phase == "start":
        _collection_began[0] = time.perf_counter()
    else:
        COLLECTING_S[0] += time.perf_counter() - _collection_began[0]


gc.callbacks.append(_time_collection)

TIME_ZONES = [
    "Europe/Berlin",
    "Europe/Amsterdam",
    "America/New_York",
    "America/Chicago",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Asia/Kolkata",
    "UTC",
]
MODULE = "pump-logic"
OLD, NEW = "1.8.0", "1.9.0"
DIGEST = "sha256:" + "ab" * 32
START = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def fleet_of(devices: int, sites: int) -> FleetInventory:
    """Build an inventory of ``devices`` pump controllers spread evenly over ``sites`` sites."""
    per_site = devices // sites
    return FleetInventory.model_validate(
        {
            "sites": [
                {
                    "id": f"site-{n:03d}",
                    "region": "eu-central" if n % 2 else "us-east",
                    "timezone": TIME_ZONES[n % len(TIME_ZONES)],
                    "maintenance": ["Sat 01:00-05:00"],
                }
                for n in range(sites)
            ],
            "generate": [
                {
                    "sites": [f"site-{n:03d}" for n in range(sites)],
                    "class": "pump-ctl",
                    "per_site": per_site,
                    "arch": "arm64",
                    "memory_mb": 512,
                    "installed": {"edge-runtime": "3.3.1", MODULE: OLD},
                }
            ],
        }
    )


def commands_for(
    plan: RolloutPlan, wave: int, device_ids: list[str], action: Action, now: datetime
) -> list[DeviceCommand]:
    """Build one validated command per device, as the executor would."""
    return [
        DeviceCommand(
            command_id=command_id_for(plan.plan_id, wave, device_id, action),
            plan_id=plan.plan_id,
            plan_hash=plan.plan_hash,
            wave=wave,
            device_id=device_id,
            action=action,
            module=MODULE,
            version=NEW,
            digest=DIGEST,
            issued_at=now,
            deadline=now + timedelta(hours=4),
        )
        for device_id in device_ids
    ]


@dataclass
class Run:
    """Figures of one rollout (times in seconds)."""

    steps: int = 0
    create_s: float = 0.0
    build_s: float = 0.0
    twin_s: float = 0.0
    twin_cpu_s: float = 0.0
    sign_s: float = 0.0
    """Seconds of twin time in the reports' signatures (canonical JSON + ed25519)."""
    gc_s: float = 0.0
    """Seconds of twin time in the cyclic garbage collector."""
    total_s: float = 0.0

    @property
    def rate(self) -> float:
        """Device-steps per second of twin time, signatures included."""
        return self.steps / self.twin_s

    @property
    def own_rate(self) -> float:
        """Device-steps per second of the twin's own time: twin time less the signatures."""
        return self.steps / (self.twin_s - self.sign_s)


def rollout(url: str, inventory: FleetInventory, seed: int, verbose: bool, deferred: bool) -> Run:
    """Create a twin at ``url`` and carry one module through four waves on it.

    With ``deferred`` each dispatch and the settle after it are written through together.
    """
    twin_id = "bench-deferred" if deferred else "bench"
    engine = open_engine(url)
    devices = inventory.all_devices()
    site_map = {s.id: s for s in inventory.sites}
    plan = RolloutPlan.model_validate(
        {
            "plan_id": "bench-rollout",
            "module": MODULE,
            "version": NEW,
            "target": {"classes": ["pump-ctl"]},
            "waves": [
                {"name": "canary", "percent": 1},
                {"name": "early", "percent": 10},
                {"name": "broad", "percent": 39},
                {"name": "rest", "percent": 100},
            ],
            "requested_by": "bench",
        }
    )
    waves = assign_waves(plan, select_devices(plan.target, devices, site_map), site_map)
    run = Run()
    began = time.perf_counter()
    twin = FleetTwin.create(engine, twin_id, inventory.sites, devices, seed=seed, start=START)
    run.create_s = time.perf_counter() - began
    del devices  # the executor keeps wave lists of ids, not the inventory
    for index, wave_devices in enumerate(waves):
        for action in (Action.install, Action.validate):
            mark = time.perf_counter()
            commands = commands_for(plan, index, wave_devices, action, twin.now)
            run.build_s += time.perf_counter() - mark
            mark, cpu_mark, signed = time.perf_counter(), time.process_time(), SIGNING_S[0]
            collected, IN_TWIN[0] = COLLECTING_S[0], True
            with twin.deferred() if deferred else nullcontext():
                result = twin.dispatch(commands, wave=index)
                reports = twin.settle()
            run.twin_s += time.perf_counter() - mark
            run.twin_cpu_s += time.process_time() - cpu_mark
            IN_TWIN[0] = False
            run.sign_s += SIGNING_S[0] - signed
            run.gc_s += COLLECTING_S[0] - collected
            assert len(result.accepted) == len(wave_devices), "every device is reachable"
            assert len(reports) == len(wave_devices), "every command reports"
            run.steps += len(reports)
        if verbose:
            print(
                f"wave {index} ({plan.waves[index].name}): {len(wave_devices):>5} devices, "
                f"virtual clock {twin.now:%H:%M:%S}"
            )
    run.total_s = time.perf_counter() - began
    assert twin.versions(MODULE) == {NEW: inventory_size(inventory)}
    assert not twin.pending()
    del twin, result, reports  # the check below reads the store, as a restarted worker would
    assert FleetTwin.load(engine, twin_id).versions(MODULE) == {NEW: inventory_size(inventory)}
    engine.dispose()
    return run


def inventory_size(inventory: FleetInventory) -> int:
    """Count the devices of ``inventory`` without building them."""
    return len(inventory.devices) + sum(len(b.sites) * b.per_site for b in inventory.generate)


MODES = {"calls": "call by call", "deferred": "deferred"}
"""How the rollouts write through: each call on its own, or each wave step in one block."""


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="rollouts per mode (best is shown)")
    parser.add_argument(
        "--mode", choices=["both", *MODES], default="both", help="how to write through"
    )
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file per rollout)")
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="also measure the tracemalloc peak (slows the run down)",
    )
    args = parser.parse_args()
    if args.db and args.repeat > 1:
        parser.error("--db takes one rollout (--repeat 1): the twin id would be taken")
    if args.trace_memory:
        tracemalloc.start()
    inventory = fleet_of(args.devices, args.sites)
    modes = list(MODES) if args.mode == "both" else [args.mode]

    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runs: dict[str, list[Run]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.repeat):
            for mode in modes:  # interleaved, so that the machine's load falls on both
                url = args.db or f"sqlite:///{Path(tmp) / f'twin-{n}-{mode}.db'}"
                deferred = mode == "deferred"
                run = rollout(
                    url,
                    inventory,
                    args.seed,
                    verbose=n == 0 and mode == modes[0],
                    deferred=deferred,
                )
                runs[mode].append(run)
                print(
                    f"rollout {n + 1}, {MODES[mode]:>12}: {run.rate:>8,.0f} device-steps/s "
                    f"with signatures, {run.own_rate:>8,.0f} without"
                )
    traced_peak = tracemalloc.get_traced_memory()[1] if args.trace_memory else None
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def best(of: list[Run]) -> Run:
        return max(of, key=lambda r: r.rate)

    def best_own(of: list[Run]) -> Run:
        return max(of, key=lambda r: r.own_rate)

    def pairs(
        signed: Callable[[list[Run]], str], own: Callable[[list[Run]], str] | None = None
    ) -> list[str]:
        """One figure with the signatures and one without, per mode, side by side."""
        return [c for m in modes for c in (signed(runs[m]), own(runs[m]) if own else "")]

    first = best(runs[modes[0]])
    signing_us = first.sign_s * 1e6 / first.steps
    rows: list[tuple[str, list[str], str]] = [
        ("devices", [f"{inventory_size(inventory):,}"], ""),
        ("device-steps", [f"{first.steps:,}"], "one command delivered, completed, reported"),
        ("create twin", [f"{first.create_s:.3f} s"], "devices written to the store"),
        (
            "twin time",
            pairs(
                lambda r: f"{best(r).twin_s:.3f} s",
                lambda r: f"{best_own(r).twin_s - best_own(r).sign_s:.3f} s",
            ),
            "dispatch + settle, with write-through",
        ),
        (
            "device-steps / s",
            pairs(lambda r: f"{best(r).rate:,.0f}", lambda r: f"{best_own(r).own_rate:,.0f}"),
            f"best of {args.repeat}; goal >= 50,000",
        ),
        (
            "",
            pairs(
                lambda r: f"{statistics.median(x.rate for x in r):,.0f}",
                lambda r: f"{statistics.median(x.own_rate for x in r):,.0f}",
            ),
            "median",
        ),
        (
            "per CPU second",
            pairs(lambda r: f"{best(r).steps / best(r).twin_cpu_s:,.0f}"),
            "process CPU in the twin calls",
        ),
        (
            "signing share",
            pairs(lambda r: f"{best(r).sign_s / best(r).twin_s:.0%}"),
            f"{signing_us:.0f} us per report signature; alone it caps the twin at "
            f"{first.steps / first.sign_s:,.0f} steps/s",
        ),
        (
            "of which GC",
            pairs(
                lambda r: f"{best(r).gc_s / best(r).twin_s:.0%}",
                lambda r: f"{best_own(r).gc_s / (best_own(r).twin_s - best_own(r).sign_s):.0%}",
            ),
            "the interpreter's cycle collector walking the heap as the twin allocates",
        ),
        ("command building", [f"{first.build_s:.3f} s"], "DeviceCommand models, caller side"),
        ("total wall time", [f"{first.total_s:.3f} s"], "create + build + twin"),
        ("end-to-end / s", [f"{first.steps / first.total_s:,.0f}"], "device-steps over total"),
        ("peak RSS", [f"{rss_kib / 1024:.1f} MiB"], f"{rss_before_kib / 1024:.1f} MiB before"),
    ]
    if traced_peak is not None:
        rows.append(("tracemalloc peak", [f"{traced_peak / 2**20:.1f} MiB"], "Python allocations"))
    width = max(len(MODES[m]) for m in modes) * 2 + 4
    print()
    print(" " * 18 + "".join(f"{MODES[m]:>{width}}" for m in modes))
    print(" " * 18 + "".join(f"{'signed':>{width // 2}}{'twin own':>{width // 2}}" for m in modes))
    for label, values, note in rows:
        cells = "".join(f"{v:>{width // 2}}" for v in values)
        print(f"{label:<18}{cells:<{width * len(modes)}}   {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
