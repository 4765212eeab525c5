"""Device identity: only a device's own enrolled key speaks for it.

Each refusal is one test over a real Mosquitto, on SQLite and PostgreSQL: the gateway
refuses what is unsigned, forged, signed by another device's key or by a device with no
enrolled key, for a command never sent, replayed, or stamped too far in the future; it
counts it by kind, files it in ``edge_rejections``, audits it, and neither the device view
nor the fleet inventory nor ``collect()`` sees it. Then the attack the check exists for:
a rogue subscriber on ``{root}/+/+/cmd`` answers every command at once with "applied,
healthy", 60 s in the future, while the real devices all fail their installs: the
rollout must still see the canary fail, and the inventory must not show the version no
device got. The twin path runs the same check, and the enrollment CLI is audited.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
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
    wait_until,
)
from _scenario_driver import open_run
from typer.testing import CliRunner

from fieldgate.audit import ActorKind, AuditEvent, EventKind
from fieldgate.cli import app
from fieldgate.commands import (
    DeviceCommand,
    DeviceReport,
    Health,
    HybridTimestamp,
    ReportStatus,
)
from fieldgate.config import Config
from fieldgate.edge import AgentSpec, DeviceSpec, DeviceStore, Gateway, HelloWatcher, LocalFleet
from fieldgate.edge._wire import Broker, Channel, Hello, encode
from fieldgate.errors import ConfigInvalid
from fieldgate.fleet import Device
from fieldgate.runtime import Settings
from fieldgate.scenario import Scenario
from fieldgate.signing import SigningKey
from fieldgate.store import Store
from fieldgate.transport import MqttTransport, TwinTransport

# --------------------------------------------------------------------------- the gateway


@dataclass
class Edge:
    broker: Broker
    store: Store
    gateway: Gateway
    raw: mqtt.Client
    device: Device
    """Enrolled with ``device_key(device.id)``: the tests speak for it."""
    other: Device
    """Another enrolled device."""
    stranger: Device
    """A fleet device with no enrolled key."""

    def publish(self, document: DeviceReport | Hello) -> None:
        """Publish on the topic of the device the document names."""
        (who,) = [d for d in (self.device, self.other, self.stranger) if d.id == document.device_id]
        channel = Channel.hello if isinstance(document, Hello) else Channel.report
        publish(self.raw, self.broker.topic(who.site, who.id, channel), encode(document))


@pytest.fixture
def edge(initialised_db: str) -> Iterator[Edge]:
    broker = shared_broker()
    store = Store.open(initialised_db)
    device, other, stranger = store.fleet.devices()[:3]
    enroll(store, {device.id: device_key(device.id), other.id: device_key(other.id)})
    gateway = Gateway(
        store, broker, control_key=CONTROL.public_b64, client_id=f"{broker.topic_root}-gw"
    ).start()
    raw = raw_client(broker)
    try:
        yield Edge(broker, store, gateway, raw, device, other, stranger)
    finally:
        gateway.close()
        raw.disconnect()
        raw.loop_stop()
        clear_retained(broker)
        store.close()


def now_ms(ahead_s: float = 0.0) -> int:
    return int((time.time() + ahead_s) * 1000)


def report(
    device: Device,
    command_id: str,
    *,
    at_ms: int | None = None,
    status: ReportStatus = ReportStatus.applied,
    key: SigningKey | None = None,
) -> DeviceReport:
    """A report saying the device now runs pump-logic 9.9.9, signed with ``key``."""
    document = DeviceReport(
        command_id=command_id,
        device_id=device.id,
        status=status,
        installed=dict(device.installed) | {"pump-logic": "9.9.9"},
        health=Health(ok=status is ReportStatus.applied),
        hlc=HybridTimestamp(wall_ms=at_ms or now_ms(), node=device.id),
    )
    return signed(document, key) if key is not None else document


def hello(
    device: Device, *, at_ms: int | None = None, key: SigningKey | None = None, version: str = ""
) -> Hello:
    """An online hello; with ``version`` it says the device runs pump-logic at it."""
    installed = dict(device.installed) | ({"pump-logic": version} if version else {})
    document = Hello(
        device_id=device.id,
        site=device.site,
        online=True,
        installed=installed,
        health=Health(ok=True),
        hlc=HybridTimestamp(wall_ms=at_ms or now_ms(), node=device.id),
    )
    return signed(document, key) if key is not None else document


@dataclass
class Before:
    device: Device
    telemetry: dict[str, Any]


def before(edge: Edge, device: Device | None = None) -> Before:
    who = device or edge.device
    return Before(edge.store.fleet.device(who.id), edge.gateway.telemetry(who.id))


def assert_refused(
    edge: Edge, kind: str, was: Before, command_id: str | None = None, times: int = 1
) -> None:
    """The gateway refused ``times`` documents of ``kind`` from the device, and nothing moved."""
    device_id = was.device.id

    def audited() -> list[AuditEvent]:
        events = edge.store.audit.events(kinds=[EventKind.device_report])
        return [e for e in events if str(e.payload.get("rejected")).startswith(f"{kind}: ")]

    wait_until(lambda: len(audited()) >= times, 15, f"the gateway to audit a {kind} refusal")
    assert edge.gateway.stats.refused.get(kind) == times
    filed = [r for r in edge.gateway.rejections() if r.reason.startswith(f"{kind}: ")]
    assert len(filed) == times
    assert {(r.device_id, r.source) for r in filed} == {(device_id, "gateway")}
    assert {(e.actor_kind, e.actor) for e in audited()} == {(ActorKind.device, device_id)}
    assert edge.store.fleet.device(device_id) == was.device
    assert edge.gateway.telemetry(device_id) == was.telemetry
    fresh = edge.gateway.collect(set(), 0)
    if command_id is not None:
        assert command_id not in {r.command_id for r in fresh}
        assert command_id in edge.gateway.outstanding()


def assert_taken(edge: Edge, genuine: DeviceReport) -> None:
    """The device's own answer still counts after the refusal (the check refuses no more)."""
    edge.publish(genuine)
    reports = edge.gateway.collect({genuine.command_id}, 15)
    assert [r for r in reports if r.command_id == genuine.command_id] == [genuine]
    assert edge.store.fleet.device(genuine.device_id).installed["pump-logic"] == "9.9.9"


