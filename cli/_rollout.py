"""How a rollout run is shown: the plan by wave, the dry run, the policy verdict, where it stands.

``chat``, ``approvals``, ``worker`` and ``demo`` all show runs the same way, from the
graph state of the run (``RunView.values``) and from its audit events.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich import box
from rich.console import RenderableType
from rich.table import Table

from fieldgate.audit import AuditEvent, EventKind
from fieldgate.cli._output import EXIT_INPUT, console, errors
from fieldgate.errors import NotFound
from fieldgate.store import Run, Store
from fieldgate.terminal import shown
from fieldgate.tools import HOLD_LABELS

if TYPE_CHECKING:  # the graph loads langgraph: only commands that run it import it
    from fieldgate.graphs.runner import Orchestrator, RunView

DbOption = typer.Option(None, "--db", help="Database URL (default: FIELDGATE_DB).")


def check_model(name: str | None) -> str | None:
    """Accept ``offline`` or ``openai:NAME`` for ``--model``; anything else is a usage error."""
    if name is None or name == "offline" or (name.startswith("openai:") and name != "openai:"):
        return name
    raise typer.BadParameter(f"use 'offline' or 'openai:NAME', not {name!r}")


ModelOption = typer.Option(
    None,
    "--model",
    help="offline, or openai:NAME for an OpenAI-compatible endpoint "
    "(OPENAI_BASE_URL, OPENAI_API_KEY). Default: FIELDGATE_MODEL, else offline.",
    callback=check_model,
)


def refuse(message: str) -> NoReturn:
    """Stop the command: ``message`` on stderr, exit code 2 (bad input or an unknown name)."""
    errors.print(f"[red]error: {shown(message)}[/]", highlight=False)
    raise typer.Exit(EXIT_INPUT)


def find_run(store: Store, plan_id: str) -> Run:
    """The newest run of ``plan_id``, or a clear error naming the plan."""
    try:
        return store.runs.for_plan(plan_id)
    except NotFound:
        raise NotFound(
            f"no rollout plan {plan_id!r}; `fieldgate approvals list` or /plans in "
            "`fieldgate chat` shows the plans there are"
        ) from None


def find_view(orchestrator: Orchestrator, plan_id: str) -> RunView:
    """Where the run of ``plan_id`` stands, from its checkpoint."""
    return orchestrator.view(find_run(orchestrator.ctx.store, plan_id).thread_id)


# --------------------------------------------------------------------------- small formats


def percent(rate: float | None) -> str:
    """0.95 → ``95%``."""
    return "?" if rate is None else f"{rate * 100:g}%"


def minutes(count: float | None) -> str:
    """144 → ``144 min (2h24m)``."""
    if count is None:
        return "?"
    count = round(count)
    if count < 60:
        return f"{count} min"
    return f"{count} min ({count // 60}h{count % 60:02d}m)"


def when(value: str | datetime | None) -> str:
    """An ISO time as ``2026-11-28 00:00 UTC`` (or ``-``)."""
    if value is None:
        return "-"
    at = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return f"{at:%Y-%m-%d %H:%M} UTC"


def twin_clock(virtual: datetime, wall: datetime) -> str:
    """A time on the twin's virtual clock, labelled with how far it runs from the wall
    clock: ``virtual 2026-12-06 09:50 UTC (+3d 02:10)``."""
    ahead = round((virtual - wall).total_seconds()) // 60
    sign, ahead = ("+", ahead) if ahead >= 0 else ("-", -ahead)
    days, rest = divmod(ahead, 24 * 60)
    offset = f"{sign}{days}d {rest // 60:02d}:{rest % 60:02d}"
    return f"virtual {virtual:%Y-%m-%d %H:%M} UTC ({offset})"


EXECUTION_EVENTS = (EventKind.tool_call, EventKind.tool_result, EventKind.device_report)
"""What the executor records of a run's steps (with ``virtual_at`` when simulated on the twin)."""


