"""The Rego tests of the policy pack, one pytest case per ``test_*`` rule, and the pack itself.

Also pins the regopy 1.5.2 behaviours the engine relies on or works around, so an
upgrade that changes them shows up here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fieldgate.policy import (
    ROLLOUT,
    PolicyPack,
    RegoEngine,
    RegoTestResult,
    check_v1,
    default_policy_dir,
    run_rego_tests,
)
from fieldgate.policy._pack import check_regopy_hazards

PACK = PolicyPack.load()
TEST_NAMES = [f"{m.package}.{rule}" for m in PACK.tests for rule, _ in m.tests()]


@pytest.fixture(scope="module")
def rego_results() -> dict[str, RegoTestResult]:
    return {r.name: r for r in run_rego_tests(PACK)}


@pytest.mark.parametrize("name", TEST_NAMES)
def test_rego(name: str, rego_results: dict[str, RegoTestResult]) -> None:
    assert "<compile>" not in rego_results, rego_results["<compile>"].message
    result = rego_results[name]
    assert result.passed, f"{result.where}: {result.message}"


def test_every_policy_module_has_tests_beside_it() -> None:
    """``rollout.rego`` is tested by ``rollout_test.rego`` and ``rollout_<topic>_test.rego``."""
    modules = {m.name.removesuffix(".rego") for m in PACK.policies}
    tests = {m.name.removesuffix("_test.rego").split("_")[0] for m in PACK.tests}
    assert modules == tests == {"rollout", "approvals", "tools", "operations"}


@pytest.mark.parametrize("rule", [f"d{n}" for n in range(0, 12)])
def test_every_deny_rule_is_tested_both_ways(rule: str) -> None:
    """Each of D0–D11 has a test that it denies and one that it lets a plan pass."""
    names = [n for n in TEST_NAMES if re.search(rf"\.test_{rule}_", n)]
    denies = [n for n in names if re.search(r"denies|_is_not_exempt|applies", n)]
    passes = [n for n in names if re.search(r"passes|exempt$|lets|allowed|_run$", n)]
    assert denies, f"no test shows {rule.upper()} denying: {names}"
    assert passes or rule == "d0", f"no test shows {rule.upper()} letting a plan pass: {names}"


def test_every_rule_has_a_one_line_title() -> None:
    titles = [r.title.split()[0] for r in PACK.rules()]
    expected = [f"D{n}" for n in range(12)] + ["A1", "A2", "A3"]
    expected += ["C1", "C2", "C3", "C4", "C5", "C6"] + [f"T{n}" for n in range(1, 8)]
    expected += ["O1", "O2"]
    assert set(expected) <= set(titles)
    assert all(r.description and "\n" not in r.description for r in PACK.rules())


def test_shipped_pack_is_rego_v1() -> None:
    assert PACK.lint() == []
    assert default_policy_dir() == PACK.directory


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("package p\n\nallow {\n\tinput.x\n}\n", "needs 'if'"),
        ("package p\n\ndeny[msg] {\n\tmsg := 1\n}\n", "'contains'"),
        ("package p\n\ndeny[msg] if {\n\tmsg := 1\n}\n", "'contains'"),
        ("package p\n\nx := 1 if {\n\tinput.a\n} else = 2 {\n\ttrue\n}\n", "needs 'if'"),
    ],
)
def test_v0_syntax_is_found(source: str, problem: str) -> None:
    found = check_v1("p.rego", source)
    assert found and problem in found[0].message
    assert found[0].line >= 3


@pytest.mark.parametrize(
    "source",
    [
        'package p\n\nx := {"a": 1}\n',
        "package p\n\ndeny contains msg if {\n\tmsg := 1\n}\n",
        'package p\n\nv contains {"rule": "D1"} if {\n\tinput.x\n}\n',
        "package p\n\nn[k] := 1 if {\n\tsome k in input.ks\n}\n",
        'package p\n\nk := "a" if {\n\tinput.a\n} else := "b"\n',
    ],
)
def test_v1_syntax_passes(source: str) -> None:
    assert check_v1("p.rego", source) == []


def test_with_whole_input_is_refused_before_it_crashes_regopy() -> None:
    source = "package p_test\n\ntest_a if {\n\tinp := {}\n\tdata.p.x with input as inp\n}\n"
    problems = check_regopy_hazards("p_test.rego", source)
    assert [(p.line, "crashes regopy" in p.message) for p in problems] == [(5, True)]
    assert check_regopy_hazards("p_test.rego", source.replace("input as", "input.a as")) == []


def broken_copy(tmp_path: Path, name: str, start: str, text: str) -> tuple[Path, int]:
    """A copy of the shipped pack with the line of ``name`` starting with ``start`` replaced."""
    target = tmp_path / "policies"
    shutil.copytree(
        default_policy_dir(), target, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    lines = (target / name).read_text().splitlines()
    line = next(i for i, content in enumerate(lines, start=1) if content.startswith(start))
    lines[line - 1] = text
    (target / name).write_text("\n".join(lines) + "\n")
    return target, line


def test_syntax_error_fails_the_tests_naming_file_and_line(tmp_path: Path) -> None:
    directory, line = broken_copy(tmp_path, "rollout.rego", "regions := ", "regions := == 1")
    results = run_rego_tests(PolicyPack.load(directory))
    assert results, "a broken pack must not pass silently"
    assert {(r.name, r.file, r.line, r.passed) for r in results} == {
        ("<compile>", "rollout.rego", line, False)
    }
    assert all(r.message for r in results)


def test_syntax_error_denies_every_decision_with_file_and_line(tmp_path: Path) -> None:
    directory, line = broken_copy(tmp_path, "tools.rego", "changes_devices ", "decision := == {")
    engine = RegoEngine(PolicyPack.load(directory))
    for path in (
        "fieldgate.rollout.decision",
        "fieldgate.approvals.decision",
        "fieldgate.tools.decision",
    ):
        result = engine.decide(path, {})
        assert result.get("allow", False) is False and result.get("satisfied", False) is False
        assert f"tools.rego:{line}" in result["error"]


def test_v0_module_denies_every_decision(tmp_path: Path) -> None:
    directory, line = broken_copy(tmp_path, "rollout.rego", "regions := ", "legacy { true }")
    engine = RegoEngine(PolicyPack.load(directory))
    result = engine.decide(ROLLOUT, {})
    assert result["allow"] is False
    assert f"rollout.rego:{line}" in result["error"] and "'if'" in result["error"]


def write_pack(tmp_path: Path, source: str) -> PolicyPack:
    (tmp_path / "rollout.rego").write_text(source)
    return PolicyPack.load(tmp_path)


def test_undefined_decision_denies(tmp_path: Path) -> None:
    pack = write_pack(tmp_path, "package fieldgate.rollout\n\ndecision := {} if input.never\n")
    result = RegoEngine(pack).decide(ROLLOUT, {})
    assert result["allow"] is False
    assert "undefined" in result["error"]


def test_builtin_error_denies_instead_of_skipping_the_rule(tmp_path: Path) -> None:
    # strict_built_in_errors: a deny rule whose builtin fails does not silently not fire
    pack = write_pack(
        tmp_path,
        "package fieldgate.rollout\n\n"
        'deny contains msg if {\n\tmsg := sprintf("%d", [1 / input.zero])\n}\n\n'
        'decision := {"allow": count(deny) == 0, "deny": [m | some m in deny], '
        '"warn": [], "approvals": []}\n',
    )
    result = RegoEngine(pack).decide(ROLLOUT, {"zero": 0})
    assert result["allow"] is False
    assert "divide by zero" in result["error"]


def test_unknown_builtin_denies(tmp_path: Path) -> None:
    pack = write_pack(
        tmp_path,
        'package fieldgate.rollout\n\ndecision := {"allow": no.such_builtin(1), '
        '"deny": [], "warn": [], "approvals": []}\n',
    )
    result = RegoEngine(pack).decide(ROLLOUT, {})
    assert result["allow"] is False
    assert "no.such_builtin" in result["error"]


def test_malformed_decision_denies(tmp_path: Path) -> None:
    pack = write_pack(tmp_path, 'package fieldgate.rollout\n\ndecision := {"allow": "yes"}\n')
    result = RegoEngine(pack).decide(ROLLOUT, {})
    assert result["allow"] is False
    assert "boolean 'allow'" in result["error"]


def test_revision_covers_policies_and_data_but_not_tests(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    shutil.copytree(
        default_policy_dir(), directory, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    base = PolicyPack.load(directory).revision
    assert base.digest == PACK.revision.digest
    (directory / "tools_test.rego").write_text((directory / "tools_test.rego").read_text() + "\n")
    assert PolicyPack.load(directory).revision.digest == base.digest
    changed = PACK.with_data({"fieldgate": {"config": {"canary_percent": 10}}})
    assert changed.revision.digest != base.digest
    assert changed.data["fieldgate"]["config"]["canary_min_targets"] == 10
    assert base.files == (
        "approvals.rego",
        "operations.rego",
        "rollout.rego",
        "tools.rego",
        "data.json",
    )
