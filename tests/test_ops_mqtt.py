"""Freeze, kill switch and policy engine holds over a real Mosquitto to field agent processes.

The twin tests (``test_ops_freeze_stop.py``) show the operations on the simulated fleet;
here the same operations act on a ``fieldgate worker --transport mqtt`` process that
drives real agent processes through a private Mosquitto. What a device did is read from
its own store (its effects journal and installed modules), never from the control plane's
record: a hold holds only if no agent ran anything after it.

The site is tpa-04's six env sensors (a pilot of one, then the other five); soaks are cut
to a couple of seconds with ``--max-soak``, and an operator acts during the pilot's soak.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _edge_support import Mosquitto
from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy import inspect, text
from test_edge_rollout import own_effects
from test_ops_freeze_stop import ask, broken_pack, events, invoke

from fieldgate.audit import EventKind
from fieldgate.cli._edge import open_mqtt_orchestrator
from fieldgate.cli._worker import work_once
from fieldgate.config import Config
from fieldgate.edge import DeviceSpec, HelloWatcher, LocalFleet
from fieldgate.graphs.runner import Orchestrator
from fieldgate.keyfiles import control_plane_key
from fieldgate.plan import Selector
from fieldgate.policy import PolicyGate, RegoEngine
from fieldgate.runtime import Settings
from fieldgate.store import Store

pytestmark = pytest.mark.mqtt

FIELDGATE = str(Path(sys.executable).with_name("fieldgate"))
SITE, MODULE, OLD, NEW = "tpa-04", "air-quality-model", "1.1.0", "1.2.0"
FORWARD = f"roll out {MODULE} {NEW} to {SITE}"
"""Six env sensors in two waves (pilot 1, rest 5); the sample's policy needs no approvals."""


@dataclass
class Field:
    """The broker, the agents of tpa-04's env sensors and what they did."""

    broker: Mosquitto
    fleet: LocalFleet
    state: Path
    devices: list[str]
    logs: Path

    def worker_args(self, *, max_soak: float = 3.0) -> list[str]:
        """The options of a worker (or ``runs retry``) over this broker."""
        return [
            "--transport",
            "mqtt",
            "--broker",
            self.broker.broker().url,
            "--max-soak",
            str(max_soak),
        ]

    def journal(self, device_id: str) -> list[str]:
        """Command ids the device carried out, from its own effects journal."""
        return own_effects(self.state, device_id)[0]

    def journals(self) -> dict[str, list[str]]:
        """Every device's effects journal."""
        return {d: self.journal(d) for d in self.devices}

    def ran(self) -> int:
        """Effects over every device."""
        return sum(len(j) for j in self.journals().values())

    def installed(self) -> dict[str, str]:
        """The module's version on each device, by its own store."""
        return {d: own_effects(self.state, d)[2][MODULE] for d in self.devices}

    def worker(self, *args: str, name: str = "worker") -> subprocess.Popen[str]:
        """Start ``fieldgate worker ARGS`` as a process of its own (output to a log)."""
        log = (self.logs / f"{name}.log").open("w")
        wide = dict(os.environ, COLUMNS="240")  # one line per message
        return subprocess.Popen(
            [FIELDGATE, "worker", *args], stdout=log, stderr=subprocess.STDOUT, text=True, env=wide
        )

    def output(self, name: str = "worker") -> str:
        """What the worker process printed, on one line."""
        return " ".join((self.logs / f"{name}.log").read_text().split())

    def await_worker(
        self, worker: subprocess.Popen[str], condition: Callable[[], bool], what: str
    ) -> None:
        """Wait until ``condition`` holds while ``worker`` is at work; fail with its output
        when it ended first or 40 s passed."""
        end = time.monotonic() + 40
        while not condition():
            if worker.poll() is not None or time.monotonic() > end:
                pytest.fail(f"no {what} (worker exit {worker.poll()}): {self.output()}")
            time.sleep(0.05)


