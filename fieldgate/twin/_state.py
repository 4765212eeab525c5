"""The twin's working copy: simulated devices, ledger entries and fault entries in memory.

Each knows how to become a row of the twin's tables and how to come back from one;
what is derived (a device's queue, running and held commands) is rebuilt from the
ledger on load rather than stored twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from operator import itemgetter
from typing import Any, ClassVar

from fieldgate.commands import (
    Action,
    DeviceCommand,
    DeviceReport,
    Health,
    ReportStatus,
    StartWindow,
    WindowState,
    window_state,
)
from fieldgate.epoch import at_ms, at_us, to_us
from fieldgate.fleet import Device
from fieldgate.scenario import Fault, FaultKind
from fieldgate.twin._keys import TwinKeys
from fieldgate.twin._models import DeviceState, DispatchOutcome, Effect, EffectPhase


def at_or_none(ms: int | None) -> datetime | None:
    """Return :func:`at_ms` of ``ms``, or None."""
    return None if ms is None else at_ms(ms)


_validate_report = DeviceReport.__pydantic_validator__.validate_python
"""``DeviceReport.model_validate`` without its wrapper, which costs a fifth of the call."""

to_json = json.JSONEncoder(separators=(",", ":")).encode
"""Encode a document as compact JSON (one encoder for all: ``json.dumps`` with options
builds a new one per call, which shows at ten thousand devices)."""


@lru_cache(maxsize=4096)
def shared_health(ok: bool, score: float, note: str) -> Health:
    """Return one ``Health`` per distinct reading, shared by the reports that carry it.

    Health is immutable, and a fleet reports a few hundred distinct readings at most:
    sharing them spares the cycle collector two objects per report.
    """
    return Health(ok=ok, score=score, note=note)


@lru_cache(maxsize=4096)
def _installed_json(items: tuple[tuple[str, str], ...]) -> str:
    return to_json(dict(items))


def installed_json(installed: dict[str, str]) -> str:
    """Encode a device's installed modules as the ledger stores them (compact, in order).

    A fleet runs a handful of distinct module sets, so each is encoded once.
    """
    return _installed_json(tuple(installed.items()))


@dataclass(slots=True)
class Binding:
    """A fault holding one device over [since_ms, until_ms).

    A fault with ``after_minutes`` binds ``delayed``: it holds nothing (``since_ms`` None)
    until the device applies an install, and starts that long after it. A ``flapping``
    fault alternates ``period_ms`` offline and ``period_ms`` online from ``since_ms``.
    """

    fault_seq: int
    kind: FaultKind
    since_ms: int | None
    until_ms: int | None
    delayed: bool = False
    period_ms: int | None = None

    def active(self, t: int) -> bool:
        """Tell whether the fault holds at ``t``."""
        since = self.since_ms
        return since is not None and since <= t and (self.until_ms is None or t < self.until_ms)

    def cuts_off(self, t: int) -> bool:
        """Tell whether the fault makes the device unreachable at ``t``."""
        if not self.active(t):
            return False
        if self.kind is FaultKind.offline:
            return True
        if self.kind is FaultKind.flapping and self.period_ms and self.since_ms is not None:
            return (t - self.since_ms) // self.period_ms % 2 == 0
        return False

    def back_ms(self, t: int) -> int | None:
        """When a fault that cuts the device off at ``t`` lets it back (None: never)."""
        if self.kind is FaultKind.flapping and self.period_ms and self.since_ms is not None:
            back = self.since_ms + ((t - self.since_ms) // self.period_ms + 1) * self.period_ms
            return back if self.until_ms is None else min(back, self.until_ms)
        return self.until_ms

    def encoded(self) -> list[Any]:
        """The binding as the device's stored state keeps it."""
        return [
            self.fault_seq,
            str(self.kind),
            self.since_ms,
            self.until_ms,
            self.delayed,
            self.period_ms,
        ]

    @classmethod
    def decoded(cls, values: list[Any]) -> Binding:
        """Rebuild a binding from :meth:`encoded` (older states have four values)."""
        seq, kind, since, until, *rest = values
        return cls(seq, FaultKind(kind), since, until, *rest)


DEGRADED_SCORE = 0.3
"""Health score of a device while a delayed ``health_degrades`` fault holds it."""


