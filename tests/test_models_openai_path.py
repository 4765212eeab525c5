"""Rollouts through ``--model openai:offline``: the real ``openai`` client against the server.

The six shared scenarios pass with ``ChatOpenAI`` talking to the offline model served on
loopback, with real token usage in the state and the audit log. Recorded malformed
responses (``tests/recorded/``) then stand in for a misbehaving model: each run ends
safely, the invalid output is audited, and no device outside the plan is touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _scenario_driver import (
    audit_kinds,
    drive,
    expect_failures,
    load,
    policy_engine,
    scenario_paths,
)

from fieldgate.agents.models import make_model
from fieldgate.agents.offline.server import Recording, ReplayBackend, Role, model_server
from fieldgate.audit import AuditEvent, EventKind
from fieldgate.evals._world import World, build_world
from fieldgate.graphs.checkpoint import open_checkpointer
from fieldgate.graphs.runner import Orchestrator, RunView
from fieldgate.scenario import Scenario

RECORDED = Path(__file__).parent / "recorded"
MODEL = "openai:offline"


@dataclass
class Run:
    """One scenario run through the OpenAI path, and what the server saw."""

    world: World
    view: RunView
    backend: ReplayBackend
    seconds: float

    def events(self, kind: EventKind, actor: str | None = None) -> list[AuditEvent]:
        return [
            e
            for e in self.world.store.audit.events(plan_id=self.world.plan_id)
            if e.kind == kind and (actor is None or e.actor == actor)
        ]

    def done(self) -> dict[str, Any]:
        (event,) = self.events(EventKind.done)
        return event.payload

    def plan_devices(self) -> set[str]:
        """Every device the (last) plan's waves name, as the executor fans them out."""
        execution = self.view.values.get("execution") or {}
        return {d for wave in execution.get("waves", []) for d in wave["devices"]}

    def refused_calls(self) -> list[dict[str, Any]]:
        return [e.payload for e in self.events(EventKind.tool_call) if not e.payload["allow"]]


def recording(name: str, **changes: Any) -> Recording:
    """A recording from ``tests/recorded/``, its first reply changed as asked."""
    loaded = Recording.load(RECORDED / f"{name}.json")
    for key, value in changes.items():
        setattr(loaded.replies[0], key, value)
    return loaded


@contextmanager
def openai_world(
    scenario: Scenario,
    db_url: str,
    base_url: str,
    monkeypatch: pytest.MonkeyPatch,
    streaming: bool = False,
    **limits: Any,
) -> Iterator[tuple[World, Orchestrator]]:
    """The scenario's world with ``make_model("openai:offline")`` pointed at ``base_url``."""
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    model = make_model(MODEL, **limits)
    if streaming:
        # As LangGraph's "messages" stream mode makes every model call stream.
        model = model.model_copy(update={"streaming": True})
    world = build_world(scenario, db_url, 0, model, policy_engine(), model_name=MODEL)
    try:
        with open_checkpointer(db_url) as checkpointer:
            yield world, Orchestrator(world.ctx, checkpointer)
    finally:
        world.store.close()


@pytest.fixture
def run_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Run]:
    """Drive a scenario through a replay server: ``run_replay(recording, scenario, **limits)``."""

    def run(replay: Recording, scenario: str, **limits: Any) -> Run:
        limits = {"timeout_s": 5.0, "max_retries": 2, **limits}
        backend = ReplayBackend(replay)
        with model_server(backend) as base_url:
            db_url = f"sqlite:///{tmp_path}/{scenario}.db"
            with openai_world(load(scenario), db_url, base_url, monkeypatch, **limits) as (
                world,
                orchestrator,
            ):
                started = time.monotonic()
                view = drive(world, orchestrator)
                seconds = time.monotonic() - started
                assert world.store.audit.verify().ok
                return Run(world, view, backend, seconds)

    return run


def no_recording() -> Recording:
    """An empty recording: the replay server is the offline server that logs every exchange."""
    return Recording(replies=[])


# --------------------------------------------------------------------------- the six scenarios


