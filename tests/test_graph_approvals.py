"""The approval interrupt: forged approvals never count, rejections, edits and expiry.

Forged approvals are hand-built ``ApprovalResume`` answers sent through
``Orchestrator.answer``, exactly as an inbox client would send them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from _scenario_driver import load, open_run, submit, variant
from langgraph.errors import is_invalid_resume
from langgraph.types import Command
from pydantic import ValidationError

from fieldgate.agents.planner import PlanDraft
from fieldgate.approvals import Approval, Decision, PlanEdit, draft_hash
from fieldgate.audit import EventKind
from fieldgate.errors import ApprovalInvalid
from fieldgate.evals._world import World
from fieldgate.graphs.approval import ApprovalResume, EditedAction, ReviewDecision
from fieldgate.graphs.runner import Orchestrator, RunView
from fieldgate.plan import RolloutPlan
from fieldgate.scenario import Scenario
from fieldgate.signing import SigningKey

# safety-approval: eng-ana (engineer and safety) asks; one safety approval is needed.
SAFETY = load("safety-approval")
ROSTER = {
    "eng-ana": ["engineer", "safety"],
    "saf-lee": ["safety"],
    "saf-ola": ["safety"],
    "rm-kim": ["release-manager"],
}
# The same rollout of a critical module: two distinct safety approvers are needed.
CRITICAL = variant(
    SAFETY,
    id="critical-approval",
    roster=ROSTER,
    catalog=[
        {**entry.model_dump(mode="json", exclude_none=True), "safety": "critical"}
        for entry in SAFETY.catalog
    ],
    approvals=[],
)
ONE_SAFETY = variant(SAFETY, roster=ROSTER, approvals=[])


def approval(
    world: World,
    view: RunView,
    by: str,
    *,
    decision: str = "approve",
    key: SigningKey | None = None,
    plan_hash: str | None = None,
    roles: list[str] | None = None,
    comment: str = "",
) -> Approval:
    """A signed approval by ``by`` (with their own key unless ``key`` is given)."""
    return Approval(
        plan_id=view.plan_id,
        plan_hash=plan_hash or view.values["plan_hash"],
        approver=by,
        roles=roles if roles is not None else world.ctx.roster.get(by, []),
        decision=Decision(decision),
        comment=comment or f"{decision} by {by}",
        at=world.ctx.now(),
    ).signed_with(key or world.keys[by])


def answer(orchestrator: Orchestrator, view: RunView, record: Approval) -> RunView:
    """Resume the approval interrupt with ``record``."""
    return orchestrator.answer(
        view.thread_id,
        ApprovalResume(
            decisions=[ReviewDecision(type=record.decision.value, message=record.comment)],
            approver=record.approver,
            approval=record,
        ),
    )


def ignored(view: RunView, approver: str) -> list[str]:
    """Why ``approver``'s approvals were ignored in the current approvals decision."""
    return [i["reason"] for i in view.values["approvals"]["ignored"] if i["approver"] == approver]


@pytest.fixture
def waiting(sqlite_url: str) -> Iterator[Callable[[Scenario], tuple[World, Orchestrator, RunView]]]:
    """Submit a scenario and return it waiting at the approval interrupt."""
    runs: list[Any] = []

    def start(scenario: Scenario) -> tuple[World, Orchestrator, RunView]:
        run = open_run(scenario, sqlite_url)
        runs.append(run)
        world, orchestrator = run.__enter__()
        view = submit(world, orchestrator)
        assert view.status == "awaiting_approval", view.values.get("reasons")
        return world, orchestrator, view

    yield start
    for run in reversed(runs):
        run.__exit__(None, None, None)


def _tampered(world: World, view: RunView) -> Approval:
    signed = approval(world, view, "saf-lee", comment="approved as signed")
    return signed.model_copy(update={"comment": "approved, and skip the canary"})


def _flipped_signature(world: World, view: RunView) -> Approval:
    signed = approval(world, view, "saf-lee")
    other = approval(world, view, "saf-lee", comment="a different decision")
    return signed.model_copy(update={"signature": other.signature})


def _other_persons_key(world: World, view: RunView) -> Approval:
    return approval(world, view, "saf-lee", key=world.keys["rm-kim"])


def _other_persons_key_claiming_the_key_id(world: World, view: RunView) -> Approval:
    forged = approval(world, view, "saf-lee", key=world.keys["rm-kim"])
    return forged.model_copy(update={"key_id": world.keys["saf-lee"].key_id})


