"""Maintenance windows on field agents, over a real Mosquitto.

A command that reaches an agent outside the windows it carries is not started: the agent
keeps it in its own store, its effects journal stays empty and no report goes out, and it
starts when the next window opens, also after the agent was restarted meanwhile. After the
last window closed the agent reports the command expired and runs nothing.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _edge_support import CONTROL, Mosquitto, command, pump_fleet, wait_until

from fieldgate.commands import DeviceCommand, DeviceReport, ReportStatus, StartWindow
from fieldgate.edge import DeviceSpec, Gateway, LocalFleet
from fieldgate.store import Store

pytestmark = pytest.mark.mqtt

SITE = "tpa-04"
DEVICES = [f"tpa-04-pump-ctl-{n:02d}" for n in range(1, 3)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with pump_fleet(tmp_path / "control.db", SITE, len(DEVICES)) as opened:
        yield opened


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        yield broker
    finally:
        broker.stop()


def agents(store: Store, mosquitto: Mosquitto, tmp_path: Path, devices: list[str]) -> LocalFleet:
    specs = [DeviceSpec(device_id=d, site=SITE, installed={"pump-logic": "1.8.0"}) for d in devices]
    return LocalFleet(
        mosquitto.broker(),
        tmp_path / "agents",
        CONTROL.public_b64,
        specs,
        per_process=1,
        log_dir=tmp_path / "logs",
        enroll_in=store,
    )


def windowed(device_id: str, windows: list[StartWindow], plan_id: str) -> DeviceCommand:
    """A signed install that may start only inside ``windows``."""
    unsigned = command(device_id, plan_id=plan_id, key=None).model_copy(
        update={"windows": windows, "deadline": windows[-1].closes}
    )
    return unsigned.model_copy(update={"signature": CONTROL.sign(unsigned.signing_payload())})


def journal(tmp_path: Path, device_id: str) -> list[tuple[str, float]]:
    """The device's effects journal: command id and when it ran (wall clock)."""
    path = tmp_path / "agents" / f"{device_id}.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [(row[0], row[1]) for row in db.execute("SELECT command_id, at FROM effects")]


def reports(gateway: Gateway, command_id: str, seconds: float) -> list[DeviceReport]:
    found: list[DeviceReport] = []
    end = time.monotonic() + seconds
    while not found and time.monotonic() < end:
        found = [
            r
            for r in gateway.collect({command_id}, end - time.monotonic())
            if r.command_id == command_id
        ]
    return found


def test_an_agent_holds_a_command_outside_its_window_and_starts_it_when_the_next_opens(
    store: Store, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    device = DEVICES[0]
    now = datetime.now(UTC)
    closed = StartWindow(opens=now - timedelta(minutes=10), closes=now - timedelta(minutes=5))
    upcoming = StartWindow(opens=now + timedelta(seconds=8), closes=now + timedelta(minutes=5))
    cmd = windowed(device, [closed, upcoming], "pl-window-next")
    with Gateway(store, mosquitto.broker(), control_key=CONTROL.public_b64) as gw:
        with agents(store, mosquitto, tmp_path, [device]):
            wait_until(lambda: device in gw.online(), 20, "the device online")
            gw.send([cmd])
            # Delivered between its windows: nothing runs and nothing is reported.
            assert reports(gw, cmd.command_id, 2.0) == []
            assert journal(tmp_path, device) == []
        # The agent is stopped and started again while the command waits in its store.
        assert journal(tmp_path, device) == []
        with agents(store, mosquitto, tmp_path, [device]):
            (report,) = reports(gw, cmd.command_id, 30.0)
        assert report.status is ReportStatus.applied
        ((ran, at),) = journal(tmp_path, device)
        assert ran == cmd.command_id
        assert at >= upcoming.opens.timestamp()


def test_an_agent_reports_a_command_expired_once_its_last_window_closed(
    store: Store, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    device = DEVICES[1]
    now = datetime.now(UTC)
    closed = StartWindow(opens=now - timedelta(minutes=10), closes=now - timedelta(seconds=1))
    cmd = windowed(device, [closed], "pl-window-missed").model_copy(
        update={"deadline": now + timedelta(minutes=10)}
    )
    cmd = cmd.model_copy(update={"signature": CONTROL.sign(cmd.signing_payload())})
    with (
        Gateway(store, mosquitto.broker(), control_key=CONTROL.public_b64) as gw,
        agents(store, mosquitto, tmp_path, [device]),
    ):
        wait_until(lambda: device in gw.online(), 20, "the device online")
        gw.send([cmd])
        (report,) = reports(gw, cmd.command_id, 30.0)
    assert report.status is ReportStatus.expired
    assert "maintenance window closed" in report.reason
    assert report.installed["pump-logic"] == "1.8.0"
    assert journal(tmp_path, device) == []
