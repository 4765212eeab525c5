"""The policy input builders: facts computed from plans, manifests, fleets and approvals.

Each builder returns the typed input (see ``_input``) of one policy; signatures are
checked here, so that Rego receives booleans rather than keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from fieldgate.approvals import Approval
from fieldgate.contract import parse_version, version_in_range
from fieldgate.fleet import Device, Site
from fieldgate.manifest import ModuleManifest, Requirement
from fieldgate.plan import RolloutPlan, ScheduleMode, assign_waves
from fieldgate.policy._input import (
    EXAMPLES,
    SITE_EXAMPLES,
    TOOL_EXAMPLES,
    ApprovalFact,
    ApprovalsInput,
    ArtifactCheck,
    Coverage,
    CoverageFact,
    ManifestFacts,
    PlanFacts,
    PolicyContext,
    Relation,
    RequirementFact,
    RoleNeed,
    RollbackFacts,
    RolloutInput,
    ScheduleFacts,
    TargetGroup,
    ToolDevices,
    ToolInput,
    ToolPlan,
    ToolWave,
    WaveFacts,
)
from fieldgate.signing import key_id_of


def relation_of(version: str, installed: str | None) -> Relation:
    """How ``version`` compares with what is installed."""
    if installed is None:
        return "fresh"
    wanted, current = parse_version(version), parse_version(installed)
    if wanted > current:
        return "upgrade"
    if wanted < current:
        return "downgrade"
    return "same"


def _coverage_fact(ids: Iterable[str], examples: int = EXAMPLES) -> CoverageFact:
    ordered = sorted(set(ids))
    return CoverageFact(count=len(ordered), examples=ordered[:examples])


def rollout_input(
    plan: RolloutPlan,
    manifest: ModuleManifest,
    verification: ArtifactCheck | Mapping[str, Any],
    targets: Sequence[Device],
    sites: Mapping[str, Site],
    installed_manifests: Mapping[tuple[str, str], ModuleManifest] | None = None,
    *,
    actor: str,
    now: datetime,
    freeze: bool = False,
) -> RolloutInput:
    """Build the rollout decision's input.

    Args:
        plan: the plan to decide on.
        manifest: the manifest of ``plan.module`` at ``plan.version``.
        verification: the artifact check (signature and observed digest).
        targets: the devices the plan's selector picks (``select_devices``), unfiltered:
            the policy denies incompatible ones.
        sites: every site the targets are at, by id.
        installed_manifests: the catalog by ``(name, version)``, for what the rollback
            version allows.
        actor: who asks for the decision.
        now: decision time (UTC, time-zone aware).
        freeze: whether a change freeze is in force.
    """
    check = (
        verification if isinstance(verification, ArtifactCheck) else ArtifactCheck(**verification)
    )
    catalog = installed_manifests or {}
    start = max(now, plan.schedule.not_before) if plan.schedule.not_before else now
    in_window: dict[str, bool] = {}
    for site_id in {d.site for d in targets}:
        site = sites[site_id]
        if plan.schedule.mode == ScheduleMode.maintenance:
            # runs inside each site's windows by construction, if the site has any
            in_window[site_id] = bool(site.maintenance)
        else:
            in_window[site_id] = site.in_maintenance(start)

    waves = assign_waves(plan, targets, dict(sites))
    by_id = {d.id: d for d in targets}
    seen = Counter(device_id for wave in waves for device_id in wave)
    coverage = Coverage(
        assigned_twice=_coverage_fact(i for i, n in seen.items() if n > 1),
        not_targets=_coverage_fact(i for i in seen if i not in by_id),
        unassigned=_coverage_fact(i for i in by_id if i not in seen),
    )
    wave_facts = [
        WaveFacts(
            index=index,
            name=wave.name,
            size=len(ids),
            health_gate=wave.health_gate,
            outside_window=sum(1 for i in ids if i in by_id and not in_window[by_id[i].site]),
        )
        for index, (wave, ids) in enumerate(zip(plan.waves, waves, strict=True))
    ]

    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    in_range: dict[tuple[str, str], bool] = {}  # a fleet has few distinct versions

    def requirement(req: Requirement, version: str | None) -> tuple[str, str, str | None, bool]:
        if version is None:
            return (req.module, req.range, None, False)
        key = (version, req.range)
        if key not in in_range:
            in_range[key] = version_in_range(version, req.range)
        return (req.module, req.range, version, in_range[key])

    for device in targets:
        site = sites[device.site]
        installed = device.installed.get(plan.module)
        requires = tuple(
            requirement(req, device.installed.get(req.module)) for req in manifest.requires
        )
        key = (
            device.device_class,
            device.arch,
            device.memory_mb >= manifest.min_memory_mb,
            installed,
            requires,
            site.region,
            tuple(sorted(site.labels.items())),
        )
        group = groups.get(key)
        if group is None:
            groups[key] = {
                "count": 1,
                "memory_mb": device.memory_mb,
                "sites": {device.site},
                "device": device,
                "installed": installed,
                "requires": requires,
                "site": site,
            }
        else:
            group["count"] += 1
            group["memory_mb"] = min(group["memory_mb"], device.memory_mb)
            group["sites"].add(device.site)
    target_groups = [
        TargetGroup.model_validate(
            {
                "count": g["count"],
                "class": g["device"].device_class,
                "arch": g["device"].arch,
                "memory_mb": g["memory_mb"],
                "installed": g["installed"],
                "relation": relation_of(plan.version, g["installed"]),
                "requires": [
                    RequirementFact(module=m, range=r, installed=i, satisfied=s)
                    for m, r, i, s in g["requires"]
                ],
                "region": g["site"].region,
                "site_labels": dict(g["site"].labels),
                "sites": sorted(g["sites"])[:SITE_EXAMPLES],
                "site_count": len(g["sites"]),
            }
        )
        for g in sorted(groups.values(), key=lambda g: (-g["count"], min(g["sites"])))
    ]

    rollback = None
    if plan.rollback is not None:
        version = plan.rollback.version
        known = downgrade = None
        if version is not None:
            rollback_manifest = catalog.get((plan.module, version))
            known = rollback_manifest is not None
            downgrade = rollback_manifest.downgrade_allowed if rollback_manifest else None
        rollback = RollbackFacts(
            version=version,
            automatic=plan.rollback.automatic,
            known=known,
            downgrade_allowed=downgrade,
        )

    return RolloutInput(
        plan=PlanFacts(
            id=plan.plan_id,
            hash=plan.plan_hash,
            revision=plan.revision,
            intent=plan.intent.value,
            module=plan.module,
            version=plan.version,
            requested_by=plan.requested_by,
            abort=plan.abort,
            rollback=rollback,
            schedule=ScheduleFacts(mode=plan.schedule.mode, start=start),
        ),
        manifest=ManifestFacts(
            name=manifest.name,
            version=manifest.version,
            safety=manifest.safety.value,
            device_classes=list(manifest.device_classes),
            arch=list(manifest.arch),
            min_memory_mb=manifest.min_memory_mb,
            requires=list(manifest.requires),
            downgrade_allowed=manifest.downgrade_allowed,
            digest=manifest.artifact.digest,
            signature_present=bool(manifest.artifact.signature),
            signer=manifest.artifact.signer,
        ),
        verification=check,
        targets=target_groups,
        waves=wave_facts,
        coverage=coverage,
        actor=actor,
        context=PolicyContext(now=now, freeze=freeze),
    )


def verify_artifact(
    manifest: ModuleManifest, trusted_keys: Mapping[str, str], observed_digest: str | None
) -> ArtifactCheck:
    """Check the factory signature with the trusted keys (key id → base64 public key).

    A signature counts only when its signer is a trusted key and it verifies over the
    whole manifest (:meth:`ModuleManifest.signing_payload`); otherwise the check says why.
    """
    problem = manifest.signature_problem(trusted_keys)
    return ArtifactCheck(
        signature_valid=problem is None,
        signature_problem=problem,
        observed_digest=observed_digest,
    )


def verify_approvals(approvals: Sequence[Approval], keys: Mapping[str, str]) -> list[bool]:
    """Whether each approval's signature verifies with its approver's key (person → base64 key).

    The key must be the approver's own: an approval signed with someone else's key,
    or by a person without a key, does not verify.
    """
    results = []
    for approval in approvals:
        public = keys.get(approval.approver)
        results.append(
            bool(public)
            and key_id_of(public or "") == approval.key_id
            and approval.signature_valid(public or "")
        )
    return results


def approval_timing(
    approval: Approval, received_at: datetime, deadline: datetime, skew: timedelta
) -> tuple[bool, bool]:
    """Whether ``approval`` came in time (signed and received by ``deadline``), and whether
    its signed time lay within ``skew`` of the control plane's clock when it arrived."""
    in_time = approval.at <= deadline and received_at <= deadline
    return in_time, abs(approval.at - received_at) <= skew


