"""``fieldgate stop``: the kill switch, for one plan or for every plan.

The switch holds a run, it does not end it: dispatch halts within one executor step and
the run waits where it stood; ``--release`` lets it go on from there with the approvals
it had, ``--abort`` ends it and sends the devices it touched back.
"""

from __future__ import annotations

import typer

from fieldgate.audit import ActorKind, EventKind
from fieldgate.cli._common import command_config
from fieldgate.cli._output import console, handles_errors
from fieldgate.cli._rollout import DbOption, find_run, refuse
from fieldgate.store import OPEN_STATUSES, Store
from fieldgate.terminal import shown


@handles_errors
def stop(
    plan: str = typer.Argument(None, metavar="PLAN", help="The plan to stop (or --all)."),
    every: bool = typer.Option(False, "--all", help="Stop every plan, running or not yet."),
    release: bool = typer.Option(False, "--release", help="Release the switch: the run resumes."),
    abort: bool = typer.Option(
        False, "--abort", help="End the plan's run; touched devices are rolled back."
    ),
    reason: str = typer.Option(None, "--reason", help="Why (kept in the audit log)."),
    actor: str = typer.Option(None, "--as", help="Who (default: the current user)."),
    db: str = DbOption,
) -> None:
    """Pull the kill switch: dispatch holds within one executor step; --release resumes.

    fieldgate stop PLAN | stop --all [--reason TEXT] | stop --release PLAN|--all |
    stop --abort PLAN
    """
    if (plan is None) == (not every):
        refuse("name one PLAN or --all (not both)")
    if release and abort:
        refuse("--release resumes the run and --abort ends it: give one")
    if abort and every:
        refuse("--abort ends one run: name its PLAN")
    config = command_config(db)
    who = actor or config.actor()
    action = "aborted" if abort else "released" if release else "stopped"
    reason = reason or f"{action} from the command line"
    with Store.open(config.database_url) as store:
        scope = None
        if plan is not None:
            run = find_run(store, plan)
            scope = run.plan_id
            if run.outcome and abort:
                refuse(f"plan {scope} already ended ({run.outcome}); there is nothing to abort")
            if run.outcome and not release:
                console.print(
                    f"[yellow]note:[/] plan {scope} already ended ({run.outcome}); "
                    "the switch stays engaged for it",
                    highlight=False,
                )
        target = f"plan {scope}" if scope else "every plan"
        with store.writing(f"{action} {target}") as tx:
            if abort:
                # Written before the switch is released, so no step resumes the run forward.
                store.runs.update(
                    run.thread_id,
                    run.status,
                    detail={"abort": {"by": who, "reason": reason}},
                    tx=tx,
                )
            store.audit.append(
                EventKind.stop,
                ActorKind.human,
                who,
                {
                    "scope": scope or "*",
                    "engaged": not (release or abort),
                    "abort": abort,
                    "reason": reason,
                },
                plan_id=scope,
                tx=tx,
            )
            if release or abort:
                store.stops.release(scope, who, reason, tx=tx)
            else:
                store.stops.engage(scope, who, reason, tx=tx)
        affected = [
            r for r in store.runs.list(OPEN_STATUSES) if scope is None or r.plan_id == scope
        ]
        still = store.stops.engaged(scope) if scope else None
    if abort:
        waits = [r for r in affected if r.status in ("accepted", "awaiting_approval")]
        console.print(
            f"plan {scope} [bold red]aborted[/] by {shown(who)}: {shown(reason)}\n"
            + (
                "  it waits for approval: it ends, with nothing dispatched, when a worker "
                "would have taken it up"
                if waits
                else "  the worker ends the run at its next pass and rolls back every device "
                "it touched"
            ),
            highlight=False,
        )
        if still:
            console.print(f"  [yellow]the rollback waits:[/] {shown(still)}", highlight=False)
        return
    if release:
        console.print(
            f"kill switch for {target} [green]released[/] by {shown(who)}; held runs resume "
            "where they stopped at the worker's next pass, with the approvals they had",
            highlight=False,
        )
        if scope is None:
            console.print("  (switches pulled for single plans stay engaged)", highlight=False)
        elif still:
            console.print(f"  [yellow]still held:[/] {shown(still)}", highlight=False)
        for run in affected:
            console.print(f"  resumes {shown(run.plan_id)} ({run.status})", highlight=False)
        return
    console.print(
        f"kill switch for {target} [bold red]engaged[/] by {shown(who)}: {shown(reason)}\n"
        "  dispatch holds within one executor step; no device command is sent while it holds.\n"
        "  The run is held, not ended: `fieldgate stop --release` resumes it, "
        "`fieldgate stop --abort PLAN` ends it and rolls touched devices back",
        highlight=False,
    )
    for run in affected:
        console.print(
            f"  held by the kill switch: {shown(run.plan_id)} ({run.status})", highlight=False
        )
