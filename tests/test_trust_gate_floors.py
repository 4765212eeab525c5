"""A model that proposes health gates which cannot fail: the plan is denied at the floors (D11).

The planner model answers canary-fails-rollback with its usual waves, but every health gate
asks for nothing (``min_success_rate: 0``, ``max_failures: 100000``, no soak) and the abort
criteria are never judged (``min_executed: 1000000``; the failure threshold stays the
planner's 10%, which the pack always held to a maximum). Without
floors on the gates the pack allowed that plan without approvals: the canary's failed
installs "passed" its gate and every pump controller got pump-logic 1.9.0. With D11 the
plan is denied, the message names the wave, the gate field and the floor, and no command
reaches a device. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from _scenario_driver import RecordingModel, drive, load, open_run, policy_engine
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from test_policy_inputs import build, input_document, plan_for, world

from fieldgate.agents.offline.planning import rollback_waves, rollout_waves
from fieldgate.audit import EventKind
from fieldgate.commands import Action
from fieldgate.manifest import SafetyClass
from fieldgate.plan import select_devices

LAX_GATE = {"min_success_rate": 0, "max_failures": 100000, "soak_minutes": 0}
"""A health gate no wave can fail."""
NEVER_JUDGED = 1000000
"""An ``abort.min_executed`` no rollout reaches: the abort criteria are never judged."""


class LaxPlannerModel(RecordingModel):
    """The offline model, whose plans carry gates and abort criteria that never stop a wave."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = super()._generate(messages, stop, run_manager, **kwargs)
        message = result.generations[0].message
        if not isinstance(message, AIMessage):
            return result
        calls = []
        for call in message.tool_calls:
            plan = call["args"].get("plan") if call["name"] == "PlannerDecision" else None
            if plan:
                plan = {
                    **plan,
                    "waves": [{**w, "health_gate": LAX_GATE} for w in plan["waves"]],
                    "abort": {**plan["abort"], "min_executed": NEVER_JUDGED},
                }
                call = {**call, "args": {**call["args"], "plan": plan}}
            calls.append(call)
        lax = AIMessage(content=message.content, tool_calls=calls)
        return ChatResult(generations=[ChatGeneration(message=lax)])


def test_a_plan_whose_gates_cannot_fail_is_denied_and_reaches_no_device(db_url: str) -> None:
    model = LaxPlannerModel()
    with open_run(load("canary-fails-rollback"), db_url, model=model) as (world, orchestrator):
        view = drive(world, orchestrator)

        # the model did propose the lax plan: it is the plan the policy decided on
        plan = view.values["plan"]
        assert [w["health_gate"] for w in plan["waves"]] == [LAX_GATE] * len(plan["waves"])
        assert plan["abort"]["min_executed"] == NEVER_JUDGED

        decision = view.values["decision"]
        assert decision["allow"] is False
        assert view.outcome == "denied"
        assert (
            "wave 1 canary: min_success_rate 0 is below the floor 0.95 for safety class low"
            in decision["deny"]
        )
        deny = "\n".join(decision["deny"])
        assert "wave 1 canary: max_failures 100000 is above the floor 1" in deny
        assert "wave 1 canary: soak_minutes 0 is below the floor 10" in deny
        assert "abort: min_executed 1000000 is above the floor 3" in deny
        assert {v["rule"] for v in decision["violations"]} == {"D11"}

        # nothing reached a device: no command, no effect, every controller as it was
        assert world.twin.effects() == []
        assert not [e for e in world.twin.effects() if e.action is Action.install]
        assert world.twin.versions("pump-logic") == {"1.8.0": 60}
        calls = world.store.audit.events(plan_id=world.plan_id, kinds=[EventKind.tool_call])
        assert not [c for c in calls if c.payload["tool"] in {"deploy_wave", "rollback"}]

        # the denial, with the floor it names, is in the audit log
        decisions = world.store.audit.events(
            plan_id=world.plan_id, kinds=[EventKind.policy_decision]
        )
        assert any("below the floor 0.95" in json.dumps(e.payload) for e in decisions)
        assert world.store.audit.verify().ok


@pytest.mark.parametrize("safety", list(SafetyClass))
@pytest.mark.parametrize("rollback", [False, True], ids=["rollout", "rollback"])
@pytest.mark.parametrize("n", [1, 7, 11, 60])
def test_the_offline_planners_gates_meet_the_floors(
    safety: SafetyClass, rollback: bool, n: int
) -> None:
    """The planner's waves and abort criteria (as ``propose_plan`` sets them) pass D11."""
    w = world("canary-fails-rollback")
    careful = safety in {SafetyClass.high, SafetyClass.critical}
    devices = w.devices
    if rollback:
        devices = [
            d.model_copy(update={"installed": {**d.installed, "pump-logic": "1.9.0"}})
            for d in devices
        ]
        waves = rollback_waves(n, careful, exempt=True)
    else:
        waves = rollout_waves(n, careful, one_wave=False)
    threshold = 0.1 if rollback or not careful else 0.05
    plan = plan_for(
        "pump-logic",
        "1.8.0" if rollback else "1.9.0",
        {"sites": ["rtm-05"], "limit": n},
        intent="rollback" if rollback else "rollout",
        waves=[wave.model_dump(exclude_none=True) for wave in waves],
        abort={"failure_threshold": threshold, "min_executed": 1},
        rollback={"version": "1.9.0" if rollback else "1.8.0"},
    )
    manifest = w.manifest(plan.module, plan.version).model_copy(
        update={"safety": safety, "downgrade_allowed": True}
    )
    inp = build(w, plan, manifest=manifest, targets=select_devices(plan.target, devices, w.sites))
    decision = policy_engine().decide("data.fieldgate.rollout.decision", input_document(inp))
    floors = [v["message"] for v in decision["violations"] if v["rule"] == "D11"]
    assert floors == []
    assert decision["rollback"] is rollback
