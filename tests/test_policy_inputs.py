"""The policy input builders on real fleets: facts, grouping, coverage, windows, versions.

The helpers at the top (``world``, ``plan_for``, ``decide_rollout``) are shared with
the other ``test_policy_*`` modules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fieldgate.approvals import Approval, Decision
from fieldgate.fleet import Device, FleetInventory, Site
from fieldgate.manifest import ModuleManifest
from fieldgate.plan import RolloutPlan, select_devices
from fieldgate.policy import (
    ArtifactCheck,
    RolloutInput,
    approvals_input,
    input_digest,
    input_document,
    relation_of,
    rollout_input,
    tool_input,
    verify_approvals,
    verify_artifact,
)
from fieldgate.scenario import Scenario, load_scenario
from fieldgate.signing import SigningKey

SCENARIOS = Path(__file__).resolve().parents[2] / "shared" / "scenarios"
"""The shared scenarios (``../shared/scenarios`` beside the repository)."""
FACTORY = SigningKey.from_seed("factory", b"fieldgate-test-factory")
TRUSTED = {FACTORY.key_id: FACTORY.public_b64}
GATE = {"min_success_rate": 0.95, "max_failures": 1, "soak_minutes": 30}
"""A gate at the floors of every safety class (D11)."""


@dataclass
class World:
    """A scenario's fleet and catalog, ready for input builders."""

    scenario: Scenario
    sites: dict[str, Site]
    devices: list[Device]
    catalog: dict[tuple[str, str], ModuleManifest]
    observed: dict[tuple[str, str], str]

    def manifest(self, module: str, version: str) -> ModuleManifest:
        return self.catalog[(module, version)]

    def check(self, module: str, version: str) -> ArtifactCheck:
        return verify_artifact(
            self.manifest(module, version), TRUSTED, self.observed[(module, version)]
        )


def world(name: str) -> World:
    """Load ``shared/scenarios/<name>.yaml`` with manifests signed by the test factory."""
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    catalog, observed = {}, {}
    for entry in scenario.catalog:
        manifest, digest = entry.to_manifest(FACTORY)
        catalog[(manifest.name, manifest.version)] = manifest
        observed[(manifest.name, manifest.version)] = digest
    return World(
        scenario,
        {s.id: s for s in scenario.fleet.sites},
        scenario.fleet.all_devices(),
        catalog,
        observed,
    )


def plan_for(module: str, version: str, target: dict[str, Any], **fields: Any) -> RolloutPlan:
    """A sensible plan: a canary wave of ``canary`` devices, then the rest, gated, abort at 5%."""
    canary = fields.pop("canary", 1)
    document: dict[str, Any] = {
        "plan_id": "p-test",
        "module": module,
        "version": version,
        "requested_by": "eng-ana",
        "target": target,
        "waves": [
            {"name": "canary", "count": canary, "health_gate": GATE},
            {"name": "rest", "percent": 100, "health_gate": GATE},
        ],
        "abort": {"failure_threshold": 0.05},
        "rollback": {"version": None},
        "schedule": {"mode": "maintenance"},
    }
    document.update(fields)
    return RolloutPlan.model_validate(document)


def build(
    w: World,
    plan: RolloutPlan,
    *,
    check: ArtifactCheck | None = None,
    manifest: ModuleManifest | None = None,
    now: datetime | None = None,
    freeze: bool | None = None,
    targets: list[Device] | None = None,
) -> RolloutInput:
    """The rollout input for ``plan`` in world ``w``."""
    return rollout_input(
        plan,
        manifest or w.manifest(plan.module, plan.version),
        check or w.check(plan.module, plan.version),
        targets if targets is not None else select_devices(plan.target, w.devices, w.sites),
        w.sites,
        w.catalog,
        actor=plan.requested_by,
        now=now or w.scenario.context.now,
        freeze=w.scenario.context.freeze if freeze is None else freeze,
    )


