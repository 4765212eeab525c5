"""Kill -9 soak: ``fieldgate worker`` processes killed at random points while rollouts run.

Rollouts of the sample fleet are queued through the chat; worker processes execute them
and are killed with SIGKILL at random moments once they are at work (the audit log moved
since they started), then started again. On PostgreSQL two workers share the runs.
Afterwards a worker pass or two must finish everything, and:

- 0 duplicate device effects: one install per device and plan in the twin's ledger, or
  in each field agent's own effects journal;
- 0 stuck runs: every run ended, none of them left ``executing``;
- 0 duplicated audit events: each device report once, one end per run.

The default suite runs a short variant on the twin (3 kills on SQLite, 3 on PostgreSQL);
``-m slow`` the full soak: 15 kills on each database over the twin and 8 on each over
MQTT to field agent processes (46 in all).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _edge_support import Mosquitto
from test_edge_rollout import own_effects
from test_ops_freeze_stop import ask, invoke
from test_ops_recovery import duplicated_events

from fieldgate.commands import Action
from fieldgate.config import Config
from fieldgate.edge import DeviceSpec, HelloWatcher, LocalFleet
from fieldgate.graphs.compose import default_twin
from fieldgate.keyfiles import control_plane_key
from fieldgate.plan import Selector
from fieldgate.store import OPEN_STATUSES, Store

FIELDGATE = str(Path(sys.executable).with_name("fieldgate"))

SITES = {
    "lyon-02": "air-quality-model",
    "rtm-05": "pump-logic",
    "osl-01": "air-quality-model",
    "tpa-04": "pump-logic",
    "bos-02": "air-quality-model",
}
VERSIONS = {"air-quality-model": ("1.2.0", "1.1.0"), "pump-logic": ("1.9.0", "1.8.0")}
REQUESTS = [
    f"roll out {module} {VERSIONS[module][turn % 2]} to {site}"
    for turn in range(4)
    for site, module in SITES.items()
]
"""Rollouts the sample's policy allows without approvals: forward and back, site by site."""


@dataclass
class Soak:
    """Worker processes, what was killed where, and the runs they executed."""

    argv: list[str]
    workers: int
    kills: int
    rng: random.Random
    log_dir: Path
    requests: list[str]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    plans: list[str] = field(default_factory=list)
    killed: int = 0
    killed_at_work: int = 0
    started: int = 0

    def start(self, slot: int) -> None:
        log = (self.log_dir / f"worker-{slot}-{self.started}.log").open("wb")
        self.started += 1
        argv = [*self.argv, "--gateway-id", f"fieldgate-soak-{slot}"]
        self.processes[slot] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def open_runs(self, store: Store) -> list[str]:
        return [r.plan_id for r in store.runs.list(OPEN_STATUSES)]

    def feed(self) -> None:
        """Queue the next rollouts while fewer than two runs are open, never two at once
        for one site (the next one there is planned on what the last one left)."""
        with Store.open() as store:
            open_runs = store.runs.list(OPEN_STATUSES)
        busy = {r.request.rsplit(" ", 1)[-1] for r in open_runs}
        for _ in range(2 - len(open_runs)):
            free = [r for r in self.requests if r.rsplit(" ", 1)[-1] not in busy]
            if not free:
                return
            self.requests.remove(free[0])
            busy.add(free[0].rsplit(" ", 1)[-1])
            self.plans.append(ask(free[0]))

    def run(self, deadline: float) -> None:
        """Kill a random worker ``kills`` times, each once it is at work."""
        for slot in range(self.workers):
            self.start(slot)
        while self.killed < self.kills:
            assert time.monotonic() < deadline, f"soak ran out of time after {self.killed} kills"
            self.feed()
            slot = self.rng.randrange(self.workers)
            victim = self.processes[slot]
            with Store.open() as store:
                head = store.audit.head()
                seq = head.seq if head else 0
                idle = not self.open_runs(store)
            if idle:
                break
            # At work: the audit log moved since this point (bounded, then kill anyway).
            waited = time.monotonic() + 15
            moved = False
            while time.monotonic() < waited and victim.poll() is None:
                with Store.open() as store:
                    head = store.audit.head()
                if head is not None and head.seq > seq:
                    moved = True
                    break
                time.sleep(0.1)
            time.sleep(self.rng.uniform(0.0, 1.2))
            if victim.poll() is None:
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
            self.killed += 1
            self.killed_at_work += moved
            self.start(slot)
        self.stop_all()


def finish(plans: Sequence[str], extra: Sequence[str] = ()) -> None:
    """Two worker passes at most end every run: none is left stuck."""
    said = []
    for _ in range(2):
        with Store.open() as store:
            if not store.runs.list(OPEN_STATUSES):
                break
        done = subprocess.run(
            [FIELDGATE, "worker", "--once", *extra], capture_output=True, timeout=600
        )
        said.append(done.stdout.decode() + done.stderr.decode())
    with Store.open() as store:
        stuck = {r.plan_id: r.status for r in store.runs.list(OPEN_STATUSES)}
        assert stuck == {}, f"stuck runs: {stuck}\n" + "\n".join(said)
        outcomes = {p: store.runs.for_plan(p).outcome for p in plans}
        assert set(outcomes.values()) == {"completed"}, outcomes
        for plan in plans:
            assert duplicated_events(store, plan) == [], plan
        assert store.audit.verify().ok


