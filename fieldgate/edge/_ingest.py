"""The gateway's ingestion steps: parse, check, authenticate, match against the ledger,
apply, store.

The gateway's ingesting thread runs them on each batch of messages (see
:meth:`Gateway._ingest`); each takes what it works on as arguments, and files what it
refuses in ``rejections``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Engine

from fieldgate.audit import ActorKind, EventKind
from fieldgate.batches import chunks
from fieldgate.commands import DeviceReport
from fieldgate.contract import problems_of
from fieldgate.devices import Known, refusal_of
from fieldgate.edge._device import REFUSED_PREFIX
from fieldgate.edge._tables import (
    COMMANDS,
    IN_LIST,
    REJECTIONS,
    upsert_devices,
)
from fieldgate.edge._wire import MAX_PAYLOAD, Broker, Channel, Hello
from fieldgate.epoch import now_us
from fieldgate.store import NewEvent, Store


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
    hello_signature: str | None = None
    """Signature of the last hello taken (the retained one, delivered again, is no replay)."""


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
    refused: dict[str, int] = field(default_factory=dict)
    """Reports and hellos refused by :func:`fieldgate.devices.refusal_of`, by kind."""


def parse(
    broker: Broker, topic: str, payload: bytes, rejections: list[Rejection]
) -> Incoming | None:
    """Read one message, or file why it is rejected."""
    where = broker.parse_topic(topic)
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
    model: type[DeviceReport] | type[Hello] = Hello if channel is Channel.hello else DeviceReport
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


def is_known(message: Incoming, views: dict[str, DeviceView], rejections: list[Rejection]) -> bool:
    """Tell whether the message is from a fleet device at its site; file it otherwise."""
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


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger says of one command: its device, its report status and signature."""

    device_id: str
    status: str | None
    signature: str | None


def read_ledger(engine: Engine, reports: list[Incoming]) -> dict[str, LedgerEntry]:
    """The ledger entries of the commands ``reports`` answer."""
    ids = sorted(
        {
            m.document.command_id
            for m in reports
            if isinstance(m.document, DeviceReport)
            and not m.document.command_id.startswith(REFUSED_PREFIX)
        }
    )
    ledger: dict[str, LedgerEntry] = {}
    with engine.connect() as conn:
        for chunk in chunks(ids, IN_LIST):
            rows = conn.execute(
                select(
                    COMMANDS.c.command_id,
                    COMMANDS.c.device_id,
                    COMMANDS.c.status,
                    COMMANDS.c.report,
                ).where(COMMANDS.c.command_id.in_(chunk))
            )
            for cid, device, status, text in rows:
                signature = json.loads(text).get("signature") if text else None
                ledger[cid] = LedgerEntry(device, status, signature)
    return ledger


def authenticate(
    messages: list[Incoming],
    views: dict[str, DeviceView],
    keys: dict[str, str],
    ledger: dict[str, LedgerEntry],
    rejections: list[Rejection],
    stats: GatewayStats,
    now_ms: int,
    max_skew_ms: int,
) -> list[Incoming]:
    """Keep the messages :func:`fieldgate.devices.refusal_of` lets through; file the others.

    Messages are checked in arrival order, each against what the ones before it taken.
    """
    newest: dict[str, tuple[int, int]] = {}
    hellos: dict[str, str | None] = {}
    answered: dict[str, str | None] = {}
    kept: list[Incoming] = []
    for message in messages:
        document = message.document
        device_id = document.device_id
        view = views[device_id]
        last = newest.get(device_id, view.hlc)
        if isinstance(document, Hello):
            taken_hello = hellos.get(device_id, view.hello_signature)
            known = Known(keys.get(device_id), last, taken_signature=taken_hello)
        else:
            entry = ledger.get(document.command_id)
            if document.command_id in answered:
                taken: str | None = answered[document.command_id]
            else:
                taken = entry.signature if entry is not None else None
            known = Known(
                keys.get(device_id),
                last,
                entry.device_id if entry is not None else None,
                document.command_id in answered or (entry is not None and entry.status is not None),
                taken,
            )
        refused = refusal_of(document, known, now_ms, max_skew_ms)
        if refused is not None:
            stats.refused[refused.kind.value] = stats.refused.get(refused.kind.value, 0) + 1
            rejections.append(
                Rejection(
                    message.topic,
                    device_id,
                    "gateway",
                    f"{refused.kind.value}: {refused.reason}",
                    message.payload,
                )
            )
            continue
        kept.append(message)
        if document.hlc is not None:
            newest[device_id] = max(last, (document.hlc.wall_ms, document.hlc.counter))
        if isinstance(document, Hello):
            hellos[device_id] = document.signature
        elif not document.command_id.startswith(REFUSED_PREFIX):
            answered.setdefault(document.command_id, document.signature)
    return kept