@contextmanager
def site_agents(
    tmp_path: Path, *, failing: Sequence[str] = (), apply_seconds: float = 0.0
) -> Iterator[Field]:
    """tpa-04's env sensors as agent processes on a private broker, obeying this control
    plane's key and enrolled with their own keys in its fleet; an install takes them
    ``apply_seconds``, and those of the ``failing`` ``module@version`` refs fail."""
    with ExitStack() as stack:
        broker = Mosquitto(tmp_path / "broker").start()
        stack.callback(broker.stop)
        store = stack.enter_context(Store.open())
        key = control_plane_key(store, Config.from_env().keys_dir).public_b64
        devices = store.fleet.devices(Selector(sites=[SITE], classes=["env-sensor"]))
        specs = [
            DeviceSpec(
                device_id=d.id, site=d.site, installed=dict(d.installed), fail_installs=failing
            )
            for d in devices
        ]
        state = tmp_path / "agents"
        fleet = LocalFleet(
            broker.broker(),
            state,
            key,
            specs,
            per_process=len(specs),
            apply_seconds=apply_seconds,
            log_dir=tmp_path / "logs",
            enroll_in=store,
            replace_keys=True,  # the agents stand in for the twin's simulated devices
        )
        stack.enter_context(fleet)
        watcher = stack.enter_context(HelloWatcher(broker.broker()))
        assert watcher.wait(fleet.device_ids, timeout=60), "the agents did not come online"
        logs = tmp_path / "worker-logs"
        logs.mkdir()
        yield Field(broker, fleet, state, fleet.device_ids, logs)


@pytest.fixture
def field(initialised_db: str, tmp_path: Path) -> Iterator[Field]:
    """tpa-04's agents (see :func:`site_agents`)."""
    with site_agents(tmp_path) as agents:
        yield agents


def pilot_applied(field: Field, worker: subprocess.Popen[str]) -> str:
    """Wait until one device ran its install (the pilot); return it."""
    field.await_worker(worker, lambda: field.ran() == 1, "install of the pilot")
    (pilot,) = [d for d, j in field.journals().items() if j]
    return pilot


def dispatched(plan: str) -> bool:
    """Whether the run's first ``deploy_wave`` call was allowed (its commands go out)."""
    with Store.open() as store:
        return any(c["allow"] for c in events(store, plan, EventKind.tool_call))


# --------------------------------------------------------------------------- freeze


SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
"""Over MQTT most tests run on SQLite only: the twin tests cover both databases, and
``stop --abort`` here runs on PostgreSQL too (operators' commands beside a worker there)."""


@SQLITE_ONLY
def test_a_freeze_over_mqtt_holds_the_rollout_and_lifting_it_resumes_the_same_run(
    field: Field,
) -> None:
    plan = ask(FORWARD)
    worker = field.worker("--once", *field.worker_args(max_soak=20))
    pilot = pilot_applied(field, worker)
    code, out = invoke("freeze", "on", "--reason", "storm season", "--as", "saf-lee")
    assert code == 0, out
    assert worker.wait(timeout=15) == 0, field.output()
    said = field.output()
    assert f"{plan}: held by the change freeze" in said and "storm season" in said, said
    assert "simulated on the twin" not in said, said  # its steps ran on the wall clock

    code, out = invoke("worker", "--once", *field.worker_args())
    assert code == 0 and f"{plan}: held by the change freeze" in out, out
    assert {d: len(j) for d, j in field.journals().items() if j} == {pilot: 1}
    code, out = invoke("status", plan)
    assert code == 0 and "held by the change freeze" in " ".join(out.split()), out
    code, out = invoke("chat", "--as", "eng-ana", stdin=f"/status {plan}\n")
    assert code == 0 and "change freeze in force" in out, out
    assert f"{plan}: held by the change freeze" in out and "approved, queued" not in out

    assert invoke("freeze", "off", "--reason", "storm passed", "--as", "saf-lee")[0] == 0
    code, out = invoke("worker", "--once", *field.worker_args(max_soak=1))
    assert code == 0 and "executed 1 run (1 completed)" in out, out
    journals = field.journals()
    assert all(len(j) == 1 for j in journals.values()), journals  # nobody installed twice
    assert set(field.installed().values()) == {NEW}
    with Store.open() as store:
        assert store.runs.list() == [store.runs.for_plan(plan)]
        assert store.audit.events(plan_id=plan, kinds=[EventKind.approval]) == []
        assert store.audit.verify().ok


