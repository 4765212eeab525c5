"""The engine choice: regorus beside regopy, ``FIELDGATE_POLICY_ENGINE``, and the cross-check.

regorus must fail closed exactly where regopy does (compile errors with file and line,
evaluation errors, undefined or malformed results, input that is not JSON, timeouts),
be fed JSON only, and keep each of its engines on the thread that made it. With
``FIELDGATE_POLICY_CROSSCHECK=1`` a critical plan's decisions are made on two engines,
and a real disagreement (a pack variant loaded into one of them) is a deny in the log.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import regorus
from test_policy_inputs import build, hvac_plan, world

from fieldgate.audit import EventKind
from fieldgate.config import DEFAULT_POLICY_ENGINE, Config
from fieldgate.errors import ConfigInvalid
from fieldgate.policy import (
    APPROVALS,
    ROLLOUT,
    TOOLS,
    CrossCheckEngine,
    GoOpaEngine,
    OpaServerEngine,
    PolicyGate,
    PolicyPack,
    RegoEngine,
    RegorusEngine,
    configured_engine,
    default_policy_dir,
    input_document,
)
from fieldgate.store import Store

PACK = PolicyPack.load()


def critical_rollout() -> dict[str, Any]:
    """A real rollout input (safety-approval's hvac plan) for a module of safety class critical."""
    document = input_document(build(world("safety-approval"), hvac_plan()))
    document["manifest"]["safety"] = "critical"
    return document


def variant(tmp_path: Path, **config: Any) -> PolicyPack:
    """The shipped pack with ``data.fieldgate.config`` keys replaced."""
    target = tmp_path / "variant"
    shutil.copytree(
        default_policy_dir(), target, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    data = json.loads((target / "data.json").read_text())
    data["fieldgate"]["config"].update(config)
    (target / "data.json").write_text(json.dumps(data))
    return PolicyPack.load(target)


def single(tmp_path: Path, source: str) -> PolicyPack:
    (tmp_path / "rollout.rego").write_text(source)
    return PolicyPack.load(tmp_path)


# --- regorus fails closed like regopy ----------------------------------------------


def test_regorus_decides_as_regopy_on_the_shipped_pack() -> None:
    document = critical_rollout()
    fast, reference = RegorusEngine(), RegoEngine()
    assert fast.name == "regorus" and fast.revision == reference.revision
    result = fast.decide(ROLLOUT, document)
    assert "error" not in result and result["allow"] is True
    assert result["approvals"] == reference.decide(ROLLOUT, document)["approvals"]
    assert [r for r in fast.test() if not r.passed] == []


def test_regorus_is_fed_json_never_a_dict() -> None:
    """regorus's own dict path turns True into 1, which would flip ``== true`` tests."""
    raw = regorus.Engine()
    raw.add_policy("p.rego", "package p\n\nflag := input.flag\n")
    raw.set_input({"flag": True})
    assert json.loads(raw.eval_rule_as_json("data.p.flag")) == 1  # the hazard, pinned
    # the shipped pack reads ``signature_valid == true``: through JSON it allows
    assert RegorusEngine(timeout_s=None).decide(ROLLOUT, critical_rollout())["allow"] is True


def test_regorus_syntax_error_denies_naming_file_and_line(tmp_path: Path) -> None:
    pack = single(tmp_path, 'package fieldgate.rollout\n\ndecision := {\n\t"allow": ==\n}\n')
    engine = RegorusEngine(pack)
    assert engine.problems and engine.problems[0].file == "rollout.rego"
    assert engine.problems[0].line == 4
    result = engine.decide(ROLLOUT, {})
    assert result["allow"] is False and "rollout.rego:4" in result["error"]


def test_regorus_undefined_and_malformed_decisions_deny(tmp_path: Path) -> None:
    engine = RegorusEngine(
        single(tmp_path, "package fieldgate.rollout\n\ndecision := {} if input.never\n")
    )
    assert "undefined" in engine.decide(ROLLOUT, {})["error"]
    other = tmp_path / "other"
    other.mkdir()
    malformed = RegorusEngine(
        single(other, 'package fieldgate.rollout\n\ndecision := {"allow": "yes"}\n')
    )
    assert "no boolean 'allow'" in malformed.decide(ROLLOUT, {})["error"]


def test_regorus_evaluation_error_denies(tmp_path: Path) -> None:
    engine = RegorusEngine(
        single(
            tmp_path,
            "package fieldgate.rollout\n\n"
            'decision := {"allow": 1 / input.zero == 1, "deny": [], "warn": [], "approvals": []}\n',
        )
    )
    result = engine.decide(ROLLOUT, {"zero": 0})
    assert result["allow"] is False and "evaluation failed" in result["error"]


@pytest.mark.parametrize("value", [float("nan"), object(), {1: "key is not a string"}])
def test_regorus_input_that_is_not_json_denies(value: Any) -> None:
    result = RegorusEngine(timeout_s=None).decide(TOOLS, {"tool": "fleet_status", "args": value})
    assert result["allow"] is False and "not a JSON document" in result["error"]


def test_regorus_decision_over_its_time_is_a_deny(tmp_path: Path) -> None:
    """regorus holds the GIL while it evaluates, so the call cannot be given up on: a
    decision that took longer than the timeout is a deny when it returns."""
    engine = RegorusEngine(
        single(
            tmp_path,
            "package fieldgate.rollout\n\n"
            "n := count([i | some i in numbers.range(1, input.size)])\n\n"
            'decision := {"allow": n > 0, "deny": [], "warn": [], "approvals": []}\n',
        ),
        timeout_s=0.05,
    )
    assert engine.decide(ROLLOUT, {"size": 10})["allow"] is True
    slow = engine.decide(ROLLOUT, {"size": 500_000})
    assert slow["allow"] is False and "timeout after 0.05 s" in slow["error"]
    assert engine.decide(ROLLOUT, {"size": 10})["allow"] is True


def test_regorus_serves_every_thread_without_panicking() -> None:
    """A regorus engine panics on another thread: each thread gets its own."""
    engine = RegorusEngine(timeout_s=None)
    document = critical_rollout()
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(engine.decide(ROLLOUT, document)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.get("error") for r in results] == [None, None, None]
    assert all(r["allow"] for r in results)


def test_opa_go_engine_is_the_reference_and_decides_as_regorus() -> None:
    document = critical_rollout()
    reference = GoOpaEngine()
    assert reference.problems == [] and reference.name == "opa-go"
    assert reference.decide(ROLLOUT, document)["allow"] is True


# --- FIELDGATE_POLICY_ENGINE ---------------------------------------------------------


def test_the_default_engine_is_regorus() -> None:
    config = Config.from_env({})
    assert config.policy_engine == DEFAULT_POLICY_ENGINE == "regorus"
    assert config.policy_crosscheck is False
    assert isinstance(configured_engine(config, PACK), RegorusEngine)


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({"FIELDGATE_POLICY_ENGINE": "regopy"}, RegoEngine),
        ({"FIELDGATE_POLICY_ENGINE": "REGORUS"}, RegorusEngine),
        ({"FIELDGATE_POLICY_ENGINE": "opa", "OPA_URL": "http://127.0.0.1:8181"}, OpaServerEngine),
        ({"FIELDGATE_POLICY_CROSSCHECK": "1"}, CrossCheckEngine),
    ],
)
def test_the_environment_chooses_the_engine(env: dict[str, str], kind: type) -> None:
    assert isinstance(configured_engine(Config.from_env(env), PACK), kind)


