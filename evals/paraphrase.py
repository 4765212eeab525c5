"""A generated corpus of request families: one request, many real-world phrasings of it.

Each :class:`Family` is a base request with the reading it must get (a plan's action, module,
version and targets, or a question's reason). :func:`variants` dresses it in the noise of real
messages, one :data:`NOISE` kind at a time: chat one-liners with emoji and @mentions, emails
with a greeting, background and signature, change-ticket bodies, non-native English, bullet
lists and code spans, numbers as words, ticket headers and ids, greetings and sign-offs,
context sentences about time, people and reasons, upper- and lower-case names, typos, filler,
the passive voice, versions written ``v1.2.3``, chat threads with a quoted message,
markdown notes, a few words of another language and requests in capitals. Every variant of a
family must be read as its base is; ``tests/test_agents_paraphrase.py`` holds that, and
``bench/understanding.py`` reports accuracy per noise kind.

The families plan against the shipped sample fleet and catalog, and two histories of it
(:data:`FLEETS`): part of rtm-05 already on pump-logic 1.9.0, and ber-03 moved from
hvac-controller 2.3.4 to 2.4.1.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from fieldgate.agents import PlanningContext, planning_context
from fieldgate.agents.offline import Clarification, Intent, propose_plan, understand
from fieldgate.fleet import Device, Site
from fieldgate.plan import select_devices
from fieldgate.sample import load_sample

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
"""The instant every family is planned at."""

FamilyIntent = Literal[
    "rollout", "pilot", "percent", "except", "rollback", "pin", "finish", "question", "two",
    "hold",
]  # fmt: skip
FleetName = Literal["sample", "half-done", "after-rollout"]


@dataclass(frozen=True)
class Family:
    """A base request, how it reads in the passive voice, and the reading it must get."""

    name: str
    intent: FamilyIntent
    base: str
    """The request as an engineer would type it plainly."""
    passive: str
    """The same request in the passive voice."""
    expect: tuple[str, ...]
    """``(action, module, version)`` for a plan, ``("ask", reason)`` for a question."""
    fleet: FleetName = "sample"
    targets: int | None = None
    """How many devices the plan targets (plans only)."""


def _rollout(
    name: str,
    base: str,
    passive: str,
    module: str,
    version: str,
    n: int,
    intent: FamilyIntent = "rollout",
    fleet: FleetName = "sample",
) -> Family:
    return Family(name, intent, base, passive, ("rollout", module, version), fleet, n)


def _rollback(
    name: str,
    base: str,
    passive: str,
    module: str,
    version: str,
    n: int,
    fleet: FleetName = "sample",
) -> Family:
    return Family(name, "rollback", base, passive, ("rollback", module, version), fleet, n)


def _ask(name: str, intent: FamilyIntent, base: str, passive: str, reason: str) -> Family:
    return Family(name, intent, base, passive, ("ask", reason))


FAMILIES: tuple[Family, ...] = (
    # rollout
    _rollout(
        "pump-rtm",
        "roll out pump-logic 1.9.0 to rtm-05",
        "pump-logic 1.9.0 should be rolled out to rtm-05",
        "pump-logic",
        "1.9.0",
        60,
    ),
    _rollout(
        "hvac-muc",
        "upgrade hvac-controller to 2.4.1 at muc-01",
        "hvac-controller 2.4.1 needs to be installed at muc-01",
        "hvac-controller",
        "2.4.1",
        24,
    ),
    _rollout(
        "aq-lyon",
        "deploy air-quality-model 1.2.0 to lyon-02",
        "air-quality-model 1.2.0 is to be deployed to lyon-02",
        "air-quality-model",
        "1.2.0",
        20,
    ),
    _rollout(
        "plc-osl",
        "install plc-bridge 5.2.0 on the plc gateways at osl-01",
        "plc-bridge 5.2.0 should be installed on the plc gateways at osl-01",
        "plc-bridge",
        "5.2.0",
        12,
    ),
    _rollout(
        "vision-tpa",
        "update vision-inspect to 1.1.0 on the cameras at tpa-04",
        "the cameras at tpa-04 should be updated to vision-inspect 1.1.0",
        "vision-inspect",
        "1.1.0",
        16,
    ),
    _rollout(
        "battery-nyc",
        "roll out battery-policy 3.1.0 to nyc-07",
        "battery-policy 3.1.0 has to be rolled out to nyc-07",
        "battery-policy",
        "3.1.0",
        8,
    ),
    _rollout(
        "hvac-us",
        "roll out hvac-controller 2.4.1 to the hvac gateways in us-east",
        "hvac-controller 2.4.1 should be rolled out to the hvac gateways in us-east",
        "hvac-controller",
        "2.4.1",
        36,
    ),
    _rollout(
        "pump-tpa",
        "deploy pump-logic 1.9.0 to tpa-04",
        "pump-logic 1.9.0 is to be deployed to tpa-04",
        "pump-logic",
        "1.9.0",
        30,
    ),
    _rollout(
        "interlock-nyc",
        "roll out safety-interlock 1.1.0 to the plc gateways at nyc-07",
        "safety-interlock 1.1.0 should be rolled out to the plc gateways at nyc-07",
        "safety-interlock",
        "1.1.0",
        12,
    ),
    _rollout(
        "plc-51-osl",
        "deploy plc-bridge 5.1.0 to osl-01",
        "plc-bridge 5.1.0 needs to be deployed to osl-01",
        "plc-bridge",
        "5.1.0",
        12,
    ),
    _rollout(
        "aq-13-osl",
        "upgrade air-quality-model to 1.3.0 on the env sensors at osl-01",
        "the env sensors at osl-01 should be upgraded to air-quality-model 1.3.0",
        "air-quality-model",
        "1.3.0",
        20,
    ),
    _ask(
        "unknown-place",
        "rollout",
        "roll out pump-logic 1.9.0 to rotterdam",
        "pump-logic 1.9.0 should be rolled out to rotterdam",
        "unknown_site",
    ),
    _ask(
        "unknown-city",
        "rollout",
        "roll out vision-inspect 1.1.0 to munich",
        "vision-inspect 1.1.0 should be rolled out to munich",
        "unknown_site",
    ),
    # pilot: a few devices, or a canary size of the engineer's own
    _rollout(
        "pilot-pumps",
        "roll out pump-logic 1.9.0 to 5 pump controllers at rtm-05",
        "pump-logic 1.9.0 should be rolled out to 5 pump controllers at rtm-05",
        "pump-logic",
        "1.9.0",
        5,
        "pilot",
    ),
    _rollout(
        "pilot-sensors",
        "install air-quality-model 1.3.0 on 3 sensors at osl-01",
        "air-quality-model 1.3.0 should be installed on 3 sensors at osl-01",
        "air-quality-model",
        "1.3.0",
        3,
        "pilot",
    ),
    _rollout(
        "pilot-gateways",
        "upgrade 2 gateways at ber-03 to hvac-controller 2.4.1",
        "2 gateways at ber-03 should be upgraded to hvac-controller 2.4.1",
        "hvac-controller",
        "2.4.1",
        2,
        "pilot",
    ),
    _rollout(
        "canary-two",
        "roll out pump-logic 1.9.0 to rtm-05 with a canary of 2 devices",
        "pump-logic 1.9.0 should be rolled out to rtm-05 with a canary of 2 devices",
        "pump-logic",
        "1.9.0",
        60,
        "pilot",
    ),
    # percent
    _rollout(
        "percent-pumps",
        "roll out pump-logic 1.9.0 to 25% of the pumps at rtm-05",
        "pump-logic 1.9.0 should be rolled out to 25% of the pumps at rtm-05",
        "pump-logic",
        "1.9.0",
        15,
        "percent",
    ),
    _rollout(
        "half-sensors",
        "upgrade half of the env sensors at bos-02 to air-quality-model 1.2.0",
        "half of the env sensors at bos-02 should be upgraded to air-quality-model 1.2.0",
        "air-quality-model",
        "1.2.0",
        10,
        "percent",
    ),
    _rollout(
        "third-gateways",
        "deploy hvac-controller 2.4.1 to a third of the gateways at muc-01",
        "hvac-controller 2.4.1 should be deployed to a third of the gateways at muc-01",
        "hvac-controller",
        "2.4.1",
        8,
        "percent",
    ),
    # except
    _rollout(
        "except-site",
        "roll out hvac-controller 2.4.1 in eu-central but not ber-03",
        "hvac-controller 2.4.1 should be rolled out in eu-central but not ber-03",
        "hvac-controller",
        "2.4.1",
        25,
        "except",
    ),
    _rollout(
        "except-pumps",
        "roll out pump-logic 1.9.0 to all pump controllers except tpa-04",
        "pump-logic 1.9.0 should be rolled out to all pump controllers except tpa-04",
        "pump-logic",
        "1.9.0",
        60,
        "except",
    ),
    _rollout(
        "except-sensors",
        "upgrade air-quality-model to 1.3.0 everywhere except bos-02",
        "air-quality-model 1.3.0 should be installed everywhere except bos-02",
        "air-quality-model",
        "1.3.0",
        46,
        "except",
    ),
    _rollout(
        "except-us",
        "deploy plc-bridge 5.2.0 everywhere except the US",
        "plc-bridge 5.2.0 should be deployed everywhere except the US",
        "plc-bridge",
        "5.2.0",
        13,
        "except",
    ),
    # rollback
    _rollback(
        "back-bos",
        "roll back hvac-controller to 2.3.4 at bos-02",
        "hvac-controller at bos-02 should be rolled back to 2.3.4",
        "hvac-controller",
        "2.3.4",
        18,
    ),
    _rollback(
        "back-vision",
        "revert vision-inspect to 0.9.0 at muc-01",
        "vision-inspect at muc-01 should be reverted to 0.9.0",
        "vision-inspect",
        "0.9.0",
        16,
    ),
    _rollback(
        "back-reason",
        "hvac-controller 2.4.0 keeps crashing at bos-02, roll it back to 2.3.4",
        "hvac-controller 2.4.0 keeps crashing at bos-02, it should be rolled back to 2.3.4",
        "hvac-controller",
        "2.3.4",
        18,
    ),
    _rollback(
        "back-previous",
        "roll back hvac-controller on ber-03 to the previous version",
        "hvac-controller on ber-03 should be rolled back to the previous version",
        "hvac-controller",
        "2.3.4",
        24,
        "after-rollout",
    ),
    _rollback(
        "back-chatter",
        "hvac-controller 2.4.1 is making the valves chatter, roll back ber-03",
        "hvac-controller 2.4.1 is making the valves chatter, ber-03 should be rolled back",
        "hvac-controller",
        "2.3.4",
        24,
        "after-rollout",
    ),
    _rollback(
        "back-undo",
        "undo the hvac-controller upgrade on ber-03",
        "the hvac-controller upgrade on ber-03 should be undone",
        "hvac-controller",
        "2.3.4",
        24,
        "after-rollout",
    ),
    # pin: an exact version, wherever the devices are now
    _rollout(
        "pin-hvac",
        "set hvac-controller to exactly 2.4.0 at ber-03",
        "hvac-controller at ber-03 should be set to exactly 2.4.0",
        "hvac-controller",
        "2.4.0",
        24,
        "pin",
    ),
    _rollout(
        "pin-pumps",
        "put the rtm-05 pumps on pump-logic 1.9.0",
        "the rtm-05 pumps should be put on pump-logic 1.9.0",
        "pump-logic",
        "1.9.0",
        60,
        "pin",
    ),
    _ask(
        "pin-already",
        "pin",
        "pin pump-logic to 1.8.0 on tpa-04",
        "pump-logic on tpa-04 should be pinned to 1.8.0",
        "up_to_date",
    ),
    # finish: the rest of a rollout that is partly done
    _rollout(
        "finish-rest",
        "bring the rest onto 1.9.0 for pump-logic at rtm-05",
        "the rest should be brought onto pump-logic 1.9.0 at rtm-05",
        "pump-logic",
        "1.9.0",
        54,
        "finish",
        "half-done",
    ),
    _rollout(
        "finish-others",
        "upgrade the others at rtm-05 to pump-logic 1.9.0",
        "the others at rtm-05 should be upgraded to pump-logic 1.9.0",
        "pump-logic",
        "1.9.0",
        54,
        "finish",
        "half-done",
    ),
    _rollout(
        "finish-remaining",
        "finish the rollout: remaining rtm-05 pumps to pump-logic 1.9.0",
        "the remaining rtm-05 pumps should be moved to pump-logic 1.9.0",
        "pump-logic",
        "1.9.0",
        54,
        "finish",
        "half-done",
    ),
    # questions
    _ask(
        "question-version",
        "question",
        "which version of edge-runtime runs in eu-west?",
        "which version of edge-runtime is run in eu-west?",
        "unclear_action",
    ),
    _ask(
        "question-pumps",
        "question",
        "what is running on the rtm-05 pumps?",
        "what is installed on the rtm-05 pumps?",
        "unclear_action",
    ),
    _ask(
        "question-count",
        "question",
        "how many gateways are at ber-03?",
        "how many gateways are installed at ber-03?",
        "unclear_action",
    ),
    # two requests in one message
    _ask(
        "two-modules",
        "two",
        "roll out pump-logic 1.9.0 to rtm-05 and hvac-controller 2.4.1 to muc-01",
        "pump-logic 1.9.0 should go to rtm-05 and hvac-controller 2.4.1 to muc-01",
        "several_modules",
    ),
    _ask(
        "two-sites",
        "two",
        "upgrade air-quality-model to 1.2.0 at lyon-02 and plc-bridge to 5.2.0 at osl-01",
        "air-quality-model 1.2.0 should be installed at lyon-02 and plc-bridge 5.2.0 at osl-01",
        "several_modules",
    ),
    # hold off
    _ask(
        "hold-pumps",
        "hold",
        "hold off on the pump-logic 1.9.0 rollout at rtm-05",
        "the pump-logic 1.9.0 rollout at rtm-05 should be held off",
        "unclear_action",
    ),
    _ask(
        "hold-hvac",
        "hold",
        "don't deploy hvac-controller 2.4.1 to ber-03 yet",
        "hvac-controller 2.4.1 should not be deployed to ber-03 yet",
        "unclear_action",
    ),
    _ask(
        "hold-sensors",
        "hold",
        "postpone the air-quality-model upgrade at lyon-02",
        "the air-quality-model upgrade at lyon-02 should be postponed",
        "unclear_action",
    ),
)


# --- noise ------------------------------------------------------------------------------------

_PEOPLE = ("Ana Costa", "Lena Fischer", "Tom Berger", "Kim Nguyen", "Ivo Petrov", "Ola Hansen")
_VERSION = re.compile(r"(?<![\w.])(\d+\.\d+\.\d+)(?![\w.])")
_NUMBER_WORDS = {"2": "two", "3": "three", "5": "five", "25%": "twenty-five percent"}


def _seed(family: Family, kind: str) -> int:
    return zlib.crc32(f"{family.name}/{kind}".encode())


def _person(family: Family, kind: str) -> str:
    return _PEOPLE[_seed(family, kind) % len(_PEOPLE)]


def _ticket(family: Family, kind: str) -> str:
    return str(1000 + _seed(family, kind) % 9000)


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith(("?", ".", "!")) else text + "."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _code_spans(text: str) -> str:
    """Put module names and versions in markdown code spans."""
    text = re.sub(r"\b([a-z]+(?:-[a-z]+)+)\b", r"`\1`", text)
    return _VERSION.sub(r"`\1`", text)


def chat(f: Family) -> str:
    """A chat one-liner with an @mention and emoji."""
    return f"@{_person(f, 'chat').split()[0].lower()} {_lower_first(f.base)} pls 🙏🚀"


def email(f: Family) -> str:
    """An email: greeting, background, the request, sign-off and signature."""
    who = _person(f, "email")
    return (
        f"Hi team,\n\nhope you are all well. We discussed this in yesterday's ops sync with "
        f"{_person(f, 'email-2')}.\n\n{_sentence(f.base)}\n\nThanks in advance,\n{who}\n"
        "Release Engineering | Water Operations"
    )


def ticket(f: Family) -> str:
    """A change-ticket body with fields."""
    return (
        f"CHG-{_ticket(f, 'ticket')}\nSummary: {f.base}\nRequested by: {_person(f, 'ticket')}\n"
        "Backout plan: roll back to the previous version if the health checks fail\n"
        "Risk: low\nPriority: normal"
    )


def non_native(f: Family) -> str:
    """Non-native English."""
    return (
        f"Hello, please can you make this for us: {_lower_first(f.base)}. It is important "
        "for the customer, thank you very much"
    )


def bullets(f: Family) -> str:
    """A bullet list with markdown code spans."""
    return (
        f"Please do the following:\n\n* {_code_spans(f.base)}\n"
        "* keep an eye on the dashboards afterwards"
    )


def numbers_as_words(f: Family) -> str:
    """Counts written as words, and a context sentence with a number word in it."""
    text = f.base
    for digits, words in _NUMBER_WORDS.items():
        text = re.sub(rf"(?<![\w.]){re.escape(digits)}(?![\w.%])", words, text)
    return f"{_sentence(text)} Two of us are on call tonight."


def ticket_header(f: Family) -> str:
    """A ticket header and ids before the request."""
    return f"[OPS-{_ticket(f, 'header')}] RE: FW: {f.base} (ref INC00{_ticket(f, 'inc')})"


def greetings(f: Family) -> str:
    """A greeting and a sign-off around the request."""
    return f"Good morning everyone! {_sentence(f.base)} Have a nice weekend, cheers"


def context_sentences(f: Family) -> str:
    """Sentences about when, who and why around the request."""
    who = _person(f, "context")
    return (
        f"Quick one before the weekend. {_sentence(f.base)} {who} from the maintenance crew "
        "asked for it on Monday, after the vendor call last week."
    )


def casing(f: Family) -> str:
    """All lower case, with site ids in upper case."""
    lowered = f.base.lower()
    return re.sub(r"\b([a-z]{3,4}-\d{2})\b", lambda m: m.group(1).upper(), lowered)


def typos(f: Family) -> str:
    """Typos in the ordinary words, the way fast typists make them."""
    text = f" {f.base} "
    for word, typo in (("the", "teh"), ("please", "plese"), ("and", "adn")):
        text = re.sub(rf"\b{word}\b", typo, text, count=1)
    return f"plz {text.strip()} thx"


def filler(f: Family) -> str:
    """Filler words around the request."""
    return (
        f"so basically, if you could just {_lower_first(f.base)}, that would be great, kind "
        "of whenever you get to it"
    )


def passive(f: Family) -> str:
    """The passive voice."""
    return f.passive


def v_versions(f: Family) -> str:
    """Versions written ``v1.2.3``."""
    return _VERSION.sub(r"v\1", f.base)


def slack_thread(f: Family) -> str:
    """A chat thread: a quoted earlier message, then the request."""
    return (
        f"> {_person(f, 'slack')}: the vendor call went fine, nothing blocking from their side\n"
        f"ok, then {_lower_first(f.base)} :thumbsup:"
    )


def markdown(f: Family) -> str:
    """A markdown note with a heading and bold text."""
    return f"## Change request\n\n**Ask:** {_sentence(f.base)}\n\n_Notes:_ nothing special."


def mixed_language(f: Family) -> str:
    """English mixed with a few words of the engineer's own language."""
    return f"Hallo zusammen, {_lower_first(f.base)}, bitte. Danke und Gruss"


