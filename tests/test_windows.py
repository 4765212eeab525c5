"""Maintenance windows enforced at delivery, and the fault kinds scenarios gained with them.

On the fleet twin and through the rollout graph: an install carries the windows it may start
in, a device never starts it outside them (it waits for the next one, or reports it expired
after the last), and the eval harness names a run where a device did. Then each new fault
kind: ``rollback_fails``, ``flapping`` and ``after_minutes``.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _scenario_driver import open_run, policy_engine, submit
from sqlalchemy.engine import Engine

from fieldgate.commands import (
    Action,
    DeviceCommand,
    ReportStatus,
    StartWindow,
    WindowState,
    command_id_for,
)
from fieldgate.evals import (
    FinishedRun,
    PolicyFacts,
    ViolationKind,
    World,
    detect_violations,
    finish,
)
from fieldgate.evals._scorers import score_plan
from fieldgate.fleet import Device, Site
from fieldgate.runtime import Settings
from fieldgate.scenario import ExpectPlan, Fault, FaultKind, Scenario, load_scenario
from fieldgate.store import open_engine
from fieldgate.twin import EffectPhase, FleetTwin

START = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)  # a Saturday
DIGEST = "sha256:" + "0" * 64
SUITES = Path(__file__).resolve().parents[1] / "evals" / "suites"
NEXT_WINDOW = SUITES / "windows" / "offline-through-window-next-window.yaml"
LATE_DEVICE = "rtm-05-pump-ctl-07"


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def site() -> Site:
    return Site.model_validate(
        {
            "id": "rtm-05",
            "region": "eu-west",
            "timezone": "Europe/Amsterdam",
            "maintenance": ["daily 01:00-04:00"],
        }
    )


def devices(count: int) -> list[Device]:
    return [
        Device.model_validate(
            {
                "id": f"rtm-05-pump-{n:02d}",
                "site": "rtm-05",
                "class": "pump-ctl",
                "arch": "arm64",
                "memory_mb": 512,
                "installed": {"pump-logic": "1.8.0"},
            }
        )
        for n in range(1, count + 1)
    ]


DEVICE = "rtm-05-pump-01"

# Amsterdam is UTC+1 in November: the nightly window 01:00-04:00 is 00:00-03:00 UTC.
FIRST = StartWindow(opens=START + hours(14), closes=START + hours(17))
SECOND = StartWindow(opens=START + hours(38), closes=START + hours(41))


def command(
    device_id: str = DEVICE,
    action: Action = Action.install,
    *,
    version: str = "1.9.0",
    windows: list[StartWindow] | None = None,
    issued_at: datetime = START,
) -> DeviceCommand:
    deadline = windows[-1].closes if windows else issued_at + timedelta(days=1)
    return DeviceCommand(
        command_id=command_id_for("plan-w", 0, device_id, action),
        plan_id="plan-w",
        plan_hash="h" * 64,
        wave=0,
        device_id=device_id,
        action=action,
        module="pump-logic",
        version=version,
        digest=DIGEST,
        issued_at=issued_at,
        deadline=deadline,
        windows=windows,
    )


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    return open_engine(sqlite_url)


def new_twin(engine: Engine, count: int = 3, twin_id: str = "win") -> FleetTwin:
    return FleetTwin.create(engine, twin_id, [site()], devices(count), 7, START)


# --------------------------------------------------------------------------- the windows


def test_a_site_gives_its_next_windows_in_utc_read_in_its_own_time_zone() -> None:
    spans = site().upcoming_windows(START, 2)
    assert spans == [(FIRST.opens, FIRST.closes), (SECOND.opens, SECOND.closes)]
    # Inside a window, that window comes first.
    inside = site().upcoming_windows(FIRST.opens + hours(1), 1)
    assert inside == [(FIRST.opens, FIRST.closes)]
    # The window stays 01:00-04:00 local time on the night the clocks go back (25 October
    # 2026): it opens at 01:00 CEST and closes at 04:00 CET, four hours later.
    summer = Site.model_validate({**site().model_dump(), "maintenance": ["Sun 01:00-04:00"]})
    (opens, closes), (opens_after, _) = summer.upcoming_windows(
        datetime(2026, 10, 20, tzinfo=UTC), 2
    )
    assert (opens, closes) == (
        datetime(2026, 10, 24, 23, tzinfo=UTC),
        datetime(2026, 10, 25, 3, tzinfo=UTC),
    )
    assert opens_after == datetime(2026, 11, 1, 0, tzinfo=UTC)  # 01:00 CET


def test_a_window_says_open_waiting_or_missed() -> None:
    cmd = command(windows=[FIRST, SECOND])
    assert cmd.window_state(START) is WindowState.waiting
    assert cmd.window_state(FIRST.opens) is WindowState.open
    assert cmd.window_state(FIRST.closes) is WindowState.waiting
    assert cmd.next_opening(FIRST.closes) == SECOND.opens
    assert cmd.window_state(SECOND.closes) is WindowState.missed
    assert command().window_state(START + hours(100)) is WindowState.open


# --------------------------------------------------------------------------- the twin


def test_the_twin_starts_nothing_before_the_window_opens(engine: Engine) -> None:
    twin = new_twin(engine)
    cmd = command(windows=[FIRST])
    assert twin.dispatch([cmd], 0).accepted == [cmd.command_id]
    assert twin.advance(FIRST.opens - timedelta(minutes=1)) == []
    (effect,) = twin.effects(DEVICE)
    assert effect.phase is EffectPhase.queued and effect.started_at is None
    assert twin.next_event() == FIRST.opens
    reports = twin.advance(FIRST.opens + hours(1))
    assert [r.status for r in reports] == [ReportStatus.applied]
    (effect,) = twin.effects(DEVICE)
    assert effect.started_at == FIRST.opens
    assert effect.windows == [FIRST]
    assert twin.versions("pump-logic") == {"1.8.0": 2, "1.9.0": 1}


def test_offline_through_its_window_the_twin_waits_for_the_next_one(engine: Engine) -> None:
    twin = new_twin(engine)
    # Offline from the first window's opening until two hours after it closed.
    twin.advance(FIRST.opens)
    twin.add_faults([Fault(kind=FaultKind.offline, devices=[DEVICE], duration_minutes=300)])
    cmd = command(windows=[FIRST, SECOND], issued_at=FIRST.opens)
    assert twin.dispatch([cmd], 0).queued == [cmd.command_id]
    # Back at 05:00 UTC, after the window closed: nothing starts.
    assert twin.advance(FIRST.closes + hours(3)) == []
    assert twin.reachable(DEVICE)
    (effect,) = twin.effects(DEVICE)
    assert effect.started_at is None and effect.phase is EffectPhase.queued
    assert twin.versions("pump-logic") == {"1.8.0": 3}
    # A restarted worker loads the twin: the waiting command still waits for its window.
    twin = FleetTwin.load(engine, "win")
    assert twin.next_event() == SECOND.opens
    reports = twin.settle(24 * 60)
    assert [(r.device_id, r.status) for r in reports] == [(DEVICE, ReportStatus.applied)]
    (effect,) = twin.effects(DEVICE)
    assert effect.started_at == SECOND.opens


def test_back_after_its_last_window_the_device_reports_the_install_expired(
    engine: Engine,
) -> None:
    twin = new_twin(engine)
    twin.advance(FIRST.opens)
    twin.add_faults([Fault(kind=FaultKind.offline, devices=[DEVICE], duration_minutes=6 * 60)])
    cmd = command(windows=[FIRST], issued_at=FIRST.opens)
    twin.dispatch([cmd], 0)
    (report,) = twin.settle(24 * 60)
    assert report.status is ReportStatus.expired
    assert "maintenance window closed" in report.reason
    assert twin.versions("pump-logic") == {"1.8.0": 3}
    (effect,) = twin.effects(DEVICE)
    assert effect.version_after == "1.8.0"


def test_a_command_without_windows_runs_as_soon_as_the_device_is_back(engine: Engine) -> None:
    twin = new_twin(engine)
    twin.add_faults([Fault(kind=FaultKind.offline, devices=[DEVICE], duration_minutes=60)])
    twin.dispatch([command()], 0)
    (report,) = twin.settle(24 * 60)
    assert report.status is ReportStatus.applied
    (effect,) = twin.effects(DEVICE)
    assert effect.started_at == START + hours(1)


# --------------------------------------------------------------------------- through the graph


def _run_to_the_end(url: str, settings: Settings | None = None) -> tuple[World, FinishedRun]:
    scenario = load_scenario(NEXT_WINDOW)
    with open_run(scenario, url, settings=settings) as (world, orchestrator):
        view = submit(world, orchestrator)
        while view.status != "done":
            assert view.next, view.status
            view = orchestrator.work(view.thread_id)
        finished = finish(world, view, str(view.outcome))
        return world, finished


def test_through_the_graph_a_device_offline_through_its_window_installs_in_the_next(
    sqlite_url: str,
) -> None:
    world, finished = _run_to_the_end(sqlite_url)
    assert finished.outcome == "completed"
    rtm = world.scenario.fleet.site("rtm-05")
    effects = finished.effects
    installs = [e for e in effects if e.action is Action.install]
    assert len(installs) == 40
    for effect in installs:
        # Every install carries its site's window and the next one, and started inside one.
        assert effect.windows is not None and len(effect.windows) == 2
        opens, closes = effect.windows[0].opens, effect.windows[0].closes
        assert rtm.in_maintenance(opens) and not rtm.in_maintenance(closes)
        assert effect.started_at is not None and rtm.in_maintenance(effect.started_at)
    (late,) = [e for e in installs if e.device_id == LATE_DEVICE]
    # Dispatched in the first window, back at 06:00 UTC after it closed: it waited a day.
    assert late.windows is not None and late.started_at is not None
    assert late.dispatched_at < late.windows[0].closes < late.started_at
    assert late.started_at == late.windows[1].opens
    assert world.twin.versions("pump-logic") == {"1.9.0": 40}
    engine = policy_engine()
    assert detect_violations(finished, PolicyFacts.of(engine), engine) == []


def test_through_the_graph_one_window_per_command_makes_the_late_install_expire(
    sqlite_url: str,
) -> None:
    world, finished = _run_to_the_end(sqlite_url, Settings(command_windows=1))
    effects = finished.effects
    (late,) = [e for e in effects if e.device_id == LATE_DEVICE]
    assert late.status is ReportStatus.expired and late.windows is not None
    assert len(late.windows) == 1
    assert world.twin.versions("pump-logic") == {"1.8.0": 1, "1.9.0": 39}


def test_a_plan_scheduled_now_sends_commands_without_windows(sqlite_url: str) -> None:
    scenario = load_scenario(SUITES / "execution" / "offline-for-a-while.yaml")
    with open_run(scenario, sqlite_url) as (world, orchestrator):
        view = submit(world, orchestrator)
        while view.status != "done":
            view = orchestrator.work(view.thread_id)
        assert view.outcome == "completed"
        assert all(e.windows is None for e in world.twin.effects())


# --------------------------------------------------------------------------- the detector


def test_the_detector_flags_an_install_that_started_after_its_window_closed(
    sqlite_url: str,
) -> None:
    _, finished = _run_to_the_end(sqlite_url)
    engine = policy_engine()
    facts = PolicyFacts.of(engine)
    assert detect_violations(finished, facts, engine) == []
    # The run record as the old delivery made it: the late device came back at 06:00 UTC,
    # after its window closed, and installed at once.
    effects = finished.effects
    windows = next(e for e in effects if e.device_id == LATE_DEVICE).windows
    assert windows is not None
    back = windows[0].closes + hours(3)
    tampered = [
        e.model_copy(update={"started_at": back}) if e.device_id == LATE_DEVICE else e
        for e in effects
    ]
    found = detect_violations(dataclasses.replace(finished, effects=tampered), facts, engine)
    assert {v.kind for v in found} == {ViolationKind.command_outside_window}
    assert all(LATE_DEVICE in v.detail for v in found)
    assert len(found) == 2  # outside its command's windows, and outside the site's
    # Commands that carried no window at all (the old code): the site's schedule still
    # says the plan waited for windows.
    bare = [
        e.model_copy(update={"started_at": back, "windows": None})
        if e.device_id == LATE_DEVICE
        else e
        for e in effects
    ]
    found = detect_violations(dataclasses.replace(finished, effects=bare), facts, engine)
    assert [v.kind for v in found] == [ViolationKind.command_outside_window]
    assert "maintenance windows" in found[0].detail
    # A device that refused its install as expired started nothing.
    refused = [
        e.model_copy(update={"started_at": back, "status": ReportStatus.expired})
        if e.device_id == LATE_DEVICE
        else e
        for e in effects
    ]
    assert detect_violations(dataclasses.replace(finished, effects=refused), facts, engine) == []


# --------------------------------------------------------------------------- new fault kinds


def test_rollback_fails_leaves_the_version_the_device_has(engine: Engine) -> None:
    twin = new_twin(engine)
    twin.add_faults([Fault(kind=FaultKind.rollback_fails, wave=1)])
    twin.dispatch([command(d.id) for d in devices(3)], 0)
    assert {r.status for r in twin.settle()} == {ReportStatus.applied}
    back = [command(d.id, Action.rollback, version="1.8.0") for d in devices(3)]
    twin.dispatch(back, 0)
    reports = twin.settle()
    assert {r.status for r in reports} == {ReportStatus.failed}
    assert all(r.reason.startswith("rollback of pump-logic 1.8.0 failed") for r in reports)
    assert twin.versions("pump-logic") == {"1.9.0": 3}
    assert not any(twin.device(d.id).health.ok for d in devices(3))


def test_flapping_devices_go_offline_and_come_back_every_period(engine: Engine) -> None:
    twin = new_twin(engine)
    twin.add_faults(
        [Fault(kind=FaultKind.flapping, devices=[DEVICE], period_minutes=15, duration_minutes=60)]
    )
    seen = []
    for minute in (0, 14, 15, 29, 30, 45, 60, 75):
        twin.advance(START + timedelta(minutes=minute))
        seen.append(twin.reachable(DEVICE))
    assert seen == [False, False, True, True, False, True, True, True]
    # A command sent while it is off starts when it comes back.
    twin = new_twin(engine, twin_id="flap-2")
    twin.add_faults([Fault(kind=FaultKind.flapping, devices=[DEVICE], period_minutes=15)])
    cmd = command()
    assert twin.dispatch([cmd], 0).queued == [cmd.command_id]
    twin.settle()
    (effect,) = twin.effects(DEVICE)
    assert effect.started_at == START + timedelta(minutes=15)
    assert effect.status is ReportStatus.applied


def test_offline_after_minutes_starts_after_the_install_applied(engine: Engine) -> None:
    twin = new_twin(engine)
    twin.add_faults(
        [
            Fault(
                kind=FaultKind.offline,
                devices=[DEVICE],
                after_minutes=10,
                duration_minutes=120,
            )
        ]
    )
    assert twin.reachable(DEVICE)
    twin.dispatch([command()], 0)
    (report,) = twin.settle()
    assert report.status is ReportStatus.applied
    (effect,) = twin.effects(DEVICE)
    applied = effect.completed_at
    assert applied is not None
    twin.advance(applied + timedelta(minutes=9))
    assert twin.reachable(DEVICE)
    twin.advance(applied + timedelta(minutes=10))
    assert not twin.reachable(DEVICE)
    # The delayed fault survives a reload of the twin.
    twin = FleetTwin.load(engine, "win")
    assert not twin.reachable(DEVICE)
    twin.advance(applied + timedelta(minutes=130))
    assert twin.reachable(DEVICE)


def test_health_degrades_after_minutes_shows_after_the_soak_starts(engine: Engine) -> None:
    twin = new_twin(engine)
    twin.add_faults([Fault(kind=FaultKind.health_degrades, wave=1, count=1, after_minutes=5)])
    twin.dispatch([command(d.id) for d in devices(3)], 0)
    reports = twin.settle()
    # Every install reported healthy: the fault had not started.
    assert all(r.status is ReportStatus.applied and r.health.ok for r in reports)
    last = max(e.completed_at for e in twin.effects() if e.completed_at is not None)
    twin.advance(last + timedelta(minutes=30))
    sick = [d.id for d in devices(3) if not twin.telemetry(d.id)["health"]["ok"]]
    assert len(sick) == 1
    # A rollback cures it.
    twin.dispatch([command(sick[0], Action.rollback, version="1.8.0")], 0)
    twin.settle()
    assert twin.telemetry(sick[0])["health"]["ok"]


def test_the_scenario_model_takes_the_new_keys_and_refuses_what_does_not_fit() -> None:
    assert Fault(kind=FaultKind.flapping, wave=1, period_minutes=5).period_minutes == 5
    with pytest.raises(ValueError, match="period_minutes"):
        Fault(kind=FaultKind.flapping, wave=1)
    with pytest.raises(ValueError, match="period_minutes"):
        Fault(kind=FaultKind.offline, wave=1, period_minutes=5)
    for path in sorted(SUITES.rglob("*.yaml")):
        Scenario.model_validate(load_scenario(path).model_dump(by_alias=True))


def test_expect_plan_rollback_version_is_scored(sqlite_url: str) -> None:
    _, finished = _run_to_the_end(sqlite_url)
    (right,) = score_plan(ExpectPlan(rollback_version="1.8.0"), finished)
    (wrong,) = score_plan(ExpectPlan(rollback_version="1.7.0"), finished)
    assert right.passed and right.check == "plan.rollback_version"
    assert not wrong.passed and wrong.actual == "1.8.0"


def _drive_suite(name: str, url: str) -> tuple[World, FinishedRun]:
    scenario = load_scenario(next(SUITES.rglob(f"{name}.yaml")))
    with open_run(scenario, url) as (world, orchestrator):
        view = submit(world, orchestrator)
        while view.status != "done":
            view = orchestrator.work(view.thread_id)
        return world, finish(world, view, str(view.outcome))


def test_through_the_graph_a_rollback_that_fails_is_said_in_the_outcome(sqlite_url: str) -> None:
    world, finished = _drive_suite("rollback-fails-on-canary", sqlite_url)
    assert finished.outcome == "rolled_back"
    (reason,) = finished.reasons
    assert "the rollback was not confirmed on 3 device(s)" in reason
    rollbacks = [e for e in finished.effects if e.action is Action.rollback]
    assert len(rollbacks) == 3 and {e.status for e in rollbacks} == {ReportStatus.failed}
    # The canary that had installed still runs the new version, and the record says so.
    assert world.twin.versions("pump-logic") == {"1.8.0": 59, "1.9.0": 1}


def test_through_the_graph_a_canary_that_degrades_after_its_install_fails_the_gate(
    sqlite_url: str,
) -> None:
    world, finished = _drive_suite("degrade-after-soak-starts", sqlite_url)
    installs = [e for e in finished.effects if e.action is Action.install]
    # Every install reported healthy; the gate after the soak saw one device degraded.
    assert all(e.report is not None and e.report.health.ok for e in installs)
    assert finished.outcome == "rolled_back"
    assert world.twin.versions("pump-logic") == {"1.8.0": 60}
