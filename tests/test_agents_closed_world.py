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


@pytest.mark.parametrize(
    ("request_text", "word"),
    [
        ("push pump-logic 1.9.0 to the north sea platform", "north sea platform"),
        ("update all pumps in the netherlands to pump-logic 1.9.0", "netherlands"),
        ("roll out pump-logic 1.9.0 to all pump controllers at our Dutch site", "Dutch"),
    ],
)
def test_a_place_that_resolves_to_nothing_never_reads_as_everywhere(
    sample: PlanningContext, request_text: str, word: str
) -> None:
    q = question_of(request_text, sample)
    assert q.reason == "unknown_site"
    assert f"'{word}'" in q.question


@pytest.mark.parametrize(
    "request_text",
    [
        "roll out pump-logic 1.9.0 to rtm-05. Only the Rotterdam ones.",
        "roll out pump-logic 1.9.0 to rtm-05. Just the ones near zaandam.",
        "roll out pump-logic 1.9.0 to rtm-05. Only the rotterdam ones.",
    ],
)
def test_a_sentence_that_narrows_is_never_context(
    sample: PlanningContext, request_text: str
) -> None:
    assert question_of(request_text, sample).reason == "unknown_site"


def test_a_site_left_out_by_its_prefix_is_left_out(sample: PlanningContext) -> None:
    intent = intent_of("upgrade the env sensors at osl-01 and lyon-02 to 1.3.0 except lyon", sample)
    assert intent.scope.sites == ["osl-01"]


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
        "rtm-05: pump-logic 1.9.0 please, first 2 then the rest",
        "roll out pump-logic 1.9.0 to rtm-05, canary 2",
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
    _, sizes = plan_of("roll out pump-logic 1.9.0 to rtm-05 in waves of 25%", sample)
    assert sizes == [3, 15, 15, 15, 12]


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


# --- context is context -----------------------------------------------------------------------


def _after_rollout(previous: dict[str, str]) -> PlanningContext:
    """The sample fleet after ber-03's 24 gateways moved to hvac-controller 2.4.1.

    ``previous`` says what each of them ran before, by the first letters of the device id's
    number: every device not in it has no record.
    """
    fleet = load_yaml(DATA / "fleet.yaml", FleetInventory)
    catalog = load_yaml(DATA / "catalog.yaml", CatalogFile)
    devices = []
    history: dict[str, dict[str, str]] = {}
    for device in fleet.all_devices():
        if device.site == "ber-03" and device.device_class == "hvac-gw":
            device = device.model_copy(
                update={"installed": {**device.installed, "hvac-controller": "2.4.1"}}
            )
            ran = next((v for k, v in previous.items() if device.id.endswith(k)), None)
            if ran is not None:
                history[device.id] = {"hvac-controller": ran}
        devices.append(device)
    return planning_context(devices, catalog.modules, NOW, sites=fleet.sites, previous=history)


@pytest.mark.parametrize(
    "request_text",
    [
        "roll back hvac-controller on ber-03 to the previous version",
        "undo the hvac-controller upgrade on ber-03",
        "hvac-controller 2.4.1 is making the valves chatter, roll back ber-03",
        "2.4.1 broke the integration, please go back on ber-03 hvac-controller",
    ],
)
def test_the_previous_version_is_what_the_devices_ran_before(request_text: str) -> None:
    # every gateway ran 2.3.4 before; the catalog's release before 2.4.1 is 2.4.0
    ctx = _after_rollout({"": "2.3.4"})
    intent = intent_of(request_text, ctx)
    assert (intent.action.value, intent.version) == ("rollback", "2.3.4")
    assert "ran before" in intent.version_reason
    plan = propose_plan(intent, ctx, plan_id="pl-back", requested_by="eng-ana")
    assert "a rollback to the version these devices ran before" in plan.rationale


def test_devices_that_ran_different_versions_before_are_asked_about() -> None:
    ctx = _after_rollout({"1": "2.3.4", "2": "2.4.0", "3": "2.3.4"})
    q = question_of("roll back hvac-controller on ber-03 to the previous version", ctx)
    assert q.reason == "version_ambiguous"
    assert "ran different versions" in q.question
    assert "2.3.4" in q.candidates and "2.4.0" in q.candidates


def test_a_broken_version_named_as_the_reason_is_shown_not_planned() -> None:
    ctx = _after_rollout({"": "2.3.4"})
    intent = intent_of("hvac-controller 2.4.1 is making the valves chatter, roll back ber-03", ctx)
    assert intent.version == "2.3.4"
    assert intent.because == ["hvac-controller 2.4.1 is making the valves chatter"]
    plan = propose_plan(intent, ctx, plan_id="pl-back", requested_by="eng-ana")
    assert "Because: hvac-controller 2.4.1 is making the valves chatter." in plan.rationale


