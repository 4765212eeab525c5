"""regopy, regorus and OPA's own Go evaluator decide identically (sets compared as sets).

OPA's evaluator (opa-golib-python-bindings, the test extra) is the reference. Held to it:

- every Rego test of the pack passes on each engine;
- every decision the eval suites make (every scenario of ``evals/suites`` and of the
  shared scenarios, run once with the offline model while a recorder keeps each
  policy input) decides the same on the three: the shared scenarios and the policy
  suite in the default run, all of them under ``-m slow``;
- generated rollout, tool, approval and operation inputs around the input contract of
  ``fieldgate.policy._input`` (built through its pydantic models, so each one is an
  input Python could send) decide the same on the three: 1,200 in the default run,
  10,000 under ``-m slow`` (``make conformance``, which ``.ci/run`` runs). Hypothesis
  is derandomized, so CI draws the same inputs every time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldgate.evals._runner import run_scenario
from fieldgate.evals._suite import load_suite
from fieldgate.policy import (
    APPROVALS,
    OPERATIONS,
    ROLLOUT,
    TOOLS,
    ApprovalsInput,
    GoOpaEngine,
    OperationInput,
    PolicyEngine,
    PolicyPack,
    RegoEngine,
    RegorusEngine,
    RegoTestResult,
    RolloutInput,
    ToolInput,
    input_document,
    run_opa_tests,
    run_rego_tests,
    run_regorus_tests,
)
from fieldgate.policy._crosscheck import as_sets, differences

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "scenarios"
"""The six shared scenarios (beside the repository, as tests/test_graph_scenarios.py finds them)."""
PACK = PolicyPack.load()
TEST_NAMES = sorted(f"{m.package}.{rule}" for m in PACK.tests for rule, _ in m.tests())
DEFAULT_EXAMPLES = 300
"""Generated inputs per decision in the default run (four decisions: 1,200)."""
SLOW_EXAMPLES = 2500
"""Generated inputs per decision under ``-m slow`` (four decisions: 10,000)."""


@pytest.fixture(scope="module")
def engines() -> dict[str, PolicyEngine]:
    """The three engines over the shipped pack; the reference first."""
    reference = GoOpaEngine(PACK, timeout_s=None)
    assert not reference.problems, (
        f"OPA's Go evaluator is the reference and must load: {reference.problems}"
    )
    return {
        "opa-go": reference,
        "regopy": RegoEngine(PACK, timeout_s=None),
        "regorus": RegorusEngine(PACK, timeout_s=None),
    }


def disagreement(
    engines: Mapping[str, PolicyEngine], path: str, document: Mapping[str, Any]
) -> str | None:
    """How the engines' decisions on ``document`` differ from the reference's (None: they don't)."""
    results = {name: engine.decide(path, document) for name, engine in engines.items()}
    reference_name, reference = next(iter(results.items()))
    if all("error" in result for result in results.values()):
        return None  # no engine could decide: each denies (their messages differ)
    lines = []
    for name, result in results.items():
        if "error" in result:
            lines.append(f"{name} could not decide: {result['error']}")
        elif as_sets(result) != as_sets(reference):
            keys = differences(reference, result)
            shown = {k: (reference.get(k), result.get(k)) for k in keys}
            lines.append(f"{name} differs from {reference_name} in {shown}")
    if not lines:
        return None
    return f"{path}: " + "; ".join(lines) + f"\ninput: {json.dumps(document, sort_keys=True)}"


# --- the Rego tests ------------------------------------------------------------


@pytest.mark.parametrize(
    "runner",
    [run_opa_tests, run_rego_tests, run_regorus_tests],
    ids=["opa-go", "regopy", "regorus"],
)
def test_every_rego_test_passes_on_every_engine(runner: Any) -> None:
    results: list[RegoTestResult] = runner(PACK)
    failed = [f"{r.where} {r.name}: {r.message}" for r in results if not r.passed]
    assert not failed, failed
    assert sorted(r.name for r in results) == TEST_NAMES


# --- the eval suites' decisions ---------------------------------------------------


class Recorder:
    """A policy engine that keeps every input it is asked about (and decides on regopy)."""

    def __init__(self, engine: RegoEngine) -> None:
        self.engine = engine
        self.pack = engine.pack
        self.name = engine.name
        self.decisions: list[tuple[str, dict[str, Any]]] = []

    @property
    def revision(self) -> str:
        return self.engine.revision

    def decide(self, path: str, input: Mapping[str, Any]) -> dict[str, Any]:
        self.decisions.append((path, json.loads(json.dumps(dict(input)))))
        return self.engine.decide(path, input)

    def test(self) -> list[RegoTestResult]:
        return self.engine.test()


def recorded_decisions(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """Every policy input of one offline run of every scenario under ``paths``, once each."""
    suite = load_suite([p for p in paths if p.exists()])
    assert suite.entries and not suite.errors, suite.errors
    recorder = Recorder(RegoEngine(PACK, timeout_s=None))
    for entry in suite.entries:
        run_scenario(entry, [0], "offline", engine=recorder)
    unique = {json.dumps([p, d], sort_keys=True): (p, d) for p, d in recorder.decisions}
    return list(unique.values())


def check_recorded(
    engines: dict[str, PolicyEngine], decisions: list[tuple[str, dict[str, Any]]], least: int
) -> None:
    assert {path for path, _ in decisions} >= {ROLLOUT, APPROVALS, TOOLS}
    assert len(decisions) >= least
    problems = [
        problem
        for path, document in decisions
        if (problem := disagreement(engines, path, document)) is not None
    ]
    assert not problems, "\n".join(problems[:5])


def test_every_decision_of_the_policy_scenarios_is_the_same_on_every_engine(
    engines: dict[str, PolicyEngine],
) -> None:
    """The shared scenarios and the policy suite (the whole of evals/suites under -m slow)."""
    decisions = recorded_decisions([SHARED, ROOT / "evals" / "suites" / "policy"])
    check_recorded(engines, decisions, 40)


@pytest.mark.slow
def test_every_decision_of_the_eval_suites_is_the_same_on_every_engine(
    engines: dict[str, PolicyEngine],
) -> None:
    check_recorded(engines, recorded_decisions([ROOT / "evals" / "suites", SHARED]), 200)


# --- generated inputs -------------------------------------------------------------

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
PEOPLE = ["eng-ana", "saf-lee", "saf-ola", "rm-kim", "cmp-eva", "stranger"]
ROLES = ["engineer", "safety", "release-manager", "compliance", "auditor"]
MODULES = ["pump-logic", "hvac-controller", "edge-runtime"]
VERSIONS = ["1.8.0", "1.9.0", "2.0.0"]
CLASSES = ["pump-ctl", "hvac-gw", "boiler-ctl"]
ARCHES = ["arm64", "amd64"]
SAFETY = ["none", "low", "high", "critical", "experimental"]
HASHES = ["a" * 64, "b" * 64]
DIGESTS = ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
DEVICES = [f"dev-{n:02d}" for n in range(12)]

# Rates and thresholds as plans write them (two decimals), around the floors of data.json.
fractions = st.sampled_from(
    [0, 0.01, 0.04, 0.05, 0.06, 0.09, 0.1, 0.11, 0.5, 0.89, 0.9, 0.94, 0.95, 0.99, 1]
)
small = st.integers(min_value=0, max_value=12)


def fact(examples: list[str] = DEVICES) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda ids, extra: {"count": len(ids) + extra, "examples": sorted(ids)},
        st.lists(st.sampled_from(examples), unique=True, max_size=3),
        st.integers(min_value=0, max_value=3),
    )


health_gates = st.none() | st.builds(
    lambda rate, failures, soak: {
        "min_success_rate": rate,
        "max_failures": failures,
        "soak_minutes": soak,
    },
    fractions,
    small,
    st.sampled_from([0, 5, 9, 10, 29, 30, 60]),
)

target_groups = st.builds(
    lambda count, cls, arch, memory, installed, relation, requires, region, regulated, sites: {
        "count": count,
        "class": cls,
        "arch": arch,
        "memory_mb": memory,
        "installed": installed,
        "relation": relation,
        "requires": requires,
        "region": region,
        "site_labels": {"regulated": "true"} if regulated else {},
        "sites": sorted(sites),
        "site_count": len(sites),
    },
    st.integers(min_value=1, max_value=150),
    st.sampled_from(CLASSES),
    st.sampled_from(ARCHES),
    st.sampled_from([256, 512, 1024, 2048]),
    st.none() | st.sampled_from(VERSIONS),
    st.sampled_from(["fresh", "upgrade", "same", "downgrade"]),
    st.lists(
        st.builds(
            lambda module, installed, satisfied: {
                "module": module,
                "range": ">=3.2,<4",
                "installed": installed,
                "satisfied": satisfied,
            },
            st.just("edge-runtime"),
            st.none() | st.sampled_from(["3.1.0", "3.3.1"]),
            st.booleans(),
        ),
        max_size=1,
    ),
    st.sampled_from(["eu-west", "eu-north"]),
    st.booleans(),
    st.lists(st.sampled_from(["rtm-05", "hel-02", "osl-01"]), min_size=1, max_size=3, unique=True),
)


@st.composite
def rollout_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """A rollout input near the rules' edges, validated as a ``RolloutInput``.

    Half the inputs start from a plan every rule lets pass and change each fact with
    a chance of one in twenty (so most change none or one, and the decision allows or
    denies for one reason); the other half draw every fact freely.
    """
    coherent = draw(st.booleans())

    def pick(good: Any, anything: st.SearchStrategy[Any]) -> Any:
        if coherent and draw(st.integers(min_value=0, max_value=19)) > 0:
            return good
        return draw(anything)

    module = draw(st.sampled_from(MODULES))
    version = draw(st.sampled_from(VERSIONS))
    safety = draw(st.sampled_from(SAFETY))
    classes = draw(st.lists(st.sampled_from(CLASSES), min_size=1, max_size=2, unique=True))
    arches = draw(st.lists(st.sampled_from(ARCHES), min_size=1, max_size=2, unique=True))
    memory = draw(st.sampled_from([256, 512, 1024]))
    digest = draw(st.sampled_from(DIGESTS))
    signed = pick(True, st.booleans())
    groups = []
    for _ in range(pick(draw(st.integers(min_value=1, max_value=3)), st.integers(0, 4))):
        group = draw(target_groups)
        group["class"] = pick(draw(st.sampled_from(classes)), st.sampled_from(CLASSES))
        group["arch"] = pick(draw(st.sampled_from(arches)), st.sampled_from(ARCHES))
        group["memory_mb"] = pick(max(group["memory_mb"], memory), st.just(group["memory_mb"]))
        group["relation"] = pick("upgrade", st.sampled_from(["fresh", "same", "downgrade"]))
        if group["relation"] == "fresh" or group["installed"] is None:
            # as rollout_input computes them: nothing installed is a fresh install
            group["relation"], group["installed"] = "fresh", None
        group["site_labels"] = pick({}, st.just(group["site_labels"]))
        for requirement in group["requires"]:
            requirement["satisfied"] = pick(True, st.booleans())
        groups.append(group)
    if coherent:
        for group in groups:  # one region, within the release manager's reach
            group["region"] = "eu-west"
    total = sum(g["count"] for g in groups)
    canary = max(1, total * 5 // 100)
    good_sizes = [canary, total - canary] if total > canary else [total]
    sizes = pick(
        good_sizes, st.lists(st.integers(min_value=0, max_value=80), min_size=1, max_size=4)
    )
    good_gate = {"min_success_rate": 0.95, "max_failures": 0, "soak_minutes": 30}
    waves = [
        {
            "index": i,
            "name": ["canary", "early", "rest", "late"][i],
            "size": size,
            "health_gate": pick(good_gate, health_gates),
            "outside_window": pick(0, st.integers(min_value=0, max_value=size)),
        }
        for i, size in enumerate(sizes)
    ]
    abort = pick(
        {"failure_threshold": 0.05, "min_executed": 1},
        st.none()
        | st.builds(
            lambda threshold, executed: {"failure_threshold": threshold, "min_executed": executed},
            fractions,
            st.integers(min_value=1, max_value=20),
        ),
    )
    rollback_version = pick(VERSIONS[0], st.none() | st.sampled_from(VERSIONS))
    rollback = pick(
        {
            "version": rollback_version,
            "automatic": True,
            "known": None if rollback_version is None else True,
            "downgrade_allowed": None if rollback_version is None else False,
        },
        st.none()
        | st.builds(
            lambda automatic, known, allowed: {
                "version": rollback_version,
                "automatic": automatic,
                "known": None if rollback_version is None else known,
                "downgrade_allowed": None if rollback_version is None else allowed,
            },
            st.booleans(),
            st.booleans(),
            st.none() | st.booleans(),
        ),
    )
    document = {
        "plan": {
            "id": draw(st.sampled_from(["p-1", "p-2"])),
            "hash": draw(st.sampled_from(HASHES)),
            "revision": draw(st.integers(min_value=1, max_value=3)),
            "intent": pick("rollout", st.sampled_from(["rollout", "rollback"])),
            "module": module,
            "version": version,
            "requested_by": draw(st.sampled_from(PEOPLE)),
            "abort": abort,
            "rollback": rollback,
            "schedule": {
                "mode": pick("maintenance", st.sampled_from(["maintenance", "now"])),
                "start": (NOW + timedelta(hours=draw(st.integers(0, 48)))).isoformat(),
            },
        },
        "manifest": {
            "name": pick(module, st.sampled_from([module, "other-module"])),
            "version": pick(version, st.sampled_from([version, "0.0.1"])),
            "safety": safety,
            "device_classes": classes,
            "arch": arches,
            "min_memory_mb": memory,
            "requires": draw(
                st.lists(st.just({"module": "edge-runtime", "range": ">=3.2,<4"}), max_size=1)
            ),
            "downgrade_allowed": draw(st.booleans()),
            "digest": digest,
            "signature_present": signed,
            "signer": "ed25519:c6decebb6524dc18" if signed else None,
        },
        "verification": {
            "signature_valid": signed and pick(True, st.booleans()),
            "signature_problem": pick(None, st.just("the version field was changed")),
            "observed_digest": pick(digest, st.none() | st.sampled_from(DIGESTS)),
        },
        "targets": groups,
        "waves": waves,
        "coverage": {
            "assigned_twice": pick({"count": 0, "examples": []}, fact()),
            "not_targets": pick({"count": 0, "examples": []}, fact()),
            "unassigned": pick({"count": 0, "examples": []}, fact()),
        },
        "actor": draw(st.sampled_from(PEOPLE)),
        "context": {"now": NOW.isoformat(), "freeze": pick(False, st.booleans())},
    }
    return input_document(RolloutInput.model_validate(document))


@st.composite
def tool_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """A tool call at the enforcement point, validated as a ``ToolInput``."""
    tool = draw(
        st.sampled_from(
            [
                "deploy_wave",
                "rollback",
                "pause",
                "resume",
                "fleet_status",
                "device_telemetry",
                "format_disk",
            ]
        )
    )
    plan = draw(
        st.none()
        | st.builds(
            lambda plan_id, plan_hash, module, version, digest, rollback, approved, back: {
                "id": plan_id,
                "hash": plan_hash,
                "module": module,
                "version": version,
                "digest": digest,
                "rollback_version": rollback,
                "approved": approved,
                "rollback_plan": back,
            },
            st.sampled_from(["p-1", "p-2"]),
            st.sampled_from(HASHES),
            st.sampled_from(MODULES),
            st.sampled_from(VERSIONS),
            st.sampled_from(DIGESTS),
            st.none() | st.sampled_from(VERSIONS),
            st.booleans(),
            st.booleans(),
        )
    )
    args: dict[str, Any] = {}
    choices: list[tuple[str, list[Any]]] = [
        ("plan_hash", HASHES),
        ("module", MODULES),
        ("version", VERSIONS),
        ("digest", DIGESTS),
        ("wave", [0, 1, 2]),
        ("reason", ["operator asked"]),
    ]
    for key, values in choices:
        if draw(st.booleans()):
            args[key] = draw(st.sampled_from(values))
    document = {
        "tool": tool,
        "args": args,
        "devices": {
            "count": draw(st.integers(min_value=0, max_value=20)),
            "outside_wave": draw(st.just({"count": 0, "examples": []}) | fact()),
            "outside_plan": draw(st.just({"count": 0, "examples": []}) | fact()),
        },
        "plan": plan,
        "wave": draw(
            st.none()
            | st.builds(
                lambda index, passed: {"index": index, "previous_gate_passed": passed},
                st.integers(min_value=0, max_value=2),
                st.booleans(),
            )
        ),
        "kill_switch": draw(st.booleans()),
        "freeze": draw(st.booleans()),
    }
    return input_document(ToolInput.model_validate(document))


@st.composite
def approvals_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """Approvals on a plan revision, validated as an ``ApprovalsInput``."""
    plan_hash = draw(st.sampled_from(HASHES))
    approvals = [
        {
            "index": index,
            "approver": draw(st.sampled_from(PEOPLE)),
            "plan_hash": draw(st.sampled_from([plan_hash, plan_hash, *HASHES])),
            "decision": draw(st.sampled_from(["approve", "approve", "reject"])),
            "signature_valid": draw(st.booleans()),
            "claimed_roles": draw(st.lists(st.sampled_from(ROLES), max_size=2, unique=True)),
            "in_time": draw(st.booleans()),
            "within_skew": draw(st.booleans()),
        }
        for index in range(draw(st.integers(min_value=0, max_value=5)))
    ]
    roster = draw(
        st.none()
        | st.dictionaries(
            st.sampled_from(PEOPLE),
            st.lists(st.sampled_from(ROLES), max_size=2, unique=True),
            max_size=5,
        )
    )
    document = {
        "plan_id": "p-1",
        "plan_hash": plan_hash,
        "requester": draw(st.sampled_from(PEOPLE)),
        "required": draw(
            st.lists(
                st.builds(
                    lambda role, count: {"role": role, "count": count},
                    st.sampled_from(ROLES[1:4]),
                    st.integers(min_value=1, max_value=2),
                ),
                max_size=3,
            )
        ),
        "approvals": approvals,
        "roster": roster,
    }
    return input_document(ApprovalsInput.model_validate(document))


@st.composite
def operation_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """Setting or lifting the change freeze, validated as an ``OperationInput``."""
    document = {
        "action": draw(st.sampled_from(["freeze", "unfreeze", "reboot"])),
        "actor": draw(st.sampled_from(PEOPLE)),
        "roster": draw(
            st.none()
            | st.dictionaries(
                st.sampled_from(PEOPLE),
                st.lists(st.sampled_from([*ROLES, "ops"]), max_size=2, unique=True),
                max_size=5,
            )
        ),
    }
    return input_document(OperationInput.model_validate(document))


GENERATED = [
    (ROLLOUT, rollout_inputs()),
    (TOOLS, tool_inputs()),
    (APPROVALS, approvals_inputs()),
    (OPERATIONS, operation_inputs()),
]
IDS = ["rollout", "tools", "approvals", "operations"]


def check_generated(
    engines: dict[str, PolicyEngine], path: str, inputs: st.SearchStrategy[dict[str, Any]], n: int
) -> None:
    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(inputs)
    def decides_the_same(document: dict[str, Any]) -> None:
        problem = disagreement(engines, path, document)
        assert problem is None, problem

    decides_the_same()


@pytest.mark.parametrize(("path", "inputs"), GENERATED, ids=IDS)
def test_generated_inputs_decide_the_same_on_every_engine(
    engines: dict[str, PolicyEngine], path: str, inputs: st.SearchStrategy[dict[str, Any]]
) -> None:
    check_generated(engines, path, inputs, DEFAULT_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize(("path", "inputs"), GENERATED, ids=IDS)
def test_ten_thousand_generated_inputs_decide_the_same_on_every_engine(
    engines: dict[str, PolicyEngine], path: str, inputs: st.SearchStrategy[dict[str, Any]]
) -> None:
    check_generated(engines, path, inputs, SLOW_EXAMPLES)


def outcomes(
    engine: PolicyEngine, path: str, inputs: st.SearchStrategy[dict[str, Any]], n: int
) -> set[bool]:
    """The ``allow`` (or ``satisfied``) values of ``n`` generated inputs."""
    key = "satisfied" if path == APPROVALS else "allow"
    seen: set[bool] = set()

    @settings(max_examples=n, derandomize=True, database=None, deadline=None)
    @given(inputs)
    def collect(document: dict[str, Any]) -> None:
        seen.add(engine.decide(path, document)[key])

    collect()
    return seen


@pytest.mark.parametrize(("path", "inputs"), GENERATED, ids=IDS)
def test_the_generated_inputs_reach_allow_and_deny(
    engines: dict[str, PolicyEngine], path: str, inputs: st.SearchStrategy[dict[str, Any]]
) -> None:
    """The strategies are not all denies: each decision both allows and refuses somewhere."""
    assert outcomes(engines["regorus"], path, inputs, 200) == {True, False}
