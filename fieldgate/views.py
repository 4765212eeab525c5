"""What ``--json`` prints: one contract per list and show command, and ``fieldgate status``.

Each model here is a view contract: its keys are stable, each field documented, and
``fieldgate schema NAME`` prints its JSON Schema (see :data:`fieldgate.schemas.CONTRACTS`).
Strings in them are the stored text as it is (untrusted where the field says so); the JSON
printer escapes every non-ASCII and control character, so none reaches a terminal raw.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fieldgate.approvals import Approval
from fieldgate.audit import AuditEvent
from fieldgate.contract import Contract
from fieldgate.fleet import Device, Site
from fieldgate.manifest import ModuleManifest
from fieldgate.plan import RolloutPlan
from fieldgate.store import FleetSummary

# --------------------------------------------------------------------------- catalog


class CatalogItem(Contract):
    """One manifest as ``catalog list`` shows it."""

    name: str
    """Module name."""
    version: str
    """Module version."""
    safety: str
    """Safety class: ``standard``, ``safety_relevant`` or ``safety_critical``."""
    device_classes: list[str]
    """Device classes the module is for."""
    signature_valid: bool
    """Whether an enrolled factory key signed the whole manifest."""
    digest_matches: bool
    """Whether the artifact's measured digest is the one the manifest names."""


class CatalogList(Contract):
    """What fieldgate catalog list --json prints: every stored manifest, by name then version."""

    manifests: list[CatalogItem]
    """The manifests."""


class CatalogRecordView(Contract):
    """One stored manifest with its provenance and verification facts."""

    manifest: ModuleManifest
    """The manifest as imported (its description is untrusted text)."""
    source: str
    """The file or repository it was imported from."""
    actor: str
    """Who imported it."""
    imported_at: datetime
    """When it was imported (UTC)."""
    observed_digest: str
    """The digest the artifact store measured at import."""
    digest_matches: bool
    """Whether ``observed_digest`` is the manifest's own."""
    signature_valid: bool
    """Whether an enrolled factory key signed the whole manifest."""
    signature_note: str
    """Why the signature is valid or not (which key verified it)."""


class CatalogShow(Contract):
    """What fieldgate catalog show NAME [VERSION] --json prints: the module's manifests."""

    name: str
    """The module asked for."""
    manifests: list[CatalogRecordView]
    """Its versions (or the one asked for), oldest first."""


# --------------------------------------------------------------------------- fleet


class FleetList(Contract):
    """What fieldgate fleet list --json prints: the devices that match, with a summary of them."""

    summary: FleetSummary
    """Counts over the matching devices (the whole fleet when nothing filters)."""
    fleet_devices: int
    """Devices in the whole fleet."""
    matched: int
    """Devices that match the filters."""
    devices: list[Device]
    """The matching devices, at most ``--limit`` of them."""
    truncated: bool
    """Whether ``--limit`` left devices out of ``devices``."""


class DeviceKey(Contract):
    """The ed25519 key a device is enrolled with (``fleet enroll``)."""

    key_id: str
    """``ed25519:`` and 16 hex digits."""
    public_key: str
    """The raw public key, base64."""
    enrolled_at: datetime
    """When it was enrolled (UTC)."""
    enrolled_by: str
    """Who enrolled it."""


class DeviceSeen(Contract):
    """What the MQTT gateway last heard from a device."""

    online: bool
    """Whether its last hello or will said online."""
    last_seen: datetime | None
    """When the gateway last took in a hello or report of it (UTC)."""
    health: dict[str, Any] | None
    """Its health from that reading; ``note`` in it is untrusted text."""


class FleetShow(Contract):
    """What fieldgate fleet show ID --json prints: one device, or one site and its devices."""

    kind: Literal["device", "site"]
    """What the id names."""
    device: Device | None = None
    """The device (kind ``device``)."""
    site: Site | None = None
    """The site (kind ``site``), or the device's site."""
    devices: list[str] = []
    """Ids of the site's devices (kind ``site``)."""
    key: DeviceKey | None = None
    """The key the device is enrolled with (None: not enrolled, or kind ``site``)."""
    seen: DeviceSeen | None = None
    """What a gateway last heard from the device (None: none has, or kind ``site``)."""


# --------------------------------------------------------------------------- approvals


class RoleNeed(Contract):
    """How many decisions of one role a plan needs (or still misses)."""

    role: str
    """The role, e.g. ``safety``."""
    count: int
    """How many people of that role."""
    reason: str = ""
    """Why the policy asks for them (empty in a tally of what is missing)."""


