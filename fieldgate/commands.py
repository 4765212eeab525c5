"""Device commands and reports: what travels to edge devices and back.

A command id is the idempotency key of one effect: the hash of plan id, wave,
device and action. A device that sees the same id twice applies it once.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field, model_validator

from fieldgate.contract import Contract, VersionStr, canonical_json, sha256_hex
from fieldgate.manifest import Digest, Name


class Action(StrEnum):
    """What a command asks a device to do."""

    install = "install"
    rollback = "rollback"
    validate = "validate"


def command_id_for(plan_id: str, wave: int, device_id: str, action: Action | str) -> str:
    """The idempotency key of one effect on one device."""
    key = {"plan_id": plan_id, "wave": wave, "device_id": device_id, "action": str(action)}
    return "cmd-" + sha256_hex(canonical_json(key))[:32]


class StartWindow(Contract):
    """A span in which a device may start a command: one opening of its site's maintenance
    window, read in the site's time zone by the control plane and given here in UTC."""

    opens: datetime
    """When the window opens (time-zone aware)."""
    closes: datetime
    """When it closes; a command not started by then may not start in this window."""

    @model_validator(mode="after")
    def _ordered(self) -> StartWindow:
        if self.opens.tzinfo is None or self.closes.tzinfo is None:
            raise ValueError("window times must carry a time zone")
        if self.closes <= self.opens:
            raise ValueError("a window must close after it opens")
        return self


class WindowState(StrEnum):
    """Whether a command may start at a given instant."""

    open = "open"
    """It may start now (no windows, or inside one)."""
    waiting = "waiting"
    """Not now: a later window of the command opens first."""
    missed = "missed"
    """Never: every window the command may start in has closed."""


class DeviceCommand(Contract):
    """One change or check addressed to one device."""

    command_id: str = Field(pattern=r"^cmd-[0-9a-f]{32}$")
    """Idempotency key: hash of plan id, wave, device and action."""
    plan_id: str
    """Plan the command belongs to."""
    plan_hash: str
    """Hash of the approved plan revision."""
    wave: int = Field(ge=0)
    """Wave index, from 0."""
    device_id: str
    """Device addressed."""
    action: Action
    """install, rollback or validate."""
    module: Name
    """Module acted on."""
    version: VersionStr
    """Version to install or return to."""
    digest: Digest
    """Digest of the artifact to install."""
    issued_at: datetime
    """When the control plane issued the command."""
    deadline: datetime
    """After this the device must not start the command."""
    windows: list[StartWindow] | None = None
    """The maintenance windows the command may start in, in order (None: any time before
    the deadline). A device never starts it outside them: before or between them it waits
    for the next one to open, after the last one it reports the command expired."""
    signature: str | None = None
    """Base64 ed25519 signature of the control plane over the command without this field."""

    def signing_payload(self) -> dict[str, object]:
        """The fields the control plane signs."""
        return self.model_dump(mode="json", exclude={"signature"})

    def window_state(self, at: datetime) -> WindowState:
        """Whether the command may start at ``at``, must wait for a window, or missed them all."""
        return window_state(self.windows, at)

    def next_opening(self, at: datetime) -> datetime | None:
        """When the next of the command's windows opens after ``at`` (None: none does)."""
        return next_opening(self.windows, at)


def window_state(windows: list[StartWindow] | None, at: datetime) -> WindowState:
    """Whether a command with ``windows`` may start at ``at`` (see :class:`WindowState`)."""
    if windows is None or any(w.opens <= at < w.closes for w in windows):
        return WindowState.open
    return WindowState.waiting if next_opening(windows, at) is not None else WindowState.missed


def next_opening(windows: list[StartWindow] | None, at: datetime) -> datetime | None:
    """The first opening among ``windows`` after ``at``, if any."""
    later = [w.opens for w in windows or [] if w.opens > at]
    return min(later) if later else None


class ReportStatus(StrEnum):
    """How a command ended on the device."""

    applied = "applied"
    failed = "failed"
    rejected = "rejected"
    expired = "expired"


class Health(Contract):
    """A device's own view of its health after a command."""

    ok: bool
    """Whether the device and the module run as they should."""
    score: float = Field(default=1.0, ge=0, le=1)
    """Health score from 0 (down) to 1 (fully healthy)."""
    note: str = ""
    """Free text from the device. Untrusted: data, never an instruction."""


class HybridTimestamp(Contract):
    """A hybrid logical clock reading: physical milliseconds, a counter, and the node."""

    wall_ms: int = Field(ge=0)
    """Physical time in milliseconds since the epoch."""
    counter: int = Field(default=0, ge=0)
    """Logical counter for events within one millisecond."""
    node: str
    """Who produced the reading."""

    def key(self) -> tuple[int, int, str]:
        """Total order of readings."""
        return (self.wall_ms, self.counter, self.node)


class DeviceReport(Contract):
    """What a device says after handling a command."""

    command_id: str
    """The command this report answers."""
    device_id: str
    """The reporting device."""
    status: ReportStatus
    """applied, failed, rejected or expired."""
    installed: dict[Name, VersionStr]
    """Modules installed on the device after the command."""
    health: Health
    """Health after the command."""
    reason: str = ""
    """Why the command failed or was rejected."""
    hlc: HybridTimestamp
    """When the device produced the report."""
    signature: str | None = None
    """Base64 ed25519 signature of the device's own key over the report without this field."""

    def signing_payload(self) -> dict[str, object]:
        """The fields the device signs."""
        return self.model_dump(mode="json", exclude={"signature"})
