"""``fieldgate approvals``: the queue of plans waiting for people, and signed decisions on them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer
from rich import box
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table

from fieldgate.cli._common import command_config
from fieldgate.cli._output import EXIT_FAILED, console, handles_errors, json_option, print_view
from fieldgate.cli._rollout import (
    DbOption,
    ago,
    approval_deadline,
    find_run,
    print_approvals,
    print_dry_run,
    print_plan,
    print_rationale,
    print_review,
    print_status,
    print_verdict,
    refuse,
    roles_text,
)
from fieldgate.edge._tables import offline_devices
from fieldgate.errors import NotFound
from fieldgate.keyfiles import load_key
from fieldgate.plan import RolloutPlan
from fieldgate.terminal import shown
from fieldgate.validation import changes_since_proposed
from fieldgate.views import (
    ApprovalsList,
    ApprovalsShow,
    AwaitingPlan,
    IgnoredDecision,
    RoleNeed,
)

if TYPE_CHECKING:
    from fieldgate.graphs.runner import Orchestrator, RunView
    from fieldgate.store import Run

approvals_app = typer.Typer(
    help="Plans waiting for approval: list, show, approve, reject.", no_args_is_help=True
)

PlanArgument = typer.Argument(..., metavar="PLAN", help="The plan id (see `approvals list`).")
ApproverOption = typer.Option(
    ..., "--as", help="Who decides; signs with FIELDGATE_HOME/keys/ID.key (`keys init`)."
)
CommentOption = typer.Option("", "--comment", "-m", help="Why (kept with the signed decision).")


def _until(deadline: str | None, now: datetime) -> str:
    if deadline is None:
        return "-"
    at = datetime.fromisoformat(deadline)
    left = (at - now).total_seconds()
    return f"{'in ' + ago(left) if left > 0 else 'passed'}\n{at:%m-%d %H:%M}"


@approvals_app.command("list")
@handles_errors
def list_(db: str = DbOption, json_: bool = json_option("approvals-list")) -> None:
    """List the plans waiting for approval: what, where, who asked, who must still approve."""
    from fieldgate.graphs.compose import open_orchestrator

    listed: list[AwaitingPlan] = []
    with open_orchestrator(db) as orchestrator:
        store = orchestrator.ctx.store
        now = orchestrator.ctx.people_now()
        table = Table(
            title="plans awaiting approval (deadlines in UTC)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
        )
        for column in ("plan", "targets", "missing", "by", "deadline"):
            table.add_column(column, no_wrap=True, min_width=18 if column == "missing" else None)
        waiting = 0
        for run in store.runs.list(("awaiting_approval",)):
            view = orchestrator.view(run.thread_id)
            if not view.interrupts:
                continue
            waiting += 1
            plan = view.values.get("plan") or {}
            missing = (view.values.get("approvals") or {}).get("missing") or []
            targets = (view.values.get("findings") or {}).get("targets")
            deadline = approval_deadline(view)
            listed.append(
                AwaitingPlan(
                    plan_id=run.plan_id,
                    module=plan.get("module"),
                    version=plan.get("version"),
                    targets=targets if isinstance(targets, int) else None,
                    missing=_needs(missing),
                    requester=run.actor,
                    requested_at=run.created_at,
                    deadline=datetime.fromisoformat(deadline) if deadline else None,
                )
            )
            age = ago((datetime.now(UTC) - run.created_at).total_seconds())
            table.add_row(
                f"{shown(run.plan_id)}\n{shown(plan.get('module'))} {shown(plan.get('version'))}",
                shown((view.values.get("findings") or {}).get("targets", "?")),
                roles_text(missing).replace(", ", "\n"),
                f"{shown(run.actor)}\n{age} ago",
                _until(approval_deadline(view), now),
            )
    if json_:
        print_view(ApprovalsList(plans=listed))
        return
    if not waiting:
        console.print("no plans are waiting for approval")
        return
    console.print(table)


def _needs(needs: list[dict[str, Any]]) -> list[RoleNeed]:
    return [
        RoleNeed(role=str(n.get("role")), count=int(n.get("count", 1)), reason=n.get("reason", ""))
        for n in needs
    ]


def _print_decisions(orchestrator: Orchestrator, view: RunView) -> None:
    plan_hash = view.values.get("plan_hash")
    received = orchestrator.ctx.store.approvals.for_plan(view.plan_id)
    if not received:
        console.print("[bold]decisions:[/] none yet", highlight=False)
        return
    table = Table(
        title="signed decisions", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    for column in ("approver", "decision", "revision", "key", "at (UTC)", "comment"):
        table.add_column(column, overflow="fold")
    for approval in received:
        table.add_row(
            shown(approval.approver),
            approval.decision.value,
            "this one" if approval.plan_hash == plan_hash else "[dim]an older one[/]",
            shown(approval.key_id),
            f"{approval.at:%Y-%m-%d %H:%M}",
            shown(approval.comment) or "-",
        )
    console.print(table)


def _changes(orchestrator: Orchestrator, values: dict[str, Any]) -> list[str]:
    """What changed since the plan was proposed (each change once)."""
    store = orchestrator.ctx.store
    plan = RolloutPlan.model_validate(values["plan"])
    try:
        versions = store.catalog.versions(plan.module)
    except NotFound:
        versions = []
    proposed = (values.get("dry_run") or {}).get("targets")
    return changes_since_proposed(
        plan,
        proposed if isinstance(proposed, int) else None,
        store.fleet.devices(),
        {s.id: s for s in store.fleet.sites()},
        versions,
        offline_devices(store.engine),
        orchestrator.ctx.freeze_in_force() is not None,
    )


def _print_changes(orchestrator: Orchestrator, values: dict[str, Any]) -> None:
    """Warn about what changed since the plan was proposed (each warning once)."""
    for note in _changes(orchestrator, values):
        console.print(f"[yellow]since proposed:[/] {shown(note)}", highlight=False)


@approvals_app.command("show")
@handles_errors
def show(
    plan: str = PlanArgument,
    request: bool = typer.Option(
        False, "--request", help="Also print the approval request as approval inboxes get it."
    ),
    db: str = DbOption,
    json_: bool = json_option("approvals-show"),
) -> None:
    """Show a plan as approvers read it: waves, dry run, policy verdict, who approved, what is
    missing, what changed since it was proposed, and the commands to decide."""
    from fieldgate.graphs.compose import open_orchestrator

    with open_orchestrator(db) as orchestrator:
        run = find_run(orchestrator.ctx.store, plan)
        view = orchestrator.view(run.thread_id)
        if json_:
            print_view(_show_view(orchestrator, run, view))
            return
        console.print(
            f"[bold]{shown(run.plan_id)}[/] requested by [bold]{shown(run.actor)}[/]: "
            f"“{shown(run.request)}”",
            highlight=False,
        )
        values = view.values
        if values.get("plan"):
            console.print(f"plan hash {shown(values.get('plan_hash'))}", highlight=False)
            plan_json = values["plan"]
            print_rationale(plan_json.get("revision"), plan_json.get("rationale", ""))
            if values.get("review"):
                print_review(values["review"])
            print_plan(values)
            print_dry_run(values)
            print_verdict(values)
            _print_decisions(orchestrator, view)
            print_approvals(values)
            if view.status == "awaiting_approval":
                _print_changes(orchestrator, values)
        if request and view.interrupts and isinstance(view.interrupts[0].value, dict):
            approval_request = view.interrupts[0].value
            description = (approval_request.get("action_requests") or [{}])[0].get(
                "description", ""
            )
            # Its bold-labelled lines are meant as lines, not as one paragraph.
            description = re.sub(
                r"\n(?=\*\*)", "\n\n", shown(description, multiline=True, markup=False)
            )
            # A link in the untrusted text stays visible text, never a hidden terminal hyperlink.
            console.print(
                Panel(
                    Markdown(description, hyperlinks=False),
                    title="approval request",
                    title_align="left",
                ),
                soft_wrap=False,
            )
        print_status(view, run, deciding=True)


def _show_view(orchestrator: Orchestrator, run: Run, view: RunView) -> ApprovalsShow:
    values = view.values
    counted = values.get("approvals") or {}
    decision = values.get("decision")
    deadline = approval_deadline(view)
    return ApprovalsShow(
        plan_id=run.plan_id,
        request=run.request,
        requester=run.actor,
        status=view.status,
        outcome=view.outcome,
        plan=RolloutPlan.model_validate(values["plan"]) if values.get("plan") else None,
        plan_hash=values.get("plan_hash"),
        dry_run=values.get("dry_run") or {},
        findings=values.get("findings") or {},
        decision=decision,
        required=_needs((decision or {}).get("approvals") or []),
        decisions=orchestrator.ctx.store.approvals.for_plan(view.plan_id),
        counted=list(counted.get("counted") or []),
        ignored=[
            IgnoredDecision(approver=str(i.get("approver")), reason=str(i.get("reason", "")))
            for i in counted.get("ignored") or []
        ],
        rejected_by=list(counted.get("rejected_by") or []),
        missing=_needs(counted.get("missing") or []),
        deadline=datetime.fromisoformat(deadline) if deadline else None,
        changes=_changes(orchestrator, values)
        if view.status == "awaiting_approval" and values.get("plan")
        else [],
    )


def key_not_enrolled(orchestrator: Orchestrator, approver: str, key_id: str) -> str | None:
    """Why ``key_id`` is not ``approver``'s enrolled approver key, or None when it is."""
    trust = orchestrator.ctx.store.keys.judge(orchestrator.ctx.root)
    trusted = trust.current(approver, "approver")
    if trusted is not None and trusted.key_id == key_id:
        return None
    held = (
        f"the enrolled one is {trusted.key_id}" if trusted else trust.why_not(approver, "approver")
    )
    return (
        f"the key of {approver} ({key_id}) is not {approver}'s enrolled approver key "
        f"({held}); a root holder enrolls it: `fieldgate keys enroll {approver}`"
    )