@pytest.mark.parametrize("path", scenario_paths(), ids=lambda p: p.stem)
def test_shared_scenarios_pass_through_the_openai_client(
    path: Path, run_replay: Callable[..., Run]
) -> None:
    run = run_replay(no_recording(), path.stem)
    assert expect_failures(run.world, run.view) == []
    tokens: dict[Role, dict[str, int]] = run.view.values["tokens"]
    assert tokens["planner"]["input"] > 0 and tokens["planner"]["calls"] == 1
    # Every request went through the server, and its usage is what the state counts.
    for node in tokens:
        usage = run.backend.usage(node)
        assert (tokens[node]["input"], tokens[node]["output"]) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )
        assert tokens[node]["calls"] == len(run.backend.requests(node))
    if run.view.outcome is not None:
        done = run.done()
        assert done["model"] == MODEL and done["tokens"] == tokens
        assert done["tokens_total"]["input"] == sum(t["input"] for t in tokens.values())
        assert done["tokens_total"]["calls"] == len(run.backend.exchanges)


def test_streaming_client_counts_tokens_too(run_replay: Callable[..., Run]) -> None:
    run = run_replay(no_recording(), "small-auto-allow", streaming=True)
    assert expect_failures(run.world, run.view) == []
    assert all(e.request.get("stream") for e in run.backend.exchanges)
    assert run.backend.exchanges[0].request["stream_options"] == {"include_usage": True}
    tokens: dict[Role, dict[str, int]] = run.view.values["tokens"]
    roles: tuple[Role, ...] = ("planner", "validator", "executor")
    for node in roles:
        usage = run.backend.usage(node)
        assert tokens[node]["input"] == usage["prompt_tokens"] > 0
        assert tokens[node]["output"] == usage["completion_tokens"] > 0


# --------------------------------------------------------------------------- invalid plans


def test_planner_bad_json_is_fed_back_then_the_run_fails(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("planner-bad-json"), "small-auto-allow")
    assert run.view.outcome == "failed"
    (reason,) = run.view.values["reasons"]
    assert "PlannerDecision call is not valid JSON" in reason and "3 attempts" in reason
    assert audit_kinds(run.world) == [EventKind.request, EventKind.validation, EventKind.done]
    (audited,) = run.events(EventKind.validation, "planner")
    rejected = audited.payload["invalid_model_output"]
    assert len(rejected) == 3
    assert all('"module": "air-quality-model"' in r["output"] for r in rejected)
    assert all("Unterminated string" in r["error"] for r in rejected)
    # Each retry sends the refused call back with the error as the tool's answer.
    second = run.backend.requests("planner")[1]["messages"]
    assert second[-2]["tool_calls"][0]["id"] == "call_rec0001"
    assert second[-1]["role"] == "tool" and "not valid JSON" in second[-1]["content"]
    assert run.view.values["tokens"]["planner"] == {"input": 3 * 701, "output": 3 * 64, "calls": 3}
    assert run.world.twin.touched() == set()


def test_planner_bad_json_once_is_corrected(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("planner-bad-json", repeat=1), "small-auto-allow")
    assert run.view.outcome == "completed"
    (audited,) = run.events(EventKind.validation, "planner")
    assert len(audited.payload["invalid_model_output"]) == 1
    assert run.world.twin.touched() == run.plan_devices()


def test_planner_schema_violation_fails_with_the_field(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("planner-schema-violation"), "small-auto-allow")
    assert run.view.outcome == "failed"
    assert "plan.waves: Field required" in run.view.values["reasons"][0]
    (audited,) = run.events(EventKind.validation, "planner")
    assert [r["error"] for r in audited.payload["invalid_model_output"]] == [
        "the PlannerDecision call does not follow its schema: plan.waves: Field required"
    ] * 3
    assert not run.events(EventKind.plan)
    assert run.world.twin.touched() == set()


def test_hallucinated_device_goes_back_to_the_planner(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("planner-hallucinated-device"), "small-auto-allow")
    assert run.view.outcome == "completed" and run.view.values["revisions"] == 2
    first, second = run.events(EventKind.plan)
    assert "lyon-02-env-sensor-07" in first.payload["plan"]["target"]["devices"]
    assert second.payload["plan"]["target"]["devices"] == []
    revise, accept = run.events(EventKind.validation, "validator")
    assert revise.payload["verdict"] == "revise" and accept.payload["verdict"] == "accept"
    problem = "unknown devices in the target: lyon-02-env-sensor-07"
    assert problem in revise.payload["findings"]["problems"]
    # The validator's finding reaches the planner model as feedback.
    assert problem in run.backend.requests("planner")[1]["messages"][-1]["content"]
    assert "lyon-02-env-sensor-07" not in run.world.twin.touched()
    assert run.world.twin.touched() == run.plan_devices()


