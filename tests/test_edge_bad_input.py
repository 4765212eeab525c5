"""Bad input on the wire, against the real broker and a real agent process.

Malformed payloads, unknown device ids, commands addressed to another device, replayed
old commands, unsigned or wrongly signed commands, wrong digests: each is rejected with
a reason report, never applied, and the agent (and the gateway) keep running.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from _edge_support import (
    CONTROL,
    INTRUDER,
    clear_retained,
    command,
    device_key,
    enroll,
    publish,
    raw_client,
    shared_broker,
    signed,
    state_key,
    wait_until,
)

from fieldgate.commands import DeviceReport, Health, HybridTimestamp, ReportStatus
from fieldgate.edge import (
    REFUSED_PREFIX,
    Broker,
    Channel,
    DeviceSpec,
    Gateway,
    HelloWatcher,
    LocalFleet,
    encode,
)
from fieldgate.edge._wire import Hello
from fieldgate.fleet import FleetInventory
from fieldgate.store import Store

pytestmark = pytest.mark.mqtt

SITE = "rtm-05"
A, B, C = "rtm-05-pump-ctl-01", "rtm-05-pump-ctl-02", "rtm-05-pump-ctl-03"
"""A and B run as agents; C is in the fleet but no agent runs it."""


def inventory() -> FleetInventory:
    return FleetInventory.model_validate(
        {
            "sites": [{"id": SITE, "region": "eu-west", "timezone": "Europe/Amsterdam"}],
            "generate": [
                {
                    "sites": [SITE],
                    "class": "pump-ctl",
                    "per_site": 3,
                    "arch": "arm64",
                    "memory_mb": 512,
                    "installed": {"edge-runtime": "3.3.1", "pump-logic": "1.8.0"},
                }
            ],
        }
    )


class ReportTap:
    """Everything devices report, as a plain subscriber sees it."""

    def __init__(self, broker: Broker) -> None:
        self.reports: list[DeviceReport] = []
        self._lock = threading.Lock()
        self.client = raw_client(broker)
        self.client.on_message = self._on_message
        self.client.subscribe(broker.every(Channel.report), 1)
        time.sleep(0.2)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            report = DeviceReport.model_validate_json(message.payload)
        except ValueError:
            return
        with self._lock:
            self.reports.append(report)

    def about(self, command_id: str) -> list[DeviceReport]:
        with self._lock:
            return [r for r in self.reports if r.command_id.endswith(command_id)]

    def refusals(self, device_id: str) -> list[DeviceReport]:
        with self._lock:
            return [
                r
                for r in self.reports
                if r.device_id == device_id and r.command_id.startswith(REFUSED_PREFIX)
            ]

    def wait_for(self, what: str, predicate: Any, timeout: float = 15.0) -> list[DeviceReport]:
        found: list[DeviceReport] = []

        def seen() -> bool:
            nonlocal found
            with self._lock:
                found = [r for r in self.reports if predicate(r)]
            return bool(found)

        wait_until(seen, timeout, what)
        return found


@dataclass
class Edge:
    broker: Broker
    store: Store
    gateway: Gateway
    fleet: LocalFleet
    tap: ReportTap
    raw: mqtt.Client
    state: Path

    def topic(self, device_id: str, channel: Channel = Channel.cmd) -> str:
        return self.broker.topic(SITE, device_id, channel)

    def effects(self, device_id: str) -> list[str]:
        """Command ids of the installs the device's own store says it carried out."""
        path = self.state / f"{device_id}.sqlite"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return [row[0] for row in db.execute("SELECT command_id FROM effects ORDER BY seq")]

    def agent_running(self) -> bool:
        return self.fleet.alive() == [0]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    broker = shared_broker()
    tmp = tmp_path_factory.mktemp("edge-bad-input")
    store = Store.open(f"sqlite:///{tmp}/control.db")
    store.fleet.import_inventory(inventory(), source="test", actor="test")
    devices = [
        DeviceSpec(device_id=d, site=SITE, installed={"pump-logic": "1.8.0"}) for d in (A, B)
    ]
    fleet = LocalFleet(
        broker,
        tmp / "agents",
        CONTROL.public_b64,
        devices,
        per_process=2,
        log_dir=tmp / "logs",
        enroll_in=store,
    )
    enroll(store, {C: device_key(C)})  # no agent runs C: the tests speak for it
    with fleet, HelloWatcher(broker) as watcher:
        assert watcher.wait([A, B], timeout=30), "agents did not come online"
        gateway = Gateway(
            store, broker, control_key=CONTROL.public_b64, client_id=f"{broker.topic_root}-gw"
        ).start()
        tap = ReportTap(broker)
        raw = raw_client(broker)
        try:
            yield Edge(broker, store, gateway, fleet, tap, raw, tmp / "agents")
        finally:
            gateway.close()
            for client in (tap.client, raw):
                client.disconnect()
                client.loop_stop()
    clear_retained(broker)
    store.close()


