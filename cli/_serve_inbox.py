"""``fieldgate serve``: the approval inbox in the browser, and ``serve token`` to sign in to it."""

from __future__ import annotations

import typer

from fieldgate.cli._common import command_config
from fieldgate.cli._output import EXIT_INPUT, console, errors, handles_errors
from fieldgate.cli._rollout import DbOption
from fieldgate.cli._serve import _is_loopback
from fieldgate.terminal import shown
from fieldgate.tokens import TOKENS_FILE, TokenBook, issue_token

DEFAULT_PORT = 8765

serve_app = typer.Typer(invoke_without_command=True)
"""``serve`` runs the inbox; ``serve token`` makes a person's sign-in token."""


@serve_app.callback()
@handles_errors
def serve(
    ctx: typer.Context,
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", help="Port to listen on."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind: loopback unless --public is given."
    ),
    public: bool = typer.Option(
        False,
        "--public",
        help="Allow binding beyond this machine (put TLS in front: tokens travel in the clear).",
    ),
    db: str = DbOption,
) -> None:
    """Serve the approval inbox (the plans that wait for your roles, and live run pages).

    People sign in with a bearer token (`fieldgate serve token --as WHO`); decisions are
    signed in the browser with the approver's own key, which the server never sees.
    """
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from fieldgate.cli._inbox import inbox_app
    from fieldgate.graphs.compose import open_orchestrator

    if not _is_loopback(host):
        if not public:
            errors.print(
                f"[red]error: --host {shown(host)} serves the inbox beyond this machine; "
                "add --public if you mean it (and put TLS in front of it)[/]",
                highlight=False,
            )
            raise typer.Exit(EXIT_INPUT)
        errors.print(
            f"[yellow]warning: serving the inbox on {shown(host)}, beyond this machine; "
            "bearer tokens travel in the clear without TLS in front[/]",
            highlight=False,
        )
    config = command_config(db)
    tokens = TokenBook(config.home / TOKENS_FILE)
    with open_orchestrator(config=config) as orchestrator:
        app = inbox_app(orchestrator, tokens)
        console.print(f"inbox at http://{host}:{port}/  (press Ctrl-C to stop)", highlight=False)
        console.print(
            "  sign in with a token from `fieldgate serve token --as YOU`", highlight=False
        )
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)


@serve_app.command("token")
@handles_errors
def token(
    person: str = typer.Option(..., "--as", help="Who signs in with the token."),
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", help="Port the inbox listens on."),
) -> None:
    """Make a bearer token for PERSON (replacing theirs) and print it with the sign-in link.

    Only its sha256 is kept, in FIELDGATE_HOME/inbox-tokens.json; the token is shown once.
    """
    config = command_config()
    made = issue_token(config.home / TOKENS_FILE, person)
    console.print(f"inbox token for [bold]{shown(person)}[/] (shown once):", highlight=False)
    console.print(made, highlight=False, soft_wrap=True)
    console.print(
        f"  open http://127.0.0.1:{port}/#token={made}  (the part after # never reaches a "
        "server log)",
        highlight=False,
        soft_wrap=True,
    )
