"""Plan revisions and approvals on real SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fieldgate.approvals import Approval
from fieldgate.errors import ApprovalInvalid, NotFound, StoreError
from fieldgate.plan import RolloutPlan
from fieldgate.signing import SigningKey
from fieldgate.store import Store

ANA = SigningKey.from_seed("ana", b"ana")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url) as opened:
        yield opened


def plan(plan_id: str = "p-1", revision: int = 1, **changes: object) -> RolloutPlan:
    return RolloutPlan.model_validate(
        {
            "plan_id": plan_id,
            "revision": revision,
            "module": "hvac-controller",
            "version": "2.4.1",
            "target": {"classes": ["hvac-gw"], "labels": {"ring": "canary"}},
            "waves": [
                {
                    "name": "canary",
                    "count": 2,
                    "health_gate": {"min_success_rate": 1, "max_failures": 0},
                },
                {"name": "rest", "percent": 100, "max_parallel": 20},
            ],
            "abort": {"failure_threshold": 0.1},
            "schedule": {"mode": "maintenance", "not_before": "2026-03-01T08:00:00.250000+02:00"},
            "rationale": "fix the fan curve — see ticket #12",
            "requested_by": "ana",
            **changes,
        }
    )


def test_add_get_and_list_revisions(store: Store) -> None:
    first = store.plans.add(plan())
    assert first.plan_hash == plan().plan_hash
    assert first.status == "proposed"
    second = store.plans.add(plan(revision=2, parent_hash=first.plan_hash, rationale="smaller"))
    other = store.plans.add(plan("p-2"))
    assert store.plans.get("p-1") == second
    assert store.plans.get("p-1", 1) == first
    assert store.plans.get("p-1", 1).plan == plan(), "the plan reads back with the same hash"
    assert store.plans.by_hash(first.plan_hash) == first
    assert [(r.plan_id, r.revision) for r in store.plans.list()] == [("p-1", 2), ("p-2", 1)]
    assert store.plans.list()[1] == other


def test_a_revision_is_immutable(store: Store) -> None:
    stored = store.plans.add(plan())
    assert store.plans.add(plan()) == stored, "the identical revision again is a no-op"
    with pytest.raises(StoreError, match=r"plan p-1 revision 1 already exists.*propose revision 2"):
        store.plans.add(plan(rationale="changed my mind"))
    with pytest.raises(StoreError, match=r"parent_hash .* is not a stored revision of this plan"):
        store.plans.add(plan(revision=2, parent_hash="f" * 64))


def test_set_status(store: Store) -> None:
    store.plans.add(plan())
    store.plans.add(plan(revision=2))
    store.plans.set_status("p-1", "awaiting_approval")
    assert store.plans.get("p-1").status == "awaiting_approval"
    assert store.plans.get("p-1", 1).status == "proposed"
    store.plans.set_status("p-1", "superseded", revision=1)
    assert store.plans.get("p-1", 1).status == "superseded"
    assert store.plans.get("p-1", 2).status == "awaiting_approval"
    with pytest.raises(NotFound, match="plan 'nope' is not stored"):
        store.plans.set_status("nope", "approved")
    with pytest.raises(NotFound, match="plan 'p-1' revision 3 is not stored"):
        store.plans.set_status("p-1", "approved", revision=3)
    with pytest.raises(StoreError, match="a status must not be empty"):
        store.plans.set_status("p-1", "")


def test_writes_in_one_store_transaction_land_together_or_not_at_all(store: Store) -> None:
    store.runs.start("t-1", "p-1", "roll out hvac 2.4.1", "ana")
    head = store.audit.verify().count

    # A failure after the plan, the run and the audit event were written undoes all three.
    with pytest.raises(StoreError, match="already exists"), store.writing("testing") as tx:
        store.plans.add(plan(), tx=tx)
        store.runs.update("t-1", "awaiting_approval", tx=tx)
        store.audit.append("plan", "agent", "planner", {"revision": 1}, plan_id="p-1", tx=tx)
        store.plans.add(plan(rationale="a different revision 1"), tx=tx)
    with pytest.raises(NotFound):
        store.plans.get("p-1")
    assert store.runs.get("t-1").status == "accepted"
    assert store.audit.verify().count == head
    assert store.audit.events(plan_id="p-1") == []

    with store.writing("testing") as tx:
        store.plans.add(plan(), tx=tx)
        store.plans.set_status("p-1", "awaiting_approval", tx=tx)
        store.runs.update("t-1", "awaiting_approval", tx=tx)
        store.audit.append("plan", "agent", "planner", {"revision": 1}, plan_id="p-1", tx=tx)
    assert store.plans.get("p-1").status == "awaiting_approval"
    assert store.runs.get("t-1").status == "awaiting_approval"
    assert [e.kind for e in store.audit.events(plan_id="p-1")] == ["plan"]
    assert store.audit.verify().ok


def test_runs_move_on_and_keep_their_facts(store: Store) -> None:
    started = store.runs.start("t-1", "p-1", "roll out hvac 2.4.1", "ana", {"model": "offline"})
    assert (started.status, started.outcome, started.detail) == (
        "accepted",
        None,
        {"model": "offline"},
    )
    store.runs.update("t-1", "queued")
    assert store.runs.get("t-1").status == "queued"
    store.runs.update("t-1", "done", outcome="denied", detail={"reasons": ["no canary"]})
    run = store.runs.get("t-1")
    assert (run.status, run.outcome) == ("done", "denied")
    assert run.detail == {"model": "offline", "reasons": ["no canary"]}
    assert run.updated_at >= started.updated_at
    assert [r.thread_id for r in store.runs.list(("done",))] == ["t-1"]
    with pytest.raises(StoreError, match="recording run t-1 failed"):
        store.runs.start("t-1", "p-2", "the same thread id again", "bo")
    assert store.runs.get("t-1").plan_id == "p-1"
    with pytest.raises(NotFound, match="no run with thread id 't-9'"):
        store.runs.update("t-9", "queued")
    with pytest.raises(NotFound, match="no run with thread id 't-9'"):
        store.runs.update("t-9", "done", detail={"reasons": []})


def test_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="plan 'p-9' is not stored"):
        store.plans.get("p-9")
    store.plans.add(plan())
    with pytest.raises(NotFound, match="plan 'p-1' revision 3 is not stored"):
        store.plans.get("p-1", 3)
    with pytest.raises(NotFound, match="no stored plan revision has hash"):
        store.plans.by_hash("0" * 64)


def test_a_plan_edited_in_the_database_is_refused(store: Store) -> None:
    store.plans.add(plan())
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE plan_revision "
            "SET plan_json = REPLACE(plan_json, '\"count\":2', '\"count\":200')"
        )
    with pytest.raises(StoreError, match="plan p-1 revision 1 was altered in the database"):
        store.plans.get("p-1")


# -- approvals -------------------------------------------------------------------------------


def approval(plan_hash: str, **changes: object) -> Approval:
    unsigned = Approval.model_validate(
        {
            "plan_id": "p-1",
            "plan_hash": plan_hash,
            "approver": "ana",
            "roles": ["safety", "site-owner"],
            "decision": "approve",
            "comment": "ok ✓",
            "at": datetime(2026, 3, 1, 9, 30, 15, 120, tzinfo=timezone(timedelta(hours=-5))),
            **changes,
        }
    )
    return unsigned.signed_with(ANA)


def test_approvals_keep_their_signature_valid(store: Store) -> None:
    first = store.plans.add(plan())
    second = store.plans.add(plan(revision=2, parent_hash=first.plan_hash))
    yes = approval(first.plan_hash)
    no = approval(second.plan_hash, approver="bo", decision="reject", at=datetime.now(UTC))
    store.approvals.add(yes)
    store.approvals.add(no)
    store.approvals.add(yes)
    assert store.approvals.for_plan("p-1") == [yes, no], "the same approval is stored once"
    assert store.approvals.for_plan("p-1", second.plan_hash) == [no]
    back = store.approvals.for_plan("p-1", first.plan_hash)[0]
    assert back.signature_valid(ANA.public_b64)
    assert store.approvals.for_plan("p-2") == []


def test_an_approval_must_name_a_stored_revision(store: Store) -> None:
    stored = store.plans.add(plan())
    store.plans.add(plan("p-2"))
    with pytest.raises(ApprovalInvalid, match="not a stored revision of that plan"):
        store.approvals.add(approval("a" * 64))
    with pytest.raises(ApprovalInvalid, match="names plan p-2"):
        store.approvals.add(approval(stored.plan_hash, plan_id="p-2"))
    assert store.approvals.for_plan("p-1") == []


def test_one_worker_at_a_time_per_run(db_url: str) -> None:
    from fieldgate.store import Store

    with Store.open(db_url) as first, Store.open(db_url) as second:
        first.runs.start("t-1", "p-1", "roll out", "ana")
        with first.runs.exclusive("t-1") as mine:
            assert mine
            with second.runs.exclusive("t-1") as theirs:
                assert not theirs
            with second.runs.exclusive("t-2") as other:
                assert other
        with second.runs.exclusive("t-1") as now_free:
            assert now_free