def shouting(f: Family) -> str:
    """The whole request in capitals."""
    return f.base.upper() + "!!!"


NOISE: dict[str, Callable[[Family], str]] = {
    "chat": chat,
    "email": email,
    "ticket": ticket,
    "non-native": non_native,
    "bullets": bullets,
    "numbers-as-words": numbers_as_words,
    "ticket-header": ticket_header,
    "greetings": greetings,
    "context": context_sentences,
    "casing": casing,
    "typos": typos,
    "filler": filler,
    "passive": passive,
    "v-versions": v_versions,
    "slack-thread": slack_thread,
    "markdown": markdown,
    "mixed-language": mixed_language,
    "shouting": shouting,
}
"""Every noise kind, by name: each makes one variant of a family."""


def variants(family: Family) -> dict[str, str]:
    """Each noise kind's variant of ``family``, by kind."""
    return {kind: make(family) for kind, make in NOISE.items()}


# --- fleets and readings ----------------------------------------------------------------------


@dataclass
class World:
    """A fleet the families plan against: its planning context, devices and sites."""

    ctx: PlanningContext
    devices: list[Device]
    sites: dict[str, Site]


def _moved(device: Device, module: str, version: str) -> Device:
    return device.model_copy(update={"installed": {**device.installed, module: version}})


