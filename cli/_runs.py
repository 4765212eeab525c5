"""``fieldgate runs``: list the rollout runs; ``runs retry PLAN`` takes up a run held by a
policy engine error now.

A worker retries such a run on its own, waiting twice as long each time, a bounded number
of times; this command forces the retry once the engine works again (audited).
"""

from __future__ import annotations

import typer

from fieldgate.audit import ActorKind, EventKind
from fieldgate.cli._common import command_config, open_store
from fieldgate.cli._output import EXIT_FAILED, console, handles_errors, json_option, print_view
from fieldgate.cli._rollout import DbOption, ModelOption, find_run, refuse, runs_table
from fieldgate.cli._worker import (
    BrokerOption,
    GatewayOption,
    MaxSoakOption,
    TransportOption,
    check_transport,
    execute,
    open_for,
    soak_settings,
)
from fieldgate.terminal import shown
from fieldgate.views import RunItem, RunsList

runs_app = typer.Typer(
    help="Rollout runs: list them, retry one held by a policy engine error.", no_args_is_help=True
)


@runs_app.command("list")
@handles_errors
def list_(
    active: bool = typer.Option(False, "--active", help="Only runs that have not ended."),
    db: str = DbOption,
    json_: bool = json_option("runs-list"),
) -> None:
    """List the rollout runs, oldest first: plan, status or outcome, who asked, what."""
    with open_store(db) as store:
        runs = [r for r in store.runs.list() if not active or r.status != "done"]
    if json_:
        items = []
        for run in runs:
            held = run.detail.get("held") if run.status == "held" else None
            items.append(
                RunItem(
                    plan_id=run.plan_id,
                    thread_id=run.thread_id,
                    status=run.status,
                    outcome=run.outcome,
                    held_by=held.get("kind") if isinstance(held, dict) else None,
                    requester=run.actor,
                    request=run.request,
                    created_at=run.created_at,
                    updated_at=run.updated_at,
                )
            )
        print_view(RunsList(runs=items))
        return
    console.print(runs_table(runs, "runs"))


@runs_app.command("retry")
@handles_errors
def retry(
    plan: str = typer.Argument(..., metavar="PLAN", help="The held plan."),
    actor: str = typer.Option(None, "--as", help="Who (default: the current user)."),
    model: str = ModelOption,
    db: str = DbOption,
    transport: str = TransportOption,
    broker: str = BrokerOption,
    gateway_id: str = GatewayOption,
    max_soak: float = MaxSoakOption,
) -> None:
    """Retry a run held by a policy engine error now, where it stopped (no new approvals).

    Exits 1 when the engine still fails (the run stays held).
    """
    config = command_config(db, model)
    check_transport(transport)
    who = actor or config.actor()
    with open_for(config, transport, broker, gateway_id, soak_settings(max_soak)) as orchestrator:
        store = orchestrator.ctx.store
        run = find_run(store, plan)
        if run.outcome:
            refuse(f"plan {run.plan_id} already ended ({run.outcome}); there is nothing to retry")
        held = (orchestrator.view(run.thread_id).values.get("execution") or {}).get("held")
        if run.status != "held" or not held or held.get("kind") != "policy_engine":
            refuse(
                f"plan {run.plan_id} is not held by a policy engine error ({run.status}); "
                "`fieldgate worker` takes up queued runs, `fieldgate stop --release` held ones"
            )
        store.audit.append(
            EventKind.retry,
            ActorKind.human,
            who,
            {"attempts": held.get("attempts"), "was": held.get("reason")},
            plan_id=run.plan_id,
            thread_id=run.thread_id,
        )
        console.print(
            f"retrying {shown(run.plan_id)} for {shown(who)} after {held.get('attempts')} "
            "policy engine error(s)",
            highlight=False,
        )
        view = execute(orchestrator, run)
    again = view.held
    if again and again.get("kind") == "policy_engine":
        raise typer.Exit(EXIT_FAILED)
