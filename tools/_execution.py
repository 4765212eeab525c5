"""What the executor's tools do: dispatch waves, wait in transport time, judge gates, roll back.

The model picks the tool; the code here does the fan-out to devices, so tokens do
not grow with the fleet. Every command is idempotent (its id is a hash of plan,
wave, device and action) and signed by the control plane's key; a rerun after a
crash re-sends the same ids and no device applies anything twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlmodel import Session

from fieldgate.audit import ActorKind, EventKind
from fieldgate.batches import chunks
from fieldgate.commands import (
    Action,
    DeviceCommand,
    DeviceReport,
    ReportStatus,
    StartWindow,
    command_id_for,
)
from fieldgate.fleet import Site
from fieldgate.manifest import ModuleManifest
from fieldgate.plan import RolloutPlan, ScheduleMode
from fieldgate.runtime import Context
from fieldgate.store import NewEvent

WaveStatus = Literal["pending", "dispatching", "passed", "failed", "halted"]

HoldKind = Literal["kill_switch", "freeze", "policy_engine"]
"""What holds a run: the kill switch, the change freeze, or a policy engine that failed."""

HOLD_LABELS: dict[str, str] = {
    "kill_switch": "the kill switch",
    "freeze": "the change freeze",
    "policy_engine": "a policy engine error",
}
"""How each kind of hold reads: ``held by the kill switch``."""


class GateResult(BaseModel):
    """How a wave fared against its health gate."""

    passed: bool
    healthy: int
    failed: int
    unreachable: int
    success_rate: float
    reason: str


class WaveRun(BaseModel):
    """One wave as it executes."""

    index: int
    name: str
    devices: list[str]
    status: WaveStatus = "pending"
    applied: list[str] = []
    """Devices that installed and stayed healthy."""
    failed: list[str] = []
    """Devices whose install failed or whose health failed after it."""
    unreachable: list[str] = []
    """Devices that did not answer before the wave deadline (their command stays queued)."""
    gate: GateResult | None = None
    soak_until: datetime | None = None
    """When the wave's soak ends (the run's clock), once it began."""


class AbortState(BaseModel):
    """Whether the rollout must stop."""

    tripped: bool = False
    reason: str = ""


class Hold(BaseModel):
    """Why a run dispatches nothing until the hold lifts (then it resumes where it stood)."""

    kind: HoldKind
    """The kill switch, the change freeze or a policy engine error."""
    reason: str
    """Who pulled the switch or set the freeze and why, or what the engine said."""
    attempts: int = 0
    """Policy engine errors in a row (0 for the switch and the freeze)."""
    retry_at: datetime | None = None
    """When a worker retries a run held by a policy engine error on its own (people's
    clock); None: it does not (the retries are spent, or the hold is not the engine's)."""

    def describe(self) -> str:
        """``held by the kill switch: kill switch for plan … pulled by op-ola: storm``."""
        return f"held by {HOLD_LABELS[self.kind]}: {self.reason}"


class Execution(BaseModel):
    """The executor's progress, kept in the graph state between steps."""

    waves: list[WaveRun]
    device_sites: dict[str, str] = {}
    """Site of every target, fixed when execution starts (a later read of the plan's
    selector may pick other devices once versions change)."""
    current: int = 0
    """Index of the next wave to deploy."""
    touched: list[str] = []
    """Devices that were sent any command, in order."""
    executed: int = 0
    """Devices that reported a result of their install."""
    failures: int = 0
    """Devices that failed (install or health)."""
    abort: AbortState = AbortState()
    paused: bool = False
    rolled_back: bool = False
    rollback_failed: list[str] = []
    refused_calls: int = Field(default=0, ge=0)
    steps: int = 0
    held: Hold | None = None
    """What holds the run, while something does."""
    engine_failures: int = Field(default=0, ge=0)
    """Tool calls in a row the policy engine could not decide."""
    audited: int = Field(default=0, ge=0)
    """Events the executor appended for this run. Each is keyed by the count so far, so a
    step replayed from its checkpoint after a crash appends none of them twice."""

    @property
    def finished_waves(self) -> bool:
        """Whether every wave passed."""
        return all(w.status == "passed" for w in self.waves)

    def next_wave(self) -> int | None:
        """The wave the executor may deploy next, if any."""
        if self.abort.tripped or self.paused or self.current >= len(self.waves):
            return None
        return self.current

    @property
    def rolling_back(self) -> bool:
        """Whether the run is past going forward: its abort criteria or a gate tripped."""
        return self.abort.tripped


def hold_for(ctx: Context, plan_id: str, *, forward: bool) -> Hold | None:
    """What holds a run of ``plan_id`` now: the kill switch (whatever the run does), else
    the change freeze (only a forward rollout); None when nothing does."""
    stop, freeze = ctx.store.stops.holding(plan_id)  # one read, before every batch
    if stop is not None:
        return Hold(kind="kill_switch", reason=stop)
    if forward:
        if freeze is not None:
            frozen: str | None = freeze.describe()
        else:  # only a freeze this command forces (FIELDGATE_FREEZE=1) is left to ask about
            frozen = ctx.freeze_in_force() if ctx.freeze else None
        if frozen is not None:
            return Hold(kind="freeze", reason=frozen)
    return None


@dataclass
class ToolContext:
    """What a tool call works with."""

    ctx: Context
    plan: RolloutPlan
    plan_hash: str
    manifest: ModuleManifest
    rollback_manifest: ModuleManifest | None
    sites: dict[str, Site]
    thread_id: str
    execution: Execution
    rollback_plan: bool = False
    """Whether the rollout policy judged the plan a rollback (it runs under a freeze)."""
    _command_index: dict[str, tuple[int, str]] = field(default_factory=dict)
    _indexed_all: bool = False
    _waves_of: dict[str, int] | None = None
    _settled: dict[int, set[str]] = field(default_factory=dict)
    _touched: set[str] | None = None
    _unrecorded: list[DeviceReport] = field(default_factory=list)
    """Reports taken in (sorted into their waves) but not yet written: see :func:`ingest`."""
    _recorded_at: float = field(default_factory=time.monotonic)

    @property
    def plan_id(self) -> str:
        """The plan the call works on."""
        return self.plan.plan_id

    @property
    def forward(self) -> bool:
        """Whether the run moves devices forward (a change freeze holds it): neither a
        rollback plan nor a run that is rolling back."""
        return not self.rollback_plan and not self.execution.rolling_back

    def hold(self) -> Hold | None:
        """What holds this run now (see :func:`hold_for`)."""
        return hold_for(self.ctx, self.plan_id, forward=self.forward)

    def audit(
        self,
        kind: EventKind,
        actor_kind: ActorKind,
        actor: str,
        payload: dict[str, Any],
        *,
        tx: Session | None = None,
    ) -> None:
        """Append one event of this run, stamped with the wall clock (the simulated run's
        virtual time in the payload, see :meth:`Context.with_virtual_at`), in ``tx`` if given.

        The event is keyed by how many the run appended before it: a worker that dies
        after the write but before the step's checkpoint replays the step from the
        checkpoint, and the replayed event lands on the same key and is dropped.
        """
        flush(self)  # the reports taken in before this event are written before it
        ex = self.execution
        key = f"run:{self.thread_id}:{ex.audited}:{kind}"
        ex.audited += 1
        event = NewEvent(
            kind=kind,
            actor_kind=actor_kind,
            actor=actor,
            payload=self.ctx.with_virtual_at(payload),
            plan_id=self.plan_id,
            thread_id=self.thread_id,
            at=self.ctx.people_now(),
            once=key,
        )
        self.ctx.store.audit.append_many([event], tx=tx)

    def command_origin(
        self, command_id: str, device_id: str | None = None
    ) -> tuple[int, str] | None:
        """(wave, device) of an install or rollback command of this plan.

        Given the device the command is said to be for (a report names it), two hashes
        tell; without it, the first call indexes every command the plan may send.
        """
        found = self._command_index.get(command_id)
        if found is not None or self._indexed_all:
            return found
        if device_id is not None:
            wave = self._device_waves().get(device_id)
            if wave is None:
                return None
            for action in (Action.install, Action.rollback):
                if command_id_for(self.plan_id, wave, device_id, action) == command_id:
                    found = self._command_index[command_id] = (wave, device_id)
                    return found
            return None
        for run in self.execution.waves:
            for device in run.devices:
                for action in (Action.install, Action.rollback):
                    cid = command_id_for(self.plan_id, run.index, device, action)
                    self._command_index[cid] = (run.index, device)
        self._indexed_all = True
        return self._command_index.get(command_id)

    def _device_waves(self) -> dict[str, int]:
        if self._waves_of is None:
            self._waves_of = {d: w.index for w in self.execution.waves for d in w.devices}
        return self._waves_of

    def settled(self, wave: int) -> set[str]:
        """The devices of ``wave`` in its applied or failed list, as a set (kept in step
        with the lists by :func:`_record`): membership is O(1), however large the wave."""
        found = self._settled.get(wave)
        if found is None:
            run = self.execution.waves[wave]
            found = self._settled[wave] = set(run.applied) | set(run.failed)
        return found

    def touch(self, device_ids: Sequence[str]) -> None:
        """Add devices to :attr:`Execution.touched` (in order, each once) in O(1) each."""
        ex = self.execution
        if self._touched is None:
            self._touched = set(ex.touched)
        for device_id in device_ids:
            if device_id not in self._touched:
                self._touched.add(device_id)
                ex.touched.append(device_id)


def make_commands(
    tc: ToolContext, waves: Sequence[int], device_ids: Sequence[str], action: Action
) -> list[DeviceCommand]:
    """Signed commands of this plan, one per device (``waves[i]`` is the wave of
    ``device_ids[i]``), all issued now; the windows of each site are read once."""
    now = tc.ctx.now()
    if action is Action.rollback:
        assert tc.rollback_manifest is not None
        version, digest = tc.rollback_manifest.version, tc.rollback_manifest.artifact.digest
    else:
        version, digest = tc.manifest.version, tc.manifest.artifact.digest
    default_deadline = now + tc.ctx.settings.wave_deadline * 12
    by_site: dict[str, list[StartWindow] | None] = {}
    commands = []
    for wave, device_id in zip(waves, device_ids, strict=True):
        windows = None
        if action is Action.install:
            site = tc.execution.device_sites.get(device_id, "")
            if site not in by_site:
                by_site[site] = command_windows(tc, device_id, now)
            windows = by_site[site]
        unsigned = DeviceCommand(
            command_id=command_id_for(tc.plan_id, wave, device_id, action),
            plan_id=tc.plan_id,
            plan_hash=tc.plan_hash,
            wave=wave,
            device_id=device_id,
            action=action,
            module=tc.manifest.name,
            version=version,
            digest=digest,
            issued_at=now,
            deadline=windows[-1].closes if windows else default_deadline,
            windows=windows,
        )
        signature = tc.ctx.control_key.sign(unsigned.signing_payload())
        commands.append(unsigned.model_copy(update={"signature": signature}))
    return commands


def command_windows(tc: ToolContext, device_id: str, now: datetime) -> list[StartWindow] | None:
    """The windows an install may start in: the site's next ones when the plan waits for them.

    A plan scheduled ``now`` (or a site without windows) gives None: the device starts the
    command whenever it gets it before the deadline. Rollbacks carry no window: they undo.
    """
    if tc.plan.schedule.mode is not ScheduleMode.maintenance:
        return None
    site = tc.sites.get(tc.execution.device_sites.get(device_id, ""))
    if site is None or not site.maintenance:
        return None
    spans = site.upcoming_windows(now, max(1, tc.ctx.settings.command_windows))
    return [StartWindow(opens=opens, closes=closes) for opens, closes in spans]


INGEST_BATCH = 2_000
"""Most device reports a running wave keeps unwritten before it writes them in one go."""
INGEST_EVERY_S = 1.0
"""Longest (wall clock) a running wave keeps device reports unwritten."""


def ingest(tc: ToolContext, reports: Sequence[DeviceReport], *, later: bool = False) -> None:
    """Record device reports: audit events, installed versions in the fleet store.

    With ``later`` the reports are written together with the ones before them once
    :data:`INGEST_BATCH` are waiting or :data:`INGEST_EVERY_S` passed, so a large wave
    writes a few large transactions instead of one per batch of devices; any other
    call, an audit event of the run (:meth:`ToolContext.audit`) and every way out of a
    wave write what waits first. A worker that dies before the write loses only what
    the devices' side still holds: the replayed step is sent the same command ids and
    takes their reports in again (audited once by their keys).
    """
    # Only this plan's: over MQTT a gateway hands back every report it took in, also those
    # of runs other workers execute (they audit them under their own plan).
    tc._unrecorded.extend(
        r for r in reports if tc.command_origin(r.command_id, r.device_id) is not None
    )
    if later and (
        len(tc._unrecorded) < INGEST_BATCH and time.monotonic() - tc._recorded_at < INGEST_EVERY_S
    ):
        return
    flush(tc)


def flush(tc: ToolContext) -> None:
    """Write every report :func:`ingest` keeps: one transaction, one fleet-revision bump."""
    reports, tc._unrecorded = tc._unrecorded, []
    tc._recorded_at = time.monotonic()
    if not reports:
        return
    store = tc.ctx.store
    module = tc.manifest.name
    records_installed = tc.ctx.transport.records_installed
    events = []
    installed: list[tuple[str, str, str | None]] = []
    for report in reports:
        events.append(
            NewEvent(
                kind=EventKind.device_report,
                actor_kind=ActorKind.device,
                actor=report.device_id,
                payload=tc.ctx.with_virtual_at(
                    {
                        "command_id": report.command_id,
                        "status": report.status.value,
                        "installed": {module: report.installed.get(module)},
                        "health_ok": report.health.ok,
                        "reason": report.reason,
                        "hlc": report.hlc.model_dump(),
                    }
                ),
                plan_id=tc.plan_id,
                thread_id=tc.thread_id,
                at=tc.ctx.people_now(),
                # A report read again (re-sent after a crash, or stored and handed back)
                # is audited once.
                once=f"report:{report.command_id}",
            )
        )
        if report.status is ReportStatus.applied and not records_installed:
            installed.append((report.device_id, module, report.installed.get(module)))
    # The whole batch in one transaction (one fleet-revision bump): its installed versions
    # and its audit events land together or not at all.
    # A failed write drops them here as a crash would: the step fails, and its replay
    # takes them in again from the devices' side.
    with store.writing(f"recording {len(reports)} device reports") as tx:
        store.fleet.set_installed_many(installed, tx=tx)
        store.audit.append_many(events, tx=tx)


def _record(tc: ToolContext, run: WaveRun, reports: Sequence[DeviceReport]) -> None:
    """Sort install reports of this plan into their waves' applied and failed lists."""
    answered: dict[int, set[str]] = {}
    for report in reports:
        origin = tc.command_origin(report.command_id, report.device_id)
        if origin is None:
            continue
        wave_index, device_id = origin
        if report.command_id != command_id_for(tc.plan_id, wave_index, device_id, Action.install):
            continue
        target = tc.execution.waves[wave_index]
        settled = tc.settled(wave_index)
        if device_id in settled:
            continue
        settled.add(device_id)
        if target.unreachable:
            answered.setdefault(wave_index, set()).add(device_id)
        tc.execution.executed += 1
        if report.status is ReportStatus.applied and report.health.ok:
            target.applied.append(device_id)
        else:
            target.failed.append(device_id)
            tc.execution.failures += 1
    for wave_index, late in answered.items():
        target = tc.execution.waves[wave_index]
        target.unreachable = [d for d in target.unreachable if d not in late]


def _check_abort(tc: ToolContext) -> None:
    ex = tc.execution
    abort = tc.plan.abort
    if abort is None or ex.abort.tripped or ex.executed < abort.min_executed:
        return
    rate = ex.failures / ex.executed
    if rate > abort.failure_threshold:
        ex.abort = AbortState(
            tripped=True,
            reason=(
                f"abort criteria tripped: {ex.failures} of {ex.executed} executed devices failed "
                f"({rate:.0%} > {abort.failure_threshold:.0%})"
            ),
        )


def _wait_for_window(tc: ToolContext, site: Site) -> None:
    if tc.plan.schedule.mode is not ScheduleMode.maintenance:
        return
    now = tc.ctx.now()
    if site.in_maintenance(now):
        return
    opens = site.next_maintenance(now)
    if opens is None:
        return
    window = {"kind": "maintenance_window", "until": opens.isoformat(), "site": site.id}
    flush(tc)  # what came in is on record before the wait (status reads it meanwhile)
    _waiting(tc, {**window, "wave": tc.execution.current})
    reports = tc.ctx.transport.sleep_until(opens)
    _waiting(tc, None)
    ingest(tc, reports)
    _record(tc, tc.execution.waves[tc.execution.current], reports)


def _waiting(tc: ToolContext, waiting: dict[str, Any] | None) -> None:
    """Say in the run's row what the executor sleeps for, and until when: the checkpoint
    only moves after the tool call, and ``fieldgate status`` in another terminal must show
    a soak or a closed window while it lasts."""
    tc.ctx.store.runs.update(tc.thread_id, "executing", detail={"waiting": waiting})


def deploy_wave(tc: ToolContext, wave: int) -> dict[str, Any]:
    """Dispatch one wave, wait, soak, judge its gate; return a summary for the model.

    The reports of its batches are written in a few large transactions (see
    :func:`ingest`), all of them before it returns, whichever way it does.
    """
    try:
        return _deploy_wave(tc, wave)
    finally:
        flush(tc)


def _deploy_wave(tc: ToolContext, wave: int) -> dict[str, Any]:
    ex = tc.execution
    run = ex.waves[wave]
    spec = tc.plan.waves[wave]
    ctx = tc.ctx
    transport = ctx.transport
    run.status = "dispatching"
    wave_deadline = ctx.now() + ctx.settings.wave_deadline
    done = tc.settled(wave)
    by_site: dict[str, list[str]] = {}
    for device_id in run.devices:
        if device_id not in done:
            by_site.setdefault(ex.device_sites[device_id], []).append(device_id)

    def opening(site_id: str) -> datetime:
        site = tc.sites[site_id]
        if tc.plan.schedule.mode is not ScheduleMode.maintenance:
            return ctx.now()
        return site.next_maintenance(ctx.now()) or ctx.now()

    queued: dict[str, str] = {}
    """Command ids sent but not answered (device offline, or sent before a crash): device."""
    for site_id in sorted(by_site, key=lambda s: (opening(s), s)):
        site = tc.sites[site_id]
        for chunk in chunks(by_site[site_id], spec.max_parallel):
            held = tc.hold()
            if held is not None:
                # Held between two batches: what went out is settled, the rest waits.
                ex.held = held
                run.status = "halted"
                return {"wave": wave, "halted": held.describe(), "held": held.kind}
            _wait_for_window(tc, site)
            commands = make_commands(tc, [wave] * len(chunk), chunk, Action.install)
            tc.touch(chunk)
            dispatched = transport.dispatch(commands, wave)
            stored = [r for r in dispatched.duplicates.values() if r is not None]
            device_of = {c.command_id: c.device_id for c in commands}
            queued.update((cid, device_of[cid]) for cid in dispatched.queued)
            # Sent before a crash and not reported yet: wait for them like queued ones, or the
            # gate would judge the wave without them.
            queued.update(
                (cid, device_of[cid])
                for cid, report in dispatched.duplicates.items()
                if report is None
            )
            reports = stored + transport.wait(
                set(dispatched.accepted), until=ctx.now() + ctx.settings.wave_deadline
            )
            ingest(tc, reports, later=True)
            _record(tc, run, reports)
            _check_abort(tc)
            if ex.abort.tripped:
                run.status = "failed"
                return {"wave": wave, "abort": ex.abort.reason, **_counts(run)}
    waiting = {cid for cid, device_id in queued.items() if device_id not in done}
    if waiting:
        reports = transport.wait(waiting, until=max(wave_deadline, ctx.now()))
        ingest(tc, reports)
        _record(tc, run, reports)
    run.unreachable = [d for d in run.devices if d not in done]
    gate = spec.health_gate
    if gate is not None and gate.soak_minutes:
        soak = timedelta(minutes=gate.soak_minutes)
        if ctx.settings.max_soak is not None:
            soak = min(soak, ctx.settings.max_soak)
        run.soak_until = ctx.now() + soak
        flush(tc)  # what came in is on record before the soak (status reads it meanwhile)
        _waiting(tc, {"kind": "soak", "until": run.soak_until.isoformat(), "wave": wave})
        held = _soak(tc, run, run.soak_until)
        _waiting(tc, None)
        if held is not None:
            # Held mid-soak: the wave is judged after a full soak once the run resumes.
            ex.held = held
            run.status = "halted"
            return {"wave": wave, "halted": held.describe(), "held": held.kind}
    # Health after the soak: a device that degraded since its install fails the gate.
    degraded = [
        d for d in run.applied if not transport.telemetry(d).get("health", {}).get("ok", False)
    ]
    if degraded:
        moved = set(degraded)
        run.applied = [d for d in run.applied if d not in moved]
        run.failed.extend(degraded)
        ex.failures += len(degraded)
    run.gate = judge_gate(tc.plan, wave, run)
    _check_abort(tc)
    if run.gate.passed and not ex.abort.tripped:
        run.status = "passed"
        ex.current = wave + 1
    else:
        run.status = "failed"
        if not ex.abort.tripped:
            ex.abort = AbortState(tripped=True, reason=run.gate.reason)
    return {"wave": wave, **_counts(run), "gate": run.gate.model_dump()}


def _soak(tc: ToolContext, run: WaveRun, until: datetime) -> Hold | None:
    """Let the wave soak until ``until``, taking reports in; on a wall-clock transport look
    at the kill switch and the freeze every ``hold_check`` and stop soaking when either
    holds the run (returned)."""
    ctx = tc.ctx
    transport = ctx.transport
    step = until - ctx.now() if transport.name == "twin" else ctx.settings.hold_check
    while True:
        reports = transport.sleep_until(min(until, ctx.now() + step))
        ingest(tc, reports)
        _record(tc, run, reports)
        if ctx.now() >= until:
            return None
        held = tc.hold()
        if held is not None:
            return held


def settle(tc: ToolContext) -> list[str]:
    """Take in every report of this run's commands that no step took in yet (those that came
    while the run was held or no worker listened, or before a crash), and count every device
    the devices' side says was sent a command as touched, so a rollback includes it.

    Returns:
        Touched devices whose install has no report yet: their state is not known.
    """
    ex = tc.execution
    transport = tc.ctx.transport
    reports = transport.wait(set(), tc.ctx.now())
    seen = {r.command_id for r in reports}
    wave_of = {d: w.index for w in ex.waves for d in w.devices}
    ids = {
        command_id_for(tc.plan_id, wave, device_id, Action.install): device_id
        for device_id, wave in wave_of.items()
    }
    touched = set(ex.touched)
    for command_id, report in transport.sent(set(ids)).items():
        if ids[command_id] not in touched:
            ex.touched.append(ids[command_id])
            touched.add(ids[command_id])
        if report is not None and command_id not in seen:
            reports.append(report)
    ingest(tc, reports)
    for wave in ex.waves:
        _record(tc, wave, reports)
        settled = set(wave.applied) | set(wave.failed)
        wave.unreachable = [d for d in wave.unreachable if d not in settled]
    return unknown_devices(ex)


def unknown_devices(ex: Execution) -> list[str]:
    """Touched devices with no report of their install: nobody knows what they run."""
    settled = {d for w in ex.waves for d in (*w.applied, *w.failed)}
    return [d for d in ex.touched if d not in settled]


def judge_gate(plan: RolloutPlan, wave: int, run: WaveRun) -> GateResult:
    """Judge a wave against its health gate: unreachable devices count apart from failed ones."""
    gate = plan.waves[wave].health_gate
    healthy, failed, unreachable = len(run.applied), len(run.failed), len(run.unreachable)
    reported = healthy + failed
    rate = healthy / reported if reported else 0.0
    if gate is None:
        return GateResult(
            passed=False,
            healthy=healthy,
            failed=failed,
            unreachable=unreachable,
            success_rate=rate,
            reason=f"wave {wave + 1} has no health gate",
        )
    problems = []
    if reported == 0:
        problems.append("no device of the wave reported")
    if rate < gate.min_success_rate:
        problems.append(f"success rate {rate:.0%} below {gate.min_success_rate:.0%}")
    if failed > gate.max_failures:
        problems.append(f"{failed} failures, more than {gate.max_failures}")
    passed = not problems
    reason = (
        f"wave {wave + 1} ({run.name}) passed its gate: {healthy} healthy"
        if passed
        else f"wave {wave + 1} ({run.name}) failed its health gate: " + "; ".join(problems)
    )
    return GateResult(
        passed=passed,
        healthy=healthy,
        failed=failed,
        unreachable=unreachable,
        success_rate=round(rate, 4),
        reason=reason,
    )


def _counts(run: WaveRun) -> dict[str, int]:
    return {
        "devices": len(run.devices),
        "applied": len(run.applied),
        "failed": len(run.failed),
        "unreachable": len(run.unreachable),
    }


def rollback(tc: ToolContext, reason: str) -> dict[str, Any]:
    """Send every touched device back to the plan's rollback version and wait for them."""
    ex = tc.execution
    ctx = tc.ctx
    if tc.rollback_manifest is None:
        ex.paused = True
        return {"rolled_back": 0, "error": "the plan has no rollback version in the catalog"}
    wave_of = {d: w.index for w in ex.waves for d in w.devices}
    commands = make_commands(tc, [wave_of[d] for d in ex.touched], ex.touched, Action.rollback)
    ids = {c.command_id for c in commands}
    pending: set[str] = set()
    stored: list[DeviceReport] = []
    for wave in sorted({c.wave for c in commands}):
        dispatched = ctx.transport.dispatch([c for c in commands if c.wave == wave], wave)
        pending.update(dispatched.accepted, dispatched.queued)
        pending.update(cid for cid, report in dispatched.duplicates.items() if report is None)
        stored.extend(r for r in dispatched.duplicates.values() if r is not None)
    reports = stored + ctx.transport.wait(pending, until=ctx.now() + ctx.settings.wave_deadline)
    ingest(tc, reports)
    answered = {r.command_id for r in reports if r.command_id in ids}
    back = [
        r.device_id for r in reports if r.command_id in ids and r.status is ReportStatus.applied
    ]
    ex.rollback_failed = sorted(
        c.device_id for c in commands if c.command_id not in answered or c.device_id not in back
    )
    ex.rolled_back = True
    return {
        "reason": reason,
        "rolled_back": len(back),
        "not_confirmed": len(ex.rollback_failed),
        "to_version": tc.rollback_manifest.version,
    }


def fleet_status(tc: ToolContext, wave: int | None) -> dict[str, Any]:
    """Progress per wave."""
    waves = tc.execution.waves if wave is None else [tc.execution.waves[wave]]
    return {
        "waves": [
            {
                "wave": w.index,
                "name": w.name,
                "status": w.status,
                **_counts(w),
                "gate": w.gate.reason if w.gate else None,
            }
            for w in waves
        ],
        "abort": tc.execution.abort.model_dump(),
    }


def device_telemetry(tc: ToolContext, device_id: str) -> dict[str, Any]:
    """One device's status; its note is passed on as untrusted data."""
    data = tc.ctx.transport.telemetry(device_id)
    return json.loads(json.dumps(data, default=str))
