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
from fieldgate.agents.offline import Clarification, Intent, count_targets, understand
from fieldgate.contract import load_yaml
from fieldgate.fleet import FleetInventory
from fieldgate.manifest import CatalogFile

DATA = Path(__file__).resolve().parents[1] / "fieldgate" / "data"
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def sample() -> PlanningContext:
    fleet = load_yaml(DATA / "fleet.yaml", FleetInventory)
    catalog = load_yaml(DATA / "catalog.yaml", CatalogFile)
    return planning_context(fleet, catalog.modules, NOW)


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
