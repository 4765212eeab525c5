"""What the twin answers with: dispatch receipts, ledger entries, pending commands, device views."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from fieldgate.commands import Action, DeviceReport, Health, ReportStatus, StartWindow
from fieldgate.contract import Contract
from fieldgate.fleet import Device


class DispatchOutcome(StrEnum):
    """What became of one command handed to ``dispatch``."""

    accepted = "accepted"
    """The device is reachable: it runs the command now or after the ones before it."""
    queued = "queued"
    """The device is offline: the command is delivered when it comes back."""
    duplicate = "duplicate"
    """The command id was dispatched before; nothing new happens."""
    unknown_device = "unknown_device"
    """No device of the twin has that id; nothing happens."""


class EffectPhase(StrEnum):
    """Where a dispatched command stands."""

    queued = "queued"
    """Waiting for its device: offline, or busy with an earlier command."""
    running = "running"
    """Started on the device; completes when its simulated duration has passed."""
    held = "held"
    """Completed on a device that went offline meanwhile; the report waits for it to return."""
    done = "done"
    """Completed and reported."""


class DuplicateCommand(Contract):
    """A command whose id was dispatched before: what the twin holds for it."""

    command_id: str
    """The command's idempotency key."""
    device_id: str
    """The device the repeated command addresses."""
    first_outcome: DispatchOutcome
    """What the first dispatch of this id answered: accepted or queued."""
    phase: EffectPhase
    """Where the first command stands now."""
    report: DeviceReport | None = None
    """The report the first command produced, once it is done."""
    conflicting: bool = False
    """Whether the repeated command differs from the first (the first stands)."""


class DispatchResult(Contract):
    """What ``FleetTwin.dispatch`` did with the commands it was given (ids keep their order)."""

    at: datetime
    """Virtual time of the dispatch (UTC)."""
    wave: int
    """Wave index (from 0) the call was made for."""
    accepted: list[str] = []
    """Command ids sent to reachable devices: they run now or after earlier commands."""
    queued: list[str] = []
    """Command ids held for offline devices: delivered when each comes back."""
    duplicates: list[DuplicateCommand] = []
    """Commands whose id was dispatched before: nothing new happens."""
    unknown_device: list[str] = []
    """Command ids addressed to devices the twin does not have: nothing happens."""

    def outcome(self, command_id: str) -> DispatchOutcome | None:
        """Return what became of ``command_id`` in this dispatch (None if it was not in it)."""
        if command_id in self.accepted:
            return DispatchOutcome.accepted
        if command_id in self.queued:
            return DispatchOutcome.queued
        if any(d.command_id == command_id for d in self.duplicates):
            return DispatchOutcome.duplicate
        if command_id in self.unknown_device:
            return DispatchOutcome.unknown_device
        return None


class Effect(Contract):
    """One entry of the effect ledger: a command a device received and what became of it."""

    seq: int
    """Dispatch order within the twin, from 0."""
    command_id: str
    """Idempotency key; unique within the twin."""
    device_id: str
    """Device addressed."""
    plan_id: str
    """Plan the command belongs to."""
    wave: int
    """The command's wave index (from 0)."""
    action: Action
    """install, rollback or validate."""
    module: str
    """Module acted on."""
    version: str
    """Version the command names."""
    windows: list[StartWindow] | None = None
    """The maintenance windows the command may start in (None: any time before its deadline)."""
    outcome: DispatchOutcome
    """accepted or queued, as answered at dispatch."""
    phase: EffectPhase
    """queued, running, held or done."""
    dispatched_at: datetime
    """When it was dispatched (virtual time, UTC)."""
    started_at: datetime | None
    """When the device started it."""
    completed_at: datetime | None
    """When it completed on the device."""
    reported_at: datetime | None
    """When the device reported it."""
    status: ReportStatus | None
    """applied, failed or expired, once completed."""
    version_before: str | None
    """Installed version of the module before the command took effect."""
    version_after: str | None
    """Installed version of the module after it."""
    report: DeviceReport | None
    """The report, once sent."""


class PendingCommand(Contract):
    """A dispatched command whose report has not gone out yet."""

    command_id: str
    """Idempotency key."""
    device_id: str
    """Device addressed."""
    action: Action
    """install, rollback or validate."""
    module: str
    """Module acted on."""
    version: str
    """Version the command names."""
    phase: EffectPhase
    """queued, running or held."""
    dispatched_at: datetime
    """When it was dispatched (virtual time, UTC)."""
    due_at: datetime | None
    """When it completes, for a running command."""


class DeviceState(Contract):
    """A simulated device as it is now."""

    id: str
    """Device id."""
    site: str
    """Site id."""
    device_class: str
    """Device class."""
    arch: str
    """CPU architecture."""
    memory_mb: int
    """Memory in MiB."""
    labels: dict[str, str]
    """Labels, including any a scenario overrode."""
    installed: dict[str, str]
    """Installed modules by name, with their versions."""
    health: Health
    """Health as the device would report it now (its note is untrusted text)."""
    online: bool
    """Whether the device is reachable now."""

    def as_device(self) -> Device:
        """Return the device as a fleet inventory entry with what is installed now."""
        return Device.model_validate(
            {
                "id": self.id,
                "site": self.site,
                "class": self.device_class,
                "arch": self.arch,
                "memory_mb": self.memory_mb,
                "labels": dict(self.labels),
                "installed": dict(self.installed),
            }
        )
