"""``fieldgate status [PLAN] [--watch] [--json]``: where runs stand, from any terminal.

Everything comes from the shared store: the run's row (``store.runs``: its status, and
what the executor sleeps for right now), its checkpoint (``values["execution"]``: the
waves, their devices and gates), the audit log (device reports that arrived since the
last checkpoint, and the last events) and the kill switch and the freeze. So a second
terminal follows a run a worker executes elsewhere, on the twin or over MQTT.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, get_args
from zoneinfo import ZoneInfo

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fieldgate.audit import AuditEvent, EventKind
from fieldgate.cli._output import console, handles_errors, json_option, print_view
from fieldgate.cli._rollout import (
    DbOption,
    ago,
    find_run,
    hold_hint,
    pending_hold,
    percent,
    when,
)
from fieldgate.commands import Action, WindowState, command_id_for, next_opening, window_state
from fieldgate.edge._tables import unanswered_commands
from fieldgate.store import Run
from fieldgate.terminal import shown
from fieldgate.tools import HOLD_LABELS
from fieldgate.transport import TwinTransport
from fieldgate.twin import EffectPhase
from fieldgate.views import (
    DeviceState,
    RunStatus,
    StatusEvent,
    StatusReport,
    Waiting,
    WaveProgress,
    WindowWait,
)

if TYPE_CHECKING:
    from fieldgate.graphs.runner import Orchestrator, RunView

STATES: tuple[DeviceState, ...] = get_args(DeviceState)
"""Device states in the order they are shown."""
LAST_EVENTS = 6
"""How many of a run's last audit events status shows."""
_STATE_COLOURS = {
    "pending": "dim",
    "waiting_window": "cyan",
    "applied": "green",
    "failed": "red",
    "unreachable": "yellow",
    "rolled_back": "magenta",
}


# --------------------------------------------------------------------------- the view


def _reported(plan_id: str, waves: int, reports: list[AuditEvent]) -> list[dict[str, bool]]:
    """Per wave, the devices that reported on their install: whether it applied healthy."""
    found: list[dict[str, bool]] = [{} for _ in range(waves)]
    for event in reports:
        device, command_id = event.actor, event.payload.get("command_id")
        for index in range(waves):
            if command_id == command_id_for(plan_id, index, device, Action.install):
                ok = event.payload.get("status") == "applied" and bool(
                    event.payload.get("health_ok")
                )
                found[index].setdefault(device, ok)
                break
    return found


def _device_states(
    execution: dict[str, Any],
    reported: list[dict[str, bool]],
    windows: dict[str, datetime] | None = None,
) -> list[dict[str, DeviceState] | None]:
    """Each wave's devices by state: the checkpoint's, then reports that came in since,
    then the installs that wait for a later window (``windows``, see :func:`window_waits`);
    None for a wave whose devices the checkpoint does not list yet."""
    windows = windows or {}
    rolled_back = set()
    if execution.get("rolled_back"):
        rolled_back = set(execution.get("touched") or []) - set(
            execution.get("rollback_failed") or []
        )
    ran = execution.get("waves") or []
    waves: list[dict[str, DeviceState] | None] = []
    for index, since in enumerate(reported):
        if index >= len(ran):
            waves.append(None)
            continue
        wave = ran[index]
        states: dict[str, DeviceState] = {}
        applied, failed = set(wave.get("applied") or []), set(wave.get("failed") or [])
        unreachable = set(wave.get("unreachable") or [])
        for device in wave.get("devices") or []:
            if device in rolled_back:
                states[device] = "rolled_back"
            elif device in applied:
                states[device] = "applied"
            elif device in failed:
                states[device] = "failed"
            elif device in since:  # reported since the last checkpoint
                states[device] = "applied" if since[device] else "failed"
            elif device in windows:
                states[device] = "waiting_window"
            elif device in unreachable:
                states[device] = "unreachable"
            else:
                states[device] = "pending"
        waves.append(states)
    return waves


