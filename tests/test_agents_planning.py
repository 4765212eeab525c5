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
from packaging.version import Version

from fieldgate.agents import PlanningContext, planning_context
from fieldgate.agents.offline import (
    Clarification,
    Intent,
    RequestFlags,
    Scope,
    canary_limit,
    count_targets,
    propose_plan,
    rollback_waves,
    rollout_waves,
    understand,
)
from fieldgate.contract import load_yaml, version_in_range
from fieldgate.errors import PlanningError
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
    """A fleet with its catalog and its planning context; remembers the intent of each plan."""

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
        self.intents: dict[str, Intent] = {}

    def intent(self, request: str) -> Intent:
        intent = understand(request, self.ctx)
        assert isinstance(intent, Intent), f"{request!r} -> {intent}"
        return intent

    def propose(self, intent: Intent, plan_id: str = "plan-1") -> RolloutPlan:
        plan = propose_plan(intent, self.ctx, plan_id, "eng-ana")
        self.intents[plan.plan_hash] = intent
        return plan

    def plan(self, request: str, plan_id: str = "plan-1") -> RolloutPlan:
        return self.propose(self.intent(request), plan_id)

    def targets(self, plan: RolloutPlan) -> list[Device]:
        """The plan's targets, as the executor and the policy gate see them."""
        return select_devices(plan.target, self.devices, self.sites)

    def fitting(self, intent: Intent) -> list[Device]:
        """What a plan for ``intent`` must target, worked out on the devices themselves.

        The devices in scope the version fits by class, arch and memory; in a rollback only
        those running a newer version, when a version range can pick them all out; the first
        ``limit`` of them by id.
        """
        item = self.ctx.item(intent.module, intent.version)
        assert item is not None
        in_scope = [
            d
            for d in select_devices(intent.scope.selector(), self.devices, self.sites)
            if item.fits(d.device_class, d.arch, d.memory_mb)
        ]
        if intent.action is PlanIntent.rollback:
            running = [(d, d.installed.get(item.name)) for d in in_scope]
            newer = [v for _, v in running if v is not None and Version(v) > item.parsed_version]
            if newer and all(version_in_range(v, f">{item.version}") for v in newer):
                in_scope = [d for d, v in running if v in newer]
        return in_scope[: intent.scope.limit]

    def waves(self, plan: RolloutPlan) -> list[list[str]]:
        return assign_waves(plan, self.targets(plan), self.sites)


def check_compliant(world: World, plan: RolloutPlan) -> list[list[str]]:
    """Assert that the selector picks exactly the fitting devices, and what the policy pack checks
    (D3, D5, D6, D7, D10); return the waves."""
    targets = world.targets(plan)
    assert targets == world.fitting(world.intents[plan.plan_hash]), "targets are not the fitting"
    item = world.ctx.item(plan.module, plan.version)
    assert item is not None
    assert all(item.fits(d.device_class, d.arch, d.memory_mb) for d in targets)
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


def _fresh_install_world(per_site: int, already: int = 0) -> World:
    """osl-01 with plc gateways that never ran telemetry-shipper (``already`` run 0.8.0)."""
    fleet = FleetInventory.model_validate(
        {
            "sites": [{"id": "osl-01", "region": "eu-north"}],
            "devices": [
                {
                    "id": f"osl-01-plc-gw-old{n}",
                    "site": "osl-01",
                    "class": "plc-gw",
                    "arch": "amd64",
                    "memory_mb": 2048,
                    "installed": {"telemetry-shipper": "0.8.0"},
                }
                for n in range(already)
            ],
            "generate": [
                {
                    "sites": ["osl-01"],
                    "class": "plc-gw",
                    "per_site": per_site,
                    "arch": "amd64",
                    "memory_mb": 2048,
                    "installed": {"plc-bridge": "5.0.2"},
                }
            ],
        }
    )
    catalog = [
        CatalogEntry.model_validate(
            {
                "name": "telemetry-shipper",
                "version": version,
                "safety": safety,
                "device_classes": ["plc-gw"],
                "arch": ["amd64"],
                "min_memory_mb": 128,
            }
        )
        for version, safety in (("0.8.0", "none"), ("0.9.0", "none"))
    ]
    return World(fleet, catalog, NOW)


