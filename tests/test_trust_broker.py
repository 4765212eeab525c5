"""A broker that lets no one else in: ``fieldgate broker config`` against a real Mosquitto.

Each test starts its own Mosquitto from the set-up the command wrote and talks to it
with real paho clients: anonymous and wrongly authenticated clients are refused, a
device reaches only its own topics, the gateway reaches every device's, TLS needs the
deployment's CA, and a rollout runs over it. The last test is the spoof attack: a
rogue client answering every command with "applied, healthy" while the canary fails.
"""

from __future__ import annotations

import json
import queue
import ssl
import stat
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from _edge_support import CONTROL, Mosquitto, free_port, publish, raw_client, wait_until
from _scenario_driver import open_run
from test_edge_rollout import MODULE, NEW, OLD, SITE, scenario
from typer.testing import CliRunner

from fieldgate.cli import app
from fieldgate.cli._edge import broker_settings
from fieldgate.commands import DeviceCommand, DeviceReport, Health, HybridTimestamp, ReportStatus
from fieldgate.config import Config
from fieldgate.edge import (
    GATEWAY_IDENTITY,
    Broker,
    Channel,
    DeviceSpec,
    Gateway,
    HelloWatcher,
    LocalFleet,
    encode,
    read_credentials,
)
from fieldgate.edge._wire import connect_async, new_client
from fieldgate.plan import Selector
from fieldgate.runtime import Settings
from fieldgate.store import Store
from fieldgate.transport import MqttTransport

SAMPLE_SITE = "lyon-02"
"""A sample site with 20 env sensors: the small fleet these tests configure."""


def configure(out: Path, db: str, *options: str) -> tuple[int, str]:
    """Run ``fieldgate broker config`` for ``db`` into ``out`` on a free port."""
    result = CliRunner().invoke(
        app,
        ["broker", "config", "--out", str(out), "--db", db, "--port", str(free_port()), *options],
    )
    return result.exit_code, result.output


def configured_broker(tmp_path: Path, db: str, *options: str) -> Mosquitto:
    code, output = configure(tmp_path / "broker", db, *options)
    assert code == 0, output
    return Mosquitto.configured(tmp_path / "broker").start()


def identity(mosquitto: Mosquitto, who: str, **settings: Any) -> Broker:
    """Client settings for ``who`` with its password from the set-up's credentials."""
    credentials = read_credentials(mosquitto.directory / "credentials", who)
    return mosquitto.broker(
        username=who, password=credentials.password, ca_file=credentials.ca_file, **settings
    )


def try_connect(broker: Broker, timeout: float = 10.0) -> str:
    """``connected``, ``refused: REASON`` or ``failed: ERROR`` (e.g. a TLS handshake)."""
    client = new_client(broker, "fgtest-probe-" + uuid.uuid4().hex[:8], persistent=False)
    answers: queue.SimpleQueue[Any] = queue.SimpleQueue()
    client.on_connect = lambda c, u, f, reason, p: answers.put(reason)
    try:
        client.connect(broker.host, broker.port, 5)
    except (OSError, ssl.SSLError) as exc:
        return f"failed: {exc}"
    client.loop_start()
    try:
        reason = answers.get(timeout=timeout)
    except queue.Empty:
        return "failed: no answer"
    finally:
        client.disconnect()
        client.loop_stop()
    return f"refused: {reason}" if reason.is_failure else "connected"


class Listener:
    """A connected client that subscribes to ``filters`` and keeps what it receives."""

    def __init__(self, broker: Broker, *filters: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.granted: list[Any] = []
        subscribed = threading.Event()
        self.client = raw_client(broker)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))

        def on_subscribe(c: Any, u: Any, mid: int, codes: list[Any], p: Any) -> None:
            self.granted.extend(codes)
            subscribed.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe([(f, 1) for f in filters])
        assert subscribed.wait(10), f"no SUBACK for {filters}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def two_devices(db: str) -> list[tuple[str, str]]:
    with Store.open(db) as store:
        devices = store.fleet.devices(Selector(sites=[SAMPLE_SITE]))
    return [(d.site, d.id) for d in devices[:2]]


# ----------------------------------------------------------------------------- the command


