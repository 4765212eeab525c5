"""``fieldgate serve-model``: the offline model as an OpenAI-compatible endpoint."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import typer

from fieldgate.cli._output import console, errors, handles_errors


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@handles_errors
def serve_model(
    port: int = typer.Option(8000, "--port", "-p", help="Port to listen on (0: any free port)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind: loopback unless you mean otherwise."
    ),
    replay: Path = typer.Option(
        None,
        "--replay",
        exists=True,
        dir_okay=False,
        help="Answer from this recorded-responses file first (see tests/recorded/).",
    ),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar="FIELDGATE_SERVE_API_KEY",
        help="Require this bearer token (default: accept any client).",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every request."),
) -> None:
    """Serve the offline model as an OpenAI-compatible chat-completions endpoint.

    Point any OpenAI client at it: OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 and
    FIELDGATE_MODEL=openai:offline run fieldgate through the real openai client path.
    """
    # Imported here: the core package never imports the agents at import time.
    from fieldgate.agents.offline.server import OfflineBackend, ReplayBackend, serve_forever

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not _is_loopback(host):
        errors.print(
            f"[yellow]warning: serving on {host}, beyond this machine"
            f"{'' if api_key else ', without an API key'}[/]",
            highlight=False,
        )
    backend = ReplayBackend.from_file(replay) if replay else OfflineBackend()

    def announce(base_url: str) -> None:
        source = f"recording {replay}, then the offline model" if replay else "the offline model"
        console.print(f"serving {source} at {base_url}", highlight=False)
        console.print(
            f"  export OPENAI_BASE_URL={base_url} FIELDGATE_MODEL=openai:offline", highlight=False
        )
        console.print("  press Ctrl-C to stop", highlight=False)

    try:
        serve_forever(backend, host=host, port=port, api_key=api_key, on_ready=announce)
    except KeyboardInterrupt:
        console.print("stopped")
    except OSError as exc:
        errors.print(f"[red]error: cannot serve on {host}:{port}: {exc}[/]", highlight=False)
        raise typer.Exit(1) from None
