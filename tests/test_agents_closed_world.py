"""Closed-world reading: every word resolves, is ordinary language, or makes the planner ask.

Each failure listed in issue 17 is a test here: an ignored place must never become everywhere,
ordinary words never become places, versions named as reasons are context, canary sizes and
"the rest" are honoured, and "the previous version" comes from the fleet's history.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fieldgate.agents import PlanningContext, planning_context
from fieldgate.agents.offline import (
    Clarification,
    Intent,
    canary_limit,
    count_targets,
    propose_plan,
    understand,
    wave_sizes,
)
from fieldgate.contract import load_yaml
from fieldgate.fleet import Device, FleetInventory, Site
from fieldgate.manifest import CatalogFile
from fieldgate.plan import RolloutPlan, select_devices

DATA = Path(__file__).resolve().parents[1] / "fieldgate" / "data"
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def sample() -> PlanningContext:
    fleet = load_yaml(DATA / "fleet.yaml", FleetInventory)
    catalog = load_yaml(DATA / "catalog.yaml", CatalogFile)
    return planning_context(fleet, catalog.modules, NOW)


def ctx_sites(ctx: PlanningContext) -> dict[str, Site]:
    return {s.id: s.as_site() for s in ctx.sites}


def ctx_devices(ctx: PlanningContext) -> list[Device]:
    """One device per grouped device, with the group's facts (ids made up per group)."""
    devices = []
    for number, group in enumerate(ctx.groups):
        for k in range(group.count):
            devices.append(
                Device(
                    id=f"{group.site}-g{number:03d}-{k:03d}",
                    site=group.site,
                    device_class=group.device_class,
                    arch=group.arch,
                    memory_mb=group.memory_mb,
                    installed=dict(group.installed),
                )
            )
    return devices


def intent_of(request: str, ctx: PlanningContext) -> Intent:
    result = understand(request, ctx)
    assert isinstance(result, Intent), f"{request!r} -> {result}"
    return result


def question_of(request: str, ctx: PlanningContext) -> Clarification:
    result = understand(request, ctx)
    assert isinstance(result, Clarification), f"{request!r} -> {result}"
    return result


# --- an ignored place never becomes everywhere ------------------------------------------------

UNKNOWN_PLACES = [
    ("pls updte pump-logic to 1.9.0 on the rotterdam site", "rotterdam", "rtm-05"),
    ("pls updte pump-logic to 1.9.0 on the Rotterdam site", "Rotterdam", "rtm-05"),
    ("roll out vision-inspect 1.1.0 to munich", "munich", "muc-01"),
    ("roll out vision-inspect 1.1.0 to Munich", "Munich", "muc-01"),
    ("upgrade the oslo plcs to plc-bridge 5.2.0 in the hamburg plant", "hamburg", None),
    ("air-quality-model 1.2.0 for the sensors at tampa please", "tampa", "tpa-04"),
]


@pytest.mark.parametrize(("request_text", "word", "nearest"), UNKNOWN_PLACES)
def test_an_unknown_place_asks_naming_the_word_and_the_nearest_names(
    sample: PlanningContext, request_text: str, word: str, nearest: str | None
) -> None:
    q = question_of(request_text, sample)
    assert q.reason == "unknown_site"
    assert f"'{word}'" in q.question
    if nearest is not None:
        assert q.candidates[0] == nearest
        assert nearest in q.question


def test_a_place_word_after_a_known_site_is_not_a_site(sample: PlanningContext) -> None:
    intent = intent_of("upgrade air-quality-model to 1.2.0 at the lyon site only", sample)
    assert intent.scope.sites == ["lyon-02"]
    assert count_targets(intent, sample) == 20