def decision_took(
    orchestrator: Orchestrator, view: RunView, approver: str
) -> tuple[bool, list[str]]:
    """Whether ``approver``'s decision just handed to the run counts, and why not if not."""
    counted = view.values.get("approvals") or {}
    received = orchestrator.ctx.store.approvals.for_plan(view.plan_id)
    mine = max((i for i, a in enumerate(received) if a.approver == approver), default=None)
    # Judge this decision, not the person: a second approval by someone who already fills
    # a slot, or one that came too late, does not count even if an earlier one did.
    reasons = [
        entry.get("reason", "")
        for entry in counted.get("ignored") or []
        if entry.get("approver") == approver and entry.get("index") in (mine, len(received))
    ]
    took = not reasons and (
        approver in (counted.get("counted") or []) or approver in (counted.get("rejected_by") or [])
    )
    return took, reasons


def decide(
    orchestrator: Orchestrator,
    plan: str,
    approver: str,
    decision: Literal["approve", "reject"],
    comment: str = "",
    *,
    keys_dir: Path,
) -> tuple[RunView, bool]:
    """Sign ``decision`` with ``approver``'s key (under ``keys_dir``) and hand it to the run;
    say what it changed.

    Returns:
        The run after the decision, and whether the decision counted.
    """
    store = orchestrator.ctx.store
    run = find_run(store, plan)
    view = orchestrator.view(run.thread_id)
    if not view.interrupts:
        state = f"{run.status}, {run.outcome}" if run.outcome else run.status
        refuse(f"plan {run.plan_id} is not awaiting approval (it is {state})")
    key = load_key(keys_dir, approver)
    not_enrolled = key_not_enrolled(orchestrator, approver, key.key_id)
    if not_enrolled is not None:
        refuse(not_enrolled)
    view = orchestrator.decide(run.thread_id, key, decision, comment)
    took, reasons = decision_took(orchestrator, view, approver)
    verb = "approval" if decision == "approve" else "rejection"
    if took:
        console.print(
            f"signed {verb} by [bold]{shown(approver)}[/] ({key.key_id}): [green]counts[/]",
            highlight=False,
        )
    else:
        console.print(
            f"signed {verb} by [bold]{shown(approver)}[/] ({key.key_id}): "
            f"[bold yellow]does not count[/] — {shown('; '.join(reasons) or 'see policy')}",
            highlight=False,
        )
    if view.outcome == "rejected":
        console.print(
            f"[bold]{view.plan_id}:[/] [bold red]rejected[/]; nothing is sent to devices",
            highlight=False,
        )
    elif view.status == "queued":
        console.print(
            f"[bold]{view.plan_id}:[/] [bold green]approved[/]: the quorum is reached; "
            "queued for a worker (`fieldgate worker`)",
            highlight=False,
        )
    elif view.interrupts:
        missing = (view.values.get("approvals") or {}).get("missing") or []
        console.print(
            f"[bold]{view.plan_id}:[/] still missing {roles_text(missing)}",
            highlight=False,
        )
    else:
        print_status(view)
    return view, took