def sent(edge: Edge, plan_id: str, device: Device | None = None) -> DeviceCommand:
    cmd = command((device or edge.device).id, plan_id=plan_id)
    result = edge.gateway.send([cmd])
    assert cmd.command_id in result.accepted + result.queued
    return cmd


def test_an_unsigned_report_is_refused(edge: Edge) -> None:
    cmd, was = sent(edge, "pl-unsigned"), before(edge)
    edge.publish(report(edge.device, cmd.command_id))
    assert_refused(edge, "unsigned", was, cmd.command_id)
    assert_taken(edge, report(edge.device, cmd.command_id, key=device_key(edge.device.id)))


def test_a_report_signed_by_a_rogue_key_is_refused_as_forged(edge: Edge) -> None:
    cmd, was = sent(edge, "pl-forged"), before(edge)
    edge.publish(report(edge.device, cmd.command_id, key=INTRUDER))
    assert_refused(edge, "forged", was, cmd.command_id)
    # A signed document changed afterwards does not verify either.
    genuine = report(edge.device, cmd.command_id, key=device_key(edge.device.id))
    edge.publish(genuine.model_copy(update={"status": ReportStatus.failed}))
    assert_refused(edge, "forged", was, cmd.command_id, times=2)
    assert_taken(edge, genuine)


def test_a_report_signed_with_another_devices_key_is_refused(edge: Edge) -> None:
    cmd, was = sent(edge, "pl-other-key"), before(edge)
    edge.publish(report(edge.device, cmd.command_id, key=device_key(edge.other.id)))
    assert_refused(edge, "forged", was, cmd.command_id)
    (filed,) = [r for r in edge.gateway.rejections() if r.reason.startswith("forged: ")]
    assert device_key(edge.device.id).key_id in filed.reason
    assert_taken(edge, report(edge.device, cmd.command_id, key=device_key(edge.device.id)))


