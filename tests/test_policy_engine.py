"""The in-process engine on realistic inputs: every deny rule both ways, approvals, tool calls,
the decision log and failing closed."""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_policy_inputs import (
    World,
    build,
    hvac_plan,
    plan_for,
    pump_plan,
    world,
)

from fieldgate.approvals import Approval, Decision
from fieldgate.audit import ActorKind, EventKind
from fieldgate.plan import select_devices
from fieldgate.policy import (
    APPROVALS,
    DECISIONS,
    ROLLOUT,
    TOOLS,
    ApprovalsDecision,
    ArtifactCheck,
    PolicyGate,
    PolicyPack,
    RegoEngine,
    RolloutDecision,
    RolloutInput,
    approvals_input,
    input_digest,
    input_document,
    read_decision,
    tool_input,
    verify_approvals,
)
from fieldgate.policy._pack import default_policy_dir
from fieldgate.signing import SigningKey

BENCH = Path(__file__).resolve().parents[1] / "bench" / "policy.py"


@pytest.fixture(scope="module")
def engine() -> RegoEngine:
    return RegoEngine()


def rollout(engine: RegoEngine, inp: RolloutInput) -> RolloutDecision:
    decision: RolloutDecision = read_decision(ROLLOUT, engine.decide(ROLLOUT, input_document(inp)))
    return decision


def _pump() -> World:
    return world("canary-fails-rollback")


def _hvac() -> World:
    return world("safety-approval")


def _rollback_of_pump(downgrade_allowed: bool, freeze: bool = False) -> RolloutInput:
    """pump-logic back to 1.8.0 on controllers that run 1.9.0, asked for as a rollback."""
    w = _pump()
    devices = [
        d.model_copy(update={"installed": {**d.installed, "pump-logic": "1.9.0"}})
        for d in w.devices
    ]
    plan = plan_for(
        "pump-logic",
        "1.8.0",
        {"sites": ["rtm-05"]},
        intent="rollback",
        canary=60,
        waves=[
            {
                "name": "all",
                "percent": 100,
                "health_gate": {"min_success_rate": 0.9, "max_failures": 3, "soak_minutes": 10},
            }
        ],
        rollback={"version": "1.9.0"},
        schedule={"mode": "now"},
    )
    manifest = w.manifest("pump-logic", "1.8.0").model_copy(
        update={"downgrade_allowed": downgrade_allowed}
    )
    return build(
        w,
        plan,
        manifest=manifest,
        targets=select_devices(plan.target, devices, w.sites),
        freeze=freeze,
    )


def _with_devices(w: World, change: Callable[[int, Any], Any], plan: Any) -> RolloutInput:
    devices = [change(i, d) for i, d in enumerate(w.devices)]
    return build(w, plan, targets=select_devices(plan.target, devices, w.sites))