def _random_hash(world: World, view: RunView) -> Approval:
    return approval(world, view, "saf-lee", plan_hash=secrets.token_hex(32))


def _requester(world: World, view: RunView) -> Approval:
    return approval(world, view, "eng-ana")


def _role_claimed_not_held(world: World, view: RunView) -> Approval:
    return approval(world, view, "rm-kim", roles=["safety"])


def _untrusted_key(world: World, view: RunView) -> Approval:
    # saf-kai holds safety in the roster, but no key of theirs was ever trusted.
    world.ctx.roster["saf-kai"] = ["safety"]
    return approval(world, view, "saf-kai", key=SigningKey.from_seed("saf-kai", b"own key"))


FORGERIES = {
    "content-changed-after-signing": (_tampered, "saf-lee", "signature does not verify"),
    "signature-of-another-approval": (_flipped_signature, "saf-lee", "signature does not verify"),
    "signed-with-another-persons-key": (_other_persons_key, "saf-lee", "signature does not verify"),
    "another-key-claiming-the-key-id": (
        _other_persons_key_claiming_the_key_id,
        "saf-lee",
        "signature does not verify",
    ),
    "random-plan-hash": (_random_hash, "saf-lee", "not a stored revision"),
    "requester-with-safety-role": (_requester, "eng-ana", "requester cannot decide"),
    "role-claimed-but-not-in-roster": (
        _role_claimed_not_held,
        "rm-kim",
        "none of the needed roles",
    ),
    "person-without-trusted-key": (_untrusted_key, "saf-kai", "signature does not verify"),
}


@pytest.mark.parametrize("forge", list(FORGERIES), ids=list(FORGERIES))
def test_forged_approval_does_not_count(
    forge: str, waiting: Callable[[Scenario], tuple[World, Orchestrator, RunView]]
) -> None:
    make, approver, why = FORGERIES[forge]
    world, orchestrator, view = waiting(ONE_SAFETY)
    before = len(world.store.audit.events(plan_id=world.plan_id, kinds=[EventKind.approval]))

    view = answer(orchestrator, view, make(world, view))

    assert view.status == "awaiting_approval"
    assert not view.values.get("approved")
    assert view.values["approvals"]["satisfied"] is False
    assert view.values["approvals"]["counted"] == []
    assert view.values["approvals"]["missing"] == [{"role": "safety", "count": 1}]
    assert any(why in reason for reason in ignored(view, approver)), view.values["approvals"]
    # The forged answer is on the record, and nothing was sent to a device.
    events = world.store.audit.events(plan_id=world.plan_id, kinds=[EventKind.approval])
    assert len(events) == before + 1
    assert events[-1].payload["approver"] == approver
    assert world.twin.touched() == set()

    # A valid approval still completes the run.
    view = answer(orchestrator, view, approval(world, view, "saf-lee", comment="real one"))
    assert view.status == "queued"
    assert view.values["approvals"]["counted"] == ["saf-lee"]
    view = orchestrator.work(view.thread_id)
    assert view.outcome == "completed"
    assert world.twin.versions("hvac-controller") == {"2.4.1": 40}
    assert world.store.audit.verify().ok


def test_the_interrupt_advertises_its_answer_schema_and_refuses_a_malformed_answer(
    waiting: Callable[[Scenario], tuple[World, Orchestrator, RunView]],
) -> None:
    world, orchestrator, view = waiting(ONE_SAFETY)
    schema = view.interrupts[0].response_schema
    # Self-contained (no $ref to resolve) and what ApprovalResume validates.
    assert "$ref" not in json.dumps(schema)
    assert schema["required"] == ["decisions", "approver"]
    decision_types = schema["properties"]["decisions"]["items"]["properties"]["type"]["enum"]
    assert decision_types == ["approve", "edit", "reject", "expire"]
    assert "signature" in json.dumps(schema["properties"]["approval"])
    events = len(world.store.audit.events())

    interrupt_id = view.interrupts[0].id
    bad = {"decisions": [{"type": "approve-everything"}], "approver": "saf-lee"}
    with pytest.raises(ValidationError) as raised:
        orchestrator.graph.invoke(
            Command(resume={interrupt_id: bad}),
            orchestrator.config(view.thread_id),
            context=orchestrator.ctx,
            durability="sync",
        )
    assert is_invalid_resume(raised.value)
    assert raised.value.errors()[0]["loc"] == ("decisions", 0, "type")

    # Nothing was saved: the same interrupt still waits, and nothing was audited.
    again = orchestrator.view(view.thread_id)
    assert again.status == "awaiting_approval"
    assert again.interrupts[0].id == interrupt_id
    assert len(world.store.audit.events()) == events
    view = answer(orchestrator, again, approval(world, again, "saf-lee"))
    assert view.status == "queued"


