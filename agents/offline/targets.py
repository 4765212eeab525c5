"""Which devices a selector or a scope means, counted by device group."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from fieldgate.agents._summary import CatalogItem, DeviceGroup, PlanningContext
from fieldgate.agents.offline.intent import Scope
from fieldgate.plan import Selector


@dataclass(frozen=True)
class Targets:
    """Devices, as groups with counts and explicit ids."""

    groups: list[DeviceGroup]
    """Groups of the devices, each with how many of its devices are meant."""
    explicit: list[str]
    """Explicit device ids whose facts are not in any single group (counted as fitting)."""

    @property
    def count(self) -> int:
        """How many devices, explicit ids included."""
        return sum(g.count for g in self.groups) + len(self.explicit)

    def installed(self, module: str) -> Counter[str | None]:
        """How many of the grouped devices run each version of ``module`` (None: not installed)."""
        counts: Counter[str | None] = Counter()
        for group in self.groups:
            counts[group.installed.get(module)] += group.count
        return counts


def _device_group(ctx: PlanningContext, device_id: str) -> DeviceGroup | None:
    """The group a generated device id (``{site}-{class}-{nn}``) belongs to, if unique."""
    for site in sorted(ctx.sites, key=lambda s: len(s.id), reverse=True):
        if device_id.startswith(site.id + "-"):
            rest = device_id[len(site.id) + 1 :]
            found = [
                g for g in ctx.groups if g.site == site.id and rest.startswith(g.device_class + "-")
            ]
            return found[0] if len(found) == 1 else None
    return None


def select_groups(ctx: PlanningContext, selector: Selector) -> Targets:
    """Devices ``selector`` picks, as groups with counts (its ``limit`` aside).

    Explicit device ids count one each in their group; ids whose group cannot be told from the
    id are kept as explicit and counted as picked.
    """
    if not selector.devices:
        return Targets(ctx.groups_for(selector), [])
    groups: list[DeviceGroup] = []
    explicit: list[str] = []
    in_scope = ctx.groups_for(selector.model_copy(update={"devices": []}))
    for device_id in selector.devices:
        group = _device_group(ctx, device_id)
        if group is None:
            explicit.append(device_id)
        elif group in in_scope:
            groups.append(group.model_copy(update={"count": 1}))
    return Targets(groups, explicit)


def find_targets(ctx: PlanningContext, scope: Scope, fits: Sequence[CatalogItem]) -> Targets:
    """Devices in ``scope`` that at least one of ``fits`` can run (counts from groups)."""
    found = select_groups(ctx, scope.selector())
    return Targets(
        [g for g in found.groups if any(item.fits_group(g) for item in fits)], found.explicit
    )
