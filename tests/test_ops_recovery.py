"""Crash recovery and a record that matches the devices.

A worker can die anywhere: after a step's writes were saved but before the checkpoint
after it, in the middle of a step whose device reports were already audited, or after a
batch of commands went out that the checkpoint does not know of. Whatever the point, the
next worker takes the run up, nothing is audited twice, and every device that changed
is on the record and goes back in a rollback. Over MQTT, a stop is acknowledged
mid-soak and what the canary did is shown.

End to end on the fleet twin (SQLite and PostgreSQL) and over a real Mosquitto to field
agent processes; the crashes are real exceptions at the exact point, the soak in
``test_ops_soak.py`` kills real worker processes with -9.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _edge_support import Mosquitto, wait_until
from _scenario_driver import open_run
from langgraph.checkpoint.base import BaseCheckpointSaver
from test_edge_rollout import MODULE, NEW, OLD, SITE, scenario
from test_ops_freeze_stop import ask, installs_by_device, invoke, versions

from fieldgate.audit import EventKind
from fieldgate.commands import Action, DeviceCommand
from fieldgate.edge import DeviceSpec, Gateway, HelloWatcher, LocalFleet
from fieldgate.graphs.compose import default_twin, open_orchestrator
from fieldgate.graphs.runner import Orchestrator
from fieldgate.runtime import Settings
from fieldgate.store import Store
from fieldgate.transport import Dispatched, MqttTransport, TwinTransport
from fieldgate.twin import FleetTwin


class WorkerDied(Exception):
    """Stands for a worker killed at this exact point."""


def duplicated_events(store: Store, plan: str) -> list[str]:
    """Audit events of ``plan`` that say the same thing twice: a device report of one
    command, the run's end, a hold or rollback of the same step."""
    seen: Counter[tuple[str, str]] = Counter()
    for event in store.audit.events(plan_id=plan):
        if event.kind == EventKind.device_report:
            seen[("device_report", str(event.payload.get("command_id")))] += 1
        elif event.kind in (EventKind.done, EventKind.rollback, EventKind.abort):
            seen[(str(event.kind), "")] += 1
    return [f"{kind} {what} ×{n}" for (kind, what), n in seen.items() if n > 1]


@contextmanager
def worker_orchestrator(
    transport: Callable[[FleetTwin], TwinTransport] | None = None,
) -> Iterator[Orchestrator]:
    """A worker's orchestrator on the configured database, its twin transport wrapped."""
    with open_orchestrator() as orchestrator:
        if transport is not None:
            twin = orchestrator.ctx.transport
            assert isinstance(twin, TwinTransport)
            checkpointer = orchestrator.graph.checkpointer
            assert isinstance(checkpointer, BaseCheckpointSaver)
            ctx = dataclasses.replace(orchestrator.ctx, transport=transport(twin.twin))
            orchestrator = Orchestrator(ctx, checkpointer)
        yield orchestrator


def test_a_step_saved_without_its_checkpoint_is_taken_up_by_the_next_worker(
    initialised_db: str,
) -> None:
    """The executor's first step committed (its writes saved), then the worker died before
    the checkpoint after it: the run showed no next node and sat ``executing`` forever."""
    plan = ask()
    with open_orchestrator() as orchestrator:
        checkpointer = orchestrator.graph.checkpointer
        assert isinstance(checkpointer, BaseCheckpointSaver)
        put, put_writes = checkpointer.put, checkpointer.put_writes
        armed = []

        def saved_writes(*args: Any, **kwargs: Any) -> None:
            put_writes(*args, **kwargs)
            armed.append(True)

        def dies(*args: Any, **kwargs: Any) -> Any:
            if armed:
                raise WorkerDied("killed before the checkpoint")
            return put(*args, **kwargs)

        checkpointer.put_writes = saved_writes  # type: ignore[method-assign]
        checkpointer.put = dies  # type: ignore[method-assign]
        with pytest.raises(WorkerDied):
            orchestrator.work(plan)
    with open_orchestrator() as orchestrator, Store.open() as store:
        view = orchestrator.view(plan)
        assert view.next == () and view.outcome is None  # the state the worker skipped
        assert store.runs.for_plan(plan).status == "executing"

    code, out = invoke("worker", "--once")
    assert code == 0 and "executed 1 run (1 completed)" in out, out
    with Store.open() as store:
        assert store.runs.for_plan(plan).outcome == "completed"
        assert versions(store) == {"1.9.0": 60}
        assert set(installs_by_device(default_twin(store)).values()) == {1}
        assert duplicated_events(store, plan) == []
        assert store.audit.verify().ok


