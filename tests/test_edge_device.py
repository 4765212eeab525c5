"""A field device's checks and its own store, without a network: exactly once, signed,
digest-checked, replay-proof, and every outcome committed with its outbox report."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _edge_support import CONTROL, INTRUDER, command

from fieldgate.commands import Action, DeviceReport, ReportStatus
from fieldgate.edge import (
    REFUSED_PREFIX,
    DeviceStateInvalid,
    DeviceStore,
    FieldDevice,
    HybridClock,
    digest_of,
    sample_artifact,
)
from fieldgate.edge._wire import encode
from fieldgate.manifest import sample_digest

DEVICE = "rtm-05-pump-ctl-01"
SITE = "rtm-05"


@pytest.fixture
def device(tmp_path: Path) -> FieldDevice:
    store = DeviceStore.open(
        tmp_path,
        DEVICE,
        site=SITE,
        installed={"pump-logic": "1.8.0", "edge-runtime": "3.3.1"},
        control_key=CONTROL.public_b64,
    )
    return FieldDevice(store, CONTROL.public_b64)


def handle(device: FieldDevice, payload: bytes | object) -> DeviceReport:
    data = payload if isinstance(payload, bytes) else encode(payload)  # type: ignore[arg-type]
    report = device.handle(data).report
    assert report is not None, "the command waits for its window"
    return report


def test_sample_artifacts_have_the_sample_digest() -> None:
    assert digest_of(sample_artifact("pump-logic", "1.9.0")) == sample_digest("pump-logic", "1.9.0")


def test_a_signed_install_is_applied_once_and_a_repeat_returns_the_stored_report(
    device: FieldDevice,
) -> None:
    cmd = command(DEVICE)
    first = handle(device, cmd)
    assert first.status is ReportStatus.applied
    assert first.installed["pump-logic"] == "1.9.0"
    again = device.handle(encode(cmd))
    assert not again.applied_now
    assert again.report == first
    assert device.store.installed()["pump-logic"] == "1.9.0"
    assert [e.command_id for e in device.store.effects()] == [cmd.command_id]
    assert device.store.inbox()[cmd.command_id] == first


def test_every_report_waits_in_the_outbox_until_sent(device: FieldDevice) -> None:
    cmd = command(DEVICE)
    handled = device.handle(encode(cmd))
    device.handle(encode(cmd))
    outbox = device.store.outbox()
    # A repeat sends the stored report again without queueing it twice.
    assert len(outbox) == 1
    assert DeviceReport.model_validate_json(outbox[0][1]) == handled.report
    assert handled.outbox_seq is not None
    device.store.sent(handled.outbox_seq)
    assert device.store.outbox() == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not json", "malformed: the payload is not JSON"),
        (b"[1, 2, 3]", "malformed: command"),
        (b'{"command_id": "cmd-1"}', "malformed"),
        (b"x" * (70 * 1024), "malformed: 71680 bytes"),
    ],
)
def test_malformed_payloads_are_refused(device: FieldDevice, payload: bytes, reason: str) -> None:
    report = handle(device, payload)
    assert report.status is ReportStatus.rejected
    assert report.command_id.startswith(REFUSED_PREFIX)
    assert reason in report.reason
    assert device.store.effects() == []
    assert device.store.inbox() == {}


def test_unsigned_wrongly_signed_and_misaddressed_commands_are_refused_without_a_trace(
    device: FieldDevice,
) -> None:
    unsigned = command(DEVICE, key=None)
    forged = command(DEVICE, key=INTRUDER)
    tampered = command(DEVICE).model_copy(update={"version": "6.6.6"})
    elsewhere = command("rtm-05-pump-ctl-02")
    reasons = [handle(device, c).reason for c in (unsigned, forged, tampered, elsewhere)]
    assert reasons[0].startswith("unsigned")
    assert reasons[1].startswith("bad signature")
    assert reasons[2].startswith("bad signature")
    assert "addressed to device 'rtm-05-pump-ctl-02'" in reasons[3]
    assert device.store.effects() == []
    # Refusals are not recorded under the claimed id: the real command still runs.
    assert handle(device, command(DEVICE)).status is ReportStatus.applied


def test_a_digest_that_does_not_match_the_fetched_artifact_is_rejected(
    device: FieldDevice,
) -> None:
    cmd = command(DEVICE, digest="sha256:" + "0" * 64)
    report = handle(device, cmd)
    assert report.status is ReportStatus.rejected
    assert "digest mismatch" in report.reason
    assert report.command_id == cmd.command_id
    assert device.store.installed()["pump-logic"] == "1.8.0"
    assert device.store.effects() == []


def test_an_old_command_replayed_after_a_newer_one_is_rejected(device: FieldDevice) -> None:
    now = datetime.now(UTC)
    old = command(
        DEVICE,
        version="1.9.0",
        plan_id="pl-old",
        issued_at=now - timedelta(hours=1),
        deadline=timedelta(days=1),
    )
    new = command(DEVICE, version="2.0.0", plan_id="pl-new", issued_at=now)
    assert handle(device, new).status is ReportStatus.applied
    report = handle(device, old)
    assert report.status is ReportStatus.rejected
    assert report.reason.startswith("replayed")
    assert device.store.installed()["pump-logic"] == "2.0.0"
    assert [e.command_id for e in device.store.effects()] == [new.command_id]


def test_a_command_past_its_deadline_expires(device: FieldDevice) -> None:
    cmd = command(
        DEVICE, issued_at=datetime.now(UTC) - timedelta(hours=3), deadline=timedelta(hours=1)
    )
    report = handle(device, cmd)
    assert report.status is ReportStatus.expired
    assert device.store.effects() == []


def test_a_failing_install_keeps_the_old_version_and_reports_unhealthy(tmp_path: Path) -> None:
    store = DeviceStore.open(tmp_path, DEVICE, site=SITE, installed={"pump-logic": "1.8.0"})
    device = FieldDevice(store, CONTROL.public_b64, fail_installs=frozenset({"pump-logic@1.9.0"}))
    report = handle(device, command(DEVICE))
    assert report.status is ReportStatus.failed
    assert not report.health.ok
    assert report.installed["pump-logic"] == "1.8.0"
    back = handle(device, command(DEVICE, version="1.8.0", action=Action.rollback))
    assert back.status is ReportStatus.applied and back.health.ok


def test_reports_carry_a_clock_that_never_goes_back_across_restarts(tmp_path: Path) -> None:
    store = DeviceStore.open(tmp_path, DEVICE, site=SITE)
    first = FieldDevice(store, CONTROL.public_b64, physical_ms=lambda: 5_000)
    stamps = [handle(first, command(DEVICE, plan_id=f"p{i}")).hlc for i in range(3)]
    store.close()
    # The wall clock stepped back an hour while the device was down.
    reopened = FieldDevice(
        DeviceStore.open(tmp_path, DEVICE), CONTROL.public_b64, physical_ms=lambda: 1_000
    )
    stamps.append(handle(reopened, command(DEVICE, plan_id="p9")).hlc)
    keys = [s.key() for s in stamps]
    assert keys == sorted(keys) and len(set(keys)) == 4


def test_an_outcome_and_its_report_commit_together(tmp_path: Path) -> None:
    store = DeviceStore.open(tmp_path, DEVICE, site=SITE, installed={"pump-logic": "1.8.0"})
    device = FieldDevice(store, CONTROL.public_b64)
    cmd = command(DEVICE)
    device.handle(encode(cmd))
    with sqlite3.connect(store.path) as db:
        inbox = db.execute("SELECT count(*) FROM inbox").fetchone()[0]
        outbox = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        effects = db.execute("SELECT count(*) FROM effects").fetchone()[0]
        clock = json.loads(db.execute("SELECT value FROM identity WHERE key='clock'").fetchone()[0])
    assert (inbox, outbox, effects) == (1, 1, 1)
    assert tuple(clock) == device.clock.last


def test_the_state_is_pinned_to_its_device_site_and_control_key(tmp_path: Path) -> None:
    DeviceStore.open(tmp_path, DEVICE, site=SITE, control_key=CONTROL.public_b64).close()
    with pytest.raises(DeviceStateInvalid, match="trusts control key"):
        DeviceStore.open(tmp_path, DEVICE, control_key=INTRUDER.public_b64)
    with pytest.raises(DeviceStateInvalid, match="is at site"):
        DeviceStore.open(tmp_path, DEVICE, site="lyon-02")
    with pytest.raises(DeviceStateInvalid, match="needs its site"):
        DeviceStore.open(tmp_path, "other-device")
    rotated = DeviceStore.open(
        tmp_path, DEVICE, control_key=INTRUDER.public_b64, replace_control_key=True
    )
    assert rotated.control_key == INTRUDER.public_b64


def test_hybrid_clock_orders_local_and_remote_events() -> None:
    wall = [100]
    clock = HybridClock("a", physical=lambda: wall[0])
    assert clock.now().key() == (100, 0, "a")
    assert clock.now().key() == (100, 1, "a")
    # A remote reading ahead of the local wall clock pulls the clock forward.
    assert clock.observe(150, 3).key() == (150, 4, "a")
    wall[0] = 120
    assert clock.now().key() == (150, 5, "a")
    wall[0] = 200
    assert clock.now().key() == (200, 0, "a")
    # A remote reading absurdly far ahead is not adopted.
    assert clock.observe(10**12).wall_ms == 200