def hvac_plan(**fields: Any) -> RolloutPlan:
    """hvac-controller 2.4.1 to the 40 gateways of safety-approval, a 2-device canary."""
    fields.setdefault("canary", 2)
    fields.setdefault("rollback", {"version": "2.3.4"})
    return plan_for("hvac-controller", "2.4.1", {"classes": ["hvac-gw"]}, **fields)


def pump_plan(**fields: Any) -> RolloutPlan:
    """pump-logic 1.9.0 to the 60 controllers of canary-fails-rollback, a 3-device canary."""
    fields.setdefault("canary", 3)
    fields.setdefault("rollback", {"version": "1.8.0"})
    fields.setdefault("schedule", {"mode": "now"})
    return plan_for("pump-logic", "1.9.0", {"sites": ["rtm-05"]}, **fields)


def test_sixty_pump_controllers_are_one_group_with_a_three_device_canary() -> None:
    w = world("canary-fails-rollback")
    document = input_document(build(w, pump_plan()))
    assert len(document["targets"]) == 1
    group = document["targets"][0]
    assert group["count"] == 60
    assert group["class"] == "pump-ctl"
    assert group["installed"] == "1.8.0"
    assert group["relation"] == "upgrade"
    assert group["sites"] == ["rtm-05"]
    assert [(wave["name"], wave["size"]) for wave in document["waves"]] == [
        ("canary", 3),
        ("rest", 57),
    ]
    assert document["coverage"]["unassigned"] == {"count": 0, "examples": []}
    assert document["plan"]["rollback"] == {
        "version": "1.8.0",
        "automatic": True,
        "known": True,
        "downgrade_allowed": False,
    }


def test_input_size_does_not_grow_with_the_fleet() -> None:
    w = world("canary-fails-rollback")
    small = build(w, pump_plan())
    big_fleet = FleetInventory.model_validate(
        {
            "sites": [s.model_dump(by_alias=True) for s in w.scenario.fleet.sites],
            "generate": [
                {
                    "sites": ["rtm-05"],
                    "class": "pump-ctl",
                    "per_site": 2000,
                    "arch": "arm64",
                    "memory_mb": 512,
                    "installed": {"edge-runtime": "3.3.1", "pump-logic": "1.8.0"},
                }
            ],
        }
    )
    plan = pump_plan(canary=100)
    big = build(w, plan, targets=select_devices(plan.target, big_fleet.all_devices(), w.sites))
    assert big.targets[0].count == 2000
    assert len(json.dumps(input_document(big))) < 1.1 * len(json.dumps(input_document(small)))


def test_targets_split_on_the_facts_policy_reads() -> None:
    w = world("canary-fails-rollback")
    devices = list(w.devices)
    devices[0] = devices[0].model_copy(update={"memory_mb": 128})
    devices[1] = devices[1].model_copy(update={"installed": {"edge-runtime": "3.3.1"}})
    devices[2] = devices[2].model_copy(update={"installed": {"pump-logic": "2.0.0"}})
    plan = pump_plan()
    inp = build(w, plan, targets=select_devices(plan.target, devices, w.sites))
    by_key = {(g.memory_mb, g.installed): g for g in inp.targets}
    assert by_key[(128, "1.8.0")].count == 1
    assert by_key[(512, None)].relation == "fresh"
    assert by_key[(512, "2.0.0")].relation == "downgrade"
    assert by_key[(512, "2.0.0")].requires == []  # pump-logic requires nothing
    assert sum(g.count for g in inp.targets) == 60


def test_requirement_facts_use_version_ranges() -> None:
    w = world("safety-approval")
    devices = [
        d.model_copy(update={"installed": {**d.installed, "edge-runtime": "3.1.0"}})
        if d.id.startswith("ber-03")
        else d
        for d in w.devices
    ]
    plan = hvac_plan()
    inp = build(w, plan, targets=select_devices(plan.target, devices, w.sites))
    facts = {g.requires[0].installed: g.requires[0] for g in inp.targets}
    assert facts["3.1.0"].satisfied is False
    assert facts["3.2.0"].satisfied is True
    assert facts["3.1.0"].range == ">=3.2,<4"