CASES: dict[str, tuple[Callable[[], RolloutInput], Callable[[], RolloutInput], str]] = {
    # rule: (input where it fires, input where it does not, word its message contains)
    "D1": (
        lambda: build(
            world("unsigned-denied"), plan_for("plc-bridge", "5.1.0", {"sites": ["osl-01"]})
        ),
        lambda: build(
            world("unsigned-denied"), plan_for("plc-bridge", "5.0.2", {"sites": ["osl-01"]})
        ),
        "signed",
    ),
    "D2": (
        lambda: build(
            _pump(),
            pump_plan(),
            check=ArtifactCheck(signature_valid=True, observed_digest="sha256:" + "e" * 64),
        ),
        lambda: build(_pump(), pump_plan()),
        "digest",
    ),
    "D3": (
        lambda: _with_devices(
            _pump(),
            lambda i, d: d.model_copy(update={"arch": "amd64"}) if i < 4 else d,
            pump_plan(),
        ),
        lambda: build(_pump(), pump_plan()),
        "4 target device(s) have arch amd64",
    ),
    "D4": (
        lambda: _with_devices(
            _hvac(),
            lambda i, d: (
                d.model_copy(update={"installed": {**d.installed, "edge-runtime": "3.1.0"}})
                if i % 2
                else d
            ),
            hvac_plan(),
        ),
        lambda: build(_hvac(), hvac_plan()),
        "edge-runtime",
    ),
    "D5": (
        lambda: build(_pump(), pump_plan(canary=4)),
        lambda: build(_pump(), pump_plan(canary=3)),
        "canary",
    ),
    "D6": (
        lambda: build(_pump(), pump_plan(abort=None)),
        lambda: build(_pump(), pump_plan(abort={"failure_threshold": 0.1})),
        "abort",
    ),
    "D7": (
        lambda: build(_hvac(), hvac_plan(schedule={"mode": "now"})),
        lambda: build(_hvac(), hvac_plan(schedule={"mode": "maintenance"})),
        "maintenance",
    ),
    "D8": (
        lambda: _rollback_of_pump(downgrade_allowed=False),
        lambda: _rollback_of_pump(downgrade_allowed=True),
        "downgrade",
    ),
    "D9": (
        lambda: build(_pump(), pump_plan(), freeze=True),
        lambda: _rollback_of_pump(downgrade_allowed=True, freeze=True),
        "freeze",
    ),
    "D10": (
        lambda: build(
            _pump(),
            pump_plan(
                waves=[
                    {
                        "name": "canary",
                        "devices": ["rtm-05-pump-ctl-01"],
                        "health_gate": {"min_success_rate": 1, "max_failures": 0},
                    },
                    {
                        "name": "rest",
                        "percent": 100,
                        "health_gate": {"min_success_rate": 1, "max_failures": 0},
                    },
                    {
                        "name": "again",
                        "devices": ["rtm-05-pump-ctl-01"],
                        "health_gate": {"min_success_rate": 1, "max_failures": 0},
                    },
                ]
            ),
        ),
        lambda: build(_pump(), pump_plan()),
        "rtm-05-pump-ctl-01",
    ),
    "D11": (
        lambda: build(_pump(), pump_plan(abort={"failure_threshold": 0.2})),
        lambda: build(_pump(), pump_plan(abort={"failure_threshold": 0.1})),
        "failure_threshold 0.2 is above the floor 0.1 for safety class low",
    ),
}


@pytest.mark.parametrize("rule", list(CASES))
def test_deny_rule_fires(engine: RegoEngine, rule: str) -> None:
    fired, _, word = CASES[rule]
    decision = rollout(engine, fired())
    assert decision.allow is False
    assert rule in decision.rules
    assert any(
        word in message
        for message in decision.deny
        if message in {v.message for v in decision.violations if v.rule == rule}
    )


@pytest.mark.parametrize("rule", list(CASES))
def test_deny_rule_does_not_fire(engine: RegoEngine, rule: str) -> None:
    _, clean, _ = CASES[rule]
    decision = rollout(engine, clean())
    assert rule not in decision.rules, decision.deny
    assert decision.allow is True, decision.deny


@pytest.mark.parametrize(
    ("scenario", "plan", "approvals"),
    [
        ("safety-approval", lambda: hvac_plan(), [("safety", 1)]),
        (
            "telemetry-injection",
            lambda: plan_for("hvac-controller", "2.4.1", {"sites": ["ber-03"]}),
            [("safety", 1)],
        ),
        (
            "small-auto-allow",
            lambda: plan_for("air-quality-model", "1.2.0", {"sites": ["lyon-02"]}),
            [],
        ),
        ("canary-fails-rollback", lambda: pump_plan(), []),
    ],
)
def test_scenarios_get_the_approvals_they_expect(
    engine: RegoEngine, scenario: str, plan: Callable[[], Any], approvals: list[tuple[str, int]]
) -> None:
    decision = rollout(engine, build(world(scenario), plan()))
    assert decision.allow is True, decision.deny
    assert [(a.role, a.count) for a in decision.approvals] == approvals


