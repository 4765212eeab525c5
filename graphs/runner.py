"""Driving the rollout graph: submit requests, answer approvals, let workers execute.

The CLI, the worker, the eval harness and the tests all go through here, so they
drive the very same graph the same way.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Command, RunnableConfig

from fieldgate.agents.planner import PlanDraft
from fieldgate.approvals import Approval, Decision, PlanEdit, draft_hash
from fieldgate.audit import ActorKind, EventKind
from fieldgate.errors import ApprovalInvalid, NotFound, WithdrawRefused
from fieldgate.graphs._record import finish
from fieldgate.graphs.approval import ApprovalResume, EditedAction, ReviewDecision
from fieldgate.graphs.confirmation import CONFIRMATION, ConfirmResume
from fieldgate.graphs.planning import accept_run
from fieldgate.graphs.rollout import compile_graph
from fieldgate.runtime import Context
from fieldgate.signing import SigningKey


@dataclass
class RunView:
    """Where one run stands."""

    thread_id: str
    plan_id: str
    values: dict[str, Any]
    """The graph state."""
    next: tuple[str, ...]
    """Nodes that run next (empty when the run ended)."""
    interrupts: list[Any] = field(default_factory=list)
    """Pending interrupts (the approval request)."""

    @property
    def outcome(self) -> str | None:
        """How the run ended, if it did."""
        return self.values.get("outcome")

    @property
    def held(self) -> dict[str, Any] | None:
        """What holds the run (kind, reason), while something does."""
        held = (self.values.get("execution") or {}).get("held")
        return held if isinstance(held, dict) else None

    @property
    def awaiting_confirmation(self) -> bool:
        """Whether the run waits for its requester's yes (not for approvers)."""
        return any(
            isinstance(i.value, dict) and i.value.get("kind") == CONFIRMATION
            for i in self.interrupts
        )

    @property
    def status(self) -> str:
        """done, awaiting_confirmation, awaiting_approval, held, queued or running."""
        if self.outcome:
            return "done"
        if self.awaiting_confirmation:
            return "awaiting_confirmation"
        if self.interrupts:
            return "awaiting_approval"
        if self.held and self.next == ("executor",):
            return "held"
        if self.next == ("executor",):
            return "queued"
        return "running"


UpdateHandler = Callable[[str, dict[str, Any]], None]
"""Called with a node's name and its state update each time a node finishes."""


def new_plan_id(request: str, actor: str, ctx: Context, attempt: int = 0) -> str:
    """A readable plan id: the time and a hash of request, requester (and attempt, from 1)."""
    now = ctx.people_now()
    stamp = now.strftime("%Y%m%d-%H%M%S")
    seed = f"{actor}\n{request}\n{now.isoformat()}" + (f"\n{attempt}" if attempt else "")
    salt = hashlib.sha256(seed.encode()).hexdigest()
    return f"pl-{stamp}-{salt[:6]}"


