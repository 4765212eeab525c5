"""Benchmark the audit log: append rates and the time to verify a long chain.

Usage::

    python bench/audit.py [--events N] [--verify-events M] [--batch B] [--url URL]

Three figures, each on a fresh SQLite file in a temporary directory (or on the
database ``--url`` names, where the runs append to one log):

* single appends: ``AuditLog.append``, one transaction per event (what a running
  rollout does);
* batched appends: ``AuditLog.append_many``, B events per transaction (bulk
  writes and replays; goal >= 5,000 events/s);
* as runs write: ``append_many`` with 5 and 10 events per transaction, one executor
  dispatch batch of device reports (the pattern a running rollout uses);
* verify: ``AuditLog.verify`` over a chain of M events built with batched
  appends (goal <= 10 s for 1,000,000 events on SQLite).

Each figure also gives the CPU seconds this process spent, which stay
meaningful when other work shares the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from fieldgate.store import NewEvent, Store

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Timing:
    """Wall-clock and CPU seconds of one measured call."""

    wall: float
    cpu: float


def timed(work: Callable[[], object]) -> Timing:
    """Run ``work`` once and time it."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def events(count: int, start: int = 0) -> Iterator[NewEvent]:
    """Events shaped like a rollout's tool calls and device reports."""
    for i in range(start, start + count):
        yield NewEvent(
            kind="device_report" if i % 2 else "tool_call",
            actor_kind="device" if i % 2 else "agent",
            actor=f"ber-03-hvac-gw-{i % 500:03d}" if i % 2 else "executor",
            payload={"wave": i % 7, "status": "applied", "health": {"ok": True, "score": 0.98}},
            plan_id=f"plan-{i // 10_000}",
            thread_id="thread-1",
            at=T0 + timedelta(milliseconds=i),
        )


def append_batched(store: Store, count: int, batch: int) -> None:
    """Append ``count`` events, ``batch`` per transaction."""
    for start in range(0, count, batch):
        store.audit.append_many(events(min(batch, count - start), start))


def append_single(store: Store, count: int) -> None:
    """Append ``count`` events one transaction at a time."""
    for new in events(count):
        store.audit.append(
            new.kind, new.actor_kind, new.actor, new.payload, new.plan_id, new.thread_id, new.at
        )


def rate(count: int, timing: Timing) -> str:
    """``count`` events over ``timing`` as a line fragment."""
    return f"{count / timing.wall:>10,.0f} events/s  ({count / timing.cpu:,.0f} per CPU-second)"


def main() -> None:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events for the append rates")
    parser.add_argument("--verify-events", type=int, default=1_000_000, help="chain to verify")
    parser.add_argument("--batch", type=int, default=5_000, help="events per batched append")
    parser.add_argument("--url", help="database URL (default: SQLite files in a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-") as tmp:

        def fresh(name: str) -> Store:
            return Store.open(args.url or f"sqlite:///{Path(tmp) / name}.db")

        print(f"database        : {args.url or 'SQLite files in ' + tmp}")
        single_n = max(1, args.events // 4)
        with fresh("single") as store:
            timing = timed(lambda: append_single(store, single_n))
        print(f"single append   : {rate(single_n, timing)}  {single_n:,} events, 1 per transaction")
        with fresh("batched") as store:
            timing = timed(lambda: append_batched(store, args.events, args.batch))
        print(
            f"batched append  : {rate(args.events, timing)}  {args.events:,} events, "
            f"{args.batch:,} per transaction; goal >= 5,000 events/s"
        )
        # What a rollout really writes: one append_many per dispatch batch of device
        # reports (max_parallel 5 for safety-class high/critical plans, 10 otherwise).
        for per_batch in (5, 10):
            with fresh(f"run-{per_batch}") as store:
                timing = timed(partial(append_batched, store, single_n, per_batch))
            print(
                f"as runs write   : {rate(single_n, timing)}  {single_n:,} events, "
                f"{per_batch} per transaction (one dispatch batch); goal >= 5,000 events/s"
            )
        if not args.verify_events:
            return
        with fresh("verify") as store:
            built = timed(lambda: append_batched(store, args.verify_events, args.batch))
            print(f"build chain     : {built.wall:>10.1f} s         {args.verify_events:,} events")
            results = []
            timing = timed(lambda: results.append(store.audit.verify()))
        result = results[0]
        if not result.ok:
            raise SystemExit(f"verify failed: {result.reason}")
        print(
            f"verify chain    : {timing.wall:>10.2f} s         {result.count:,} events, "
            f"{timing.cpu:.2f} s CPU; goal <= 10 s for 1,000,000"
        )


if __name__ == "__main__":
    main()