def test_unsigned_scenario_is_denied_before_any_approval(engine: RegoEngine) -> None:
    decision = rollout(
        engine,
        build(world("unsigned-denied"), plan_for("plc-bridge", "5.1.0", {"sites": ["osl-01"]})),
    )
    assert decision.allow is False
    assert any("sign" in m.lower() for m in decision.deny)


def test_rollback_plan_is_exempt_from_canary_and_freeze(engine: RegoEngine) -> None:
    decision = rollout(engine, _rollback_of_pump(downgrade_allowed=True, freeze=True))
    assert decision.rollback is True
    assert decision.allow is True


def test_many_targets_in_two_regions_need_a_release_manager(engine: RegoEngine) -> None:
    w = _hvac()
    sites = dict(w.sites)
    sites["muc-01"] = sites["muc-01"].model_copy(
        update={"region": "eu-south", "labels": {"regulated": "true"}}
    )
    w.sites = sites
    decision = rollout(engine, build(w, hvac_plan()))
    assert {(a.role, a.count) for a in decision.approvals} == {
        ("safety", 1),
        ("release-manager", 1),
        ("compliance", 1),
    }


# --- approvals -------------------------------------------------------------------

KEYS = {
    name: SigningKey.from_seed(name, name.encode())
    for name in ("eng-ana", "saf-lee", "saf-ola", "rm-kim")
}
ROSTER = {
    "eng-ana": ["engineer", "safety"],
    "saf-lee": ["safety"],
    "saf-ola": ["safety"],
    "rm-kim": ["release-manager"],
}
PLAN_HASH = "c" * 64
AT = datetime(2026, 11, 21, 10, 30, tzinfo=UTC)


def signed(
    who: str,
    decision: str = "approve",
    *,
    plan_hash: str = PLAN_HASH,
    roles: list[str] | None = None,
) -> Approval:
    approval = Approval(
        plan_id="p-hvac",
        plan_hash=plan_hash,
        approver=who,
        roles=roles or [],
        decision=Decision(decision),
        at=AT,
    )
    return approval.signed_with(KEYS[who])


def count(engine: RegoEngine, approvals: list[Approval], need: int = 1) -> ApprovalsDecision:
    valid = verify_approvals(approvals, {name: key.public_b64 for name, key in KEYS.items()})
    inp = approvals_input(
        PLAN_HASH, "eng-ana", approvals, valid, ROSTER, [{"role": "safety", "count": need}]
    )
    decision: ApprovalsDecision = read_decision(
        APPROVALS, engine.decide(APPROVALS, input_document(inp))
    )
    return decision


def test_signed_safety_approval_counts(engine: RegoEngine) -> None:
    decision = count(engine, [signed("saf-lee")])
    assert decision.satisfied and decision.counted == ["saf-lee"]


def test_tampered_approval_does_not_count(engine: RegoEngine) -> None:
    tampered = signed("saf-lee").model_copy(update={"comment": "edited"})
    decision = count(engine, [tampered])
    assert not decision.satisfied
    assert "signature" in decision.ignored[0].reason


def test_approval_signed_with_another_persons_key_does_not_count(engine: RegoEngine) -> None:
    stolen = Approval(
        plan_id="p", plan_hash=PLAN_HASH, approver="saf-lee", decision=Decision.approve, at=AT
    )
    decision = count(engine, [stolen.signed_with(KEYS["rm-kim"])])
    assert not decision.satisfied


def test_approval_of_other_plan_hash_does_not_count(engine: RegoEngine) -> None:
    decision = count(engine, [signed("saf-lee", plan_hash="d" * 64)])
    assert not decision.satisfied
    assert decision.missing[0].role == "safety"


def test_requester_approving_own_plan_does_not_count(engine: RegoEngine) -> None:
    decision = count(engine, [signed("eng-ana")])
    assert not decision.satisfied
    assert "requester" in decision.ignored[0].reason


