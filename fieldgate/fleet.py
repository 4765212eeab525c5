"""Fleet inventory: sites, devices, and ``generate`` blocks that expand into devices."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, field_validator, model_validator

from fieldgate.contract import ApiVersion, Contract, VersionStr
from fieldgate.manifest import Name

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WINDOW = re.compile(
    r"^(?P<days>[A-Za-z]{3}(?:-[A-Za-z]{3})?|daily) (?P<start>\d{2}:\d{2})-(?P<end>\d{2}:\d{2})$"
)


@dataclass(frozen=True)
class MaintenanceWindow:
    """A weekly window in the site's local time, e.g. ``Sat 01:00-05:00``.

    Also accepted: ``daily 02:00-04:00`` and day ranges such as ``Mon-Fri 22:00-02:00``; a window
    whose end is not after its start runs past midnight into the next day.
    """

    days: frozenset[int]
    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> MaintenanceWindow:
        """Parse ``'Sat 01:00-05:00'``; raise ValueError naming what is wrong."""
        match = _WINDOW.match(text.strip())
        if not match:
            raise ValueError(
                f"{text!r} is not a maintenance window (expected e.g. 'Sat 01:00-05:00', "
                "'Mon-Fri 22:00-02:00' or 'daily 02:00-04:00')"
            )
        days_text = match["days"]
        if days_text == "daily":
            days = frozenset(range(7))
        else:
            names = [d.capitalize() for d in days_text.split("-")]
            for name in names:
                if name not in DAYS:
                    raise ValueError(f"{text!r}: unknown day {name!r} (use Mon..Sun)")
            first, last = DAYS.index(names[0]), DAYS.index(names[-1])
            days = frozenset((first + i) % 7 for i in range((last - first) % 7 + 1))
        try:
            start = time.fromisoformat(match["start"])
            end = time.fromisoformat(match["end"])
        except ValueError:
            raise ValueError(f"{text!r}: times must be HH:MM between 00:00 and 23:59") from None
        return cls(days, start, end)

    @property
    def length(self) -> timedelta:
        """How long the window stays open."""
        start = timedelta(hours=self.start.hour, minutes=self.start.minute)
        end = timedelta(hours=self.end.hour, minutes=self.end.minute)
        return end - start if end > start else end - start + timedelta(days=1)

    def opened_before(self, local: datetime) -> datetime | None:
        """The opening of this window that contains ``local`` (site-local time), if any."""
        for back in (0, 1):
            day = local.date() - timedelta(days=back)
            if day.weekday() not in self.days:
                continue
            opens = datetime.combine(day, self.start, tzinfo=local.tzinfo)
            if opens <= local < opens + self.length:
                return opens
        return None

    def next_open(self, local: datetime) -> datetime:
        """The next opening of this window at or after ``local`` (site-local time)."""
        for ahead in range(8):
            day = local.date() + timedelta(days=ahead)
            if day.weekday() in self.days:
                opens = datetime.combine(day, self.start, tzinfo=local.tzinfo)
                if opens >= local:
                    return opens
        raise AssertionError("a weekly window opens within eight days")


@functools.lru_cache(maxsize=1024)
def _parsed_window(text: str) -> MaintenanceWindow:
    """:meth:`MaintenanceWindow.parse`, once per text (an executor asks for every batch)."""
    return MaintenanceWindow.parse(text)


def _check_window(value: str) -> str:
    MaintenanceWindow.parse(value)
    return value


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
    return value


WindowStr = Annotated[str, AfterValidator(_check_window)]
TimeZoneStr = Annotated[str, AfterValidator(_check_timezone)]


class SiteKind(StrEnum):
    """Where a site sits in the supply chain."""

    factory = "factory"
    field = "field"


class Connectivity(StrEnum):
    """How a site reaches the office."""

    always = "always"
    intermittent = "intermittent"
    satellite = "satellite"


class Site(Contract):
    """A place with devices: a factory or a field site."""

    id: Name
    """Site id, e.g. ``ber-03``."""
    region: Name
    """Region, e.g. ``eu-central``."""
    kind: SiteKind = SiteKind.field
    """factory or field."""
    timezone: TimeZoneStr = "UTC"
    """IANA time zone in which maintenance windows are read."""
    maintenance: list[WindowStr] = []
    """Weekly maintenance windows in local time, e.g. ``Sat 01:00-05:00``."""
    connectivity: Connectivity = Connectivity.always
    """Connectivity profile of the site."""
    labels: dict[str, str] = {}
    """Free labels, e.g. ``regulated: "true"``."""

    def windows(self) -> list[MaintenanceWindow]:
        """The parsed maintenance windows."""
        return [_parsed_window(w) for w in self.maintenance]

    def in_maintenance(self, at: datetime) -> bool:
        """Tell whether the UTC instant ``at`` falls inside a maintenance window of this site."""
        local = at.astimezone(ZoneInfo(self.timezone))
        return any(w.opened_before(local) is not None for w in self.windows())

    def next_maintenance(self, at: datetime) -> datetime | None:
        """The UTC instant of the next window opening at or after ``at`` (now, if one is open)."""
        local = at.astimezone(ZoneInfo(self.timezone))
        if self.in_maintenance(at):
            return at
        opens = [w.next_open(local) for w in self.windows()]
        return min(opens).astimezone(ZoneInfo("UTC")) if opens else None

    def upcoming_windows(self, at: datetime, count: int) -> list[tuple[datetime, datetime]]:
        """The first ``count`` window openings from ``at`` (one open at ``at`` first) in UTC.

        Each is ``(opens, closes)``, read in the site's time zone: a window of 01:00-05:00
        local time stays 01:00-05:00 local across a daylight-saving change.
        """
        local = at.astimezone(ZoneInfo(self.timezone))
        spans: set[tuple[datetime, datetime]] = set()
        for window in self.windows():
            opened = window.opened_before(local)
            if opened is not None:
                spans.add((opened, opened + window.length))
            cursor = local
            for _ in range(count):
                opens = window.next_open(cursor)
                spans.add((opens, opens + window.length))
                cursor = opens + timedelta(minutes=1)
        ordered = sorted(spans, key=lambda span: span[0].astimezone(UTC))[:count]
        return [(opens.astimezone(UTC), closes.astimezone(UTC)) for opens, closes in ordered]


class Device(Contract):
    """One edge device and the module versions installed on it."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    """Device id, e.g. ``ber-03-hvac-gw-01``."""
    site: Name
    """Id of the site the device is at."""
    device_class: Name = Field(alias="class")
    """Device class, e.g. ``hvac-gw``."""
    arch: str = Field(min_length=1)
    """CPU architecture, e.g. ``arm64``."""
    memory_mb: int = Field(gt=0)
    """Memory in MiB."""
    labels: dict[str, str] = {}
    """Free labels."""
    installed: dict[Name, VersionStr] = {}
    """Installed modules by name, with their versions."""


class GenerateBlock(Contract):
    """Devices generated per site, named ``{site}-{class}-{nn}``."""

    sites: list[Name] = Field(min_length=1)
    """Sites to generate devices at."""
    device_class: Name = Field(alias="class")
    """Device class of the generated devices."""
    per_site: int = Field(gt=0, le=100_000)
    """How many devices at each site."""
    arch: str = Field(min_length=1)
    """CPU architecture."""
    memory_mb: int = Field(gt=0)
    """Memory in MiB."""
    labels: dict[str, str] = {}
    """Labels put on every generated device."""
    installed: dict[Name, VersionStr] = {}
    """Modules installed on every generated device."""

    def expand(self) -> list[Device]:
        """The devices this block stands for; numbers are zero-padded to at least two digits."""
        width = max(2, len(str(self.per_site)))
        return [
            Device.model_validate(
                {
                    "id": f"{site}-{self.device_class}-{n:0{width}d}",
                    "site": site,
                    "class": self.device_class,
                    "arch": self.arch,
                    "memory_mb": self.memory_mb,
                    "labels": dict(self.labels),
                    "installed": dict(self.installed),
                }
            )
            for site in self.sites
            for n in range(1, self.per_site + 1)
        ]


class FleetInventory(Contract):
    """Sites and devices; ``generate`` blocks expand into devices named ``{site}-{class}-{nn}``."""

    apiVersion: ApiVersion = "fieldgate/v1"
    """Contract version."""
    kind: Literal["Fleet"] = "Fleet"
    """Document kind."""
    sites: list[Site] = Field(min_length=1)
    """The sites."""
    devices: list[Device] = []
    """Devices listed one by one."""
    generate: list[GenerateBlock] = []
    """Blocks of generated devices."""

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, sites: list[Site]) -> list[Site]:
        ids = [s.id for s in sites]
        for index, site_id in enumerate(ids):
            if site_id in ids[:index]:
                raise ValueError(f"site {site_id!r} is listed twice (sites[{index}])")
        return sites

    @model_validator(mode="after")
    def _devices_consistent(self) -> FleetInventory:
        site_ids = {s.id for s in self.sites}
        for index, device in enumerate(self.devices):
            if device.site not in site_ids:
                raise ValueError(f"devices[{index}].site: unknown site {device.site!r}")
        for index, block in enumerate(self.generate):
            for site_id in block.sites:
                if site_id not in site_ids:
                    raise ValueError(f"generate[{index}].sites: unknown site {site_id!r}")
        seen: set[str] = set()
        for device in self.all_devices():
            if device.id in seen:
                raise ValueError(f"device id {device.id!r} occurs twice")
            seen.add(device.id)
        return self

    def all_devices(self) -> list[Device]:
        """Listed devices followed by generated ones."""
        devices = list(self.devices)
        for block in self.generate:
            devices.extend(block.expand())
        return devices

    def site(self, site_id: str) -> Site:
        """The site with this id."""
        for site in self.sites:
            if site.id == site_id:
                return site
        raise KeyError(site_id)