def approvals_input(
    plan_hash: str,
    requester: str,
    approvals: Sequence[Approval],
    signature_valid: Sequence[bool] | Mapping[int, bool],
    roster: Mapping[str, Sequence[str]] | None,
    required: Sequence[Any],
    *,
    plan_id: str | None = None,
    timing: Mapping[int, tuple[bool, bool]] | None = None,
) -> ApprovalsInput:
    """Build the approval count's input.

    Args:
        plan_hash: hash of the current plan revision.
        requester: who asked for the plan.
        approvals: approvals received, in order.
        signature_valid: per approval (by position), whether its signature verifies
            (see :func:`verify_approvals`); a missing entry counts as not verified.
        roster: who holds which roles (a scenario's or the configuration's); None uses
            the pack's default roster.
        required: the rollout decision's ``approvals``: objects or mappings with ``role``
            and ``count`` (reasons are ignored).
        plan_id: plan id, for the record.
        timing: per approval (by position), whether it came in time and whether its
            signed time was within the allowed skew (see :func:`approval_timing`);
            approvals it leaves out are taken as timely.
    """
    valid = (
        dict(enumerate(signature_valid))
        if isinstance(signature_valid, Sequence)
        else dict(signature_valid)
    )
    needs = [
        RoleNeed(role=need["role"], count=need["count"])
        if isinstance(need, Mapping)
        else RoleNeed(role=need.role, count=need.count)
        for need in required
    ]
    return ApprovalsInput(
        plan_id=plan_id,
        plan_hash=plan_hash,
        requester=requester,
        required=needs,
        approvals=[
            ApprovalFact(
                index=index,
                approver=approval.approver,
                plan_hash=approval.plan_hash,
                decision=approval.decision.value,
                signature_valid=bool(valid.get(index, False)),
                claimed_roles=list(approval.roles),
                in_time=(timing or {}).get(index, (True, True))[0],
                within_skew=(timing or {}).get(index, (True, True))[1],
            )
            for index, approval in enumerate(approvals)
        ],
        roster={person: list(roles) for person, roles in roster.items()}
        if roster is not None
        else None,
    )