class Orchestrator:
    """The rollout graph compiled with a checkpointer, bound to one run context."""

    def __init__(self, ctx: Context, checkpointer: BaseCheckpointSaver[str]) -> None:
        self.ctx = ctx
        self.graph = compile_graph(checkpointer)

    @staticmethod
    def config(thread_id: str) -> RunnableConfig:
        """The graph config of one thread."""
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": 10_000}

    def _invoke(
        self, payload: Any, thread_id: str, on_update: UpdateHandler | None = None
    ) -> RunView:
        config = self.config(thread_id)
        if on_update is None:
            output = self.graph.invoke(
                payload, config, context=self.ctx, durability="sync", version="v2"
            )
            return self._stopped(thread_id, dict(output.value), list(output.interrupts))
        for chunk in self.graph.stream(
            payload, config, context=self.ctx, durability="sync", stream_mode="updates"
        ):
            for node, update in chunk.items():
                if not node.startswith("__"):  # ``__interrupt__``: read from the view instead
                    on_update(node, update or {})
        return self.view(thread_id)

    def _free_plan_id(self, request: str, actor: str) -> str:
        # The same request from the same person can come twice in one second (and in
        # scenarios the twin's clock stands still between rollouts): count attempts.
        for attempt in itertools.count():
            candidate = new_plan_id(request, actor, self.ctx, attempt)
            if not self.ctx.store.runs.exists(candidate):
                return candidate
        raise AssertionError("unreachable")

    def submit(
        self,
        request: str,
        actor: str,
        *,
        ticket: str | None = None,
        plan_id: str | None = None,
        detail: dict[str, Any] | None = None,
        on_update: UpdateHandler | None = None,
        conversation: list[dict[str, str]] | None = None,
        revising: dict[str, Any] | None = None,
        confirm: bool = False,
    ) -> RunView:
        """Record a run, then plan, validate and gate it until it waits or ends.

        ``on_update`` sees every node's update as it happens (the planner's rationale,
        the validator's findings, the policy decision), before the run pauses or ends.
        ``conversation`` (earlier chat turns) and ``revising`` (the conversation's last
        plan, as a draft) go to the planner; with ``confirm`` a plan policy allows without
        approvals waits for the requester's yes (:meth:`confirm`) instead of being queued.
        """
        plan_id = plan_id or self._free_plan_id(request, actor)
        thread_id = plan_id
        accept_run(self.ctx, thread_id, plan_id, request, actor, ticket=ticket, detail=detail)
        initial: dict[str, Any] = {
            "request": request,
            "actor": actor,
            "plan_id": plan_id,
            "thread_id": thread_id,
        }
        if ticket:
            initial["ticket"] = ticket
        if conversation:
            initial["conversation"] = conversation
        if revising:
            initial["revising"] = revising
        if confirm:
            initial["confirm"] = True
        return self._invoke(initial, thread_id, on_update)

    @staticmethod
    def _stopped(thread_id: str, values: dict[str, Any], interrupts: list[Any]) -> RunView:
        """Where a run stands once an invoke returned, from what the invoke returned.

        An invoke returns in one of three places: the run ended (it has an outcome), it
        waits at the approval interrupt, or it paused after ``queue`` or ``hold`` for a
        worker. Reading
        the checkpoint back (:meth:`view`) would tell the same at the cost of another read.
        """
        if values.get("outcome"):
            waiting: tuple[str, ...] = ()
        elif interrupts:
            waiting = ("approval",)
        else:
            waiting = ("executor",)
        return RunView(
            thread_id=thread_id,
            plan_id=values.get("plan_id", thread_id),
            values=values,
            next=waiting,
            interrupts=interrupts,
        )

    def view(self, thread_id: str) -> RunView:
        """Where a run stands, from its last checkpoint."""
        snapshot = self.graph.get_state(self.config(thread_id))
        if not snapshot.values:
            raise NotFound(f"no run with thread id {thread_id!r}")
        return RunView(
            thread_id=thread_id,
            plan_id=snapshot.values.get("plan_id", thread_id),
            values=dict(snapshot.values),
            next=tuple(snapshot.next),
            interrupts=list(snapshot.interrupts),
        )

    def waiting(self, thread_id: str) -> RunView:
        """The run, which must be waiting at the approval interrupt (else ApprovalInvalid)."""
        view = self.view(thread_id)
        if not view.interrupts or view.awaiting_confirmation:
            raise ApprovalInvalid(f"run {thread_id} is not waiting for approval ({view.status})")
        return view

    def approval_for(
        self,
        view: RunView,
        approver: str,
        key_id: str,
        decision: Literal["approve", "reject"],
        comment: str = "",
    ) -> Approval:
        """The unsigned approval record ``approver`` signs (with key ``key_id``) to decide on
        the revision ``view`` waits at: the CLI signs it here, the inbox page in the browser."""
        return Approval(
            plan_id=view.plan_id,
            plan_hash=view.values["plan_hash"],
            approver=approver,
            roles=list(self.ctx.roster.get(approver, [])),
            decision=Decision(decision),
            comment=comment,
            at=self.ctx.people_now(),
            key_id=key_id,
        )

    def edit_for(
        self, view: RunView, editor: str, key_id: str, draft: PlanDraft, comment: str = ""
    ) -> PlanEdit:
        """The unsigned edit record ``editor`` signs (with key ``key_id``) to replace the
        revision ``view`` waits at with ``draft``."""
        return PlanEdit(
            plan_id=view.plan_id,
            plan_hash=view.values["plan_hash"],
            editor=editor,
            draft_hash=draft_hash(draft.model_dump(mode="json")),
            comment=comment,
            at=self.ctx.people_now(),
            key_id=key_id,
        )

    def decide(
        self,
        thread_id: str,
        key: SigningKey,
        decision: Literal["approve", "reject"],
        comment: str = "",
    ) -> RunView:
        """Sign ``decision`` with the approver's key and resume the approval interrupt."""
        view = self.waiting(thread_id)
        record = self.approval_for(view, key.owner, key.key_id, decision, comment)
        return self.answer_signed(thread_id, record.signed_with(key))

    def answer_signed(self, thread_id: str, approval: Approval) -> RunView:
        """Resume the approval interrupt with a signed approval or rejection; the graph checks
        its signature and counts it by policy."""
        return self.answer(
            thread_id,
            ApprovalResume(
                decisions=[
                    ReviewDecision(
                        type="approve" if approval.decision is Decision.approve else "reject",
                        message=approval.comment,
                    )
                ],
                approver=approval.approver,
                approval=approval,
            ),
        )

    def edit(self, thread_id: str, key: SigningKey, draft: PlanDraft, comment: str = "") -> RunView:
        """An approver's edit, signed with their key: a new revision that goes through
        validation and policy again."""
        view = self.waiting(thread_id)
        record = self.edit_for(view, key.owner, key.key_id, draft, comment)
        return self.edit_signed(thread_id, record.signed_with(key), draft)

    def edit_signed(self, thread_id: str, record: PlanEdit, draft: PlanDraft) -> RunView:
        """Resume the approval interrupt with a signed edit of the plan to ``draft``."""
        return self.answer(
            thread_id,
            ApprovalResume(
                decisions=[
                    ReviewDecision(
                        type="edit",
                        message=record.comment,
                        edited_action=EditedAction(args={"plan": draft}),
                    )
                ],
                approver=record.editor,
                edit=record,
            ),
        )

    def answer(self, thread_id: str, resume: ApprovalResume) -> RunView:
        """Resume the pending approval interrupt with ``resume`` (matched by interrupt id)."""
        interrupt_id = self.waiting(thread_id).interrupts[0].id
        return self._invoke(
            Command(resume={interrupt_id: resume.model_dump(mode="json")}), thread_id
        )

    def expire(self, thread_id: str) -> RunView:
        """End a run whose approval deadline passed (nothing happens before the deadline)."""
        return self.answer(
            thread_id, ApprovalResume(decisions=[ReviewDecision(type="expire")], approver="worker")
        )

    def work(self, thread_id: str, on_update: UpdateHandler | None = None) -> RunView:
        """Execute a queued (or interrupted) run until it ends; ``on_update`` sees each step."""
        with self.ctx.store.runs.exclusive(thread_id) as mine:
            view = self.view(thread_id)
            # An outcome in the state is not the end: ``report`` may still be next (a worker
            # killed between the last step's checkpoint and the report) and must run.
            if not mine or view.interrupts:
                return view
            if not view.next:
                snapshot = self.graph.get_state(self.config(thread_id))
                if not snapshot.tasks:
                    return view
                # A step whose writes were saved but not the checkpoint after it (a worker
                # killed in between) shows no next node; invoking applies the saved writes
                # and goes on from there, so the run does not sit ``executing`` forever.
            return self._invoke(None, thread_id, on_update)

    def confirm(self, thread_id: str, actor: str) -> RunView:
        """The requester's yes to the revision the run waits at: it is queued for a worker."""
        view = self.view(thread_id)
        if not view.awaiting_confirmation:
            raise WithdrawRefused(
                f"plan {view.plan_id} is not waiting for a confirmation ({view.status})"
            )
        if actor != view.values.get("actor"):
            raise WithdrawRefused(
                f"only the requester {view.values.get('actor')} confirms plan {view.plan_id}"
            )
        resume = ConfirmResume(confirmed_by=actor, plan_hash=view.values["plan_hash"])
        return self._invoke(
            Command(resume={view.interrupts[0].id: resume.model_dump(mode="json")}), thread_id
        )

    def withdraw(self, thread_id: str, actor: str, reason: str = "") -> RunView:
        """The requester takes back a plan that is not yet executing: the run ends as
        ``withdrawn`` (audited); nothing was or will be sent to devices.

        Raises:
            WithdrawRefused: the run ended, is planning or executing (a worker holds it or
                its first wave started), or ``actor`` is not its requester.
        """
        with self.ctx.store.runs.exclusive(thread_id) as mine:
            view = self.view(thread_id)
            if view.outcome:
                raise WithdrawRefused(f"plan {view.plan_id} already ended ({view.outcome})")
            if actor != view.values.get("actor"):
                raise WithdrawRefused(
                    f"only the requester {view.values.get('actor')} withdraws plan {view.plan_id}"
                )
            if not mine or view.values.get("execution"):
                raise WithdrawRefused(
                    f"plan {view.plan_id} is executing; stop it with `fieldgate stop` instead"
                )
            if view.awaiting_confirmation:
                as_node = "confirm"
            elif view.interrupts:
                as_node = "approval"
            elif view.next == ("executor",):
                as_node = "executor"
            else:
                raise WithdrawRefused(f"plan {view.plan_id} is still being planned ({view.status})")
            why = f"withdrawn by {actor}" + (f": {reason}" if reason else "")
            self.ctx.store.audit.append(
                EventKind.withdraw,
                ActorKind.human,
                actor,
                {"reason": reason, "was": view.status, "plan_hash": view.values.get("plan_hash")},
                plan_id=view.plan_id,
                thread_id=thread_id,
                at=self.ctx.people_now(),
            )
            self.graph.update_state(
                self.config(thread_id), finish("withdrawn", why), as_node=as_node
            )
            return self._invoke(None, thread_id)
