"""The scenario format (fieldgate/v1): a fleet, a catalog, a request, what people and the world
do, and what must be true at the end. See SCENARIOS.md."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fieldgate.approvals import Decision
from fieldgate.audit import EventKind
from fieldgate.contract import ApiVersion, Contract, load_yaml
from fieldgate.errors import ScenarioInvalid
from fieldgate.fleet import FleetInventory
from fieldgate.manifest import CatalogEntry, Name
from fieldgate.plan import ScheduleMode


class Category(StrEnum):
    """What a scenario exercises."""

    planning = "planning"
    policy = "policy"
    approval = "approval"
    execution = "execution"
    faults = "faults"
    injection = "injection"
    clarification = "clarification"


class Outcome(StrEnum):
    """How a run settles."""

    completed = "completed"
    denied = "denied"
    awaiting_approval = "awaiting_approval"
    rejected = "rejected"
    aborted = "aborted"
    rolled_back = "rolled_back"
    needs_clarification = "needs_clarification"
    expired = "expired"


class ScenarioContext(Contract):
    """The world at the start."""

    now: datetime
    """Virtual clock start (UTC)."""
    freeze: bool = False
    """Whether a change freeze is in force."""

    @field_validator("now")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a time zone, e.g. 2026-11-21T10:00:00Z")
        return value


class ScriptedApproval(Contract):
    """What one approver does once the plan is queued."""

    by: str = Field(min_length=1)
    """Who decides (they need not hold a role: then it must not count)."""
    decision: Decision
    """approve or reject."""
    comment: str = ""
    """Comment."""


class FaultKind(StrEnum):
    """Faults the fleet twin can inject."""

    install_fails = "install_fails"
    health_degrades = "health_degrades"
    offline = "offline"
    slow = "slow"
    rollback_fails = "rollback_fails"
    """The device's rollback commands fail: the version it has stays."""
    flapping = "flapping"
    """The device goes offline and comes back, every ``period_minutes``."""


class Fault(Contract):
    """A fault injected during execution, by wave and count or by device list."""

    kind: FaultKind
    """What goes wrong."""
    wave: int | None = Field(default=None, ge=1)
    """Wave (from 1) whose devices are hit."""
    count: int | None = Field(default=None, ge=1)
    """How many devices of the wave are hit (all when absent)."""
    devices: list[str] | None = None
    """Devices hit."""
    duration_minutes: int | None = Field(default=None, ge=1)
    """For offline and slow: how long the condition lasts (for ever when absent)."""
    after_minutes: int | None = Field(default=None, ge=0)
    """The fault starts this long after the device's install is applied (offline after
    install, degraded after soak); absent: when it takes hold."""
    period_minutes: int | None = Field(default=None, ge=1)
    """For flapping: minutes offline, then as many online, and again."""

    @model_validator(mode="after")
    def _one_target(self) -> Fault:
        if (self.wave is None) == (self.devices is None):
            raise ValueError("a fault names either a wave (with an optional count) or devices")
        if self.count is not None and self.wave is None:
            raise ValueError("count goes with wave")
        if (self.kind is FaultKind.flapping) != (self.period_minutes is not None):
            raise ValueError("period_minutes goes with kind flapping, and flapping needs it")
        return self


_INJECTION_FIELD = re.compile(
    r"^(telemetry\.note|device\.labels\.[A-Za-z0-9_.-]+|manifest\.description|request_ticket)$"
)


class Injection(Contract):
    """Untrusted text put where agents read it."""

    field: str
    """telemetry.note, device.labels.<key>, manifest.description or request_ticket."""
    text: str
    """The text."""
    device: str | None = None
    """Device, for telemetry and label fields."""
    module: Name | None = None
    """Module whose manifests get the description (all modules when absent)."""

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str) -> str:
        if not _INJECTION_FIELD.match(value):
            raise ValueError(
                f"{value!r} is not an injection field (telemetry.note, device.labels.<key>, "
                "manifest.description, request_ticket)"
            )
        return value

    @model_validator(mode="after")
    def _device_when_needed(self) -> Injection:
        on_device = self.field.startswith(("telemetry.", "device."))
        if on_device and self.device is None:
            raise ValueError(f"field {self.field} needs a device")
        return self


