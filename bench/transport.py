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

3. **bare floor**, in the same run: 1,000 bare paho QoS 1 command/reply round trips
   to 20 responder processes (no ledger, no signatures, no store), the same payload
   size as a signed command; the wave is printed as a multiple of it (goal <= 4x).
4. **crypto**: the wave's signatures and verifications (the gateway checks each
   command's control-plane signature, the device checks it again and signs its report,
   the gateway verifies the report), timed on their own on this process; printed as a
   share of the wave.

Each measurement runs ``--repeat`` times on a fresh database; best and median shown.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
from fieldgate.signing import SigningKey, verify
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


def _responder(host: str, port: int, root: str, index: int, ready: Any) -> None:
    """A bare paho device process: every QoS 1 command on its topic is answered at once."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{root}-r{index}")
    client.max_inflight_messages_set(1000)

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        c.subscribe(f"{root}/cmd/{index}/+", qos=1)

    def on_subscribe(c: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        ready.set()

    def on_message(c: Any, userdata: Any, message: Any) -> None:
        c.publish(f"{root}/reply/{message.topic.rsplit('/', 1)[-1]}", message.payload, qos=1)

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(host, port)
    client.loop_forever()


def bare_floor(broker: Broker, payload: bytes, commands: int = 1000, responders: int = 20) -> float:
    """Seconds for ``commands`` bare paho QoS 1 command/reply round trips to ``responders``."""
    import paho.mqtt.client as mqtt

    root = f"{broker.topic_root}-bare"
    context = multiprocessing.get_context("spawn")
    ready = [context.Event() for _ in range(responders)]
    procs = [
        context.Process(
            target=_responder, args=(broker.host, broker.port, root, i, ready[i]), daemon=True
        )
        for i in range(responders)
    ]
    for proc in procs:
        proc.start()
    try:
        for event in ready:
            if not event.wait(60):
                raise SystemExit("a bare responder did not subscribe within 60 s")
        replies: set[str] = set()
        done = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{root}-ctl")
        client.max_inflight_messages_set(1000)
        subscribed = threading.Event()

        def on_message(c: Any, userdata: Any, message: Any) -> None:
            replies.add(message.topic)
            if len(replies) >= commands:
                done.set()

        client.on_message = on_message
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect(broker.host, broker.port)
        client.loop_start()
        client.subscribe(f"{root}/reply/+", qos=1)
        subscribed.wait(10)
        began = time.perf_counter()
        for n in range(commands):
            client.publish(f"{root}/cmd/{n % responders}/{n}", payload, qos=1)
        if not done.wait(120):
            raise SystemExit(f"only {len(replies)} of {commands} bare replies arrived")
        seconds = time.perf_counter() - began
        client.loop_stop()
        client.disconnect()
        return seconds
    finally:
        for proc in procs:
            proc.terminate()
            proc.join(5)


def wave_crypto(device_ids: list[str]) -> float:
    """Seconds of the ed25519 work one wave does, the same operations on the same sizes."""
    commands = signed_commands(device_ids, "bench-crypto", "1.9.9")
    keys = {d: SigningKey.from_seed(d, f"fieldgate bench crypto: {d}".encode()) for d in device_ids}
    now_ms = int(time.time() * 1000)
    reports = [
        DeviceReport(
            command_id=c.command_id,
            device_id=c.device_id,
            status=ReportStatus.applied,
            installed={"edge-runtime": "3.3.1", MODULE: "1.9.9"},
            health=Health(ok=True),
            hlc=HybridTimestamp(wall_ms=now_ms, node=c.device_id),
        )
        for c in commands
    ]
    began = time.perf_counter()
    for command, report in zip(commands, reports, strict=True):
        assert verify(CONTROL.public_b64, command.signing_payload(), command.signature)  # gateway
        assert verify(CONTROL.public_b64, command.signing_payload(), command.signature)  # device
        signature = keys[report.device_id].sign(report.signing_payload())  # device
        assert verify(keys[report.device_id].public_b64, report.signing_payload(), signature)
    return time.perf_counter() - began


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
    floors = [
        bare_floor(broker, encode(signed_commands(device_ids[:1], "bare", "1.9.0")[0]))
        for _ in range(args.repeat)
    ]
    crypto = min(wave_crypto(device_ids) for _ in range(args.repeat))
    acked = sorted(w.acked_s for w in waves)
    dispatch = sorted(w.dispatch_s for w in waves)
    rates = sorted(r.rate for r in runs)
    print(
        f"wave of {len(device_ids)}: dispatch best {dispatch[0]:.2f} s, "
        f"dispatched and acknowledged best {acked[0]:.2f} s, "
        f"median {statistics.median(acked):.2f} s "
        f"(goal <= 5 s: {'met' if acked[0] <= 5 else 'NOT met'})"
    )
    floor = min(floors)
    print(
        f"bare paho floor, {len(device_ids)} QoS 1 round trips to 20 processes: best "
        f"{floor:.2f} s, median {statistics.median(floors):.2f} s; wave / floor "
        f"{acked[0] / floor:.1f}x (goal <= 4x: {'met' if acked[0] <= 4 * floor else 'NOT met'})"
    )
    print(
        f"signing and verification in the wave: {crypto:.2f} s on one core "
        f"({crypto * 1e6 / len(device_ids):.0f} us per device: 3 verifications, 1 signature), "
        f"{crypto / acked[0]:.0%} of the best wave, {crypto / floor:.1f}x the bare floor"
    )
    print(
        f"report ingestion: best {rates[-1]:,.0f} reports/s, median "
        f"{statistics.median(rates):,.0f} reports/s (half first answers, half duplicates)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
