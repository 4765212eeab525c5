"""Benchmark the MQTT transport: a 1,000-device wave over Mosquitto, and report ingestion.

Run: ``.venv/bin/python bench/transport.py [--devices 1000] [--per-process 50]
[--broker mqtt://127.0.0.1:1883] [--plans 5] [--repeat 3]``

Needs a running broker (``mosquitto -d -c /etc/mosquitto/mosquitto.conf``). It starts
``--devices`` field agents (real processes, ``--per-process`` devices each, each with
its own SQLite store) under a topic root of its own, then measures:

1. **wave**: one signed install command per device handed to ``MqttTransport.dispatch``
   (ledger write, publish on ``cmd`` and retained ``desired``, broker acknowledgements),
   then ``wait`` until every device's report is ingested (the device checked the
   signature and the digest, committed the install, its inbox entry and outbox report in
   one transaction, and the gateway stored the report, moved the device's state and
   updated the fleet store). The goal is at most 5 s for 1,000 devices.
2. **ingestion**: with the agents stopped, ``--plans`` commands per device are put in
   the ledger, then a publisher floods one report per command, each sent twice; the
   rate is reports ingested per second (first answers and duplicates), the time from
   the first publish until the last report is stored.

Each measurement runs ``--repeat`` times on a fresh database; best and median shown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fieldgate.audit import ActorKind
from fieldgate.commands import (
    Action,
    DeviceCommand,
    DeviceReport,
    Health,
    HybridTimestamp,
    ReportStatus,
    command_id_for,
)
from fieldgate.devices import enroll_devices
from fieldgate.edge import Broker, DeviceSpec, Gateway, HelloWatcher, LocalFleet, encode
from fieldgate.edge._wire import Channel, connect_async, new_client
from fieldgate.fleet import FleetInventory
from fieldgate.manifest import sample_digest
from fieldgate.signing import SigningKey
from fieldgate.store import Store
from fieldgate.transport import MqttTransport

MODULE, OLD = "pump-logic", "1.8.0"
CONTROL = SigningKey.from_seed("control-plane", b"fieldgate transport bench")


def fleet_of(devices: int, sites: int) -> FleetInventory:
    """``devices`` pump controllers spread over ``sites`` sites."""
    return FleetInventory.model_validate(
        {
            "sites": [
                {"id": f"site-{n:03d}", "region": "eu-central", "timezone": "Europe/Berlin"}
                for n in range(sites)
            ],
            "generate": [
                {
                    "sites": [f"site-{n:03d}" for n in range(sites)],
                    "class": "pump-ctl",
                    "per_site": devices // sites,
                    "arch": "arm64",
                    "memory_mb": 512,
                    "installed": {"edge-runtime": "3.3.1", MODULE: OLD},
                }
            ],
        }
    )


def signed_commands(device_ids: list[str], plan_id: str, version: str) -> list[DeviceCommand]:
    """One signed install per device, as the executor builds them."""
    now = datetime.now(UTC)
    commands = []
    for device_id in device_ids:
        unsigned = DeviceCommand(
            command_id=command_id_for(plan_id, 0, device_id, Action.install),
            plan_id=plan_id,
            plan_hash="b" * 64,
            wave=0,
            device_id=device_id,
            action=Action.install,
            module=MODULE,
            version=version,
            digest=sample_digest(MODULE, version),
            issued_at=now,
            deadline=now + timedelta(hours=1),
        )
        commands.append(
            unsigned.model_copy(update={"signature": CONTROL.sign(unsigned.signing_payload())})
        )
    return commands


@dataclass
class Wave:
    dispatch_s: float
    acked_s: float
    reports: int


def wave(store: Store, broker: Broker, device_ids: list[str], version: str) -> Wave:
    """Dispatch one install per device and wait for every report."""
    commands = signed_commands(device_ids, f"bench-{version}", version)
    with Gateway(store, broker, control_key=CONTROL.public_b64, client_id=broker.topic_root) as gw:
        transport = MqttTransport(gw)
        began = time.perf_counter()
        result = transport.dispatch(commands, 0)
        dispatched = time.perf_counter()
        ids = {c.command_id for c in commands}
        reports = transport.wait(ids, until=transport.now() + timedelta(seconds=120))
        acked = time.perf_counter()
    assert len(result.accepted) == len(device_ids), "every device is online"
    answered = {r.command_id for r in reports} & ids
    assert answered == ids, f"{len(ids - answered)} commands unanswered"
    assert store.fleet.summary().installed[MODULE] == {version: len(device_ids)}
    return Wave(dispatched - began, acked - began, len(answered))


@dataclass
class Ingestion:
    reports: int
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def ingestion(
    store: Store, broker: Broker, device_ids: list[str], plans: int, burst: int = 500
) -> Ingestion:
    """Flood the gateway with reports (each twice) answering commands in its ledger."""
    sites = {d.id: d.site for d in store.fleet.devices()}
    now_ms = int(time.time() * 1000)
    payloads: list[tuple[str, bytes]] = []
    # A session of its own: the wave's session still holds what arrived after it closed.
    client_id = f"{broker.topic_root}-ingest-{uuid.uuid4().hex[:6]}"
    # The bench speaks for the devices here: it signs their reports with keys it enrolls.
    keys = {d: SigningKey.from_seed(d, f"fieldgate bench: {d}".encode()) for d in device_ids}
    enroll_devices(
        store, {d: k.public_b64 for d, k in keys.items()}, "bench", actor_kind=ActorKind.system
    )
    with Gateway(store, broker, control_key=CONTROL.public_b64, client_id=client_id) as gw:
        for plan in range(plans):
            version = f"2.{plan}.0"
            commands = signed_commands(device_ids, f"ingest-{plan}", version)
            gw.send(commands)
            for c in commands:
                report = DeviceReport(
                    command_id=c.command_id,
                    device_id=c.device_id,
                    status=ReportStatus.applied,
                    installed={"edge-runtime": "3.3.1", MODULE: version},
                    health=Health(ok=True),
                    hlc=HybridTimestamp(wall_ms=now_ms + plan, node=c.device_id),
                )
                signature = keys[c.device_id].sign(report.signing_payload())
                report = report.model_copy(update={"signature": signature})
                topic = broker.topic(sites[c.device_id], c.device_id, Channel.report)
                payloads.append((topic, encode(report)))
        total = len(payloads) * 2
        gw.settle()
        start_messages = gw.stats.messages
        publisher = new_client(broker, f"{broker.topic_root}-flood", persistent=False)
        publisher.max_inflight_messages_set(1000)
        connect_async(publisher, broker, persistent=False)
        time.sleep(0.5)
        began = time.perf_counter()
        flood = payloads + payloads
        for start in range(0, total, burst):
            for topic, payload in flood[start : start + burst]:
                publisher.publish(topic, payload, qos=1)
            # Like many devices, not one: never more in flight than the broker queues per client.
            while gw.received - start_messages < min(total, start + burst) - burst // 2:
                time.sleep(0.001)
        deadline = time.monotonic() + 120
        while gw.stats.messages - start_messages < total:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"only {gw.stats.messages - start_messages} of {total} reports arrived: "
                    "the broker dropped some (raise max_queued_messages in mosquitto.conf)"
                )
            time.sleep(0.005)
        seconds = time.perf_counter() - began
        publisher.disconnect()
        publisher.loop_stop()
        fresh = len(gw.collect(set(), 0))
    assert fresh == len(payloads), f"{fresh} of {len(payloads)} reports ingested"
    return Ingestion(fresh, total, seconds)


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--per-process", type=int, default=50)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--plans", type=int, default=5, help="commands per device to ingest")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--apply-seconds", type=float, default=0.0)
    args = parser.parse_args()
    broker = Broker.from_url(args.broker, topic_root="fgbench-" + uuid.uuid4().hex[:8])
    inventory = fleet_of(args.devices, args.sites)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with Store.open(f"sqlite:///{root}/fleet.db") as store:
            store.fleet.import_inventory(inventory, source="bench", actor="bench")
            devices = store.fleet.devices()
        device_ids = [d.id for d in devices]
        specs = [
            DeviceSpec(device_id=d.id, site=d.site, installed=dict(d.installed)) for d in devices
        ]
        fleet = LocalFleet(
            broker,
            root / "agents",
            CONTROL.public_b64,
            specs,
            per_process=args.per_process,
            apply_seconds=args.apply_seconds,
            log_dir=root / "logs",
        )
        agent_keys = fleet.public_keys()
        print(
            f"{len(device_ids)} devices at {args.sites} sites, {len(fleet.groups)} agent "
            f"processes, broker {broker.url} (MQTT {broker.version}, QoS 1, persistent sessions)"
        )
        waves: list[Wave] = []
        began = time.perf_counter()
        with fleet, HelloWatcher(broker) as watcher:
            if not watcher.wait(device_ids, timeout=180):
                print(f"only {len(watcher.online())} devices came online", file=sys.stderr)
                return 1
            print(f"agents online after {time.perf_counter() - began:.1f} s")
            for n in range(args.repeat):
                with Store.open(f"sqlite:///{root}/wave-{n}.db") as store:
                    store.fleet.import_inventory(inventory, source="bench", actor="bench")
                    enroll_devices(store, agent_keys, "bench", actor_kind=ActorKind.system)
                    waves.append(wave(store, broker, device_ids, f"1.9.{n}"))
                print(
                    f"  wave {n + 1}: dispatch {waves[-1].dispatch_s:.2f} s, "
                    f"all {waves[-1].reports} reports in after {waves[-1].acked_s:.2f} s"
                )
        runs: list[Ingestion] = []
        for n in range(args.repeat):
            with Store.open(f"sqlite:///{root}/ingest-{n}.db") as store:
                store.fleet.import_inventory(inventory, source="bench", actor="bench")
                runs.append(ingestion(store, broker, device_ids, args.plans))
            print(
                f"  ingestion {n + 1}: {runs[-1].messages} reports "
                f"({runs[-1].reports} first answers) in {runs[-1].seconds:.2f} s"
            )
    acked = sorted(w.acked_s for w in waves)
    dispatch = sorted(w.dispatch_s for w in waves)
    rates = sorted(r.rate for r in runs)
    print(
        f"wave of {len(device_ids)}: dispatch best {dispatch[0]:.2f} s, "
        f"dispatched and acknowledged best {acked[0]:.2f} s, "
        f"median {statistics.median(acked):.2f} s "
        f"(goal <= 5 s: {'met' if acked[0] <= 5 else 'NOT met'})"
    )
    print(
        f"report ingestion: best {rates[-1]:,.0f} reports/s, median "
        f"{statistics.median(rates):,.0f} reports/s (half first answers, half duplicates)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