def test_one_person_fills_one_slot_however_often_they_approve(
    waiting: Callable[[Scenario], tuple[World, Orchestrator, RunView]],
) -> None:
    world, orchestrator, view = waiting(CRITICAL)
    assert view.values["decision"]["approvals"][0]["role"] == "safety"
    assert [(a["role"], a["count"]) for a in view.values["decision"]["approvals"]] == [
        ("safety", 2)
    ]

    view = answer(orchestrator, view, approval(world, view, "saf-lee", comment="first"))
    assert view.status == "awaiting_approval"
    assert view.values["approvals"]["missing"] == [{"role": "safety", "count": 1}]
    view = answer(orchestrator, view, approval(world, view, "saf-lee", comment="again"))
    assert view.status == "awaiting_approval"
    assert view.values["approvals"]["counted"] == ["saf-lee"]
    assert view.values["approvals"]["missing"] == [{"role": "safety", "count": 1}]
    assert any("already fills a slot" in r for r in ignored(view, "saf-lee"))
    # The requester holds safety too, but cannot be the second slot.
    view = answer(orchestrator, view, approval(world, view, "eng-ana"))
    assert view.status == "awaiting_approval"

    view = answer(orchestrator, view, approval(world, view, "saf-ola"))
    assert view.status == "queued"
    assert sorted(view.values["approvals"]["counted"]) == ["saf-lee", "saf-ola"]


def test_a_counted_rejection_ends_the_run_rejected(
    waiting: Callable[[Scenario], tuple[World, Orchestrator, RunView]],
) -> None:
    world, orchestrator, view = waiting(ONE_SAFETY)
    # Rejections that do not count do not end the run.
    view = answer(orchestrator, view, approval(world, view, "eng-ana", decision="reject"))
    view = answer(orchestrator, view, approval(world, view, "rm-kim", decision="reject"))
    assert view.status == "awaiting_approval"
    assert view.values["approvals"]["rejected_by"] == []

    view = orchestrator.decide(view.thread_id, world.keys["saf-lee"], "reject", "not this week")

    assert view.outcome == "rejected"
    assert view.values["reasons"] == ["rejected by saf-lee"]
    assert world.store.plans.get(world.plan_id).status == "rejected"
    assert world.store.runs.get(view.thread_id).outcome == "rejected"
    assert world.twin.touched() == set()
    with pytest.raises(ApprovalInvalid):
        orchestrator.decide(view.thread_id, world.keys["saf-ola"], "approve")


def _smaller_batches(view: RunView) -> PlanDraft:
    plan = RolloutPlan.model_validate(view.values["plan"])
    draft = PlanDraft.of(plan)
    draft.waves[-1] = draft.waves[-1].model_copy(update={"max_parallel": 5})
    return draft


def _edit_record(world: World, view: RunView, draft: PlanDraft, **changes: Any) -> PlanEdit:
    """saf-lee's edit record of ``draft`` (signed with ``key`` when given), with ``changes``."""
    key = changes.pop("key", world.keys["saf-lee"])
    fields: dict[str, Any] = {
        "plan_id": view.plan_id,
        "plan_hash": view.values["plan_hash"],
        "editor": "saf-lee",
        "draft_hash": draft_hash(draft.model_dump(mode="json")),
        "comment": "smaller batches",
        "at": world.ctx.now(),
        **changes,
    }
    return PlanEdit(**fields).signed_with(key)


def _sent_edit(draft: PlanDraft, record: PlanEdit | None) -> ApprovalResume:
    """saf-lee's answer proposing ``draft``, carrying ``record``."""
    edited = EditedAction(args={"plan": draft})
    return ApprovalResume(
        decisions=[ReviewDecision(type="edit", message="smaller batches", edited_action=edited)],
        approver="saf-lee",
        edit=record,
    )


def _unsigned_edit(world: World, view: RunView, draft: PlanDraft) -> ApprovalResume:
    return _sent_edit(draft, None)


def _edit_signed_by_another(world: World, view: RunView, draft: PlanDraft) -> ApprovalResume:
    other = world.keys["rm-kim"]
    return _sent_edit(draft, _edit_record(world, view, draft, key=other))


