"""Conversations in ``fieldgate chat`` end to end, through the real graph, on SQLite and
PostgreSQL: follow-ups revise the last plan, answers continue a question, ``why?`` and
fleet questions create no plan, ``--resume``, the requester's yes, withdraw, and an
approver's signed edit. In the middle, the offline model's follow-up reader on the sample
fleet: follow-ups narrow, never widen, ask naming a word that resolves to nothing, and say
why when they would leave the plan as it is."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fieldgate.agents import PlanningContext, planning_context
from fieldgate.agents.offline import (
    Clarification,
    Intent,
    count_targets,
    propose_plan,
    select_groups,
    understand,
    wave_sizes,
)
from fieldgate.agents.offline.followup import revise
from fieldgate.agents.planner import PlanDraft
from fieldgate.audit import EventKind
from fieldgate.cli import app
from fieldgate.contract import load_yaml
from fieldgate.fleet import FleetInventory
from fieldgate.graphs.compose import open_orchestrator
from fieldgate.manifest import CatalogFile
from fieldgate.plan import RolloutPlan, Selector
from fieldgate.store import Store

runner = CliRunner()
DATA = Path(__file__).resolve().parents[1] / "fieldgate" / "data"
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


# --- the follow-up reader of the offline model, on the sample fleet ----------------------------

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
VISION = "roll out vision-inspect 1.1.0 to eu-central"
HVAC_TWO = "roll out hvac-controller 2.4.1 to muc-01 and ber-03"
RUNTIME = "roll out edge-runtime 3.4.0 to eu-central"


@pytest.fixture(scope="module")
def sample() -> PlanningContext:
    fleet = load_yaml(DATA / "fleet.yaml", FleetInventory)
    catalog = load_yaml(DATA / "catalog.yaml", CatalogFile)
    return planning_context(fleet, catalog.modules, NOW)


def draft_of(intent: Intent, ctx: PlanningContext) -> dict[str, Any]:
    """The plan as the planner node hands it back to a follow-up (``plan_to_revise``)."""
    plan = propose_plan(intent, ctx, plan_id="draft", requested_by="draft")
    return plan.model_dump(mode="json", include=set(PlanDraft.model_fields))


def followed(ctx: PlanningContext, request: str, *follow_ups: str) -> Intent | Clarification:
    """``request``, then each follow-up revising the plan the one before gave."""
    understood: Intent | Clarification = understand(request, ctx)
    for line in follow_ups:
        assert isinstance(understood, Intent), f"before {line!r}: {understood}"
        understood = revise(line, draft_of(understood, ctx), ctx)
    return understood


def revised(ctx: PlanningContext, request: str, *follow_ups: str) -> tuple[RolloutPlan, list[int]]:
    intent = followed(ctx, request, *follow_ups)
    assert isinstance(intent, Intent), f"{follow_ups[-1]!r} -> {intent}"
    plan = propose_plan(intent, ctx, plan_id="draft", requested_by="draft")
    return plan, wave_sizes(plan.waves, count_targets(intent, ctx))


def asked(ctx: PlanningContext, request: str, *follow_ups: str) -> Clarification:
    question = followed(ctx, request, *follow_ups)
    assert isinstance(question, Clarification), f"{follow_ups[-1]!r} -> {question}"
    return question


def groups(ctx: PlanningContext, selector: Selector) -> dict[tuple[str, str], int]:
    return {
        (g.site, g.device_class): g.count
        for g in select_groups(ctx, selector.model_copy(update={"limit": None})).groups
    }


@pytest.mark.parametrize(
    ("request_text", "follow_up", "sites", "classes", "limit"),
    [
        (VISION, "only muc-01", ["muc-01"], ["camera-node"], None),
        (VISION, "just the muc-01 site please", ["muc-01"], ["camera-node"], None),
        (HVAC_TWO, "leave out ber-03", ["muc-01"], ["hvac-gw"], None),
        (HVAC_TWO, "not ber-03", ["muc-01"], ["hvac-gw"], None),
        (HVAC_TWO, "except the regulated sites", ["muc-01"], ["hvac-gw"], None),
        (HVAC_TWO, "only 10 of them", ["muc-01", "ber-03"], ["hvac-gw"], 10),
        (RUNTIME, "only the gateways", [], ["hvac-gw", "plc-gw"], None),
        (RUNTIME, "leave out ber-03", ["fab-01", "muc-01"], None, None),
    ],
)
def test_a_narrowing_follow_up_narrows_the_last_plan_and_keeps_the_rest(
    sample: PlanningContext,
    request_text: str,
    follow_up: str,
    sites: list[str],
    classes: list[str] | None,
    limit: int | None,
) -> None:
    before, _ = revised(sample, request_text)
    after, _ = revised(sample, request_text, follow_up)
    assert after.target.sites == sites
    if classes is not None:
        assert after.target.classes == classes
    assert after.target.limit == limit
    assert (after.module, after.version) == (before.module, before.version)
    # never wider: every device group of the revision was a target of the last plan
    old, new = groups(sample, before.target), groups(sample, after.target)
    assert new and all(key in old and count <= old[key] for key, count in new.items())
    assert "Read from the request:\n  - targets: " in after.rationale


@pytest.mark.parametrize(
    ("request_text", "follow_up", "word", "candidates"),
    [
        (VISION, "only the Munich site", "'Munich'", ["muc-01"]),
        (VISION, "just Munich", "'Munich'", ["muc-01"]),
        (HVAC_TWO, "only the Atlantis site", "'Atlantis'", None),
        (RUNTIME, "only the weather stations", "'weather'", None),
    ],
)
def test_a_follow_up_place_that_names_nothing_asks_naming_the_word(
    sample: PlanningContext,
    request_text: str,
    follow_up: str,
    word: str,
    candidates: list[str] | None,
) -> None:
    question = asked(sample, request_text, follow_up)
    assert question.reason == "unknown_site"
    assert word in question.question
    if candidates is not None:
        assert question.candidates == candidates


@pytest.mark.parametrize(
    ("request_text", "follow_up", "said"),
    [
        (VISION, "only tpa-04", "tpa-04 is not among the targets of the last plan"),
        (VISION, "leave out ber-03", "so there is nothing to leave out"),
        (PUMP, "only the bms controllers", "bms-ctl is not among the targets"),
        (VISION, "everywhere", "never widens it to every device"),
        (HVAC_TWO, "only 10 of them\nonly 20 of them", "takes at most 10 devices"),
    ],
)
def test_a_follow_up_never_widens_the_last_plan(
    sample: PlanningContext, request_text: str, follow_up: str, said: str
) -> None:
    question = asked(sample, request_text, *follow_up.split("\n"))
    assert question.reason == "widens"
    assert said in question.question


@pytest.mark.parametrize(
    ("request_text", "follow_up", "sizes", "said"),
    [
        (PUMP, "canary of 2", [2, 12, 46], "first wave of 2 devices, as asked"),
        (PUMP, "two first", [2, 12, 46], "first wave of 2 devices, as asked"),
        (PUMP, "make the canary smaller", [1, 12, 47], "first wave of 1 device, as asked"),
        (PUMP, "a smaller first wave", [1, 12, 47], "first wave of 1 device, as asked"),
        (PUMP, "in 4 waves", [3, 19, 19, 19], "4 waves, as asked"),
        (PUMP, "waves of 20%", [3, 12, 12, 12, 12, 9], "waves of 20% after the first"),
        (VISION, "make waves of 10", [1, 10, 5], "waves of 10 after the first, as asked"),
    ],
)
def test_canary_and_wave_sizes_asked_in_a_follow_up_are_honoured(
    sample: PlanningContext, request_text: str, follow_up: str, sizes: list[int], said: str
) -> None:
    before, _ = revised(sample, request_text)
    plan, planned = revised(sample, request_text, follow_up)
    assert planned == sizes
    assert said in plan.rationale
    assert plan.target == before.target


def test_a_canary_already_at_one_device_cannot_be_smaller(sample: PlanningContext) -> None:
    question = asked(sample, VISION, "make the canary smaller")
    assert question.reason == "nothing_to_change"
    assert "already 1 device, the smallest a first wave can be" in question.question
    assert "as asked" not in question.question
    question = asked(sample, PUMP, "make the canary smaller", "make the canary smaller")
    assert "already 1 device" in question.question


@pytest.mark.parametrize(
    ("request_text", "follow_up", "said"),
    [
        (VISION, "canary of 3", "with 16 targets it may take at most 1"),
        (VISION, "make the canary bigger", "with 16 targets it may take at most 1"),
        (HVAC, "right away", "policy lets safety class high and critical change devices only"),
        (VISION, "only the cameras", "the last plan already is what you asked"),
        (VISION, "tonight", "'tonight': a plan starts now or in each site's maintenance window"),
        (VISION, "make it faster", "I could not tell what 'faster' should change"),
        (VISION, "thanks", "I could not tell what to change"),
    ],
)
def test_a_follow_up_that_changes_nothing_says_why_and_plans_nothing(
    sample: PlanningContext, request_text: str, follow_up: str, said: str
) -> None:
    question = asked(sample, request_text.lower(), follow_up)
    assert question.reason == "nothing_to_change"
    assert said in question.question


def test_version_and_schedule_follow_ups_keep_the_targets(sample: PlanningContext) -> None:
    before, _ = revised(sample, PUMP)
    plan, _ = revised(sample, PUMP, "actually 2.0.0")
    assert plan.version == "2.0.0" and plan.target == before.target
    assert "version 2.0.0 (was 1.9.0)" in plan.rationale
    question = asked(sample, VISION, "actually 1.1.1")
    assert question.reason == "unknown_version" and "no version 1.1.1" in question.question
    assert question.candidates == ["0.9.0", "1.0.0", "1.1.0"]
    plan, _ = revised(sample, VISION, "tonight in the window")
    assert plan.schedule.mode == "maintenance"


def test_what_was_asked_before_survives_a_later_follow_up(sample: PlanningContext) -> None:
    plan, sizes = revised(sample, HVAC_TWO, "canary of 1", "only muc-01")
    assert plan.target.sites == ["muc-01"] and sizes[0] == 1
    plan, _ = revised(sample, PUMP, "in the maintenance window", "only 30 of them")
    assert plan.schedule.mode == "maintenance" and plan.target.limit == 30


def test_a_follow_up_that_holds_back_changes_nothing(sample: PlanningContext) -> None:
    question = asked(sample, PUMP, "hold off")
    assert question.reason == "unclear_action" and "'hold off'" in question.question


# --- the same follow-ups through the real chat -------------------------------------------------


def test_the_munich_conversation_narrows_asks_and_confirms(initialised_db: str) -> None:
    out = chat(
        VISION,
        "only the Munich site",
        "yes",  # the one candidate: muc-01
        "make the canary smaller",
        "why?",
        "what is the status",
        "how many devices?",
        "yes",  # no candidates to the open question: confirms the last plan
    )
    first, munich, narrowed, smaller = runs(initialised_db)
    assert munich.outcome == "needs_clarification"
    assert "I do not know a site or region called 'Munich'. Nearest known: muc-01." in out
    assert "answer here (yes takes muc-01)" in out
    values = plan_of(initialised_db, narrowed.plan_id)
    assert values["plan"]["target"]["sites"] == ["muc-01"]
    assert narrowed.detail.get("supersedes") == first.plan_id and first.outcome == "withdrawn"
    assert smaller.outcome == "needs_clarification"
    assert "already 1 device, the smallest a first wave can be" in out
    assert "1 devices, as asked" not in out and "1 device, as asked" not in out
    # why?, the status and how many devices mean the narrowed plan and create no plan
    assert f"why {narrowed.plan_id}" in out
    assert out.count(f"{narrowed.plan_id}: proposed, not queued") >= 2
    assert f"{narrowed.plan_id} targets 16 devices: muc-01 16 camera-node." in out
    assert runs(initialised_db)[2].status == "queued"


def test_an_answer_during_a_revision_revises_the_latest_revision(initialised_db: str) -> None:
    chat(HVAC_TWO, "canary of 1", "only the Atlantis site", "muc-01")
    first, second, asked_back, answered = runs(initialised_db)
    assert asked_back.outcome == "needs_clarification"
    assert answered.detail.get("supersedes") == second.plan_id
    values = plan_of(initialised_db, answered.plan_id)
    assert values["plan"]["target"]["sites"] == ["muc-01"]
    # the canary of 1 asked in the revision before stays
    assert values["findings"]["wave_sizes"][0] == 1
    assert values["plan"]["version"] == "2.4.1"
    assert [r.outcome for r in (first, second)] == ["withdrawn", "withdrawn"]


def test_questions_about_the_plan_and_the_fleet_create_no_plan(initialised_db: str) -> None:
    out = chat(PUMP, "status of it?", "how many devices?", "what runs at muc-01?", "/why")
    (run,) = runs(initialised_db)
    assert f"{run.plan_id} targets 60 devices: rtm-05 60 pump-ctl." in out
    assert "I answer questions about the last plan" in out
    assert f"why {run.plan_id}" in out


def test_the_same_module_named_again_revises_another_module_is_its_own_plan(
    initialised_db: str,
) -> None:
    chat(PUMP, "pump-logic 2.0.0 instead", HVAC, "roll out pumplogic 1.9.0 to rtm-05", "yes")
    first, second, hvac, asked_back = runs(initialised_db)
    assert second.detail.get("supersedes") == first.plan_id
    assert plan_of(initialised_db, second.plan_id)["plan"]["version"] == "2.0.0"
    assert asked_back.outcome == "needs_clarification"
    # "yes" to a question with two candidates picks neither and supersedes nothing
    assert hvac.outcome is None and hvac.status == "awaiting_approval"
    chat("yes, pump-logic", args=("--resume",))
    *_, pump = runs(initialised_db)
    values = plan_of(initialised_db, pump.plan_id)
    assert (values["plan"]["module"], values["plan"]["target"]["sites"]) == (
        "pump-logic",
        ["rtm-05"],
    )
    assert "supersedes" not in pump.detail
    assert runs(initialised_db)[2].outcome is None  # the hvac plan still waits


def test_the_openai_path_gets_a_revisions_answer_with_the_plan_to_revise(
    initialised_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldgate.agents.offline.server import Recording, ReplayBackend, model_server

    backend = ReplayBackend(Recording(replies=[]))
    with model_server(backend) as base_url:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        chat(VISION, "only the Munich site", "yes", args=("--model", "openai:offline"))
    first, _, narrowed = runs(initialised_db)
    messages = backend.requests("planner")[-1]["messages"]
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert messages[1]["content"] == VISION and messages[3]["content"] == "only the Munich site"
    assert "'Munich'" in messages[4]["content"]
    assert "<plan_to_revise" in messages[5]["content"]
    assert "only the muc-01 site" in messages[5]["content"]
    assert plan_of(initialised_db, narrowed.plan_id)["plan"]["target"]["sites"] == ["muc-01"]
    assert narrowed.detail.get("supersedes") == first.plan_id