def worlds() -> dict[FleetName, World]:
    """The sample fleet, and two histories of it, by name."""
    sample = load_sample()
    fleet = sample.fleet
    catalog = sample.catalog.modules
    devices = fleet.all_devices()
    sites = {s.id: s for s in fleet.sites}
    half: list[Device] = []
    moved = 0
    for device in devices:
        if device.site == "rtm-05" and device.device_class == "pump-ctl" and moved < 6:
            device, moved = _moved(device, "pump-logic", "1.9.0"), moved + 1
        half.append(device)
    after: list[Device] = []
    history: dict[str, dict[str, str]] = {}
    for device in devices:
        if device.site == "ber-03" and device.device_class == "hvac-gw":
            history[device.id] = {"hvac-controller": device.installed["hvac-controller"]}
            device = _moved(device, "hvac-controller", "2.4.1")
        after.append(device)
    return {
        "sample": World(planning_context(fleet, catalog, NOW), devices, sites),
        "half-done": World(planning_context(half, catalog, NOW, sites=fleet.sites), half, sites),
        "after-rollout": World(
            planning_context(after, catalog, NOW, sites=fleet.sites, previous=history),
            after,
            sites,
        ),
    }


@dataclass(frozen=True)
class Reading:
    """What a request was read as, in the terms a family's variants must agree on."""

    key: tuple[str, ...]
    """``(action, module, version, targets...)`` for a plan, ``("ask", reason, ...)`` else."""
    targets: frozenset[str] = field(default_factory=frozenset)
    """The device ids the plan targets (empty for a question)."""
    text: str = ""
    """The plan's first rationale line or the question, for reports."""