def run_over(
    stack: ExitStack, world: Any, orchestrator: Any, broker: Broker
) -> tuple[Gateway, Any]:
    """Submit the world's request and let a worker execute it over ``broker`` through a
    gateway of its own (closed with ``stack``); the gateway and the run's final view."""
    gateway = Gateway(
        world.store, broker, control_key=world.ctx.control_key.public_b64, resend_after=2.0
    ).start()
    stack.callback(gateway.close)
    orchestrator.ctx = replace(world.ctx, transport=MqttTransport(gateway))
    view = orchestrator.submit(world.scenario.request, world.scenario.actor, plan_id=world.plan_id)
    assert view.status == "queued", view.values.get("reasons")
    return gateway, orchestrator.work(view.thread_id)


def test_broker_config_writes_a_closed_setup_and_keeps_passwords(
    initialised_db: str, tmp_path: Path
) -> None:
    out = tmp_path / "broker"
    code, output = configure(out, initialised_db, "--site", SAMPLE_SITE)
    assert code == 0, output
    (site, a), (_, b) = two_devices(initialised_db)
    credentials = out / "credentials"
    passwords = {
        p.stem: read_credentials(credentials, p.stem).password for p in credentials.iterdir()
    }
    assert len(passwords) == 21 and GATEWAY_IDENTITY in passwords
    assert len(set(passwords.values())) == 21
    assert "21 identities" in output
    assert not any(secret in output for secret in passwords.values())
    for private in [out / "passwords", out / "acl", *credentials.iterdir()]:
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o700
    config = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in config and f"password_file {out / 'passwords'}" in config
    hashes = dict(line.split(":", 1) for line in (out / "passwords").read_text().splitlines())
    assert set(hashes) == set(passwords) and all(h.startswith("$7$") for h in hashes.values())
    assert not any(secret in (out / "passwords").read_text() for secret in passwords.values())
    acl = (out / "acl").read_text()
    assert f"user {a}\ntopic read fieldgate/{site}/{a}/cmd\n" in acl
    assert f"user {b}\ntopic read fieldgate/{site}/{b}/cmd\n" in acl
    assert "#" not in acl.replace("# ", "")  # comments only: nobody gets a multi-level wildcard

    # Again: the passwords stay; with --rotate every one changes.
    assert configure(out, initialised_db, "--site", SAMPLE_SITE)[0] == 0
    assert read_credentials(credentials, a).password == passwords[a]
    assert configure(out, initialised_db, "--site", SAMPLE_SITE, "--rotate")[0] == 0
    rotated = {
        p.stem: read_credentials(credentials, p.stem).password for p in credentials.iterdir()
    }
    assert set(rotated) == set(passwords)
    assert not set(rotated.values()) & set(passwords.values())
    # The broker's saved state outlives a new set-up; devices that left lose their access.
    (out / "data" / "mosquitto.db").write_bytes(b"saved sessions")
    assert configure(out, initialised_db, "--site", "osl-01")[0] == 0
    assert (out / "data" / "mosquitto.db").read_bytes() == b"saved sessions"
    assert not (credentials / f"{a}.json").exists()
    assert f"user {a}\n" not in (out / "acl").read_text()
    assert read_credentials(credentials, GATEWAY_IDENTITY).password == rotated[GATEWAY_IDENTITY]

    with Store.open(initialised_db) as store:
        events = store.audit.events(kinds=["broker"])
    assert [(e.payload["directory"], e.payload["identities"]) for e in events][:3] == [
        (str(out), 21)
    ] * 3
    assert [e.payload["kept"] for e in events] == [0, 21, 0, 1]
    logged = json.dumps([e.payload for e in events])
    assert not any(s in logged for s in [*passwords.values(), *rotated.values()])