@dataclass(slots=True, eq=False)
class SimDevice:
    """The working copy of one simulated device."""

    id: str
    site: str
    device_class: str
    arch: str
    memory_mb: int
    labels: dict[str, str]
    installed_at_start: dict[str, str]
    note: str = ""
    bindings: tuple[Binding, ...] = ()
    # Derived from the ledger (replayed on load), never stored with the device. Queues are
    # short tuples rather than deques: ten thousand devices make ten thousand fewer objects
    # for the cycle collector to walk.
    installed: dict[str, str] = field(init=False)
    ok: bool = True
    score: float = 1.0
    hlc_wall: int = 0
    hlc_counter: int = 0
    queue: tuple[str, ...] = ()
    running: str | None = None
    held: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.installed = dict(self.installed_at_start)

    @classmethod
    def of(cls, device: Device) -> SimDevice:
        """Start simulating ``device`` as the inventory describes it."""
        return cls(
            id=device.id,
            site=device.site,
            device_class=device.device_class,
            arch=device.arch,
            memory_mb=device.memory_mb,
            labels=dict(device.labels),
            installed_at_start=dict(device.installed),
        )

    def under(self, kind: FaultKind, t: int) -> bool:
        """Tell whether a fault of ``kind`` holds the device at ``t``."""
        return any(b.kind is kind and b.active(t) for b in self.bindings)

    def faults_at(self, t: int) -> set[FaultKind]:
        """Return the kinds of fault that hold the device at ``t``."""
        return {b.kind for b in self.bindings if b.active(t)}

    def reachable(self, t: int) -> bool:
        """Tell whether the device is online at ``t``."""
        return not self.bindings or not any(b.cuts_off(t) for b in self.bindings)

    def back_online_ms(self, t: int) -> int | None:
        """Return when the device is reachable again from ``t`` (``t`` if it is); None if never."""
        while True:
            ends = [b.back_ms(t) for b in self.bindings if b.cuts_off(t)]
            if not ends:
                return t
            if None in ends:
                return None
            t = max(e for e in ends if e is not None)

    def degraded_since_install(self, t: int) -> bool:
        """Tell whether a delayed ``health_degrades`` fault holds the device at ``t``."""
        return any(
            b.delayed and b.kind is FaultKind.health_degrades and b.active(t) for b in self.bindings
        )

    def replay(self, effect: LedgerEntry) -> None:
        """Bring the device to where a completed ``effect`` left it."""
        if effect.version_after is None:
            self.installed.pop(effect.module, None)
        else:
            self.installed[effect.module] = effect.version_after
        if effect.health_ok is not None and effect.health_score is not None:
            self.ok, self.score = effect.health_ok, effect.health_score

    def state_json(self) -> str:
        """Serialize what the ledger does not say: labels, note, fault bindings, the start."""
        return to_json(
            {
                "installed_at_start": self.installed_at_start,
                "labels": self.labels,
                "note": self.note,
                "faults": [b.encoded() for b in self.bindings],
            }
        )

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "twin_id",
        "device_id",
        "site",
        "device_class",
        "arch",
        "memory_mb",
        "state",
    )
    """``twin_devices`` columns, in the order of :meth:`row`."""

    def row(self, twin_id: str) -> tuple[Any, ...]:
        """Return the values of :attr:`COLUMNS`, in order."""
        return (
            twin_id,
            self.id,
            self.site,
            self.device_class,
            self.arch,
            self.memory_mb,
            self.state_json(),
        )

    @classmethod
    def from_row(cls, row: Any) -> SimDevice:
        """Rebuild a device from its ``twin_devices`` row."""
        state = json.loads(row.state)
        return cls(
            id=row.device_id,
            site=row.site,
            device_class=row.device_class,
            arch=row.arch,
            memory_mb=row.memory_mb,
            labels=state["labels"],
            installed_at_start=state["installed_at_start"],
            note=state["note"],
            bindings=tuple(Binding.decoded(values) for values in state["faults"]),
        )

    def health(self, t: int | None = None) -> Health:
        """Return the health the device would report at ``t`` (default: as last assessed)."""
        ok, score = self.health_values(t)
        return shared_health(ok, score, self.note)

    def health_values(self, t: int | None) -> tuple[bool, float]:
        """Return ``(ok, score)`` at ``t``: a delayed degradation shows once it started."""
        if t is not None and self.bindings and self.degraded_since_install(t):
            return False, min(self.score, DEGRADED_SCORE)
        return self.ok, self.score

    def view(self, t: int) -> DeviceState:
        """Return the public view of the device at ``t``."""
        return DeviceState.model_construct(
            id=self.id,
            site=self.site,
            device_class=self.device_class,
            arch=self.arch,
            memory_mb=self.memory_mb,
            labels=dict(self.labels),
            installed=dict(self.installed),
            health=self.health(t),
            online=self.reachable(t),
        )