def _counts(
    states: dict[str, DeviceState] | None, total: int, since: dict[str, bool]
) -> dict[DeviceState, int]:
    if states is None:  # not started in the checkpoint: count what reported meanwhile
        counted = Counter("applied" if ok else "failed" for ok in since.values())
    else:
        counted = Counter(states.values())
    counts: dict[DeviceState, int] = {state: counted.get(state, 0) for state in STATES}
    counts["pending"] += max(0, total - sum(counts.values()))
    return counts


def window_waits(
    orchestrator: Orchestrator, plan_id: str, devices: dict[str, int], now: datetime
) -> dict[str, datetime]:
    """Which of ``devices`` (device → wave) hold an install that may not start before a
    later maintenance window, and when that window opens.

    The commands themselves say it: each install carries the windows it may start in, and
    one outside all of them waits for the next (a field agent keeps it in its own store
    and reports nothing yet). They are read where they were sent: the MQTT gateway's ledger,
    judged at ``now`` (the wall clock), and the fleet twin's effect ledger, judged on the
    twin's clock, which its simulated devices live on.
    """
    if not devices:
        return {}
    ids = {command_id_for(plan_id, w, d, Action.install): d for d, w in devices.items()}
    found: dict[str, datetime] = {}
    for command in unanswered_commands(orchestrator.ctx.store.engine, ids):
        if command.window_state(now) is WindowState.waiting:
            opens = command.next_opening(now)
            if opens is not None:
                found[command.device_id] = opens
    transport = orchestrator.ctx.transport
    if isinstance(transport, TwinTransport):
        twin_now = transport.now()
        for effect in transport.twin.effects():
            if effect.command_id not in ids or effect.phase is EffectPhase.done:
                continue
            if window_state(effect.windows, twin_now) is WindowState.waiting:
                opens = next_opening(effect.windows, twin_now)
                if opens is not None:
                    found[effect.device_id] = opens
    return found


def _window_groups(
    orchestrator: Orchestrator, waits: dict[str, datetime], sites: dict[str, str]
) -> list[WindowWait]:
    """The waiting devices by site and window opening, read in the site's time zone."""
    zones = {s.id: s.timezone for s in orchestrator.ctx.store.fleet.sites()}
    groups: dict[tuple[str, datetime], list[str]] = {}
    for device, opens in waits.items():
        groups.setdefault((sites.get(device, "?"), opens), []).append(device)
    found = []
    for (site, opens), members in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0])):
        zone = zones.get(site, "UTC")
        local = opens.astimezone(ZoneInfo(zone))
        found.append(
            WindowWait(
                site=site,
                timezone=zone,
                opens=opens.astimezone(UTC),
                opens_local=f"{local:%a %Y-%m-%d %H:%M} {local.tzname()}",
                devices=sorted(members),
            )
        )
    return found


def _event_summary(event: AuditEvent) -> str:
    payload = event.payload
    kind = event.kind
    if kind is EventKind.device_report:
        return f"{payload.get('status')}" + ("" if payload.get("health_ok") else ", unhealthy")
    if kind is EventKind.tool_call:
        verdict = "allowed" if payload.get("allow") else "refused"
        return f"{payload.get('tool')}: {verdict}"
    if kind is EventKind.approval:
        return str(payload.get("decision") or ("expired" if payload.get("expired") else ""))
    if kind is EventKind.request:
        return str(payload.get("text", ""))
    if kind is EventKind.done:
        return f"outcome {payload.get('outcome')}"
    for key in ("reason", "summary", "verdict", "to_version", "path"):
        if payload.get(key):
            return str(payload[key])
    return ""


def _held(held: dict[str, Any]) -> list[Waiting]:
    kind = str(held["kind"])
    retry_at = held.get("retry_at")
    return [
        Waiting(
            kind=kind,
            detail=f"held by {HOLD_LABELS.get(kind, kind)}: {held.get('reason', '')}",
            until=datetime.fromisoformat(retry_at) if retry_at else None,
            people=kind != "policy_engine" or not retry_at,
        )
    ]


