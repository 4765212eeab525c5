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
from fieldgate.cli._questions import (
    QUESTIONS_ANSWERED,
    answer_plan_question,
    answer_question,
    asks_for_action,
    unanswerable_question,
)
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
the last plan and only ever narrow it ([bold]only muc-01[/], [bold]leave out ber-03[/],
[bold]a canary of 2[/], [bold]waves of 10[/], [bold]use 2.0.0 instead[/], [bold]in the
maintenance window[/]); an answer to a question continues it ([bold]yes[/] takes the only
candidate); [bold]yes[/] confirms a plan that needs no approvals; [bold]withdraw[/] takes the
last plan back; [bold]why?[/], [bold]status?[/], [bold]how many devices?[/] and fleet questions
([bold]which version of edge-runtime runs in eu-west?[/]) create no plan. Commands:
  [bold]/status [PLAN][/]    where a plan stands (default: the last plan)
  [bold]/why [PLAN][/]       why: rationale, validator, policy decision and reasons (audit log)
  [bold]/withdraw [PLAN][/]  take back a plan that is not yet executing
  [bold]/plans[/]            every plan with its status and outcome
  [bold]/help[/]             this text
  [bold]/quit[/]             leave (so does Ctrl-D)"""

_WHY = re.compile(
    r"^\s*(?:(?:and|so|but|ok|okay|hm+),?\s+)?(?:why(?:\s+(?:is\s+|was\s+)?(?:that|this|so))?"
    r"(?:\s+this\s+plan)?|how come|explain(?:\s+(?:it|that|this|the plan))?"
    # "why is the canary 1?" asks about the plan; "why is edge-runtime 3.2.0 on ber-03?" does not
    r"|why\b(?!\s+not\b)(?=[^?]*\b(?:canary|waves?|plan|that|this|it|schedule|window|approvals?"
    r"|policy)\b)[^?]*\?)\s*\??\s*$",
    re.I,
)
_STATUS = re.compile(
    r"^\s*(?:(?:and|so|ok|okay|well),?\s+)?(?:(?:what(?:'?s|\s+is)\s+)?(?:the\s+)?status"
    r"(?:\s+(?:of|on)\s+(?:it|that|this|the plan|my plan|the rollout|my rollout))?"
    r"(?:\s+(?:please|now))?|where\s+(?:does|do|is)\s+(?:it|that|this|the plan|the rollout)"
    r"(?:\s+stand)?|how(?:'?s|\s+is)\s+it\s+going|how\s+is\s+(?:the plan|the rollout)"
    r"(?:\s+going)?|where are we|is it done(?:\s+yet)?|any news)\s*[?.!]*\s*$",
    re.I,
)
_YES = re.compile(r"^\s*(yes|y|yep|yeah|confirm|go ahead|ok|okay|do it)\s*[.!]?\s*$", re.I)
_WITHDRAW = re.compile(r"^\s*/?(withdraw|cancel)\b\s*(?P<plan>pl-[\w-]+)?\s*(?P<reason>.*)$", re.I)
_QUOTED = re.compile(r"'([^']+)'")


def submit_request(
    orchestrator: Orchestrator,
    request: str,
    requester: str,
    *,
    chatting: bool = False,
    **given: Any,
) -> RunView:
    """Plan, validate and gate ``request``; show the rationale as it arrives, then the result.

    ``given`` goes to :meth:`Orchestrator.submit` (conversation, revising, confirm); with
    ``chatting`` a question back says to answer it on the next line.
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
        view,
        orchestrator.ctx.store.runs.get(view.thread_id),
        pending_hold(orchestrator, view),
        chatting=chatting,
    )
    print_twin_clock(orchestrator.ctx.store, view.plan_id)
    return view


