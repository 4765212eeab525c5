"""The gateway: the control plane's side of the edge, over MQTT.

It publishes every signed command twice, on the device's ``cmd`` topic (queued by the
broker in the device's persistent session) and as the device's retained ``desired``
command (what a reconnecting device reconciles against); it ingests reports and hellos
into the database and the fleet store.

What it promises:

- **Nothing acknowledged is lost.** A command is written to the ledger
  (``edge_commands``) before it is published, and stays *outstanding* until its report
  is stored. Outstanding commands are published again when the gateway (re)connects,
  when their device says hello, and every ``resend_after`` seconds while their device
  is online. Devices drop repeated ids, so resending is always safe.
- **One answer per command.** A report counts only for a command in the ledger, from
  the device it was sent to, and only the first time (dedup by device and command id).
- **No stale overwrite.** Each report and hello carries the device's hybrid logical
  clock; device state (installed modules, health) and the fleet store only move to a
  reading newer than the last one applied, whatever order the broker delivers them in.
- **Bad input is filed, not obeyed.** Malformed payloads, unknown devices, topics that
  disagree with their payload and reports that answer no command are written to
  ``edge_rejections`` and the audit log; the device's own refusals too.

Messages are taken off the network thread into a queue and ingested in batches by one
thread, each batch in one transaction.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError
from sqlalchemy import BigInteger, Text, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel, col

from fieldgate.audit import ActorKind, EventKind
from fieldgate.commands import DeviceCommand, DeviceReport
from fieldgate.contract import problems_of
from fieldgate.edge._device import REFUSED_PREFIX
from fieldgate.edge._wire import MAX_PAYLOAD, Broker, Channel, Hello, connect_async, new_client
from fieldgate.errors import FieldgateError
from fieldgate.plan import Selector
from fieldgate.signing import verify
from fieldgate.store import NewEvent, Store
from fieldgate.store._engine import for_writing, is_sqlite

log = logging.getLogger("fieldgate.edge.gateway")

_BATCH = 2000
"""Most messages ingested in one transaction."""
_SWEEP_SECONDS = 1.0


class BrokerUnreachable(FieldgateError):
    """The MQTT broker cannot be reached or refused the connection."""


class CommandUnsigned(FieldgateError):
    """A command to publish does not carry a valid control-plane signature."""


class EdgeTable(SQLModel, registry=registry()):
    """Base of the gateway's tables; its own metadata lets the gateway create exactly these."""


class EdgeCommandRow(EdgeTable, table=True):
    """One command the gateway published, and the first report that answered it."""

    __tablename__ = "edge_commands"

    command_id: str = Field(primary_key=True, max_length=64)
    """Idempotency key."""
    device_id: str = Field(index=True, max_length=128)
    """Device addressed."""
    site: str = Field(max_length=64)
    """Its site (part of the topic)."""
    plan_id: str = Field(sa_type=Text)
    """Plan of the command."""
    wave: int
    """Wave index, from 0."""
    action: str = Field(max_length=16)
    """install, rollback or validate."""
    module: str = Field(max_length=64)
    """Module acted on."""
    version: str = Field(sa_type=Text)
    """Version named."""
    deadline_us: int = Field(sa_type=BigInteger)
    """The command's deadline, µs since the epoch."""
    command: str = Field(sa_type=Text)
    """The signed command as published (JSON)."""
    dispatched_us: int = Field(sa_type=BigInteger)
    """When it was first published."""
    status: str | None = Field(default=None, max_length=16)
    """Status of the report that answered it; None while outstanding."""
    report: str | None = Field(default=None, sa_type=Text)
    """That report (JSON)."""
    reported_us: int | None = Field(default=None, sa_type=BigInteger)
    """When that report was stored."""


class EdgeDeviceRow(EdgeTable, table=True):
    """The latest state a device reported, by its hybrid logical clock."""

    __tablename__ = "edge_devices"

    device_id: str = Field(primary_key=True, max_length=128)
    site: str = Field(max_length=64)
    online: bool
    """Whether its last hello or will said online."""
    seen_us: int = Field(sa_type=BigInteger)
    """When the gateway last heard from it."""
    hlc_wall: int = Field(sa_type=BigInteger)
    """Clock reading of the state below (-1: none yet)."""
    hlc_counter: int
    installed: str = Field(sa_type=Text)
    """Installed modules (JSON)."""
    health: str | None = Field(default=None, sa_type=Text)
    """Health (JSON)."""


