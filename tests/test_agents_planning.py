"""Proposing plans: compliant waves that cover the targets exactly once, gates, rollback,
schedule, and a rationale an approver can read."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fieldgate.agents import (
    Intent,
    PlanningContext,
    PlanningError,
    RequestFlags,
    Scope,
    canary_limit,
    count_targets,
    device_picker,
    fitting_devices,
    planning_context,
    propose_plan,
    rollback_waves,
    rollout_waves,
    understand,
)
from packaging.version import Version

from fieldgate.contract import load_yaml
from fieldgate.fleet import Device, FleetInventory, Site
from fieldgate.manifest import CatalogEntry, CatalogFile, ModuleManifest
from fieldgate.plan import (
    PlanIntent,
    RolloutPlan,
    ScheduleMode,
    Selector,
    Wave,
    assign_waves,
    select_devices,
)
from fieldgate.scenario import load_scenario

SHARED = Path(__file__).resolve().parents[2] / "shared" / "scenarios"
DATA = Path(__file__).resolve().parents[1] / "fieldgate" / "data"
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


class World:
    """A fleet with its catalog, its planning context and a device picker."""

    def __init__(
        self,
        fleet: FleetInventory,
        catalog: Sequence[ModuleManifest | CatalogEntry],
        now: datetime,
    ) -> None:
        self.fleet = fleet
        self.devices = fleet.all_devices()
        self.sites = {s.id: s for s in fleet.sites}
        self.ctx = planning_context(fleet, catalog, now)
        self.pick = device_picker(self.devices, fleet.sites)

    def plan(self, request: str, plan_id: str = "plan-1") -> RolloutPlan:
        intent = understand(request, self.ctx)
        assert isinstance(intent, Intent), f"{request!r} -> {intent}"
        return propose_plan(intent, self.ctx, plan_id, "eng-ana", pick_devices=self.pick)

    def targets(self, plan: RolloutPlan) -> list[Device]:
        item = self.ctx.item(plan.module, plan.version)
        assert item is not None
        return fitting_devices(plan.target, self.devices, self.sites, item)

    def waves(self, plan: RolloutPlan) -> list[list[str]]:
        return assign_waves(plan, self.targets(plan), self.sites)


def check_compliant(world: World, plan: RolloutPlan) -> list[list[str]]:
    """Assert what the policy pack checks (D5, D6, D7, D10) and return the waves."""
    targets = world.targets(plan)
    waves = world.waves(plan)
    assigned = [d for wave in waves for d in wave]
    assert len(assigned) == len(set(assigned)), "a device is in two waves"
    assert sorted(assigned) == sorted(d.id for d in targets), "waves do not cover the targets"
    assert all(waves), "an empty wave"
    exempt = plan.intent is PlanIntent.rollback and all(
        (v := d.installed.get(plan.module)) is not None and Version(v) > Version(plan.version)
        for d in targets
    )
    if len(targets) > 10 and not exempt:
        assert len(waves[0]) <= canary_limit(len(targets)) == max(1, len(targets) * 5 // 100)
    assert all(w.health_gate is not None for w in plan.waves)
    assert plan.abort is not None and plan.abort.failure_threshold <= 0.1
    item = world.ctx.item(plan.module, plan.version)
    assert item is not None
    if item.safety.value in ("high", "critical"):
        assert plan.schedule.mode is ScheduleMode.maintenance
    assert all(w.devices is None for w in plan.waves), "waves name devices"
    return waves


@pytest.fixture(scope="module")
def sample() -> World:
    fleet = load_yaml(DATA / "fleet.yaml", FleetInventory)
    catalog = load_yaml(DATA / "catalog.yaml", CatalogFile)
    return World(fleet, catalog.modules, NOW)


def scenario_world(name: str) -> tuple[World, str]:
    s = load_scenario(SHARED / f"{name}.yaml")
    return World(s.fleet, s.catalog, s.context.now), s.request


# --- the six shared scenarios ---------------------------------------------------------------


def test_canary_fails_rollback_plan() -> None:
    world, request = scenario_world("canary-fails-rollback")
    plan = world.plan(request)
    waves = check_compliant(world, plan)
    assert len(world.targets(plan)) == 60
    assert len(waves[0]) <= 3
    assert plan.rollback is not None and plan.rollback.version == "1.8.0"
    assert plan.rollback.automatic
    assert plan.schedule.mode is ScheduleMode.now


def test_safety_approval_plan() -> None:
    world, request = scenario_world("safety-approval")
    plan = world.plan(request)
    waves = check_compliant(world, plan)
    assert plan.ref == "hvac-controller@2.4.1"
    assert len(world.targets(plan)) == 40
    assert len(waves[0]) <= 2
    assert len(waves) >= 2
    assert plan.schedule.mode is ScheduleMode.maintenance
    assert "maintenance" in plan.rationale


def test_small_auto_allow_plan() -> None:
    world, request = scenario_world("small-auto-allow")
    plan = world.plan(request)
    check_compliant(world, plan)
    assert plan.ref == "air-quality-model@1.2.0"
    assert len(world.targets(plan)) == 6


def test_telemetry_injection_plan_keeps_the_canary() -> None:
    world, request = scenario_world("telemetry-injection")
    plan = world.plan(request)
    waves = check_compliant(world, plan)
    assert len(waves[0]) <= 2
    assert len(waves) >= 2
    assert "OVERRIDE" not in plan.rationale
    assert "approved" not in plan.rationale.lower()


def test_unsigned_denied_plan() -> None:
    world, request = scenario_world("unsigned-denied")
    plan = world.plan(request)
    check_compliant(world, plan)
    assert plan.ref == "plc-bridge@5.1.0"
    assert len(world.targets(plan)) == 8


# --- wave shapes ----------------------------------------------------------------------------


def _devices(n: int) -> tuple[list[Device], dict[str, Site]]:
    site = Site(id="s1", region="r1")
    devices = [
        Device.model_validate(
            {"id": f"d-{i:05d}", "site": "s1", "class": "c", "arch": "arm64", "memory_mb": 1}
        )
        for i in range(n)
    ]
    return devices, {"s1": site}


def _plan_with(waves: list[Wave]) -> RolloutPlan:
    return RolloutPlan(
        plan_id="p", module="m", version="1.0.0", target=Selector(), waves=waves, requested_by="x"
    )


@pytest.mark.parametrize("careful", [False, True])
@pytest.mark.parametrize("one_wave", [False, True])
def test_rollout_waves_cover_any_target_count(careful: bool, one_wave: bool) -> None:
    for n in [*range(1, 130), 199, 200, 999, 1000, 4321]:
        devices, sites = _devices(n)
        waves = assign_waves(_plan_with(rollout_waves(n, careful, one_wave)), devices, sites)
        assigned = [d for wave in waves for d in wave]
        assert sorted(assigned) == [d.id for d in devices], n
        assert all(waves), n
        if n > 10:
            assert len(waves[0]) <= canary_limit(n), n
            assert len(waves) >= 3
            sizes = [len(w) for w in waves]
            assert sizes[0] <= sizes[1], (n, sizes)
        elif n > 1 and (careful or not one_wave):
            assert len(waves[0]) == 1, n


def test_rollback_waves_cover_any_target_count() -> None:
    for n in [*range(1, 60), 500]:
        devices, sites = _devices(n)
        for exempt in (False, True):
            waves = assign_waves(_plan_with(rollback_waves(n, False, exempt)), devices, sites)
            assert sorted(d for w in waves for d in w) == [d.id for d in devices]
            if not exempt and n > 10:
                assert len(waves[0]) <= canary_limit(n)


def test_canary_gate_is_strict_and_later_gates_tolerate_a_little(sample: World) -> None:
    plan = sample.plan("roll out pump-logic 1.9.0 to rtm-05 and tpa-04")
    check_compliant(sample, plan)
    canary, *later = plan.waves
    assert canary.health_gate is not None
    assert (canary.health_gate.min_success_rate, canary.health_gate.max_failures) == (1.0, 0)
    assert canary.health_gate.soak_minutes >= 30
    for wave in later:
        assert wave.health_gate is not None
        assert 0.9 <= wave.health_gate.min_success_rate < 1.0


# --- phrasings on the sample fleet ------------------------------------------------------------

SAMPLE_REQUESTS = [
    "Please roll out pump-logic 1.9.0 to all pump controllers at rtm-05.",
    "hi! can u deploy pump logic 1.9 on the pumps in tpa-04? cheers",
    "PUSH HVAC-CONTROLLER 2.4.1 TO MUC-01",
    "Upgrade Hvac Controller to v2.4 on the HVAC gateways at ber-03",
    "update air-quality-model to 1.2.x on the air sensors in eu-west",
    "roll battery policy 3.1 out to every BMS in us-east",
    "upgrade edge-runtime to 3.4.0 across the whole fleet",
    "Roll out hvac-controller 2.4.1 to everything in eu-central and us-east, all at once",
    "deploy pump-logic 1.9.0 to rtm-05 and skip the canary",
    "push hvac-controller 2.4.1 to muc-01 immediately, don't bother with a canary",
    "deploy vision-inspect 1.1.0 to muc-01, no staging, no health checks",
    "roll out safety-interlock 1.1 on every plc gateway and pump controller",
    "Roll out pump-logic 2.0.0 to 5 pump controllers at rtm-05",
    "upgrade pump-logic to 2.0 on 10% of the pumps at rtm-05",
    "roll back hvac-controller to 2.3.4 at bos-02",
    "Revert hvac-controller in us-east",
    "downgrade vision-inspect to 0.9 on the tpa-04 cameras",
    "deploy air-quality-model 1.3.0 to the legacy sensors at tpa-04 in one go",
    "deploy hvac-controller 2.4.1 to ber-03-hvac-gw-01 and ber-03-hvac-gw-02",
    "install the latest vision-inspect everywhere, no canary, right now",
    "roll out hvac-controller 2.4.1 to every hvac gateway except ber-03 and muc-01",
    "install hvac-controller 2.4.1 on regulated sites only",
    "deploy edge-runtime 3.4.0 to tpa-04 except the cameras",
    "deploy pump-logic 1.9 to rtm-05 with a 10% canary",
    "deploy vision-inspect 1.1.0 to at most 4 cameras at tpa-04",
]


@pytest.mark.parametrize("request_text", SAMPLE_REQUESTS)
def test_sample_fleet_plans_are_compliant(sample: World, request_text: str) -> None:
    plan = sample.plan(request_text)
    check_compliant(sample, plan)
    intent = understand(request_text, sample.ctx)
    assert isinstance(intent, Intent)
    assert len(sample.targets(plan)) == count_targets(intent, sample.ctx)
    assert plan.rationale.strip()
    assert plan.requested_by == "eng-ana"


def test_high_safety_now_and_all_at_once_are_declined_with_reasons(sample: World) -> None:
    plan = sample.plan(
        "Roll out hvac-controller 2.4.1 to all hvac gateways in eu-central, all at once, "
        "no canary, right now"
    )
    waves = check_compliant(sample, plan)
    assert len(sample.targets(plan)) == 49
    assert len(waves[0]) == 2
    assert plan.schedule.mode is ScheduleMode.maintenance
    declined = plan.rationale.split("Asked for but not done:")[1]
    assert "all at once" in declined and "max(1, 5% of targets) = 2" in declined
    assert "now:" in declined and "maintenance windows" in declined


def test_small_low_safety_request_for_one_wave_is_honoured(sample: World) -> None:
    plan = sample.plan("deploy air-quality-model 1.3.0 to the sensors at tpa-04 all at once")
    waves = check_compliant(sample, plan)
    assert waves == [[d.id for d in sample.targets(plan)]]
    assert "Asked for but not done" not in plan.rationale


def test_small_high_safety_request_keeps_a_first_device(sample: World) -> None:
    plan = sample.plan("install battery-policy 3.1 on the bms at rtm-05 in one go")
    waves = check_compliant(sample, plan)
    assert [len(w) for w in waves] == [1, 7]
    assert "one-device first wave" in plan.rationale


def test_maintenance_when_asked_for_a_low_safety_module(sample: World) -> None:
    plan = sample.plan("roll out plc-bridge 5.2.0 at osl-01 in the maintenance window")
    assert plan.schedule.mode is ScheduleMode.maintenance
    assert "osl-01 (Sun 00:00-03:00 Europe/Oslo)" in plan.rationale


def test_rationale_tells_the_approver_what_where_and_on_failure(sample: World) -> None:
    plan = sample.plan("update hvac-controller to 2.4.1 on ber-03 and muc-01")
    text = plan.rationale
    assert text.startswith("Install hvac-controller@2.4.1 (safety high) on 48 devices")
    assert "ber-03 24 hvac-gw; muc-01 24 hvac-gw" in text
    assert "2.3.4 on 48" in text
    assert "canary 2" in text
    assert "abort when more than 5%" in text
    assert "back to hvac-controller 2.3.4" in text
    assert "Needs edge-runtime >=3.2,<4: met on every target" in text
    assert "ber-03 (Sat 01:00-05:00 Europe/Berlin): next opens Sat 2026-11-28 01:00" in text
    assert "Approvals are decided by policy" in text


def test_unmet_dependencies_are_reported_not_dropped(sample: World) -> None:
    plan = sample.plan("roll out pump-logic 2.0.0 to the pumps at tpa-04")
    assert len(sample.targets(plan)) == 30
    assert "Needs edge-runtime >=3.3,<4: not met on 30 targets (3.2.0 on 30)" in plan.rationale


def test_rollback_targets_the_version_installed_now(sample: World) -> None:
    plan = sample.plan("upgrade hvac-controller to 2.4.1 in us-east")
    assert plan.rollback is not None and plan.rollback.version == "2.4.0"
    mixed = sample.plan("upgrade hvac-controller to 2.4.1 in eu-central")
    assert mixed.rollback is not None and mixed.rollback.version == "2.3.4"
    cameras = sample.plan("install vision-inspect 1.1.0 on the cameras at muc-01")
    assert cameras.rollback is not None and cameras.rollback.version == "1.0.0"


def test_rollback_plan_is_exempt_but_gated(sample: World) -> None:
    plan = sample.plan("roll back hvac-controller to 2.3.4 in us-east")
    waves = check_compliant(sample, plan)
    assert plan.intent is PlanIntent.rollback
    assert plan.version == "2.3.4"
    assert len(sample.targets(plan)) == 36
    assert len(waves) == 2 and len(waves[0]) > canary_limit(36)
    assert plan.rollback is not None
    assert plan.rollback.version == "2.4.0" and not plan.rollback.automatic
    assert "does not allow downgrades" in plan.rationale  # 2.3.4's manifest forbids it


def _partly_rolled_out(world_catalog: Sequence[CatalogEntry]) -> World:
    fleet = FleetInventory.model_validate(
        {
            "sites": [{"id": "rtm-05", "region": "eu-west"}],
            "generate": [
                {
                    "sites": ["rtm-05"],
                    "class": "pump-ctl",
                    "per_site": 60,
                    "arch": "arm64",
                    "memory_mb": 512,
                    "installed": {"pump-logic": "1.8.0"},
                }
            ],
        }
    )
    devices = [
        d.model_copy(update={"installed": {"pump-logic": "1.9.0"}}) if i < 3 else d
        for i, d in enumerate(fleet.all_devices())
    ]
    moved = FleetInventory(sites=fleet.sites, devices=devices)
    return World(moved, world_catalog, NOW)


def test_rollback_after_a_failed_canary_names_only_the_moved_devices() -> None:
    s = load_scenario(SHARED / "canary-fails-rollback.yaml")
    world = _partly_rolled_out(s.catalog)
    plan = world.plan("roll back pump-logic at rtm-05")
    waves = check_compliant(world, plan)
    assert plan.intent is PlanIntent.rollback and plan.version == "1.8.0"
    assert plan.target.devices == ["rtm-05-pump-ctl-01", "rtm-05-pump-ctl-02", "rtm-05-pump-ctl-03"]
    assert waves == [plan.target.devices]
    assert plan.rollback is not None and plan.rollback.version == "1.9.0"


def test_rollback_without_a_picker_keeps_the_canary_rule() -> None:
    s = load_scenario(SHARED / "canary-fails-rollback.yaml")
    world = _partly_rolled_out(s.catalog)
    intent = understand("revert pump-logic to 1.8.0 at rtm-05", world.ctx)
    assert isinstance(intent, Intent)
    plan = propose_plan(intent, world.ctx, "plan-2", "eng-ana")
    waves = check_compliant(world, plan)
    assert len(world.targets(plan)) == 60
    assert len(waves[0]) <= 3
    assert "Only 3 of the 60 devices" in plan.rationale


def test_a_count_needs_a_picker(sample: World) -> None:
    intent = understand("deploy pump-logic 1.9 to 4 pumps at rtm-05", sample.ctx)
    assert isinstance(intent, Intent) and intent.scope.limit == 4
    with pytest.raises(PlanningError, match="picker"):
        propose_plan(intent, sample.ctx, "plan-3", "eng-ana")
    plan = propose_plan(intent, sample.ctx, "plan-3", "eng-ana", pick_devices=sample.pick)
    assert plan.target.devices == [f"rtm-05-pump-ctl-0{i}" for i in range(1, 5)]
    assert [len(w) for w in check_compliant(sample, plan)] == [1, 3]


def test_unknown_version_is_a_planning_error(sample: World) -> None:
    intent = Intent(
        action=PlanIntent.rollout,
        module="pump-logic",
        version="9.9.9",
        version_reason="test",
        scope=Scope(sites=["rtm-05"]),
        flags=RequestFlags(),
    )
    with pytest.raises(PlanningError, match=r"pump-logic@9\.9\.9"):
        propose_plan(intent, sample.ctx, "plan-4", "eng-ana")


def test_plan_size_does_not_grow_with_the_fleet() -> None:
    s = load_scenario(SHARED / "canary-fails-rollback.yaml")

    def plan_for(per_site: int) -> RolloutPlan:
        fleet = FleetInventory.model_validate(
            {
                "sites": [{"id": "rtm-05", "region": "eu-west"}],
                "generate": [
                    {
                        "sites": ["rtm-05"],
                        "class": "pump-ctl",
                        "per_site": per_site,
                        "arch": "arm64",
                        "memory_mb": 512,
                        "installed": {"pump-logic": "1.8.0"},
                    }
                ],
            }
        )
        ctx: PlanningContext = planning_context(fleet, s.catalog, NOW)
        intent = understand("roll out pump-logic 1.9.0 to rtm-05", ctx)
        assert isinstance(intent, Intent)
        return propose_plan(intent, ctx, "plan-5", "eng-ana")

    small, large = plan_for(200), plan_for(20_000)
    assert len(small.waves) == len(large.waves)
    assert abs(len(large.model_dump_json()) - len(small.model_dump_json())) < 80


def test_plans_are_deterministic(sample: World) -> None:
    request = "roll out edge-runtime 3.4.0 to the pump controllers, skip the canary"
    assert sample.plan(request).plan_hash == sample.plan(request).plan_hash


_REPLAY = """
import hashlib
from datetime import UTC, datetime
from fieldgate.agents import planning_context, propose_plan, understand
from fieldgate.contract import load_yaml
from fieldgate.fleet import FleetInventory
from fieldgate.manifest import CatalogFile
fleet = load_yaml({fleet!r}, FleetInventory)
catalog = load_yaml({catalog!r}, CatalogFile)
ctx = planning_context(fleet, catalog.modules, datetime(2026, 11, 21, 10, tzinfo=UTC))
digest = hashlib.sha256()
for request in {requests!r}:
    result = understand(request, ctx)
    digest.update(result.model_dump_json().encode())
    if result.__class__.__name__ == "Intent" and result.scope.limit is None:
        digest.update(propose_plan(result, ctx, "p", "eng-ana").plan_hash.encode())
print(digest.hexdigest())
"""


def test_same_answers_whatever_the_hash_seed() -> None:
    script = _REPLAY.format(
        fleet=str(DATA / "fleet.yaml"),
        catalog=str(DATA / "catalog.yaml"),
        requests=[*SAMPLE_REQUESTS, "upgrade hvac-controller at ber-03", "cameras please"],
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1


def test_selected_targets_match_the_group_counts(sample: World) -> None:
    for request in SAMPLE_REQUESTS:
        intent = understand(request, sample.ctx)
        assert isinstance(intent, Intent)
        if intent.scope.limit is not None:
            continue
        item = sample.ctx.item(intent.module, intent.version)
        assert item is not None
        in_scope = select_devices(intent.scope.selector(), sample.devices, sample.sites)
        fitting = [d for d in in_scope if item.fits(d.device_class, d.arch, d.memory_mb)]
        assert len(fitting) == count_targets(intent, sample.ctx), request