def test_a_report_from_a_device_with_no_enrolled_key_is_refused(edge: Edge) -> None:
    stranger = edge.stranger
    cmd, was = sent(edge, "pl-unenrolled", stranger), before(edge, stranger)
    key = device_key(stranger.id)
    edge.publish(report(stranger, cmd.command_id, key=key))
    assert_refused(edge, "unenrolled", was, cmd.command_id)
    enroll(edge.store, {stranger.id: key})
    assert_taken(edge, report(stranger, cmd.command_id, key=key))


def test_a_signed_report_for_a_command_never_sent_to_the_device_is_refused(edge: Edge) -> None:
    key = device_key(edge.device.id)
    was = before(edge)
    edge.publish(report(edge.device, "cmd-" + "7" * 32, key=key))
    assert_refused(edge, "never-sent", was)
    to_other = sent(edge, "pl-to-other", edge.other)
    edge.publish(report(edge.device, to_other.command_id, key=key))
    assert_refused(edge, "never-sent", was, times=2)
    assert to_other.command_id in edge.gateway.outstanding()


def test_a_report_stamped_too_far_in_the_future_is_refused(edge: Edge) -> None:
    cmd, was = sent(edge, "pl-future"), before(edge)
    key = device_key(edge.device.id)
    edge.publish(report(edge.device, cmd.command_id, at_ms=now_ms(60), key=key))
    assert_refused(edge, "future", was, cmd.command_id)
    # Within the allowed skew (30 s by default) a clock ahead is no reason to refuse.
    assert_taken(edge, report(edge.device, cmd.command_id, at_ms=now_ms(5), key=key))


def test_the_allowed_clock_skew_is_a_setting(initialised_db: str) -> None:
    assert Config.from_env({}).device_clock_skew_s == 30.0
    assert Config.from_env({"FIELDGATE_DEVICE_CLOCK_SKEW": "120"}).device_clock_skew_s == 120.0
    with pytest.raises(ConfigInvalid, match="FIELDGATE_DEVICE_CLOCK_SKEW"):
        Config.from_env({"FIELDGATE_DEVICE_CLOCK_SKEW": "soon"})
    broker = shared_broker()
    with Store.open(initialised_db) as store:
        device = store.fleet.devices()[0]
        enroll(store, {device.id: device_key(device.id)})
        cmd = command(device.id, plan_id="pl-skew")
        ahead = report(device, cmd.command_id, at_ms=now_ms(60), key=device_key(device.id))
        raw = raw_client(broker)
        with Gateway(store, broker, control_key=CONTROL.public_b64, max_clock_skew=120) as gw:
            gw.send([cmd])
            topic = broker.topic(device.site, device.id, Channel.report)
            publish(raw, topic, encode(ahead))
            assert [r.command_id for r in gw.collect({cmd.command_id}, 15)] == [cmd.command_id]
            assert gw.stats.refused == {}
        raw.disconnect()
        raw.loop_stop()
        clear_retained(broker)


def test_old_signed_readings_replayed_are_refused_and_resends_stay_harmless(edge: Edge) -> None:
    key = device_key(edge.device.id)
    old = hello(edge.device, at_ms=now_ms(-10), key=key, version="1.0.0")
    edge.publish(old)
    edge.publish(hello(edge.device, key=key))
    wait_until(lambda: edge.gateway.telemetry(edge.device.id)["online"], 15, "the hellos")
    cmd = sent(edge, "pl-replay")
    answer = report(edge.device, cmd.command_id, key=key)
    assert_taken(edge, answer)
    was = before(edge)
    # The old hello again: it would say pump-logic 1.0.0.
    edge.publish(old)
    assert_refused(edge, "replayed", was)
    # An older reading for the answered command, signed by the device, again.
    earlier = report(
        edge.device, cmd.command_id, at_ms=now_ms(-5), status=ReportStatus.failed, key=key
    )
    edge.publish(earlier)
    assert_refused(edge, "replayed", was, times=2)
    # The answer itself again (an outbox resend after a reconnect) is a harmless duplicate.
    duplicates = edge.gateway.stats.duplicates
    edge.publish(answer)
    wait_until(lambda: edge.gateway.stats.duplicates > duplicates, 15, "the duplicate")
    assert edge.gateway.stats.refused["replayed"] == 2
    assert edge.store.fleet.device(edge.device.id).installed["pump-logic"] == "9.9.9"