def test_hallucinated_device_every_time_is_denied(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("planner-hallucinated-device", repeat=5), "small-auto-allow")
    assert run.view.outcome == "denied"
    reasons = run.view.values["reasons"]
    assert any("lyon-02-env-sensor-07" in r for r in reasons)
    assert reasons[-1] == "no valid plan after 3 revisions"
    assert len(run.events(EventKind.plan)) == 3
    assert not run.events(EventKind.policy_decision) and not run.events(EventKind.tool_call)
    assert run.world.twin.touched() == set()


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("planner-unknown-version", "air-quality-model@1.4.0"),
        ("planner-unknown-module", "air-quality-model-pro@1.2.0"),
    ],
)
def test_module_or_version_not_in_the_catalog_goes_back_to_the_planner(
    run_replay: Callable[..., Run], name: str, ref: str
) -> None:
    run = run_replay(recording(name), "small-auto-allow")
    assert run.view.outcome == "completed"
    first, second = run.events(EventKind.plan)
    assert "{module}@{version}".format(**first.payload["plan"]) == ref
    assert "{module}@{version}".format(**second.payload["plan"]) == "air-quality-model@1.2.0"
    revise = run.events(EventKind.validation, "validator")[0]
    assert revise.payload["concerns"] == [f"{ref} is not in the catalog"]
    assert (
        f"{ref} is not in the catalog"
        in (run.backend.requests("planner")[1]["messages"][-1]["content"])
    )
    assert run.world.twin.versions("air-quality-model") == {"1.2.0": 6}


def test_validator_cannot_accept_a_plan_with_problems(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("validator-rubber-stamp"), "small-auto-allow")
    assert run.view.outcome == "completed" and run.view.values["revisions"] == 2
    overridden = run.events(EventKind.validation, "validator")[0].payload
    # The model said accept; the deterministic finding sends the plan back regardless.
    assert overridden["verdict"] == "revise"
    assert overridden["concerns"] == ["unknown devices in the target: lyon-02-env-sensor-07"]
    assert run.world.twin.touched() == run.plan_devices()
    assert "lyon-02-env-sensor-07" not in run.world.twin.touched()


def test_validator_schema_violation_fails_the_run(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("validator-schema-violation"), "small-auto-allow")
    assert run.view.outcome == "failed"
    (reason,) = run.view.values["reasons"]
    assert reason.startswith("the validator model gave no valid answer")
    assert "verdict: Input should be 'accept' or 'revise'" in reason
    (audited,) = run.events(EventKind.validation, "validator")
    assert len(audited.payload["invalid_model_output"]) == 3
    assert '"verdict": "approve"' in audited.payload["invalid_model_output"][0]["output"]
    assert run.view.values["tokens"]["validator"]["calls"] == 3
    assert not run.events(EventKind.policy_decision)
    assert run.world.twin.touched() == set()


# --------------------------------------------------------------------------- invalid tool calls


def test_wave_out_of_order_is_refused_and_nothing_moves(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("executor-wave-out-of-order"), "safety-approval")
    assert run.view.outcome == "completed"
    calls = run.events(EventKind.tool_call)
    refused = calls[0].payload
    assert (refused["tool"], refused["args"]["wave"], refused["allow"]) == ("deploy_wave", 2, False)
    assert "wave 2 is not the current wave 0" in refused["reason"]
    # The refused call sent nothing: the first result and device reports come from wave 0.
    kinds = audit_kinds(run.world)
    assert kinds.index(EventKind.device_report) > kinds.index(EventKind.tool_call) + 1
    first_result = run.events(EventKind.tool_result)[0].payload
    assert first_result["tool"] == "deploy_wave" and first_result["result"]["wave"] == 0
    # The executor was told why, as data.
    retry = run.backend.requests("executor")[1]["messages"][-1]["content"]
    assert "wave 2 is not the current wave 0" in retry and 'source="last_tool_result"' in retry
    assert run.world.twin.touched() == run.plan_devices()