def match(
    ledger: dict[str, LedgerEntry],
    reports: list[Incoming],
    rejections: list[Rejection],
    stats: GatewayStats,
) -> tuple[list[DeviceReport], list[DeviceReport]]:
    """Sort authenticated reports: first answers, and every report that may move device state.

    Every report here passed :func:`authenticate`, so it answers a command the ledger
    sent to its device (the first time or again), or is the device's refusal of input it
    could not authenticate (filed with the device as its source: it answers no command).
    """
    readings: list[DeviceReport] = []
    fresh: list[DeviceReport] = []
    taken: set[str] = set()
    for message in reports:
        report = message.document
        assert isinstance(report, DeviceReport)
        readings.append(report)
        if report.command_id.startswith(REFUSED_PREFIX):
            reason = f"{report.command_id}: {report.reason}"
            rejections.append(
                Rejection(message.topic, report.device_id, "device", reason, message.payload)
            )
            stats.refusals += 1
        elif ledger[report.command_id].status is not None or report.command_id in taken:
            stats.duplicates += 1
        else:
            taken.add(report.command_id)
            fresh.append(report)
    stats.fresh += len(fresh)
    return fresh, readings


def apply_state(
    reports: list[DeviceReport],
    hellos: list[Hello],
    views: dict[str, DeviceView],
    lock: threading.Condition,
    stats: GatewayStats,
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
    seen = now_us()
    with lock:
        for hello in hellos:
            view = views[hello.device_id]
            if hello.online and not view.online:
                came_online.add(hello.device_id)
            view.online = hello.online
            view.seen_us = seen
            view.hello_signature = hello.signature
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
                stats.stale += hlc < view.hlc
                continue
            for module, version in installed.items():
                if view.installed.get(module) != version:
                    changes[(device_id, module)] = version
            view.installed = dict(installed)
            view.health = health
            view.hlc = hlc
    return [(d, m, v) for (d, m), v in changes.items()], came_online


def persist(
    writer: Engine,
    fresh: list[DeviceReport],
    views: dict[str, DeviceView],
    rejections: list[Rejection],
    lock: threading.Condition,
    stats: GatewayStats,
) -> None:
    """Store first answers, device states and rejections in one transaction."""
    now = now_us()
    with writer.begin() as conn:
        if fresh:
            # One statement for the batch (executemany), not one per report.
            conn.execute(
                update(COMMANDS)
                .where(COMMANDS.c.command_id == bindparam("b_command_id"))
                .where(COMMANDS.c.status.is_(None))
                .values(
                    status=bindparam("b_status"),
                    report=bindparam("b_report"),
                    reported_us=now,
                ),
                [
                    {
                        "b_command_id": r.command_id,
                        "b_status": r.status.value,
                        "b_report": r.model_dump_json(),
                    }
                    for r in fresh
                ],
            )
        with lock:
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
                    "hello_signature": v.hello_signature,
                }
                for v in views.values()
            ]
        upsert_devices(conn, rows)
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
    stats.rejected += sum(r.source == "gateway" for r in rejections)


def audit(store: Store, rejections: list[Rejection]) -> None:
    """File every rejection and device refusal in the audit log."""
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
        store.audit.append_many(events)
