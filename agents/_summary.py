"""The planning context: a compact fleet and catalog summary the planner sees instead of devices.

Devices with identical facts (site, class, arch, memory, installed modules) collapse into one
group with a count, so the context of a homogeneous fleet does not grow with its size. Manifest
descriptions and device labels are untrusted free text and are left out on purpose.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime

from packaging.version import Version
from pydantic import Field

from fieldgate.contract import Contract, parse_version, version_in_range
from fieldgate.fleet import Device, FleetInventory, Site, SiteKind
from fieldgate.manifest import CatalogEntry, ModuleManifest, Requirement, SafetyClass
from fieldgate.plan import Selector


class SiteSummary(Contract):
    """One site as the planner sees it."""

    id: str
    """Site id, e.g. ``ber-03``."""
    region: str
    """Region, e.g. ``eu-central``."""
    kind: SiteKind
    """factory or field."""
    timezone: str
    """IANA time zone of the maintenance windows."""
    maintenance: list[str] = []
    """Weekly maintenance windows in site-local time, e.g. ``Sat 01:00-05:00``."""
    labels: dict[str, str] = {}
    """Site labels from the inventory, e.g. ``regulated: "true"``."""

    def as_site(self) -> Site:
        """The core ``Site`` with these facts, for window arithmetic."""
        return Site(
            id=self.id,
            region=self.region,
            kind=self.kind,
            timezone=self.timezone,
            maintenance=list(self.maintenance),
            labels=dict(self.labels),
        )


class DeviceGroup(Contract):
    """Devices at one site that share class, arch, memory and installed modules."""

    site: str
    """Site id."""
    device_class: str
    """Device class, e.g. ``hvac-gw``."""
    arch: str
    """CPU architecture."""
    memory_mb: int
    """Memory in MiB."""
    count: int = Field(ge=1)
    """How many devices have exactly these facts."""
    installed: dict[str, str] = {}
    """Installed modules by name, with versions."""
    previous: dict[str, str] = {}
    """The version each installed module ran before its current one, from the fleet's history
    (empty when there is no record)."""


class CatalogItem(Contract):
    """One module version as the planner sees it (no description: that text is untrusted)."""

    name: str
    """Module name."""
    version: str
    """Version."""
    safety: SafetyClass
    """Safety class: none, low, high or critical."""
    device_classes: list[str]
    """Device classes the module runs on."""
    arch: list[str]
    """CPU architectures it is built for."""
    min_memory_mb: int = 0
    """Least device memory, MiB."""
    requires: list[Requirement] = []
    """Modules that must be installed, with version ranges (the policy gate checks them)."""
    downgrade_allowed: bool = False
    """Whether a device running a newer version may be moved to this one."""
    prerelease: bool = False
    """Whether the version is a prerelease (e.g. ``2.0.0-rc1``): chosen only when named."""

    @property
    def parsed_version(self) -> Version:
        """The version, comparable."""
        return parse_version(self.version)

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def fits(self, device_class: str, arch: str, memory_mb: int) -> bool:
        """Tell whether a device with these facts can run this version."""
        return (
            device_class in self.device_classes
            and arch in self.arch
            and memory_mb >= self.min_memory_mb
        )

    def fits_group(self, group: DeviceGroup) -> bool:
        """Tell whether the devices of ``group`` can run this version."""
        return self.fits(group.device_class, group.arch, group.memory_mb)


class PlanningContext(Contract):
    """What the planner knows about the fleet and the catalog, summarised."""

    sites: list[SiteSummary]
    """Every site."""
    groups: list[DeviceGroup]
    """Devices grouped by identical facts, with counts."""
    catalog: list[CatalogItem]
    """Every module version, ordered by name then version."""
    now: datetime
    """The current instant (UTC)."""

    def site(self, site_id: str) -> SiteSummary | None:
        """The site with this id, if any."""
        for site in self.sites:
            if site.id == site_id:
                return site
        return None

    @property
    def module_names(self) -> list[str]:
        """Names of the modules in the catalog, sorted."""
        return sorted({item.name for item in self.catalog})

    @property
    def regions(self) -> list[str]:
        """Regions that have sites, sorted."""
        return sorted({site.region for site in self.sites})

    @property
    def device_classes(self) -> list[str]:
        """Device classes present in the fleet, sorted."""
        return sorted({group.device_class for group in self.groups})

    def releases(self, module: str) -> list[CatalogItem]:
        """Every version of ``module`` in the catalog, oldest first."""
        return sorted(
            (item for item in self.catalog if item.name == module),
            key=lambda item: item.parsed_version,
        )

    def item(self, module: str, version: str) -> CatalogItem | None:
        """The catalog entry of ``module`` at ``version`` (compared as versions), if any."""
        wanted = parse_version(version)
        for item in self.catalog:
            if item.name == module and item.parsed_version == wanted:
                return item
        return None

    def groups_for(self, selector: Selector) -> list[DeviceGroup]:
        """Groups whose devices ``selector`` picks, as ``Selector.matches`` decides for a device.

        Labels match site labels only (device labels are untrusted and not in the context).
        Explicit device ids and ``limit`` cannot be decided on groups; callers handle them, e.g.
        ``min(selector.limit, count)``.
        """
        sites = {site.id: site for site in self.sites}
        picked = []
        for group in self.groups:
            site = sites.get(group.site)
            region = site.region if site is not None else None
            site_labels = site.labels if site is not None else {}
            if selector.sites and group.site not in selector.sites:
                continue
            if selector.regions and region not in selector.regions:
                continue
            if selector.classes and group.device_class not in selector.classes:
                continue
            if selector.arch and group.arch not in selector.arch:
                continue
            if selector.min_memory_mb is not None and group.memory_mb < selector.min_memory_mb:
                continue
            if not all(
                (version := group.installed.get(module)) is not None
                and version_in_range(version, spec)
                for module, spec in selector.installed.items()
            ):
                continue
            if any(site_labels.get(k) != v for k, v in selector.labels.items()):
                continue
            picked.append(group)
        return picked


_GroupKey = tuple[str, str, str, int, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


def _group_key(device: Device, previous: Mapping[str, str]) -> _GroupKey:
    ran_before = {
        module: version
        for module, version in previous.items()
        if device.installed.get(module) not in (None, version)
    }
    return (
        device.site,
        device.device_class,
        device.arch,
        device.memory_mb,
        tuple(sorted(device.installed.items())),
        tuple(sorted(ran_before.items())),
    )


def _catalog_item(manifest: ModuleManifest | CatalogEntry) -> CatalogItem:
    return CatalogItem(
        name=manifest.name,
        version=manifest.version,
        safety=manifest.safety,
        device_classes=list(manifest.device_classes),
        arch=list(manifest.arch),
        min_memory_mb=manifest.min_memory_mb,
        requires=list(manifest.requires),
        downgrade_allowed=manifest.downgrade_allowed,
        prerelease=parse_version(manifest.version).is_prerelease,
    )


def planning_context(
    fleet: FleetInventory | Iterable[Device],
    manifests: Iterable[ModuleManifest | CatalogEntry],
    now: datetime,
    *,
    sites: Iterable[Site] | None = None,
    previous: Mapping[str, Mapping[str, str]] | None = None,
) -> PlanningContext:
    """Summarise a fleet and a catalog for the planner.

    Args:
        fleet: An inventory, or devices (then ``sites`` is required).
        manifests: Module manifests or scenario catalog entries.
        now: The current instant (UTC).
        sites: The sites of ``fleet`` when it is a plain device list.
        previous: By device id, the version each module ran before its current one
            (the planner reads it from the fleet store,
            :meth:`~fieldgate.store.FleetStore.previous_versions`;
            :func:`~fieldgate.agents.previous_versions` rebuilds it from an audit log).
    """
    previous = previous or {}
    if isinstance(fleet, FleetInventory):
        site_list = list(fleet.sites)
        devices = fleet.all_devices()
    else:
        if sites is None:
            raise ValueError("planning_context: a device list needs its sites (sites=...)")
        site_list = list(sites)
        devices = list(fleet)
    counts = Counter(_group_key(device, previous.get(device.id, {})) for device in devices)
    groups = [
        DeviceGroup(
            site=site_id,
            device_class=device_class,
            arch=arch,
            memory_mb=memory_mb,
            count=count,
            installed=dict(installed),
            previous=dict(ran_before),
        )
        for (site_id, device_class, arch, memory_mb, installed, ran_before), count in sorted(
            counts.items()
        )
    ]
    catalog = sorted(
        (_catalog_item(m) for m in manifests), key=lambda item: (item.name, item.parsed_version)
    )
    return PlanningContext(
        sites=[
            SiteSummary(
                id=site.id,
                region=site.region,
                kind=site.kind,
                timezone=site.timezone,
                maintenance=list(site.maintenance),
                labels=dict(site.labels),
            )
            for site in sorted(site_list, key=lambda s: s.id)
        ],
        groups=groups,
        catalog=catalog,
        now=now,
    )