@pytest.mark.parametrize(
    ("kind", "forge"),
    [
        ("unsigned", lambda d: hello(d, version="6.6.6")),
        ("forged", lambda d: hello(d, version="6.6.6", key=INTRUDER)),
        ("future", lambda d: hello(d, version="6.6.6", key=device_key(d.id), at_ms=now_ms(60))),
    ],
)
def test_bad_hellos_are_refused_and_move_nothing(edge: Edge, kind: str, forge: Any) -> None:
    was = before(edge)
    assert was.telemetry["online"] is False
    edge.publish(forge(edge.device))
    assert_refused(edge, kind, was)
    assert "6.6.6" not in json.dumps(edge.store.fleet.summary().installed)
    # The device's own hello counts.
    edge.publish(hello(edge.device, key=device_key(edge.device.id), version="1.2.3"))
    wait_until(
        lambda: edge.store.fleet.device(edge.device.id).installed.get("pump-logic") == "1.2.3",
        15,
        "the device's own hello to count",
    )
    assert edge.gateway.telemetry(edge.device.id)["online"]


# --------------------------------------------------------------------------- the attack

MODULE, OLD, NEW = "air-quality-model", "1.1.0", "1.2.0"
SITE = "lyon-02"
DEVICES = 4


def spoof_scenario() -> Scenario:
    return Scenario.model_validate(
        {
            "apiVersion": "fieldgate/v1",
            "kind": "Scenario",
            "id": "edge-spoofed-reports",
            "category": "faults",
            "context": {"now": "2026-11-21T10:00:00Z"},
            "roster": {"eng-ana": ["engineer"]},
            "actor": "eng-ana",
            "fleet": {
                "sites": [
                    {
                        "id": SITE,
                        "region": "eu-west",
                        "kind": "field",
                        "timezone": "Europe/Paris",
                        "maintenance": ["Sun 02:00-04:00"],
                    }
                ],
                "generate": [
                    {
                        "sites": [SITE],
                        "class": "env-sensor",
                        "per_site": DEVICES,
                        "arch": "armv7",
                        "memory_mb": 256,
                        "installed": {"edge-runtime": "3.4.0", MODULE: OLD},
                    }
                ],
            },
            "catalog": [
                {
                    "name": MODULE,
                    "version": version,
                    "safety": "none",
                    "device_classes": ["env-sensor"],
                    "arch": ["armv7"],
                    "min_memory_mb": 128,
                    "downgrade_allowed": True,
                }
                for version in (OLD, NEW)
            ],
            "request": f"Update {MODULE} to {NEW} on the env sensors at {SITE}",
            "expect": {"outcome": "rolled_back"},
        }
    )


class Rogue:
    """Subscribes to every device's commands and answers each at once: applied, healthy,
    the new version installed, its clock 60 s ahead; unsigned, or signed with its own key."""

    def __init__(self, broker: Broker, key: SigningKey | None) -> None:
        self.broker = broker
        self.key = key
        self.answered = 0
        self.subscribed = threading.Event()
        self.client = raw_client(broker)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.subscribe(f"{broker.topic_root}/+/+/cmd", 1)
        assert self.subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            cmd = DeviceCommand.model_validate_json(message.payload)
        except ValueError:
            return
        _, site, device_id, _ = message.topic.split("/")
        lie = DeviceReport(
            command_id=cmd.command_id,
            device_id=device_id,
            status=ReportStatus.applied,
            installed={"edge-runtime": "3.4.0", MODULE: cmd.version},
            health=Health(ok=True, score=1.0, note="all good"),
            hlc=HybridTimestamp(wall_ms=now_ms(60), node=device_id),
        )
        if self.key is not None:
            lie = signed(lie, self.key)
        topic = self.broker.topic(site, device_id, Channel.report)
        client.publish(topic, encode(lie), qos=1)
        self.answered += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.mqtt
