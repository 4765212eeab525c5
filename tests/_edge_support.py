"""What the edge tests share: signed commands, private brokers, a link cutter, a duplicator.

Every test that needs a broker uses a real Mosquitto: the shared one on
127.0.0.1:1883 under a topic root of its own, or a private one started here (on a
free loopback port, with persistence in the test's directory) when it must restart it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from conftest import MQTT_HOST, MQTT_PORT, require_mqtt

from fieldgate.commands import Action, DeviceCommand, DeviceReport, command_id_for
from fieldgate.devices import enroll_devices
from fieldgate.edge import Broker
from fieldgate.edge._wire import Hello, connect_async, new_client
from fieldgate.fleet import FleetInventory
from fieldgate.manifest import sample_digest
from fieldgate.signing import SigningKey
from fieldgate.store import Store

CONTROL = SigningKey.from_seed("control-plane", b"fieldgate edge tests: control plane")
"""The control plane's key in these tests."""
INTRUDER = SigningKey.from_seed("intruder", b"fieldgate edge tests: not the control plane")
"""A key the devices do not trust."""


def command(
    device_id: str,
    module: str = "pump-logic",
    version: str = "1.9.0",
    *,
    plan_id: str = "pl-edge",
    wave: int = 0,
    action: Action = Action.install,
    issued_at: datetime | None = None,
    deadline: timedelta = timedelta(minutes=10),
    digest: str | None = None,
    key: SigningKey | None = CONTROL,
) -> DeviceCommand:
    """A command signed by ``key`` (None: unsigned), the artifact digest the sample one."""
    issued = issued_at or datetime.now(UTC)
    unsigned = DeviceCommand(
        command_id=command_id_for(plan_id, wave, device_id, action),
        plan_id=plan_id,
        plan_hash="h" * 64,
        wave=wave,
        device_id=device_id,
        action=action,
        module=module,
        version=version,
        digest=digest or sample_digest(module, version),
        issued_at=issued,
        deadline=issued + deadline,
    )
    if key is None:
        return unsigned
    return unsigned.model_copy(update={"signature": key.sign(unsigned.signing_payload())})


def device_key(device_id: str) -> SigningKey:
    """The key of a device no agent runs (a test speaks for it), derived from its id."""
    return SigningKey.from_seed(device_id, f"fieldgate edge tests: device {device_id}".encode())


def state_key(state_dir: Path, device_id: str) -> SigningKey:
    """The key an agent's device made for itself, read from its state file."""
    path = state_dir / f"{device_id}.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        (text,) = db.execute("SELECT value FROM identity WHERE key = 'device_key'").fetchone()
    return SigningKey.from_private_b64(device_id, text)


def enroll(store: Store, keys: dict[str, SigningKey]) -> None:
    """Enroll the public halves of ``keys`` in the store's fleet (replacing what is there)."""
    public = {d: k.public_b64 for d, k in keys.items()}
    enroll_devices(store, public, "test", replace=True)


Signed = TypeVar("Signed", DeviceReport, Hello)


def signed(document: Signed, key: SigningKey) -> Signed:
    """``document`` signed with ``key``, as a device signs what it sends."""
    return document.model_copy(update={"signature": key.sign(document.signing_payload())})


def unique_root() -> str:
    """A topic root no other test uses."""
    return "fgtest-" + uuid.uuid4().hex[:10]


def shared_broker(**settings: Any) -> Broker:
    """The shared Mosquitto under a fresh topic root; skip (or fail under CI) when it is down."""
    require_mqtt()
    defaults: dict[str, Any] = {"session_expiry": 120, "reconnect_max": 2}
    return Broker(host=MQTT_HOST, port=MQTT_PORT, topic_root=unique_root(), **(defaults | settings))


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail the test when ``timeout`` passes first."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on the loopback interface nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_mosquitto() -> None:
    """Skip (or fail under CI) when the mosquitto binary is not installed."""
    if shutil.which("mosquitto") is None:
        message = "the mosquitto binary is not installed (tests start brokers of their own)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true: services are required")
        pytest.skip(message)


class Mosquitto:
    """A private Mosquitto on a free loopback port, persisting to ``directory``."""

    def __init__(self, directory: Path) -> None:
        require_mosquitto()
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{self.user_line}"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"
            f"log_dest file {directory}/mosquitto.log\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.log: Path | None = None
        """Where the broker's stderr goes (None: nowhere; it logs to its own file)."""

    @classmethod
    def configured(cls, directory: Path) -> Mosquitto:
        """A Mosquitto run from the set-up ``fieldgate broker config`` wrote into ``directory``
        (its port is the one of the set-up's listener, which the test chose free)."""
        require_mosquitto()
        self = cls.__new__(cls)
        self.directory = directory
        self.config = directory / "mosquitto.conf"
        listener = next(
            line for line in self.config.read_text().splitlines() if line.startswith("listener ")
        )
        self.port = int(listener.split()[1])
        self.process = None
        self.restarts = 0
        self.log = directory.parent / f"{directory.name}-mosquitto.log"
        return self

    @property
    def user_line(self) -> str:
        """Keep running as this user: a broker started as root drops to ``mosquitto``, which
        cannot read the test's private directory."""
        return f"user {getpass.getuser()}\n"

    def broker(self, **settings: Any) -> Broker:
        """Settings for clients of this broker."""
        defaults: dict[str, Any] = {"port": self.port, "reconnect_max": 2, "keepalive": 5}
        return Broker(host="127.0.0.1", **(defaults | settings))

    def start(self) -> Mosquitto:
        """Start the broker and wait until it accepts connections."""
        with contextlib.ExitStack() as files:
            err = (
                files.enter_context(self.log.open("ab"))
                if self.log is not None
                else subprocess.DEVNULL
            )
            self.process = subprocess.Popen(
                ["mosquitto", "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=err
            )
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self, kill: bool = False) -> None:
        """Stop it: SIGTERM saves the persistent state, SIGKILL loses what was not saved."""
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)

    def restart(self, down_for: float = 1.0, kill: bool = False) -> None:
        """Stop it, leave it down for ``down_for`` seconds, start it again."""
        self.stop(kill=kill)
        time.sleep(down_for)
        self.start()
        self.restarts += 1