def read(request: str, world: World) -> Reading:
    """Read ``request`` against ``world`` with the offline model, as the planner does."""
    understood = understand(request, world.ctx)
    if isinstance(understood, Clarification):
        return Reading(
            ("ask", understood.reason, *sorted(understood.candidates)), text=understood.question
        )
    return _plan_reading(understood, world)


def _plan_reading(intent: Intent, world: World) -> Reading:
    plan = propose_plan(intent, world.ctx, plan_id="pl-paraphrase", requested_by="eng-ana")
    targets = frozenset(d.id for d in select_devices(plan.target, world.devices, world.sites))
    first = plan.waves[0]
    canary = str(first.count or first.percent or "")
    key = (plan.intent.value, plan.module, plan.version, str(len(targets)), canary)
    return Reading(key, targets, plan.rationale.splitlines()[0])


def expected_holds(family: Family, reading: Reading) -> bool:
    """Whether ``reading`` is what ``family`` declares (action, module, version, count)."""
    if family.expect[0] == "ask":
        return reading.key[:2] == family.expect
    return reading.key[:3] == family.expect and len(reading.targets) == family.targets


def widened(base: Reading, variant: Reading) -> bool:
    """Whether ``variant`` plans devices the base reading does not (a question never widens)."""
    if variant.key[0] == "ask":
        return False
    if base.key[0] == "ask":
        return True
    return not variant.targets <= base.targets
