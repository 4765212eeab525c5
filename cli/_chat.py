"""``fieldgate chat``: ask for rollouts in the terminal; see the plan, dry run and verdict."""

from __future__ import annotations

import difflib
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from fieldgate.cli._common import command_config
from fieldgate.cli._output import console, errors, exit_code_for
from fieldgate.cli._questions import answer_question
from fieldgate.cli._rollout import (
    DbOption,
    ModelOption,
    find_run,
    freeze_line,
    pending_hold,
    print_rationale,
    print_review,
    print_run,
    print_status,
    print_twin_clock,
    print_why,
    runs_table,
)
from fieldgate.cli._status import run_status, status_renderable
from fieldgate.config import Config
from fieldgate.errors import FieldgateError, NotFound, WithdrawRefused
from fieldgate.store import Conversation, Store
from fieldgate.terminal import shown

if TYPE_CHECKING:
    from fieldgate.graphs.runner import Orchestrator, RunView

HELP = """\
Type a rollout request, e.g. [bold]roll out pump-logic 1.9.0 to rtm-05[/]. Follow-ups revise
the last plan ([bold]make the canary smaller[/], [bold]only the Munich site[/],
[bold]use 1.9.1 instead[/]); [bold]yes[/] confirms a plan that needs no approvals;
[bold]withdraw[/] takes the last plan back; fleet questions
([bold]which version of edge-runtime runs in eu-west?[/]) create no plan. Commands:
  [bold]/status [PLAN][/]    where a plan stands (default: the last plan)
  [bold]/why [PLAN][/]       why: rationale, validator, policy decision and reasons (audit log)
  [bold]/withdraw [PLAN][/]  take back a plan that is not yet executing
  [bold]/plans[/]            every plan with its status and outcome
  [bold]/help[/]             this text
  [bold]/quit[/]             leave (so does Ctrl-D)"""

_WHY = re.compile(r"^\s*(why|why\s+(is\s+)?that|how come)\s*\??\s*$", re.I)
_STATUS = re.compile(
    r"^\s*(status|what'?s the status|where does it stand|how is it going)\s*\??\s*$", re.I
)
_YES = re.compile(r"^\s*(yes|y|yep|confirm|go ahead|ok|okay|do it)\s*[.!]?\s*$", re.I)
_WITHDRAW = re.compile(r"^\s*/?(withdraw|cancel)\b\s*(?P<plan>pl-[\w-]+)?\s*(?P<reason>.*)$", re.I)
_QUOTED = re.compile(r"'([^']+)'")


def submit_request(
    orchestrator: Orchestrator, request: str, requester: str, **given: Any
) -> RunView:
    """Plan, validate and gate ``request``; show the rationale as it arrives, then the result.

    ``given`` goes to :meth:`Orchestrator.submit` (conversation, revising, confirm).
    """

    def on_update(node: str, update: dict[str, Any]) -> None:
        if node == "planner" and update.get("plan"):
            plan = update["plan"]
            print_rationale(plan.get("revision"), plan.get("rationale", ""))
        elif node == "validator" and update.get("feedback"):
            print_review(update.get("review") or {})
            console.print("  [dim]back to the planner with these concerns[/]", highlight=False)

    view = orchestrator.submit(request, requester, on_update=on_update, **given)
    print_run(
        view, orchestrator.ctx.store.runs.get(view.thread_id), pending_hold(orchestrator, view)
    )
    print_twin_clock(orchestrator.ctx.store, view.plan_id)
    return view


def continued_request(pending: dict[str, Any], answer: str) -> str | None:
    """The open request with the clarification's answer put in, or None when ``answer``
    picks none of the candidates ("yes, pump-logic" and "the lyon one" pick one)."""
    request = str(pending.get("request", ""))
    words = set(re.findall(r"[a-z0-9][a-z0-9._-]*", answer.lower()))
    picked = [
        c
        for c in pending.get("candidates") or []
        if c.lower() in words
        or any(w in c.lower().split("-") or c.lower().startswith(w) for w in words if len(w) > 2)
    ]
    if len(picked) != 1:
        return None
    choice = picked[0]
    unknown = _QUOTED.findall(str(pending.get("question", "")))
    for word in unknown:
        replaced = re.sub(rf"(?i)(?<![\w-]){re.escape(word)}(?![\w-])", choice, request, count=1)
        if replaced != request:
            return replaced
    close = difflib.get_close_matches(choice.lower(), request.lower().split(), n=1, cutoff=0.6)
    if close:
        at = request.lower().split().index(close[0])
        parts = request.split()
        parts[at] = choice
        return " ".join(parts)
    return f"{request} {choice}"