class LinkCutter:
    """A TCP relay in front of a broker whose link can be cut: open connections drop and
    new ones are refused until it heals, as when a site's uplink fails."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._cut = threading.Event()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                inbound, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                inbound.close()
                continue
            try:
                outbound = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                inbound.close()
                continue
            outbound.settimeout(None)
            with self._lock:
                self._sockets += [inbound, outbound]
            for source, sink in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self._cut.is_set():
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self._cut.set()
        self.cuts += 1
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def heal(self) -> None:
        """Let connections through again."""
        self._cut.clear()

    def close(self) -> None:
        """Stop relaying."""
        self._closing.set()
        self.cut()
        self._listener.close()


class Duplicator:
    """Delivers copies of commands and reports again, late and out of order.

    It listens to every ``cmd`` and ``report`` topic and publishes each message once more
    after a random delay of up to ``max_delay`` seconds (some twice), so devices and the
    gateway see duplicates, reordering and replays of old messages.
    """

    def __init__(self, broker: Broker, seed: int = 7, max_delay: float = 3.0) -> None:
        self.broker = broker
        self.random = random.Random(seed)
        self.max_delay = max_delay
        self.published = 0
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self.client = new_client(
            broker, "fgtest-duplicator-" + uuid.uuid4().hex[:6], persistent=False
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def start(self) -> Duplicator:
        """Connect and start copying."""
        connect_async(self.client, self.broker, persistent=False)
        return self

    def close(self) -> None:
        """Stop copying."""
        with self._lock:
            for timer in self._timers:
                timer.cancel()
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        root = self.broker.topic_root
        client.subscribe([(f"{root}/+/+/cmd", 1), (f"{root}/+/+/report", 1)])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        key = message.topic.encode() + b"\0" + message.payload
        with self._lock:
            if key in self._seen:
                return  # its own copy coming back
            self._seen.add(key)
            copies = 2 if self.random.random() < 0.25 else 1
            for _ in range(copies):
                delay = self.random.uniform(0.05, self.max_delay)
                timer = threading.Timer(delay, self._publish, (message.topic, message.payload))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()

    def _publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)
        with self._lock:
            self.published += 1


def raw_client(broker: Broker) -> mqtt.Client:
    """A connected plain client (clean session) for publishing test input."""
    client = new_client(broker, "fgtest-raw-" + uuid.uuid4().hex[:8], persistent=False)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    connect_async(client, broker, persistent=False)
    if not connected.wait(10):
        pytest.fail(f"cannot connect to {broker.url}")
    return client


def publish(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish at QoS 1 and wait for the broker's acknowledgement."""
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def clear_retained(broker: Broker, settle: float = 0.5) -> int:
    """Delete every retained message under the broker's topic root; return how many.

    Tests on the shared broker call it at the end, so its persistent store does not
    collect their hellos and desired commands run after run.
    """
    topics: set[str] = set()
    client = raw_client(broker)
    client.on_message = lambda c, u, m: topics.add(m.topic) if m.retain and m.payload else None
    client.subscribe(f"{broker.topic_root}/#", 1)
    time.sleep(settle)
    for topic in sorted(topics):
        publish(client, topic, b"", retain=True)
    client.disconnect()
    client.loop_stop()
    return len(topics)


@contextmanager
def pump_fleet(path: Path, site: str, count: int) -> Iterator[Store]:
    """A control-plane store (SQLite at ``path``) whose fleet is ``count`` pump controllers
    at ``site`` on pump-logic 1.8.0."""
    inventory = FleetInventory.model_validate(
        {
            "sites": [{"id": site, "region": "us-east", "timezone": "America/New_York"}],
            "generate": [
                {
                    "sites": [site],
                    "class": "pump-ctl",
                    "per_site": count,
                    "arch": "arm64",
                    "memory_mb": 512,
                    "installed": {"edge-runtime": "3.2.0", "pump-logic": "1.8.0"},
                }
            ],
        }
    )
    with Store.open(f"sqlite:///{path}") as opened:
        opened.fleet.import_inventory(inventory, source="test", actor="test")
        yield opened
