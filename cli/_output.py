"""How the CLI talks to people: one console for output, one for errors, one error policy."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from fieldgate.errors import (
    ConfigInvalid,
    FieldgateError,
    InputInvalid,
    NotFound,
    OperationDenied,
)
from fieldgate.terminal import shown

console = Console(soft_wrap=True)
"""Standard output."""
errors = Console(stderr=True, soft_wrap=True)
"""Standard error."""

P = ParamSpec("P")
R = TypeVar("R")

EXIT_INPUT = 2
"""Exit code for bad input: a file, an argument or a name that does not exist."""
EXIT_FAILED = 1
"""Exit code for everything else that went wrong on purpose (denied, broken chain, …)."""


def exit_code_for(error: FieldgateError) -> int:
    """The process exit code an error maps to."""
    # A variable of the environment that holds a value fieldgate cannot use is bad input too.
    bad_input = InputInvalid | ConfigInvalid | NotFound | OperationDenied
    return EXIT_INPUT if isinstance(error, bad_input) else EXIT_FAILED


def handles_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn fieldgate errors raised by a command into a message on stderr and an exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except FieldgateError as error:
            # one problem a line, never wrapped, so that tools and people can grep it
            prefix = "" if isinstance(error, InputInvalid) else "error: "
            for line in str(error).splitlines():
                errors.print(f"[red]{prefix}{shown(line)}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(exit_code_for(error)) from None

    return run


def json_option(contract: str) -> Any:
    """``--json`` of a list or show command whose output is the view contract ``contract``."""
    return typer.Option(
        False,
        "--json",
        help=f"Print it as JSON on stdout, and nothing else (JSON Schema: "
        f"`fieldgate schema {contract}`).",
    )


def print_view(view: BaseModel) -> None:
    """Print a view contract as JSON on stdout: no markup, every non-ASCII character escaped.

    ``ensure_ascii`` writes control, bidi and other non-ASCII characters as ``\\uXXXX``, so
    untrusted text in the view can never act on the terminal that shows it.
    """
    data = view.model_dump(mode="json", by_alias=True)
    typer.echo(json.dumps(data, ensure_ascii=True, indent=2, sort_keys=False))
