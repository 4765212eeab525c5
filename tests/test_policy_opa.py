"""The OPA server engine over real HTTP, against the loopback test server (OPA's Go evaluator
behind OPA's REST API), or a real OPA server when ``OPA_URL`` is set (marker ``opa``)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opa_server import OpaTestServer
from test_policy_inputs import build, hvac_plan, plan_for, pump_plan, world

from fieldgate.policy import (
    APPROVALS,
    ROLLOUT,
    TOOLS,
    OpaServerEngine,
    PolicyPack,
    RegoEngine,
    default_policy_dir,
    input_document,
    tool_input,
)


@pytest.fixture
def server() -> Iterator[OpaTestServer]:
    opa = OpaTestServer().start()
    try:
        yield opa
    finally:
        opa.stop()


@pytest.fixture(scope="module")
def rego() -> RegoEngine:
    return RegoEngine()


def canonical(value: Any) -> Any:
    """Sort lists so that set order (which engines may render differently) does not matter."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


def decision_inputs() -> list[tuple[str, dict[str, Any]]]:
    """Rollout, approvals and tool inputs where decisions allow, deny and ask for approvals."""
    unsigned = world("unsigned-denied")
    plan = pump_plan()
    inputs = [
        (ROLLOUT, input_document(build(world("canary-fails-rollback"), plan))),
        (ROLLOUT, input_document(build(world("canary-fails-rollback"), pump_plan(canary=30)))),
        (ROLLOUT, input_document(build(world("safety-approval"), hvac_plan()))),
        (
            ROLLOUT,
            input_document(
                build(world("safety-approval"), hvac_plan(schedule={"mode": "now"}), freeze=True)
            ),
        ),
        (
            ROLLOUT,
            input_document(build(unsigned, plan_for("plc-bridge", "5.1.0", {"sites": ["osl-01"]}))),
        ),
        (ROLLOUT, {}),
    ]
    approvals: dict[str, Any] = {
        "plan_hash": "a" * 64,
        "requester": "eng-ana",
        "required": [{"role": "safety", "count": 2}, {"role": "compliance", "count": 1}],
        "roster": {
            "saf-lee": ["safety"],
            "saf-ola": ["safety", "compliance"],
            "eng-ana": ["safety"],
        },
        "approvals": [
            {
                "index": i,
                "approver": who,
                "plan_hash": "a" * 64,
                "decision": "approve",
                "signature_valid": ok,
                "claimed_roles": [],
            }
            for i, (who, ok) in enumerate(
                [("saf-lee", True), ("saf-ola", True), ("eng-ana", True), ("saf-lee", False)]
            )
        ],
    }
    inputs.append((APPROVALS, approvals))
    inputs.append((APPROVALS, {**approvals, "approvals": approvals["approvals"][:1]}))
    for name, args, kill in [
        ("deploy_wave", {"wave": 0, "devices": ["rtm-05-pump-ctl-01"]}, False),
        ("deploy_wave", {"wave": 0, "devices": ["rtm-05-pump-ctl-09"]}, True),
        ("fleet_status", {}, True),
    ]:
        call = tool_input(
            name,
            {
                "plan_hash": plan.plan_hash,
                "module": "pump-logic",
                "version": "1.9.0",
                "digest": "sha256:" + "1" * 64,
                **args,
            },
            plan=plan,
            digest="sha256:" + "1" * 64,
            approved=True,
            plan_devices=[f"rtm-05-pump-ctl-{n:02d}" for n in range(1, 61)],
            wave_index=0,
            wave_devices=["rtm-05-pump-ctl-01", "rtm-05-pump-ctl-02", "rtm-05-pump-ctl-03"],
            kill_switch=kill,
        )
        inputs.append((TOOLS, input_document(call)))
    return inputs


def test_upload_and_queries_match_the_in_process_engine(
    server: OpaTestServer, rego: RegoEngine
) -> None:
    engine = OpaServerEngine(server.url)
    for path, document in decision_inputs():
        remote = engine.decide(path, document)
        assert "error" not in remote, remote
        assert canonical(remote) == canonical(rego.decide(path, document)), path
    assert set(server.policies) == {
        "fieldgate/rollout",
        "fieldgate/approvals",
        "fieldgate/tools",
        "fieldgate/operations",
    }
    assert server.data["fieldgate"]["config"]["canary_percent"] == 5
    assert ("PUT", "/v1/data/fieldgate/roster") in server.requests
    assert ("POST", "/v1/data/fieldgate/rollout/decision") in server.requests
    assert engine.revision == rego.revision


def test_policies_are_uploaded_once(server: OpaTestServer) -> None:
    engine = OpaServerEngine(server.url)
    for _ in range(3):
        engine.decide(TOOLS, {"tool": "fleet_status", "args": {}, "kill_switch": False})
    puts = [r for r in server.requests if r[0] == "PUT"]
    assert len(puts) == 6  # config, roster, four modules


def test_server_down_denies_with_the_reason(server: OpaTestServer) -> None:
    engine = OpaServerEngine(server.url, retries=0)
    assert engine.decide(TOOLS, {"tool": "fleet_status", "args": {}, "kill_switch": False})["allow"]
    server.stop()
    result = engine.decide(ROLLOUT, {})
    assert result["allow"] is False
    assert "cannot query OPA" in result["error"] and server.url in result["error"]
    tool = engine.decide(TOOLS, {"tool": "fleet_status", "args": {}, "kill_switch": False})
    assert tool["allow"] is False and tool["reason"].startswith("policy engine:")