def continued_request(pending: dict[str, Any], answer: str) -> str | None:
    """The open request with the clarification's answer put in, or None when ``answer``
    picks none of the candidates ("yes, pump-logic" and "the lyon one" pick one; a bare
    "yes" picks the only one)."""
    request = str(pending.get("request", ""))
    words = set(re.findall(r"[a-z0-9][a-z0-9._-]*", answer.lower()))
    candidates = list(pending.get("candidates") or [])
    picked = [
        c
        for c in candidates
        if c.lower() in words
        or any(w in c.lower().split("-") or c.lower().startswith(w) for w in words if len(w) > 2)
    ]
    if not picked and len(candidates) == 1 and _YES.match(answer):
        picked = candidates
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
            plan = self._last_plan([], "/why")
            print_why(store, plan)
            self._say(store, "user", text, plan)
            self._say(store, "assistant", f"why {plan}: shown from the audit log", plan)
            return
        if _STATUS.match(text):
            plan = self._last_plan([], "/status")
            self._status(orchestrator, plan)
            self._say(store, "user", text, plan)
            self._say(store, "assistant", f"{plan}: {find_run(store, plan).status}", plan)
            return
        withdraw = _WITHDRAW.match(text)
        if withdraw:
            plan = self._last_plan([withdraw["plan"]] if withdraw["plan"] else [], "withdraw")
            self._withdraw(orchestrator, plan, withdraw["reason"].strip())
            return
        if _YES.match(text):
            candidates = list(talk.pending.get("candidates") or [])
            if talk.pending.get("question") and len(candidates) > 1:
                raise FieldgateError(
                    f"which one? The open question has several answers: {', '.join(candidates)}"
                )
            if not talk.pending.get("question") or not candidates:
                self._confirm(orchestrator, text)
                return
            # "yes" to "did you mean muc-01?": the one candidate is the answer
        answer = answer_question(store, text) or self._plan_answer(orchestrator, text)
        if answer is None and unanswerable_question(text):
            answer = QUESTIONS_ANSWERED
        if answer is not None:
            console.print(shown(answer), highlight=False)
            self._say(store, "user", text)
            self._say(store, "assistant", answer)
            return
        self._request(orchestrator, text)

    def _confirm(self, orchestrator: Orchestrator, text: str) -> None:
        store = orchestrator.ctx.store
        plan = self._last_plan([], "yes: confirm")
        run = find_run(store, plan)
        view = orchestrator.confirm(run.thread_id, self.requester)
        self._talk.pending = {"request": self._talk.pending.get("request", "")}
        self._say(store, "user", text, plan)
        print_run(view, store.runs.get(view.thread_id), pending_hold(orchestrator, view))
        self._say(store, "assistant", f"{plan}: {view.status}", plan)

    def _plan_answer(self, orchestrator: Orchestrator, text: str) -> str | None:
        plan_id = self._talk.last_plan_id
        if plan_id is None:
            return None
        plan = self._draft(orchestrator, plan_id)
        return answer_plan_question(orchestrator.ctx.store, plan_id, plan, text) if plan else None

    @staticmethod
    def _draft(orchestrator: Orchestrator, plan_id: str) -> dict[str, Any] | None:
        """The plan ``plan_id`` as it stands in its run (its latest revision), if it has one."""
        run = find_run(orchestrator.ctx.store, plan_id)
        plan = orchestrator.view(run.thread_id).values.get("plan")
        return dict(plan) if plan else None

    def _request(self, orchestrator: Orchestrator, text: str) -> None:
        store = orchestrator.ctx.store
        talk = self._talk
        earlier = [{"role": t["role"], "text": t["text"]} for t in talk.turns[-12:]]
        given: dict[str, Any] = {"conversation": earlier, "confirm": self.confirm}
        request = text
        revised: str | None = None
        continued = continued_request(talk.pending, text) if talk.pending.get("question") else None
        if continued is not None:
            # an answer continues the open request: a follow-up's question revises the plan
            # it was asked about, with the follow-up's words
            request = continued
            revised = talk.pending.get("revising")
        elif talk.last_plan_id:
            revised = talk.last_plan_id
        revising = self._draft(orchestrator, revised) if revised else None
        revising_module = str((revising or {}).get("module", ""))
        if revising and not self._new_request(store, request, revising_module):
            given["revising"] = revising
            given["detail"] = {"supersedes": revised}
        else:
            revised = None
        given.setdefault("detail", {})["conversation"] = talk.conversation_id
        view = submit_request(orchestrator, request, self.requester, chatting=True, **given)
        self._say(store, "user", text, view.plan_id)
        clarification = view.values.get("clarification") or {}
        if view.outcome == "needs_clarification":
            talk.pending = {
                "request": request,
                "question": clarification.get("question", ""),
                "candidates": clarification.get("candidates", []),
            }
            if revised:
                talk.pending["revising"] = revised
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
        # a model may answer a follow-up with a plan for another module: a plan of its own
        if revised and not view.outcome and plan.get("module") == revising_module:
            self._supersede(orchestrator, revised, view.plan_id)

    @staticmethod
    def _new_request(store: Store, text: str, module: str) -> bool:
        """Whether ``text`` is a request of its own rather than a follow-up on a plan of
        ``module``: it names another module, or names the module and asks for an action."""
        words = set(re.findall(r"[a-z0-9][a-z0-9._-]*", text.lower()))
        named = {r.manifest.name for r in store.catalog.list()} & words
        return bool(named - {module}) or bool(named and asks_for_action(text))

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
