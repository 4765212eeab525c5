"""Delivery through the faults field sites have, against real Mosquitto brokers.

Cut links, offline devices, brokers that restart or lose their state, reports that
arrive twice or out of order, TLS with passwords: commands still arrive exactly once,
reports still come back, and stale reports never overwrite newer state.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _edge_support import (
    CONTROL,
    LinkCutter,
    Mosquitto,
    clear_retained,
    command,
    device_key,
    enroll,
    publish,
    pump_fleet,
    raw_client,
    shared_broker,
    signed,
    wait_until,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fieldgate.commands import Action, DeviceReport, Health, HybridTimestamp, ReportStatus
from fieldgate.edge import (
    Broker,
    BrokerUnreachable,
    Channel,
    DeviceSpec,
    Gateway,
    HelloWatcher,
    LocalFleet,
    encode,
)
from fieldgate.edge._tables import EdgeTable
from fieldgate.store import Store
from fieldgate.transport import open_mqtt_transport

pytestmark = pytest.mark.mqtt

SITE = "tpa-04"
DEVICES = [f"tpa-04-pump-ctl-{n:02d}" for n in range(1, 5)]


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


def agents(
    store: Store,
    broker: Broker,
    tmp_path: Path,
    devices: list[str],
    *,
    apply_seconds: float = 0.0,
    replace_keys: bool = False,
) -> LocalFleet:
    specs = [DeviceSpec(device_id=d, site=SITE, installed={"pump-logic": "1.8.0"}) for d in devices]
    return LocalFleet(
        broker,
        tmp_path / "agents",
        CONTROL.public_b64,
        specs,
        per_process=1,
        apply_seconds=apply_seconds,
        log_dir=tmp_path / "logs",
        enroll_in=store,
        replace_keys=replace_keys,
    )


def effects(tmp_path: Path, device_id: str) -> list[str]:
    path = tmp_path / "agents" / f"{device_id}.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute("SELECT command_id FROM effects")]


def outbox(tmp_path: Path, device_id: str) -> int:
    path = tmp_path / "agents" / f"{device_id}.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])


def answer(gateway: Gateway, command_id: str, timeout: float = 30.0) -> DeviceReport:
    found: list[DeviceReport] = []
    end = time.monotonic() + timeout
    while not found and time.monotonic() < end:
        found = [
            r
            for r in gateway.collect({command_id}, end - time.monotonic())
            if r.command_id == command_id
        ]
    assert found, f"no report for {command_id} within {timeout:g} s"
    return found[0]


def test_a_stale_report_never_overwrites_newer_state(store: Store) -> None:
    broker = shared_broker()
    device = DEVICES[0]
    install = command(device, version="1.9.0", plan_id="pl-stale")
    rollback = command(device, version="1.8.0", plan_id="pl-stale", action=Action.rollback)

    def report(cmd_version: str, cmd_id: str, wall_ms: int) -> DeviceReport:
        return DeviceReport(
            command_id=cmd_id,
            device_id=device,
            status=ReportStatus.applied,
            installed={"pump-logic": cmd_version, "edge-runtime": "3.2.0"},
            health=Health(ok=True),
            hlc=HybridTimestamp(wall_ms=wall_ms, node=device),
        )

    enroll(store, {device: device_key(device)})
    installed = signed(report("1.9.0", install.command_id, 1_000), device_key(device))
    rolled_back = signed(report("1.8.0", rollback.command_id, 2_000), device_key(device))
    client = raw_client(broker)
    with Gateway(store, broker, control_key=CONTROL.public_b64, client_id=broker.topic_root) as gw:
        gw.send([install, rollback])
        topic = broker.topic(SITE, device, Channel.report)
        # The rollback's report overtakes the install's, then both arrive again.
        for item in (rolled_back, installed, rolled_back, installed):
            publish(client, topic, encode(item))
        reports: list[DeviceReport] = []

        def both_in() -> bool:
            reports.extend(gw.collect(set(), 0))
            return len(reports) >= 2 and gw.stats.messages >= 4

        wait_until(both_in, 15, "both reports")
        assert sorted(r.command_id for r in reports) == sorted(
            [install.command_id, rollback.command_id]
        )
        assert gw.stats.duplicates == 2
        assert gw.is_stale(installed) and not gw.is_stale(rolled_back)
        assert gw.telemetry(device)["installed"]["pump-logic"] == "1.8.0"
        assert store.fleet.device(device).installed["pump-logic"] == "1.8.0"
        assert gw.outstanding() == set()
    client.disconnect()
    clear_retained(broker)


def test_reports_wait_in_the_outbox_while_the_link_is_cut(
    store: Store, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    device = DEVICES[0]
    cutter = LinkCutter(mosquitto.port)
    site_side = mosquitto.broker(port=cutter.port)
    cmd = command(device, plan_id="pl-outbox")
    with (
        agents(store, site_side, tmp_path, [device], apply_seconds=1.5),
        Gateway(store, mosquitto.broker(), control_key=CONTROL.public_b64) as gw,
    ):
        wait_until(lambda: device in gw.online(), 20, "the device online")
        assert gw.send([cmd]).accepted == [cmd.command_id]
        time.sleep(0.5)
        cutter.cut()  # mid-install: the report has nowhere to go
        wait_until(lambda: effects(tmp_path, device) == [cmd.command_id], 10, "the install")
        time.sleep(0.5)
        assert outbox(tmp_path, device) >= 1
        assert cmd.command_id in gw.outstanding()
        cutter.heal()
        report = answer(gw, cmd.command_id)
        assert report.status is ReportStatus.applied
        wait_until(lambda: outbox(tmp_path, device) == 0, 15, "the outbox to empty")
        assert effects(tmp_path, device) == [cmd.command_id]
    cutter.close()


def test_commands_for_an_offline_device_wait_for_it(
    store: Store, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    device = DEVICES[1]
    cutter = LinkCutter(mosquitto.port)
    cmd = command(device, plan_id="pl-offline")
    with (
        agents(store, mosquitto.broker(port=cutter.port), tmp_path, [device]),
        Gateway(store, mosquitto.broker(), control_key=CONTROL.public_b64) as gw,
    ):
        wait_until(lambda: device in gw.online(), 20, "the device online")
        cutter.cut()
        wait_until(lambda: device not in gw.online(), 20, "the broker to notice the cut")
        assert gw.send([cmd]).queued == [cmd.command_id]
        time.sleep(1.0)
        assert effects(tmp_path, device) == []
        cutter.heal()
        assert answer(gw, cmd.command_id).status is ReportStatus.applied
        assert effects(tmp_path, device) == [cmd.command_id]
    cutter.close()


def test_a_device_that_missed_its_command_reconciles_against_the_desired_state(
    store: Store, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    device = DEVICES[2]
    cmd = command(device, plan_id="pl-desired")
    with Gateway(store, mosquitto.broker(), control_key=CONTROL.public_b64) as gw:
        # No agent ever ran: the broker has no session to queue the command in.
        assert gw.send([cmd]).queued == [cmd.command_id]
        with agents(store, mosquitto.broker(), tmp_path, [device]):
            assert answer(gw, cmd.command_id).status is ReportStatus.applied
        assert effects(tmp_path, device) == [cmd.command_id]
        # A replaced device (fresh state, so a new key, enrolled explicitly) converges on
        # the same desired state.
        (tmp_path / "agents" / f"{device}.sqlite").unlink()
        with (
            agents(store, mosquitto.broker(), tmp_path, [device], replace_keys=True),
            HelloWatcher(mosquitto.broker()) as watcher,
        ):
            assert watcher.wait([device], timeout=20)
            wait_until(lambda: effects(tmp_path, device) == [cmd.command_id], 20, "reconcile")
        assert gw.telemetry(device)["installed"]["pump-logic"] == "1.9.0"


def test_outstanding_commands_survive_a_broker_that_lost_its_state(
    store: Store, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    device = DEVICES[3]
    cutter = LinkCutter(mosquitto.port)
    cmd = command(device, plan_id="pl-amnesia")
    with (
        agents(store, mosquitto.broker(port=cutter.port), tmp_path, [device]),
        Gateway(store, mosquitto.broker(), control_key=CONTROL.public_b64) as gw,
    ):
        wait_until(lambda: device in gw.online(), 20, "the device online")
        cutter.cut()
        wait_until(lambda: device not in gw.online(), 20, "the broker to notice the cut")
        gw.send([cmd])
        # The broker dies and comes back with nothing: no sessions, no retained messages.
        mosquitto.stop(kill=True)
        for saved in mosquitto.directory.glob("*.db"):
            saved.unlink()
        time.sleep(0.5)
        mosquitto.start()
        cutter.heal()
        assert answer(gw, cmd.command_id).status is ReportStatus.applied
        assert effects(tmp_path, device) == [cmd.command_id]
        assert gw.stats.connects >= 2
    cutter.close()


def test_the_transport_fails_closed_when_the_broker_is_unreachable(store: Store) -> None:
    broker = Broker(host="127.0.0.1", port=1, reconnect_max=1)
    with pytest.raises(BrokerUnreachable, match="nothing was sent"):  # noqa: SIM117
        with open_mqtt_transport(store, broker, control_key=CONTROL.public_b64, connect_timeout=2):
            pass


# --------------------------------------------------------------------------- TLS, passwords, 3.1.1


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fieldgate test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_agents_and_gateway_talk_over_tls_with_passwords(
    store: Store, tmp_path: Path, version: str
) -> None:
    secure = Mosquitto(tmp_path / "broker")
    ca, cert, key = _certificates(secure.directory)
    passwords = secure.directory / "passwords"
    passwords.touch()
    for user, password in (("gateway", "gw-secret"), ("device", "dev-secret")):
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
    passwords.chmod(0o644)
    secure.config.write_text(
        f"listener {secure.port} 127.0.0.1\n{secure.user_line}"
        f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
    )
    secure.start()
    try:
        tls = dict(tls=True, ca_file=str(ca), version=version)
        device = DEVICES[0]
        cmd = command(device, plan_id=f"pl-tls-{version}")
        devices = secure.broker(username="device", password="dev-secret", **tls)
        with pytest.raises(BrokerUnreachable):
            Gateway(
                store,
                secure.broker(username="gateway", password="wrong", **tls),
                connect_timeout=3,
            ).start()
        with (
            agents(store, devices, tmp_path, [device]),
            Gateway(
                store,
                secure.broker(username="gateway", password="gw-secret", **tls),
                control_key=CONTROL.public_b64,
            ) as gw,
        ):
            wait_until(lambda: device in gw.online(), 20, "the device online over TLS")
            gw.send([cmd])
            assert answer(gw, cmd.command_id).status is ReportStatus.applied
    finally:
        secure.stop()


@pytest.mark.postgres
def test_two_gateways_starting_at_once_on_a_new_database_both_start(pg_url: str) -> None:
    """Two workers starting together on a new PostgreSQL database both create the
    gateway's tables: one of them failed on a duplicate catalog row until they took turns."""
    broker = shared_broker()
    failed: list[Exception] = []

    def start(store: Store, client_id: str, together: threading.Barrier) -> None:
        together.wait()
        try:
            with Gateway(store, broker, client_id=client_id):
                pass
        except Exception as exc:
            failed.append(exc)

    with Store.open(pg_url) as store:
        for attempt in range(4):
            EdgeTable.metadata.drop_all(store.engine)
            together = threading.Barrier(2)
            starting = [
                threading.Thread(
                    target=start, args=(store, f"{broker.topic_root}-{attempt}-{n}", together)
                )
                for n in range(2)
            ]
            for thread in starting:
                thread.start()
            for thread in starting:
                thread.join(timeout=60)
    assert failed == []
