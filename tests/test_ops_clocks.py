"""Real clocks: on the command line and in the worker "now" is the wall clock; the twin's
virtual clock runs only inside simulated runs and is labelled wherever it is shown.

End to end through chat, approvals and the worker on the fleet twin, on SQLite and on
PostgreSQL, with the twin's clock days ahead of the wall clock (as a rollout that waited
for a maintenance window leaves it); and over real Mosquitto, where the run's clock is the
wall clock and nothing is labelled virtual.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fieldgate.audit import AuditEvent, EventKind
from fieldgate.cli import app
from fieldgate.cli._output import console
from fieldgate.graphs.compose import default_twin
from fieldgate.store import Store

runner = CliRunner()

HVAC = "Roll out hvac-controller 2.4.1 to muc-01"
"""24 HVAC controllers at muc-01; needs one safety approval, in maintenance windows."""
PUMP = "roll out pump-logic 1.9.0 to rtm-05"
"""60 pump controllers at rtm-05; allowed without approvals, schedule: now."""

AHEAD = timedelta(days=3, hours=2, minutes=10)
"""How far the twin's clock runs ahead of the wall clock when a test starts."""

WALL_SHOWN = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
"""A time as ``audit show`` prints the wall clock (virtual ones are labelled, to the minute)."""


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=stdin, catch_exceptions=False)
    return result.exit_code, result.output


def ask(request: str, actor: str = "eng-ana") -> tuple[str, str]:
    """Submit ``request`` through the chat; return the new plan id and what chat said."""
    code, out = invoke("chat", "--as", actor, "--yes", stdin=request + "\n")
    assert code == 0, out
    with Store.open() as store:
        return store.runs.list()[-1].plan_id, out


def wall() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def twin_ahead(initialised_db: str) -> datetime:
    """The stored twin with its clock :data:`AHEAD` of the wall clock; its reading."""
    with Store.open() as store:
        twin = default_twin(store)
        twin.advance(wall() + AHEAD)
        return twin.now


@pytest.fixture
def wide_console() -> Iterator[None]:
    """Tables one row to a line, so that a time is never folded across lines."""
    width = console.width
    console.width = 400
    yield
    console.width = width


def events_since(seq: int) -> list[AuditEvent]:
    with Store.open() as store:
        return [e for e in store.audit.events() if e.seq > seq]


def last_seq() -> int:
    with Store.open() as store:
        events = store.audit.events()
        return events[-1].seq if events else 0


def first(events: list[AuditEvent], kind: EventKind, key: str | None = None) -> AuditEvent:
    return next(e for e in events if e.kind is kind and (key is None or key in e.payload))


def test_audit_events_carry_wall_time_in_the_order_they_happened(
    twin_ahead: datetime, wide_console: None
) -> None:
    before, start = last_seq(), wall()
    plan, _ = ask(HVAC)
    for person in ("saf-lee",):
        assert invoke("keys", "init", "--as", person)[0] == 0
        assert invoke("keys", "enroll", person, "--as", getpass.getuser())[0] == 0
    code, out = invoke("approvals", "approve", plan, "--as", "saf-lee", "-m", "window checked")
    assert code == 0 and "queued for a worker" in out, out
    code, out = invoke("worker", "--once")
    assert code == 0 and f"{plan}: completed" in out, out
    end = wall()

    events = events_since(before)
    outside = [(e.seq, e.kind.value, e.at) for e in events if not start <= e.at <= end]
    assert outside == [], f"stamped outside the wall clock's [{start}, {end}]"
    assert [e.at for e in events] == sorted(e.at for e in events), "times follow the sequence"

    mine = [e for e in events if e.plan_id == plan]
    chain = [
        first(mine, EventKind.request),
        first(mine, EventKind.rationale, "rationale"),
        first(mine, EventKind.approval, "decision"),
        first(mine, EventKind.tool_call),
        first(mine, EventKind.device_report),
    ]
    assert [e.seq for e in chain] == sorted(e.seq for e in chain)
    assert [e.at for e in chain] == sorted(e.at for e in chain), [
        (e.kind.value, e.at) for e in chain
    ]

    # The simulated run's own times are the twin's, in the payload.
    simulated = [e for e in mine if e.kind in (EventKind.tool_call, EventKind.device_report)]
    assert simulated and all(e.virtual_at() is not None for e in simulated)
    assert all(e.run_time() >= twin_ahead for e in simulated)
    assert all(e.run_time() - e.at > AHEAD - timedelta(minutes=5) for e in simulated)

    code, out = invoke("audit", "show", plan, "--limit", "0")
    assert code == 0, out
    assert "time (UTC, wall clock)" in out
    assert re.search(r"virtual \d{4}-\d\d-\d\d \d\d:\d\d UTC \(\+3d \d\d:\d\d\)", out), out
    shown = [datetime.fromisoformat(t).replace(tzinfo=UTC) for t in WALL_SHOWN.findall(out)]
    assert shown and all(start - timedelta(seconds=1) <= t <= end for t in shown), out


