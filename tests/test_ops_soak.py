"""Kill -9 soak: ``fieldgate worker`` processes killed at random points while rollouts run.

Rollouts of the sample fleet are queued through the chat, two at a time, site by site,
forward and back for as long as the soak lasts; worker processes execute them and are
killed with SIGKILL at random moments once they are at work (the audit log moved since
the soak last looked), then started again. On PostgreSQL two workers share the runs.
Afterwards a worker pass or two must finish everything, and:

- 0 duplicate device effects: one install per device and plan in the twin's ledger, or
  per device and command in each field agent's own effects journal; each device ends on
  the version of the last rollout queued at its site, having installed once per rollout;
- 0 stuck runs: every run ended completed, none of them left open;
- 0 duplicated audit events: each device report once, one end per run.

The default suite runs short variants: 3 kills on each database on the twin, 1 over
MQTT; ``-m slow`` the full soak: 15 kills on each database on the twin and 8 on each
over MQTT to field agent processes (46 in all).
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


def rollout(site: str, turn: int) -> str:
    """The ``turn``-th rollout at ``site`` (from 0): forward on even turns, back on odd ones,
    which the sample's policy allows without approvals."""
    module = SITES[site]
    return f"roll out {module} {VERSIONS[module][turn % 2]} to {site}"


@dataclass
class Soak:
    """Worker processes, what was killed where, and the runs they executed.

    Work never runs out: each site gets its next rollout (forward, back, forward, …) for
    as long as the kills take, so every kill finds workers at work.
    """

    argv: list[str]
    workers: int
    kills: int
    rng: random.Random
    log_dir: Path
    sites: dict[str, str]
    """Site → the module rolled out there (some of :data:`SITES`)."""
    linger: float = 1.2
    """At most this many seconds between the audit log moving and the kill."""
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    plans: list[str] = field(default_factory=list)
    turns: Counter[str] = field(default_factory=Counter)
    """Rollouts queued per site."""
    killed: int = 0
    killed_at_work: int = 0
    started: int = 0
    began: float = field(default_factory=time.monotonic)

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

    def last_version(self, site: str) -> str:
        """The version the last rollout queued at ``site`` installs."""
        module = self.sites[site]
        return VERSIONS[module][(self.turns[site] - 1) % 2]

    def feed(self) -> None:
        """Queue the next rollouts while fewer than two runs are open, never two at once
        for one site (the next one there is planned on what the last one left); the site
        with the fewest rollouts so far goes first."""
        with Store.open() as store:
            open_runs = store.runs.list(OPEN_STATUSES)
        busy = {r.request.rsplit(" ", 1)[-1] for r in open_runs}
        for _ in range(2 - len(open_runs)):
            free = sorted((s for s in self.sites if s not in busy), key=self.turns.__getitem__)
            if not free:
                return
            site = free[0]
            self.plans.append(ask(rollout(site, self.turns[site])))
            self.turns[site] += 1
            busy.add(site)

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
            # At work: the audit log moved since this point (bounded, then kill anyway; a
            # worker over MQTT takes several seconds to start on a loaded machine).
            waited = time.monotonic() + 30
            moved = False
            while time.monotonic() < waited and victim.poll() is None:
                with Store.open() as store:
                    head = store.audit.head()
                if head is not None and head.seq > seq:
                    moved = True
                    break
                time.sleep(0.1)
            time.sleep(self.rng.uniform(0.0, self.linger))
            if victim.poll() is None:
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
            self.killed += 1
            self.killed_at_work += moved
            self.start(slot)
        self.stop_all()

    def figures(self) -> str:
        """What the soak did, printed at its end."""
        return (
            f"soak: {self.killed} kills ({self.killed_at_work} at work), {len(self.plans)} runs, "
            f"{time.monotonic() - self.began:.0f} s"
        )


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
        # What holds a held run (a policy decision that could not be audited holds it
        # for a retry, as an engine error does) says why it did not end.
        stuck = {
            r.plan_id: (r.status, r.detail.get("held")) for r in store.runs.list(OPEN_STATUSES)
        }
        assert stuck == {}, f"stuck runs: {stuck}\n" + "\n".join(said)
        outcomes = {p: store.runs.for_plan(p).outcome for p in plans}
        assert set(outcomes.values()) == {"completed"}, outcomes
        for plan in plans:
            assert duplicated_events(store, plan) == [], plan
        assert store.audit.verify().ok


def ends_on_the_last_rollout(
    soak: Soak, store: Store, installed: dict[str, dict[str, str]], installs: Counter[str]
) -> None:
    """Each device of a soaked site ends on the version of the last rollout queued there,
    on the device (``installed``) and on the record, having installed once per rollout."""
    for site, module in soak.sites.items():
        devices = [d for d in store.fleet.devices(Selector(sites=[site])) if module in d.installed]
        assert devices, site
        last = soak.last_version(site)
        for device in devices:
            assert installed[device.id][module] == last, (device.id, installed[device.id])
            assert device.installed[module] == last, (device.id, "on the record")
            assert installs[device.id] == soak.turns[site], (device.id, installs[device.id])