def soak_twin(tmp_path: Path, *, workers: int, kills: int, seed: int, runs: int) -> Soak:
    """Kill workers ``kills`` times while up to ``runs`` rollouts run (two at a time)."""
    soak = Soak(
        [FIELDGATE, "worker", "--interval", "0.2"],
        workers,
        kills,
        random.Random(seed),
        tmp_path,
        REQUESTS[:runs],
    )
    soak.feed()
    try:
        soak.run(time.monotonic() + 60 * kills)
    finally:
        soak.stop_all()
    finish(soak.plans)
    with Store.open() as store:
        effects = default_twin(store).effects()
        assert len({e.command_id for e in effects}) == len(effects)
        # One install per device and plan, however often a killed worker sent it.
        installs = Counter((e.device_id, e.command_id) for e in effects)
        assert set(installs.values()) == {1}
        per_plan = Counter((e.device_id, e.plan_id) for e in effects if e.action is Action.install)
        assert set(per_plan.values()) == {1}, "a device installed twice for one plan"
        assert not [e for e in effects if e.action is not Action.install]
    assert soak.killed >= min(kills, 1)
    print(f"\nsoak: {soak.killed} kills ({soak.killed_at_work} at work), {len(soak.plans)} runs")
    return soak


# --------------------------------------------------------------------------- short variant


def test_killed_workers_on_the_twin_leave_no_duplicate_and_no_stuck_run(
    initialised_db: str, tmp_path: Path
) -> None:
    workers = 2 if initialised_db.startswith("postgresql") else 1
    soak = soak_twin(tmp_path, workers=workers, kills=3, seed=len(initialised_db), runs=10)
    assert soak.killed == 3 and soak.killed_at_work >= 2


@pytest.mark.slow
def test_soak_thirty_kills_on_the_twin(initialised_db: str, tmp_path: Path) -> None:
    workers = 2 if initialised_db.startswith("postgresql") else 1
    soak = soak_twin(tmp_path, workers=workers, kills=15, seed=7, runs=len(REQUESTS))
    assert soak.killed == 15 and soak.killed_at_work >= 12


# --------------------------------------------------------------------------- over MQTT


def soak_mqtt(tmp_path: Path, *, workers: int, kills: int, seed: int) -> Soak:
    broker = Mosquitto(tmp_path / "broker").start()
    config = Config.from_env()
    requests = [r for r in REQUESTS[:5] if "air-quality-model" in r]
    try:
        with Store.open() as store:
            key = control_plane_key(store, config.keys_dir).public_b64
            sites = ["lyon-02", "osl-01", "bos-02"]
            devices = store.fleet.devices(Selector(sites=sites))
        specs = [
            DeviceSpec(device_id=d.id, site=d.site, installed=dict(d.installed)) for d in devices
        ]
        state = tmp_path / "agents"
        store = Store.open()
        fleet = LocalFleet(
            broker.broker(),
            state,
            key,
            specs,
            per_process=20,
            log_dir=tmp_path / "logs",
            enroll_in=store,
            replace_keys=True,
        )
        with store, fleet, HelloWatcher(broker.broker()) as watcher:
            assert watcher.wait(fleet.device_ids, timeout=60)
            extra = ["--transport", "mqtt", "--broker", broker.broker().url, "--max-soak", "2"]
            soak = Soak(
                [FIELDGATE, "worker", "--interval", "0.2", *extra],
                workers,
                kills,
                random.Random(seed),
                tmp_path,
                requests,
            )
            soak.feed()
            try:
                soak.run(time.monotonic() + 90 * kills)
            finally:
                soak.stop_all()
            finish(soak.plans, extra)
        for spec in specs:
            effects, _, installed = own_effects(state, spec.device_id)
            assert len(effects) == len(set(effects)), (spec.device_id, effects)
            if effects:  # a device of a run that was queued: on the new version
                assert installed["air-quality-model"] == "1.2.0", spec.device_id
    finally:
        broker.stop()
    print(f"\nsoak: {soak.killed} kills ({soak.killed_at_work} at work), {len(soak.plans)} runs")
    return soak


@pytest.mark.mqtt
@pytest.mark.slow
def test_soak_kills_over_mqtt_with_workers_sharing_the_runs(
    initialised_db: str, tmp_path: Path
) -> None:
    workers = 2 if initialised_db.startswith("postgresql") else 1
    soak = soak_mqtt(tmp_path, workers=workers, kills=8, seed=11)
    assert soak.killed >= 4 and soak.killed_at_work >= 4


def test_the_soak_counts_what_it_should(initialised_db: str) -> None:
    """The checks themselves: a device report audited twice is found."""
    plan = ask(REQUESTS[0])
    assert invoke("worker", "--once")[0] == 0
    with Store.open() as store:
        report = store.audit.events(plan_id=plan, kinds=["device_report"])[0]
        store.audit.append(
            report.kind, report.actor_kind, report.actor, report.payload, plan_id=plan
        )
        assert duplicated_events(store, plan) == [
            f"device_report {report.payload['command_id']} ×2"
        ]