@pytest.mark.parametrize("per_site", [1, 6, 14, 30, 120])
def test_a_first_time_install_has_no_automatic_rollback(per_site: int) -> None:
    world = _fresh_install_world(per_site)
    plan = world.plan("Install telemetry-shipper 0.9.0 on the plc gateways at osl-01")
    check_compliant(world, plan)
    assert plan.rollback is not None
    assert plan.rollback.version is None
    assert not plan.rollback.automatic
    assert "no version to go back to and no automatic rollback" in plan.rationale
    assert "halts the rollout, and people decide" in plan.rationale


def test_a_partly_installed_module_rolls_back_to_what_the_rest_run() -> None:
    world = _fresh_install_world(14, already=3)
    plan = world.plan("Install telemetry-shipper 0.9.0 on the plc gateways at osl-01")
    assert plan.rollback is not None
    assert plan.rollback.version == "0.8.0" and plan.rollback.automatic
    assert "back to telemetry-shipper 0.8.0 automatically" in plan.rationale


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


# --- narrowing by selector: counts, partial rollbacks, devices the manifest does not fit ------


def _partly_rolled_out(
    catalog: Sequence[CatalogEntry], moved_to: str = "1.9.0", per_site: int = 60
) -> World:
    """rtm-05 with its pump controllers on pump-logic 1.8.0, the first three on ``moved_to``."""
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
    devices = [
        d.model_copy(update={"installed": {"pump-logic": moved_to}}) if i < 3 else d
        for i, d in enumerate(fleet.all_devices())
    ]
    moved = FleetInventory(sites=fleet.sites, devices=devices)
    return World(moved, catalog, NOW)


def _scenario_catalog(name: str) -> list[CatalogEntry]:
    return list(load_scenario(SHARED / f"{name}.yaml").catalog)


def test_rollback_after_a_failed_canary_moves_back_only_the_moved_devices() -> None:
    world = _partly_rolled_out(_scenario_catalog("canary-fails-rollback"))
    plan = world.plan("roll back pump-logic at rtm-05")
    waves = check_compliant(world, plan)
    assert plan.intent is PlanIntent.rollback and plan.version == "1.8.0"
    assert plan.target.installed == {"pump-logic": ">1.8.0"}
    assert plan.target.devices == [] and plan.target.limit is None
    moved = ["rtm-05-pump-ctl-01", "rtm-05-pump-ctl-02", "rtm-05-pump-ctl-03"]
    assert [d.id for d in world.targets(plan)] == moved
    assert waves == [moved]
    assert plan.rollback is not None and plan.rollback.version == "1.9.0"
    assert "Targets narrowed to 3 devices running pump-logic newer than 1.8.0" in plan.rationale
    assert count_targets(world.intents[plan.plan_hash], world.ctx) == 3


def test_a_partial_rollback_plan_does_not_grow_with_the_fleet() -> None:
    catalog = _scenario_catalog("canary-fails-rollback")
    small = _partly_rolled_out(catalog, per_site=60).plan("roll back pump-logic at rtm-05")
    large = _partly_rolled_out(catalog, per_site=6000).plan("roll back pump-logic at rtm-05")
    assert (small.target, small.waves) == (large.target, large.waves)
    assert abs(len(large.model_dump_json()) - len(small.model_dump_json())) < 20  # counts in text


def test_partial_rollback_on_the_sample_fleet(sample: World) -> None:
    # fab-01-hil-02 runs hvac-controller 2.4.1; the 48 other gateways in eu-central run 2.3.4
    plan = sample.plan("roll back hvac-controller in eu-central")
    check_compliant(sample, plan)
    assert plan.version == "2.3.4"
    assert plan.target.installed == {"hvac-controller": ">2.3.4"}
    assert [d.id for d in sample.targets(plan)] == ["fab-01-hil-02"]
    assert "Where: fab-01 1 hvac-gw." in plan.rationale


def test_a_count_within_a_partial_rollback() -> None:
    world = _partly_rolled_out(_scenario_catalog("canary-fails-rollback"))
    asked = world.intent("roll back pump-logic at rtm-05")
    intent = asked.model_copy(update={"scope": asked.scope.model_copy(update={"limit": 2})})
    plan = world.propose(intent)
    waves = check_compliant(world, plan)
    assert (plan.target.installed, plan.target.limit) == ({"pump-logic": ">1.8.0"}, 2)
    assert waves == [["rtm-05-pump-ctl-01", "rtm-05-pump-ctl-02"]]
    assert count_targets(intent, world.ctx) == 2


