"""One record per executor tool: the model's tool list, the tools policy and the offline
executor all read the same registry, and a tool policy does not know is never allowed."""

from __future__ import annotations

import json

import pytest

from fieldgate.agents.offline import model as offline
from fieldgate.policy import TOOLS as TOOLS_DECISION
from fieldgate.policy import PolicyPack, RegoEngine
from fieldgate.tools import CHANGING, ROLES, TOOLS, policy_tools, tool_specs, tools_with_role

ENGINE = RegoEngine()


def test_the_tools_policy_data_is_the_registry() -> None:
    assert PolicyPack.load().data["fieldgate"]["config"]["tools"] == policy_tools()
    assert sorted(n for names in policy_tools().values() for n in names) == sorted(TOOLS)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_policy_judges_each_tool_by_its_role(name: str) -> None:
    tool = TOOLS[name]
    on = ENGINE.decide(TOOLS_DECISION, {"tool": name, "args": {}, "kill_switch": True})
    assert on["kind"] == tool.role
    # The kill switch refuses exactly the tools that change devices or let changes go on.
    assert ("kill switch is on" in on["reason"]) is tool.changes_devices
    assert tool.changes_devices is (tool.role in CHANGING)


def test_a_name_outside_the_registry_is_unknown_to_policy() -> None:
    decision = ENGINE.decide(TOOLS_DECISION, {"tool": "deploy", "args": {}, "kill_switch": False})
    assert decision["allow"] is False and decision["kind"] == "unknown"


def test_the_model_is_shown_every_tool_with_its_docstring_as_prompt() -> None:
    specs = {s["function"]["name"]: s["function"] for s in tool_specs()}
    assert list(specs) == list(TOOLS)
    for name, spec in specs.items():
        words = " ".join((TOOLS[name].args.__doc__ or "").split())
        assert spec["description"] == words and words
        assert spec["parameters"]["additionalProperties"] is False


def test_every_role_has_a_tool() -> None:
    assert all(tools_with_role(role) for role in ROLES)


def _situation(**facts: object) -> str:
    situation = {"kill_switch": False, "paused": False, "abort": {}, "next_wave": 0, **facts}
    return f"<situation>\n{json.dumps(situation)}\n</situation>"


def test_the_offline_executor_picks_tools_by_role_among_those_offered() -> None:
    everything = set(TOOLS)
    assert offline.executor_decision(_situation(), everything) == ("deploy_wave", {"wave": 0})
    halted = offline.executor_decision(_situation(kill_switch=True), everything)
    assert halted == ("pause", {"reason": "the kill switch is on"})
    tripped = {"tripped": True, "reason": "3 of 4 failed"}
    back = offline.executor_decision(_situation(abort=tripped, rollback_automatic=True), everything)
    assert back == ("rollback", {"reason": "3 of 4 failed"})


def test_the_offline_executor_under_the_kill_switch_without_a_halt_tool_does_nothing() -> None:
    reads = set(tools_with_role("read")) | set(tools_with_role("deploy"))
    assert offline.executor_decision(_situation(kill_switch=True), reads) is None
