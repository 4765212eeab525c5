"""Turn an understood request into a compliant, staged rollout plan and its rationale.

The plan names its targets by selector and takes waves by count or percent, so it stays small
however large the fleet, and it never needs device ids looked up for it. Whatever narrows the
targets is said by the selector: a count ("to 5 pump controllers") is its ``limit``, a rollback
of only the devices that moved is its ``installed`` range, and devices in scope the manifest does
not fit are left out by ``arch`` and ``min_memory_mb``. So ``select_devices(plan.target, ...)``
returns exactly the targets, the devices the waves cover and the policy gate checks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from fieldgate.agents._summary import CatalogItem, DeviceGroup, PlanningContext
from fieldgate.agents.offline.intent import Intent, WaveAsk
from fieldgate.agents.offline.targets import Targets, select_groups
from fieldgate.contract import parse_version, version_in_range
from fieldgate.errors import PlanningError
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
    wave_size,
)

CANARY_PERCENT = 5
"""Largest first wave, in percent of the targets (at least one device), above 10 targets."""
CANARY_MIN_TARGETS = 10
"""Up to this many targets no canary is required."""
_CAREFUL = frozenset({SafetyClass.high, SafetyClass.critical})
DECLINED_HEADING = "Asked for but not done:"
"""Heads the rationale's list of what the engineer asked for and policy or safety refused."""


def is_careful(item: CatalogItem) -> bool:
    """Whether ``item`` is safety class high or critical: longer soaks, maintenance windows."""
    return item.safety in _CAREFUL


def declined_in(rationale: str) -> list[str]:
    """The lines of a rationale's :data:`DECLINED_HEADING` list: what was asked and refused."""
    lines = rationale.splitlines()
    if DECLINED_HEADING not in lines:
        return []
    found = []
    for line in lines[lines.index(DECLINED_HEADING) + 1 :]:
        if not line.startswith("  - "):
            break
        found.append(line.removeprefix("  - "))
    return found


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


MAX_BATCHES = 50
"""Most batches a wave is cut into: a wave of thousands of devices installs more of them at
once (5 at a time, a 50,000-device wave would take a month), at least 5 or 10 per batch."""


def parallel_for(size: int, careful: bool) -> int:
    """Devices a wave of ``size`` installs at once: 5 (high, critical) or 10, more when the
    wave would take more than :data:`MAX_BATCHES` batches."""
    cap = 5 if careful else 10
    return max(1, min(size, max(cap, math.ceil(size / MAX_BATCHES))))


