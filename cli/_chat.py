"""``fieldgate chat``: ask for rollouts in the terminal; see the plan, dry run and verdict."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from fieldgate.cli._common import command_config
from fieldgate.cli._output import console, errors, exit_code_for
from fieldgate.cli._rollout import (
    DbOption,
    ModelOption,
    find_run,
    freeze_line,
    pending_hold,
    print_rationale,
    print_review,
    print_run,
    print_twin_clock,
    print_why,
    runs_table,
)
from fieldgate.cli._status import run_status, status_renderable
from fieldgate.config import Config
from fieldgate.errors import FieldgateError
from fieldgate.terminal import shown

if TYPE_CHECKING:
    from fieldgate.graphs.runner import Orchestrator, RunView

HELP = """\
Type a rollout request, e.g. [bold]roll out pump-logic 1.9.0 to rtm-05[/]. Commands:
  [bold]/status PLAN[/]  where a plan stands: plan, dry run, verdict, approvals, execution
  [bold]/why PLAN[/]     why: rationale, validator, policy decision and reasons (audit log)
  [bold]/plans[/]        every plan with its status and outcome
  [bold]/help[/]         this text
  [bold]/quit[/]         leave (so does Ctrl-D)"""


def submit_request(orchestrator: Orchestrator, request: str, requester: str) -> RunView:
    """Plan, validate and gate ``request``; show the rationale as it arrives, then the result."""

    def on_update(node: str, update: dict[str, Any]) -> None:
        if node == "planner" and update.get("plan"):
            plan = update["plan"]
            print_rationale(plan.get("revision"), plan.get("rationale", ""))
        elif node == "validator" and update.get("feedback"):
            print_review(update.get("review") or {})
            console.print("  [dim]back to the planner with these concerns[/]", highlight=False)

    view = orchestrator.submit(request, requester, on_update=on_update)
    print_run(
        view, orchestrator.ctx.store.runs.get(view.thread_id), pending_hold(orchestrator, view)
    )
    print_twin_clock(orchestrator.ctx.store, view.plan_id)
    return view


class ChatSession:
    """One chat: who asks, with which settings (database, model); a line at a time."""

    def __init__(self, requester: str, config: Config) -> None:
        self.requester = requester
        self.config = config

    def _orchestrator(self) -> AbstractContextManager[Orchestrator]:
        from fieldgate.graphs.compose import open_orchestrator

        # Opened for every line: another process (a worker) moves the twin's clock on.
        return open_orchestrator(config=self.config)

    def check(self) -> None:
        """Fail early when the database, the fleet or the model cannot be opened; say so
        when a change freeze is in force."""
        with self._orchestrator() as orchestrator:
            line = freeze_line(orchestrator.ctx.store)
        if line:
            console.print(line, highlight=False)

    def handle(self, line: str) -> bool:
        """Act on one line; False when the chat should end."""
        text = line.strip()
        if not text or text.startswith("#"):
            return True
        if not text.startswith("/"):
            with self._orchestrator() as orchestrator:
                submit_request(orchestrator, text, self.requester)
            return True
        try:
            command, *args = shlex.split(text)
        except ValueError as exc:
            raise FieldgateError(f"cannot read {text!r}: {exc}") from None
        if command in ("/quit", "/exit", "/q"):
            return False
        if command == "/help":
            console.print(HELP, highlight=False)
        elif command == "/plans":
            with self._orchestrator() as orchestrator:
                console.print(runs_table(orchestrator.ctx.store.runs.list()))
        elif command in ("/status", "/why"):
            if len(args) != 1:
                raise FieldgateError(f"usage: {command} PLAN (/plans lists them)")
            with self._orchestrator() as orchestrator:
                if command == "/why":
                    print_why(orchestrator.ctx.store, args[0])
                else:
                    run = find_run(orchestrator.ctx.store, args[0])
                    view = orchestrator.view(run.thread_id)
                    frozen = freeze_line(orchestrator.ctx.store)
                    if frozen:
                        console.print(frozen, highlight=False)
                    now = datetime.now(UTC)
                    progress = status_renderable(
                        run_status(orchestrator, run, now), now, brief=True
                    )
                    print_run(view, run, pending_hold(orchestrator, view), progress)
                    print_twin_clock(orchestrator.ctx.store, run.plan_id)
        else:
            raise FieldgateError(f"unknown command {command}; /help lists the commands")
        return True


def _lines(interactive: bool) -> Iterator[str]:
    if not interactive:
        yield from sys.stdin
        return
    while True:
        try:
            yield console.input("[bold cyan]you ›[/] ")
        except EOFError:
            console.print()
            return


def chat(
    actor: str = typer.Option(
        None, "--as", help="Who asks (default: FIELDGATE_USER, else the login name)."
    ),
    model: str = ModelOption,
    db: str = DbOption,
) -> None:
    """Ask for rollouts in a chat with the planner; /help lists the commands.

    Reads one request a line; works with piped input (echo "roll out …" | fieldgate chat).
    """
    interactive = sys.stdin.isatty()
    try:
        config = command_config(db, model)
        requester = (actor or config.actor()).strip()
        if not requester:
            raise typer.BadParameter("the requester id is empty", param_hint="--as")
        session = ChatSession(requester, config)
        session.check()
    except FieldgateError as error:
        errors.print(f"[red]error: {shown(error, multiline=True)}[/]", highlight=False)
        raise typer.Exit(exit_code_for(error)) from None
    if interactive:
        console.print(
            f"fieldgate chat as [bold]{shown(session.requester)}[/]; /help lists the commands, "
            "/quit or Ctrl-D leaves",
            highlight=False,
        )
    try:
        for line in _lines(interactive):
            if not interactive and line.strip() and not line.lstrip().startswith(("/", "#")):
                console.rule(f"[bold]› {shown(line.strip())}", align="left")
            try:
                if not session.handle(line):
                    break
            except FieldgateError as error:
                for message in str(error).splitlines():
                    errors.print(f"[red]error: {shown(message)}[/]", highlight=False)
    except KeyboardInterrupt:
        console.print()