def test_a_rollback_from_a_prerelease_targets_the_whole_scope() -> None:
    # ">1.8.0" leaves out 1.9.0-rc1, so narrowing would miss the very devices that moved
    world = _partly_rolled_out(_scenario_catalog("canary-fails-rollback"), moved_to="1.9.0-rc1")
    plan = world.plan("revert pump-logic to 1.8.0 at rtm-05")
    waves = check_compliant(world, plan)
    assert plan.target.installed == {}
    assert len(world.targets(plan)) == 60
    assert len(waves[0]) <= 3
    assert "a prerelease or local build" in plan.rationale


def test_a_count_is_the_selector_limit(sample: World) -> None:
    intent = sample.intent("deploy pump-logic 1.9 to 4 pumps at rtm-05")
    assert intent.scope.limit == 4
    plan = sample.propose(intent)
    assert plan.target.limit == 4 and plan.target.devices == []
    assert [d.id for d in sample.targets(plan)] == [f"rtm-05-pump-ctl-0{i}" for i in range(1, 5)]
    assert [len(w) for w in check_compliant(sample, plan)] == [1, 3]
    assert "Limited to 4 of 60 matching devices" in plan.rationale
    assert "Picked from: rtm-05 60 pump-ctl." in plan.rationale
    assert count_targets(intent, sample.ctx) == 4


@pytest.mark.parametrize(
    ("request_text", "targets"),
    [
        ("Roll out pump-logic 1.9.0 to half of the pumps at rtm-05", 30),
        ("deploy pump-logic 1.9 to a third of rtm-05", 20),
        ("push vision-inspect 1.1.0 to 25 percent of the cameras at muc-01", 4),
    ],
)
def test_a_share_is_the_selector_limit(sample: World, request_text: str, targets: int) -> None:
    plan = sample.plan(request_text)
    check_compliant(sample, plan)
    assert plan.target.limit == targets
    assert len(sample.targets(plan)) == targets


def test_a_large_count_keeps_the_canary(sample: World) -> None:
    plan = sample.plan("roll out pump-logic 1.9.0 to 40 pump controllers at rtm-05 and tpa-04")
    waves = check_compliant(sample, plan)
    assert plan.target.limit == 40
    assert [d.id for d in sample.targets(plan)][-1] == "rtm-05-pump-ctl-40"
    assert len(waves[0]) == 2


#: Hypothetical releases that some devices of the sample fleet cannot run.
_NEEDS_MORE = [
    CatalogEntry.model_validate(
        {
            "name": "air-quality-model",
            "version": "2.0.0",
            "safety": "none",
            "device_classes": ["env-sensor"],
            "arch": ["armv7"],
            "min_memory_mb": 256,
        }
    ),
    CatalogEntry.model_validate(
        {
            "name": "edge-runtime",
            "version": "3.5.0",
            "safety": "low",
            "device_classes": [
                "hvac-gw",
                "pump-ctl",
                "env-sensor",
                "plc-gw",
                "camera-node",
                "bms-ctl",
            ],
            "arch": ["arm64", "armv7"],
            "min_memory_mb": 256,
        }
    ),
]


@pytest.fixture(scope="module")
def demanding() -> World:
    """The sample fleet, with a catalog that also holds the releases of ``_NEEDS_MORE``."""
    fleet = load_yaml(DATA / "fleet.yaml", FleetInventory)
    catalog = load_yaml(DATA / "catalog.yaml", CatalogFile)
    return World(fleet, [*catalog.modules, *_NEEDS_MORE], NOW)


def test_devices_short_of_memory_are_left_out_by_the_selector(demanding: World) -> None:
    # us-east: 20 env-sensors at bos-02 with 256 MiB, 6 at tpa-04 with 128 MiB
    plan = demanding.plan("roll out air-quality-model 2.0.0 to us-east")
    check_compliant(demanding, plan)
    assert plan.target.min_memory_mb == 256 and plan.target.arch == []
    assert {d.site for d in demanding.targets(plan)} == {"bos-02"}
    assert len(demanding.targets(plan)) == 20
    assert "Left out 6 devices in scope that air-quality-model@2.0.0 does not fit" in (
        plan.rationale
    )
    assert "The target selector asks for at least 256 MiB." in plan.rationale