def soak_twin(tmp_path: Path, *, workers: int, kills: int, seed: int) -> Soak:
    """Kill workers ``kills`` times while rollouts run on the twin (two at a time)."""
    soak = Soak(
        [FIELDGATE, "worker", "--interval", "0.2"],
        workers,
        kills,
        random.Random(seed),
        tmp_path,
        dict(SITES),
    )
    soak.feed()
    try:
        soak.run(time.monotonic() + 60 * kills)
    finally:
        soak.stop_all()
    finish(soak.plans)
    with Store.open() as store:
        twin = default_twin(store)
        effects = twin.effects()
        assert len({e.command_id for e in effects}) == len(effects)
        # One install per device and plan, however often a killed worker sent it.
        per_plan = Counter((e.device_id, e.plan_id) for e in effects if e.action is Action.install)
        assert set(per_plan.values()) == {1}, "a device installed twice for one plan"
        assert not [e for e in effects if e.action is not Action.install]
        installs = Counter(device for device, _ in per_plan)
        ends_on_the_last_rollout(soak, store, {d.id: d.installed for d in twin.devices()}, installs)
    print("\n" + soak.figures())
    return soak


# --------------------------------------------------------------------------- short variant


def test_killed_workers_on_the_twin_leave_no_duplicate_and_no_stuck_run(
    initialised_db: str, tmp_path: Path
) -> None:
    workers = 2 if initialised_db.startswith("postgresql") else 1
    soak = soak_twin(tmp_path, workers=workers, kills=3, seed=len(initialised_db))
    assert soak.killed == 3 and soak.killed_at_work >= 2


@pytest.mark.slow
def test_soak_thirty_kills_on_the_twin(initialised_db: str, tmp_path: Path) -> None:
    workers = 2 if initialised_db.startswith("postgresql") else 1
    soak = soak_twin(tmp_path, workers=workers, kills=15, seed=7)
    assert soak.killed == 15 and soak.killed_at_work >= 14


# --------------------------------------------------------------------------- over MQTT

MQTT_SITES = ("lyon-02", "osl-01")
"""Two sites, so that two rollouts run at once and each site soon rolls back and forth."""


def soak_mqtt(
    tmp_path: Path,
    *,
    sites: Sequence[str],
    workers: int,
    kills: int,
    seed: int,
    max_soak: float = 2.0,
) -> Soak:
    """Kill workers ``kills`` times while rollouts run over MQTT to field agent processes,
    one for each device the rollouts at ``sites`` target; each wave soaks ``max_soak`` s."""
    broker = Mosquitto(tmp_path / "broker").start()
    config = Config.from_env()
    modules = {site: SITES[site] for site in sites}
    try:
        with Store.open() as store:
            key = control_plane_key(store, config.keys_dir).public_b64
            devices = store.fleet.devices(Selector(sites=list(sites)))
        specs = [
            DeviceSpec(device_id=d.id, site=d.site, installed=dict(d.installed))
            for d in devices
            if modules[d.site] in d.installed
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
            broker_url = broker.broker().url
            extra = ["--transport", "mqtt", "--broker", broker_url, "--max-soak", f"{max_soak:g}"]
            soak = Soak(
                [FIELDGATE, "worker", "--interval", "0.2", *extra],
                workers,
                kills,
                random.Random(seed),
                tmp_path,
                modules,
                linger=4.0,  # a run over MQTT takes longer: kill it mid-wave, mid-soak, between
            )
            soak.feed()
            try:
                soak.run(time.monotonic() + 90 * kills)
            finally:
                soak.stop_all()
            finish(soak.plans, extra)
        journals = {spec.device_id: own_effects(state, spec.device_id) for spec in specs}
        for device_id, (effects, _, _) in journals.items():
            # One install per device and command in the agent's own journal.
            assert len(effects) == len(set(effects)), (device_id, effects)
        with Store.open() as store:
            ends_on_the_last_rollout(
                soak,
                store,
                {d: installed for d, (_, _, installed) in journals.items()},
                Counter({d: len(effects) for d, (effects, _, _) in journals.items()}),
            )
    finally:
        broker.stop()
    print("\n" + soak.figures())
    return soak


@pytest.mark.mqtt
@pytest.mark.slow
def test_soak_kills_over_mqtt_with_workers_sharing_the_runs(
    initialised_db: str, tmp_path: Path
) -> None:
    workers = 2 if initialised_db.startswith("postgresql") else 1
    soak = soak_mqtt(tmp_path, sites=MQTT_SITES, workers=workers, kills=8, seed=11)
    assert soak.killed == 8 and soak.killed_at_work >= 7


@pytest.mark.mqtt
def test_killed_workers_over_mqtt_leave_no_duplicate_and_no_stuck_run(
    initialised_db: str, tmp_path: Path
) -> None:
    workers = 2 if initialised_db.startswith("postgresql") else 1
    soak = soak_mqtt(
        tmp_path,
        sites=MQTT_SITES,
        workers=workers,
        kills=1,
        seed=len(initialised_db),
        max_soak=0.5,
    )
    assert soak.killed == 1 and soak.killed_at_work == 1


def test_the_soak_counts_what_it_should(initialised_db: str) -> None:
    """The checks themselves: a device report audited twice is found."""
    plan = ask(rollout("lyon-02", 0))
    assert invoke("worker", "--once")[0] == 0
    with Store.open() as store:
        report = store.audit.events(plan_id=plan, kinds=["device_report"])[0]
        store.audit.append(
            report.kind, report.actor_kind, report.actor, report.payload, plan_id=plan
        )
        assert duplicated_events(store, plan) == [
            f"device_report {report.payload['command_id']} ×2"
        ]
