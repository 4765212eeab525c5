"""Robustness on paraphrase families: every variant of a request is read as its base is.

The corpus is generated (``fieldgate.evals.paraphrase``): at least 40 base requests across
every intent, each in at least 12 kinds of real-world noise. ``bench/understanding.py``
reports the same corpus per noise kind.
"""

from __future__ import annotations

from collections import Counter

import pytest

from fieldgate.evals.paraphrase import (
    FAMILIES,
    NOISE,
    Family,
    FleetName,
    Reading,
    World,
    expected_holds,
    read,
    variants,
    widened,
    worlds,
)

MIN_VARIANT_ACCURACY = 0.99


@pytest.fixture(scope="module")
def fleets() -> dict[FleetName, World]:
    return worlds()


@pytest.fixture(scope="module")
def readings(fleets: dict[FleetName, World]) -> dict[str, tuple[Reading, dict[str, Reading]]]:
    """Each family's base reading and its variants' readings, by noise kind."""
    out = {}
    for family in FAMILIES:
        world = fleets[family.fleet]
        base = read(family.base, world)
        out[family.name] = (
            base,
            {kind: read(text, world) for kind, text in variants(family).items()},
        )
    return out


def test_the_corpus_covers_every_intent_in_enough_noise() -> None:
    assert len(FAMILIES) >= 40
    assert len(NOISE) >= 12
    intents = Counter(f.intent for f in FAMILIES)
    assert set(intents) == {
        "rollout", "pilot", "percent", "except", "rollback", "pin", "finish", "question",
        "two", "hold",
    }  # fmt: skip
    for family in FAMILIES:
        # a noise kind that has nothing to change (no version to write as v1.2.3) adds none
        assert len(set(variants(family).values()) - {family.base}) >= 12, family.name


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_the_base_request_reads_as_declared(
    family: Family, readings: dict[str, tuple[Reading, dict[str, Reading]]]
) -> None:
    base, _ = readings[family.name]
    assert expected_holds(family, base), (family.expect, family.targets, base.key, base.text)


def test_no_variant_plans_wider_than_its_base(
    readings: dict[str, tuple[Reading, dict[str, Reading]]],
) -> None:
    widened_plans = [
        (name, kind)
        for name, (base, found) in readings.items()
        for kind, reading in found.items()
        if widened(base, reading)
    ]
    assert widened_plans == []


def test_variants_read_as_their_base(
    readings: dict[str, tuple[Reading, dict[str, Reading]]],
) -> None:
    wrong = [
        (name, kind, reading.key, base.key)
        for name, (base, found) in readings.items()
        for kind, reading in found.items()
        if reading.key != base.key
    ]
    total = sum(len(found) for _, found in readings.values())
    assert 1 - len(wrong) / total >= MIN_VARIANT_ACCURACY, wrong