class AwaitingPlan(Contract):
    """One plan in the approval queue."""

    plan_id: str
    """The plan."""
    module: str | None
    """Module it rolls out."""
    version: str | None
    """Version it rolls out."""
    targets: int | None
    """Devices it targets."""
    missing: list[RoleNeed]
    """Decisions still missing, by role."""
    requester: str
    """Who asked for it."""
    requested_at: datetime
    """When the run was accepted (UTC)."""
    deadline: datetime | None
    """When the approval request expires."""


class ApprovalsList(Contract):
    """What fieldgate approvals list --json prints: plans waiting for approval, oldest first."""

    plans: list[AwaitingPlan]
    """The plans."""


class IgnoredDecision(Contract):
    """A decision that did not count, and why."""

    approver: str
    """Who decided."""
    reason: str
    """Why it did not count."""


class ApprovalsShow(Contract):
    """What fieldgate approvals show PLAN --json prints: the plan as approvers read it."""

    plan_id: str
    """The plan."""
    request: str
    """What the requester asked (untrusted text)."""
    requester: str
    """Who asked."""
    status: str
    """Where the run stands: awaiting_approval, queued, held, running or done."""
    outcome: str | None
    """How the run ended, once it did."""
    plan: RolloutPlan | None
    """The proposed plan (None before one was planned)."""
    plan_hash: str | None
    """The hash approvals sign."""
    dry_run: dict[str, Any]
    """The dry run on the twin's model: ``targets``, ``predicted_minutes``,
    ``blast_radius``, ``starts_at`` and ``waves``."""
    findings: dict[str, Any]
    """The validator's findings: ``targets``, ``wave_sizes``, ``problems``, ``warnings``."""
    decision: dict[str, Any] | None
    """The rollout policy's decision: ``allow``, ``deny``, ``warn``, ``approvals``."""
    required: list[RoleNeed]
    """Decisions the policy requires, by role."""
    decisions: list[Approval]
    """Every signed decision received for the plan (also for older revisions)."""
    counted: list[str]
    """Approvers whose decisions counted."""
    ignored: list[IgnoredDecision]
    """Decisions that did not count, and why."""
    rejected_by: list[str]
    """Who rejected the plan."""
    missing: list[RoleNeed]
    """Decisions still missing, by role."""
    deadline: datetime | None
    """When the approval request expires, while the run waits for one."""
    changes: list[str]
    """What changed since the plan was proposed (while it waits for approval)."""


# --------------------------------------------------------------------------- keys


class KeyItem(Contract):
    """One stored key and whether it is trusted."""

    key_id: str
    """``ed25519:`` and 16 hex digits."""
    owner: str
    """Who the key belongs to."""
    purpose: str
    """approver, factory, device or control."""
    status: str
    """trusted, replaced, pending, revoked, bad or untrusted."""
    reason: str
    """Why it is not trusted (empty when it is)."""
    private_key_here: str
    """Whether this machine holds the private half: yes, no, no (another key), unreadable."""


class KeysList(Contract):
    """What fieldgate keys list --json prints: the stored keys judged under the root of trust."""

    root_version: int | None
    """The root version they were judged under (None: no root is pinned)."""
    keys: list[KeyItem]
    """The keys."""
    root_problems: list[str]
    """What was refused on the way from the pinned root to the current one."""


class RootKeyItem(Contract):
    """One root key."""

    key_id: str
    """``ed25519:`` and 16 hex digits."""
    holder: str
    """Who keeps the private half."""


class KeysRoot(Contract):
    """What fieldgate keys root show --json prints: the current root of trust."""

    version: int
    """Root version (1 at ``fieldgate init``)."""
    threshold: int
    """How many root keys must sign (k of n)."""
    keys: list[RootKeyItem]
    """The root keys (n)."""
    at: datetime
    """When this version was made."""


# --------------------------------------------------------------------------- audit, policy, runs


class AuditShow(Contract):
    """What fieldgate audit show [PLAN] --json prints: audit events in order."""

    plan_id: str | None
    """The plan asked for (None: every plan)."""
    events: list[AuditEvent]
    """The events, oldest first."""


class PolicyRuleItem(Contract):
    """One rule of the policy pack."""

    title: str
    """Rule id and name, e.g. ``D5 canary``."""
    description: str
    """What the rule requires."""
    file: str
    """File inside the pack."""
    line: int
    """Line of the rule."""
    package: str
    """Rego package."""
    rule: str
    """Rego rule."""


class PolicyShow(Contract):
    """What fieldgate policy show --json prints: every rule of the pack."""

    revision: str
    """The pack's revision (a hash of its files)."""
    files: list[str]
    """The pack's files."""
    rules: list[PolicyRuleItem]
    """The rules."""