def refused(edge: Edge, device_id: str, payload: bytes, reason: str) -> DeviceReport:
    """Publish ``payload`` on the device's cmd topic; return the device's refusal."""
    before = len(edge.tap.refusals(device_id))
    publish(edge.raw, edge.topic(device_id), payload)
    wait_until(lambda: len(edge.tap.refusals(device_id)) > before, 15, f"a refusal ({reason})")
    report = edge.tap.refusals(device_id)[-1]
    assert report.status is ReportStatus.rejected
    assert reason in report.reason, report.reason
    return report


def gateway_filed(edge: Edge, reason: str, source: str = "gateway") -> None:
    wait_until(
        lambda: any(reason in r.reason and r.source == source for r in edge.gateway.rejections()),
        15,
        f"the gateway to file {reason!r}",
    )


# --------------------------------------------------------------------------- device side


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed: the payload is not JSON"),
        (b'{"command_id": "cmd-0", "action": "install"}', "malformed"),
        (b'"a string"', "malformed: command"),
        (b"\x00" * (65 * 1024), "malformed: 66560 bytes"),
    ],
)
def test_malformed_commands_are_refused_and_the_agent_keeps_running(
    edge: Edge, payload: bytes, reason: str
) -> None:
    refused(edge, A, payload, reason)
    gateway_filed(edge, reason, source="device")
    assert edge.effects(A) == []
    assert edge.agent_running()


def test_unsigned_commands_are_refused_and_never_applied(edge: Edge) -> None:
    cmd = command(A, plan_id="pl-unsigned", key=None)
    report = refused(edge, A, encode(cmd), "unsigned")
    assert report.command_id == REFUSED_PREFIX + cmd.command_id
    assert cmd.command_id not in edge.effects(A)
    assert edge.agent_running()


def test_commands_signed_by_another_key_are_refused_and_never_applied(edge: Edge) -> None:
    forged = command(A, plan_id="pl-forged", key=INTRUDER)
    refused(edge, A, encode(forged), "bad signature")
    tampered = command(A, plan_id="pl-tampered").model_copy(update={"version": "6.6.6"})
    refused(edge, A, encode(tampered), "bad signature")
    assert not {forged.command_id, tampered.command_id} & set(edge.effects(A))
    gateway_filed(edge, "bad signature", source="device")
    assert edge.agent_running()


def test_a_command_addressed_to_another_device_is_refused(edge: Edge) -> None:
    cmd = command(B, plan_id="pl-elsewhere")
    report = refused(edge, A, encode(cmd), f"addressed to device {B!r}")
    assert report.device_id == A
    assert edge.effects(A) == [] and cmd.command_id not in edge.effects(B)
    assert edge.agent_running()


def test_a_repeated_command_id_returns_the_stored_result_and_applies_once(edge: Edge) -> None:
    cmd = command(B, plan_id="pl-repeat")
    sent = edge.gateway.send([cmd])
    assert sent.accepted == [cmd.command_id]
    [first] = [
        r for r in edge.gateway.collect({cmd.command_id}, 15) if r.command_id == cmd.command_id
    ]
    assert first.status is ReportStatus.applied
    for _ in range(3):
        publish(edge.raw, edge.topic(B), encode(cmd))
    wait_until(lambda: len(edge.tap.about(cmd.command_id)) >= 5, 15, "the repeated reports")
    assert {r.model_dump_json() for r in edge.tap.about(cmd.command_id)} == {
        first.model_dump_json()
    }
    assert edge.effects(B).count(cmd.command_id) == 1
    again = edge.gateway.send([cmd])
    assert again.duplicates == {cmd.command_id: first}


def test_an_old_command_replayed_after_a_newer_one_is_rejected(edge: Edge) -> None:
    now = datetime.now(UTC)
    captured = command(
        B,
        "edge-runtime",
        "3.4.0",
        plan_id="pl-captured",
        issued_at=now - timedelta(minutes=30),
        deadline=timedelta(hours=2),
    )
    newer = command(B, "edge-runtime", "3.5.0", plan_id="pl-newer", issued_at=now)
    edge.gateway.send([newer])
    edge.gateway.collect({newer.command_id}, 15)
    publish(edge.raw, edge.topic(B), encode(captured))
    [report] = edge.tap.wait_for(
        "the replay's rejection", lambda r: r.command_id == captured.command_id
    )
    assert report.status is ReportStatus.rejected
    assert report.reason.startswith("replayed")
    assert captured.command_id not in edge.effects(B)
    # The report answers no command the gateway sent: filed, not ingested.
    gateway_filed(edge, f"report for {captured.command_id}, a command the control plane never")
    assert edge.gateway.telemetry(B)["installed"]["edge-runtime"] == "3.5.0"


