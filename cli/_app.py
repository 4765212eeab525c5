"""The typer application and its command groups."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperOption

from fieldgate.cli._approvals import approvals_app
from fieldgate.cli._audit import audit_app
from fieldgate.cli._broker import broker_app
from fieldgate.cli._catalog import catalog_app
from fieldgate.cli._chat import chat
from fieldgate.cli._db import db_app
from fieldgate.cli._edge import agent, up
from fieldgate.cli._eval import eval_app
from fieldgate.cli._fleet import fleet_app
from fieldgate.cli._freeze import freeze
from fieldgate.cli._init import demo, init
from fieldgate.cli._keys import keys_app
from fieldgate.cli._plans import plans_app
from fieldgate.cli._policy import policy_app
from fieldgate.cli._runs import runs_app
from fieldgate.cli._schema import schema
from fieldgate.cli._serve import serve_model
from fieldgate.cli._serve_inbox import serve_app
from fieldgate.cli._status import status
from fieldgate.cli._stop import stop
from fieldgate.cli._worker import worker

_value_type = TyperOption.display_type_rich


def _flag_without_type(self: TyperOption, ctx: Any) -> str | None:
    """The type column of an option's help: none for a flag, which takes no value (typer
    0.29 prints ``<bool>`` there, as if ``--all`` wanted an argument)."""
    return None if self.is_flag else _value_type(self, ctx)


TyperOption.display_type_rich = _flag_without_type  # type: ignore[method-assign]

app = typer.Typer(
    name="fieldgate",
    help="Agentic, policy-gated rollouts of prefabricated modules to edge fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(init)
app.command()(demo)
app.command()(schema)
app.command()(chat)
app.command()(status)
app.command()(worker)
app.command()(stop)
app.command()(freeze)
app.command()(agent)
app.add_typer(catalog_app, name="catalog")
fleet_app.command("up")(up)
app.add_typer(fleet_app, name="fleet")
app.add_typer(approvals_app, name="approvals")
app.add_typer(runs_app, name="runs")
app.add_typer(plans_app, name="plans")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(broker_app, name="broker")
app.command("serve-model")(serve_model)
app.add_typer(serve_app, name="serve")

app.add_typer(policy_app, name="policy")
app.add_typer(eval_app, name="eval")