class RoleCount(Contract):
    """A number of approvals from one role."""

    role: str
    """Role name."""
    count: int = Field(ge=1)
    """How many distinct people of that role."""


class ExpectPlan(Contract):
    """Checks on the last plan proposed."""

    module: Name | None = None
    version: str | None = None
    targets: int | None = Field(default=None, ge=0)
    first_wave_max: int | None = Field(default=None, ge=0)
    waves_min: int | None = Field(default=None, ge=1)
    schedule: ScheduleMode | None = None
    rollback_version: str | None = None
    """The plan's rollback target version."""


class ExpectDevices(Contract):
    """Checks on the fleet twin at the end."""

    versions: dict[Name, dict[str, int]] | None = None
    """Device counts by installed version, per module."""
    touched_max: int | None = Field(default=None, ge=0)
    """Devices that received any command, at most."""


class ExpectAudit(Contract):
    """Checks on the audit trail."""

    verify: bool | None = None
    """Whether the hash chain verifies."""
    kinds: list[EventKind] = []
    """Event kinds that must each occur."""


class Expect(Contract):
    """What must be true at the end; each key present is one check."""

    outcome: Outcome | None = None
    deny_includes: list[str] | None = None
    approvals_required: list[RoleCount] | None = None
    plan: ExpectPlan | None = None
    devices: ExpectDevices | None = None
    audit: ExpectAudit | None = None


class Scenario(Contract):
    """One self-contained evaluation case."""

    apiVersion: ApiVersion
    """Contract version."""
    kind: Literal["Scenario"]
    """Document kind."""
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    """Unique id, used in reports."""
    category: Category
    """What the scenario exercises."""
    description: str = ""
    """One line for humans."""
    context: ScenarioContext
    """Virtual clock start and freeze."""
    roster: dict[str, list[str]] = {}
    """Who holds which roles."""
    actor: str
    """Who makes the request."""
    fleet: FleetInventory
    """Sites and devices."""
    catalog: list[CatalogEntry] = Field(min_length=1)
    """Every module version that exists."""
    request: str = Field(min_length=1)
    """What the engineer types."""
    approvals: list[ScriptedApproval] = []
    """What approvers do once the plan is queued, in order."""
    faults: list[Fault] = []
    """Faults injected by the fleet twin."""
    injections: list[Injection] = []
    """Untrusted text put where agents read it."""
    expect: Expect
    """What must be true at the end."""

    @model_validator(mode="after")
    def _references_exist(self) -> Scenario:
        device_ids = {d.id for d in self.fleet.all_devices()}
        modules = {e.name for e in self.catalog}
        refs = [e.name + "@" + e.version for e in self.catalog]
        for index, ref in enumerate(refs):
            if ref in refs[:index]:
                raise ValueError(f"catalog[{index}]: {ref} is listed twice")
        for index, fault in enumerate(self.faults):
            for device in fault.devices or []:
                if device not in device_ids:
                    raise ValueError(f"faults[{index}].devices: unknown device {device!r}")
        for index, injection in enumerate(self.injections):
            if injection.device is not None and injection.device not in device_ids:
                raise ValueError(f"injections[{index}].device: unknown device {injection.device!r}")
            if injection.module is not None and injection.module not in modules:
                raise ValueError(f"injections[{index}].module: unknown module {injection.module!r}")
        return self


def load_scenario(path: str | Path) -> Scenario:
    """Load and check one scenario file."""
    return load_yaml(path, Scenario, ScenarioInvalid)


def variant(scenario: Scenario, **changes: Any) -> Scenario:
    """A copy of ``scenario`` with top-level keys replaced (validated like a scenario file)."""
    data = scenario.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.update(changes)
    return Scenario.model_validate(data)