def test_coverage_facts_name_duplicates_strangers_and_gaps() -> None:
    w = world("small-auto-allow")
    plan = plan_for(
        "air-quality-model",
        "1.2.0",
        {"sites": ["lyon-02"]},
        waves=[
            {"name": "a", "devices": ["lyon-02-env-sensor-01", "lyon-02-env-sensor-02"]},
            {"name": "b", "devices": ["lyon-02-env-sensor-02", "nowhere-01"]},
        ],
    )
    coverage = build(w, plan).coverage
    assert coverage.assigned_twice.examples == ["lyon-02-env-sensor-02"]
    assert coverage.not_targets.examples == ["nowhere-01"]
    assert coverage.unassigned.count == 4


def test_maintenance_schedule_is_inside_windows_by_construction() -> None:
    w = world("safety-approval")
    waves = build(w, hvac_plan()).waves
    assert [wave.outside_window for wave in waves] == [0, 0]


def test_schedule_now_counts_devices_outside_their_window() -> None:
    w = world("safety-approval")
    saturday_night = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)  # Sat 03:00 in Berlin
    outside = build(w, hvac_plan(schedule={"mode": "now"}))
    inside = build(w, hvac_plan(schedule={"mode": "now"}), now=saturday_night)
    assert [wave.outside_window for wave in outside.waves] == [2, 38]
    assert [wave.outside_window for wave in inside.waves] == [0, 0]


@pytest.mark.parametrize(
    ("version", "installed", "relation"),
    [
        ("2.4.1", None, "fresh"),
        ("2.4.1", "2.3.4", "upgrade"),
        ("2.4.1", "2.4.1", "same"),
        ("2.3.4", "2.4.1", "downgrade"),
        ("2.0.0", "2.0.0-rc1", "upgrade"),
        ("2.10.0", "2.9.0", "upgrade"),
    ],
)
def test_relation_of_versions(version: str, installed: str | None, relation: str) -> None:
    assert relation_of(version, installed) == relation


def test_unsigned_artifact_check_is_not_valid() -> None:
    w = world("unsigned-denied")
    assert w.check("plc-bridge", "5.1.0").signature_valid is False
    assert w.check("plc-bridge", "5.0.2").signature_valid is True
    other = SigningKey.from_seed("mallory", b"not the factory")
    assert not verify_artifact(
        w.manifest("plc-bridge", "5.0.2"), {other.key_id: other.public_b64}, None
    ).signature_valid


def test_input_digest_does_not_depend_on_target_order() -> None:
    w = world("safety-approval")
    plan = hvac_plan()
    targets = select_devices(plan.target, w.devices, w.sites)
    first = input_digest(input_document(build(w, plan, targets=targets)))
    again = input_digest(input_document(build(w, plan, targets=list(reversed(targets)))))
    assert first == again


def test_approvals_input_takes_roles_from_the_roster_and_signatures_from_keys() -> None:
    lee = SigningKey.from_seed("saf-lee", b"lee")
    mallory = SigningKey.from_seed("saf-lee", b"mallory pretending to be lee")
    at = datetime(2026, 11, 21, 10, 5, tzinfo=UTC)
    good = Approval(
        plan_id="p",
        plan_hash="a" * 64,
        approver="saf-lee",
        roles=["safety"],
        decision=Decision.approve,
        at=at,
    ).signed_with(lee)
    forged = good.model_copy(update={"comment": "changed after signing"})
    wrong_key = good.signed_with(mallory)
    valid = verify_approvals([good, forged, wrong_key], {"saf-lee": lee.public_b64})
    assert valid == [True, False, False]
    inp = approvals_input(
        "a" * 64,
        "eng-ana",
        [good, forged],
        valid,
        {"saf-lee": ["safety"]},
        [{"role": "safety", "count": 1, "reason": "x"}],
    )
    document = input_document(inp)
    assert document["approvals"][0]["signature_valid"] is True
    assert document["approvals"][1]["signature_valid"] is False
    assert document["approvals"][0]["claimed_roles"] == ["safety"]
    assert document["required"] == [{"role": "safety", "count": 1}]
    assert document["roster"] == {"saf-lee": ["safety"]}


