"""The policy inputs: the typed facts each policy decides on (``_build`` computes them).

Python computes facts (wave membership, version comparisons, maintenance windows,
signature checks) and Rego decides. Targets are grouped by identical facts with a
count, so the size of a rollout input, and the cost of its decision, grows with
the variety of the fleet, not with the number of devices.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from fieldgate.contract import Contract
from fieldgate.manifest import Requirement
from fieldgate.plan import AbortCriteria, HealthGate, ScheduleMode

EXAMPLES = 5
"""How many example device ids a coverage fact carries."""
SITE_EXAMPLES = 10
"""How many site ids a target group names (``site_count`` says how many there are)."""
TOOL_EXAMPLES = 3
"""How many example device ids a tool call's device fact carries (its refusal names them)."""

Relation = Literal["fresh", "upgrade", "same", "downgrade"]


class ArtifactCheck(Contract):
    """What the control plane found when it checked the artifact to install."""

    signature_valid: bool
    """Whether a trusted factory key signed the whole manifest (every field but the signature)."""
    signature_problem: str | None = None
    """Why the signature does not count (e.g. a signed field was changed); None when it does."""
    observed_digest: str | None
    """sha256 of the artifact as held by the control plane; None when it was not checked."""


class RequirementFact(Contract):
    """One ``requires`` entry of the manifest, as found on a group of targets."""

    module: str
    """Required module."""
    range: str
    """Version range the manifest asks for."""
    installed: str | None
    """Version of the required module installed on these targets (None: not installed)."""
    satisfied: bool
    """Whether ``installed`` lies in ``range`` (computed with ``packaging``)."""


class TargetGroup(Contract):
    """Targets that share every fact the policy reads, with how many there are."""

    count: int = Field(ge=1)
    """Number of targets in the group."""
    device_class: str = Field(alias="class")
    """Device class."""
    arch: str
    """CPU architecture."""
    memory_mb: int
    """Smallest memory in the group, MiB (groups split on whether memory meets the minimum)."""
    installed: str | None
    """Version of the plan's module installed now (None: not installed)."""
    relation: Relation
    """The version to install against ``installed``: fresh, upgrade, same or downgrade."""
    requires: list[RequirementFact]
    """The manifest's requirements as met (or not) on these targets."""
    region: str
    """Region of the targets' sites."""
    site_labels: dict[str, str]
    """Labels of the targets' sites (e.g. ``regulated: "true"``)."""
    sites: list[str]
    """Site ids, sorted, at most ``SITE_EXAMPLES``."""
    site_count: int
    """How many sites the group spans."""


class WaveFacts(Contract):
    """One wave as assigned to devices."""

    index: int
    """Position, from 0."""
    name: str
    """Wave name."""
    size: int
    """Devices the wave takes."""
    health_gate: HealthGate | None
    """The gate, or None."""
    outside_window: int
    """Devices of the wave that would change outside their site's maintenance windows."""


class CoverageFact(Contract):
    """A count of devices with a coverage problem and a few of their ids."""

    count: int = 0
    """How many devices."""
    examples: list[str] = []
    """Up to ``EXAMPLES`` device ids (``TOOL_EXAMPLES`` in a tool input), sorted."""


class Coverage(Contract):
    """How the waves cover the targets."""

    assigned_twice: CoverageFact
    """Devices in more than one wave, or twice in one wave."""
    not_targets: CoverageFact
    """Devices in a wave that are not targets of the plan."""
    unassigned: CoverageFact
    """Targets in no wave."""


class RollbackFacts(Contract):
    """Where the plan returns devices to, and what the catalog says about that version."""

    version: str | None
    """Rollback version (None: the module was not installed before)."""
    automatic: bool
    """Whether rollback runs automatically when the abort criteria trip."""
    known: bool | None
    """Whether the version is in the catalog (None without a version)."""
    downgrade_allowed: bool | None
    """Whether that version's manifest allows downgrades (None when unknown)."""


class ScheduleFacts(Contract):
    """When the plan runs."""

    mode: ScheduleMode
    """``maintenance`` or ``now``."""
    start: datetime
    """When it would start: ``not_before`` or now, whichever is later."""


class PlanFacts(Contract):
    """The plan, without its device lists."""

    id: str
    """Plan id."""
    hash: str
    """Hash of this revision."""
    revision: int
    """Revision number."""
    intent: Literal["rollout", "rollback"]
    """What the plan was asked for as."""
    module: str
    """Module to install."""
    version: str
    """Version to install."""
    requested_by: str
    """Who asked for it."""
    abort: AbortCriteria | None
    """Abort criteria, or None."""
    rollback: RollbackFacts | None
    """Rollback, or None."""
    schedule: ScheduleFacts
    """Schedule."""