def _draft_changed_after_signing(world: World, view: RunView, draft: PlanDraft) -> ApprovalResume:
    record = _edit_record(world, view, draft)
    wider = draft.model_copy(deep=True)
    wider.waves[0] = wider.waves[0].model_copy(update={"max_parallel": 50})
    return _sent_edit(wider, record)


def _edit_of_another_revision(world: World, view: RunView, draft: PlanDraft) -> ApprovalResume:
    return _sent_edit(draft, _edit_record(world, view, draft, plan_hash="0" * 64))


def _edit_record_of_someone_else(world: World, view: RunView, draft: PlanDraft) -> ApprovalResume:
    record = _edit_record(world, view, draft, editor="rm-kim", key=world.keys["rm-kim"])
    return _sent_edit(draft, record)


def _editor_without_trusted_key(world: World, view: RunView, draft: PlanDraft) -> ApprovalResume:
    own = SigningKey.from_seed("saf-lee", b"a key nobody trusted")
    return _sent_edit(draft, _edit_record(world, view, draft, key=own))


def _signed_draft_that_is_no_plan(world: World, view: RunView, draft: PlanDraft) -> ApprovalResume:
    broken = {**draft.model_dump(mode="json"), "version": "two point five"}
    record = _edit_record(world, view, draft, draft_hash=draft_hash(broken))
    edited = EditedAction(args={"plan": broken})
    return ApprovalResume(
        decisions=[ReviewDecision(type="edit", edited_action=edited)],
        approver="saf-lee",
        edit=record,
    )


FORGED_EDITS = {
    "unsigned": (_unsigned_edit, "an edit must carry a signed edit record"),
    "signed-with-another-key": (_edit_signed_by_another, "signature does not verify"),
    "draft-changed-after-signing": (
        _draft_changed_after_signing,
        "the draft is not the one the edit record signs",
    ),
    "of-another-revision": (_edit_of_another_revision, "names another plan revision"),
    "record-of-someone-else": (_edit_record_of_someone_else, "is rm-kim's, not saf-lee's"),
    "key-never-trusted": (_editor_without_trusted_key, "signature does not verify"),
    "signed-but-no-plan": (_signed_draft_that_is_no_plan, "'two point five' is not a version"),
}


@pytest.mark.parametrize("forge", list(FORGED_EDITS), ids=list(FORGED_EDITS))
def test_a_forged_edit_changes_nothing(
    forge: str, waiting: Callable[[Scenario], tuple[World, Orchestrator, RunView]]
) -> None:
    make, why = FORGED_EDITS[forge]
    world, orchestrator, view = waiting(ONE_SAFETY)
    old_hash = view.values["plan_hash"]

    view = orchestrator.answer(view.thread_id, make(world, view, _smaller_batches(view)))

    assert view.status == "awaiting_approval"
    assert view.values["plan_hash"] == old_hash
    assert view.values["plan"]["revision"] == 1
    assert world.store.plans.get(world.plan_id).revision == 1
    refused = [
        e.payload["refused_edit"]
        for e in world.store.audit.events(plan_id=world.plan_id, kinds=["approval"])
        if "refused_edit" in e.payload
    ]
    assert len(refused) == 1 and why in refused[0], refused
    # The signed edit still goes through.
    view = orchestrator.edit(view.thread_id, world.keys["saf-lee"], _smaller_batches(view))
    assert view.values["plan"]["revision"] == 2
    assert world.store.audit.verify().ok


