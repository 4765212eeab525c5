"""Turn an understood request into a compliant, staged rollout plan and its rationale.

The plan names devices by selector and takes waves by count or percent, so it stays small
however large the fleet; only a request for "N devices" or a partial rollback needs device ids,
and those come from a picker the caller passes in (the store answers it in SQL).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from zoneinfo import ZoneInfo

from fieldgate.agents._summary import CatalogItem, DeviceGroup, PlanningContext
from fieldgate.agents._understanding import Intent, find_targets
from packaging.version import Version
from pydantic import Field

from fieldgate.contract import Contract, version_in_range
from fieldgate.errors import FieldgateError
from fieldgate.fleet import Device, Site
from fieldgate.manifest import SafetyClass
from fieldgate.plan import (
    AbortCriteria,
    HealthGate,
    PlanIntent,
    RollbackSpec,
    RolloutPlan,
    Schedule,
    ScheduleMode,
    Selector,
    Wave,
    select_devices,
    wave_size,
)

CANARY_PERCENT = 5
"""Largest first wave, in percent of the targets (at least one device), above 10 targets."""
CANARY_MIN_TARGETS = 10
"""Up to this many targets no canary is required."""
_CAREFUL = frozenset({SafetyClass.high, SafetyClass.critical})


class PlanningError(FieldgateError):
    """An intent cannot become a plan with what the planner was given."""


class TargetQuery(Contract):
    """Devices a plan must name by id, because a selector alone cannot say which."""

    selector: Selector
    """Devices in scope."""
    fits: CatalogItem
    """Only devices whose class, arch and memory this version fits."""
    limit: int | None = Field(default=None, ge=1)
    """Take at most this many, the first by device id."""
    running_newer_than: str | None = None
    """Only devices running a version of ``fits.name`` newer than this one."""


DevicePicker = Callable[[TargetQuery], list[str]]
"""Answers a ``TargetQuery`` with device ids in id order."""


def fitting_devices(
    selector: Selector, devices: Iterable[Device], sites: dict[str, Site], item: CatalogItem
) -> list[Device]:
    """Devices ``selector`` picks that ``item`` fits, sorted by id: the targets of a plan."""
    return [
        d
        for d in select_devices(selector, devices, sites)
        if item.fits(d.device_class, d.arch, d.memory_mb)
    ]


def device_picker(devices: Iterable[Device], sites: Iterable[Site]) -> DevicePicker:
    """A picker over an in-memory device list (the store answers the same query in SQL)."""
    device_list = list(devices)
    site_map = {s.id: s for s in sites}

    def pick(query: TargetQuery) -> list[str]:
        picked = fitting_devices(query.selector, device_list, site_map, query.fits)
        if query.running_newer_than is not None:
            floor = Version(query.running_newer_than)
            picked = [
                d
                for d in picked
                if (v := d.installed.get(query.fits.name)) is not None and Version(v) > floor
            ]
        ids = [d.id for d in picked]
        return ids[: query.limit] if query.limit is not None else ids

    return pick


def canary_limit(targets: int) -> int:
    """Most devices a first wave may take: max(1, floor(5% of targets))."""
    return max(1, math.floor(targets * CANARY_PERCENT / 100))


def wave_sizes(waves: Sequence[Wave], targets: int) -> list[int]:
    """Devices each count or percent wave takes out of ``targets`` (as ``assign_waves`` does)."""
    remaining = targets
    sizes = []
    for wave in waves:
        size = len(wave.devices) if wave.devices is not None else wave_size(wave, targets) or 0
        size = min(size, remaining)
        remaining -= size
        sizes.append(size)
    return sizes


def _gate(size: int, first: bool, careful: bool, rollback: bool = False) -> HealthGate:
    if first and not rollback:
        return HealthGate(min_success_rate=1.0, max_failures=0, soak_minutes=60 if careful else 30)
    if rollback:
        return HealthGate(
            min_success_rate=0.9, max_failures=math.floor(size * 0.1), soak_minutes=10
        )
    return HealthGate(
        min_success_rate=0.95,
        max_failures=math.floor(size * 0.05),
        soak_minutes=30 if careful else 15,
    )


def _gated(draft: Sequence[Wave], n: int, careful: bool, rollback: bool) -> list[Wave]:
    """Give each drafted wave its health gate and parallelism, sized for ``n`` targets."""
    parallel_cap = 5 if careful else 10
    return [
        wave.model_copy(
            update={
                "max_parallel": max(1, min(size, parallel_cap)),
                "health_gate": _gate(size, index == 0, careful, rollback),
            }
        )
        for index, (wave, size) in enumerate(zip(draft, wave_sizes(draft, n), strict=True))
    ]


def rollout_waves(n: int, careful: bool, one_wave: bool) -> list[Wave]:
    """Waves for ``n`` targets: a canary of at most 5% above 10 targets, then growing waves.

    Args:
        n: Number of targets.
        careful: Safety class high or critical (longer soaks, smaller parallelism).
        one_wave: The engineer asked for one wave; honoured only where policy and safety allow.
    """
    if n <= 1 or (one_wave and n <= CANARY_MIN_TARGETS and not careful):
        draft = [Wave(name="all", percent=100)]
    elif n <= CANARY_MIN_TARGETS:
        draft = [Wave(name="pilot", count=1), Wave(name="rest", percent=100)]
    elif n < 100:
        draft = [
            Wave(name="canary", percent=CANARY_PERCENT),
            Wave(name="wave-2", percent=20),
            Wave(name="wave-3", percent=100),
        ]
    else:
        draft = [
            Wave(name="canary", percent=CANARY_PERCENT),
            Wave(name="wave-2", percent=15),
            Wave(name="wave-3", percent=30),
            Wave(name="wave-4", percent=100),
        ]
    return _gated(draft, n, careful, rollback=False)


def rollback_waves(n: int, careful: bool, exempt: bool) -> list[Wave]:
    """Waves for a rollback of ``n`` targets: gated, and canary-sized unless policy exempts it."""
    if not exempt:
        return rollout_waves(n, careful, one_wave=False)
    if n <= CANARY_MIN_TARGETS:
        draft = [Wave(name="all", percent=100)]
    else:
        draft = [Wave(name="first", percent=20), Wave(name="rest", percent=100)]
    return _gated(draft, n, careful, rollback=True)


def _most_common(counts: Counter[str | None], exclude: str) -> str | None:
    """The version most targets run, other than ``exclude``; ties go to the newer version."""
    ranked = sorted(
        ((c, Version(v), v) for v, c in counts.items() if v is not None and v != exclude),
        reverse=True,
    )
    return ranked[0][2] if ranked else None


def _site_windows(ctx: PlanningContext, site_ids: Iterable[str]) -> list[str]:
    lines = []
    for site_id in sorted(set(site_ids)):
        summary = ctx.site(site_id)
        if summary is None:
            continue
        site = summary.as_site()
        if site.in_maintenance(ctx.now):
            lines.append(f"{site_id} ({', '.join(site.maintenance)} {site.timezone}): open now")
            continue
        opens = site.next_maintenance(ctx.now)
        if opens is None:
            lines.append(f"{site_id} has no maintenance window, so nothing can start there yet")
            continue
        local = opens.astimezone(ZoneInfo(site.timezone))
        lines.append(
            f"{site_id} ({', '.join(site.maintenance)} {site.timezone}): next opens "
            f"{local:%a %Y-%m-%d %H:%M} local"
        )
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def propose_plan(
    intent: Intent,
    ctx: PlanningContext,
    plan_id: str,
    requested_by: str,
    *,
    pick_devices: DevicePicker | None = None,
) -> RolloutPlan:
    """Propose the compliant plan for ``intent``, with a rationale written for the approver.

    Args:
        intent: What the engineer asked for, from ``understand``.
        ctx: The fleet and catalog summary.
        plan_id: Id of the plan.
        requested_by: Who asked.
        pick_devices: Resolves device ids when the plan must name them: a count ("to 5 pump
            controllers") or a rollback of the devices that moved while others did not.

    Raises:
        PlanningError: The version is not in the catalog, nothing fits, or device ids are
            needed and no picker was given.
    """
    item = ctx.item(intent.module, intent.version)
    if item is None:
        raise PlanningError(f"{intent.module}@{intent.version} is not in the catalog")
    scope = intent.scope
    classes = (
        [c for c in scope.classes if c in item.device_classes]
        if scope.classes
        else list(item.device_classes)
    )
    fitted_scope = scope.model_copy(update={"classes": classes})
    selector = fitted_scope.selector()
    found = find_targets(ctx, fitted_scope, [item])
    n = found.count
    if n == 0:
        raise PlanningError(f"no device in scope fits {item.ref}")
    installed = found.installed(item.name)
    rollback = intent.action is PlanIntent.rollback
    careful = item.safety in _CAREFUL
    notes: list[str] = []

    newer: Counter[str | None] = Counter(
        {v: c for v, c in installed.items() if v is not None and Version(v) > item.parsed_version}
    )
    narrowed = False
    if rollback and 0 < sum(newer.values()) < n:
        if pick_devices is None:
            notes.append(
                f"Only {sum(newer.values())} of the {n} devices in scope run a version newer "
                f"than {item.version}; without device ids the plan targets all {n}, and those "
                "already on it are re-validated only."
            )
        else:
            ids = pick_devices(
                TargetQuery(
                    selector=selector,
                    fits=item,
                    limit=scope.limit,
                    running_newer_than=item.version,
                )
            )
            selector = selector.model_copy(update={"devices": ids})
            n = len(ids)
            installed = Counter(newer)
            narrowed = True
            notes.append(
                f"Targets narrowed to the {n} devices that run a version newer than "
                f"{item.version}; the others already run it."
            )
    if scope.limit is not None and not narrowed:
        if pick_devices is None:
            raise PlanningError(
                f"the request asks for {scope.limit} devices; picking them needs a device picker"
            )
        ids = pick_devices(TargetQuery(selector=selector, fits=item, limit=scope.limit))
        selector = selector.model_copy(update={"devices": ids})
        notes.append(
            f"Limited to {len(ids)} of {n} matching devices, as asked (the first by device id)."
        )
        n = len(ids)
    if n == 0:
        raise PlanningError(f"no device in scope fits {item.ref}")

    exempt = (
        rollback and installed.get(None, 0) == 0 and sum(newer.values()) == sum(installed.values())
    )
    one_wave = intent.flags.all_at_once or intent.flags.skip_canary
    waves = rollback_waves(n, careful, exempt) if rollback else rollout_waves(n, careful, one_wave)

    if rollback:
        back_to = _most_common(newer or installed, item.version)
        rollback_spec = RollbackSpec(version=back_to, automatic=False)
        threshold = 0.1
    else:
        back_to = _most_common(installed, item.version)
        rollback_spec = RollbackSpec(version=back_to, automatic=True)
        threshold = 0.05 if careful else 0.1
    maintenance = careful or intent.flags.in_maintenance
    schedule = Schedule(mode=ScheduleMode.maintenance if maintenance else ScheduleMode.now)
    abort = AbortCriteria(failure_threshold=threshold, min_executed=1)

    rationale = _rationale(
        intent=intent,
        ctx=ctx,
        item=item,
        n=n,
        found_groups=found.groups,
        explicit=found.explicit,
        narrowed=narrowed or scope.limit is not None,
        installed=installed,
        waves=waves,
        abort=abort,
        rollback_spec=rollback_spec,
        schedule=schedule,
        exempt=exempt,
        notes=notes,
    )
    return RolloutPlan(
        plan_id=plan_id,
        intent=intent.action,
        module=item.name,
        version=item.version,
        target=selector,
        waves=waves,
        abort=abort,
        rollback=rollback_spec,
        schedule=schedule,
        rationale=rationale,
        requested_by=requested_by,
    )


def _rationale(
    *,
    intent: Intent,
    ctx: PlanningContext,
    item: CatalogItem,
    n: int,
    found_groups: list[DeviceGroup],
    explicit: list[str],
    narrowed: bool,
    installed: Counter[str | None],
    waves: list[Wave],
    abort: AbortCriteria,
    rollback_spec: RollbackSpec,
    schedule: Schedule,
    exempt: bool,
    notes: list[str],
) -> str:
    rollback = intent.action is PlanIntent.rollback
    careful = item.safety in _CAREFUL
    lines: list[str] = []

    verb = "Roll back" if rollback else "Install"
    lines.append(
        f"{verb} {item.ref} (safety {item.safety.value}) on {_plural(n, 'device')}; version: "
        f"{intent.version_reason}."
    )
    by_place: Counter[tuple[str, str]] = Counter()
    for group in found_groups:
        by_place[(group.site, group.device_class)] += group.count
    where = [f"{site} {count} {cls}" for (site, cls), count in sorted(by_place.items())]
    if explicit:
        where.append(f"{len(explicit)} named by id ({', '.join(explicit[:5])})")
    prefix = "Picked from: " if narrowed else "Where: "
    lines.append(prefix + "; ".join(where) + ".")
    running = [
        f"{v} on {c}"
        for v, c in sorted(
            ((v, c) for v, c in installed.items() if v is not None),
            key=lambda vc: Version(vc[0]),
        )
    ]
    fresh = installed.get(None, 0)
    if fresh:
        running.append(f"not installed on {fresh}")
    if running:
        lines.append(f"They run {item.name} now: {', '.join(running)}.")
    lines.extend(_dependency_lines(item, found_groups, narrowed))

    sizes = wave_sizes(waves, n)
    steps = ", ".join(f"{w.name} {s}" for w, s in zip(waves, sizes, strict=True))
    if rollback and exempt:
        why = (
            "a rollback to a version the devices ran before; policy exempts it from the canary "
            "rule, and it still goes in gated waves"
        )
    elif len(waves) == 1:
        why = "one wave: 10 or fewer targets, so no canary is required"
    elif n > CANARY_MIN_TARGETS:
        why = (
            f"a canary of {sizes[0]} (at most max(1, 5% of {n}) = {canary_limit(n)}) must pass "
            "before the waves grow"
        )
    else:
        why = "one device first, so a bad build stops after one device"
    lines.append(f"Waves ({len(waves)}): {steps}; {why}.")
    first_gate = waves[0].health_gate
    later_gate = waves[-1].health_gate
    if len(waves) == 1 and first_gate is not None:
        lines.append(
            f"Health gate: {first_gate.min_success_rate:.0%} healthy, at most "
            f"{first_gate.max_failures} failed, {first_gate.soak_minutes} min soak."
        )
    elif first_gate is not None and later_gate is not None:
        lines.append(
            f"Health gates: {waves[0].name} needs {first_gate.min_success_rate:.0%} healthy, "
            f"at most {first_gate.max_failures} failed, {first_gate.soak_minutes} min soak; "
            f"{waves[-1].name} needs {later_gate.min_success_rate:.0%} healthy, "
            f"{later_gate.soak_minutes} min soak. Each wave waits for its gate."
        )
    if rollback_spec.automatic and rollback_spec.version:
        on_failure = f"changed devices go back to {item.name} {rollback_spec.version} automatically"
    elif rollback_spec.automatic:
        on_failure = f"{item.name} was not installed before, so there is no version to go back to"
    else:
        on_failure = (
            f"the rollback halts and waits for people (back to {rollback_spec.version} is "
            "not automatic, since that version is the one being rolled back)"
        )
    lines.append(
        f"On failure: abort when more than {abort.failure_threshold:.0%} of executed devices "
        f"fail; {on_failure}."
    )
    if rollback_spec.version and not rollback:
        back = ctx.item(item.name, rollback_spec.version)
        if back is not None and not back.downgrade_allowed:
            lines.append(
                f"Note: the manifest of {item.name} {rollback_spec.version} does not allow "
                "downgrades, so policy may refuse the automatic rollback; a failed rollout "
                "would then halt for people."
            )
    moving_back = [v for v in installed if v is not None and Version(v) > item.parsed_version]
    if moving_back and not item.downgrade_allowed:
        lines.append(
            f"Note: {sum(installed[v] for v in moving_back)} targets run a "
            f"newer {item.name} and the manifest of {item.ref} does not allow downgrades; "
            "expect the policy gate to refuse it."
        )

    if schedule.mode is ScheduleMode.maintenance:
        reason = (
            f"safety class {item.safety.value} changes devices only in maintenance windows"
            if careful
            else "as asked"
        )
        sites = {group.site for group in found_groups} | {
            s.id for s in ctx.sites if any(d.startswith(s.id + "-") for d in explicit)
        }
        lines.append(f"Schedule: maintenance windows ({reason}).")
        lines.extend(f"  {line}" for line in _site_windows(ctx, sites))
    else:
        lines.append(
            f"Schedule: now (safety class {item.safety.value} needs no maintenance window)."
        )

    declined = _declined(intent, n, careful, len(waves), rollback, exempt)
    if declined:
        lines.append("Asked for but not done:")
        lines.extend(f"  - {line}" for line in declined)
    readings = [*intent.notes, *notes]
    if readings:
        lines.append("Read from the request:")
        lines.extend(f"  - {line}" for line in readings)
    if intent.ignored:
        lines.append(f"Not understood, ignored: {', '.join(intent.ignored)}.")
    lines.append("Approvals are decided by policy, not by this plan.")
    return "\n".join(lines)


def _dependency_lines(
    item: CatalogItem, groups: Sequence[DeviceGroup], narrowed: bool
) -> list[str]:
    """Say, per required module, on how many targets the range is not met (policy reports it)."""
    lines = []
    among = "devices in scope" if narrowed else "targets"
    for requirement in item.requires:
        unmet: Counter[str] = Counter()
        for group in groups:
            installed = group.installed.get(requirement.module)
            if installed is None or not version_in_range(installed, requirement.range):
                unmet[installed or "not installed"] += group.count
        if not unmet:
            lines.append(f"Needs {requirement.module} {requirement.range}: met on every target.")
            continue
        running = ", ".join(f"{v} on {c}" for v, c in sorted(unmet.items()))
        lines.append(
            f"Needs {requirement.module} {requirement.range}: not met on {sum(unmet.values())} "
            f"{among} ({running}). They stay targets; the policy gate reports them."
        )
    return lines


def _declined(
    intent: Intent, n: int, careful: bool, wave_count: int, rollback: bool, exempt: bool
) -> list[str]:
    flags = intent.flags
    declined = []
    asked_one_wave = flags.all_at_once or flags.skip_canary
    if asked_one_wave and wave_count > 1:
        asked = "all at once" if flags.all_at_once else "no canary"
        if rollback and exempt:
            declined.append(
                f"{asked}: a rollback still goes in gated waves so a bad rollback stops early"
            )
        elif n > CANARY_MIN_TARGETS:
            declined.append(
                f"{asked}: policy requires a first wave of at most max(1, 5% of targets) = "
                f"{canary_limit(n)} when there are more than {CANARY_MIN_TARGETS} targets"
            )
        else:
            declined.append(
                f"{asked}: kept a one-device first wave because the module is safety "
                "class high or critical"
            )
    if flags.now and careful:
        declined.append(
            "now: policy lets safety class high and critical change devices only inside "
            "maintenance windows"
        )
    if flags.now and flags.in_maintenance and not careful:
        declined.append("now: you also asked for maintenance windows; the safer reading won")
    if flags.skip_health_gates:
        declined.append("skip health checks: policy requires a health gate on every wave")
    return declined


def count_targets(intent: Intent, ctx: PlanningContext) -> int:
    """How many devices a plan for ``intent`` targets, from the group counts."""
    item = ctx.item(intent.module, intent.version)
    if item is None:
        return 0
    total = find_targets(ctx, intent.scope, [item]).count
    return min(total, intent.scope.limit) if intent.scope.limit is not None else total
