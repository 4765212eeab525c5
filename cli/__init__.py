"""The ``fieldgate`` command line."""

from __future__ import annotations

from fieldgate.cli._app import app


def main() -> None:
    """Run the ``fieldgate`` command."""
    app()


__all__ = ["app", "main"]