class EdgeRejectionRow(EdgeTable, table=True):
    """Input the gateway did not accept, or a device's refusal of input it received."""

    __tablename__ = "edge_rejections"

    id: int | None = Field(default=None, primary_key=True)
    at_us: int = Field(sa_type=BigInteger)
    topic: str = Field(sa_type=Text)
    device_id: str | None = Field(default=None, max_length=128)
    """Device named by the topic, if any."""
    source: str = Field(max_length=16)
    """``gateway`` (the gateway refused it) or ``device`` (the device refused a command)."""
    reason: str = Field(sa_type=Text)
    payload: str = Field(sa_type=Text)
    """The first KiB of the payload."""


COMMANDS = EdgeCommandRow.__table__  # type: ignore[attr-defined]
DEVICES = EdgeDeviceRow.__table__  # type: ignore[attr-defined]
REJECTIONS = EdgeRejectionRow.__table__  # type: ignore[attr-defined]


def _us(moment: datetime | None = None) -> int:
    return int((moment or datetime.now(UTC)).timestamp() * 1_000_000)


@dataclass
class DeviceView:
    """What the gateway knows of one device."""

    device_id: str
    site: str
    installed: dict[str, str]
    online: bool = False
    seen_us: int = 0
    hlc: tuple[int, int] = (-1, -1)
    health: dict[str, Any] | None = None


@dataclass
class Outstanding:
    """A published command without a stored report."""

    command_id: str
    device_id: str
    site: str
    payload: bytes
    deadline: datetime
    last_sent: float = 0.0


@dataclass(frozen=True)
class Rejection:
    """One rejected input."""

    topic: str
    device_id: str | None
    source: str
    reason: str
    payload: bytes


@dataclass(frozen=True)
class Incoming:
    """A message that parsed: its topic, the site the topic names, and the document."""

    topic: str
    site: str
    payload: bytes
    document: DeviceReport | Hello


@dataclass
class SendResult:
    """What :meth:`Gateway.send` did with each command id."""

    accepted: list[str] = field(default_factory=list)
    """Published to a device that is online."""
    queued: list[str] = field(default_factory=list)
    """Published to an offline device: its session holds it, hellos and resends follow."""
    duplicates: dict[str, DeviceReport | None] = field(default_factory=dict)
    """Sent before (the stored report when there is one); not published again."""
    unknown: list[str] = field(default_factory=list)
    """Addressed to a device the fleet does not have; not published."""


@dataclass
class GatewayStats:
    """Counters since the gateway started."""

    messages: int = 0
    fresh: int = 0
    duplicates: int = 0
    stale: int = 0
    rejected: int = 0
    refusals: int = 0
    resent: int = 0
    connects: int = 0


