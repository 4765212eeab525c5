"""The typer application and its command groups."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="fieldgate",
    help="Agentic, policy-gated rollouts of prefabricated modules to edge fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