def test_a_run_killed_between_its_last_step_and_its_report_is_closed_by_the_next_worker(
    initialised_db: str,
) -> None:
    """The executor's last step was checkpointed with the run's outcome, then the worker died
    before ``report`` ran: the run kept status ``executing`` while every worker read its
    outcome from the checkpoint, said "completed" and skipped it (found by the kill soak)."""
    plan = ask()
    with open_orchestrator() as orchestrator:
        config = orchestrator.config(plan)
        orchestrator.graph.invoke(
            None,
            config,
            context=orchestrator.ctx,
            durability="sync",
            interrupt_before=["report"],
        )
    with open_orchestrator() as orchestrator, Store.open() as store:
        view = orchestrator.view(plan)
        assert view.outcome == "completed" and view.next == ("report",)
        assert store.runs.for_plan(plan).status == "executing"

    code, out = invoke("worker", "--once")
    assert code == 0 and "executed 1 run (1 completed)" in out, out
    with Store.open() as store:
        run = store.runs.for_plan(plan)
        assert (run.status, run.outcome) == ("done", "completed")
        assert duplicated_events(store, plan) == []
        assert store.audit.verify().ok


class _DiesAfterIngest(TwinTransport):
    """Dies at the first telemetry read: the canary's reports are audited by then, the
    checkpoint of the step does not exist yet."""

    died = False

    def telemetry(self, device_id: str) -> dict[str, Any]:
        if not _DiesAfterIngest.died:
            _DiesAfterIngest.died = True
            raise WorkerDied("killed after the canary's reports were audited")
        return super().telemetry(device_id)


def test_a_step_replayed_after_a_crash_audits_every_device_report_once(
    initialised_db: str,
) -> None:
    plan = ask()
    _DiesAfterIngest.died = False
    with worker_orchestrator(_DiesAfterIngest) as orchestrator, pytest.raises(WorkerDied):
        orchestrator.work(plan)
    with Store.open() as store:
        reports = store.audit.events(plan_id=plan, kinds=[EventKind.device_report])
        assert reports  # the canary's reports were audited before the worker died
        calls = len(store.audit.events(plan_id=plan, kinds=[EventKind.tool_call]))

    code, out = invoke("worker", "--once")
    assert code == 0 and "executed 1 run (1 completed)" in out, out
    with Store.open() as store:
        assert duplicated_events(store, plan) == []
        applied = [
            e.payload["command_id"]
            for e in store.audit.events(plan_id=plan, kinds=[EventKind.device_report])
        ]
        assert len(applied) == 60 == len(set(applied))
        # The replayed step's own call was audited once too (then the run went on).
        replayed = store.audit.events(plan_id=plan, kinds=[EventKind.tool_call])[: calls + 1]
        assert [e.payload["args"]["wave"] for e in replayed] == [0] * calls + [1]
        assert store.audit.verify().ok


class _DiesMidWave(TwinTransport):
    """Dies right after the second batch of wave 2 went out: the first batch reported, the
    second is in flight, and the checkpoint still says wave 2 touched nobody."""

    batches = 0
    in_flight: list[str] = []

    def dispatch(self, commands: Sequence[DeviceCommand], wave: int) -> Dispatched:
        result = super().dispatch(commands, wave)
        if wave == 1:
            _DiesMidWave.batches += 1
            if _DiesMidWave.batches == 2:
                _DiesMidWave.in_flight = sorted(c.device_id for c in commands)
                raise WorkerDied("killed between two batches of wave 2")
        return result


def test_devices_changed_in_a_step_lost_to_a_crash_are_rolled_back_on_abort(
    initialised_db: str,
) -> None:
    plan = ask()
    _DiesMidWave.batches = 0
    with worker_orchestrator(_DiesMidWave) as orchestrator, pytest.raises(WorkerDied):
        orchestrator.work(plan)
    with Store.open() as store:
        assert versions(store).get("1.9.0", 0) > 3  # the canary and wave 2's first batch
    assert invoke("stop", plan, "--reason", "wrong build", "--as", "op-ola")[0] == 0
    code, out = invoke("worker", "--once")
    assert code == 0 and f"{plan}: held by the kill switch" in out, out
    in_flight = _DiesMidWave.in_flight
    assert f"state not known yet of {len(in_flight)} device(s)" in " ".join(out.split()), out
    with Store.open() as store:
        held = store.runs.for_plan(plan)
        assert held.status == "held"
        touched = default_twin(store).touched()
    with worker_orchestrator() as orchestrator:
        execution = orchestrator.view(plan).values["execution"]

    code, out = invoke("stop", "--abort", plan, "--reason", "wrong build", "--as", "op-ola")
    assert code == 0, out
    code, out = invoke("worker", "--once")
    assert code == 0 and f"{plan}: aborted" in out, out
    with Store.open() as store:
        twin = default_twin(store)
        rolled = Counter(e.device_id for e in twin.effects() if e.action is Action.rollback)
        assert set(rolled) == touched and set(rolled.values()) == {1}
        assert versions(store) == {"1.8.0": 60}
        assert duplicated_events(store, plan) == []
        assert store.audit.verify().ok
    # While it was held, the record said what the devices did: the lost batch included.
    assert set(execution["touched"]) == touched
    recorded = sum(len(w["applied"]) + len(w["failed"]) for w in execution["waves"])
    assert recorded == len(touched) - len(in_flight)
    assert held.detail.get("unknown") == in_flight