@pytest.mark.parametrize("rogue_key", [None, INTRUDER], ids=["unsigned", "own-key"])
def test_a_rogue_answering_every_command_cannot_complete_a_failing_rollout(
    db_url: str, tmp_path: Path, rogue_key: SigningKey | None
) -> None:
    broker = shared_broker()
    settings = Settings(wave_deadline=timedelta(seconds=30), max_soak=timedelta(seconds=1))
    with open_run(spoof_scenario(), db_url, settings=settings) as (world, orchestrator):
        ids = [d.id for d in world.store.fleet.devices()]
        specs = [
            DeviceSpec(device_id=d, site=SITE, installed={"edge-runtime": "3.4.0", MODULE: OLD})
            for d in ids
        ]
        agents = LocalFleet(
            broker,
            tmp_path / "agents",
            world.ctx.control_key.public_b64,
            specs,
            per_process=DEVICES,
            fail_installs=[f"{MODULE}@{NEW}"],
            log_dir=tmp_path / "logs",
            enroll_in=world.store,
            replace_keys=True,  # the agents stand in for the world's simulated devices
        )
        rogue = Rogue(broker, rogue_key)
        try:
            with agents, HelloWatcher(broker) as watcher:
                assert watcher.wait(ids, timeout=60), f"offline: {set(ids) - watcher.online()}"
                gateway = Gateway(
                    world.store,
                    broker,
                    control_key=world.ctx.control_key.public_b64,
                    client_id=f"{broker.topic_root}-gw",
                    resend_after=2.0,
                ).start()
                try:
                    orchestrator.ctx = replace(world.ctx, transport=MqttTransport(gateway))
                    view = orchestrator.submit(
                        world.scenario.request, world.scenario.actor, plan_id=world.plan_id
                    )
                    assert view.status == "queued", view.values.get("reasons")
                    view = orchestrator.work(view.thread_id)
                    gateway.settle(quiet=0.5)
                finally:
                    gateway.close()
        finally:
            rogue.close()
            clear_retained(broker)
        print(f"\n{view.outcome}: the rogue answered {rogue.answered} commands; {gateway.stats}")
        assert rogue.answered > 0, "the rogue saw no command"
        # The canary's real failure was seen: the run stopped and rolled back.
        assert view.outcome in ("rolled_back", "aborted"), view.values.get("reasons")
        assert view.outcome != "completed"
        # No device got the new version, and the inventory does not say otherwise.
        assert world.store.fleet.summary().installed[MODULE] == {OLD: DEVICES}
        assert all(gateway.telemetry(d)["installed"][MODULE] == OLD for d in ids)
        kind = "unsigned" if rogue_key is None else "forged"
        assert gateway.stats.refused.get(kind, 0) >= 1, gateway.stats
        lies = [r for r in gateway.rejections() if r.reason.startswith(f"{kind}: ")]
        assert len(lies) == gateway.stats.refused[kind]
        audited = [e for e in world.store.audit.events() if "rejected" in e.payload]
        assert sum(str(e.payload["rejected"]).startswith(f"{kind}: ") for e in audited) == len(lies)
        # Every command that went out was answered by its device, and the answer was a failure
        # or the rollback that followed it; none is the rogue's "applied" for the new version.
        for _, status in gateway.ledger().values():
            assert status in (None, "failed", "applied")
        # The agents' own keys were enrolled (in place of the simulated devices'), audited.
        assert world.store.fleet.device_keys(ids) == agents.public_keys()
        enrolled = [
            e.payload["device"]
            for e in world.store.audit.events(kinds=[EventKind.fleet])
            if e.actor == "local-fleet" and e.payload.get("action") == "re-enroll"
        ]
        assert sorted(enrolled) == sorted(ids)
        assert world.store.audit.verify().ok


# --------------------------------------------------------------------------- the twin path

CANARY_FAILS = (
    Path(__file__).resolve().parent.parent / "evals/suites/faults/whole-canary-fails.yaml"
)