def test_role_claimed_but_not_in_roster_does_not_count(engine: RegoEngine) -> None:
    decision = count(engine, [signed("rm-kim", roles=["safety"])])
    assert not decision.satisfied
    assert "roster" in decision.ignored[0].reason


def test_one_person_twice_does_not_make_a_quorum_of_two(engine: RegoEngine) -> None:
    decision = count(engine, [signed("saf-lee"), signed("saf-lee")], need=2)
    assert not decision.satisfied
    assert [(m.role, m.count) for m in decision.missing] == [("safety", 1)]


def test_quorum_of_two_safety_approvers_for_critical(engine: RegoEngine) -> None:
    assert count(engine, [signed("saf-lee"), signed("saf-ola")], need=2).satisfied


def test_counted_rejection_rejects(engine: RegoEngine) -> None:
    decision = count(engine, [signed("saf-ola"), signed("saf-lee", "reject")])
    assert not decision.satisfied
    assert decision.rejected and decision.rejected_by == ["saf-lee"]


def test_scenario_roster_is_used_for_safety_approval(engine: RegoEngine) -> None:
    """safety-approval: the requester's own approval is ignored, saf-lee's counts."""
    sc = world("safety-approval").scenario
    required = rollout(engine, build(world("safety-approval"), hvac_plan())).approvals
    approvals = [signed(a.by, a.decision.value) for a in sc.approvals]
    valid = verify_approvals(approvals, {name: key.public_b64 for name, key in KEYS.items()})
    inp = approvals_input(PLAN_HASH, sc.actor, approvals, valid, sc.roster, required)
    first = read_decision(
        APPROVALS,
        engine.decide(
            APPROVALS,
            input_document(
                approvals_input(PLAN_HASH, sc.actor, approvals[:1], valid[:1], sc.roster, required)
            ),
        ),
    )
    assert not first.satisfied
    assert read_decision(APPROVALS, engine.decide(APPROVALS, input_document(inp))).satisfied


# --- tool calls ------------------------------------------------------------------

DIGEST = "sha256:" + "1" * 64


def tool(engine: RegoEngine, name: str, args: dict[str, Any], **context: Any) -> dict[str, Any]:
    plan = pump_plan()
    defaults: dict[str, Any] = {
        "plan": plan,
        "digest": DIGEST,
        "approved": True,
        "plan_devices": [f"rtm-05-pump-ctl-{n:02d}" for n in range(1, 61)],
        "wave_index": 0,
        "wave_devices": ["rtm-05-pump-ctl-01", "rtm-05-pump-ctl-02", "rtm-05-pump-ctl-03"],
        "previous_gate_passed": False,
        "kill_switch": False,
    }
    defaults.update(context)
    full_args = {
        "plan_hash": plan.plan_hash,
        "module": "pump-logic",
        "version": "1.9.0",
        "digest": DIGEST,
    }
    full_args.update(args)
    return engine.decide(TOOLS, input_document(tool_input(name, full_args, **defaults)))


def test_deploy_wave_to_its_devices_is_allowed(engine: RegoEngine) -> None:
    assert (
        tool(engine, "deploy_wave", {"wave": 0, "devices": ["rtm-05-pump-ctl-01"]})["allow"] is True
    )


@pytest.mark.parametrize(
    ("args", "context", "reason"),
    [
        ({"version": "2.0.0"}, {}, "version"),
        ({"digest": "sha256:" + "2" * 64}, {}, "digest"),
        ({"devices": ["rtm-05-pump-ctl-09"]}, {}, "not in the current wave"),
        ({}, {"wave_index": 1, "previous_gate_passed": False}, "health gate"),
        ({}, {"kill_switch": True}, "kill switch"),
        ({}, {"approved": False}, "not approved"),
    ],
)
def test_deploy_is_refused(
    engine: RegoEngine, args: dict[str, Any], context: dict[str, Any], reason: str
) -> None:
    call = {"devices": ["rtm-05-pump-ctl-01"], **args}
    if context.get("wave_index") == 1:
        context["wave_devices"] = ["rtm-05-pump-ctl-01"]
    result = tool(engine, "deploy_wave", call, **context)
    assert result["allow"] is False
    assert reason in result["reason"]