def pump_call(devices: list[str], plan_devices: list[str], wave_devices: list[str]) -> Any:
    """A deploy_wave call of the pump plan's wave 0, as the executor builds it."""
    plan = pump_plan()
    return tool_input(
        "deploy_wave",
        {"wave": 0, "plan_hash": plan.plan_hash, "devices": devices},
        plan=plan,
        digest="sha256:" + "1" * 64,
        approved=True,
        plan_devices=plan_devices,
        wave_index=0,
        wave_devices=wave_devices,
        kill_switch=False,
    )


def test_tool_input_passes_device_facts_not_device_lists() -> None:
    plan = pump_plan()
    document = input_document(
        pump_call(["d-1", "d-3", "x-9", "d-3"], ["d-1", "d-2", "d-3"], ["d-1", "d-2"])
    )
    assert document["args"] == {"wave": 0, "plan_hash": plan.plan_hash}
    assert document["devices"] == {
        "count": 3,
        "outside_wave": {"count": 2, "examples": ["d-3", "x-9"]},
        "outside_plan": {"count": 1, "examples": ["x-9"]},
    }
    assert document["wave"] == {"index": 0, "previous_gate_passed": False}
    assert "devices" not in document["plan"]
    assert document["plan"]["rollback_version"] == "1.8.0"
    assert document["plan"]["hash"] == plan.plan_hash


def test_tool_input_names_three_devices_outside_and_counts_the_rest() -> None:
    document = input_document(pump_call([f"x-{n}" for n in range(9, 0, -1)], [], []))
    assert document["devices"]["outside_wave"] == {"count": 9, "examples": ["x-1", "x-2", "x-3"]}
    assert document["devices"]["outside_plan"] == {"count": 9, "examples": ["x-1", "x-2", "x-3"]}


def test_tool_input_without_a_current_wave_has_every_device_outside_it() -> None:
    inp = tool_input(
        "deploy_wave",
        {"devices": ["d-1"]},
        plan=pump_plan(),
        digest=None,
        approved=True,
        plan_devices=["d-1"],
        wave_devices=["d-1"],
        kill_switch=False,
    )
    assert inp.wave is None
    assert inp.devices.outside_wave.count == 1
    assert inp.devices.outside_plan.count == 0


def test_tool_input_outside_a_rollout_has_every_device_outside_the_plan() -> None:
    inp = tool_input(
        "rollback",
        {"devices": ["d-1"]},
        plan=None,
        digest=None,
        approved=False,
        plan_devices=["d-1"],
        kill_switch=False,
    )
    assert inp.plan is None
    assert inp.devices.outside_plan.count == 1


def test_tool_input_of_a_read_names_no_devices() -> None:
    inp = tool_input("fleet_status", {}, plan=None, digest=None, approved=False, kill_switch=True)
    assert input_document(inp)["devices"] == {
        "count": 0,
        "outside_wave": {"count": 0, "examples": []},
        "outside_plan": {"count": 0, "examples": []},
    }


@pytest.mark.parametrize("devices", ["d-1", {"d-1": True}, [1, 2]])
def test_tool_input_refuses_devices_that_are_not_a_list_of_ids(devices: Any) -> None:
    with pytest.raises(ValueError, match=r"args\.devices of deploy_wave"):
        tool_input(
            "deploy_wave",
            {"devices": devices},
            plan=None,
            digest=None,
            approved=True,
            kill_switch=False,
        )


def test_tool_input_does_not_grow_with_the_device_count() -> None:
    """A decision costs what its input weighs: a call to 10,000 devices, what one to 10 does."""

    def size(devices: int, outside: int) -> int:
        ids = [f"dev-{n:05d}" for n in range(devices)]
        strangers = [f"new-{n:05d}" for n in range(outside)]
        return len(json.dumps(input_document(pump_call(ids + strangers, ids, ids))))

    assert size(10, 0) == size(99, 0)
    # only the counts gain digits
    assert size(10_000, 0) - size(10, 0) == 3
    assert size(10_000, 5_000) - size(10, 5) == 3 + 2 * 3
    assert size(10_000, 5_000) < 1_500