def _gated(draft: Sequence[Wave], n: int, careful: bool, rollback: bool) -> list[Wave]:
    """Give each drafted wave its health gate and parallelism, sized for ``n`` targets."""
    return [
        wave.model_copy(
            update={
                "max_parallel": parallel_for(size, careful),
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


MAX_ASKED_WAVES = 20
"""Most waves an engineer's wave size may produce; beyond it the planner's own waves stay."""


def _canary_rule(size: int, n: int) -> str:
    """Why a first wave of ``size`` is refused, in the words of policy rule D5."""
    return (
        f"canary: a first wave of {size} devices; with {n} targets it may take at most "
        f"{canary_limit(n)} ({CANARY_PERCENT}% of the targets, at least 1)"
    )


def asked_waves(
    n: int, careful: bool, ask: WaveAsk, planned: list[Wave]
) -> tuple[list[Wave], list[str], list[str]]:
    """The waves the engineer asked for, where policy allows them, else ``planned``.

    Returns:
        The waves, what was honoured (for the rationale) and what was declined, and why.
    """
    honoured: list[str] = []
    declined: list[str] = []
    first: Wave | None = None
    size = 0
    if ask.canary is not None or ask.canary_percent is not None:
        percent = ask.canary_percent
        size = (
            ask.canary if ask.canary is not None else max(1, math.floor(n * (percent or 0) / 100))
        )
        typed = (
            _plural(size, "device")
            if percent is None
            else f"{percent:g}% ({_plural(size, 'device')})"
        )
        if n > CANARY_MIN_TARGETS and size > canary_limit(n):
            declined.append(f"a first wave of {typed}: {_canary_rule(size, n)}")
        elif size >= n:
            declined.append(f"a first wave of {typed}: there are only {n} targets")
        else:
            name = "canary" if n > CANARY_MIN_TARGETS else "pilot"
            first = (
                Wave(name=name, count=size) if percent is None else Wave(name=name, percent=percent)
            )
            honoured.append(f"first wave of {typed}, as asked")
    if first is None and len(planned) > 1:
        first = planned[0]
        size = wave_sizes(planned, n)[0]
    if first is None:
        return planned, honoured, declined
    rest = n - size
    later: list[Wave] | None = None
    if ask.waves is not None:
        if ask.waves < 2 or ask.waves - 1 > rest:
            declined.append(
                f"{ask.waves} waves: with {n} targets and a first wave of {size}, "
                f"the plan keeps {len(planned)} waves"
            )
        else:
            each = math.ceil(rest / (ask.waves - 1))
            later = [Wave(name=f"wave-{i}", count=each) for i in range(2, ask.waves)]
            honoured.append(f"{ask.waves} waves, as asked")
    elif ask.wave_percent is not None:
        each = max(1, math.floor(n * ask.wave_percent / 100))
        steps = math.ceil(rest / each)
        if steps > MAX_ASKED_WAVES:
            declined.append(
                f"waves of {ask.wave_percent:g}%: that makes {steps} waves after the first; "
                f"the plan keeps at most {MAX_ASKED_WAVES}"
            )
        else:
            later = [Wave(name=f"wave-{i}", percent=ask.wave_percent) for i in range(2, steps + 1)]
            honoured.append(f"waves of {ask.wave_percent:g}% after the first, as asked")
    elif ask.wave_size is not None:
        steps = math.ceil(rest / ask.wave_size)
        if steps > MAX_ASKED_WAVES:
            declined.append(
                f"waves of {ask.wave_size}: that makes {steps} waves after the first; "
                f"the plan keeps at most {MAX_ASKED_WAVES}"
            )
        else:
            later = [Wave(name=f"wave-{i}", count=ask.wave_size) for i in range(2, steps + 1)]
            honoured.append(f"waves of {ask.wave_size} after the first, as asked")
    if later is None:
        if first is planned[0]:
            return planned, honoured, declined
        later = [w.model_copy(update={"health_gate": None}) for w in planned[1:]] or []
        later = later[:-1]
    draft = [first, *later, Wave(name=f"wave-{len(later) + 2}" if later else "rest", percent=100)]
    return _gated(draft, n, careful, rollback=False), honoured, declined


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
        ((c, parse_version(v), v) for v, c in counts.items() if v is not None and v != exclude),
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


@dataclass(frozen=True)
class _Targeting:
    """Which devices a plan is for: its target selector and what that selector picks."""

    selector: Selector
    """The plan's target: ``select_devices`` with it returns exactly the targets."""
    picked: Targets
    """The devices the selector picks before its limit, as groups."""
    count: int
    """How many targets, the limit applied."""
    limited: bool
    """Whether the limit cut ``picked`` down, so the groups say where targets come from."""
    notes: list[str]
    """How the selector was narrowed, for the approver."""


def _target(intent: Intent, ctx: PlanningContext, item: CatalogItem) -> _Targeting:
    """Say with a selector which devices ``item`` goes to: in scope, fitting, moving, limited.

    Raises:
        PlanningError: No device in scope fits ``item``.
    """
    scope = intent.scope
    classes = [c for c in scope.classes or item.device_classes if c in item.device_classes]
    if not classes:
        raise PlanningError(f"no device in scope fits {item.ref}")
    selector = scope.selector().model_copy(update={"classes": classes})
    notes: list[str] = []

    # the selector already keeps to the module's classes; arch and memory go in only when some
    # device in scope lacks them, so plans for fleets the module fits throughout stay as they were
    unfit = [g for g in select_groups(ctx, selector).groups if not item.fits_group(g)]
    fit: dict[str, Any] = {}
    if any(g.arch not in item.arch for g in unfit):
        fit["arch"] = list(item.arch)
    if any(g.arch in item.arch for g in unfit if g.memory_mb < item.min_memory_mb):
        fit["min_memory_mb"] = item.min_memory_mb
    if fit:
        selector = selector.model_copy(update=fit)
        notes.append(_unfit_note(item, unfit, selector))
    picked = select_groups(ctx, selector)
    if picked.count == 0:
        raise PlanningError(f"no device in scope fits {item.ref}")

    if intent.action is PlanIntent.rollback:
        newer = sum(
            c
            for v, c in picked.installed(item.name).items()
            if v is not None and parse_version(v) > item.parsed_version
        )
        if 0 < newer < picked.count:
            moving_selector = selector.model_copy(
                update={"installed": {item.name: f">{item.version}"}}
            )
            moving = select_groups(ctx, moving_selector)
            if sum(g.count for g in moving.groups) == newer:
                notes.append(
                    f"Targets narrowed to {_plural(newer, 'device')} running {item.name} newer "
                    f"than {item.version} (selector: installed {item.name} >{item.version}); the "
                    f"other {picked.count - newer} in scope are left as they are."
                )
                selector, picked = moving_selector, moving
            else:
                # prereleases and local builds of newer versions fall outside ">x.y.z"
                notes.append(
                    f"Only {newer} of the {picked.count} devices in scope run {item.name} newer "
                    f"than {item.version}, but some of them run a prerelease or local build that "
                    f"a version range cannot pick out; the plan targets all {picked.count}, so "
                    f"the others are brought to, or re-validated on, {item.version}."
                )

    count = picked.count
    limited = False
    if scope.limit is not None:
        selector = selector.model_copy(update={"limit": scope.limit})
        if scope.limit < count:
            notes.append(
                f"Limited to {scope.limit} of {count} matching devices, as asked (the first by "
                "device id)."
            )
            count, limited = scope.limit, True
        else:
            notes.append(f"Asked for {scope.limit} devices; {count} match, so all of them.")
    return _Targeting(selector, picked, count, limited, notes)


def _unfit_note(item: CatalogItem, unfit: Sequence[DeviceGroup], selector: Selector) -> str:
    reasons = []
    wrong_arch = [g for g in unfit if g.arch not in item.arch]
    if wrong_arch:
        arches = ", ".join(sorted({g.arch for g in wrong_arch}))
        reasons.append(
            f"{sum(g.count for g in wrong_arch)} have arch {arches} (built for "
            f"{', '.join(item.arch)})"
        )
    small = [g for g in unfit if g.memory_mb < item.min_memory_mb]
    if small:
        reasons.append(
            f"{sum(g.count for g in small)} have less than {item.min_memory_mb} MiB (smallest "
            f"{min(g.memory_mb for g in small)} MiB)"
        )
    asks = []
    if selector.arch:
        asks.append(f"arch {', '.join(selector.arch)}")
    if selector.min_memory_mb is not None:
        asks.append(f"at least {selector.min_memory_mb} MiB")
    total = sum(g.count for g in unfit)
    return (
        f"Left out {_plural(total, 'device')} in scope that {item.ref} does not fit: "
        f"{'; '.join(reasons)}. The target selector asks for {' and '.join(asks)}."
    )


def propose_plan(
    intent: Intent, ctx: PlanningContext, plan_id: str, requested_by: str
) -> RolloutPlan:
    """Propose the compliant plan for ``intent``, with a rationale written for the approver.

    ``select_devices(plan.target, devices, sites)`` returns exactly the targets: the devices in
    scope the version fits (by class, arch and memory), in a rollback only those running a newer
    version when some are not, and at most ``intent.scope.limit`` of them, the first by id.

    Args:
        intent: What the engineer asked for, from ``understand``.
        ctx: The fleet and catalog summary.
        plan_id: Id of the plan.
        requested_by: Who asked.

    Raises:
        PlanningError: The version is not in the catalog, or no device in scope fits it.
    """
    item = ctx.item(intent.module, intent.version)
    if item is None:
        raise PlanningError(f"{intent.module}@{intent.version} is not in the catalog")
    targeting = _target(intent, ctx, item)
    picked = targeting.picked
    n = targeting.count
    installed = picked.installed(item.name)
    rollback = intent.action is PlanIntent.rollback
    careful = item.safety in _CAREFUL

    newer: Counter[str | None] = Counter(
        {
            v: c
            for v, c in installed.items()
            if v is not None and parse_version(v) > item.parsed_version
        }
    )
    # devices named by an id that says nothing of their facts might not be moving back
    exempt = (
        rollback
        and not picked.explicit
        and installed.get(None, 0) == 0
        and sum(newer.values()) == sum(installed.values())
    )
    one_wave = intent.flags.all_at_once or intent.flags.skip_canary
    waves = rollback_waves(n, careful, exempt) if rollback else rollout_waves(n, careful, one_wave)
    wave_notes: list[str] = []
    wave_declined: list[str] = []
    if intent.wave_ask.asked and not rollback:
        waves, wave_notes, wave_declined = asked_waves(n, careful, intent.wave_ask, waves)

    if rollback:
        back_to = _most_common(newer or installed, item.version)
        rollback_spec = RollbackSpec(version=back_to, automatic=False)
        threshold = 0.1
    else:
        back_to = _most_common(installed, item.version)
        # a first-time install has nothing to go back to: a failed wave halts for people
        rollback_spec = RollbackSpec(version=back_to, automatic=back_to is not None)
        threshold = 0.05 if careful else 0.1
    maintenance = careful or intent.flags.in_maintenance
    schedule = Schedule(mode=ScheduleMode.maintenance if maintenance else ScheduleMode.now)
    abort = AbortCriteria(failure_threshold=threshold, min_executed=1)

    rationale = _rationale(
        intent=intent,
        ctx=ctx,
        item=item,
        n=n,
        found_groups=picked.groups,
        explicit=picked.explicit,
        limited=targeting.limited,
        installed=installed,
        waves=waves,
        abort=abort,
        rollback_spec=rollback_spec,
        schedule=schedule,
        exempt=exempt,
        notes=[*targeting.notes, *wave_notes],
        declined=wave_declined,
    )
    return RolloutPlan(
        plan_id=plan_id,
        intent=intent.action,
        module=item.name,
        version=item.version,
        target=targeting.selector,
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
    limited: bool,
    installed: Counter[str | None],
    waves: list[Wave],
    abort: AbortCriteria,
    rollback_spec: RollbackSpec,
    schedule: Schedule,
    exempt: bool,
    notes: list[str],
    declined: list[str],
) -> str:
    rollback = intent.action is PlanIntent.rollback
    careful = item.safety in _CAREFUL
    lines: list[str] = []

    verb = "Roll back" if rollback else "Install"
    lines.append(
        f"{verb} {item.ref} (safety {item.safety.value}) on {_plural(n, 'device')}; version: "
        f"{intent.version_reason}."
    )
    if intent.because:
        lines.append(f"Because: {'; '.join(intent.because)}.")
    if intent.context:
        lines.append(f"Context: {'; '.join(intent.context)}.")
    by_place: Counter[tuple[str, str]] = Counter()
    for group in found_groups:
        by_place[(group.site, group.device_class)] += group.count
    where = [f"{site} {count} {cls}" for (site, cls), count in sorted(by_place.items())]
    if explicit:
        where.append(f"{len(explicit)} named by id ({', '.join(explicit[:5])})")
    prefix = "Picked from: " if limited else "Where: "
    lines.append(prefix + "; ".join(where) + ".")
    running = [
        f"{v} on {c}"
        for v, c in sorted(
            ((v, c) for v, c in installed.items() if v is not None),
            key=lambda vc: parse_version(vc[0]),
        )
    ]
    fresh = installed.get(None, 0)
    if fresh:
        running.append(f"not installed on {fresh}")
    if running:
        lines.append(f"They run {item.name} now: {', '.join(running)}.")
    lines.extend(_dependency_lines(item, found_groups, limited))

    sizes = wave_sizes(waves, n)
    steps = ", ".join(f"{w.name} {s}" for w, s in zip(waves, sizes, strict=True))
    if rollback and exempt:
        ran = (
            "the version these devices ran before"
            if "ran before" in intent.version_reason
            else ("an older release")
        )
        why = (
            f"a rollback to {ran}; policy exempts rollbacks from the canary rule, and it still "
            "goes in gated waves"
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
    elif rollback_spec.version is None:
        on_failure = (
            f"{item.name} was not installed before, so there is no version to go back to and no "
            "automatic rollback; a failed canary (or any failed wave) halts the rollout, and "
            "people decide what happens to the devices it changed"
        )
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
    moving_back = [v for v in installed if v is not None and parse_version(v) > item.parsed_version]
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

    declined = [*declined, *_declined(intent, n, careful, len(waves), rollback, exempt)]
    if declined:
        lines.append(DECLINED_HEADING)
        lines.extend(f"  - {line}" for line in declined)
    readings = [*intent.notes, *notes]
    if readings:
        lines.append("Read from the request:")
        lines.extend(f"  - {line}" for line in readings)
    if intent.ignored:
        lines.append(f"Not understood, ignored: {', '.join(intent.ignored)}.")
    lines.append("Approvals are decided by policy, not by this plan.")
    return "\n".join(lines)


def _dependency_lines(item: CatalogItem, groups: Sequence[DeviceGroup], limited: bool) -> list[str]:
    """Say, per required module, on how many targets the range is not met (policy reports it)."""
    lines = []
    among = "devices in scope" if limited else "targets"
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
    """How many devices a plan for ``intent`` targets, from the group counts (0 if none fit)."""
    item = ctx.item(intent.module, intent.version)
    if item is None:
        return 0
    try:
        return _target(intent, ctx, item).count
    except PlanningError:
        return 0