def _waiting(
    view: RunView,
    run: Run,
    pending: dict[str, Any] | None,
    now: datetime,
) -> list[Waiting]:
    values = view.values
    if view.outcome:
        return []
    held = view.held or run.detail.get("held")
    if isinstance(held, dict) and held.get("kind"):
        return _held(held)
    if view.awaiting_confirmation:
        requester = str(values.get("actor", "the requester"))
        return [Waiting(kind="confirmation", detail=f"{requester}'s yes", people=True)]
    if view.status == "awaiting_approval":
        missing = (values.get("approvals") or {}).get("missing") or []
        if not missing:
            missing = (values.get("decision") or {}).get("approvals") or []
        deadline = None
        if view.interrupts and isinstance(view.interrupts[0].value, dict):
            deadline = view.interrupts[0].value.get("deadline")
        waits = [
            Waiting(
                kind="approvals",
                detail="approvals from "
                + (", ".join(f"{n.get('count', 1)}× {n.get('role')}" for n in missing) or "none"),
                until=datetime.fromisoformat(deadline) if deadline else None,
                people=True,
            )
        ]
        if pending:  # once approved, the run is held at its first executor step
            waits += _held(pending)
        return waits
    if pending:
        return _held(pending)
    sleeping = run.detail.get("waiting")
    until = datetime.fromisoformat(sleeping["until"]) if isinstance(sleeping, dict) else None
    # A wait whose end passed is stale (a worker that died in it); the run moves on anyway.
    if run.status == "executing" and isinstance(sleeping, dict) and until and until > now:
        if sleeping.get("kind") == "soak":
            detail = f"wave {int(sleeping.get('wave', 0)) + 1} soaks"
        else:
            detail = f"the maintenance window of site {sleeping.get('site')} opens"
        return [Waiting(kind=sleeping["kind"], detail=detail, until=until, people=False)]
    if view.status == "queued" and run.status != "executing":
        return [Waiting(kind="worker", detail="approved, queued for a worker", people=False)]
    if run.status == "accepted":
        return [Waiting(kind="planning", detail="being planned", people=False)]
    return []