@dataclass(slots=True, eq=False)
class LedgerEntry:
    """The working copy of one ledger entry: a command, and what became of it.

    The command is kept as its fields (not the caller's object) and the report as the
    few values it is made of, so that ten thousand entries stay small in memory and in
    the store; :meth:`command` and :meth:`report` rebuild them exactly.
    """

    seq: int
    command_id: str
    device_id: str
    plan_id: str
    plan_hash: str
    wave: int
    action: Action
    module: str
    version: str
    digest: str
    issued_us: int
    deadline_us: int
    signature: str | None
    outcome: DispatchOutcome
    dispatched_ms: int
    windows: tuple[tuple[int, int], ...] | None = None
    """The windows the command may start in, as (opens, closes) µs since the epoch."""
    phase: EffectPhase = EffectPhase.queued
    started_ms: int | None = None
    due_ms: int | None = None
    completed_ms: int | None = None
    reported_ms: int | None = None
    status: ReportStatus | None = None
    version_before: str | None = None
    version_after: str | None = None
    health_ok: bool | None = None
    health_score: float | None = None
    installed_json: str | None = None
    """Modules installed when the report went out, as JSON."""
    note: str | None = None
    """The device's note when the report went out (None when empty)."""
    hlc: tuple[int, int] | None = None
    """The hybrid logical clock reading of the report (wall ms, counter)."""
    report_signature: str | None = None
    """The device's signature of the report once made; not stored (ed25519 signatures are
    deterministic, so a loaded twin makes the same one again)."""
    dirty: int = 0
    """The :attr:`MOVING` columns changed since the entry was last written, one bit each
    in their order (see :func:`moving_bits`); not stored. Write-through updates only those
    (:func:`changed_columns`)."""

    FIXED: ClassVar[tuple[str, ...]] = (
        "twin_id",
        "command_id",
        "seq",
        "device_id",
        "plan_id",
        "plan_hash",
        "wave",
        "action",
        "module",
        "version",
        "digest",
        "issued_us",
        "deadline_us",
        "signature",
        "outcome",
        "dispatched_ms",
        "windows",
    )
    """``twin_effects`` columns set once, at dispatch (the key first)."""
    MOVING: ClassVar[tuple[str, ...]] = (
        "phase",
        "started_ms",
        "due_ms",
        "completed_ms",
        "reported_ms",
        "status",
        "version_before",
        "version_after",
        "health_ok",
        "health_score",
        "installed",
        "note",
        "hlc_ms",
        "hlc_counter",
    )
    """``twin_effects`` columns that move after dispatch."""

    @classmethod
    def accept(
        cls, command: DeviceCommand, seq: int, outcome: DispatchOutcome, t: int
    ) -> LedgerEntry:
        """Start the entry of ``command``, dispatched at ``t`` with ``outcome``."""
        return cls(
            seq=seq,
            command_id=command.command_id,
            device_id=command.device_id,
            plan_id=command.plan_id,
            plan_hash=command.plan_hash,
            wave=command.wave,
            action=command.action,
            module=command.module,
            version=command.version,
            digest=command.digest,
            issued_us=to_us(command.issued_at),
            deadline_us=to_us(command.deadline),
            signature=command.signature,
            outcome=outcome,
            dispatched_ms=t,
            windows=None
            if command.windows is None
            else tuple((to_us(w.opens), to_us(w.closes)) for w in command.windows),
        )

    @classmethod
    def from_row(cls, row: Any) -> LedgerEntry:
        """Rebuild a ledger entry from its ``twin_effects`` row."""
        return cls(
            seq=row.seq,
            command_id=row.command_id,
            device_id=row.device_id,
            plan_id=row.plan_id,
            plan_hash=row.plan_hash,
            wave=row.wave,
            action=Action(row.action),
            module=row.module,
            version=row.version,
            digest=row.digest,
            issued_us=row.issued_us,
            deadline_us=row.deadline_us,
            signature=row.signature,
            outcome=DispatchOutcome(row.outcome),
            dispatched_ms=row.dispatched_ms,
            windows=None if row.windows is None else tuple(map(tuple, json.loads(row.windows))),
            phase=EffectPhase(row.phase),
            started_ms=row.started_ms,
            due_ms=row.due_ms,
            completed_ms=row.completed_ms,
            reported_ms=row.reported_ms,
            status=None if row.status is None else ReportStatus(row.status),
            version_before=row.version_before,
            version_after=row.version_after,
            health_ok=row.health_ok,
            health_score=row.health_score,
            installed_json=row.installed,
            note=row.note,
            hlc=None if row.hlc_ms is None else (row.hlc_ms, row.hlc_counter),
        )

    def moving(self) -> tuple[Any, ...]:
        """Return the values of :attr:`MOVING`, in order.

        Enums are written with ``str()``, their value: ``.value`` is a property lookup that
        costs Python 3.11 several times as much, and the twin reads it per row.
        """
        return (
            str(self.phase),
            self.started_ms,
            self.due_ms,
            self.completed_ms,
            self.reported_ms,
            None if self.status is None else str(self.status),
            self.version_before,
            self.version_after,
            self.health_ok,
            self.health_score,
            self.installed_json,
            self.note,
            *(self.hlc or (None, None)),
        )

    def row(self, twin_id: str) -> tuple[Any, ...]:
        """Return the values of :attr:`FIXED` then :attr:`MOVING`, in order."""
        return (
            twin_id,
            self.command_id,
            self.seq,
            self.device_id,
            self.plan_id,
            self.plan_hash,
            self.wave,
            str(self.action),
            self.module,
            self.version,
            self.digest,
            self.issued_us,
            self.deadline_us,
            self.signature,
            str(self.outcome),
            self.dispatched_ms,
            None if self.windows is None else to_json(self.windows),
            *self.moving(),
        )

    def start_windows(self) -> list[StartWindow] | None:
        """The windows the command may start in, as the command carries them."""
        if self.windows is None:
            return None
        return [StartWindow(opens=at_us(o), closes=at_us(c)) for o, c in self.windows]

    def window_state(self, t: int) -> WindowState:
        """Whether the command may start at ``t`` (ms), must wait for a window, or missed them."""
        if self.windows is None:
            return WindowState.open
        return window_state(self.start_windows(), at_ms(t))

    def next_opening_ms(self, t: int) -> int | None:
        """When the next of the command's windows opens after ``t`` (ms), if one does."""
        later = [o // 1000 for o, _ in self.windows or () if o // 1000 > t]
        return min(later) if later else None

    def expired(self) -> bool:
        """Tell whether the command started after its deadline or its last window closed."""
        started = self.started_ms
        if started is None:
            return False
        if started * 1000 > self.deadline_us:
            return True
        return self.windows is not None and self.window_state(started) is WindowState.missed

    def command(self) -> DeviceCommand:
        """Rebuild the command as dispatched."""
        return DeviceCommand.model_validate(
            {
                "command_id": self.command_id,
                "plan_id": self.plan_id,
                "plan_hash": self.plan_hash,
                "wave": self.wave,
                "device_id": self.device_id,
                "action": self.action,
                "module": self.module,
                "version": self.version,
                "digest": self.digest,
                "issued_at": at_us(self.issued_us),
                "deadline": at_us(self.deadline_us),
                "windows": self.start_windows(),
                "signature": self.signature,
            }
        )

    def report(self, keys: TwinKeys) -> DeviceReport | None:
        """Rebuild the report the device sent, signed with its key (None before it was sent)."""
        if self.hlc is None or self.status is None or self.installed_json is None:
            return None
        return self.signed_report(keys, json.loads(self.installed_json))

    def signed_report(self, keys: TwinKeys, installed: dict[str, str]) -> DeviceReport:
        """Build the entry's report with ``installed``, signed once with the device's key.

        One dict serves both: it is the signed payload, field for field as
        :meth:`DeviceReport.signing_payload` dumps it (a dump per report would cost as much
        as the rest of the step), then, with the shared health and the signature put in,
        what the report is validated from.
        """
        assert self.hlc is not None and self.status is not None
        assert self.health_ok is not None and self.health_score is not None
        health = shared_health(self.health_ok, self.health_score, self.note or "")
        values: dict[str, Any] = {
            "command_id": self.command_id,
            "device_id": self.device_id,
            "status": str(self.status),
            "installed": installed,
            "health": {"ok": health.ok, "score": health.score, "note": health.note},
            "reason": self.reason(),
            "hlc": {"wall_ms": self.hlc[0], "counter": self.hlc[1], "node": self.device_id},
        }
        if self.report_signature is None:
            self.report_signature = keys.sign(self.device_id, values)
        values["health"] = health
        values["signature"] = self.report_signature
        return _validate_report(values)

    def reason(self) -> str:
        """Say why the command did not apply (empty when it did)."""
        if self.status is ReportStatus.applied:
            return ""
        if self.status is ReportStatus.expired and self.windows:
            closed = at_us(self.windows[-1][1]).isoformat()
            return (
                f"its last maintenance window closed at {closed} before the device could "
                "start the command"
            )
        if self.status is ReportStatus.expired:
            deadline = at_us(self.deadline_us).isoformat()
            return f"deadline {deadline} passed before the device could start the command"
        if self.status is ReportStatus.failed:
            kept = f"{self.module} {self.version_before}" if self.version_before else "nothing"
            what = f"{self.action.value} of {self.module} {self.version}"
            return f"{what} failed; {kept} stays installed"
        return ""

    def public(self, keys: TwinKeys) -> Effect:
        """Return the public ledger entry (its report signed with ``keys``)."""
        return Effect.model_construct(
            seq=self.seq,
            command_id=self.command_id,
            device_id=self.device_id,
            plan_id=self.plan_id,
            wave=self.wave,
            action=self.action,
            module=self.module,
            version=self.version,
            windows=self.start_windows(),
            outcome=self.outcome,
            phase=self.phase,
            dispatched_at=at_ms(self.dispatched_ms),
            started_at=at_or_none(self.started_ms),
            completed_at=at_or_none(self.completed_ms),
            reported_at=at_or_none(self.reported_ms),
            status=self.status,
            version_before=self.version_before,
            version_after=self.version_after,
            report=self.report(keys),
        )


def moving_bits(*columns: str) -> int:
    """Return the bits of :attr:`LedgerEntry.dirty` that stand for ``columns`` of MOVING."""
    return sum(1 << LedgerEntry.MOVING.index(c) for c in columns)


STARTED = moving_bits("phase", "started_ms", "due_ms")
"""What a device starting a command changes."""
COMPLETED = moving_bits(
    "completed_ms", "status", "version_before", "version_after", "health_ok", "health_score"
)
"""What a command completing changes (its phase moves when it is reported, or held)."""
HELD = moving_bits("phase")
"""What a completed command held for an offline device changes."""
REPORTED = moving_bits("phase", "reported_ms", "installed", "note", "hlc_ms", "hlc_counter")
"""What a report going out changes."""


@lru_cache(maxsize=256)
def changed_columns(
    dirty: int,
) -> tuple[tuple[str, ...], Callable[[LedgerEntry], tuple[Any, ...]]]:
    """Return the MOVING columns an entry with ``dirty`` bits writes, and what reads their values.

    No bit set writes them all: an entry noted as changed without saying what moved is
    written whole rather than not at all.
    """
    count = len(LedgerEntry.MOVING)
    indexes = [i for i in range(count) if dirty >> i & 1] or list(range(count))
    columns = tuple(LedgerEntry.MOVING[i] for i in indexes)
    if len(indexes) == count:
        return columns, LedgerEntry.moving
    pick = itemgetter(*indexes)
    if len(indexes) == 1:
        return columns, lambda entry: (pick(entry.moving()),)
    return columns, lambda entry: pick(entry.moving())


@dataclass(slots=True)
class FaultEntry:
    """A fault added to the twin and what is left of its budget."""

    seq: int
    fault: Fault
    added_ms: int
    remaining: int | None
    """For a wave fault with a count: devices it may still hit; None otherwise."""

    COLUMNS: ClassVar[tuple[str, ...]] = ("twin_id", "seq", "fault", "added_ms", "remaining")
    """``twin_faults`` columns, in the order of :meth:`row`."""

    @classmethod
    def from_row(cls, row: Any) -> FaultEntry:
        """Rebuild a fault entry from its ``twin_faults`` row."""
        return cls(row.seq, Fault.model_validate_json(row.fault), row.added_ms, row.remaining)

    def row(self, twin_id: str) -> tuple[Any, ...]:
        """Return the values of :attr:`COLUMNS`, in order."""
        fault = self.fault.model_dump_json(exclude_none=True)
        return (twin_id, self.seq, fault, self.added_ms, self.remaining)
