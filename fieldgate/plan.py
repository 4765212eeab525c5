"""Rollout plans: what to install where, in which waves, with which gates.

A plan is immutable once proposed; an edit is a new revision with a new
``plan_hash`` and needs a new decision. Waves name devices or take a count or
percent of the targets; :func:`assign_waves` turns them into device lists
deterministically, so a plan stays small however large the fleet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from fieldgate.contract import (
    ApiVersion,
    Contract,
    VersionRange,
    VersionStr,
    canonical_json,
    sha256_hex,
    version_in_range,
)
from fieldgate.fleet import Device, Site
from fieldgate.manifest import Name


class Selector(Contract):
    """Which devices: every list given narrows the set (an empty list does not narrow)."""

    sites: list[Name] = []
    """Site ids."""
    regions: list[Name] = []
    """Regions."""
    classes: list[Name] = []
    """Device classes."""
    labels: dict[str, str] = {}
    """Device or site labels that must all match."""
    devices: list[str] = []
    """Explicit device ids."""
    arch: list[str] = []
    """CPU architectures."""
    min_memory_mb: int | None = Field(default=None, ge=0)
    """Only devices with at least this much memory, MiB."""
    installed: dict[Name, VersionRange] = {}
    """Only devices running a version of each named module in the range, e.g.
    ``{pump-logic: ">1.8.0"}``."""
    limit: int | None = Field(default=None, ge=1)
    """Take at most this many of the matching devices, the first by device id."""

    def matches(self, device: Device, site: Site) -> bool:
        """Tell whether ``device`` at ``site`` is selected (``limit`` aside)."""
        if self.sites and device.site not in self.sites:
            return False
        if self.regions and site.region not in self.regions:
            return False
        if self.classes and device.device_class not in self.classes:
            return False
        if self.devices and device.id not in self.devices:
            return False
        if self.arch and device.arch not in self.arch:
            return False
        if self.min_memory_mb is not None and device.memory_mb < self.min_memory_mb:
            return False
        for module, spec in self.installed.items():
            version = device.installed.get(module)
            if version is None or not version_in_range(version, spec):
                return False
        for key, value in self.labels.items():
            if device.labels.get(key, site.labels.get(key)) != value:
                return False
        return True


class HealthGate(Contract):
    """What a wave must show before the next one starts."""

    min_success_rate: float = Field(ge=0, le=1)
    """Least share of the wave's reachable devices that must report healthy (0..1)."""
    max_failures: int = Field(ge=0)
    """Most devices of the wave that may fail."""
    soak_minutes: int = Field(default=0, ge=0)
    """Minutes to watch the wave after the last install before judging it."""


