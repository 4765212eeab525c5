"""The typer application and its command groups."""

from __future__ import annotations

import typer

from fieldgate.cli._audit import audit_app
from fieldgate.cli._catalog import catalog_app
from fieldgate.cli._fleet import fleet_app
from fieldgate.cli._init import demo, init
from fieldgate.cli._schema import schema

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
app.add_typer(catalog_app, name="catalog")
app.add_typer(fleet_app, name="fleet")
app.add_typer(audit_app, name="audit")