@SQLITE_ONLY
def test_a_failed_pilot_over_mqtt_is_rolled_back_under_a_freeze_set_while_it_installs(
    initialised_db: str, tmp_path: Path
) -> None:
    """The freeze holds forward steps only: the rollback of a pilot that failed goes on."""
    with site_agents(tmp_path, failing=[f"{MODULE}@{NEW}"], apply_seconds=2.0) as field:
        plan = ask(FORWARD)
        worker = field.worker("--once", *field.worker_args(max_soak=20))
        field.await_worker(worker, lambda: dispatched(plan), "command sent to the pilot")
        code, out = invoke("freeze", "on", "--reason", "storm season", "--as", "saf-lee")
        assert code == 0, out
        assert field.ran() == 0  # frozen before the pilot's install ended (and failed)
        assert worker.wait(timeout=40) == 0, field.output()
        said = field.output()
        assert f"{plan}: rolled_back" in said, said
        journals = field.journals()
        (pilot,) = [d for d, j in journals.items() if j]
        assert len(journals[pilot]) == 2  # its failed install, then the rollback
        assert set(field.installed().values()) == {OLD}
        with Store.open() as store:
            assert store.freeze.current() is not None
            assert store.runs.for_plan(plan).outcome == "rolled_back"
            assert events(store, plan, EventKind.hold) == []
            calls = events(store, plan, EventKind.tool_call)
            assert [(c["tool"], c["allow"]) for c in calls] == [
                ("deploy_wave", True),
                ("rollback", True),
            ]


# --------------------------------------------------------------------------- kill switch


@SQLITE_ONLY
def test_a_stop_over_mqtt_holds_mid_soak_and_release_resumes_where_it_stopped(
    field: Field,
) -> None:
    plan = ask(FORWARD)
    worker = field.worker("--once", *field.worker_args(max_soak=20))
    pilot = pilot_applied(field, worker)
    code, out = invoke("stop", plan, "--reason", "smoke at the pump house", "--as", "op-ola")
    assert code == 0, out
    assert worker.wait(timeout=15) == 0, field.output()  # not after the 20 s soak
    said = field.output()
    assert f"{plan}: held by the kill switch" in said and "smoke at the pump house" in said

    code, out = invoke("status", plan)
    assert code == 0, out
    shown = " ".join(out.split())
    assert "held by the kill switch" in shown and f"stop --release {plan}" in shown, out
    code, out = invoke("worker", "--once", *field.worker_args())
    assert code == 0 and f"{plan}: held by the kill switch" in out, out
    assert {d: len(j) for d, j in field.journals().items() if j} == {pilot: 1}

    code, out = invoke("stop", "--release", plan, "--as", "op-ola")
    assert code == 0 and "resume" in out, out
    code, out = invoke("worker", "--once", *field.worker_args(max_soak=1))
    assert code == 0 and "executed 1 run (1 completed)" in out, out
    journals = field.journals()
    assert all(len(j) == 1 for j in journals.values()), journals  # nobody installed twice
    assert set(field.installed().values()) == {NEW}
    with Store.open() as store:
        assert store.runs.list() == [store.runs.for_plan(plan)]
        assert store.plans.get(plan).revision == 1
        assert store.audit.events(plan_id=plan, kinds=[EventKind.approval]) == []
        assert [h["kind"] for h in events(store, plan, EventKind.hold)] == ["kill_switch"]
        assert store.audit.verify().ok


def sent_in_wave(plan: str, wave: int) -> int:
    """Commands of ``plan``'s wave (from 0) the MQTT gateway published, by its ledger."""
    with Store.open() as store, store.engine.connect() as conn:
        if not inspect(conn).has_table("edge_commands"):  # no gateway started yet
            return 0
        query = text("SELECT count(*) FROM edge_commands WHERE plan_id = :plan AND wave = :wave")
        return int(conn.execute(query, {"plan": plan, "wave": wave}).scalar_one())


def test_stop_abort_over_mqtt_ends_the_run_and_the_agents_go_back(
    initialised_db: str, tmp_path: Path
) -> None:
    with site_agents(tmp_path, apply_seconds=2.0) as field:
        plan = ask(FORWARD)
        worker = field.worker("--once", *field.worker_args(max_soak=2))
        # The pilot passed its gate and the rest were sent their installs: then the stop.
        field.await_worker(worker, lambda: sent_in_wave(plan, 1) == 5, "second wave sent")
        code, out = invoke("stop", plan, "--reason", "wrong build", "--as", "op-ola")
        assert code == 0, out
        assert worker.wait(timeout=20) == 0, field.output()
        assert f"{plan}: held by the kill switch" in field.output(), field.output()
        assert set(field.installed().values()) == {NEW}  # six devices changed

        code, out = invoke("stop", "--abort", plan, "--reason", "wrong build", "--as", "op-ola")
        assert code == 0 and "aborted" in out, out
        code, out = invoke("worker", "--once", *field.worker_args())
        assert code == 0, out
        assert f"{plan}: aborted — aborted by op-ola: wrong build" in " ".join(out.split()), out
        journals = field.journals()
        assert all(len(j) == 2 for j in journals.values()), journals  # install, rollback
        assert set(field.installed().values()) == {OLD}
        with Store.open() as store:
            run = store.runs.for_plan(plan)
            assert run.outcome == "aborted"
            assert any("rolled back" in r for r in run.detail["reasons"]), run.detail
            assert store.fleet.summary().installed[MODULE].get(NEW, 0) == 0
            assert store.audit.verify().ok
    assert invoke("stop", "--abort", plan)[0] == 2  # it ended: nothing left to abort