class Wave(Contract):
    """One step of a rollout: explicit devices, or a count or percent of the remaining targets."""

    name: str = Field(min_length=1)
    """Wave name, e.g. ``canary``."""
    devices: list[str] | None = None
    """Explicit device ids."""
    selector: Selector | None = None
    """Narrows which remaining targets a count or percent wave takes."""
    count: int | None = Field(default=None, gt=0)
    """Take this many remaining targets."""
    percent: float | None = Field(default=None, gt=0, le=100)
    """Take this percent of all targets (at least one device); 100 takes all that remain."""
    max_parallel: int = Field(default=10, gt=0)
    """Most devices installing at once."""
    health_gate: HealthGate | None = None
    """The gate the wave must pass; a wave without one is denied by policy."""

    @model_validator(mode="after")
    def _one_way_to_size(self) -> Wave:
        given = [k for k in ("devices", "count", "percent") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a wave takes exactly one of devices, count or percent"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.devices is not None and self.selector is not None:
            raise ValueError("a wave with explicit devices takes no selector")
        return self


class AbortCriteria(Contract):
    """When to stop the whole rollout and roll back."""

    failure_threshold: float = Field(ge=0, le=1)
    """Abort when failed / executed devices exceeds this share (0..1)."""
    min_executed: int = Field(default=1, ge=1)
    """Judge the threshold only once this many devices have executed."""


class RollbackSpec(Contract):
    """What a failed rollout returns devices to."""

    version: VersionStr | None
    """Version to roll back to; None when the module was not installed before."""
    automatic: bool = True
    """Roll back touched devices automatically when the abort criteria trip."""


class ScheduleMode(StrEnum):
    """When devices may be changed."""

    maintenance = "maintenance"
    now = "now"


class Schedule(Contract):
    """When the rollout runs."""

    mode: ScheduleMode = ScheduleMode.now
    """``maintenance``: only inside each site's windows; ``now``: as soon as approved."""
    not_before: datetime | None = None
    """Do not start before this instant (UTC)."""


class PlanIntent(StrEnum):
    """Whether a plan moves devices forward or back."""

    rollout = "rollout"
    rollback = "rollback"


class RolloutPlan(Contract):
    """A staged plan to bring one module version to a set of devices."""

    apiVersion: ApiVersion = "fieldgate/v1"
    """Contract version."""
    kind: Literal["RolloutPlan"] = "RolloutPlan"
    """Document kind."""
    plan_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=80)
    """Stable id shared by every revision of the plan."""
    revision: int = Field(default=1, ge=1)
    """Revision number; every edit makes a new revision."""
    parent_hash: str | None = None
    """Hash of the revision this one replaces."""
    intent: PlanIntent = PlanIntent.rollout
    """``rollout`` or ``rollback`` (asked for as a rollback to an older version)."""
    module: Name
    """Module to install."""
    version: VersionStr
    """Version to install."""
    target: Selector
    """Which devices the plan is for (only those the manifest fits become targets)."""
    waves: list[Wave] = Field(min_length=1)
    """Ordered waves."""
    abort: AbortCriteria | None = None
    """Abort criteria; a plan without them is denied by policy."""
    rollback: RollbackSpec | None = None
    """Where devices go back to if the rollout fails."""
    schedule: Schedule = Schedule()
    """When the plan runs."""
    rationale: str = ""
    """Why this plan, written for the approver."""
    requested_by: str = Field(min_length=1)
    """Who asked for the rollout."""

    @property
    def plan_hash(self) -> str:
        """sha256 over the canonical JSON of every field: any change makes a new hash."""
        return sha256_hex(canonical_json(self.model_dump(mode="json", by_alias=True)))

    @property
    def ref(self) -> str:
        """``name@version`` of the module the plan installs."""
        return f"{self.module}@{self.version}"


def select_devices(
    selector: Selector, devices: Iterable[Device], sites: dict[str, Site]
) -> list[Device]:
    """The devices ``selector`` picks, sorted by id, at most ``selector.limit`` of them."""
    picked = sorted((d for d in devices if selector.matches(d, sites[d.site])), key=lambda d: d.id)
    return picked[: selector.limit] if selector.limit is not None else picked


def wave_size(wave: Wave, total_targets: int) -> int | None:
    """Devices a count or percent wave asks for; None for an explicit wave."""
    if wave.count is not None:
        return wave.count
    if wave.percent is not None:
        if wave.percent >= 100:
            return total_targets
        return max(1, math.floor(total_targets * wave.percent / 100))
    return None


def assign_waves(
    plan: RolloutPlan, targets: Sequence[Device], sites: dict[str, Site]
) -> list[list[str]]:
    """Turn the plan's waves into device id lists, in order.

    Explicit waves keep their lists as written (policy checks them against the
    targets). Count and percent waves take, in id order, targets that no earlier
    wave took and that match the wave's selector.
    """
    taken: set[str] = set()
    result: list[list[str]] = []
    for wave in plan.waves:
        if wave.devices is not None:
            ids = list(wave.devices)
        else:
            size = wave_size(wave, len(targets)) or 0
            selector = wave.selector or Selector()
            ids = [
                d.id for d in targets if d.id not in taken and selector.matches(d, sites[d.site])
            ][:size]
        taken.update(ids)
        result.append(ids)
    return result