def test_crosscheck_pairs_regorus_with_regopy_and_regopy_with_regorus() -> None:
    paired = configured_engine(Config.from_env({"FIELDGATE_POLICY_CROSSCHECK": "1"}), PACK)
    assert paired.name == "regorus+regopy"
    other = configured_engine(
        Config.from_env({"FIELDGATE_POLICY_CROSSCHECK": "1", "FIELDGATE_POLICY_ENGINE": "regopy"}),
        PACK,
    )
    assert other.name == "regopy+regorus"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"FIELDGATE_POLICY_ENGINE": "wasm"}, "expected one of regorus, regopy, opa"),
        ({"FIELDGATE_POLICY_ENGINE": "opa"}, "OPA_URL must name the OPA server"),
    ],
)
def test_an_unknown_engine_or_opa_without_a_url_is_refused(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigInvalid, match=words):
        Config.from_env(env)


# --- the cross-check on critical plans -------------------------------------------------


def test_engines_that_disagree_on_a_critical_plan_deny_and_the_log_says_why(
    tmp_path: Path, sqlite_url: str
) -> None:
    """regorus holds a variant asking one safety approval for critical modules, regopy the
    shipped pack asking two: a real disagreement, caught."""
    lax = variant(tmp_path, safety_approvals={"high": 1, "critical": 1})
    engine = CrossCheckEngine(RegorusEngine(lax), RegoEngine(PACK))
    document = critical_rollout()
    assert RegorusEngine(lax).decide(ROLLOUT, document)["allow"] is True  # alone it allows
    with Store.open(sqlite_url) as store:
        result = PolicyGate(engine, store.audit).decide(ROLLOUT, document, plan_id="p-test")
        (event,) = store.audit.events(plan_id="p-test")
    assert result["allow"] is False
    assert "regorus and regopy disagree on fieldgate.rollout.decision" in result["error"]
    assert "approvals" in result["error"]
    assert event.kind == EventKind.policy_decision
    assert event.payload["engine"] == "regorus+regopy"
    assert event.payload["result"]["error"] == result["error"]