class RunItem(Contract):
    """One rollout run."""

    plan_id: str
    """The plan."""
    thread_id: str
    """Its graph thread."""
    status: str
    """accepted, awaiting_approval, queued, executing, held or done."""
    outcome: str | None
    """How it ended (completed, denied, rolled_back, …) once done."""
    held_by: str | None
    """What holds it: kill_switch, freeze or policy_engine (None when nothing does)."""
    requester: str
    """Who asked."""
    request: str
    """What they asked (untrusted text)."""
    created_at: datetime
    """When the run was accepted (UTC)."""
    updated_at: datetime
    """When it last moved (UTC)."""


class RunsList(Contract):
    """What fieldgate runs list --json prints: rollout runs, oldest first."""

    runs: list[RunItem]
    """The runs."""


# --------------------------------------------------------------------------- status

DeviceState = Literal[
    "pending", "waiting_window", "applied", "failed", "unreachable", "rolled_back"
]
"""Where one target device stands in its run (``waiting_window``: its install went out, and
the device may not start it before a later maintenance window of its site opens)."""

WaitKind = Literal[
    "planning",
    "confirmation",
    "approvals",
    "worker",
    "maintenance_window",
    "soak",
    "kill_switch",
    "freeze",
    "policy_engine",
]
"""What a run can wait for."""


class WaveProgress(Contract):
    """One wave of a run and its devices by state."""

    number: int
    """1 for the first wave."""
    name: str
    """The wave's name, e.g. ``canary``."""
    status: str
    """pending, dispatching, soaking, waiting_window (for a site's maintenance window),
    passed, failed or halted."""
    devices: int
    """Devices in the wave."""
    states: dict[DeviceState, int]
    """Devices per state (every state present, 0 when none)."""
    max_parallel: int | None
    """Devices dispatched at once."""
    min_success_rate: float | None
    """The gate's least share of healthy devices (None: the wave has no gate)."""
    max_failures: int | None
    """The gate's most failed devices."""
    soak_minutes: int
    """How long the wave soaks before its gate is judged."""
    soak_until: datetime | None
    """When the wave's soak ends (UTC), once it began."""
    soak_remaining_seconds: float | None
    """Seconds of soak left (None when the wave does not soak now)."""
    gate_result: str | None
    """What the gate found, once judged."""


class Waiting(Contract):
    """Something a run waits for before it moves on."""

    kind: WaitKind
    """What it waits for."""
    detail: str
    """What exactly: the roles missing, who pulled the switch and why (untrusted text)."""
    until: datetime | None = None
    """When the wait ends on its own (deadline, window opening, soak end), if known."""
    people: bool
    """Whether a person must act for the run to move on."""


class WindowWait(Contract):
    """Devices of a run whose install waits for their site's next maintenance window: sent
    and not answered, and outside every window it may start in (a field agent keeps it in
    its own store, a device that is offline gets it then), so it starts when that one opens."""

    site: str
    """The devices' site."""
    timezone: str
    """The site's time zone, in which its windows are read."""
    opens: datetime
    """When the window opens (UTC)."""
    opens_local: str
    """The same time in the site's time zone, e.g. ``Sat 2026-12-12 01:00 CET``."""
    devices: list[str]
    """The devices, by id."""


class StatusEvent(Contract):
    """One recent audit event of the run."""

    seq: int
    """Position in the audit log."""
    at: datetime
    """When it happened."""
    kind: str
    """Event kind, e.g. ``device_report``."""
    actor: str
    """Who or what acted."""
    summary: str
    """The event in a few words (may hold untrusted text)."""


class RunStatus(Contract):
    """Where one rollout run stands."""

    plan_id: str
    """The plan."""
    request: str
    """What the requester asked (untrusted text)."""
    requester: str
    """Who asked."""
    status: str
    """accepted, awaiting_approval, queued, executing, held or done."""
    outcome: str | None
    """How it ended, once done."""
    module: str | None
    """Module the plan rolls out."""
    version: str | None
    """Version it rolls out."""
    intent: str | None
    """upgrade, rollback, …"""
    waves: list[WaveProgress]
    """The plan's waves."""
    states: dict[DeviceState, int]
    """Target devices per state, over every wave."""
    waiting: list[Waiting]
    """What the run waits for now (empty while it moves or once it ended)."""
    window_waits: list[WindowWait] = []
    """Devices whose install waits for a later maintenance window, by site and opening (also
    once the run ended: the install is still to come)."""
    settled: bool
    """Whether it ended or waits for people (``--watch`` stops then)."""
    events: list[StatusEvent]
    """Its last few audit events, oldest first."""
    updated_at: datetime
    """When the run last moved (UTC)."""


class StatusReport(Contract):
    """What fieldgate status [PLAN] --json prints: one run, or every run that has not ended."""

    at: datetime
    """When the status was read (UTC)."""
    freeze: str | None
    """The change freeze in force (None when there is none)."""
    runs: list[RunStatus]
    """The runs."""
