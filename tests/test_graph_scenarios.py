"""The six shared scenarios end to end through the rollout graph with the offline model.

Each scenario is driven the way the eval harness drives it (submit with its ticket,
the scripted approvals while the run waits for them, then a worker works the queued
run) and every ``expect`` key it has is checked against the graph state, the fleet
twin and the audit log.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from _scenario_driver import (
    drive,
    expect_failures,
    load,
    open_run,
    run_outcome,
    scenario_paths,
    submit,
    variant,
)
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from fieldgate.audit import EventKind
from fieldgate.errors import InputInvalid
from fieldgate.graphs.runner import RunView
from fieldgate.scenario import Expect, load_scenario

SCENARIOS = scenario_paths()


def test_the_six_shared_scenarios_are_there() -> None:
    assert [p.stem for p in SCENARIOS] == [
        "ambiguous-version",
        "canary-fails-rollback",
        "safety-approval",
        "small-auto-allow",
        "telemetry-injection",
        "unsigned-denied",
    ]


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_passes_end_to_end_on_sqlite(path: Path, sqlite_url: str) -> None:
    scenario = load_scenario(path)
    with open_run(scenario, sqlite_url) as (world, orchestrator):
        assert isinstance(orchestrator.graph.checkpointer, SqliteSaver)
        view = drive(world, orchestrator)
        assert expect_failures(world, view) == []
        # The run's own record agrees with the graph state.
        run = world.store.runs.get(view.thread_id)
        if view.outcome:
            assert (run.status, run.outcome) == ("done", view.outcome)
        else:
            assert run.status == "awaiting_approval"


@pytest.mark.postgres
def test_approval_scenario_passes_on_postgres(pg_url: str) -> None:
    scenario = load("safety-approval")
    with open_run(scenario, pg_url) as (world, orchestrator):
        assert isinstance(orchestrator.graph.checkpointer, PostgresSaver)
        assert world.store.engine.url.get_backend_name() == "postgresql"
        view = drive(world, orchestrator)
        assert expect_failures(world, view) == []
        # The requester's own approval was received and ignored; saf-lee's counted.
        approvals = view.values["approvals"]
        assert approvals["counted"] == ["saf-lee"]
        assert any(i["approver"] == "eng-ana" for i in approvals["ignored"])


def test_expect_checks_fail_when_the_world_disagrees(sqlite_url: str) -> None:
    """The checker is not vacuous: each kind of wrong expectation is reported."""
    scenario = load("canary-fails-rollback")
    with open_run(scenario, sqlite_url) as (world, orchestrator):
        view = drive(world, orchestrator)
        assert run_outcome(view) == "rolled_back"
        wrong = {
            "outcome": {"outcome": "completed"},
            "deny_includes": {"deny_includes": ["freeze"]},
            "approvals_required": {"approvals_required": [{"role": "safety", "count": 1}]},
            "plan": {
                "plan": {
                    "module": "edge-runtime",
                    "version": "1.8.0",
                    "targets": 59,
                    "first_wave_max": 2,
                    "waves_min": 9,
                    "schedule": "maintenance",
                }
            },
            "devices": {"devices": {"versions": {"pump-logic": {"1.9.0": 60}}, "touched_max": 2}},
            "audit": {"audit": {"kinds": ["approval"]}},
        }
        for key, expect in wrong.items():
            other = dataclasses.replace(world, scenario=variant(scenario, expect=expect))
            failures = expect_failures(other, view)
            assert failures, key
        plan_failures = expect_failures(
            dataclasses.replace(world, scenario=variant(scenario, expect=wrong["plan"])), view
        )
        assert len(plan_failures) == 6
        assert (
            expect_failures(
                dataclasses.replace(
                    world, scenario=scenario.model_copy(update={"expect": Expect()})
                ),
                view,
            )
            == []
        )


def test_a_run_is_recorded_with_its_request_once_however_it_starts(sqlite_url: str) -> None:
    scenario = variant(load("safety-approval"), approvals=[])
    with open_run(scenario, sqlite_url) as (world, orchestrator):
        submitted = orchestrator.submit(scenario.request, scenario.actor, plan_id="from-cli")
        # A LangGraph API client knows only the request and who asks; intake records the run.
        orchestrator.graph.invoke(
            {"request": scenario.request, "actor": scenario.actor},
            orchestrator.config("from-api"),
            context=world.ctx,
            durability="sync",
        )
        from_api = orchestrator.view("from-api")
        for view in (submitted, from_api):
            assert view.status == "awaiting_approval"
            run = world.store.runs.get(view.thread_id)
            assert (run.plan_id, run.request, run.status) == (
                view.thread_id,
                scenario.request,
                "awaiting_approval",
            )
            events = world.store.audit.events(plan_id=view.thread_id)
            requests = [e for e in events if e.kind == EventKind.request]
            assert len(requests) == 1, "the request is audited exactly once"
            assert requests[0].payload["text"] == scenario.request
            assert events[0] == requests[0], "the request comes first"
        assert world.store.audit.verify().ok


def _same_place(returned: RunView, stored: RunView) -> None:
    assert returned.values == stored.values
    assert returned.next == stored.next
    assert [i.id for i in returned.interrupts] == [i.id for i in stored.interrupts]
    assert returned.status == stored.status


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_the_view_an_invoke_returns_is_the_one_its_checkpoint_holds(
    path: Path, sqlite_url: str
) -> None:
    # submit, decide and work read where the run stopped from the invoke itself, not from
    # the checkpoint: at every stop the two must agree.
    scenario = load_scenario(path)
    with open_run(scenario, sqlite_url) as (world, orchestrator):
        view = submit(world, orchestrator)
        _same_place(view, orchestrator.view(view.thread_id))
        stops = [view.status]
        for scripted in scenario.approvals:
            if view.status != "awaiting_approval":
                break
            key = world.keys[scripted.by]
            view = orchestrator.decide(view.thread_id, key, scripted.decision.value, "")
            _same_place(view, orchestrator.view(view.thread_id))
            stops.append(view.status)
        if view.status == "queued":
            view = orchestrator.work(view.thread_id)
            _same_place(view, orchestrator.view(view.thread_id))
            stops.append(view.status)
        assert stops[-1] in ("done", "awaiting_approval")


def test_the_graph_declares_its_input_and_refuses_a_bad_one_before_recording(
    sqlite_url: str,
) -> None:
    scenario = variant(load("safety-approval"), approvals=[])
    with open_run(scenario, sqlite_url) as (world, orchestrator):
        schema = orchestrator.graph.get_input_jsonschema()
        assert schema["required"] == ["request"]
        assert {"request", "actor", "ticket"} <= set(schema["properties"])

        def start(thread: str, payload: dict[str, str], caller: str | None = None) -> None:
            config = orchestrator.config(thread)
            if caller:
                config["configurable"]["langgraph_auth_user_id"] = caller
            orchestrator.graph.invoke(payload, config, context=world.ctx, durability="sync")

        for thread, payload, caller, problem in (
            ("no-actor", {"request": scenario.request}, None, "actor: Field required"),
            ("empty", {"request": "", "actor": "eng-ana"}, None, "request: String should"),
            ("spoof", {"request": "x", "actor": "saf-lee"}, "eng-ana", "not the authenticated"),
        ):
            with pytest.raises(InputInvalid, match=problem):
                start(thread, payload, caller)
            assert not world.store.runs.exists(thread)
            assert world.store.audit.events(plan_id=thread) == []
        start("authenticated", {"request": scenario.request}, caller="eng-ana")
        run = world.store.runs.get("authenticated")
        assert (run.actor, run.status) == ("eng-ana", "awaiting_approval")