def run_status(orchestrator: Orchestrator, run: Run, now: datetime | None = None) -> RunStatus:
    """Where ``run`` stands now, from its row, checkpoint and audit events."""
    store = orchestrator.ctx.store
    now = now or datetime.now(UTC)
    view = orchestrator.view(run.thread_id)
    values = view.values
    plan = values.get("plan") or {}
    execution = values.get("execution") or {}
    events = store.audit.events(plan_id=run.plan_id)
    reports = [e for e in events if e.kind is EventKind.device_report]
    reported = _reported(run.plan_id, len(plan.get("waves") or []), reports)
    states = _device_states(execution, reported)
    # Devices sent an install that has not answered: some may hold it for a later window.
    touched = set(execution.get("touched") or [])
    unanswered = {
        device: index
        for index, wave in enumerate(states)
        for device, state in (wave or {}).items()
        if state in ("pending", "unreachable") and device in touched
    }
    waits = window_waits(orchestrator, run.plan_id, unanswered, now)
    if waits:
        states = _device_states(execution, reported, waits)
    sizes = (values.get("findings") or {}).get("wave_sizes") or []
    ran = execution.get("waves") or []
    sleeping = run.detail.get("waiting") if run.status == "executing" else None
    if isinstance(sleeping, dict) and datetime.fromisoformat(sleeping["until"]) <= now:
        sleeping = None  # stale: see _waiting
    waves = []
    for index, spec in enumerate(plan.get("waves") or []):
        gate = spec.get("health_gate") or {}
        progress = ran[index] if index < len(ran) else {}
        total = len(progress.get("devices") or []) if progress else 0
        if not progress and index < len(sizes):
            total = int(sizes[index])
        soak_until = progress.get("soak_until")
        if (
            isinstance(sleeping, dict)
            and sleeping.get("kind") == "soak"
            and sleeping.get("wave") == index
        ):
            soak_until = sleeping["until"]
        soak_end = datetime.fromisoformat(soak_until) if soak_until else None
        counts = _counts(states[index], total, reported[index])
        # The checkpoint moves after a whole wave; the row and the reports say what it does now.
        shown_status = str(progress.get("status", "pending"))
        here = isinstance(sleeping, dict) and sleeping.get("wave") == index
        if here and sleeping and sleeping.get("kind") == "soak":
            shown_status = "soaking"
        elif here:
            shown_status = "waiting_window"
        elif shown_status == "pending" and counts["pending"] < total:
            shown_status = "dispatching"
        soaking = shown_status == "soaking" and soak_end is not None and soak_end > now
        waves.append(
            WaveProgress(
                number=index + 1,
                name=str(spec.get("name", "")),
                status=shown_status,
                devices=total,
                states=counts,
                max_parallel=spec.get("max_parallel"),
                min_success_rate=gate.get("min_success_rate") if gate else None,
                max_failures=gate.get("max_failures") if gate else None,
                soak_minutes=int(gate.get("soak_minutes", 0) or 0) if gate else 0,
                soak_until=soak_end,
                soak_remaining_seconds=(soak_end - now).total_seconds()
                if soaking and soak_end
                else None,
                gate_result=(progress.get("gate") or {}).get("reason"),
            )
        )
    overall: dict[DeviceState, int] = {state: 0 for state in STATES}
    for wave in waves:
        for state, count in wave.states.items():
            overall[state] += count
    pending = pending_hold(orchestrator, view)
    waiting = _waiting(view, run, pending, now)
    return RunStatus(
        plan_id=run.plan_id,
        request=run.request,
        requester=run.actor,
        status=run.status,
        outcome=view.outcome or run.outcome,
        module=plan.get("module"),
        version=plan.get("version"),
        intent=plan.get("intent"),
        waves=waves,
        states=overall,
        waiting=waiting,
        window_waits=_window_groups(orchestrator, waits, execution.get("device_sites") or {}),
        settled=bool(view.outcome or run.outcome) or any(w.people for w in waiting),
        events=[
            StatusEvent(
                seq=e.seq, at=e.at, kind=e.kind.value, actor=e.actor, summary=_event_summary(e)
            )
            for e in events[-LAST_EVENTS:]
        ],
        updated_at=run.updated_at,
    )


def status_report(
    orchestrator: Orchestrator, plan_id: str | None = None, now: datetime | None = None
) -> StatusReport:
    """One run's status (the newest of ``plan_id``), or every run that has not ended."""
    store = orchestrator.ctx.store
    now = now or datetime.now(UTC)
    if plan_id is not None:
        runs = [find_run(store, plan_id)]
    else:
        runs = [r for r in store.runs.list() if r.status != "done"]
    freeze = store.freeze.current()
    return StatusReport(
        at=now,
        freeze=freeze.describe() if freeze else None,
        runs=[run_status(orchestrator, run, now) for run in runs],
    )


# --------------------------------------------------------------------------- the renderer


def _remaining(seconds: float) -> str:
    return (
        ago(seconds)
        if seconds < 3600
        else f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    )


_STATE_NAMES = {"waiting_window": "waiting for a window", "rolled_back": "rolled back"}


def states_text(states: dict[DeviceState, int]) -> str:
    """``2 applied, 1 pending``: the states that have devices, in order."""
    parts = [
        f"[{_STATE_COLOURS[state]}]{count} {_STATE_NAMES.get(state, state)}[/]"
        for state, count in states.items()
        if count
    ]
    return ", ".join(parts) or "-"