def test_a_schedule_now_plan_starts_now_by_the_wall_clock(twin_ahead: datetime) -> None:
    start = wall()
    plan, out = ask(PUMP)
    end = wall()
    assert "schedule: now" in out and "approved, queued for a worker" in out, out
    match = re.search(r"starts (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", out)
    assert match, out
    starts = datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC)
    assert start.replace(second=0, microsecond=0) <= starts <= end, out
    with Store.open() as store:
        run = store.runs.for_plan(plan)
        assert run.status == "queued"
    assert "twin clock" not in out, "nothing was simulated yet"


def test_device_reports_are_not_dated_in_the_future_and_the_twin_clock_is_labelled(
    twin_ahead: datetime, wide_console: None
) -> None:
    plan, _ = ask(PUMP)
    code, out = invoke("worker", "--once")
    assert code == 0 and f"{plan}: completed" in out, out
    assert "simulated on the twin (twin clock)" in out and "virtual 20" in out, out
    end = wall()

    with Store.open() as store:
        reports = store.audit.events(plan_id=plan, kinds=[EventKind.device_report])
    assert len(reports) == 60
    assert all(r.at <= end for r in reports), "a device report dated in the future"
    assert all((r.virtual_at() or end) > end for r in reports), "its twin time, in the payload"

    code, out = invoke("audit", "show", plan, "--kind", "device_report", "--limit", "0")
    assert code == 0, out
    shown = [datetime.fromisoformat(t).replace(tzinfo=UTC) for t in WALL_SHOWN.findall(out)]
    assert len(shown) == 60 and max(shown) <= end, out
    assert out.count("virtual 20") == 60

    code, out = invoke("chat", "--as", "eng-ana", stdin=f"/status {plan}\n")
    assert code == 0 and f"{plan}: completed" in out, out
    assert re.search(r"twin clock\): its last step at virtual .* \(\+3d \d\d:\d\d\)", out), out


@pytest.mark.mqtt
def test_over_mqtt_times_are_the_wall_clock_and_nothing_is_labelled_virtual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wide_console: None
) -> None:
    from _edge_support import clear_retained, shared_broker

    from fieldgate.cli._edge import edge_demo
    from fieldgate.plan import Selector

    broker = shared_broker()
    db = f"sqlite:///{tmp_path}/control.db"
    monkeypatch.setenv("FIELDGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FIELDGATE_DB", db)
    for name in ("FIELDGATE_ROSTER", "FIELDGATE_FREEZE", "FIELDGATE_MODEL", "FIELDGATE_USER"):
        monkeypatch.delenv(name, raising=False)
    assert invoke("init", "--db", db)[0] == 0
    before, start = last_seq(), wall()
    with (
        edge_demo(
            db, tmp_path / "agents", broker=broker, selector=Selector(sites=["lyon-02"])
        ) as opener,
        opener(db, "offline") as orchestrator,
    ):
        view = orchestrator.submit("Update air-quality-model to 1.2.0 at lyon-02", "eng-ana")
        assert view.status == "queued", view.values.get("reasons")
        view = orchestrator.work(view.thread_id)
        assert view.outcome == "completed", view.values.get("reasons")
        plan = view.plan_id
    clear_retained(broker)
    end = wall()

    events = [e for e in events_since(before) if e.plan_id == plan]
    assert any(e.kind is EventKind.device_report for e in events)
    assert all(start <= e.at <= end for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert all(e.virtual_at() is None for e in events), "no virtual clock over MQTT"
    code, out = invoke("audit", "show", plan, "--limit", "0")
    assert code == 0 and "virtual" not in out, out
    shown = [datetime.fromisoformat(t).replace(tzinfo=UTC) for t in WALL_SHOWN.findall(out)]
    assert shown and all(start - timedelta(seconds=1) <= t <= end for t in shown)