def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    initialised_db: str, tmp_path: Path
) -> None:
    foreign = tmp_path / "etc"
    foreign.mkdir()
    (foreign / "keep.conf").write_text("mine\n")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = {
        "no such site: nowhere": (tmp_path / "out", ("--site", "nowhere")),
        "not empty and holds no set-up": (foreign, ()),
        "exists and is not a directory": (a_file, ()),
        "is not an IP address": (tmp_path / "out", ("--bind", "localhost")),
        "cannot be used in a topic": (tmp_path / "out", ("--topic-root", "a/b")),
        "is not a system user name": (tmp_path / "out", ("--run-as", "me\nallow_anonymous true")),
        "holds a space or control character": (tmp_path / "o\nallow_anonymous true", ()),
    }
    for rule, (out, options) in cases.items():
        code, output = configure(out, initialised_db, *options)
        assert code == 2, (rule, output)
        assert rule in output and len(output.strip().splitlines()) == 1, output
    assert not (tmp_path / "out").exists()
    assert [p.name for p in foreign.iterdir()] == ["keep.conf"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging
    with Store.open(initialised_db) as store:
        assert store.audit.events(kinds=["broker"]) == []


# ------------------------------------------------------------------------ the broker itself


def test_anonymous_and_wrong_passwords_are_refused(initialised_db: str, tmp_path: Path) -> None:
    mosquitto = configured_broker(tmp_path, initialised_db, "--site", SAMPLE_SITE)
    try:
        (_, a), _ = two_devices(initialised_db)
        assert try_connect(mosquitto.broker()).startswith("refused")
        assert try_connect(mosquitto.broker(username=a, password="guess")).startswith("refused")
        other = identity(mosquitto, GATEWAY_IDENTITY).password
        assert try_connect(mosquitto.broker(username=a, password=other)).startswith("refused")
        assert try_connect(mosquitto.broker(username="nobody", password="x")).startswith("refused")
        assert try_connect(identity(mosquitto, a)) == "connected"
        assert try_connect(identity(mosquitto, GATEWAY_IDENTITY)) == "connected"
    finally:
        mosquitto.stop()


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_a_device_reaches_only_its_own_topics(
    initialised_db: str, tmp_path: Path, version: str
) -> None:
    mosquitto = configured_broker(tmp_path, initialised_db, "--site", SAMPLE_SITE)
    (site, a), (_, b) = two_devices(initialised_db)
    root = "fieldgate"
    gateway = identity(mosquitto, GATEWAY_IDENTITY, version=version)
    device_a = identity(mosquitto, a, version=version)
    topic = Broker(topic_root=root).topic
    with ExitStack() as stack:
        stack.callback(mosquitto.stop)
        seen_by_gateway = Listener(gateway, f"{root}/+/+/report", f"{root}/+/+/hello")
        stack.callback(seen_by_gateway.close)
        snooper = Listener(
            device_a,
            topic(site, b, Channel.cmd),
            topic(site, b, Channel.desired),
            f"{root}/+/+/cmd",
            "#",
        )
        stack.callback(snooper.close)
        own = Listener(device_a, topic(site, a, Channel.cmd), topic(site, a, Channel.desired))
        stack.callback(own.close)
        # Mosquitto 2.0 grants any subscription and checks the ACL at each delivery.
        assert not any(code.is_failure for code in own.granted), own.granted

        sender = raw_client(gateway)
        stack.callback(sender.loop_stop)
        publish(sender, topic(site, b, Channel.cmd), b"for B")
        publish(sender, topic(site, b, Channel.desired), b"for B, retained", retain=True)
        publish(sender, topic(site, a, Channel.cmd), b"for A")
        spoofer = raw_client(device_a)
        stack.callback(spoofer.loop_stop)
        publish(spoofer, topic(site, b, Channel.report), b"B's report, forged")
        publish(spoofer, topic(site, b, Channel.hello), b"B's hello, forged", retain=True)
        publish(spoofer, topic(site, a, Channel.cmd), b"A commands itself")
        publish(spoofer, topic(site, a, Channel.report), b"A's report")

        wait_until(lambda: len(own.messages) >= 1 and len(seen_by_gateway.messages) >= 1, 10)
        time.sleep(1.0)  # anything that would leak has had time to arrive
        assert own.messages == [(topic(site, a, Channel.cmd), b"for A")]
        # Through "+/+/cmd" and "#", A gets its own command (twice) and nothing of B's.
        assert {m for m in snooper.messages} == {(topic(site, a, Channel.cmd), b"for A")}
        assert seen_by_gateway.messages == [(topic(site, a, Channel.report), b"A's report")]
        # Nor does a retained copy wait for a later reader: the forged hello never got in.
        late = Listener(gateway, topic(site, b, Channel.hello))
        stack.callback(late.close)
        time.sleep(0.5)
        assert late.messages == []


def test_a_device_taking_over_anothers_session_gets_none_of_its_commands(
    initialised_db: str, tmp_path: Path
) -> None:
    mosquitto = configured_broker(tmp_path, initialised_db, "--site", SAMPLE_SITE)
    (site, a), (_, b) = two_devices(initialised_db)
    cmd_b = Broker(topic_root="fieldgate").topic(site, b, Channel.cmd)
    got: list[bytes] = []

    def session(broker: Broker) -> mqtt.Client:
        """B's agent's persistent session (its client id), under ``broker``'s identity."""
        client = new_client(broker, f"fieldgate-agent-{b}")
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        client.on_message = lambda c, u, m: got.append(bytes(m.payload))
        connect_async(client, broker)
        assert connected.wait(10)
        return client

    with ExitStack() as stack:
        stack.callback(mosquitto.stop)
        device_b = session(identity(mosquitto, b))
        device_b.subscribe(cmd_b, 1)
        time.sleep(0.5)
        device_b.disconnect()
        device_b.loop_stop()
        sender = raw_client(identity(mosquitto, GATEWAY_IDENTITY))
        stack.callback(sender.loop_stop)
        publish(sender, cmd_b, b"queued for B")
        # A logs in with its own password under B's client id: B's session, B's queue.
        thief = session(identity(mosquitto, a))
        stack.callback(thief.loop_stop)
        publish(sender, cmd_b, b"live for B")
        time.sleep(1.5)
        assert got == []


def test_an_agent_without_its_own_readable_credentials_does_not_start(
    initialised_db: str, tmp_path: Path
) -> None:
    assert configure(tmp_path / "broker", initialised_db, "--site", SAMPLE_SITE)[0] == 0
    (site, a), _ = two_devices(initialised_db)
    credentials = tmp_path / "broker" / "credentials"
    key = CONTROL.public_b64

    def agent(device: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            app,
            [
                *("agent", "--device-id", device, "--site", site),
                *("--state", str(tmp_path / "state"), "--control-key", key),
                *("--credentials", str(credentials)),
            ],
        )
        return result.exit_code, result.output

    code, output = agent("not-in-the-fleet")
    assert code == 2 and "cannot read the credentials of 'not-in-the-fleet'" in output, output
    (credentials / f"{a}.json").chmod(0o644)
    code, output = agent(a)
    assert code == 2 and "others may read it" in output, output
    assert len(output.strip().splitlines()) == 1


def test_the_edge_demo_runs_on_the_configured_broker_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldgate.cli._edge import edge_demo

    initialised_db = f"sqlite:///{tmp_path}/control.db"
    for name in ("FIELDGATE_ROSTER", "FIELDGATE_FREEZE", "FIELDGATE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert CliRunner().invoke(app, ["init", "--db", initialised_db]).exit_code == 0
    mosquitto = configured_broker(tmp_path, initialised_db, "--site", SAMPLE_SITE, "--tls")
    monkeypatch.setenv("FIELDGATE_BROKER", f"mqtts://127.0.0.1:{mosquitto.port}")
    monkeypatch.setenv("FIELDGATE_MQTT_CREDENTIALS", str(mosquitto.directory / "credentials"))
    with Store.open(initialised_db) as store:
        sensors = [d.id for d in store.fleet.devices(Selector(sites=[SAMPLE_SITE]))]
    try:
        with (
            edge_demo(
                initialised_db,
                tmp_path / "agents",
                selector=Selector(sites=[SAMPLE_SITE]),
                fail_installs={d: ["air-quality-model@1.2.0"] for d in sensors},
            ) as opener,
            opener(initialised_db, "offline") as orchestrator,
        ):
            view = orchestrator.submit("Update air-quality-model to 1.2.0 at lyon-02", "eng-ana")
            assert view.status == "queued", view.values.get("reasons")
            view = orchestrator.work(view.thread_id)
            assert view.outcome == "rolled_back", view.values.get("reasons")
            versions = orchestrator.ctx.store.fleet.summary().installed["air-quality-model"]
    finally:
        mosquitto.stop()
    assert versions.get("1.2.0", 0) == 0
    log = mosquitto.log.read_text() if mosquitto.log else ""
    assert all(f"u'{d}'" in log for d in sensors) and f"u'{GATEWAY_IDENTITY}'" in log


# ------------------------------------------------------------------------------------- TLS


def test_tls_needs_the_deployments_ca(initialised_db: str, tmp_path: Path) -> None:
    mosquitto = configured_broker(tmp_path, initialised_db, "--site", SAMPLE_SITE, "--tls")
    try:
        (_, a), _ = two_devices(initialised_db)
        gateway = identity(mosquitto, GATEWAY_IDENTITY, tls=True)
        assert gateway.ca_file == str(mosquitto.directory / "tls" / "ca.pem")
        assert try_connect(gateway) == "connected"
        assert try_connect(identity(mosquitto, a, tls=True)) == "connected"
        assert try_connect(replace(gateway, ca_file=None)).startswith("failed")  # system CAs
        assert not try_connect(replace(gateway, tls=False)).startswith("connected")
    finally:
        mosquitto.stop()
    # A new set-up keeps the CA clients trust, unless everything is rotated.
    tls_dir = mosquitto.directory / "tls"
    ca = (tls_dir / "ca.pem").read_bytes()
    site = ("--site", SAMPLE_SITE)
    assert configure(mosquitto.directory, initialised_db, *site, "--tls")[0] == 0
    assert (tls_dir / "ca.pem").read_bytes() == ca
    assert stat.S_IMODE((tls_dir / "ca.key").stat().st_mode) == 0o600
    assert configure(mosquitto.directory, initialised_db, *site, "--tls", "--rotate")[0] == 0
    assert (tls_dir / "ca.pem").read_bytes() != ca


def rollout_world(devices: int, tmp_path: Path) -> Any:
    settings = Settings(wave_deadline=timedelta(seconds=40), max_soak=timedelta(seconds=1))
    return open_run(scenario(devices), f"sqlite:///{tmp_path}/control.db", settings=settings)


def start_agents(
    stack: ExitStack,
    world: Any,
    tmp_path: Path,
    broker: Broker,
    credentials: Path | None,
    fail_installs: tuple[str, ...] = (),
) -> list[str]:
    """Agent processes for every device of the world (each with its own identity, if any)."""
    ids = [d.id for d in world.store.fleet.devices()]
    fleet = LocalFleet(
        broker,
        tmp_path / "agents",
        world.ctx.control_key.public_b64,
        [
            DeviceSpec(device_id=d, site=SITE, installed={"edge-runtime": "3.4.0", MODULE: OLD})
            for d in ids
        ],
        per_process=4,
        apply_seconds=0.3,
        fail_installs=fail_installs,
        log_dir=tmp_path / "logs",
        credentials=credentials,
        enroll_in=world.store,
        replace_keys=True,  # the agents stand in for the world's simulated devices
    ).start()
    stack.callback(fleet.stop)
    return ids


def test_a_rollout_completes_over_tls_with_every_client_authenticated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ExitStack() as stack:
        world, orchestrator = stack.enter_context(rollout_world(6, tmp_path))
        db = f"sqlite:///{tmp_path}/control.db"
        mosquitto = configured_broker(tmp_path, db, "--tls")
        stack.callback(mosquitto.stop)
        # The control plane's settings, as an operator sets them.
        monkeypatch.setenv("FIELDGATE_BROKER", f"mqtts://127.0.0.1:{mosquitto.port}")
        monkeypatch.setenv("FIELDGATE_MQTT_CREDENTIALS", str(mosquitto.directory / "credentials"))
        gateway_broker = replace(broker_settings(Config.from_env()), reconnect_max=2)
        assert (gateway_broker.tls, gateway_broker.username) == (True, GATEWAY_IDENTITY)
        agents_broker = replace(gateway_broker, username=None, password=None)
        credentials = mosquitto.directory / "credentials"
        ids = start_agents(stack, world, tmp_path, agents_broker, credentials)
        watcher = stack.enter_context(HelloWatcher(gateway_broker))
        assert watcher.wait(ids, timeout=60), f"offline: {set(ids) - watcher.online()}"
        _, view = run_over(stack, world, orchestrator, gateway_broker)
        assert view.outcome == "completed", view.values.get("reasons")
        assert world.store.fleet.summary().installed[MODULE] == {NEW: len(ids)}
        log = mosquitto.log.read_text() if mosquitto.log else ""
        assert f"u'{ids[0]}'" in log and f"u'{GATEWAY_IDENTITY}'" in log


# ------------------------------------------------------------------------- the spoof attack


class Rogue:
    """Listens for every command and answers each at once with "applied, healthy", its clock
    an hour ahead so that the device's own (failed) report looks stale."""

    def __init__(self, broker: Broker, root: str) -> None:
        self.root = root
        self.seen: list[str] = []
        """The devices of the commands it got."""
        self.connected = threading.Event()
        self.client = new_client(broker, "fgtest-rogue-" + uuid.uuid4().hex[:8], persistent=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._answer
        connect_async(self.client, broker, persistent=False)

    def _on_connect(self, client: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        if not reason.is_failure:
            self.connected.set()
            client.subscribe([(f"{self.root}/+/+/cmd", 1), (f"{self.root}/+/+/desired", 1)])

    def _answer(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            command = DeviceCommand.model_validate_json(message.payload)
        except ValueError:
            return
        self.seen.append(command.device_id)
        site = message.topic.split("/")[1]
        report = DeviceReport(
            command_id=command.command_id,
            device_id=command.device_id,
            status=ReportStatus.applied,
            installed={"edge-runtime": "3.4.0", command.module: command.version},
            health=Health(ok=True, score=1.0),
            # A clock an hour ahead: its word stays the device's newest.
            hlc=HybridTimestamp(
                wall_ms=int(time.time() * 1000) + 3_600_000, node=command.device_id
            ),
        )
        topic = f"{self.root}/{site}/{command.device_id}/report"
        client.publish(topic, encode(report), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_spoofed_rollout(tmp_path: Path, secured: bool) -> None:
    """A rollout whose installs all fail, with rogues answering every command for the devices.

    ``secured``: the broker ``fieldgate broker config`` sets up; else the shipped open one.
    """
    with ExitStack() as stack:
        world, orchestrator = stack.enter_context(rollout_world(6, tmp_path))
        db = f"sqlite:///{tmp_path}/control.db"
        if secured:
            mosquitto = configured_broker(tmp_path, db)
            gateway_broker = identity(mosquitto, GATEWAY_IDENTITY)
            credentials: Path | None = mosquitto.directory / "credentials"
        else:
            mosquitto = Mosquitto(tmp_path / "open-broker").start()
            gateway_broker, credentials = mosquitto.broker(), None
        stack.callback(mosquitto.stop)
        failing = (f"{MODULE}@{NEW}",)
        ids = start_agents(stack, world, tmp_path, mosquitto.broker(), credentials, failing)
        watcher = stack.enter_context(HelloWatcher(gateway_broker))
        assert watcher.wait(ids, timeout=60), f"offline: {set(ids) - watcher.online()}"
        # One rogue without credentials, one with device A's: both try every command. (A is
        # not the canary: whoever holds a device's password may speak for that one device;
        # that is what signed reports are for. The broker keeps it to that device.)
        device_a = ids[-1]
        a_broker = identity(mosquitto, device_a) if secured else mosquitto.broker(username=device_a)
        rogues = [Rogue(mosquitto.broker(), "fieldgate"), Rogue(a_broker, "fieldgate")]
        for rogue in rogues:
            stack.callback(rogue.close)
        wait_until(rogues[1].connected.is_set, 10, "the rogue with device A's identity")
        gateway, view = run_over(stack, world, orchestrator, gateway_broker)
        installed = world.store.fleet.summary().installed[MODULE]
        print(
            f"\noutcome {view.outcome}; {MODULE} {installed}; rogues saw "
            f"{[r.seen for r in rogues]} commands"
        )
        assert not rogues[0].connected.is_set()
        assert rogues[0].seen == [] and set(rogues[1].seen) <= {device_a}
        assert device_a not in {d for d, _ in gateway.ledger().values()}  # not the canary
        assert view.outcome in ("rolled_back", "aborted"), view.values.get("reasons")
        assert installed.get(NEW, 0) == 0 and installed[OLD] == len(ids)


def test_a_rogue_cannot_answer_for_devices_whose_canary_fails(tmp_path: Path) -> None:
    run_spoofed_rollout(tmp_path, secured=True)