def print_twin_clock(store: Store, plan_id: str) -> None:
    """Say where the twin's virtual clock stood at the plan's last simulated step, once its
    executor ran on the twin: the run's own times are not the wall clock's."""
    steps = store.audit.events(plan_id=plan_id, kinds=list(EXECUTION_EVENTS))
    # The last step says where the run executed: a plan made in chat on the twin carries the
    # twin's time in its planning events, and may then run over MQTT on the wall clock.
    last = steps[-1] if steps else None
    virtual = last.virtual_at() if last is not None else None
    if last is None or virtual is None:
        return
    console.print(
        f"[dim]simulated on the twin (twin clock): its last step at {twin_clock(virtual, last.at)}"
        f", at {when(last.at)} by the wall clock[/]",
        highlight=False,
    )


def ago(seconds: float) -> str:
    """A span of seconds as ``3m``, ``5h``, ``2d``."""
    if seconds < 60:
        return f"{max(0, int(seconds))}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def roles_text(needs: list[dict[str, Any]]) -> str:
    """``[{role: safety, count: 1}]`` → ``1× safety``."""
    return ", ".join(f"{n.get('count', 1)}× {shown(n.get('role'))}" for n in needs) or "none"


def selector_text(selector: dict[str, Any]) -> str:
    """The parts of a target selector that say something."""
    parts = []
    for key in ("sites", "regions", "classes", "devices", "arch"):
        if selector.get(key):
            parts.append(f"{key} {', '.join(selector[key])}")
    for key, value in sorted((selector.get("labels") or {}).items()):
        parts.append(f"label {key}={value}")
    for module, spec in sorted((selector.get("installed") or {}).items()):
        parts.append(f"running {module} {spec}")
    if selector.get("min_memory_mb"):
        parts.append(f"≥{selector['min_memory_mb']} MiB")
    if selector.get("limit"):
        parts.append(f"at most {selector['limit']} devices")
    return "; ".join(parts) or "every device"


# --------------------------------------------------------------------------- a run


def print_rationale(revision: int | None, rationale: str) -> None:
    """The planner's rationale, a line at a time."""
    console.print(f"[bold]planner[/] (revision {shown(revision)}):", highlight=False)
    for line in rationale.splitlines():
        console.print(f"  [dim]│[/] {shown(line)}", highlight=False)


def print_review(review: dict[str, Any]) -> None:
    """The validator model's verdict on a revision."""
    verdict = shown(review.get("verdict", "?"))
    colour = "green" if verdict == "accept" else "yellow"
    console.print(
        f"[bold]validator:[/] [{colour}]{verdict}[/] — {shown(review.get('summary', ''))}",
        highlight=False,
    )
    for concern in review.get("concerns") or []:
        console.print(f"  [yellow]•[/] {shown(concern)}", highlight=False)


