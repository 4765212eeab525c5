"""``fieldgate schema``: print the JSON Schema of a contract."""

from __future__ import annotations

import json

import typer

from fieldgate.cli._output import console, handles_errors
from fieldgate.schemas import CONTRACTS, json_schema


@handles_errors
def schema(
    name: str = typer.Argument(
        None, help=f"Contract name: {', '.join(sorted(CONTRACTS))}. Lists them when omitted."
    ),
) -> None:
    """Print the JSON Schema of a fieldgate/v1 contract."""
    if name is None:
        for known, model in sorted(CONTRACTS.items()):
            doc = (model.__doc__ or "").strip().splitlines()[0]
            console.print(f"[bold]{known:14}[/] {doc}", highlight=False)
        return
    typer.echo(json.dumps(json_schema(name), indent=2))