class ManifestFacts(Contract):
    """The manifest of the version to install."""

    name: str
    """Module name."""
    version: str
    """Version."""
    safety: str
    """Safety class."""
    device_classes: list[str]
    """Device classes it runs on."""
    arch: list[str]
    """Architectures it is built for."""
    min_memory_mb: int
    """Least memory, MiB."""
    requires: list[Requirement]
    """Required modules and ranges."""
    downgrade_allowed: bool
    """Whether devices running a newer version may be moved to this one."""
    digest: str
    """Artifact digest the manifest names."""
    signature_present: bool
    """Whether the manifest carries a signature (validity is ``verification``)."""
    signer: str | None
    """Key id of the signer."""


class PolicyContext(Contract):
    """The world at decision time."""

    now: datetime
    """Now (UTC)."""
    freeze: bool
    """Whether a change freeze is in force."""


class RolloutInput(Contract):
    """Input of ``data.fieldgate.rollout.decision``."""

    plan: PlanFacts
    """The plan."""
    manifest: ManifestFacts
    """The manifest of the version to install."""
    verification: ArtifactCheck
    """The artifact check."""
    targets: list[TargetGroup]
    """Targets grouped by identical facts."""
    waves: list[WaveFacts]
    """Waves, in order."""
    coverage: Coverage
    """How the waves cover the targets."""
    actor: str
    """Who asks for the decision."""
    context: PolicyContext
    """Now and freeze."""


class ApprovalFact(Contract):
    """One approval as the policy sees it."""

    index: int
    """Position in the list of approvals."""
    approver: str
    """Who decided."""
    plan_hash: str
    """Plan revision decided on."""
    decision: Literal["approve", "reject"]
    """approve or reject."""
    signature_valid: bool
    """Whether the signature verifies with the approver's key (checked in Python)."""
    claimed_roles: list[str]
    """Roles the approval claims; never counted, kept for the record."""
    in_time: bool = True
    """Whether it was signed and received before the approval deadline (checked in Python)."""
    within_skew: bool = True
    """Whether its signed time was within the allowed skew of the control plane's clock
    when it arrived (checked in Python)."""


class RoleNeed(Contract):
    """A number of approvals from one role."""

    role: str
    """Role."""
    count: int = Field(ge=1)
    """How many distinct people."""


class ApprovalsInput(Contract):
    """Input of ``data.fieldgate.approvals.decision``."""

    plan_id: str | None = None
    """Plan id (for the record)."""
    plan_hash: str
    """Hash of the current plan revision."""
    requester: str
    """Who asked for the plan."""
    required: list[RoleNeed]
    """Approvals the rollout decision asked for."""
    approvals: list[ApprovalFact]
    """Approvals received, in order."""
    roster: dict[str, list[str]] | None = None
    """Who holds which roles; None uses the pack's ``data.fieldgate.roster``."""


class ToolPlan(Contract):
    """The approved plan as the enforcement point sees it."""

    id: str
    """Plan id."""
    hash: str
    """Hash of the approved revision."""
    module: str
    """Approved module."""
    version: str
    """Approved version."""
    digest: str
    """Approved artifact digest."""
    rollback_version: str | None
    """The plan's rollback version."""
    approved: bool
    """Whether the approval gate passed for this revision."""
    rollback_plan: bool = False
    """Whether the rollout policy judged the plan a rollback (it runs under a change freeze)."""


class ToolWave(Contract):
    """The wave being executed."""

    index: int
    """Wave index, from 0."""
    previous_gate_passed: bool
    """Whether the previous wave's health gate passed (ignored for wave 0)."""


class ToolDevices(Contract):
    """The devices a call names, as counts with a few ids, checked against the wave and the plan."""

    count: int = Field(ge=0)
    """How many distinct devices the call names."""
    outside_wave: CoverageFact
    """Named devices that are not in the current wave (all of them when no wave is current)."""
    outside_plan: CoverageFact
    """Named devices that are not devices of the plan (all of them outside a rollout)."""


class ToolInput(Contract):
    """Input of ``data.fieldgate.tools.decision``."""

    tool: str
    """Tool name."""
    args: dict[str, Any]
    """Arguments of the call, as the executor gave them, less ``devices`` (see ``devices``)."""
    devices: ToolDevices
    """The devices the call names, as facts."""
    plan: ToolPlan | None
    """The approved plan, or None outside a rollout."""
    wave: ToolWave | None
    """The current wave, or None."""
    kill_switch: bool
    """Whether the kill switch is on."""
    freeze: bool
    """Whether the change freeze is in force."""


class OperationInput(Contract):
    """Input of ``data.fieldgate.operations.decision``."""

    action: str
    """The operation: ``freeze`` or ``unfreeze``."""
    actor: str
    """Who asks."""
    roster: dict[str, list[str]] | None = None
    """Who holds which roles (the configuration's); None: the pack's roster."""
