"""Conversations in ``fieldgate chat`` end to end, through the real graph, on SQLite and
PostgreSQL: follow-ups revise the last plan, answers continue a question, ``why?`` and
fleet questions create no plan, ``--resume``, the requester's yes, withdraw, and an
approver's signed edit."""

from __future__ import annotations

import getpass
from typing import Any

import pytest
from typer.testing import CliRunner

from fieldgate.audit import EventKind
from fieldgate.cli import app
from fieldgate.graphs.compose import open_orchestrator
from fieldgate.store import Store

runner = CliRunner()
PUMP = "roll out pump-logic 1.9.0 to rtm-05"
HVAC = "Roll out hvac-controller 2.4.1 to muc-01"


def chat(*lines: str, args: tuple[str, ...] = ()) -> str:
    result = runner.invoke(
        app,
        ["chat", "--as", "eng-ana", *args],
        input="\n".join(lines) + "\n",
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return result.output


def runs(url: str) -> list[Any]:
    with Store.open(url) as store:
        return store.runs.list()


def plan_of(url: str, plan_id: str) -> dict[str, Any]:
    with open_orchestrator() as orchestrator:
        run = orchestrator.ctx.store.runs.for_plan(plan_id)
        return orchestrator.view(run.thread_id).values


def test_a_follow_up_revises_the_last_plan_which_it_supersedes(initialised_db: str) -> None:
    out = chat(PUMP, "make the canary smaller")
    first, second = runs(initialised_db)
    assert second.detail.get("supersedes") == first.plan_id
    assert first.outcome == "withdrawn" and f"superseded by {second.plan_id}" in out
    old, new = plan_of(initialised_db, first.plan_id), plan_of(initialised_db, second.plan_id)
    assert new["findings"]["wave_sizes"][0] < old["findings"]["wave_sizes"][0]
    assert new["plan"]["module"] == "pump-logic" and new["plan"]["version"] == "1.9.0"
    assert new["plan"]["target"]["sites"] == ["rtm-05"]
    # It went through validator and policy again, and waits for the requester's yes.
    assert new["review"]["verdict"] == "accept" and new["decision"]["allow"]
    assert second.status == "awaiting_confirmation"


def test_use_another_version_instead_keeps_the_targets(initialised_db: str) -> None:
    chat(PUMP, "use 2.0.0 instead")
    _, second = runs(initialised_db)
    values = plan_of(initialised_db, second.plan_id)
    assert values["plan"]["version"] == "2.0.0"
    assert values["plan"]["target"]["sites"] == ["rtm-05"]


def test_an_answer_to_a_clarification_continues_the_same_request(initialised_db: str) -> None:
    out = chat("roll out pumplogic 1.9.0 to rtm-05", "yes, pump-logic")
    asked, planned = runs(initialised_db)
    assert asked.outcome == "needs_clarification" and "Did you mean" in out
    values = plan_of(initialised_db, planned.plan_id)
    assert (values["plan"]["module"], values["plan"]["version"]) == ("pump-logic", "1.9.0")
    assert values["plan"]["target"]["sites"] == ["rtm-05"]


def test_why_and_status_mean_the_last_plan_and_create_no_plan(initialised_db: str) -> None:
    out = chat(PUMP, "why?", "/why", "status?", "/status", "what's the status")
    (run,) = runs(initialised_db)
    assert out.count(f"why {run.plan_id}") == 2
    assert out.count(f"{run.plan_id}: proposed, not queued") >= 4


def test_why_before_any_plan_says_so_and_creates_no_plan(initialised_db: str) -> None:
    result = runner.invoke(app, ["chat", "--as", "eng-ana"], input="why?\n")
    assert "no plan in this conversation yet" in result.output
    assert runs(initialised_db) == []


def test_fleet_and_catalog_questions_are_answered_without_a_plan(initialised_db: str) -> None:
    out = chat(
        "which version of edge-runtime runs in eu-west?", "what versions of pump-logic are there?"
    )
    with Store.open(initialised_db) as store:
        sites, devices = store.fleet.snapshot()
    west = {s.id for s in sites if s.region == "eu-west"}
    counted = sum(1 for d in devices if d.site in west and "edge-runtime" in d.installed)
    assert "edge-runtime in eu-west:" in out and str(counted) not in ("0",)
    assert "pump-logic in the catalog: 1.8.0, 1.9.0, 2.0.0." in out
    assert runs(initialised_db) == []


def test_resume_continues_the_conversation_in_another_process(initialised_db: str) -> None:
    chat(PUMP)
    (run,) = runs(initialised_db)
    out = chat("status?", "yes", args=("--resume",))
    assert run.plan_id in out
    (after,) = runs(initialised_db)
    assert after.status == "queued"
    with Store.open(initialised_db) as store:
        talk = store.conversations.latest("eng-ana")
    assert talk is not None and talk.last_plan_id == run.plan_id
    assert [t["role"] for t in talk.turns][:2] == ["user", "assistant"]


def test_a_plan_without_approvals_waits_for_yes_or_runs_with_yes_flag(
    initialised_db: str,
) -> None:
    out = chat(PUMP)
    (run,) = runs(initialised_db)
    assert run.status == "awaiting_confirmation" and "proposed, not queued" in out
    assert f"fieldgate plans confirm {run.plan_id}" in out
    chat(PUMP, "yes")
    assert runs(initialised_db)[-1].status == "queued"
    chat(PUMP, args=("--yes",))
    assert runs(initialised_db)[-1].status == "queued"
    with Store.open(initialised_db) as store:
        events = store.audit.events(plan_id=runs(initialised_db)[1].plan_id)
    assert any(e.kind == EventKind.approval and e.payload.get("confirmed") for e in events)
    result = runner.invoke(app, ["plans", "confirm", run.plan_id, "--as", "eng-ana"])
    assert result.exit_code == 0, result.output
    assert runs(initialised_db)[0].status == "queued"


def test_only_the_requester_confirms(initialised_db: str) -> None:
    chat(PUMP)
    (run,) = runs(initialised_db)
    result = runner.invoke(app, ["plans", "confirm", run.plan_id, "--as", "eng-bob"])
    assert result.exit_code == 1 and "only the requester eng-ana" in result.output
    assert runs(initialised_db)[0].status == "awaiting_confirmation"


def test_withdraw_from_the_cli_and_the_chat_is_audited(initialised_db: str) -> None:
    chat(PUMP, HVAC)
    pump, hvac = runs(initialised_db)
    result = runner.invoke(
        app, ["plans", "withdraw", pump.plan_id, "--as", "eng-ana", "--reason", "wrong site"]
    )
    assert result.exit_code == 0, result.output
    out = chat(f"cancel {hvac.plan_id}", args=("--resume",))
    assert "withdrawn" in out
    assert [(r.status, r.outcome) for r in runs(initialised_db)] == [
        ("done", "withdrawn"),
        ("done", "withdrawn"),
    ]
    with Store.open(initialised_db) as store:
        (event,) = store.audit.events(plan_id=pump.plan_id, kinds=[EventKind.withdraw])
        assert event.actor == "eng-ana" and event.payload["reason"] == "wrong site"
        assert event.payload["was"] == "awaiting_confirmation"
        assert store.plans.get(hvac.plan_id).status == "withdrawn"


def test_withdraw_is_refused_once_executing_and_for_someone_else(initialised_db: str) -> None:
    chat(PUMP, args=("--yes",))
    (run,) = runs(initialised_db)
    result = runner.invoke(app, ["plans", "withdraw", run.plan_id, "--as", "eng-bob"])
    assert result.exit_code == 1 and "only the requester eng-ana" in result.output

    class Interrupted(Exception):
        pass

    def stop_after_first_step(node: str, update: dict[str, Any]) -> None:
        if node == "executor":
            raise Interrupted

    with open_orchestrator() as orchestrator, pytest.raises(Interrupted):
        orchestrator.work(run.thread_id, on_update=stop_after_first_step)
    result = runner.invoke(app, ["plans", "withdraw", run.plan_id, "--as", "eng-ana"])
    assert result.exit_code == 1 and "is executing" in result.output
    assert runs(initialised_db)[0].outcome is None


def test_an_approvers_signed_edit_is_revision_2_needing_new_decisions(
    initialised_db: str,
) -> None:
    assert runner.invoke(app, ["keys", "init", "--as", "saf-lee"]).exit_code == 0
    enrolled = runner.invoke(app, ["keys", "enroll", "saf-lee", "--as", getpass.getuser()])
    assert enrolled.exit_code == 0, enrolled.output
    chat(HVAC)
    (run,) = runs(initialised_db)
    before = plan_of(initialised_db, run.plan_id)
    assert run.status == "awaiting_approval"
    result = runner.invoke(
        app,
        ["approvals", "edit", run.plan_id, "--as", "saf-lee", "--max-parallel", "2", "-m", "slow"],
    )
    assert result.exit_code == 0, result.output
    assert "revision 2" in result.output
    after = plan_of(initialised_db, run.plan_id)
    assert after["plan"]["revision"] == 2 and after["plan_hash"] != before["plan_hash"]
    assert {w["max_parallel"] for w in after["plan"]["waves"]} == {2}
    assert after["approvals"]["satisfied"] is False and after["approvals"]["missing"]
    assert runs(initialised_db)[0].status == "awaiting_approval"
    with Store.open(initialised_db) as store:
        edits = [
            e
            for e in store.audit.events(plan_id=run.plan_id, kinds=[EventKind.plan])
            if e.payload.get("edited_by") == "saf-lee"
        ]
    assert len(edits) == 1 and edits[0].payload["revision"] == 2


def test_the_openai_path_gets_the_conversation_as_chat_messages(
    initialised_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldgate.agents.offline.server import Recording, ReplayBackend, model_server

    backend = ReplayBackend(Recording(replies=[]))
    with model_server(backend) as base_url:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        chat(PUMP, "make the canary smaller", args=("--model", "openai:offline"))
    first, second = runs(initialised_db)
    messages = backend.requests("planner")[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == PUMP
    assert first.plan_id in messages[2]["content"]
    assert "<plan_to_revise" in messages[3]["content"]
    assert "make the canary smaller" in messages[3]["content"]
    old, new = plan_of(initialised_db, first.plan_id), plan_of(initialised_db, second.plan_id)
    assert new["findings"]["wave_sizes"][0] < old["findings"]["wave_sizes"][0]


def test_only_one_site_narrows_the_last_plan_and_an_unknown_name_asks(initialised_db: str) -> None:
    out = chat(
        "roll out hvac-controller 2.4.1 to muc-01 and ber-03",
        "only the Atlantis site",
        "only muc-01",
    )
    first, asked, narrowed = runs(initialised_db)
    assert asked.outcome == "needs_clarification"  # never planned wider, never guessed
    values = plan_of(initialised_db, narrowed.plan_id)
    assert values["plan"]["target"]["sites"] == ["muc-01"]
    assert narrowed.detail.get("supersedes") == first.plan_id
    assert f"superseded by {narrowed.plan_id}" in out