@pytest.mark.parametrize(
    "request_text",
    [
        "roll out pump-logic 1.9.0 to rtm-05 at your earliest convenience",
        "roll out pump-logic 1.9.0 to rtm-05, in the meantime we watch the dashboards",
        "on behalf of the water team: roll out pump-logic 1.9.0 to rtm-05",
    ],
)
def test_ordinary_words_in_a_place_slot_are_not_places(
    sample: PlanningContext, request_text: str
) -> None:
    intent = intent_of(request_text, sample)
    assert intent.scope.sites == ["rtm-05"]


# --- say what was asked, within policy --------------------------------------------------------


def plan_of(request: str, ctx: PlanningContext) -> tuple[RolloutPlan, list[int]]:
    plan = propose_plan(intent_of(request, ctx), ctx, plan_id="pl-test", requested_by="eng-ana")
    targets = select_devices(plan.target, ctx_devices(ctx), ctx_sites(ctx))
    return plan, wave_sizes(plan.waves, len(targets))


@pytest.mark.parametrize(
    "request_text",
    [
        "roll out pump-logic 1.9.0 to rtm-05, two first",
        "roll out pump-logic 1.9.0 to rtm-05 with a canary of 2 devices",
        "roll out pump-logic 1.9.0 to rtm-05, start with 2 devices",
        "roll out pump-logic 1.9.0 to rtm-05 with a first wave of two",
    ],
)
def test_the_engineers_canary_size_is_honoured_where_policy_allows_it(
    sample: PlanningContext, request_text: str
) -> None:
    plan, sizes = plan_of(request_text, sample)
    assert sizes[0] == 2
    assert sum(sizes) == 60
    assert "first wave of 2 devices, as asked" in plan.rationale


def test_a_canary_larger_than_policy_allows_is_declined_with_the_rule(
    sample: PlanningContext,
) -> None:
    plan, sizes = plan_of("roll out pump-logic 1.9.0 to rtm-05 with a canary of 10 devices", sample)
    assert sizes[0] == canary_limit(60) == 3
    assert "Asked for but not done" in plan.rationale
    assert "canary: a first wave of 10 devices; with 60 targets it may take at most 3" in (
        plan.rationale
    )


def test_wave_counts_and_sizes_are_honoured(sample: PlanningContext) -> None:
    _, sizes = plan_of("roll out pump-logic 1.9.0 to tpa-04 in 3 waves", sample)
    assert len(sizes) == 3 and sum(sizes) == 30 and sizes[0] == 1
    _, sizes = plan_of("roll out pump-logic 1.9.0 to rtm-05, waves of 20", sample)
    assert sizes == [3, 20, 20, 17]


@pytest.fixture(scope="module")
def half_done() -> PlanningContext:
    """The sample fleet after 6 of rtm-05's 60 pump controllers moved to pump-logic 1.9.0."""
    fleet = load_yaml(DATA / "fleet.yaml", FleetInventory)
    catalog = load_yaml(DATA / "catalog.yaml", CatalogFile)
    devices = []
    moved = 0
    for device in fleet.all_devices():
        if device.site == "rtm-05" and device.device_class == "pump-ctl" and moved < 6:
            device = device.model_copy(
                update={"installed": {**device.installed, "pump-logic": "1.9.0"}}
            )
            moved += 1
        devices.append(device)
    return planning_context(devices, catalog.modules, NOW, sites=fleet.sites)


@pytest.mark.parametrize(
    "request_text",
    [
        "bring the rest onto 1.9.0 for pump-logic at rtm-05",
        "now the others at rtm-05: pump-logic 1.9.0",
        "upgrade the remaining rtm-05 pumps to pump-logic 1.9.0",
        "move those still on 1.8.0 at rtm-05 to pump-logic 1.9.0",
    ],
)
def test_the_rest_leaves_out_devices_already_on_the_target(
    half_done: PlanningContext, request_text: str
) -> None:
    intent = intent_of(request_text, half_done)
    assert count_targets(intent, half_done) == 54
    plan = propose_plan(intent, half_done, plan_id="pl-rest", requested_by="eng-ana")
    assert plan.target.installed["pump-logic"] in ("!=1.9.0", "==1.8.0")
