"""The field agent: one device on the network, and the process that runs one or more of them.

An agent keeps a persistent MQTT session under the client id
``fieldgate-agent-{device}``, so commands published while it is away wait at the
broker. It acknowledges a command only after the command's outcome is committed to
its own store, and deletes a report from its outbox only once the broker
acknowledged it; after a crash, a broker restart or a cut link it resubscribes,
says hello (installed modules, health, clock) and sends its outbox again.

On every (re)connect the broker hands it the retained desired command of its
device: one the agent has handled gets its stored report sent again, one it has not
is checked and carried out. That is the reconciliation: level-triggered, like a
controller comparing desired and actual state.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import Field

from fieldgate.contract import Contract
from fieldgate.edge._artifacts import ArtifactSource
from fieldgate.edge._credentials import as_identity
from fieldgate.edge._device import DeviceStore, FieldDevice
from fieldgate.edge._targets import CatalogSet
from fieldgate.edge._wire import Broker, Channel, connect_async, encode, new_client

AGENT = "fieldgate-agent/0.1"
"""Agent software name and version, sent in every hello."""

log = logging.getLogger("fieldgate.edge.agent")


class FieldAgent:
    """One device's MQTT client around its :class:`FieldDevice`."""

    def __init__(self, device: FieldDevice, broker: Broker) -> None:
        self.device = device
        self.broker = broker
        site, device_id = device.site, device.device_id
        self.topics = {channel: broker.topic(site, device_id, channel) for channel in Channel}
        will = device.farewell(AGENT)
        self.client = new_client(
            broker,
            f"fieldgate-agent-{device_id}",
            will=(self.topics[Channel.hello], encode(will)),
            manual_ack=True,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.connected = threading.Event()
        """Set while the agent has a session with the broker."""
        self._unacknowledged: list[tuple[mqtt.MQTTMessageInfo, int]] = []
        """Report publications of this connection and their outbox numbers."""
        self._lock = threading.Lock()
        # Commands run on their own thread: a long install must not stall pings and acks.
        self._work: queue.SimpleQueue[tuple[int, int, int, bytes] | int | None] = (
            queue.SimpleQueue()
        )
        """Commands (connection, packet id, QoS, payload), acknowledged report packet ids,
        and None to stop."""
        self._connection = 0
        self._worker = threading.Thread(
            target=self._run, name=f"fieldgate-agent-{device_id}", daemon=True
        )

    @property
    def device_id(self) -> str:
        """The device."""
        return self.device.device_id

    def start(self) -> None:
        """Connect in the background; the agent keeps reconnecting until stopped."""
        self._worker.start()
        connect_async(self.client, self.broker)

    def stop(self, timeout: float = 3.0) -> None:
        """Finish the command at hand, say goodbye (retained hello, offline), disconnect."""
        self._work.put(None)
        self._worker.join(timeout=max(timeout, self.device.apply_seconds + timeout))
        if self.connected.is_set():
            goodbye = self.device.farewell(AGENT)
            info = self.client.publish(
                self.topics[Channel.hello], encode(goodbye), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self.device.store.close()

    # ------------------------------------------------------------------ the network thread

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("%s: broker refused the connection: %s", self.device_id, reason)
            return
        with self._lock:
            self._connection += 1
        self.connected.set()
        client.subscribe([(self.topics[Channel.cmd], 1), (self.topics[Channel.desired], 1)])
        try:
            hello = self.device.hello(AGENT)
        except Exception:
            log.exception("%s: cannot read the device state", self.device_id)
            return
        client.publish(self.topics[Channel.hello], encode(hello), qos=1, retain=True)
        with self._lock:
            self._unacknowledged = []
        # Everything not acknowledged goes again; the gateway drops what it has.
        for seq, payload in self.device.store.outbox():
            self._publish_report(seq, payload)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic not in (self.topics[Channel.cmd], self.topics[Channel.desired]):
            client.ack(message.mid, message.qos)
            return
        with self._lock:
            connection = self._connection
        self._work.put((connection, message.mid, message.qos, bytes(message.payload)))

    def _next_item(self) -> tuple[int, int, int, bytes] | int | bool | None:
        """The next piece of work; True when a waiting command's window has opened."""
        try:
            wake = self.device.next_wake()
        except Exception:
            log.exception("%s: cannot read the waiting commands", self.device_id)
            wake = None
        timeout = None if wake is None else max(0.0, (wake - self.device.now()).total_seconds())
        try:
            return self._work.get(timeout=timeout)
        except queue.Empty:
            return True

    def _run_due(self) -> None:
        """Start the waiting commands whose window opened, and send their reports."""
        try:
            for handled in self.device.due():
                if handled.report is not None:
                    self._publish_report(handled.outbox_seq, encode(handled.report))
        except Exception:
            log.exception("%s: failed to start a waiting command", self.device_id)

    def _run(self) -> None:
        """Handle commands in arrival order; acknowledge each once its outcome is committed."""
        while (item := self._next_item()) is not None:
            if item is True:
                self._run_due()
                continue
            if isinstance(item, int):
                self._clear_acknowledged(item)
                continue
            assert not isinstance(item, bool)
            connection, mid, qos, payload = item
            try:
                handled = self.device.handle(payload)
            except Exception:
                # Not acknowledged: the broker delivers it again after a reconnect.
                log.exception("%s: failed to handle a command", self.device_id)
                continue
            report = handled.report
            if report is None:
                # Held in the device's own store for its window: acknowledged, no report yet.
                log.info(
                    "%s: a command waits for its window at %s", self.device_id, handled.waits_until
                )
                with self._lock:
                    current = connection == self._connection
                if current:
                    self.client.ack(mid, qos)
                continue
            if report.reason:
                log.info(
                    "%s: %s %s: %s",
                    self.device_id,
                    report.command_id,
                    report.status,
                    report.reason,
                )
            with self._lock:
                current = connection == self._connection
            # A packet id means nothing on a newer connection: there the broker resends.
            if current:
                self.client.ack(mid, qos)
            self._publish_report(handled.outbox_seq, encode(report))

    def _publish_report(self, seq: int | None, payload: bytes) -> None:
        """Publish a report; one from the outbox leaves it once the broker acknowledged it."""
        info = self.client.publish(self.topics[Channel.report], payload, qos=1)
        if seq is not None and info.rc == mqtt.MQTT_ERR_SUCCESS:
            with self._lock:
                self._unacknowledged.append((info, seq))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        # paho holds its message lock here: hand the id over, touch nothing else.
        self._work.put(mid)

    def _clear_acknowledged(self, mid: int) -> None:
        """Drop from the outbox the report the broker acknowledged as packet ``mid``."""
        with self._lock:
            matching = [(i, seq) for i, seq in self._unacknowledged if i.mid == mid]
        for info, seq in matching:
            # paho flags it published right after the callback that handed us the id.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(1.0)
            if not info.is_published():
                continue
            with self._lock:
                self._unacknowledged.remove((info, seq))
            try:
                self.device.store.sent(seq)
            except Exception:
                log.exception("%s: cannot clear outbox entry %d", self.device_id, seq)


class DeviceSpec(Contract):
    """One device an agent process runs."""

    device_id: str
    """The device id."""
    site: str | None = None
    """Its site (needed the first time its state is created)."""
    installed: dict[str, str] = {}
    """Modules installed when its state is created."""
    fail_installs: list[str] = []
    """``module@version`` refs whose install fails on this device (a simulated fault)."""


class AgentSpec(Contract):
    """What an agent process runs: its devices, broker, state directory and trust."""

    broker: Broker
    """The broker (its password comes from ``FIELDGATE_MQTT_PASSWORD``, never from here)."""
    state_dir: Path
    """Directory of the devices' state files."""
    control_key: str
    """The control plane's public key (base64): the only command signer obeyed."""
    devices: list[DeviceSpec] = Field(min_length=1)
    """Devices to run, one MQTT client each."""
    replace_control_key: bool = False
    """Replace a control key pinned in existing state (key rotation)."""
    artifacts: Path | None = None
    """Directory of artifacts ``{module}/{version}``; default: sample stand-ins."""
    apply_seconds: float = Field(default=0.0, ge=0)
    """How long a simulated install or rollback takes."""
    fail_installs: list[str] = []
    """``module@version`` refs whose install fails (a simulated fault)."""
    credentials: Path | None = None
    """Directory of broker credentials ``{device}.json`` (``fieldgate broker config``): each
    device connects as itself with its own password. None: the broker's user, if any."""
    catalogs: list[Path] = []
    """Catalog repositories (TUF) the devices check every install against themselves; the
    first root of each is pinned in a device's state when it is first given it. Empty: the
    control plane's digest is the only check."""


def open_agents(spec: AgentSpec) -> list[FieldAgent]:
    """Open the state of every device in ``spec`` and build its agent (not yet connected).

    Raises:
        DeviceStateInvalid: a state belongs to another device or pins another key.
        CredentialsInvalid: a device's credentials file is missing or malformed.
    """
    agents: list[FieldAgent] = []
    try:
        for device in spec.devices:
            artifacts = ArtifactSource(spec.artifacts)
            if spec.catalogs:
                catalogs = CatalogSet(spec.catalogs, spec.state_dir, device.device_id)
                catalogs.pin()
                artifacts = ArtifactSource(spec.artifacts, targets=catalogs)
            store = DeviceStore.open(
                spec.state_dir,
                device.device_id,
                site=device.site,
                installed=device.installed,
                control_key=spec.control_key,
                replace_control_key=spec.replace_control_key,
            )
            agents.append(
                FieldAgent(
                    FieldDevice(
                        store,
                        spec.control_key,
                        artifacts=artifacts,
                        apply_seconds=spec.apply_seconds,
                        fail_installs=frozenset(spec.fail_installs + device.fail_installs),
                    ),
                    as_identity(spec.broker, spec.credentials, device.device_id)
                    if spec.credentials is not None
                    else spec.broker,
                )
            )
    except BaseException:
        for agent in agents:
            agent.device.store.close()
        raise
    return agents


def run_agents(agents: Sequence[FieldAgent], stop: threading.Event) -> None:
    """Run ``agents`` until ``stop`` is set, then take them offline cleanly."""
    for agent in agents:
        agent.start()
    try:
        stop.wait()
    finally:
        for agent in agents:
            agent.stop()