def test_server_never_reached_denies() -> None:
    spare = OpaTestServer().start()
    url = spare.url
    spare.stop()
    result = OpaServerEngine(url, retries=0, timeout_s=0.5).decide(APPROVALS, {})
    assert result["satisfied"] is False
    assert "cannot upload the policies" in result["error"]


def broken_pack(tmp_path: Path, name: str, start: str, text: str) -> tuple[PolicyPack, int]:
    """A copy of the shipped pack with the line starting with ``start`` in ``name`` replaced."""
    target = tmp_path / "policies"
    shutil.copytree(
        default_policy_dir(), target, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    lines = (target / name).read_text().splitlines()
    line = next(i for i, content in enumerate(lines, start=1) if content.startswith(start))
    lines[line - 1] = text
    (target / name).write_text("\n".join(lines) + "\n")
    return PolicyPack.load(target), line


def test_upload_with_syntax_error_denies_naming_file_and_line(
    server: OpaTestServer, tmp_path: Path
) -> None:
    pack, line = broken_pack(tmp_path, "approvals.rego", "errors := ", "errors := == 1")
    engine = OpaServerEngine(server.url, pack)
    result = engine.decide(ROLLOUT, {})
    assert result["allow"] is False
    assert "rejected the policies" in result["error"]
    assert f"approvals.rego:{line}" in result["error"]
    assert engine.problems[0].file == "approvals.rego" and engine.problems[0].line == line


def test_server_refuses_v0_modules_like_opa_1(server: OpaTestServer) -> None:
    errors = server.put_policy("legacy", "package legacy\n\nallow {\n\ttrue\n}\n")
    assert errors and errors[0]["location"]["row"] == 3


def test_undefined_decision_denies(server: OpaTestServer, tmp_path: Path) -> None:
    (tmp_path / "rollout.rego").write_text(
        "package fieldgate.rollout\n\ndecision := {} if input.never\n"
    )
    engine = OpaServerEngine(server.url, PolicyPack.load(tmp_path))
    result = engine.decide(ROLLOUT, {})
    assert result["allow"] is False and "undefined" in result["error"]


def test_evaluation_error_denies(server: OpaTestServer, tmp_path: Path) -> None:
    (tmp_path / "rollout.rego").write_text(
        "package fieldgate.rollout\n\n"
        'decision := {"allow": 1 / input.zero == 1, "deny": [], "warn": [], "approvals": []}\n'
    )
    engine = OpaServerEngine(server.url, PolicyPack.load(tmp_path))
    result = engine.decide(ROLLOUT, {"zero": 0})
    assert result["allow"] is False and "HTTP 500" in result["error"]


def test_rego_tests_run_on_the_server(server: OpaTestServer, tmp_path: Path) -> None:
    (tmp_path / "tools.rego").write_text(
        "package fieldgate.tools\n\n"
        'decision := {"allow": input.tool == "fleet_status", "reason": "r"}\n'
    )
    (tmp_path / "tools_test.rego").write_text(
        "package fieldgate.tools_test\n\nimport data.fieldgate.tools\n\n"
        'test_reads_allowed if {\n\ttool := "fleet_status"\n'
        "\ttools.decision.allow with input.tool as tool\n}\n\n"
        'test_fails if {\n\ttool := "deploy_wave"\n'
        "\ttools.decision.allow with input.tool as tool\n}\n"
    )
    results = OpaServerEngine(server.url, PolicyPack.load(tmp_path)).test()
    assert [(r.name, r.passed) for r in results] == [
        ("fieldgate.tools_test.test_reads_allowed", True),
        ("fieldgate.tools_test.test_fails", False),
    ]
    assert "fieldgate-tests/tools_test" not in server.policies


@pytest.fixture
def opa_url() -> Iterator[str]:
    """``OPA_URL`` when set (a real OPA server), else the test server on OPA's Go evaluator."""
    url = os.environ.get("OPA_URL")
    if url:
        yield url
        return
    opa = OpaTestServer().start()
    try:
        yield opa.url
    finally:
        opa.stop()


@pytest.mark.opa
def test_opa_evaluator_over_rest_agrees_with_the_in_process_engine(
    opa_url: str, rego: RegoEngine
) -> None:
    """The pack's Rego tests and the decisions, through opa-python-client, on OPA's evaluator."""
    engine = OpaServerEngine(opa_url)
    assert engine.load(), engine.upload_error
    results = engine.test()
    failed = [f"{r.where} {r.name}: {r.message}" for r in results if not r.passed]
    assert results and not failed, failed
    assert len(results) == sum(len(m.tests()) for m in engine.pack.tests)
    for path, document in decision_inputs():
        remote = engine.decide(path, document)
        assert "error" not in remote, remote
        assert canonical(remote) == canonical(rego.decide(path, document)), path


def test_the_test_server_evaluates_with_opa_not_regopy(server: OpaTestServer) -> None:
    """A negated call on an undefined argument is undefined in OPA (its issue 1877), true in
    regopy: the server answers as OPA does."""
    server.put_policy("probe", "package probe\n\nnegated if not input.missing > 0\n")
    engine = OpaServerEngine(server.url, PolicyPack.load())
    assert engine.load(), engine.upload_error
    assert engine._client.query_rule({}, "probe", "negated") == {}
    probe = PolicyPack.load(default_policy_dir())
    assert probe.revision.digest == engine.revision