def test_rollback_only_to_rollback_version_on_plan_devices(engine: RegoEngine) -> None:
    ok = tool(engine, "rollback", {"version": "1.8.0", "devices": ["rtm-05-pump-ctl-01"]})
    wrong_version = tool(
        engine, "rollback", {"version": "1.7.0", "devices": ["rtm-05-pump-ctl-01"]}
    )
    stranger = tool(engine, "rollback", {"version": "1.8.0", "devices": ["osl-01-plc-gw-01"]})
    killed = tool(
        engine,
        "rollback",
        {"version": "1.8.0", "devices": ["rtm-05-pump-ctl-01"]},
        kill_switch=True,
    )
    assert ok["allow"] is True
    assert [wrong_version["allow"], stranger["allow"], killed["allow"]] == [False, False, False]


def test_calls_to_ten_thousand_devices_are_decided_within_the_engine_limit(
    engine: RegoEngine,
) -> None:
    """The engine refuses a decision that takes over 2 s: a large wave must stay far below."""
    devices = [f"dev-{n:05d}" for n in range(10_000)]
    fleet = {"plan_devices": devices, "wave_devices": devices}
    ok = tool(engine, "deploy_wave", {"wave": 0, "devices": devices}, **fleet)
    outside = tool(
        engine,
        "deploy_wave",
        {"wave": 0, "devices": devices},
        **{**fleet, "wave_devices": devices[:9_000]},
    )
    stranger = tool(
        engine, "rollback", {"version": "1.8.0", "devices": [*devices, "osl-01"]}, **fleet
    )
    assert ok["allow"] is True, ok["reason"]
    assert outside["reasons"] == [
        "1000 device(s) are not in the current wave 0 (e.g. dev-09000, dev-09001, dev-09002)"
    ]
    assert stranger["reasons"] == ["1 device(s) are not devices of the plan (e.g. osl-01)"]


def test_reads_are_allowed_even_under_kill_switch(engine: RegoEngine) -> None:
    for name in ("fleet_status", "device_telemetry"):
        assert tool(engine, name, {}, kill_switch=True)["allow"] is True


# --- the gate and the decision log -----------------------------------------------


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = fail

    def append(
        self,
        kind: Any,
        actor_kind: Any,
        actor: str,
        payload: dict[str, Any],
        plan_id: str | None = None,
        thread_id: str | None = None,
        at: Any = None,
    ) -> None:
        if self.fail:
            raise OSError("disk full")
        self.events.append(
            {
                "kind": kind,
                "actor_kind": actor_kind,
                "actor": actor,
                "payload": payload,
                "plan_id": plan_id,
                "thread_id": thread_id,
            }
        )


def test_gate_logs_every_decision(engine: RegoEngine) -> None:
    log = Recorder()
    gate = PolicyGate(engine, log)
    inp = build(_hvac(), hvac_plan())
    decision = gate.rollout(inp, thread_id="t-1")
    assert decision.allow and decision.needs_approval
    (event,) = log.events
    assert event["kind"] == EventKind.policy_decision and event["actor_kind"] == ActorKind.system
    assert event["plan_id"] == "p-test" and event["thread_id"] == "t-1"
    payload = event["payload"]
    assert set(payload) == {
        "path",
        "input_digest",
        "result",
        "policy_revision",
        "engine",
        "latency_ms",
    }
    assert payload["path"] == ROLLOUT
    assert payload["input_digest"] == input_digest(input_document(inp))
    assert payload["policy_revision"] == engine.revision and len(engine.revision) == 64
    assert payload["engine"] == "regopy"
    assert payload["result"]["approvals"][0]["role"] == "safety"
    assert payload["latency_ms"] > 0