def test_rollback_to_another_version_is_refused(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("executor-rollback-off-plan"), "canary-fails-rollback")
    assert run.view.outcome == "rolled_back"
    (refused,) = run.refused_calls()
    assert refused["tool"] == "rollback" and refused["args"]["version"] == "1.7.0"
    assert refused["reason"] == "invalid arguments: version: Extra inputs are not permitted"
    assert len(run.events(EventKind.rollback)) == 1
    assert run.world.twin.versions("pump-logic") == {"1.8.0": 60}
    assert len(run.world.twin.touched()) <= 3
    assert run.world.twin.touched() <= run.plan_devices()


def test_unknown_tool_is_refused_and_audited(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("executor-unknown-tool"), "small-auto-allow")
    assert run.view.outcome == "completed"
    (refused,) = run.refused_calls()
    assert (refused["tool"], refused["reason"]) == ("flash_firmware", "unknown tool")
    assert refused["args"] == {"devices": "all", "module": "air-quality-model", "version": "1.2.0"}
    assert run.world.twin.touched() == run.plan_devices()


def test_refused_calls_past_the_bound_end_the_run(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("executor-unknown-tool", repeat=20), "small-auto-allow")
    assert run.view.outcome == "failed"
    assert "the executor kept making refused calls" in run.view.values["reasons"][0]
    assert len(run.refused_calls()) == 7 and not run.events(EventKind.tool_result)
    assert run.world.twin.touched() == set()


def test_executor_bad_json_is_refused(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("executor-bad-json"), "small-auto-allow")
    assert run.view.outcome == "completed"
    (refused,) = run.refused_calls()
    assert refused["tool"] == "deploy_wave"
    assert "not valid JSON" in refused["reason"] and refused["args"] == {
        "__invalid__": "{'wave': 0"
    }


# --------------------------------------------------------------------------- transport failures


def test_planner_timeout_retries_with_backoff_then_fails(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("planner-hang"), "small-auto-allow", timeout_s=0.3, max_retries=1)
    assert run.view.outcome == "failed"
    (reason,) = run.view.values["reasons"]
    assert "timeout 0.3 s, 2 attempts" in reason and "Request timed out" in reason
    assert len(run.backend.requests("planner")) == 2
    # Two timeouts and a backoff between them; the 30 s hang never ran to its end.
    assert 0.6 <= run.seconds < 10
    (audited,) = run.events(EventKind.validation, "planner")
    assert "Request timed out" in audited.payload["error"]
    assert run.done()["reasons"] == [reason]
    assert run.world.twin.touched() == set()


def test_executor_timeout_fails_before_any_device(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("executor-hang"), "small-auto-allow", timeout_s=0.3, max_retries=1)
    assert run.view.outcome == "failed"
    assert "the executor model gave no answer" in run.view.values["reasons"][0]
    assert len(run.backend.requests("executor")) == 2
    assert run.events(EventKind.policy_decision) and not run.events(EventKind.tool_call)
    assert run.world.twin.touched() == set()


@pytest.mark.parametrize("name", ["rate-limited", "server-error"])
def test_transient_error_then_success(run_replay: Callable[..., Run], name: str) -> None:
    run = run_replay(recording(name), "small-auto-allow")
    assert run.view.outcome == "completed"
    statuses = [e.reply.status for e in run.backend.exchanges if e.role == "planner"]
    assert statuses == [429 if name == "rate-limited" else 500, 200]
    # The client's retry is invisible to the graph: one answered planner call.
    assert run.view.values["tokens"]["planner"]["calls"] == 1


def test_rate_limit_past_the_retries_fails(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("rate-limited", repeat=3), "small-auto-allow")
    assert run.view.outcome == "failed"
    assert "RateLimitError" in run.view.values["reasons"][0]
    assert len(run.backend.requests("planner")) == 3
    assert run.world.twin.touched() == set()


def test_body_that_is_not_json_fails_cleanly(run_replay: Callable[..., Run]) -> None:
    run = run_replay(recording("not-json-body"), "small-auto-allow")
    assert run.view.outcome == "failed"
    assert "JSONDecodeError" in run.view.values["reasons"][0]
    assert run.world.twin.touched() == set()