class Gateway:
    """Publishes commands to field agents and ingests what they send back."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        control_key: str | None = None,
        client_id: str = "fieldgate-gateway",
        resend_after: float = 30.0,
        connect_timeout: float = 10.0,
        publish_timeout: float = 10.0,
    ) -> None:
        """Set the gateway up; :meth:`start` connects it.

        Args:
            store: The control plane's database (ledger, device states, fleet, audit).
            broker: The MQTT broker.
            control_key: The control plane's public key: commands that do not verify with
                it are refused before anything is published (fail closed).
            client_id: The gateway's persistent MQTT session.
            resend_after: Seconds before an unanswered command to an online device is
                published again.
            connect_timeout: How long :meth:`start` waits for the broker.
            publish_timeout: How long :meth:`send` waits for the broker's acknowledgements.
        """
        self.store = store
        self.broker = broker
        self.control_key = control_key
        self.client_id = client_id
        self.resend_after = resend_after
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.stats = GatewayStats()
        self._engine = store.engine
        self._writer = for_writing(store.engine)
        self._client = new_client(broker, client_id)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._messages: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._lock = threading.Condition()
        self._views: dict[str, DeviceView] = {}
        self._outstanding: dict[str, Outstanding] = {}
        self._fresh: list[DeviceReport] = []
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._republish_all = threading.Event()
        self._closing = threading.Event()
        self._received = 0
        self._thread: threading.Thread | None = None
        self._last_sweep = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Gateway:
        """Create the tables, load outstanding commands, connect and take in retained hellos.

        Raises:
            BrokerUnreachable: no connection within ``connect_timeout``.
        """
        with for_writing(self._engine).begin() as conn:
            EdgeTable.metadata.create_all(conn)
        self._load()
        connect_async(self._client, self.broker)
        if not self._subscribed.wait(self.connect_timeout):
            self._client.disconnect()
            self._client.loop_stop()
            raise BrokerUnreachable(
                f"cannot reach the MQTT broker {self.broker.url} within "
                f"{self.connect_timeout:g} s; nothing was sent to devices"
            )
        self._thread = threading.Thread(target=self._run, name="fieldgate-gateway", daemon=True)
        self._thread.start()
        self.settle()
        return self

    def settle(self, quiet: float = 0.3, timeout: float = 10.0) -> None:
        """Wait until no message arrived for ``quiet`` seconds and every one was ingested."""
        end = time.monotonic() + timeout
        last = -1
        while time.monotonic() < end:
            received = self._received
            if received == last and self.stats.messages == received:
                return
            last = received
            time.sleep(quiet)

    def close(self) -> None:
        """Ingest what arrived, then disconnect."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def received(self) -> int:
        """Messages received since the gateway started (ingested or waiting to be)."""
        return self._received

    @property
    def connected(self) -> bool:
        """Whether the gateway has a session with the broker now."""
        return self._connected.is_set()

    def _load(self) -> None:
        now = datetime.now(UTC)
        with self._engine.connect() as conn:
            for row in conn.execute(select(DEVICES)).mappings():
                self._views[row["device_id"]] = DeviceView(
                    device_id=row["device_id"],
                    site=row["site"],
                    installed=json.loads(row["installed"]),
                    online=False,
                    seen_us=row["seen_us"],
                    hlc=(row["hlc_wall"], row["hlc_counter"]),
                    health=json.loads(row["health"]) if row["health"] else None,
                )
            pending = conn.execute(
                select(
                    COMMANDS.c.command_id,
                    COMMANDS.c.device_id,
                    COMMANDS.c.site,
                    COMMANDS.c.command,
                    COMMANDS.c.deadline_us,
                )
                .where(COMMANDS.c.status.is_(None))
                .where(COMMANDS.c.deadline_us > _us(now))
            )
            for command_id, device_id, site, text, deadline_us in pending:
                self._outstanding[command_id] = Outstanding(
                    command_id,
                    device_id,
                    site,
                    text.encode(),
                    datetime.fromtimestamp(deadline_us / 1_000_000, UTC),
                )

    # ------------------------------------------------------------------ network thread

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("gateway: broker %s refused the connection: %s", self.broker.url, reason)
            return
        self.stats.connects += 1
        client.subscribe(
            [(self.broker.every(Channel.report), 1), (self.broker.every(Channel.hello), 1)]
        )
        self._connected.set()
        self._republish_all.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        self._subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._received += 1
        self._messages.put((message.topic, bytes(message.payload)))

    # ------------------------------------------------------------------ sending

    def send(self, commands: Sequence[DeviceCommand]) -> SendResult:
        """Record ``commands`` in the ledger, then publish them (cmd and retained desired).

        Raises:
            CommandUnsigned: a command does not verify with the control key; nothing of
                this call was recorded or published.
        """
        result = SendResult()
        views = self._ensure_views({c.device_id for c in commands})
        known = {c.command_id: c for c in commands if c.device_id in views}
        stored = self._ledger_reports(list(known))
        new: list[DeviceCommand] = []
        for command in commands:
            if command.device_id not in views:
                result.unknown.append(command.command_id)
            elif command.command_id in stored:
                result.duplicates[command.command_id] = stored[command.command_id]
            elif any(c.command_id == command.command_id for c in new):
                result.duplicates[command.command_id] = None
            else:
                new.append(command)
        for command in new:
            if self.control_key is not None and not verify(
                self.control_key, command.signing_payload(), command.signature
            ):
                raise CommandUnsigned(
                    f"command {command.command_id} for {command.device_id} does not carry a "
                    "valid control-plane signature; nothing was sent"
                )
        if not new:
            return result
        now = datetime.now(UTC)
        rows = []
        entries = []
        for command in new:
            site = views[command.device_id].site
            payload = command.model_dump_json().encode()
            rows.append(
                {
                    "command_id": command.command_id,
                    "device_id": command.device_id,
                    "site": site,
                    "plan_id": command.plan_id,
                    "wave": command.wave,
                    "action": command.action.value,
                    "module": command.module,
                    "version": command.version,
                    "deadline_us": _us(command.deadline),
                    "command": payload.decode(),
                    "dispatched_us": _us(now),
                }
            )
            entries.append(
                Outstanding(command.command_id, command.device_id, site, payload, command.deadline)
            )
        with self._writer.begin() as conn:
            conn.execute(COMMANDS.insert(), rows)
        with self._lock:
            for entry in entries:
                self._outstanding[entry.command_id] = entry
        infos = [info for entry in entries for info in self._publish(entry, desired=True)]
        self._await_acks(infos)
        with self._lock:
            for command in new:
                online = views[command.device_id].online
                (result.accepted if online else result.queued).append(command.command_id)
        return result

    def _publish(self, entry: Outstanding, desired: bool) -> list[mqtt.MQTTMessageInfo]:
        entry.last_sent = time.monotonic()
        infos = []
        if desired:
            topic = self.broker.topic(entry.site, entry.device_id, Channel.desired)
            infos.append(self._client.publish(topic, entry.payload, qos=1, retain=True))
        topic = self.broker.topic(entry.site, entry.device_id, Channel.cmd)
        infos.append(self._client.publish(topic, entry.payload, qos=1))
        return infos

    def _await_acks(self, infos: Iterable[mqtt.MQTTMessageInfo]) -> None:
        if not self._connected.is_set():
            return
        end = time.monotonic() + self.publish_timeout
        for info in infos:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            try:
                info.wait_for_publish(remaining)
            except (RuntimeError, ValueError):
                # Not connected any more: the ledger keeps it, a reconnect republishes it.
                return

    # ------------------------------------------------------------------ waiting

    def collect(self, pending: set[str], timeout: float) -> list[DeviceReport]:
        """Wait until no id of ``pending`` is outstanding or ``timeout`` seconds passed.

        Returns:
            Every report that answered a command for the first time since the last call,
            in arrival order (not only those of ``pending``).
        """
        end = time.monotonic() + timeout
        with self._lock:
            while pending & self._outstanding.keys():
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(min(remaining, 0.5))
            fresh, self._fresh = self._fresh, []
        return fresh

    def is_stale(self, report: DeviceReport) -> bool:
        """Whether a newer reading of the report's device was already applied."""
        with self._lock:
            view = self._views.get(report.device_id)
            return view is not None and (report.hlc.wall_ms, report.hlc.counter) < view.hlc

    def outstanding(self) -> set[str]:
        """Ids of published commands without a stored report."""
        with self._lock:
            return set(self._outstanding)

    def telemetry(self, device_id: str) -> dict[str, Any]:
        """The device's latest state by its clock; ``health.note`` is untrusted text."""
        views = self._ensure_views({device_id})
        with self._lock:
            view = views.get(device_id)
            if view is None:
                return {"device_id": device_id, "known": False, "online": False, "health": {}}
            return {
                "device_id": view.device_id,
                "site": view.site,
                "online": view.online,
                "health": dict(view.health or {}),
                "installed": dict(view.installed),
                "hlc": {"wall_ms": view.hlc[0], "counter": view.hlc[1]},
                "at": datetime.fromtimestamp(view.seen_us / 1_000_000, UTC).isoformat(),
            }

    def online(self) -> set[str]:
        """Devices whose last hello said online."""
        with self._lock:
            return {d for d, v in self._views.items() if v.online}

    # ------------------------------------------------------------------ the ledger

    def _ledger_reports(self, command_ids: list[str]) -> dict[str, DeviceReport | None]:
        found: dict[str, DeviceReport | None] = {}
        if not command_ids:
            return found
        with self._engine.connect() as conn:
            for start in range(0, len(command_ids), 500):
                chunk = command_ids[start : start + 500]
                rows = conn.execute(
                    select(COMMANDS.c.command_id, COMMANDS.c.report).where(
                        COMMANDS.c.command_id.in_(chunk)
                    )
                )
                for command_id, text in rows:
                    found[command_id] = DeviceReport.model_validate_json(text) if text else None
        return found

    def ledger(self) -> dict[str, tuple[str, str | None]]:
        """Every command id in the ledger with its device and report status (None: none yet)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(COMMANDS.c.command_id, COMMANDS.c.device_id, COMMANDS.c.status)
            )
            return {cid: (device, status) for cid, device, status in rows}

    def rejections(self) -> list[EdgeRejectionRow]:
        """Every input filed as rejected, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(REJECTIONS).order_by(REJECTIONS.c.id)).mappings()
            return [EdgeRejectionRow.model_validate(dict(row)) for row in rows]

    def _ensure_views(self, device_ids: set[str]) -> dict[str, DeviceView]:
        """Views of the given devices that are in the fleet (loaded on first sight)."""
        with self._lock:
            missing = sorted(d for d in device_ids if d not in self._views)
        if missing:
            devices = []
            for start in range(0, len(missing), 500):
                chunk = missing[start : start + 500]
                devices += self.store.fleet.devices(Selector(devices=chunk))
            with self._lock:
                for device in devices:
                    self._views.setdefault(
                        device.id,
                        DeviceView(device.id, device.site, dict(device.installed)),
                    )
        with self._lock:
            return {d: self._views[d] for d in device_ids if d in self._views}

    # ------------------------------------------------------------------ ingesting

    def _run(self) -> None:
        while True:
            batch: list[tuple[str, bytes]] = []
            try:
                batch.append(self._messages.get(timeout=0.1))
                while len(batch) < _BATCH:
                    batch.append(self._messages.get_nowait())
            except queue.Empty:
                pass
            if batch:
                try:
                    self._ingest(batch)
                except Exception:
                    # Acknowledged but not stored: outstanding commands get resent and the
                    # devices send their stored reports again.
                    log.exception("gateway: a batch of %d messages was not ingested", len(batch))
                self.stats.messages += len(batch)
            elif self._closing.is_set():
                return
            try:
                self._sweep()
            except Exception:
                log.exception("gateway: resending outstanding commands failed")

    def _sweep(self) -> None:
        now = time.monotonic()
        everything = self._republish_all.is_set() and self._connected.is_set()
        if not everything and now - self._last_sweep < _SWEEP_SECONDS:
            return
        self._last_sweep = now
        self._republish_all.clear()
        wall = datetime.now(UTC)
        due: list[Outstanding] = []
        with self._lock:
            for entry in list(self._outstanding.values()):
                if entry.deadline < wall:
                    # Past its deadline no device starts it; the ledger keeps it unanswered.
                    del self._outstanding[entry.command_id]
                    continue
                view = self._views.get(entry.device_id)
                online = view is not None and view.online
                if everything or (online and now - entry.last_sent >= self.resend_after):
                    due.append(entry)
            self._lock.notify_all()
        for entry in due:
            self._publish(entry, desired=everything)
        self.stats.resent += len(due)

    def _ingest(self, batch: list[tuple[str, bytes]]) -> None:
        rejections: list[Rejection] = []
        incoming = [m for topic, payload in batch if (m := self._parse(topic, payload, rejections))]
        views = self._ensure_views({m.document.device_id for m in incoming})
        known = [m for m in incoming if self._known(m, views, rejections)]
        reports = [m for m in known if isinstance(m.document, DeviceReport)]
        hellos = [m.document for m in known if isinstance(m.document, Hello)]
        fresh, readings = self._match(reports, rejections)
        changes, came_online = self._apply_state(readings, hellos, views)
        self._persist(fresh, views, rejections)
        for device_id, module, version in changes:
            self.store.fleet.set_installed(device_id, module, version)
        self._audit(rejections)
        with self._lock:
            for report in fresh:
                self._outstanding.pop(report.command_id, None)
            self._fresh.extend(fresh)
            due = [e for e in self._outstanding.values() if e.device_id in came_online]
            self._lock.notify_all()
        for entry in due:
            self._publish(entry, desired=False)
        self.stats.resent += len(due)

    def _parse(self, topic: str, payload: bytes, rejections: list[Rejection]) -> Incoming | None:
        where = self.broker.parse_topic(topic)
        if where is None:
            rejections.append(Rejection(topic, None, "gateway", "not a device topic", payload))
            return None
        site, device_id, channel = where
        if channel is Channel.hello and not payload:
            return None  # a cleared retained hello
        if len(payload) > MAX_PAYLOAD:
            reason = f"malformed {channel.value}: {len(payload)} bytes, more than {MAX_PAYLOAD}"
            rejections.append(Rejection(topic, device_id, "gateway", reason, payload))
            return None
        model: type[DeviceReport] | type[Hello] = (
            Hello if channel is Channel.hello else DeviceReport
        )
        try:
            document = model.model_validate_json(payload)
        except ValidationError as exc:
            field_path, rule = problems_of(exc)[0]
            reason = f"malformed {channel.value}: {field_path or 'payload'}: {rule}"
            rejections.append(Rejection(topic, device_id, "gateway", reason, payload))
            return None
        said_site = document.site if isinstance(document, Hello) else site
        if document.device_id != device_id or said_site != site:
            reason = (
                f"the {channel.value} on the topic of {site}/{device_id} speaks for "
                f"{said_site}/{document.device_id}"
            )
            rejections.append(Rejection(topic, device_id, "gateway", reason, payload))
            return None
        return Incoming(topic, site, payload, document)

    def _known(
        self, message: Incoming, views: dict[str, DeviceView], rejections: list[Rejection]
    ) -> bool:
        device_id = message.document.device_id
        view = views.get(device_id)
        if view is None:
            reason = f"unknown device {device_id!r}: not in the fleet"
        elif message.site != view.site:
            reason = f"device {device_id} is at site {view.site!r}, not {message.site!r}"
        else:
            return True
        rejections.append(Rejection(message.topic, device_id, "gateway", reason, message.payload))
        return False

    def _match(
        self, reports: list[Incoming], rejections: list[Rejection]
    ) -> tuple[list[DeviceReport], list[DeviceReport]]:
        """Sort reports: first answers, and every report that may move device state.

        A report moves state when it answers a command sent to its device (the first time
        or again) or is the device's refusal of input it could not authenticate (filed
        with the device as its source: it answers no command). Every other report is
        filed as rejected and changes nothing.
        """
        answers: list[tuple[Incoming, DeviceReport]] = []
        readings: list[DeviceReport] = []
        for message in reports:
            report = message.document
            assert isinstance(report, DeviceReport)
            if report.command_id.startswith(REFUSED_PREFIX):
                reason = f"{report.command_id}: {report.reason}"
                rejections.append(
                    Rejection(message.topic, report.device_id, "device", reason, message.payload)
                )
                self.stats.refusals += 1
                readings.append(report)
            else:
                answers.append((message, report))
        ids = sorted({r.command_id for _, r in answers})
        ledger: dict[str, tuple[str, str | None]] = {}
        with self._engine.connect() as conn:
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    select(COMMANDS.c.command_id, COMMANDS.c.device_id, COMMANDS.c.status).where(
                        COMMANDS.c.command_id.in_(ids[start : start + 500])
                    )
                )
                ledger.update({cid: (device, status) for cid, device, status in rows})
        fresh: list[DeviceReport] = []
        taken: set[str] = set()
        for message, report in answers:
            entry = ledger.get(report.command_id)
            if entry is None:
                reason = f"report for {report.command_id}, a command the control plane never sent"
            elif entry[0] != report.device_id:
                reason = f"report for {report.command_id}, a command sent to {entry[0]}"
            elif entry[1] is not None or report.command_id in taken:
                self.stats.duplicates += 1
                readings.append(report)
                continue
            else:
                taken.add(report.command_id)
                fresh.append(report)
                readings.append(report)
                continue
            rejections.append(
                Rejection(message.topic, report.device_id, "gateway", reason, message.payload)
            )
        self.stats.fresh += len(fresh)
        return fresh, readings

    def _apply_state(
        self, reports: list[DeviceReport], hellos: list[Hello], views: dict[str, DeviceView]
    ) -> tuple[list[tuple[str, str, str]], set[str]]:
        """Move device views to newer readings; return fleet changes and who came online."""
        readings: list[tuple[tuple[int, int], str, dict[str, str], dict[str, Any] | None]] = []
        for report in reports:
            hlc = (report.hlc.wall_ms, report.hlc.counter)
            readings.append((hlc, report.device_id, report.installed, report.health.model_dump()))
        for hello in hellos:
            if hello.hlc is not None and hello.online:
                hlc = (hello.hlc.wall_ms, hello.hlc.counter)
                health = hello.health.model_dump() if hello.health else None
                readings.append((hlc, hello.device_id, hello.installed, health))
        changes: dict[tuple[str, str], str] = {}
        came_online: set[str] = set()
        seen = _us()
        with self._lock:
            for hello in hellos:
                view = views[hello.device_id]
                if hello.online and not view.online:
                    came_online.add(hello.device_id)
                view.online = hello.online
                view.seen_us = seen
            for report in reports:
                # A report is proof of life, whatever order the hellos and wills came in.
                view = views[report.device_id]
                if not view.online:
                    came_online.add(report.device_id)
                view.online = True
            for hlc, device_id, installed, health in sorted(readings, key=lambda r: r[0]):
                view = views[device_id]
                view.seen_us = seen
                if hlc <= view.hlc:
                    self.stats.stale += hlc < view.hlc
                    continue
                for module, version in installed.items():
                    if view.installed.get(module) != version:
                        changes[(device_id, module)] = version
                view.installed = dict(installed)
                view.health = health
                view.hlc = hlc
        return [(d, m, v) for (d, m), v in changes.items()], came_online

    def _persist(
        self,
        fresh: list[DeviceReport],
        views: dict[str, DeviceView],
        rejections: list[Rejection],
    ) -> None:
        now = _us()
        with self._writer.begin() as conn:
            for report in fresh:
                conn.execute(
                    update(COMMANDS)
                    .where(col(EdgeCommandRow.command_id) == report.command_id)
                    .where(col(EdgeCommandRow.status).is_(None))
                    .values(
                        status=report.status.value, report=_json(report).decode(), reported_us=now
                    )
                )
            with self._lock:
                rows = [
                    {
                        "device_id": v.device_id,
                        "site": v.site,
                        "online": v.online,
                        "seen_us": v.seen_us,
                        "hlc_wall": v.hlc[0],
                        "hlc_counter": v.hlc[1],
                        "installed": json.dumps(v.installed, sort_keys=True),
                        "health": json.dumps(v.health) if v.health is not None else None,
                    }
                    for v in views.values()
                ]
            _upsert(conn, rows)
            if rejections:
                conn.execute(
                    REJECTIONS.insert(),
                    [
                        {
                            "at_us": now,
                            "topic": r.topic,
                            "device_id": r.device_id,
                            "source": r.source,
                            "reason": r.reason,
                            "payload": r.payload[:1024].decode("utf-8", "replace"),
                        }
                        for r in rejections
                    ],
                )
        self.stats.rejected += sum(r.source == "gateway" for r in rejections)

    def _audit(self, rejections: list[Rejection]) -> None:
        events = [
            NewEvent(
                kind=EventKind.device_report,
                actor_kind=ActorKind.device if r.device_id else ActorKind.system,
                actor=r.device_id or "gateway",
                payload={
                    "refused" if r.source == "device" else "rejected": r.reason,
                    "topic": r.topic,
                },
            )
            for r in rejections
        ]
        if events:
            self.store.audit.append_many(events)


def _json(report: DeviceReport) -> bytes:
    return report.model_dump_json().encode()


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    dialect = sqlite if is_sqlite(conn) else postgresql
    statement = dialect.insert(DEVICES)
    statement = statement.on_conflict_do_update(
        index_elements=["device_id"],
        set_={c: statement.excluded[c] for c in rows[0] if c != "device_id"},
    )
    conn.execute(statement, rows)