def test_an_edit_is_a_new_revision_that_needs_validation_policy_and_new_approvals(
    waiting: Callable[[Scenario], tuple[World, Orchestrator, RunView]],
) -> None:
    world, orchestrator, view = waiting(ONE_SAFETY)
    old_hash = view.values["plan_hash"]
    old_plan = RolloutPlan.model_validate(view.values["plan"])
    validations = len(world.store.audit.events(plan_id=world.plan_id, kinds=["validation"]))
    decisions = len(world.store.audit.events(plan_id=world.plan_id, kinds=["policy_decision"]))
    draft = PlanDraft.of(old_plan).model_copy(
        update={"rationale": old_plan.rationale + " Edited: smaller batches in the last wave."}
    )
    draft.waves[-1] = draft.waves[-1].model_copy(update={"max_parallel": 5})

    view = orchestrator.edit(view.thread_id, world.keys["saf-lee"], draft, "smaller batches")

    assert view.status == "awaiting_approval"
    new_hash = view.values["plan_hash"]
    assert new_hash != old_hash
    assert view.values["plan"]["revision"] == 2
    assert view.values["plan"]["parent_hash"] == old_hash
    assert view.values["plan"]["waves"][-1]["max_parallel"] == 5
    assert world.store.plans.get(world.plan_id).plan.plan_hash == new_hash
    # Validator and policy ran again, on the new revision.
    validation = world.store.audit.events(plan_id=world.plan_id, kinds=["validation"])
    assert len(validation) == validations + 1
    assert validation[-1].payload["plan_hash"] == new_hash
    policy = world.store.audit.events(plan_id=world.plan_id, kinds=["policy_decision"])
    assert len(policy) > decisions
    edits = [
        e
        for e in world.store.audit.events(plan_id=world.plan_id, kinds=["plan"])
        if e.payload.get("edited_by")
    ]
    assert [(e.payload["edited_by"], e.payload["plan_hash"]) for e in edits] == [
        ("saf-lee", new_hash)
    ]

    # An approval of the old revision does not count for the new one.
    requested_at = view.values["approval_requested_at"]
    world.twin.advance(timedelta(hours=1))
    view = answer(orchestrator, view, approval(world, view, "saf-lee", plan_hash=old_hash))
    assert view.status == "awaiting_approval"
    assert any("another revision" in r for r in ignored(view, "saf-lee"))
    # Answering does not send the edited revision round validation again (nor restart the
    # approval deadline).
    assert len(world.store.audit.events(plan_id=world.plan_id, kinds=["validation"])) == (
        validations + 1
    )
    assert view.values["approval_requested_at"] == requested_at

    view = answer(orchestrator, view, approval(world, view, "saf-ola"))
    assert view.status == "queued"
    view = orchestrator.work(view.thread_id)
    assert view.outcome == "completed"
    # Every command carried the edited revision's hash.
    deploys = [
        e
        for e in world.store.audit.events(plan_id=world.plan_id, kinds=["tool_call"])
        if e.payload["tool"] == "deploy_wave"
    ]
    assert deploys
    assert {e.payload["args"]["plan_hash"] for e in deploys} == {new_hash}
    assert world.twin.versions("hvac-controller") == {"2.4.1": 40}


def test_an_approval_request_past_its_deadline_expires(
    waiting: Callable[[Scenario], tuple[World, Orchestrator, RunView]],
) -> None:
    world, orchestrator, view = waiting(ONE_SAFETY)
    deadline = world.ctx.now() + world.ctx.settings.approval_deadline

    world.twin.advance(timedelta(hours=71))
    view = orchestrator.expire(view.thread_id)
    assert view.status == "awaiting_approval"
    assert view.outcome is None
    assert not [
        e
        for e in world.store.audit.events(plan_id=world.plan_id, kinds=["approval"])
        if e.payload.get("expired")
    ]

    world.twin.advance(timedelta(hours=2))
    assert world.ctx.now() > deadline
    view = orchestrator.expire(view.thread_id)

    assert view.outcome == "expired"
    assert deadline.isoformat() in view.values["reasons"][0]
    expired = [
        e
        for e in world.store.audit.events(plan_id=world.plan_id, kinds=["approval"])
        if e.payload.get("expired")
    ]
    assert len(expired) == 1
    assert world.store.plans.get(world.plan_id).status == "expired"
    assert world.store.runs.get(view.thread_id).outcome == "expired"
    assert world.twin.touched() == set()
    with pytest.raises(ApprovalInvalid):
        orchestrator.decide(view.thread_id, world.keys["saf-lee"], "approve")


def test_an_edit_that_policy_denies_ends_the_run_denied(
    waiting: Callable[[Scenario], tuple[World, Orchestrator, RunView]],
) -> None:
    world, orchestrator, view = waiting(ONE_SAFETY)
    draft = PlanDraft.of(RolloutPlan.model_validate(view.values["plan"]))
    everything = draft.waves[0].model_copy(update={"percent": 100.0})
    draft = draft.model_copy(update={"waves": [everything]})

    view = orchestrator.edit(view.thread_id, world.keys["saf-lee"], draft, "all at once")

    assert view.outcome == "denied"
    assert view.values["plan"]["revision"] == 2
    assert any("canary" in reason for reason in view.values["reasons"])
    assert world.twin.touched() == set()