def test_a_broken_version_the_devices_do_not_run_asks(sample: PlanningContext) -> None:
    q = question_of("hvac-controller 2.4.1 is making the valves chatter, roll back ber-03", sample)
    assert "2.4.1" in q.question and "2.3.4" in q.question


def test_the_history_comes_from_the_audit_log(tmp_path: Path) -> None:
    """Plans and device reports in a real audit log say what each device ran before."""
    from fieldgate.agents import HISTORY_KINDS, previous_versions
    from fieldgate.audit import ActorKind, EventKind
    from fieldgate.sample import load_sample
    from fieldgate.store import Store

    with Store.open(f"sqlite:///{tmp_path / 'fg.db'}") as store:
        sample = load_sample()
        modules = [(m, None) for m in sample.catalog.modules]
        store.catalog.import_manifests(modules, source="sample", actor="eng-ana")
        store.fleet.import_inventory(sample.fleet, source="sample", actor="eng-ana")
        sites, devices = store.fleet.snapshot()
        catalog = [r.manifest for r in store.catalog.list()]
        before = planning_context(devices, catalog, NOW, sites=sites)
        plan = propose_plan(
            intent_of("roll out hvac-controller 2.4.1 to ber-03", before),
            before,
            plan_id="pl-up",
            requested_by="eng-ana",
        )
        store.audit.append(
            EventKind.plan, ActorKind.agent, "planner", {"plan": plan.model_dump(mode="json")},
            plan_id="pl-up",
        )  # fmt: skip
        moved = [d for d in devices if d.site == "ber-03" and d.device_class == "hvac-gw"]
        for device in moved:
            store.audit.append(
                EventKind.device_report,
                ActorKind.device,
                device.id,
                {"status": "applied", "installed": {"hvac-controller": "2.4.1"}},
                plan_id="pl-up",
            )
            store.fleet.set_installed(device.id, "hvac-controller", "2.4.1")
        history = previous_versions(store.audit.events(kinds=HISTORY_KINDS))
        sites, devices = store.fleet.snapshot()
        after = planning_context(devices, catalog, NOW, sites=sites, previous=history)
    assert {history[d.id]["hvac-controller"] for d in moved} == {"2.3.4"}
    intent = intent_of("roll back hvac-controller on ber-03 to the previous version", after)
    assert intent.version == "2.3.4"


def test_a_change_ticket_is_read_for_its_request_and_its_context_shown(
    sample: PlanningContext,
) -> None:
    ticket = (
        "CHG-4821\nSummary: roll out pump-logic 1.9.0 to rtm-05\nRequested by: Tom Berger\n"
        "Backout plan: roll back to 1.8.0 if the health checks fail\nPriority: normal"
    )
    intent = intent_of(ticket, sample)
    assert (intent.action.value, intent.version, intent.scope.sites) == (
        "rollout",
        "1.9.0",
        ["rtm-05"],
    )
    assert "requested by: Tom Berger" in intent.context
    assert any(c.startswith("backout plan: roll back to 1.8.0") for c in intent.context)
    plan = propose_plan(intent, sample, plan_id="pl-ticket", requested_by="eng-ana")
    assert "Context: " in plan.rationale and "requested by: Tom Berger" in plan.rationale


@pytest.mark.parametrize(
    "request_text",
    [
        "hey @ana roll out pump-logic 1.9.0 to rtm-05 pls",
        "[OPS-4411] roll out pump-logic 1.9.0 to rtm-05 (ref INC0042311)",
        "roll out pump-logic 1.9.0 to rtm-05 on 21.11.2026",
        "roll out pump-logic 1.9.0 to rtm-05 as discussed with Ivo, ticket CHG-8812",
    ],
)
def test_mentions_dates_and_ticket_ids_are_context(
    sample: PlanningContext, request_text: str
) -> None:
    intent = intent_of(request_text, sample)
    assert (intent.version, intent.scope.sites) == ("1.9.0", ["rtm-05"])


def test_a_kind_of_site_in_a_place_slot_is_those_sites(sample: PlanningContext) -> None:
    intent = intent_of("update hvac-controller to 2.4.1 in the field", sample)
    assert "fab-01" not in intent.scope.sites  # the factory is not in the field
    assert count_targets(intent, sample) == 84
    # elsewhere the word says nothing about where
    intent = intent_of("roll out pump-logic 1.9.0 to rtm-05, the field team asked", sample)
    assert intent.scope.sites == ["rtm-05"]


def test_a_ticket_id_after_ordinary_words_is_context(sample: PlanningContext) -> None:
    intent = intent_of("install pump-logic 1.9.0 on rtm-05 in accordance with CHG-1234", sample)
    assert intent.scope.sites == ["rtm-05"]
