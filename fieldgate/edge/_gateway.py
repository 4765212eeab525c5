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
- **Only the device speaks for itself.** Every report and hello must carry a valid
  signature of the device's enrolled key, a clock no further ahead than
  ``max_clock_skew``, and (a report) answer a command sent to that device; an old signed
  reading sent again is refused as a replay (see :func:`fieldgate.devices.refusal_of`).
  Refused input never reaches :meth:`collect`, the device view or the fleet store.
- **Bad input is filed, not obeyed.** Malformed payloads, unknown devices, topics that
  disagree with their payload, refused reports and hellos are written to
  ``edge_rejections`` and the audit log, and counted in ``stats.refused`` by kind; the
  device's own refusals too.

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
from sqlalchemy import select

from fieldgate.batches import chunks
from fieldgate.commands import DeviceCommand, DeviceReport
from fieldgate.devices import MAX_CLOCK_SKEW_S
from fieldgate.edge._clock import wall_ms
from fieldgate.edge._ingest import (
    DeviceView,
    GatewayStats,
    Rejection,
    apply_state,
    audit,
    authenticate,
    is_known,
    match,
    parse,
    persist,
    read_ledger,
)
from fieldgate.edge._tables import (
    COMMANDS,
    DEVICES,
    IN_LIST,
    REJECTIONS,
    EdgeRejectionRow,
    EdgeTable,
)
from fieldgate.edge._wire import Broker, Channel, Hello, connect_async, new_client
from fieldgate.epoch import at_us, to_us
from fieldgate.errors import BrokerUnreachable, CommandUnsigned
from fieldgate.plan import Selector
from fieldgate.signing import verify
from fieldgate.store import Store
from fieldgate.store._engine import creating_tables, for_writing

log = logging.getLogger("fieldgate.edge.gateway")

_BATCH = 2000
"""Most messages ingested in one transaction."""
_SWEEP_SECONDS = 1.0


@dataclass
class Outstanding:
    """A published command without a stored report."""

    command_id: str
    device_id: str
    site: str
    payload: bytes
    deadline: datetime
    last_sent: float = 0.0


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


GATEWAY_INFLIGHT = 2000
"""QoS 1 messages the gateway keeps in flight: a 1,000-device wave's cmd and desired."""


class Gateway:
    """Publishes commands to field agents and ingests what they send back."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        control_key: str | None = None,
        client_id: str = "fieldgate-gateway",
        max_clock_skew: float = MAX_CLOCK_SKEW_S,
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
            max_clock_skew: Seconds a device's clock may run ahead of the gateway's wall
                clock; reports and hellos stamped later are refused.
            resend_after: Seconds before an unanswered command to an online device is
                published again.
            connect_timeout: How long :meth:`start` waits for the broker.
            publish_timeout: How long :meth:`send` waits for the broker's acknowledgements.
        """
        self.store = store
        self.broker = broker
        self.control_key = control_key
        self.client_id = client_id
        self.max_clock_skew = max_clock_skew
        self.resend_after = resend_after
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.stats = GatewayStats()
        self._engine = store.engine
        self._writer = for_writing(store.engine)
        self._client = new_client(broker, client_id)
        # A wave goes out in one tick: its QoS 1 publishes are acknowledged in flight
        # together, not 100 at a time (a device's own client keeps the default).
        self._client.max_inflight_messages_set(GATEWAY_INFLIGHT)
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
        with creating_tables(self._engine) as conn:
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
                    hello_signature=row["hello_signature"],
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
                .where(COMMANDS.c.deadline_us > to_us(now))
            )
            for command_id, device_id, site, text, deadline_us in pending:
                self._outstanding[command_id] = Outstanding(
                    command_id,
                    device_id,
                    site,
                    text.encode(),
                    at_us(deadline_us),
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
        taken: set[str] = set()
        for command in commands:
            if command.device_id not in views:
                result.unknown.append(command.command_id)
            elif command.command_id in stored:
                result.duplicates[command.command_id] = stored[command.command_id]
            elif command.command_id in taken:
                result.duplicates[command.command_id] = None
            else:
                taken.add(command.command_id)
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
                    "deadline_us": to_us(command.deadline),
                    "command": payload.decode(),
                    "dispatched_us": to_us(now),
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
                "at": at_us(view.seen_us).isoformat(),
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
            for chunk in chunks(command_ids, IN_LIST):
                rows = conn.execute(
                    select(COMMANDS.c.command_id, COMMANDS.c.report).where(
                        COMMANDS.c.command_id.in_(chunk)
                    )
                )
                for command_id, text in rows:
                    found[command_id] = DeviceReport.model_validate_json(text) if text else None
        return found

    def sent(self, command_ids: set[str]) -> dict[str, DeviceReport | None]:
        """Which of ``command_ids`` the ledger holds (whichever gateway sent them), each with
        its stored first answer (None: none yet)."""
        return self._ledger_reports(sorted(command_ids))

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
            for chunk in chunks(missing, IN_LIST):
                devices += self.store.fleet.devices(Selector(devices=list(chunk)))
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
        incoming = [
            m for topic, payload in batch if (m := parse(self.broker, topic, payload, rejections))
        ]
        views = self._ensure_views({m.document.device_id for m in incoming})
        known = [m for m in incoming if is_known(m, views, rejections)]
        keys = self.store.fleet.device_keys({m.document.device_id for m in known})
        ledger = read_ledger(self._engine, known)
        skew_ms = round(self.max_clock_skew * 1000)
        trusted = authenticate(
            known, views, keys, ledger, rejections, self.stats, wall_ms(), skew_ms
        )
        reports = [m for m in trusted if isinstance(m.document, DeviceReport)]
        hellos = [m.document for m in trusted if isinstance(m.document, Hello)]
        fresh, readings = match(ledger, reports, rejections, self.stats)
        changes, came_online = apply_state(readings, hellos, views, self._lock, self.stats)
        persist(self._writer, fresh, views, rejections, self._lock, self.stats)
        # The whole batch's versions in one transaction, one fleet-revision bump.
        self.store.fleet.set_installed_many(changes)
        audit(self.store, rejections)
        with self._lock:
            for report in fresh:
                self._outstanding.pop(report.command_id, None)
            self._fresh.extend(fresh)
            due = [e for e in self._outstanding.values() if e.device_id in came_online]
            self._lock.notify_all()
        for entry in due:
            self._publish(entry, desired=False)
        self.stats.resent += len(due)