def plan_table(values: dict[str, Any]) -> Table:
    """The plan by wave: devices, max parallel, gate, soak and the dry run's minutes."""
    plan = values.get("plan") or {}
    sizes = (values.get("findings") or {}).get("wave_sizes") or []
    forecast = (values.get("dry_run") or {}).get("waves") or []
    table = Table(
        title=f"plan {shown(plan.get('plan_id'))} r{shown(plan.get('revision'))}: "
        f"{shown(plan.get('module'))} {shown(plan.get('version'))} ({shown(plan.get('intent'))})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    for column in ("wave", "devices", "parallel", "health gate", "soak", "dry run"):
        table.add_column(column, justify="right" if column in ("devices", "parallel") else "left")
    for index, wave in enumerate(plan.get("waves") or []):
        gate = wave.get("health_gate") or {}
        predicted = forecast[index].get("minutes") if index < len(forecast) else None
        table.add_row(
            f"{index + 1} {shown(wave.get('name'))}",
            str(sizes[index]) if index < len(sizes) else "?",
            str(wave.get("max_parallel")),
            f"≥{percent(gate.get('min_success_rate'))} healthy, "
            f"≤{shown(gate.get('max_failures', '?'))} failed"
            if gate
            else "[red]none[/]",
            f"{shown(gate.get('soak_minutes', 0))} min",
            f"{predicted} min" if predicted is not None else "-",
        )
    return table


def print_plan(values: dict[str, Any]) -> None:
    """The plan table and what it targets, how it is scheduled and how it rolls back."""
    plan = values.get("plan") or {}
    console.print(plan_table(values))
    rollback = plan.get("rollback") or {}
    abort = plan.get("abort") or {}
    schedule = plan.get("schedule") or {}
    console.print(
        f"  targets: {shown(selector_text(plan.get('target') or {}))}\n"
        f"  schedule: {shown(schedule.get('mode', '?'))}"
        + (
            f", not before {shown(when(schedule['not_before']))}"
            if schedule.get("not_before")
            else ""
        )
        + f"; abort when more than {percent(abort.get('failure_threshold'))} of executed "
        "devices fail; rollback to "
        + (
            f"{shown(rollback.get('version'))} "
            f"({'automatic' if rollback.get('automatic') else 'manual'})"
            if rollback.get("version")
            else "[yellow]none[/]"
        ),
        highlight=False,
    )


def print_dry_run(values: dict[str, Any]) -> None:
    """The dry run on the twin's model, the validator's findings and its verdict."""
    dry = values.get("dry_run") or {}
    findings = values.get("findings") or {}
    radius = dry.get("blast_radius")
    console.print(
        f"[bold]dry run:[/] {dry.get('targets', 0)} targets, about "
        f"{minutes(dry.get('predicted_minutes'))}, blast radius {radius} "
        f"device{'' if radius == 1 else 's'} if the first wave fails, "
        f"starts {when(dry.get('starts_at'))}",
        highlight=False,
    )
    for problem in findings.get("problems") or []:
        console.print(f"  [red]problem:[/] {shown(problem)}", highlight=False)
    for warning in findings.get("warnings") or []:
        console.print(f"  [yellow]warning:[/] {shown(warning)}", highlight=False)
    if values.get("review"):
        print_review(values["review"])


def print_verdict(values: dict[str, Any]) -> None:
    """The rollout policy decision: allow or deny, why, warnings and approvals required."""
    decision = values.get("decision")
    if not decision:
        return
    if decision.get("allow"):
        needs = decision.get("approvals") or []
        tail = f" with approvals: {roles_text(needs)}" if needs else " without approvals"
        console.print(f"[bold]policy:[/] [green]allowed[/]{tail}", highlight=False)
    else:
        console.print("[bold]policy:[/] [bold red]denied[/]", highlight=False)
    for message in decision.get("deny") or []:
        console.print(f"  [red]deny:[/] {shown(message)}", highlight=False)
    for message in decision.get("warn") or []:
        console.print(f"  [yellow]warn:[/] {shown(message)}", highlight=False)
    for need in decision.get("approvals") or []:
        console.print(
            f"  [cyan]needs:[/] {shown(need.get('count'))}× {shown(need.get('role'))} — "
            f"{shown(need.get('reason', ''))}",
            highlight=False,
        )


def print_approvals(values: dict[str, Any]) -> None:
    """Whose decisions counted, whose did not and why, and what is still missing."""
    counted = values.get("approvals") or {}
    if "counted" not in counted:  # nobody decided yet: the status line says what is missing
        return
    console.print(
        "[bold]approvals:[/] counted: "
        + (shown(", ".join(counted.get("counted") or [])) or "nobody yet"),
        highlight=False,
    )
    reasons: dict[str, list[str]] = {}
    for entry in counted.get("ignored") or []:
        reasons.setdefault(entry.get("approver", "?"), []).append(entry.get("reason", ""))
    for approver, why in reasons.items():
        console.print(
            f"  [yellow]did not count:[/] {shown(approver)} — {shown('; '.join(why))}",
            highlight=False,
        )
    if counted.get("rejected_by"):
        console.print(
            f"  [red]rejected by:[/] {shown(', '.join(counted['rejected_by']))}", highlight=False
        )
    if counted.get("missing"):
        console.print(f"  [cyan]missing:[/] {roles_text(counted['missing'])}", highlight=False)


def approval_deadline(view: RunView) -> str | None:
    """The approval request's deadline (ISO time), while the run waits for one."""
    if not view.interrupts:
        return None
    value = view.interrupts[0].value
    return value.get("deadline") if isinstance(value, dict) else None


def hold_hint(plan_id: str, held: dict[str, Any]) -> str:
    """What lifts a hold of this kind."""
    kind = held.get("kind")
    if kind == "kill_switch":
        return (
            f"`fieldgate stop --release {plan_id}` resumes it where it stopped (no new "
            f"approvals); `fieldgate stop --abort {plan_id}` ends it and rolls touched "
            "devices back"
        )
    if kind == "freeze":
        return "it resumes where it stopped when the freeze lifts (`fieldgate freeze off`)"
    retry_at = held.get("retry_at")
    return (
        f"attempt {held.get('attempts', 0)}; "
        + (
            f"a worker retries at {when(retry_at)}; "
            if retry_at
            else "no more retries by a worker; "
        )
        + f"`fieldgate runs retry {plan_id}` retries it now"
    )


def print_held(
    plan_id: str, held: dict[str, Any], *, reached: bool = True, unknown: Sequence[str] = ()
) -> None:
    """``PLAN: held by the kill switch — …``, what lifts it, and the devices that were sent
    a command and have not said what they run (``unknown``)."""
    label = HOLD_LABELS.get(str(held.get("kind")), str(held.get("kind")))
    when_held = "" if reached else " at its next executor step"
    console.print(
        f"[bold]{plan_id}:[/] [bold yellow]held by {label}[/]{when_held} — "
        f"{shown(held.get('reason', ''))}\n  {hold_hint(plan_id, held)}",
        highlight=False,
    )
    if unknown:
        console.print(
            f"  [yellow]state not known yet[/] of {len(unknown)} device(s) sent a command: "
            f"{shown(', '.join(unknown))}",
            highlight=False,
        )


def print_status(
    view: RunView,
    run: Run | None = None,
    pending: dict[str, Any] | None = None,
    *,
    deciding: bool = False,
    chatting: bool = False,
) -> None:
    """Where the run stands, in one or a few lines, with what to do next.

    ``pending`` is what holds the run at its next executor step (the kill switch or the
    freeze in the store), when the run has not reached that step yet; for an approver
    reading the plan (``deciding``), the commands that decide it; in a chat
    (``chatting``), a question is answered on the next line.
    """
    values = view.values
    plan_id = view.plan_id
    outcome = view.outcome
    reasons = values.get("reasons") or []
    if outcome == "needs_clarification":
        clarification = values.get("clarification") or {}
        console.print(
            f"[bold yellow]needs clarification:[/] "
            f"{shown(clarification.get('question') or '; '.join(reasons))}",
            highlight=False,
        )
        if clarification.get("candidates"):
            console.print(
                f"  candidates: {shown(', '.join(clarification['candidates']))}", highlight=False
            )
        candidates = clarification.get("candidates") or []
        if not chatting:
            console.print("  say it again with the details; nothing was planned", highlight=False)
        elif len(candidates) == 1:
            console.print(
                f"  nothing was planned; answer here (yes takes {shown(candidates[0])})",
                highlight=False,
            )
        else:
            console.print("  nothing was planned; answer here", highlight=False)
        return
    if outcome:
        colour = "green" if outcome == "completed" else "red"
        console.print(
            f"[bold]{plan_id}:[/] [bold {colour}]{outcome}[/]"
            + (f" — {shown('; '.join(reasons))}" if reasons else ""),
            highlight=False,
        )
        return
    if view.held:
        print_held(plan_id, view.held, unknown=(run.detail.get("unknown") or []) if run else ())
        return
    if view.awaiting_confirmation:
        console.print(
            f"[bold]{plan_id}:[/] [bold cyan]proposed, not queued[/]: policy needs no approvals; "
            f"it waits for {shown(values.get('actor', 'the requester'))}'s yes (say yes in the "
            f"chat, or `fieldgate plans confirm {plan_id}`; withdraw with "
            f"`fieldgate plans withdraw {plan_id}`)",
            highlight=False,
        )
        return
    if view.status == "awaiting_approval":
        missing = (values.get("approvals") or {}).get("missing") or []
        ask = (
            f"decide with `fieldgate approvals approve {plan_id} --as YOU -m WHY` or "
            f"`fieldgate approvals reject {plan_id} --as YOU -m WHY`"
            if deciding
            else f"approvers: `fieldgate approvals show {plan_id}`"
        )
        console.print(
            f"[bold]{plan_id}:[/] [bold cyan]awaiting approval[/] from {roles_text(missing)} "
            f"(deadline {when(approval_deadline(view))}); {ask}",
            highlight=False,
        )
        if pending:
            label = HOLD_LABELS.get(str(pending.get("kind")), "")
            console.print(f"  once approved it is held by {label}", highlight=False)
        return
    if pending:
        print_held(plan_id, pending, reached=False)
        return
    executing = run is not None and run.status == "executing"
    if view.status == "queued" and not executing:
        console.print(
            f"[bold]{plan_id}:[/] [bold green]approved, queued for a worker[/] "
            "(`fieldgate worker` executes it)",
            highlight=False,
        )
        return
    state = run.status if run is not None else view.status
    console.print(f"[bold]{plan_id}:[/] [bold]{state}[/]", highlight=False)


def print_run(
    view: RunView,
    run: Run | None = None,
    pending: dict[str, Any] | None = None,
    progress: RenderableType | None = None,
    *,
    chatting: bool = False,
) -> None:
    """Everything about a run: plan, dry run, verdict, approvals, execution and status.

    ``progress`` shows the execution in place of the table of waves (``fieldgate status``'s
    view of waves, devices per state, soak left and the last events); ``chatting`` as for
    :func:`print_status`.
    """
    values = view.values
    if values.get("plan"):
        print_plan(values)
        print_dry_run(values)
        print_verdict(values)
        print_approvals(values)
    if progress is not None:
        console.print(progress)
    elif values.get("execution"):
        console.print(execution_table(values["execution"]))
    print_status(view, run, pending, chatting=chatting)


def pending_hold(orchestrator: Orchestrator, view: RunView) -> dict[str, Any] | None:
    """What holds the run at its next executor step (None: nothing, or it ended)."""
    from fieldgate.graphs.execution import hold_now

    if view.outcome:
        return None
    held = hold_now(orchestrator.ctx, view.values, view.plan_id)
    return held.model_dump(mode="json") if held else None


def freeze_line(store: Store) -> str | None:
    """``change freeze in force: …`` when one is, for chat and the worker."""
    freeze = store.freeze.current()
    if freeze is None:
        return None
    return (
        f"[bold yellow]change freeze in force[/]: {shown(freeze.describe())} (since "
        f"{when(freeze.at)}); forward rollouts are denied and held, rollbacks go on"
    )


# --------------------------------------------------------------------------- execution


def wave_counts(wave: dict[str, Any]) -> tuple[int, int, int, int]:
    """Devices of a wave: total, applied, failed, unreachable."""
    return (
        len(wave.get("devices") or []),
        len(wave.get("applied") or []),
        len(wave.get("failed") or []),
        len(wave.get("unreachable") or []),
    )


def execution_table(execution: dict[str, Any]) -> Table:
    """How each wave fared."""
    table = Table(title="execution", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("wave", "status", "devices", "applied", "failed", "unreachable", "gate"):
        table.add_column(column)
    for wave in execution.get("waves") or []:
        total, applied, failed, unreachable = wave_counts(wave)
        status = wave.get("status", "?")
        colour = {"passed": "green", "failed": "red", "halted": "red"}.get(status, "dim")
        gate = wave.get("gate") or {}
        table.add_row(
            f"{wave.get('index', 0) + 1} {shown(wave.get('name'))}",
            f"[{colour}]{shown(status)}[/]",
            str(total),
            str(applied),
            str(failed),
            str(unreachable),
            shown(gate.get("reason", "")) if gate else "-",
        )
    return table


# --------------------------------------------------------------------------- runs and why


def runs_table(runs: list[Run], title: str = "plans") -> Table:
    """Runs, newest last: plan, status, outcome, requester, request."""
    table = Table(
        title=f"{title}: {len(runs)}", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    table.add_column("plan", no_wrap=True)
    table.add_column("status or outcome", no_wrap=True)
    table.add_column("by")
    table.add_column("request", overflow="fold")
    for run in runs:
        colour = {"completed": "green", "awaiting_approval": "cyan", "queued": "green"}.get(
            run.outcome or run.status, "red" if run.outcome else "default"
        )
        status = run.outcome or run.status
        held = run.detail.get("held") if not run.outcome else None
        if run.status == "held" and isinstance(held, dict):
            status = f"held by {HOLD_LABELS.get(str(held.get('kind')), '?')}"
            colour = "yellow"
        table.add_row(
            shown(run.plan_id),
            f"[{colour}]{shown(status)}[/]",
            shown(run.actor),
            shown(run.request),
        )
    return table


def _why_line(event: AuditEvent) -> list[str]:
    payload = event.payload
    kind = event.kind
    if kind is EventKind.request:
        return [f"[bold]request[/] by {shown(event.actor)}: “{shown(payload.get('text', ''))}”"]
    if kind is EventKind.rationale and "clarification" in payload:
        return [f"[bold]planner asked:[/] {shown(payload['clarification'])}"]
    if kind is EventKind.rationale and "rationale" in payload:
        lines = [f"[bold]planner[/], revision {shown(payload.get('revision'))}:"]
        lines += [f"  [dim]│[/] {shown(line)}" for line in payload["rationale"].splitlines()]
        return lines
    if kind is EventKind.rationale and "error" in payload:
        return [f"[bold red]planner failed:[/] {shown(payload['error'])}"]
    if kind is EventKind.validation and "verdict" in payload:
        findings = payload.get("findings") or {}
        lines = [
            f"[bold]validator[/] on {shown(str(payload.get('plan_hash', ''))[:12])}: "
            f"{shown(payload.get('verdict'))} — {shown(payload.get('summary', ''))}"
        ]
        lines += [f"  concern: {shown(c)}" for c in payload.get("concerns") or []]
        lines += [f"  problem: {shown(p)}" for p in findings.get("problems") or []]
        return lines
    if kind is EventKind.policy_decision:
        return _why_policy(payload)
    if kind is EventKind.tool_call:
        args = ", ".join(
            f"{k}={v}"
            for k, v in sorted((payload.get("args") or {}).items())
            if k not in ("plan_hash", "digest", "module")  # the same for every call of the plan
        )
        verdict = "[green]allowed[/]" if payload.get("allow") else "[red]refused[/]"
        return [
            f"[bold]executor[/] {shown(payload.get('tool'))}({shown(args)}): {verdict} — "
            f"{shown(str(payload.get('reason', '')))}"
        ]
    if kind is EventKind.approval:
        if payload.get("expired"):
            return [f"[bold]approval expired[/] at {when(payload.get('deadline'))}"]
        if "decision" in payload:
            comment = f" — “{shown(payload['comment'])}”" if payload.get("comment") else ""
            return [f"[bold]{shown(payload['decision'])}[/] by {shown(event.actor)}{comment}"]
        return []
    if kind in (EventKind.abort, EventKind.rollback, EventKind.stop):
        detail = payload.get("reason") or payload.get("to_version") or ""
        return [f"[bold red]{kind.value}[/]: {shown(str(detail))}"]
    if kind is EventKind.done:
        reasons = "; ".join(payload.get("reasons") or [])
        return [f"[bold]outcome: {shown(payload.get('outcome'))}[/] — {shown(reasons)}"]
    return []


def _why_policy(payload: dict[str, Any]) -> list[str]:
    result = payload.get("result") or {}
    path = payload.get("path", "")
    if path.endswith("rollout.decision"):
        verdict = "[green]allow[/]" if result.get("allow") else "[red]deny[/]"
        lines = [f"[bold]policy[/] ({shown(path)}): {verdict}"]
        lines += [f"  deny: {shown(m)}" for m in result.get("deny") or []]
        lines += [f"  warn: {shown(m)}" for m in result.get("warn") or []]
        lines += [
            f"  needs {shown(a.get('count'))}× {shown(a.get('role'))}: {shown(a.get('reason', ''))}"
            for a in result.get("approvals") or []
        ]
        return lines
    if path.endswith("approvals.decision"):
        ignored = "; ".join(
            f"{i.get('approver')}: {i.get('reason')}" for i in result.get("ignored") or []
        )
        return [
            "[bold]approvals policy:[/] counted "
            + (shown(", ".join(result.get("counted") or [])) or "-")
            + f", missing {roles_text(result.get('missing') or [])}"
            + (f"; not counted: {shown(ignored)}" if ignored else "")
        ]
    return []  # tool calls: `fieldgate audit show PLAN` lists every one


def print_why(store: Store, plan_id: str) -> None:
    """Why the plan is what it is: request, rationale, validation, policy, approvals, outcome."""
    find_run(store, plan_id)
    events = store.audit.events(plan_id=plan_id)
    console.rule(f"why {plan_id}", align="left")
    for event in events:
        for line in _why_line(event):
            console.print(line, highlight=False)
    console.print(
        f"[dim]{len(events)} audit events; every one: `fieldgate audit show {plan_id}`[/]",
        highlight=False,
    )
