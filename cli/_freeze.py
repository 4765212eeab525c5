"""``fieldgate freeze on|off``: the change freeze, kept in the store for every process.

Who may set or lift it is the operations policy's call (``policies/operations.rego``);
every attempt, allowed or not, is audited. While it is on, the planning gate denies
forward rollouts (rule D9) and the tools policy holds running ones at their next
executor step (rule T7); rollbacks go on.
"""

from __future__ import annotations

import typer

from fieldgate.audit import ActorKind, EventKind
from fieldgate.cli._common import command_config
from fieldgate.cli._output import console, handles_errors
from fieldgate.cli._rollout import DbOption, refuse
from fieldgate.errors import OperationDenied
from fieldgate.policy import OperationInput, PolicyGate, RegoEngine
from fieldgate.store import OPEN_STATUSES, Store
from fieldgate.terminal import shown

_ACTIONS = {"on": "freeze", "off": "unfreeze"}


@handles_errors
def freeze(
    state: str = typer.Argument(..., metavar="on|off", help="Set the freeze or lift it."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the audit log)."),
    actor: str = typer.Option(None, "--as", help="Who (default: the current user)."),
    db: str = DbOption,
) -> None:
    """Set or lift the change freeze for everyone: forward rollouts hold, rollbacks go on.

    fieldgate freeze on --reason TEXT [--as WHO] | fieldgate freeze off --reason TEXT
    """
    if state not in _ACTIONS:
        refuse(f"freeze takes on or off, not {state!r}")
    if not reason.strip():
        refuse("--reason is empty: say why the freeze is set or lifted")
    config = command_config(db)
    who = (actor or config.actor()).strip()
    on = state == "on"
    with Store.open(config.database_url) as store:
        gate = PolicyGate(RegoEngine(), store.audit)
        decision = gate.operation(
            OperationInput(action=_ACTIONS[state], actor=who, roster=config.roster or None)
        )
        with store.writing(f"setting the change freeze {state}") as tx:
            store.audit.append(
                EventKind.freeze,
                ActorKind.human,
                who,
                {"on": on, "reason": reason, "allow": decision.allow, "policy": decision.reason},
                tx=tx,
            )
            if decision.allow:
                store.freeze.set(on, who, reason, tx=tx)
        if not decision.allow:
            raise OperationDenied(f"freeze {state}: the policy denies it: {decision.reason}")
        affected = store.runs.list(OPEN_STATUSES)
    if on:
        console.print(
            f"change freeze [bold red]on[/], set by {shown(who)}: {shown(reason)}\n"
            "  forward rollouts are denied at planning and hold at their next executor step "
            "(nothing new is dispatched); rollbacks go on",
            highlight=False,
        )
    else:
        console.print(
            f"change freeze [green]lifted[/] by {shown(who)}: {shown(reason)}\n"
            "  held rollouts resume where they stopped at the worker's next pass, with the "
            "approvals they had",
            highlight=False,
        )
    for run in affected:
        console.print(f"  {shown(run.plan_id)} ({run.status})", highlight=False)