# --------------------------------------------------------------------------- policy engine


@contextmanager
def broken_engine_over_mqtt(
    field: Field, tmp_path: Path, settings: Settings
) -> Iterator[Orchestrator]:
    """A worker's orchestrator over the broker whose policy engine cannot load its pack (a
    syntax error in tools.rego, as a bad deploy leaves it); the gateway is the worker's."""
    with open_mqtt_orchestrator(settings=settings, broker=field.broker.broker()) as opened:
        ctx = opened.ctx
        gate = PolicyGate(RegoEngine(broken_pack(tmp_path)), ctx.store.audit, clock=ctx.now)
        checkpointer = opened.graph.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        yield Orchestrator(replace(ctx, policy=gate), checkpointer)


@SQLITE_ONLY
def test_a_run_held_by_a_policy_engine_error_over_mqtt_resumes_with_runs_retry(
    field: Field, tmp_path: Path
) -> None:
    plan = ask(FORWARD)
    with broken_engine_over_mqtt(field, tmp_path, Settings()) as broken:
        view = broken.work(plan)
    assert view.status == "held" and view.outcome is None
    assert view.held is not None and view.held["kind"] == "policy_engine"
    assert field.ran() == 0  # failed closed: nothing went out
    code, out = invoke("status", plan)
    shown = " ".join(out.split())
    assert code == 0 and "held by a policy engine error" in shown, out
    assert f"runs retry {plan}" in shown, out

    code, out = invoke("runs", "retry", plan, "--as", "op-ola", *field.worker_args(max_soak=1))
    assert code == 0 and f"{plan}: completed" in out, out
    assert "twin clock" not in out, out  # planned in chat on the twin, executed over MQTT
    journals = field.journals()
    assert all(len(j) == 1 for j in journals.values()), journals
    assert set(field.installed().values()) == {NEW}
    with Store.open() as store:
        retried = store.audit.events(plan_id=plan, kinds=[EventKind.retry])
        assert [(e.actor, e.payload["attempts"]) for e in retried] == [("op-ola", 1)]
        assert store.audit.verify().ok


@SQLITE_ONLY
def test_the_worker_over_mqtt_retries_a_policy_engine_error_after_its_backoff(
    field: Field, tmp_path: Path
) -> None:
    plan = ask(FORWARD)
    fast = Settings(
        engine_retry_first=timedelta(seconds=1), engine_retry_most=timedelta(seconds=1.5)
    )

    def retry_at() -> datetime:
        with Store.open() as store:
            held = store.runs.for_plan(plan).detail["held"]
        return datetime.fromisoformat(held["retry_at"])

    with broken_engine_over_mqtt(field, tmp_path, fast) as broken:
        assert work_once(broken).outcomes == {plan: "held"}
        first = retry_at()
        assert work_once(broken).outcomes == {}  # not due yet: left alone
        pause_until(first)
        assert work_once(broken).outcomes == {plan: "held"}  # due, and the engine still fails
        second = retry_at()
        assert second - first >= timedelta(seconds=1.5)  # the wait grew
    assert field.ran() == 0

    # The engine works again: a worker before the retry is due still waits for it.
    code, out = invoke("worker", "--once", *field.worker_args(max_soak=1))
    assert code == 0 and "1 still held" in out and field.ran() == 0, out
    pause_until(second)
    code, out = invoke("worker", "--once", *field.worker_args(max_soak=1))
    assert code == 0 and "executed 1 run (1 completed)" in out, out
    journals = field.journals()
    assert all(len(j) == 1 for j in journals.values()), journals
    assert set(field.installed().values()) == {NEW}
    with Store.open() as store:
        resumed = events(store, plan, EventKind.resume)  # each retry takes the run up
        assert [e["kind"] for e in resumed] == ["policy_engine"] * 2
        assert [h["attempts"] for h in events(store, plan, EventKind.hold)] == [1, 2]
        assert store.audit.verify().ok


def pause_until(at: datetime) -> None:
    """Sleep until ``at`` (wall clock) has passed."""
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.05)