def tool_input(
    tool: str,
    args: Mapping[str, Any],
    *,
    plan: RolloutPlan | None,
    digest: str | None,
    approved: bool,
    plan_devices: Iterable[str] = (),
    wave_index: int | None = None,
    wave_devices: Iterable[str] = (),
    previous_gate_passed: bool = False,
    kill_switch: bool,
    freeze: bool = False,
    rollback_plan: bool = False,
) -> ToolInput:
    """Build the tool-call check's input.

    The call's devices are checked against the wave and the plan here, and travel as
    counts with a few ids (``devices``): the input, and the cost of its decision, stay
    the same size for a call to ten devices or to ten thousand.

    Args:
        tool: tool name.
        args: the call's arguments (``plan_hash``, ``module``, ``version``, ``digest``,
            ``devices`` for changes: a list of device ids).
        plan: the plan being executed, or None outside a rollout.
        digest: the approved artifact digest.
        approved: whether the approval gate passed for this plan revision.
        plan_devices: every device of the plan.
        wave_index: the current wave, from 0 (None outside a wave).
        wave_devices: devices of the current wave.
        previous_gate_passed: whether the previous wave's gate passed.
        kill_switch: whether the kill switch is on.
        freeze: whether the change freeze is in force.
        rollback_plan: whether the rollout policy judged the plan a rollback.

    Raises:
        ValueError: ``args["devices"]`` is not a list of device ids.
    """
    call_args = dict(args)
    named = call_args.pop("devices", None)
    if named is None:
        named = []
    if not isinstance(named, list | tuple | set | frozenset) or not all(
        isinstance(d, str) for d in named
    ):
        raise ValueError(f"args.devices of {tool} must be a list of device ids, got {named!r:.80}")
    called = set(named)
    in_wave = set(wave_devices) if wave_index is not None else set()
    in_plan = set(plan_devices) if plan is not None else set()
    devices = ToolDevices(
        count=len(called),
        outside_wave=_coverage_fact(called - in_wave, TOOL_EXAMPLES),
        outside_plan=_coverage_fact(called - in_plan, TOOL_EXAMPLES),
    )
    tool_plan = None
    if plan is not None:
        tool_plan = ToolPlan(
            id=plan.plan_id,
            hash=plan.plan_hash,
            module=plan.module,
            version=plan.version,
            digest=digest or "",
            rollback_version=plan.rollback.version if plan.rollback else None,
            approved=approved,
            rollback_plan=rollback_plan,
        )
    wave = None
    if wave_index is not None:
        wave = ToolWave(index=wave_index, previous_gate_passed=previous_gate_passed)
    return ToolInput(
        tool=tool,
        args=call_args,
        devices=devices,
        plan=tool_plan,
        wave=wave,
        kill_switch=kill_switch,
        freeze=freeze,
    )