WINDOW_NAMES_SHOWN = 5
"""Devices named in a line of those waiting for a window; the rest are counted."""


def window_line(wait: WindowWait) -> str:
    """``osl-01-env-07: waiting for its window (opens Sat 2026-12-12 01:00 CET, Europe/Oslo)``."""
    opens = f"(opens {wait.opens_local}, {shown(wait.timezone)})"
    if len(wait.devices) == 1:
        return f"  [cyan]{shown(wait.devices[0])}[/]: waiting for its window {opens}"
    names = ", ".join(wait.devices[:WINDOW_NAMES_SHOWN])
    more = len(wait.devices) - WINDOW_NAMES_SHOWN
    names += f" and {more} more" if more > 0 else ""
    return (
        f"  [cyan]{len(wait.devices)} devices at {shown(wait.site)}[/] ({shown(names)}): "
        f"each waiting for its window {opens}"
    )


def waves_table(status: RunStatus) -> Table:
    """The run's waves: status, devices per state, gate, soak and what the gate found."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("wave", "status", "devices", "gate", "soak"):
        table.add_column(column, no_wrap=column in ("wave", "status"))
    for wave in status.waves:
        colour = {
            "passed": "green",
            "failed": "red",
            "halted": "yellow",
            "soaking": "cyan",
            "waiting_window": "cyan",
        }.get(wave.status, "")
        gate = (
            f"≥{percent(wave.min_success_rate)}, ≤{wave.max_failures} failed"
            if wave.min_success_rate is not None
            else "[red]none[/]"
        )
        if wave.gate_result:
            gate += f"\n[dim]{shown(wave.gate_result)}[/]"
        soak = f"{wave.soak_minutes} min"
        if wave.soak_remaining_seconds is not None:
            soak = f"[cyan]{_remaining(wave.soak_remaining_seconds)} left[/] of {soak}"
        table.add_row(
            f"{wave.number} {shown(wave.name)}",
            f"[{colour}]{shown(wave.status)}[/]" if colour else shown(wave.status),
            f"{wave.devices}: {states_text(wave.states)}",
            gate,
            soak,
        )
    return table


def _headline(status: RunStatus) -> Text:
    what = " ".join(shown(p, markup=False) for p in (status.module, status.version) if p)
    state = status.outcome or status.status
    colour = (
        "green"
        if state in ("completed", "queued")
        else "red"
        if status.outcome
        else "yellow"
        if status.status == "held"
        else "cyan"
    )
    line = Text()
    line.append(shown(status.plan_id, markup=False), style="bold")
    line.append(": ")
    line.append(state, style=f"bold {colour}")
    if what:
        line.append(f" — {what}")
        if status.intent:
            line.append(f" ({shown(status.intent, markup=False)})")
    line.append(f"; asked by {shown(status.requester, markup=False)}: “")
    line.append(shown(status.request, markup=False))
    line.append("”")
    return line


def _waiting_line(status: RunStatus, waiting: Waiting, now: datetime) -> str:
    until = ""
    if waiting.until is not None:
        left = (waiting.until - now).total_seconds()
        until = f" (until {when(waiting.until)}, {'in ' + ago(left) if left > 0 else 'passed'})"
    hint = ""
    if waiting.kind in HOLD_LABELS:
        held = {"kind": waiting.kind, "retry_at": waiting.until and waiting.until.isoformat()}
        hint = f"\n    {hold_hint(status.plan_id, held)}"
    elif waiting.kind == "approvals":
        hint = f"\n    approvers: `fieldgate approvals show {status.plan_id}`"
    elif waiting.kind == "confirmation":
        hint = f"\n    `fieldgate plans confirm {status.plan_id}` (or withdraw it)"
    elif waiting.kind == "worker":
        hint = " (`fieldgate worker` executes it)"
    colour = "yellow" if waiting.people else "cyan"
    return f"  [{colour}]waiting for:[/] {shown(waiting.detail)}{until}{hint}"


def status_renderable(status: RunStatus, now: datetime, *, brief: bool = False) -> RenderableType:
    """One run as ``fieldgate status``, ``--watch`` and chat's ``/status`` show it.

    ``brief``: only the waves and the last events, for chat, which says where the run
    stands and what lifts a hold in its own status line.
    """
    parts: list[RenderableType] = [] if brief else [_headline(status)]
    if status.waves:
        parts.append(waves_table(status))
    for waiting in [] if brief else status.waiting:
        parts.append(Text.from_markup(_waiting_line(status, waiting, now)))
    for wait in status.window_waits:
        parts.append(Text.from_markup(window_line(wait)))
    if status.events:
        events = Table(
            title="last events", title_justify="left", box=None, show_header=False, pad_edge=False
        )
        for column in ("seq", "at", "kind", "actor", "what"):
            events.add_column(column, overflow="fold", style="dim" if column == "seq" else None)
        for event in status.events:
            events.add_row(
                str(event.seq),
                f"{event.at:%H:%M:%S}",
                event.kind,
                shown(event.actor),
                shown(event.summary if len(event.summary) <= 72 else event.summary[:71] + "…"),
            )
        parts.append(events)
    return Group(*parts)


def report_renderable(report: StatusReport) -> RenderableType:
    """Every run of a status report, with the freeze when one is in force."""
    parts: list[RenderableType] = []
    if report.freeze:
        parts.append(
            Text.from_markup(f"[bold yellow]change freeze in force[/]: {shown(report.freeze)}")
        )
    if not report.runs:
        parts.append(Text("no active runs (`fieldgate runs list` lists every run)"))
    for index, status in enumerate(report.runs):
        if index:
            parts.append(Text(""))
        parts.append(status_renderable(status, report.at))
    if report.runs and all(s.settled for s in report.runs):
        parts.append(Text("settled", style="dim"))
    return Group(*parts)


# --------------------------------------------------------------------------- the command


def watch(
    orchestrator: Orchestrator,
    plan_id: str | None,
    interval: float,
    *,
    target: Any = None,
    clock: Any = None,
    sleep: Any = time.sleep,
) -> StatusReport:
    """Redraw the status until every run shown settled; poll the store every ``interval``."""
    now = clock or (lambda: datetime.now(UTC))
    report = status_report(orchestrator, plan_id, now())
    with Live(report_renderable(report), console=target or console, auto_refresh=False) as live:
        while report.runs and not all(s.settled for s in report.runs):
            sleep(interval)
            report = status_report(orchestrator, plan_id, now())
            live.update(report_renderable(report), refresh=True)
    return report


@handles_errors
def status(
    plan: str = typer.Argument(
        None, metavar="PLAN", help="The plan (default: every run that has not ended)."
    ),
    watch_: bool = typer.Option(
        False, "--watch", "-w", help="Redraw as the run moves, until it ends or waits for people."
    ),
    interval: float = typer.Option(
        2.0, "--interval", min=0.2, help="Seconds between two reads of the store with --watch."
    ),
    json_: bool = json_option("status"),
    db: str = DbOption,
) -> None:
    """Where a rollout stands: waves, devices per state, gates, soak left, what it waits for
    (approvals, a maintenance window, the soak, the kill switch, the freeze), last events.

    Reads the shared store, so it works from any terminal while a worker runs elsewhere.
    """
    from fieldgate.graphs.compose import open_orchestrator

    if watch_ and json_:
        raise typer.BadParameter(
            "--watch redraws for people; --json prints once", param_hint="--json"
        )
    with open_orchestrator(db) as orchestrator:
        if watch_:
            try:
                watch(orchestrator, plan, interval)
            except KeyboardInterrupt:  # Ctrl-C ends the watch, never the run
                raise typer.Exit(130) from None
            return
        report = status_report(orchestrator, plan)
    if json_:
        print_view(report)
        return
    console.print(report_renderable(report))