def _decide_command(
    plan: str, approver: str, decision: Literal["approve", "reject"], comment: str, db: str | None
) -> None:
    from fieldgate.graphs.compose import open_orchestrator

    config = command_config(db)
    with open_orchestrator(config=config) as orchestrator:
        _, took = decide(orchestrator, plan, approver, decision, comment, keys_dir=config.keys_dir)
    if not took:
        raise typer.Exit(EXIT_FAILED)


@approvals_app.command("approve")
@handles_errors
def approve(
    plan: str = PlanArgument,
    approver: str = ApproverOption,
    comment: str = CommentOption,
    db: str = DbOption,
) -> None:
    """Approve a plan with a signed decision; exit 1 when policy does not count it."""
    _decide_command(plan, approver, "approve", comment, db)


@approvals_app.command("reject")
@handles_errors
def reject(
    plan: str = PlanArgument,
    approver: str = ApproverOption,
    comment: str = CommentOption,
    db: str = DbOption,
) -> None:
    """Reject a plan with a signed decision; a counted rejection ends the run."""
    _decide_command(plan, approver, "reject", comment, db)


@approvals_app.command("edit")
@handles_errors
def edit(
    plan: str = PlanArgument,
    approver: str = ApproverOption,
    canary: int = typer.Option(None, "--canary", min=1, help="Devices in the first wave."),
    max_parallel: int = typer.Option(
        None, "--max-parallel", min=1, help="Most devices installing at once, in every wave."
    ),
    version: str = typer.Option(None, "--version", help="Another catalog version to install."),
    comment: str = CommentOption,
    db: str = DbOption,
) -> None:
    """Propose a signed edit of a plan waiting for approval: it becomes a new revision that
    is validated, gated by policy and needs its own decisions (earlier ones do not carry
    over)."""
    from fieldgate.agents.planner import PlanDraft
    from fieldgate.graphs.compose import open_orchestrator

    if canary is None and max_parallel is None and version is None:
        raise typer.BadParameter(
            "say what to change: --canary, --max-parallel or --version", param_hint="edit"
        )
    config = command_config(db)
    with open_orchestrator(config=config) as orchestrator:
        store = orchestrator.ctx.store
        run = find_run(store, plan)
        view = orchestrator.view(run.thread_id)
        if not view.interrupts or view.awaiting_confirmation:
            refuse(f"plan {run.plan_id} is not awaiting approval (it is {view.status})")
        key = load_key(config.keys_dir, approver)
        not_enrolled = key_not_enrolled(orchestrator, approver, key.key_id)
        if not_enrolled is not None:
            refuse(not_enrolled)
        draft = PlanDraft.of(
            orchestrator.ctx.plans.plan(view.values["plan"], view.values["plan_hash"])
        )
        waves = [wave.model_copy() for wave in draft.waves]
        if canary is not None:
            waves[0] = waves[0].model_copy(update={"count": canary, "percent": None})
        if max_parallel is not None:
            waves = [w.model_copy(update={"max_parallel": max_parallel}) for w in waves]
        update: dict[str, Any] = {"waves": waves}
        if version is not None:
            update["version"] = version
        draft = PlanDraft.model_validate(
            {**draft.model_dump(), **update, "waves": [w.model_dump() for w in waves]}
        )
        before = view.values.get("plan_hash")
        after = orchestrator.edit(run.thread_id, key, draft, comment)
        if after.values.get("plan_hash") == before:
            refuse(f"the edit of {run.plan_id} was not taken; `fieldgate audit show {run.plan_id}`")
        console.print(
            f"signed edit by [bold]{shown(approver)}[/] ({key.key_id}): plan "
            f"{shown(run.plan_id)} revision {after.values.get('revisions')}",
            highlight=False,
        )
        print_status(after, store.runs.get(after.thread_id), deciding=True)