def test_a_plan_that_is_not_critical_is_decided_on_one_engine(tmp_path: Path) -> None:
    lax = variant(tmp_path, safety_approvals={"high": 0, "critical": 1})
    engine = CrossCheckEngine(RegorusEngine(lax), RegoEngine(PACK))
    document = critical_rollout()
    document["manifest"]["safety"] = "high"
    result = engine.decide(ROLLOUT, document)
    assert "error" not in result and result["allow"] is True
    assert result == RegorusEngine(lax).decide(ROLLOUT, document)


def test_the_later_decisions_on_a_critical_plan_are_cross_checked(tmp_path: Path) -> None:
    """After the rollout decision names the plan critical, its approval count is checked
    on both engines too (the variant's roster gives saf-lee no safety role)."""
    pack = variant(tmp_path)
    data = dict(pack.data)
    roster = {**data["fieldgate"]["roster"], "saf-lee": ["engineer"]}
    (tmp_path / "variant" / "data.json").write_text(
        json.dumps({"fieldgate": {**data["fieldgate"], "roster": roster}})
    )
    engine = CrossCheckEngine(RegorusEngine(PolicyPack.load(tmp_path / "variant")), RegoEngine())
    approvals = {
        "plan_id": "p-test",
        "plan_hash": "a" * 64,
        "requester": "eng-ana",
        "required": [{"role": "safety", "count": 1}],
        "approvals": [
            {
                "index": 0,
                "approver": "saf-lee",
                "plan_hash": "a" * 64,
                "decision": "approve",
                "signature_valid": True,
                "claimed_roles": [],
            }
        ],
    }
    before = engine.decide(APPROVALS, approvals)
    assert "error" not in before and before["satisfied"] is False  # one engine, the variant's
    rollout = engine.decide(ROLLOUT, critical_rollout())
    assert "error" not in rollout  # the roster does not change the rollout decision
    after = engine.decide(APPROVALS, approvals)
    assert (
        after["satisfied"] is False and "disagree on fieldgate.approvals.decision" in after["error"]
    )


def test_engines_that_agree_on_a_critical_plan_decide_normally() -> None:
    engine = CrossCheckEngine(RegorusEngine(), RegoEngine())
    result = engine.decide(ROLLOUT, critical_rollout())
    assert "error" not in result and result["allow"] is True
    assert [a["count"] for a in result["approvals"] if a["role"] == "safety"] == [2]


# --- what the pack avoids, pinned (an upgrade that changes one shows up here) -----------


def test_regorus_hazards_the_pack_avoids() -> None:
    raw = regorus.Engine()
    raw.add_policy(
        "p.rego",
        'package p\n\ng := sprintf("%g", [0.89])\n\nn := count([x | some x in input.none])\n',
    )
    raw.set_input_json('{"none": null}')
    assert json.loads(raw.eval_rule_as_json("data.p.g")) == "8.9e-1"
    with pytest.raises(RuntimeError, match="expects array/set/object"):
        raw.eval_rule_as_json("data.p.n")


def test_regopy_object_union_does_not_merge_nested_objects() -> None:
    from fieldgate.policy import _regopy

    engine = RegoEngine(timeout_s=None)
    engine._interpreter.set_input_term("{}")
    merged = _regopy.query(
        engine._interpreter, 'object.union({"g": {"a": 1, "b": 2}}, {"g": {"a": 3}})'
    )
    assert merged == {"g": {"a": 3}}  # OPA and regorus: {"g": {"a": 3, "b": 2}}


def test_opa_negated_call_on_an_undefined_value_is_undefined() -> None:
    from fieldgate.policy._opago import bindings

    opa = bindings()
    engine = opa.OpaEngine()
    engine.add_policy(
        "p.rego",
        "package p\n\nnegated_call if not input.x > 0\n\nnegated_rule if not big\n\n"
        "big if input.x > 0\n",
    )
    assert engine.eval_query("x := data.p.negated_call", {}) == []
    assert engine.eval_document("p.negated_rule", {}) is True