# --------------------------------------------------------------------------- over MQTT


@pytest.mark.mqtt
def test_a_stop_over_mqtt_holds_mid_soak_and_the_record_shows_the_canary_changed(
    tmp_path: Path,
) -> None:
    """The canary installs, the soak runs in real time, the operator pulls the switch: the
    run holds within a second or two, not at the soak's end, and its record says the
    canary is on the new version (as the devices do); the abort takes it back."""
    devices, soak = 4, 30.0
    broker = Mosquitto(tmp_path / "broker").start()
    settings = Settings(wave_deadline=timedelta(seconds=30), max_soak=timedelta(seconds=soak))
    with ExitStack() as stack:
        stack.callback(broker.stop)
        world, orchestrator = stack.enter_context(
            open_run(scenario(devices), f"sqlite:///{tmp_path}/control.db", settings=settings)
        )
        ids = [d.id for d in world.store.fleet.devices()]
        specs = [
            DeviceSpec(device_id=d, site=SITE, installed={"edge-runtime": "3.4.0", MODULE: OLD})
            for d in ids
        ]
        fleet = LocalFleet(
            broker.broker(),
            tmp_path / "agents",
            world.ctx.control_key.public_b64,
            specs,
            log_dir=tmp_path / "logs",
            enroll_in=world.store,
            replace_keys=True,  # the agents stand in for the world's simulated devices
        )
        fleet.start()
        stack.callback(fleet.stop)
        watcher = stack.enter_context(HelloWatcher(broker.broker()))
        assert watcher.wait(ids, timeout=60), f"offline: {set(ids) - watcher.online()}"
        gateway = Gateway(
            world.store, broker.broker(), control_key=world.ctx.control_key.public_b64
        ).start()
        stack.callback(gateway.close)
        orchestrator.ctx = dataclasses.replace(world.ctx, transport=MqttTransport(gateway))

        view = orchestrator.submit(
            world.scenario.request, world.scenario.actor, plan_id=world.plan_id
        )
        assert view.status == "queued", view.values.get("reasons")
        plan = view.plan_id
        pulled: list[float] = []

        def pull_during_the_soak() -> None:
            wait_until(
                lambda: any(s == "applied" for _, s in gateway.ledger().values()),
                30,
                "the canary applied",
            )
            time.sleep(1.0)  # the soak is under way
            world.store.stops.engage(plan, "op-ola", "smoke at the sensor hut")
            pulled.append(time.monotonic())

        puller = threading.Thread(target=pull_during_the_soak)
        puller.start()
        view = orchestrator.work(plan)
        held_after = time.monotonic() - pulled[0]
        puller.join()

        assert view.status == "held", view.values.get("reasons")
        assert held_after < 5.0, f"held {held_after:.1f}s after the stop (soak {soak:g}s)"
        wave = view.values["execution"]["waves"][0]
        canary = [cid for cid, (_, s) in gateway.ledger().items() if s == "applied"]
        assert len(wave["applied"]) == len(canary) >= 1, wave
        assert wave["status"] == "halted"
        run = world.store.runs.for_plan(plan)
        assert run.status == "held" and run.detail["unknown"] == []
        for device_id in wave["applied"]:
            assert gateway.telemetry(device_id)["installed"][MODULE] == NEW

        # stop --abort: the switch goes, the abort request stays, the canary goes back.
        world.store.runs.update(
            run.thread_id, run.status, detail={"abort": {"by": "op-ola", "reason": "smoke"}}
        )
        world.store.stops.release(plan, "op-ola", "aborting")
        view = orchestrator.work(plan)
        assert view.outcome == "aborted", view.values.get("reasons")
        assert view.values["execution"]["rollback_failed"] == []
        for device_id in wave["applied"]:
            assert gateway.telemetry(device_id)["installed"][MODULE] == OLD
        assert duplicated_events(world.store, plan) == []
        assert world.store.audit.verify().ok