def test_a_command_replayed_after_its_deadline_expires(edge: Edge) -> None:
    stale = command(
        A,
        plan_id="pl-expired",
        issued_at=datetime.now(UTC) - timedelta(hours=2),
        deadline=timedelta(hours=1),
    )
    publish(edge.raw, edge.topic(A), encode(stale))
    [report] = edge.tap.wait_for("the expiry", lambda r: r.command_id == stale.command_id)
    assert report.status is ReportStatus.expired
    assert stale.command_id not in edge.effects(A)


def test_a_wrong_artifact_digest_is_rejected_before_anything_is_installed(edge: Edge) -> None:
    cmd = command(A, "edge-runtime", "3.9.0", plan_id="pl-digest", digest="sha256:" + "ab" * 32)
    edge.gateway.send([cmd])
    reports = edge.gateway.collect({cmd.command_id}, 15)
    [report] = [r for r in reports if r.command_id == cmd.command_id]
    assert report.status is ReportStatus.rejected
    assert "digest mismatch" in report.reason
    assert cmd.command_id not in edge.effects(A)
    assert edge.gateway.telemetry(A)["installed"].get("edge-runtime") != "3.9.0"


# --------------------------------------------------------------------------- control-plane side


def test_commands_for_unknown_devices_are_not_published(edge: Edge) -> None:
    ghost = command("rtm-05-ghost-99", plan_id="pl-ghost")
    result = edge.gateway.send([ghost])
    assert result.unknown == [ghost.command_id]
    assert ghost.command_id not in edge.gateway.ledger()


def test_the_gateway_refuses_to_publish_an_unsigned_command(edge: Edge) -> None:
    from fieldgate.edge import CommandUnsigned

    with pytest.raises(CommandUnsigned):
        edge.gateway.send([command(C, plan_id="pl-gw-unsigned", key=INTRUDER)])
    assert command(C, plan_id="pl-gw-unsigned").command_id not in edge.gateway.ledger()


def fake_report(device_id: str, command_id: str, wall_ms: int = 1) -> DeviceReport:
    return DeviceReport(
        command_id=command_id,
        device_id=device_id,
        status=ReportStatus.applied,
        installed={"pump-logic": "9.9.9"},
        health=Health(ok=True),
        hlc=HybridTimestamp(wall_ms=wall_ms, node=device_id),
    )


def test_the_gateway_files_bad_reports_and_hellos_and_keeps_ingesting(edge: Edge) -> None:
    broker = edge.broker
    sent = command(C, plan_id="pl-gw-input")
    edge.gateway.send([sent])
    cases = [
        (edge.topic(C, Channel.report), b"{garbage", "malformed report"),
        (
            broker.topic(SITE, "rtm-05-ghost-01", Channel.report),
            encode(fake_report("rtm-05-ghost-01", sent.command_id)),
            "unknown device 'rtm-05-ghost-01'",
        ),
        (
            broker.topic(SITE, "rtm-05-ghost-02", Channel.hello),
            encode(Hello(device_id="rtm-05-ghost-02", site=SITE, online=True)),
            "unknown device 'rtm-05-ghost-02'",
        ),
        (
            edge.topic(C, Channel.report),
            encode(fake_report(A, sent.command_id)),
            f"speaks for {SITE}/{A}",
        ),
        (
            broker.topic("lyon-02", C, Channel.report),
            encode(fake_report(C, sent.command_id)),
            f"device {C} is at site {SITE!r}, not 'lyon-02'",
        ),
        (
            edge.topic(A, Channel.report),
            encode(signed(fake_report(A, sent.command_id), state_key(edge.state, A))),
            f"report for {sent.command_id}, a command sent to {C}",
        ),
        (
            edge.topic(C, Channel.report),
            encode(signed(fake_report(C, "cmd-" + "0" * 32), device_key(C))),
            "a command the control plane never sent",
        ),
    ]
    for topic, payload, _ in cases:
        publish(edge.raw, topic, payload)
    for _, _, reason in cases:
        gateway_filed(edge, reason)
    assert sent.command_id in edge.gateway.outstanding()
    assert edge.store.fleet.device(C).installed["pump-logic"] == "1.8.0"
    # The gateway still ingests: C's real answer arrives and counts once.
    answer = signed(fake_report(C, sent.command_id, wall_ms=int(time.time() * 1000)), device_key(C))
    publish(edge.raw, edge.topic(C, Channel.report), encode(answer))
    publish(edge.raw, edge.topic(C, Channel.report), encode(answer))
    reports = edge.gateway.collect({sent.command_id}, 15)
    assert [r for r in reports if r.command_id == sent.command_id] == [answer]
    assert edge.store.fleet.device(C).installed["pump-logic"] == "9.9.9"
    events = [e for e in edge.store.audit.events() if "rejected" in e.payload]
    assert len(events) >= len(cases)