def test_audit_write_failure_denies(engine: RegoEngine) -> None:
    gate = PolicyGate(engine, Recorder(fail=True))
    decision = gate.rollout(build(_pump(), pump_plan()))
    assert decision.allow is False
    assert decision.error and "audit log" in decision.error
    assert (
        gate.tool(
            tool_input(
                "fleet_status", {}, plan=None, digest=None, approved=False, kill_switch=False
            )
        ).allow
        is False
    )


def test_gate_writes_to_the_audit_store(engine: RegoEngine, sqlite_url: str) -> None:
    from fieldgate.store import Store

    with Store.open(sqlite_url) as store:
        gate = PolicyGate(engine, store.audit)
        decision = gate.rollout(build(_pump(), pump_plan()))
        events = store.audit.events(plan_id="p-test")
        assert store.audit.verify().ok
    assert decision.allow
    assert [e.kind for e in events] == [EventKind.policy_decision]
    assert events[0].payload["result"]["allow"] is True
    assert events[0].payload["engine"] == "regopy"


def test_engine_that_raises_is_a_deny() -> None:
    class Broken:
        name = "broken"
        revision = "0" * 64

        def decide(self, path: str, input: Any) -> dict[str, Any]:
            raise RuntimeError("boom")

        def test(self) -> list[Any]:
            return []

    log = Recorder()
    result = PolicyGate(Broken(), log).decide(ROLLOUT, {})
    assert result["allow"] is False and "boom" in result["error"]
    assert log.events[0]["payload"]["result"]["allow"] is False


SLOW = "fieldgate.slow.decision"
SLOW_POLICY = (
    "package fieldgate.slow\n\n"
    'decision := {"allow": count([x | some x in numbers.range(1, input.n)]) > 0}\n'
)


def test_timeout_denies_until_the_late_call_ends(tmp_path: Path) -> None:
    # A really slow policy, evaluated by regopy, beside the shipped pack.
    pack_dir = tmp_path / "pack"
    shutil.copytree(default_policy_dir(), pack_dir)
    (pack_dir / "slow.rego").write_text(SLOW_POLICY)
    engine = RegoEngine(PolicyPack.load(pack_dir), timeout_s=0.05, entrypoints=(*DECISIONS, SLOW))
    first = engine.decide(SLOW, {"n": 400_000})
    assert first["allow"] is False and "timeout" in first["error"]
    second = engine.decide(ROLLOUT, {})
    assert second["allow"] is False and "still running" in second["error"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.1)
        third = engine.decide(TOOLS, {"tool": "fleet_status", "args": {}, "kill_switch": False})
        if "still running" not in str(third.get("error")):
            break
    assert third["allow"] is True


def test_input_that_is_not_json_denies(engine: RegoEngine) -> None:
    result = engine.decide(ROLLOUT, {"when": datetime.now(UTC) - timedelta(days=1)})
    assert result["allow"] is False and "JSON" in result["error"]


def test_unknown_decision_path_denies(engine: RegoEngine) -> None:
    result = engine.decide("fieldgate.rollout.nothing_here", {})
    assert result["allow"] is False and "undefined" in result["error"]


def test_thousand_device_decision_is_fast(engine: RegoEngine) -> None:
    """A loose guard against a slow policy; bench/policy.py measures the real figures."""
    spec = importlib.util.spec_from_file_location("bench_policy", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    document = input_document(bench.thousand_device_input())
    engine.decide(ROLLOUT, document)
    started = time.perf_counter()
    for _ in range(20):
        result = engine.decide(ROLLOUT, document)
    per_decision_ms = (time.perf_counter() - started) * 1000 / 20
    assert result["targets"] == 1000
    assert per_decision_ms < 25, f"{per_decision_ms:.1f} ms per decision"