class ChatSession:
    """One chat: who asks, with which settings (database, model); a line at a time.

    The conversation (its turns, the last plan, an open question) is kept in the store,
    so ``chat --resume`` continues it in another process.
    """

    def __init__(
        self,
        requester: str,
        config: Config,
        *,
        resume: str | None = None,
        confirm: bool | None = None,
    ) -> None:
        self.requester = requester
        self.config = config
        self.confirm = config.confirm if confirm is None else confirm
        self._resume = resume
        self.conversation: Conversation | None = None

    def _orchestrator(self) -> AbstractContextManager[Orchestrator]:
        from fieldgate.graphs.compose import open_orchestrator

        # Opened for every line: another process (a worker) moves the twin's clock on.
        return open_orchestrator(config=self.config)

    def check(self) -> None:
        """Fail early when the database, the fleet or the model cannot be opened; say so
        when a change freeze is in force. Start the conversation, or take up the one
        ``--resume`` names (an empty name: this requester's latest)."""
        with self._orchestrator() as orchestrator:
            store = orchestrator.ctx.store
            line = freeze_line(store)
            if self._resume is None:
                self.conversation = store.conversations.start(self.requester)
            else:
                found = (
                    store.conversations.get(self._resume)
                    if self._resume
                    else store.conversations.latest(self.requester)
                )
                if found is None:
                    raise NotFound(f"{self.requester} has no conversation to resume")
                if found.requester != self.requester:
                    raise NotFound(
                        f"conversation {found.conversation_id} is not {self.requester}'s"
                    )
                self.conversation = found
        if line:
            console.print(line, highlight=False)

    @property
    def _talk(self) -> Conversation:
        if self.conversation is None:
            raise AssertionError("check() starts the conversation")
        return self.conversation

    def _say(self, store: Store, role: str, text: str, plan_id: str | None = None) -> None:
        turn: dict[str, Any] = {"role": role, "text": text}
        if plan_id:
            turn["plan_id"] = plan_id
        self._talk.turns.append(turn)
        store.conversations.save(self._talk)

    def _last_plan(self, given: list[str], command: str) -> str:
        if given:
            return given[0]
        if self._talk.last_plan_id is None:
            raise FieldgateError(f"no plan in this conversation yet; {command} PLAN names one")
        return self._talk.last_plan_id

    def handle(self, line: str) -> bool:
        """Act on one line; False when the chat should end."""
        text = line.strip()
        if not text or text.startswith("#"):
            return True
        if text.startswith("/") and not _WITHDRAW.match(text):
            return self._command(text)
        with self._orchestrator() as orchestrator:
            self._line(orchestrator, text)
        return True

    def _command(self, text: str) -> bool:
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
            if len(args) > 1:
                raise FieldgateError(f"usage: {command} [PLAN] (/plans lists them)")
            with self._orchestrator() as orchestrator:
                plan = self._last_plan(args, command)
                if command == "/why":
                    print_why(orchestrator.ctx.store, plan)
                else:
                    self._status(orchestrator, plan)
        else:
            raise FieldgateError(f"unknown command {command}; /help lists the commands")
        return True

    def _status(self, orchestrator: Orchestrator, plan: str) -> None:
        run = find_run(orchestrator.ctx.store, plan)
        view = orchestrator.view(run.thread_id)
        frozen = freeze_line(orchestrator.ctx.store)
        if frozen:
            console.print(frozen, highlight=False)
        now = datetime.now(UTC)
        progress = status_renderable(run_status(orchestrator, run, now), now, brief=True)
        print_run(view, run, pending_hold(orchestrator, view), progress)
        print_twin_clock(orchestrator.ctx.store, run.plan_id)

    def _line(self, orchestrator: Orchestrator, text: str) -> None:
        store = orchestrator.ctx.store
        talk = self._talk
        if _WHY.match(text):
            print_why(store, self._last_plan([], "/why"))
            return
        if _STATUS.match(text):
            self._status(orchestrator, self._last_plan([], "/status"))
            return
        withdraw = _WITHDRAW.match(text)
        if withdraw:
            plan = self._last_plan([withdraw["plan"]] if withdraw["plan"] else [], "withdraw")
            self._withdraw(orchestrator, plan, withdraw["reason"].strip())
            return
        if _YES.match(text) and not talk.pending.get("question"):
            plan = self._last_plan([], "yes: confirm")
            run = find_run(store, plan)
            view = orchestrator.confirm(run.thread_id, self.requester)
            self._say(store, "user", text, plan)
            print_run(view, store.runs.get(view.thread_id), pending_hold(orchestrator, view))
            return
        answer = answer_question(store, text)
        if answer is not None:
            console.print(shown(answer), highlight=False)
            self._say(store, "user", text)
            self._say(store, "assistant", answer)
            return
        self._request(orchestrator, text)

    def _request(self, orchestrator: Orchestrator, text: str) -> None:
        store = orchestrator.ctx.store
        talk = self._talk
        earlier = [{"role": t["role"], "text": t["text"]} for t in talk.turns[-12:]]
        given: dict[str, Any] = {"conversation": earlier, "confirm": self.confirm}
        request = text
        revised: str | None = None
        continued = continued_request(talk.pending, text) if talk.pending.get("question") else None
        if continued is not None:
            request = continued
        elif talk.last_plan_id and not self._names_module(store, text):
            last = find_run(store, talk.last_plan_id)
            plan = orchestrator.view(last.thread_id).values.get("plan")
            if plan:
                given["revising"] = plan
                given["detail"] = {"supersedes": last.plan_id}
                revised = last.plan_id
        given.setdefault("detail", {})["conversation"] = talk.conversation_id
        view = submit_request(orchestrator, request, self.requester, **given)
        self._say(store, "user", text, view.plan_id)
        clarification = view.values.get("clarification") or {}
        if view.outcome == "needs_clarification":
            talk.pending = {
                "request": request if not revised else talk.pending.get("request", request),
                "question": clarification.get("question", ""),
                "candidates": clarification.get("candidates", []),
            }
            self._say(store, "assistant", clarification.get("question", ""), view.plan_id)
            return
        talk.last_plan_id = view.plan_id
        talk.pending = {"request": request}
        plan = view.values.get("plan") or {}
        summary = (
            f"plan {view.plan_id} r{plan.get('revision')}: {plan.get('module')} "
            f"{plan.get('version')}, {view.status if not view.outcome else view.outcome}"
        )
        self._say(store, "assistant", summary, view.plan_id)
        if revised and not view.outcome:
            self._supersede(orchestrator, revised, view.plan_id)

    @staticmethod
    def _names_module(store: Store, text: str) -> bool:
        words = set(re.findall(r"[a-z0-9][a-z0-9._-]*", text.lower()))
        return bool({r.manifest.name for r in store.catalog.list()} & words)

    def _supersede(self, orchestrator: Orchestrator, old: str, new: str) -> None:
        run = find_run(orchestrator.ctx.store, old)
        if run.outcome:
            return
        try:
            orchestrator.withdraw(run.thread_id, self.requester, f"superseded by {new}")
        except WithdrawRefused as refused:
            console.print(f"  {shown(old)} stays: {shown(refused)}", highlight=False)
            return
        console.print(f"  {shown(old)} withdrawn: superseded by {shown(new)}", highlight=False)

    def _withdraw(self, orchestrator: Orchestrator, plan: str, reason: str) -> None:
        store = orchestrator.ctx.store
        run = find_run(store, plan)
        view = orchestrator.withdraw(run.thread_id, self.requester, reason)
        self._say(store, "user", f"withdraw {plan}", plan)
        print_status(view, store.runs.get(view.thread_id))


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
    resume: bool = typer.Option(
        False, "--resume", help="Continue a conversation: the one named, else your latest."
    ),
    conversation: str = typer.Argument(
        None, metavar="[ID]", help="The conversation --resume continues (cv-…)."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Queue plans that need no approvals without asking."
    ),
) -> None:
    """Ask for rollouts in a chat with the planner; /help lists the commands.

    Reads one request a line; works with piped input (echo "roll out …" | fieldgate chat).
    A plan policy allows without approvals waits for your "yes" (a later line, or
    `fieldgate plans confirm PLAN`) unless --yes or FIELDGATE_CONFIRM=0. The conversation
    is stored: `chat --resume` continues your latest, `chat --resume ID` that one.
    """
    interactive = sys.stdin.isatty()
    try:
        config = command_config(db, model)
        requester = (actor or config.actor()).strip()
        if not requester:
            raise typer.BadParameter("the requester id is empty", param_hint="--as")
        if conversation and not resume:
            raise typer.BadParameter("a conversation id goes with --resume", param_hint="ID")
        session = ChatSession(
            requester,
            config,
            resume=(conversation or "") if resume else None,
            confirm=False if yes else None,
        )
        session.check()
    except FieldgateError as error:
        errors.print(f"[red]error: {shown(error, multiline=True)}[/]", highlight=False)
        raise typer.Exit(exit_code_for(error)) from None
    if interactive:
        console.print(
            f"fieldgate chat as [bold]{shown(session.requester)}[/] (conversation "
            f"{shown(session._talk.conversation_id)}); /help lists the commands, "
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