def test_the_twin_path_runs_the_same_check_on_every_report(tmp_path: Path) -> None:
    import yaml

    scenario = Scenario.model_validate(yaml.safe_load(CANARY_FAILS.read_text()))
    with open_run(scenario, f"sqlite:///{tmp_path}/enrolled.db") as (world, orchestrator):
        transport = world.ctx.transport
        assert isinstance(transport, TwinTransport)
        keys = world.store.fleet.device_keys()
        assert keys == world.twin.public_keys() and len(keys) == 60
        view = orchestrator.submit(world.scenario.request, world.scenario.actor)
        view = orchestrator.work(view.thread_id)
        assert view.outcome == "rolled_back"
        assert transport.refused == {}
    with open_run(scenario, f"sqlite:///{tmp_path}/replaced.db") as (world, orchestrator):
        # Somebody else's keys enrolled for the simulated devices: none of their reports counts.
        enroll(world.store, {d: device_key(d) for d in world.twin.public_keys()})
        transport = world.ctx.transport
        assert isinstance(transport, TwinTransport)
        view = orchestrator.submit(world.scenario.request, world.scenario.actor)
        view = orchestrator.work(view.thread_id)
        assert view.outcome != "completed"
        assert transport.refused.get("forged", 0) >= 1
        assert set(transport.refused) == {"forged"}
        assert {r.kind.value for _, r in transport.rejections} == {"forged"}
        assert world.store.fleet.summary().installed["pump-logic"] == {"1.8.0": 60}


# --------------------------------------------------------------------------- enrollment


def fieldgate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_enrolling_a_device_key_is_audited_and_replacing_it_is_explicit(
    initialised_db: str, tmp_path: Path
) -> None:
    with Store.open(initialised_db) as store:
        device = store.fleet.devices()[0].id
    first, second = device_key(device), INTRUDER
    code, out = fieldgate("fleet", "enroll", device, "--public-key", first.public_b64)
    assert code == 0 and first.key_id in out, out
    code, out = fieldgate("fleet", "enroll", device, "--public-key", first.public_b64)
    assert code == 0 and "nothing changed" in out, out
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{device} {second.public_b64}\n")
    code, out = fieldgate("fleet", "enroll", device, "--public-key", str(key_file))
    assert code == 1 and "--replace" in out, out
    code, out = fieldgate("fleet", "enroll", device, "--public-key", str(key_file), "--replace")
    assert code == 0 and f"was {first.key_id}" in out, out
    for bad in ("not-a-key", "QUFBQQ==", str(tmp_path / "missing.txt")):
        code, out = fieldgate("fleet", "enroll", device, "--public-key", bad)
        assert code == 2 and "--public-key" in out, out
    code, out = fieldgate("fleet", "enroll", "no-such-device", "--public-key", first.public_b64)
    assert code == 2 and "not in the fleet" in out, out
    code, out = fieldgate("fleet", "show", device)
    assert code == 0 and second.key_id in out, out
    with Store.open(initialised_db) as store:
        assert store.fleet.device_keys([device]) == {device: second.public_b64}
        events = [e.payload for e in store.audit.events(kinds=["fleet"]) if "key_id" in e.payload]
    assert [(e["action"], e["device"], e["key_id"]) for e in events] == [
        ("enroll", device, first.key_id),
        ("re-enroll", device, second.key_id),
    ]
    assert events[1]["replaced"] == first.key_id


def test_a_device_makes_its_key_once_and_the_agent_prints_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    made = DeviceStore.open(state, "dev-01", site="osl-01", control_key=CONTROL.public_b64)
    public = made.public_key
    made.close()
    again = DeviceStore.open(state, "dev-01")
    assert again.public_key == public and again.signing_key.key_id != CONTROL.key_id
    again.close()
    other = DeviceStore.open(state, "dev-02", site="osl-01")
    other_public = other.public_key
    assert other_public != public
    other.close()
    spec = AgentSpec(
        broker=Broker(),
        state_dir=state,
        control_key=CONTROL.public_b64,
        devices=[DeviceSpec(device_id="dev-01"), DeviceSpec(device_id="dev-02")],
    )
    path = tmp_path / "spec.json"
    path.write_text(spec.model_dump_json())
    printed = subprocess.run(
        [sys.executable, "-m", "fieldgate.edge", "--spec", str(path), "--print-key"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert printed == ["dev-01", public, "dev-02", other_public]
