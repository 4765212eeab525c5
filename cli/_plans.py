"""``fieldgate plans confirm|withdraw PLAN``: the requester's yes, or taking a plan back.

A plan policy allows without approvals waits for its requester's yes when it was asked
for in the chat (unless ``--yes`` or ``FIELDGATE_CONFIRM=0``); ``confirm`` gives it from a
script. ``withdraw`` ends a plan that is not yet executing (audited); once its first wave
started, ``fieldgate stop`` is the way to halt it.
"""

from __future__ import annotations

import typer

from fieldgate.cli._common import command_config
from fieldgate.cli._output import handles_errors
from fieldgate.cli._rollout import DbOption, find_run, pending_hold, print_run, print_status

plans_app = typer.Typer(help="Plans: confirm one that needs no approvals, or withdraw one.")

_PLAN = typer.Argument(..., metavar="PLAN", help="The plan id.")
_AS = typer.Option(None, "--as", help="The requester (default: the current user).")


@plans_app.command("confirm")
@handles_errors
def confirm(plan: str = _PLAN, actor: str = _AS, db: str = DbOption) -> None:
    """Say yes to your plan that waits for it: it is queued for a worker (audited)."""
    from fieldgate.graphs.compose import open_orchestrator

    config = command_config(db)
    with open_orchestrator(config=config) as orchestrator:
        run = find_run(orchestrator.ctx.store, plan)
        view = orchestrator.confirm(run.thread_id, actor or config.actor())
        print_run(
            view, orchestrator.ctx.store.runs.get(view.thread_id), pending_hold(orchestrator, view)
        )


@plans_app.command("withdraw")
@handles_errors
def withdraw(
    plan: str = _PLAN,
    actor: str = _AS,
    reason: str = typer.Option("", "--reason", "-m", help="Why (audited)."),
    db: str = DbOption,
) -> None:
    """Withdraw your plan that is not yet executing; refused once its first wave started."""
    from fieldgate.graphs.compose import open_orchestrator

    config = command_config(db)
    with open_orchestrator(config=config) as orchestrator:
        run = find_run(orchestrator.ctx.store, plan)
        view = orchestrator.withdraw(run.thread_id, actor or config.actor(), reason)
        print_status(view, orchestrator.ctx.store.runs.get(view.thread_id))
