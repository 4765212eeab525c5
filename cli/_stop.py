"""``fieldgate stop``: the kill switch, for one plan or for every plan."""

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
    release: bool = typer.Option(False, "--release", help="Release the switch instead."),
    reason: str = typer.Option(None, "--reason", help="Why (kept in the audit log)."),
    actor: str = typer.Option(None, "--as", help="Who (default: the current user)."),
    db: str = DbOption,
) -> None:
    """Pull the kill switch: dispatch halts within one executor step; --release lets it go.

    fieldgate stop PLAN | fieldgate stop --all [--reason TEXT] | fieldgate stop --release PLAN|--all
    """
    if (plan is None) == (not every):
        refuse("name one PLAN or --all (not both)")
    config = command_config(db)
    who = actor or config.actor()
    reason = reason or ("released" if release else "stopped") + " from the command line"
    with Store.open(config.database_url) as store:
        scope = None
        if plan is not None:
            run = find_run(store, plan)
            scope = run.plan_id
            if run.outcome and not release:
                console.print(
                    f"[yellow]note:[/] plan {scope} already ended ({run.outcome}); "
                    "the switch stays engaged for it",
                    highlight=False,
                )
        target = f"plan {scope}" if scope else "every plan"
        if release:
            store.stops.release(scope, who, reason)
        else:
            store.stops.engage(scope, who, reason)
        store.audit.append(
            EventKind.stop,
            ActorKind.human,
            who,
            {
                "scope": scope or "*",
                "engaged": not release,
                "reason": reason,
            },
            plan_id=scope,
        )
        affected = [
            r for r in store.runs.list(OPEN_STATUSES) if scope is None or r.plan_id == scope
        ]
    if release:
        console.print(
            f"kill switch for {target} [green]released[/] by {shown(who)}; dispatch may go on",
            highlight=False,
        )
        if scope is None:
            console.print("  (switches pulled for single plans stay engaged)", highlight=False)
        return
    console.print(
        f"kill switch for {target} [bold red]engaged[/] by {shown(who)}: {shown(reason)}\n"
        "  dispatch halts within one executor step; no device command is sent while it holds",
        highlight=False,
    )
    for run in affected:
        console.print(f"  affects {shown(run.plan_id)} ({run.status})", highlight=False)
