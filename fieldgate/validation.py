"""Check a rollout plan before anyone reviews it: deterministic findings and a dry run.

:func:`check_plan` finds what blocks a plan (unknown or unfitting targets, waves that do not
cover each target once) and what policy should hear about (unmet requirements, waves without a
health gate); :func:`dry_run` predicts the rollout on the fleet twin's timing model without
touching a device. The validator agent reviews both, and a plan with blocking problems never
passes, whatever a model says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from fieldgate.commands import Action
from fieldgate.contract import Contract, parse_version, version_in_range
from fieldgate.fleet import Device, Site
from fieldgate.manifest import ModuleManifest
from fieldgate.plan import PlanIntent, RolloutPlan, ScheduleMode, assign_waves, select_devices
from fieldgate.twin import DURATION_SECONDS


class Findings(Contract):
    """What the deterministic checks found."""

    problems: list[str] = []
    """Blocking: the planner must fix these."""
    warnings: list[str] = []
    """Not blocking here; the policy gate decides on them."""
    targets: int = 0
    """Devices the plan targets."""
    wave_sizes: list[int] = []
    """Devices per wave."""


class WaveForecast(Contract):
    """The dry run's view of one wave."""

    name: str
    devices: int
    minutes: int


class DryRun(Contract):
    """What the twin predicts for the plan, without touching a device."""

    targets: int
    """Devices targeted."""
    waves: list[WaveForecast]
    """Per wave: size and predicted minutes."""
    starts_at: datetime | None
    """When the first wave can start (next maintenance window when scheduled so)."""
    predicted_minutes: int
    """Predicted minutes from start to the last wave's gate."""
    blast_radius: int
    """Devices changed before the rollout halts if the first wave fails its gate."""


def check_plan(
    plan: RolloutPlan,
    manifest: ModuleManifest | None,
    devices: Sequence[Device],
    sites: dict[str, Site],
) -> Findings:
    """Run the deterministic checks: version exists, targets exist and fit, waves cover once."""
    problems: list[str] = []
    warnings: list[str] = []
    if manifest is None:
        return Findings(problems=[f"{plan.ref} is not in the catalog"])
    known = {d.id for d in devices}
    missing = [d for d in plan.target.devices if d not in known]
    if missing:
        problems.append(f"unknown devices in the target: {', '.join(sorted(missing)[:10])}")
    targets = select_devices(plan.target, devices, sites)
    if not targets:
        problems.append("the target selector matches no device")
    misfits = [
        d
        for d in targets
        if d.device_class not in manifest.device_classes
        or d.arch not in manifest.arch
        or d.memory_mb < manifest.min_memory_mb
    ]
    if misfits:
        problems.append(
            f"{len(misfits)} targets do not fit {plan.ref} by class, arch or memory "
            f"(e.g. {misfits[0].id}); narrow the selector"
        )
    waves = assign_waves(plan, targets, sites)
    target_ids = {d.id for d in targets}
    seen: dict[str, int] = {}
    for index, wave in enumerate(waves):
        for device_id in wave:
            if device_id not in target_ids:
                problems.append(f"wave {index + 1} names {device_id}, which is not a target")
            seen[device_id] = seen.get(device_id, 0) + 1
        if not wave:
            problems.append(f"wave {index + 1} ({plan.waves[index].name}) is empty")
    twice = sorted(d for d, n in seen.items() if n > 1)
    if twice:
        problems.append(f"{len(twice)} devices are in more than one wave (e.g. {twice[0]})")
    uncovered = sorted(target_ids - set(seen))
    if uncovered:
        problems.append(f"{len(uncovered)} targets are in no wave (e.g. {uncovered[0]})")
    for requirement in manifest.requires:
        unmet = [
            d
            for d in targets
            if (v := d.installed.get(requirement.module)) is None
            or not version_in_range(v, requirement.range)
        ]
        if unmet:
            warnings.append(
                f"{len(unmet)} targets do not meet {requirement.module} {requirement.range}"
            )
    for index, step in enumerate(plan.waves):
        if step.health_gate is None:
            warnings.append(f"wave {index + 1} ({step.name}) has no health gate")
    return Findings(
        problems=problems,
        warnings=warnings,
        targets=len(targets),
        wave_sizes=[len(w) for w in waves],
    )


def dry_run(
    plan: RolloutPlan, wave_sizes: Sequence[int], target_sites: Sequence[Site], now: datetime
) -> DryRun:
    """Predict the rollout on the twin's timing model: batches of max_parallel, then soak."""
    low, high = DURATION_SECONDS[Action.install]
    per_device = (low + high) / 2 / 60
    forecasts = []
    for wave, size in zip(plan.waves, wave_sizes, strict=True):
        batches = math.ceil(size / wave.max_parallel) if size else 0
        soak = wave.health_gate.soak_minutes if wave.health_gate else 0
        forecasts.append(
            WaveForecast(
                name=wave.name, devices=size, minutes=math.ceil(batches * per_device) + soak
            )
        )
    starts_at: datetime | None = now
    if plan.schedule.mode is ScheduleMode.maintenance:
        opens = [t for s in target_sites if (t := s.next_maintenance(now)) is not None]
        starts_at = min(opens) if opens else None
    if plan.schedule.not_before is not None and starts_at is not None:
        starts_at = max(starts_at, plan.schedule.not_before)
    return DryRun(
        targets=sum(wave_sizes),
        waves=forecasts,
        starts_at=starts_at,
        predicted_minutes=sum(f.minutes for f in forecasts),
        blast_radius=wave_sizes[0] if wave_sizes else 0,
    )


def changes_since_proposed(
    plan: RolloutPlan,
    proposed_targets: int | None,
    devices: Sequence[Device],
    sites: dict[str, Site],
    versions: Sequence[str],
    offline: set[str],
    freeze: bool,
) -> list[str]:
    """What changed since the plan was proposed that an approver should know before deciding.

    Args:
        plan: The plan revision waiting for decisions.
        proposed_targets: Devices its dry run targeted when it was proposed (None: unknown).
        devices: The fleet now.
        sites: The fleet's sites.
        versions: The catalog's versions of the plan's module now.
        offline: Devices known to be offline now.
        freeze: Whether a change freeze is in force now.
    """
    targets = select_devices(plan.target, devices, sites)
    notes: list[str] = []
    if proposed_targets is not None and len(targets) != proposed_targets:
        notes.append(
            f"the plan targeted {proposed_targets} devices when proposed; its target picks "
            f"{len(targets)} now"
        )
    already = [d.id for d in targets if d.installed.get(plan.module) == plan.version]
    if already:
        notes.append(
            f"{len(already)} of {len(targets)} targets already run {plan.ref}"
            f" ({_some(already)}): they would get no change"
        )
    down = sorted(offline & {d.id for d in targets})
    if down:
        notes.append(
            f"{len(down)} of {len(targets)} targets are offline now ({_some(down)}): "
            "their commands wait for them"
        )
    if plan.intent is PlanIntent.rollout:
        newer = [v for v in versions if parse_version(v) > parse_version(plan.version)]
        if newer:
            latest = max(newer, key=parse_version)
            notes.append(f"{plan.module} {latest} is in the catalog now, newer than {plan.version}")
    if freeze:
        notes.append("a change freeze is in force: the rollout would hold until it is lifted")
    return notes


def _some(ids: Sequence[str], shown: int = 5) -> str:
    """The first few ids and how many more."""
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more