def test_nothing_fits_is_a_question_or_a_planning_error(demanding: World) -> None:
    request = "roll out air-quality-model 2.0.0 to the sensors at tpa-04"
    question = understand(request, demanding.ctx)
    assert isinstance(question, Clarification) and question.reason == "no_targets"
    intent = Intent(
        action=PlanIntent.rollout,
        module="air-quality-model",
        version="2.0.0",
        version_reason="test",
        scope=Scope(sites=["tpa-04"]),
    )
    with pytest.raises(PlanningError, match=r"no device in scope fits air-quality-model@2\.0\.0"):
        propose_plan(intent, demanding.ctx, "plan-6", "eng-ana")
    assert count_targets(intent, demanding.ctx) == 0


@pytest.mark.parametrize(
    ("request_text", "arch", "min_memory_mb", "targets"),
    [
        # osl-01: armv7 env-sensors fit, amd64 plc gateways do not
        ("upgrade edge-runtime to 3.5.0 at osl-01", ["arm64", "armv7"], None, 20),
        # tpa-04: arm64 pumps and cameras fit, the 128 MiB armv7 env-sensors do not
        ("upgrade edge-runtime to 3.5.0 at tpa-04", [], 256, 46),
        # both: arch leaves out the plc gateways, memory the tpa-04 env-sensors
        ("upgrade edge-runtime to 3.5.0 across the whole fleet", ["arm64", "armv7"], 256, 283),
        # every device in scope fits: the selector stays as it was
        ("upgrade edge-runtime to 3.5.0 at rtm-05", [], None, 68),
        ("update air-quality-model to 1.3.0 in us-east", [], None, 26),
    ],
)
def test_arch_and_memory_go_in_the_selector_only_when_they_narrow(
    demanding: World,
    request_text: str,
    arch: list[str],
    min_memory_mb: int | None,
    targets: int,
) -> None:
    plan = demanding.plan(request_text)
    check_compliant(demanding, plan)
    assert (plan.target.arch, plan.target.min_memory_mb) == (arch, min_memory_mb)
    assert len(demanding.targets(plan)) == targets
    assert count_targets(demanding.intents[plan.plan_hash], demanding.ctx) == targets


def test_a_class_of_mixed_arch_keeps_to_the_arch_built_for() -> None:
    # plc-bridge is built for amd64; four of osl-01's plc gateways are arm64
    fleet = FleetInventory.model_validate(
        {
            "sites": [{"id": "osl-01", "region": "eu-north"}],
            "devices": [
                {
                    "id": f"osl-01-plc-arm-0{i}",
                    "site": "osl-01",
                    "class": "plc-gw",
                    "arch": "arm64",
                    "memory_mb": 2048,
                    "installed": {"edge-runtime": "3.4.0"},
                }
                for i in range(1, 5)
            ],
            "generate": [
                {
                    "sites": ["osl-01"],
                    "class": "plc-gw",
                    "per_site": 12,
                    "arch": "amd64",
                    "memory_mb": 2048,
                    "installed": {"edge-runtime": "3.4.0", "plc-bridge": "5.0.2"},
                }
            ],
        }
    )
    catalog = load_yaml(DATA / "catalog.yaml", CatalogFile)
    world = World(fleet, catalog.modules, NOW)
    plan = world.plan("roll out plc-bridge 5.1.0 to the plc gateways at osl-01")
    waves = check_compliant(world, plan)
    assert plan.target.arch == ["amd64"] and plan.target.min_memory_mb is None
    assert [d.arch for d in world.targets(plan)] == ["amd64"] * 12
    assert len(waves[0]) == 1


DEMANDING_REQUESTS = [
    "roll out air-quality-model 2.0.0 to the env sensors in us-east and eu-west",
    "deploy air-quality-model 2.0.0 to 12 sensors in us-east",
    "upgrade edge-runtime to 3.5.0 on everything in us-east, skip the canary",
    "upgrade edge-runtime to 3.5.0 on 30 devices at tpa-04",
    "roll back hvac-controller in eu-central",
    "Revert hvac-controller in us-east",
]


@pytest.mark.parametrize("request_text", DEMANDING_REQUESTS)
def test_selector_picks_exactly_the_fitting_devices(demanding: World, request_text: str) -> None:
    plan = demanding.plan(request_text)
    check_compliant(demanding, plan)
    intent = demanding.intents[plan.plan_hash]
    assert len(demanding.targets(plan)) == count_targets(intent, demanding.ctx)


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
from fieldgate.agents import planning_context
from fieldgate.agents.offline import propose_plan, understand
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
    if result.__class__.__name__ == "Intent":
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
        intent = sample.intent(request)
        assert len(sample.fitting(intent)) == count_targets(intent, sample.ctx), request
