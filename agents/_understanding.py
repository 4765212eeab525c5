"""Understand an engineer's request: which module and version, where, and what they asked for.

Only the engineer's own words come in here. Telemetry, labels, manifest descriptions and tickets
are untrusted and never reach this function, so nothing in them can name a target, a version or
a flag. What cannot be resolved against the planning context becomes a question, not a guess.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from packaging.version import InvalidVersion, Version
from pydantic import Field

from fieldgate.agents._lexicon import Match, Role, Token, build_lexicon, match, tokenize
from fieldgate.agents._summary import CatalogItem, DeviceGroup, PlanningContext
from fieldgate.contract import Contract, parse_version
from fieldgate.plan import PlanIntent, Selector

ClarificationReason = Literal[
    "version_ambiguous",
    "unknown_version",
    "up_to_date",
    "unknown_module",
    "several_modules",
    "unknown_site",
    "unknown_class",
    "no_targets",
    "unsupported_scope",
    "unclear_action",
]


class Scope(Contract):
    """Which devices the engineer means; every list given narrows the set."""

    sites: list[str] = []
    """Site ids."""
    regions: list[str] = []
    """Regions."""
    classes: list[str] = []
    """Device classes."""
    devices: list[str] = []
    """Explicit device ids."""
    labels: dict[str, str] = {}
    """Site labels that must match, e.g. ``regulated: "true"``."""
    limit: int | None = Field(default=None, ge=1)
    """Take only this many of the matching devices (``to 5 pump controllers``).

    A share (``half of the pumps``, ``a third of``, ``25% of``) becomes
    ``max(1, floor(share × devices the version fits))``: rounded down, so the plan never takes
    more than was asked, but at least one device.
    """

    def selector(self) -> Selector:
        """The selector of this scope, without the limit.

        The limit counts only devices the module fits, so the planner adds it once the selector
        also says which devices fit.
        """
        return Selector(
            sites=list(self.sites),
            regions=list(self.regions),
            classes=list(self.classes),
            devices=list(self.devices),
            labels=dict(self.labels),
        )

    @property
    def is_everything(self) -> bool:
        """Whether nothing narrows the scope."""
        return not (self.sites or self.regions or self.classes or self.devices or self.labels)


class RequestFlags(Contract):
    """How the engineer asked for the rollout to run; policy decides what is allowed."""

    now: bool = False
    """Asked to run now / immediately / without waiting for a maintenance window."""
    all_at_once: bool = False
    """Asked for one wave: all at once, in one go, no waves."""
    skip_canary: bool = False
    """Asked to skip the canary."""
    in_maintenance: bool = False
    """Asked to run in maintenance windows."""
    skip_health_gates: bool = False
    """Asked to skip health checks or soak time."""

    def asked(self) -> list[str]:
        """The flags that are set, by name."""
        return [name for name, value in self.model_dump().items() if value]


class Intent(Contract):
    """What the engineer asked for, resolved against the fleet and the catalog."""

    action: PlanIntent
    """``rollout`` or ``rollback``."""
    module: str
    """Module name from the catalog."""
    version: str
    """Catalog version to install."""
    version_reason: str
    """How the version was chosen, for the rationale (e.g. ``newest 2.4.x release``)."""
    scope: Scope
    """Which devices."""
    flags: RequestFlags = RequestFlags()
    """How the engineer asked for it to run."""
    ignored: list[str] = []
    """Words of the request that were not understood and had no effect."""
    notes: list[str] = []
    """Readings worth telling the approver (defaults taken, words interpreted)."""


class Clarification(Contract):
    """A question back to the engineer instead of a guess."""

    reason: ClarificationReason
    """Why the request cannot be planned as it stands."""
    question: str
    """The question, in plain words."""
    candidates: list[str] = []
    """Possible answers: modules, versions, sites, classes or actions."""
    module: str | None = None
    """The module, when it was understood."""


# --- reading the request ------------------------------------------------------------------

_SITE_LIKE = re.compile(r"^[a-z]{2,8}-?\d{1,4}$")
_REGION_LIKE = re.compile(
    r"^[a-z]{2}-(north|south|east|west|central|northeast|northwest|southeast|southwest)(-\d)?$"
)
_CLASS_HEADS = frozenset(
    {"gw", "ctl", "ctrl", "sensor", "node", "gateway", "controller", "cam", "camera", "unit"}
)
_SKIPPABLE = frozenset({Role.article, Role.limiter, Role.filler})
_BREAKS = frozenset({Role.punct, Role.clause, Role.rollout, Role.rollback})
_NEGATION_REACH = 6
_NOUNS = frozenset({Role.class_head, Role.generic})
_ENTITIES = frozenset(
    {
        Role.site,
        Role.region,
        Role.region_group,
        Role.device_class,
        Role.class_head,
        Role.label,
        Role.device,
        Role.number,
        Role.number_word,
    }
)
_BETWEEN_EXCLUDED = frozenset(
    {Role.article, Role.filler, Role.site_prep, Role.target_prep, Role.generic, Role.limiter}
)
_NAMES = frozenset({Role.module, Role.module_word, Role.version, Role.version_word})

# negations differ in what they can hold back: "not" and "don't" hold back an action anywhere in
# reach ("don't roll out pump-logic"), "no" and "without" only the word right after them ("no
# rollout", but "no rush, roll out"), and "rather", "instead" and "outside" never one
_NOT = frozenset(
    {
        "not", "don t", "dont", "do not", "does not", "doesn t", "did not", "didn t", "won t",
        "will not", "shouldn t", "should not", "must not", "mustn t", "can not", "cannot",
        "can t", "needn t", "need not", "never", "don", "doesn", "didn", "won", "shouldn",
        "needn", "t",
    }
)  # fmt: skip
_NOT_NEXT_WORD = frozenset({"no", "without"})
_NOT_FOR_ACTIONS = frozenset({"rather", "instead", "outside"})
_ACTIONS = frozenset({Role.rollout, Role.rollback, Role.weak_verb})
_BEFORE_ACTION = frozenset(
    {
        Role.article,
        Role.filler,
        Role.limiter,
        Role.module,
        Role.module_word,
        Role.version,
        Role.version_word,
    }
)
"""What may stand between a negation and the action it holds back (``skip the pump-logic 1.9
upgrade``)."""
_ACTS_ON = frozenset(
    {
        Role.module,
        Role.module_word,
        Role.version,
        Role.site,
        Role.region,
        Role.region_group,
        Role.device_class,
        Role.class_head,
        Role.device,
        Role.label,
        Role.everywhere,
        Role.back,
        Role.latest,
        Role.previous,
    }
)
"""What an action has to name to stand on its own (``roll it out to eu-central``)."""
_WAIT_FOR = frozenset({"before", "until", "till", "til", "with"})
"""Words after ``wait`` that hold the rollout back (``wait before rolling out``)."""
_WAIT_ON_PLAN = frozenset(
    {Role.maintenance, Role.business_hours, Role.canary, Role.staging, Role.health}
)
"""Words after ``wait`` that say how the plan runs (``wait for the window``), not to hold it."""
_PLACE_WORDS = frozenset(
    {"site", "location", "plant", "station", "region", "facility", "depot", "campus"}
)
"""Words that only say the next id is a place: ``at site rtm-05``, ``in region eu-west``."""
_PLACES = frozenset({Role.site, Role.region, Role.region_group, Role.device})
_ARROWS = ("->", "=>", "→")
_AFTER_TRAILING_NOT = frozenset(
    {"do", "it", "that", "this", "yet", "please", "so", "though", "now", "for", "anymore"}
)
"""Words that may follow a negation that ends its clause (``don't do it yet``)."""
_CONTRACTION = re.compile(r"\b(\w+n) t\b")
"""``don t`` as tokenised, to quote back as ``don't``."""


@dataclass
class _Reading:
    """Everything found in the request, before it is checked against the context."""

    question: bool = False
    verbs: list[Role] = field(default_factory=list)
    weak_verb: bool = False
    back: bool = False
    modules: list[str] = field(default_factory=list)
    module_words: list[str] = field(default_factory=list)
    unknown_names: list[str] = field(default_factory=list)
    held_back: str | None = None
    """The words that hold the whole request back (``don't``, ``hold off``, ``not yet``)."""
    versions: list[str] = field(default_factory=list)
    to_versions: list[str] = field(default_factory=list)
    """Versions after ``to`` or an arrow: the one to go to, when several are named."""
    from_versions: list[str] = field(default_factory=list)
    not_versions: list[str] = field(default_factory=list)
    """Versions the engineer ruled out (``not 2.0.0``)."""
    latest: bool = False
    previous: bool = False
    sites: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    region_groups: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    class_heads: list[tuple[str, list[str]]] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    excluded_sites: list[str] = field(default_factory=list)
    excluded_regions: list[str] = field(default_factory=list)
    excluded_classes: list[str] = field(default_factory=list)
    excluded_labels: dict[str, str] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    """Parts of the scope a selector cannot express (excluded devices or counts, memory)."""
    unknown_sites: list[str] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)
    everywhere: bool = False
    limit: int | None = None
    limit_share: Fraction | None = None
    """A share of the targets to take (``half``, ``25%``)."""
    limit_share_text: str = ""
    vague_limit: str | None = None
    wave_sizes: list[str] = field(default_factory=list)
    """Wave or canary sizes the engineer asked for; the planner sizes waves itself."""
    flags: dict[str, bool] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


class _Reader:
    """Walk the matched phrases of one request and collect what they say."""

    def __init__(self, tokens: list[Token], matches: list[Match], ctx: PlanningContext) -> None:
        self.tokens = tokens
        self.matches = matches
        self.ctx = ctx
        self.found = _Reading()
        self.used: set[int] = set()
        self.excluded_at: set[int] = set()

    def text(self, m: Match) -> str:
        return " ".join(t.raw for t in self.tokens[m.start : m.end])

    def neighbour(self, index: int, step: int, skip: frozenset[Role] = _SKIPPABLE) -> Match | None:
        """The nearest match before (step -1) or after (step 1) ``index`` not in ``skip``."""
        at = index + step
        while 0 <= at < len(self.matches):
            if self.matches[at].role not in skip:
                return self.matches[at]
            at += step
        return None

    def negated(self, index: int) -> bool:
        """Whether a negation governs the match at ``index`` (``skip the canary``).

        Two negations cancel: ``don't skip the canary`` keeps it.
        """
        for at in range(index - 1, max(-1, index - 1 - _NEGATION_REACH), -1):
            role = self.matches[at].role
            if role in _BREAKS:
                return False
            if role is Role.negation:
                return not self.cancelled(at)
        return False

    def cancelled(self, index: int) -> bool:
        """Whether the negating verb at ``index`` is itself negated (``don't skip``)."""
        value = self.matches[index].value
        if value in _NOT or value in _NOT_NEXT_WORD or value in _NOT_FOR_ACTIONS:
            return False
        before = self.neighbour(index, -1, _SKIPPABLE | {Role.target_prep})
        return (
            before is not None
            and before.role is Role.negation
            and (before.value in _NOT or before.value in _NOT_NEXT_WORD)
        )

    def held(self, index: int) -> bool:
        """Whether the action (or, with no verb, the module) at ``index`` is held back.

        ``don't roll out``, ``never deploy``, ``skip the pump-logic upgrade``, ``no rollout``,
        ``hold off on rolling out``, ``stop the rollout``; not ``don't forget to roll out``,
        ``don't delay the rollout`` or ``no rush, roll out``.
        """
        next_word = True
        for at in range(index - 1, max(-1, index - 1 - _NEGATION_REACH), -1):
            m = self.matches[at]
            if m.role is Role.negation:
                if m.value in _NOT_FOR_ACTIONS:
                    return False
                if m.value in _NOT_NEXT_WORD:
                    return next_word
                return not self.cancelled(at)
            if m.role in (Role.defer, Role.halt):
                return not self.negated(at)
            if m.role in _BEFORE_ACTION or (m.role is Role.target_prep and m.value == "to"):
                next_word = next_word and m.role is Role.article
                continue
            return False
        return False

    def stands_alone(self, index: int) -> bool:
        """Whether the action at ``index`` names what it acts on before its clause ends."""
        for m in self.matches[index + 1 :]:
            if m.role is Role.clause or (m.role is Role.punct and m.value not in ("%", *_ARROWS)):
                return False
            if m.role in _ACTS_ON:
                return True
        return False

    def holding_back(self) -> str | None:
        """The words that hold the whole request back, if they do.

        ``cancel``, ``hold off``, ``postpone`` and ``not yet`` do wherever they stand (unless
        negated: ``don't hold off``); ``wait before``/``until``/``with`` does unless it waits for
        a window, canary or gate; a trailing ``don't`` does; and a negated action does unless
        another action in the request stands on its own (``don't deploy to muc-01, roll it out
        to eu-central`` leaves muc-01 out instead).
        """
        for index, m in enumerate(self.matches):
            if m.role is Role.defer and not self.negated(index):
                return self.text(m)
            if m.role is Role.wait and not self.negated(index) and self.waits_to_hold(index):
                return self.text(m)
            if m.role is Role.negation and m.value in _NOT and self.trailing(index):
                return self.text(m)
        actions = [i for i, m in enumerate(self.matches) if m.role in _ACTIONS]
        if not actions:
            actions = [
                i for i, m in enumerate(self.matches) if m.role in (Role.module, Role.module_word)
            ][:1]
        held = [i for i in actions if self.held(i)]
        if held and not any(self.stands_alone(i) for i in actions if i not in held):
            return self.negation_text(held[0])
        return None

    def waits_to_hold(self, index: int) -> bool:
        """Whether ``wait`` at ``index`` holds the rollout back (``wait before rolling out``)."""
        holds = False
        for m in self.matches[index + 1 :]:
            if m.role is Role.clause or (m.role is Role.punct and m.value != "%"):
                break
            if m.role in _WAIT_ON_PLAN:
                return False
            holds = holds or self.tokens[m.start].text in _WAIT_FOR
        return holds

    def trailing(self, index: int) -> bool:
        """Whether the negation at ``index`` ends its clause: ``actually, don't (do it yet)``."""
        for m in self.matches[index + 1 :]:
            if m.role is Role.clause or (m.role is Role.punct and m.value != "%"):
                return True
            if self.text(m).lower() not in _AFTER_TRAILING_NOT:
                return False
        return True

    def negation_text(self, index: int) -> str:
        """The negation before the action at ``index`` and the action, as typed."""
        start = index
        while start > 0 and self.matches[start].role not in (
            Role.negation,
            Role.defer,
            Role.halt,
        ):
            start -= 1
        words = " ".join(self.text(m) for m in self.matches[start : index + 1])
        return _CONTRACTION.sub(r"\1't", words)

    def excluded(self, index: int) -> bool:
        """Whether the entity at ``index`` is left out.

        ``but not muc-01``, ``except ber-03 and muc-01``, ``everywhere but the US``,
        ``don't touch ber-03`` and ``don't deploy hvac-controller 2.4.1 to muc-01`` leave sites
        out. Only function words may stand between, module and version names only between a
        verb and the entity, a verb only right after its negation, and a list continues only an
        exclusion, so ``skip the canary on ber-03``, ``no rush, please upgrade ber-03`` and
        ``except 2.0.0 to rtm-05`` leave nothing out.
        """
        at = index - 1
        after_verb = False
        named = False
        while at >= 0:
            m = self.matches[at]
            if after_verb:
                return m.role is Role.negation
            if m.role in _NAMES:
                named = True
                at -= 1
                continue
            if m.role in (Role.exclusion, Role.negation):
                return not named
            if m.role is Role.clause and m.value == "but":
                return not named
            if m.role in _ENTITIES:
                return at in self.excluded_at
            if m.value == "," or (m.role is Role.clause and m.value in ("and", "or")):
                return self.previous_entity_excluded(at)
            if m.role in (Role.rollout, Role.rollback, Role.weak_verb, Role.word):
                after_verb = True
            elif m.role not in _BETWEEN_EXCLUDED:
                return False
            at -= 1
        return False

    def previous_entity_excluded(self, index: int) -> bool:
        """Whether the list item before ``index`` (``except ber-03, muc-01``) was left out."""
        at = index - 1
        while at >= 0 and self.matches[at].role in _BETWEEN_EXCLUDED:
            at -= 1
        return at >= 0 and at in self.excluded_at

    def flag(self, name: str) -> None:
        self.found.flags[name] = True

    def read(self) -> _Reading:
        found = self.found
        tokens = self.tokens
        if any(t.text == "?" for t in tokens[-2:]):
            first = self.matches[0] if self.matches else None
            found.question = first is not None and first.role is Role.question
        for index, m in enumerate(self.matches):
            if index in self.used:
                continue
            if m.role in _ENTITIES and self.excluded(index):
                self.excluded_at.add(index)
                self.read_excluded(index, m)
            else:
                self.read_one(index, m)
        self.read_leftovers()
        found.held_back = self.holding_back()
        return found

    def read_one(self, index: int, m: Match) -> None:
        found = self.found
        role = m.role
        if role is Role.module:
            found.modules.append(m.value)
        elif role is Role.module_word:
            found.module_words.append(m.value)
        elif role is Role.site:
            found.sites.append(m.value)
        elif role is Role.region:
            found.regions.append(m.value)
        elif role is Role.region_group:
            # "us" is a pronoun unless typed as "US"
            if not (m.value == "us" and self.text(m) != "US"):
                found.region_groups.append(m.value)
        elif role is Role.device_class:
            found.classes.append(m.value)
        elif role is Role.label:
            key, _, value = m.value.partition("=")
            found.labels[key] = value
        elif role is Role.class_head:
            before = self.neighbour(index, -1, frozenset())
            if before is None or before.role is not Role.device_class:
                found.class_heads.append((self.text(m), m.value.split("|")))
        elif role in (Role.rollout, Role.rollback):
            found.verbs.append(role)
        elif role is Role.weak_verb:
            found.weak_verb = True
        elif role is Role.back:
            self.read_back(index)
        elif role is Role.now:
            self.flag("now")
        elif role is Role.wait:
            if self.negated(index):
                self.flag("now")
        elif role is Role.maintenance:
            self.flag("now" if self.negated(index) else "in_maintenance")
        elif role is Role.business_hours:
            self.flag("in_maintenance" if self.negated(index) else "now")
        elif role is Role.all_at_once:
            if not self.negated(index):
                self.flag("all_at_once")
        elif role is Role.at_once:
            earlier = self.matches[:index]
            every = any(b.role is Role.everywhere or b.value in ("all", "every") for b in earlier)
            self.flag("all_at_once" if every else "now")
        elif role is Role.canary:
            if self.negated(index):
                self.flag("skip_canary")
        elif role is Role.no_canary:
            self.flag("skip_canary")
        elif role is Role.staging:
            if self.negated(index):
                self.flag("all_at_once")
        elif role is Role.health:
            if self.negated(index):
                self.flag("skip_health_gates")
        elif role is Role.latest:
            found.latest = True
        elif role is Role.previous:
            found.previous = True
        elif role is Role.everywhere:
            found.everywhere = True
        elif role is Role.version:
            self.read_version(index, m)
        elif role is Role.fraction:
            self.read_share(index, Fraction(m.value), self.text(m))
        elif role is Role.device:
            found.devices.append(m.value)
        elif role in (Role.number, Role.number_word, Role.vague_number):
            self.read_number(index, m)
        elif role is Role.time:
            found.ignored.append(self.text(m))

    def read_excluded(self, index: int, m: Match) -> None:
        """Record an entity the engineer wants left out."""
        found = self.found
        if m.role is Role.site:
            found.excluded_sites.append(m.value)
        elif m.role is Role.region:
            found.excluded_regions.append(m.value)
        elif m.role is Role.region_group:
            found.excluded_regions += [r for r in self.ctx.regions if r.startswith(m.value + "-")]
        elif m.role is Role.device_class:
            found.excluded_classes.append(m.value)
        elif m.role is Role.label:
            key, _, value = m.value.partition("=")
            found.excluded_labels[key] = value
        else:
            found.unsupported.append("leaving out " + self.text(m))

    def read_version(self, index: int, m: Match) -> None:
        """A version to go to, the one devices run (``from 1.8.0``), a ruled-out one, or a share.

        With several versions named, the one after ``to`` or an arrow is the one to go to
        (``from pump-logic 1.8.0 to 1.9.0``, ``back to 2.3.4, 2.4.1 is misbehaving``).
        """
        found = self.found
        after = self.neighbour(index, 1, frozenset())
        if after is not None and (after.role is Role.percent or after.value == "%"):
            # "12.5%" reads as a version
            self.read_share(index, Fraction(m.value) / 100, f"{self.text(m)}%")
            return
        plain = frozenset({Role.article, Role.version_word})
        before = self.neighbour(index, -1, plain)
        named_from = self.neighbour(index, -1, plain | {Role.module, Role.module_word})
        following = (
            self.neighbour(self.matches.index(after), 1, plain)
            if after is not None and after.value in _ARROWS
            else None
        )
        if (
            (following is not None and following.role is Role.version)
            or (named_from is not None and named_from.role is Role.from_)
            or (before is not None and before.role is Role.target_prep and before.value == "on")
        ):
            found.from_versions.append(m.value)
        elif before is not None and (
            before.role is Role.exclusion
            or (before.role is Role.negation and not self.cancelled(self.matches.index(before)))
        ):
            found.not_versions.append(m.value)
        else:
            found.versions.append(m.value)
            if before is not None and (
                (before.role is Role.target_prep and before.value in ("to", "onto", "into"))
                or before.value in _ARROWS
            ):
                found.to_versions.append(m.value)

    def read_share(self, index: int, share: Fraction, typed: str) -> None:
        """``half of the pumps``, ``25% of``: a share of the targets, unless it sizes a wave."""
        found = self.found
        after = self.neighbour(index, 1, frozenset({Role.article, Role.percent, Role.punct}))
        before = self.neighbour(index, -1, frozenset())
        if before is not None and before.role is Role.comparison:
            found.unsupported.append(f"{self.text(before)} {typed}")
        elif after is not None and after.role is Role.time:
            found.ignored.append(f"{typed} {self.text(after)}")
            self.used.add(self.matches.index(after))
        elif self.about_waves(index):
            found.wave_sizes.append(typed)
        else:
            found.limit_share = share
            found.limit_share_text = typed

    def read_back(self, index: int) -> None:
        """``put X back``, ``roll it back``, ``back to 1.8``: a rollback cue."""
        before = self.matches[max(0, index - 4) : index]
        after = self.neighbour(index, 1, frozenset())
        if any(b.role in (Role.weak_verb, Role.rollout) for b in before) or (
            after is None
            or after.role in (Role.target_prep, Role.site_prep, Role.punct, Role.version)
        ):
            self.found.back = True

    def read_number(self, index: int, m: Match) -> None:
        """A number is a count, a percentage, a version, a time, or noise."""
        found = self.found
        value = int(m.value)
        after = self.neighbour(index, 1, frozenset({Role.article}))
        before = self.neighbour(index, -1, frozenset())
        named = (Role.version_word, Role.module, Role.module_word)
        if before is not None and before.role is Role.comparison:
            unit = f" {self.text(after)}" if after is not None and after.role is Role.word else ""
            found.unsupported.append(f"{self.text(before)} {self.text(m)}{unit}")
            if unit and after is not None:
                self.used.add(self.matches.index(after))
        elif before is not None and before.role in named and m.role is Role.number:
            # "version 2", "vision-inspect 2"
            found.versions.append(m.value)
        elif self.about_waves(index):
            # "a canary of 5 devices", "a 10% canary": wave sizes are the planner's, not a limit
            found.wave_sizes.append(self.text(m) + ("%" if after and after.value == "%" else ""))
        elif after is not None and (after.role is Role.percent or after.value == "%"):
            self.read_share(index, Fraction(value, 100), f"{value}%")
        elif after is not None and (after.role is Role.time or after.value in (":", "h")):
            found.ignored.append(f"{self.text(m)} {self.text(after)}")
            self.used.add(self.matches.index(after))
        elif after is not None and (
            after.role in (Role.device_class, Role.class_head, Role.generic)
            or (after.role is Role.word and self.tokens[after.start].plural)
            or (before is not None and before.role is Role.limiter)
        ):
            found.limit = value
            if m.role is Role.vague_number:
                found.vague_limit = self.text(m)
        elif before is not None and before.role is Role.limiter:
            found.limit = value
        elif m.role is Role.number:
            found.ignored.append(self.text(m))

    def about_waves(self, index: int) -> bool:
        """Whether the number at ``index`` sizes a wave: ``canary of 5``, ``5-device canary``."""
        waves = (Role.canary, Role.staging)
        near = frozenset({Role.article, Role.filler, Role.limiter, Role.target_prep})
        before = self.neighbour(index, -1, near)
        if before is not None and before.role in waves:
            return True
        at = index + 1
        noun = near | _NOUNS | {Role.percent, Role.punct, Role.device_class}
        while at < len(self.matches) and at <= index + 3:
            m = self.matches[at]
            if m.role in waves:
                return True
            if m.role not in noun or (m.role is Role.punct and m.value != "%"):
                return False
            at += 1
        return False

    def read_leftovers(self) -> None:
        """Decide what unmatched words are: a site by prefix, an unknown name, or noise."""
        found = self.found
        prefixes = Counter(re.sub(r"[-\d]+$", "", s.id) for s in self.ctx.sites)
        by_prefix = {re.sub(r"[-\d]+$", "", s.id): s.id for s in self.ctx.sites}
        compounds: dict[int, list[int]] = {}
        for index, m in enumerate(self.matches):
            if m.role is not Role.word:
                continue
            token = self.tokens[m.start]
            if token.compound:
                compounds.setdefault(token.piece, []).append(index)
                continue
            after = self.neighbour(index, 1, frozenset())
            if m.value in _PLACE_WORDS and self.names_place(index):
                continue
            if m.value in by_prefix and prefixes[m.value] == 1:
                if after is not None and after.role is Role.number:
                    found.unknown_sites.append(f"{m.value}-{self.text(after)}")
                else:
                    found.sites.append(by_prefix[m.value])
                continue
            before, skipped = self.walk_back(index)
            place = before is not None and before.role is Role.site_prep
            towards = before is not None and before.role is Role.target_prep
            if (place and not skipped & {"a", "an"}) or (towards and self.proper_noun(m)):
                found.unknown_sites.append(token.raw)
            elif towards and (token.plural or (after is not None and after.role in _NOUNS)):
                found.unknown_classes.append(self.unknown_run(index))
            else:
                found.ignored.append(token.raw)
        for piece, indexes in compounds.items():
            raw = "-".join(t.raw for t in self.tokens if t.piece == piece).lower()
            first = next(
                i for i, m in enumerate(self.matches) if self.tokens[m.start].piece == piece
            )
            before, _ = self.walk_back(first)
            towards = before is not None and before.role is Role.target_prep
            last = self.tokens[max(self.matches[i].start for i in indexes)]
            if _SITE_LIKE.match(raw) or _REGION_LIKE.match(raw):
                found.unknown_sites.append(raw)
            elif raw.split("-")[-1] in _CLASS_HEADS or (towards and last.plural):
                found.unknown_classes.append(raw)
            elif before is not None and before.role is Role.site_prep:
                found.unknown_sites.append(raw)
            elif any(t.piece == piece and t.kind == "word" for t in self.tokens):
                found.unknown_names.append(raw)
            else:
                found.ignored.extend(self.text(self.matches[i]) for i in indexes)
        if not found.modules and not found.module_words and not found.unknown_names:
            found.unknown_names.extend(self.name_before_version())

    def names_place(self, index: int) -> bool:
        """Whether the place word at ``index`` only marks a place (``at site rtm-05``)."""
        before = self.neighbour(index, -1, frozenset())
        if before is not None and before.role in (*_PLACES, Role.label):
            return True
        after = self.neighbour(index, 1, frozenset())
        if after is not None and after.value == ":":
            after = self.neighbour(self.matches.index(after), 1, frozenset())
        if after is None:
            return False
        if after.role in _PLACES:
            return True
        token = self.tokens[after.start]
        raw = "-".join(t.raw for t in self.tokens if t.piece == token.piece).lower()
        return token.compound and bool(_SITE_LIKE.match(raw) or _REGION_LIKE.match(raw))

    def walk_back(self, index: int) -> tuple[Match | None, set[str]]:
        """The nearest telling match before ``index``, past articles, numbers and unknown words.

        Returns:
            That match (None at the start) and the words skipped on the way.
        """
        skip = _SKIPPABLE | {Role.number, Role.number_word, Role.word}
        skipped: set[str] = set()
        at = index - 1
        while at >= 0 and self.matches[at].role in skip:
            skipped.add(self.matches[at].value)
            at -= 1
        return (self.matches[at] if at >= 0 else None), skipped

    def proper_noun(self, m: Match) -> bool:
        """Whether the word is capitalised mid-sentence, like a place name (``Rotterdam``)."""
        token = self.tokens[m.start]
        if not token.raw[:1].isupper() or (token.raw.isupper() and len(token.raw) <= 2):
            return False
        return m.start > 0 and self.tokens[m.start - 1].text not in (".", "!", "?", ":")

    def unknown_run(self, index: int) -> str:
        """The run of unknown words ending at ``index``, e.g. ``weather stations``."""
        start = index
        while start > 0 and self.matches[start - 1].role is Role.word:
            start -= 1
        return " ".join(self.text(m) for m in self.matches[start : index + 1])

    def name_before_version(self) -> list[str]:
        """Unknown words right before the version or right after the verb: a module name."""
        words: list[str] = []
        for index, m in enumerate(self.matches):
            if m.role is Role.version:
                at = index - 1
                while at >= 0 and self.matches[at].role in (Role.word, Role.version_word):
                    if self.matches[at].role is Role.word:
                        words.insert(0, self.tokens[self.matches[at].start].raw)
                    at -= 1
                if words:
                    return ["-".join(w.lower() for w in words)]
        for index, m in enumerate(self.matches):
            if m.role in (Role.rollout, Role.rollback):
                at = index + 1
                while at < len(self.matches) and self.matches[at].role is Role.article:
                    at += 1
                while at < len(self.matches) and self.matches[at].role is Role.word:
                    words.append(self.tokens[self.matches[at].start].raw)
                    at += 1
                if words:
                    return ["-".join(w.lower() for w in words)]
        return []


# --- versions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _VersionSpec:
    """A version as typed: exact (``2.4.1``, ``2.0.0-rc1``) or a prefix (``2.4``, ``v2``)."""

    typed: str
    release: tuple[int, ...]
    exact: Version | None

    @classmethod
    def parse(cls, typed: str) -> _VersionSpec | None:
        text = typed.lower().removeprefix("v")
        text = re.sub(r"\.[x*]$", "", text)
        wildcard = text != typed.lower().removeprefix("v")
        try:
            version = Version(text)
        except InvalidVersion:
            return None
        release = version.release
        exact = version if (version.pre or version.dev or len(release) >= 3) else None
        if wildcard:
            exact = None
        return cls(typed, tuple(release), exact)

    def matches(self, item: CatalogItem) -> bool:
        """Whether the catalog entry has this version."""
        return self.matches_version(item.parsed_version)

    def matches_version(self, version: Version) -> bool:
        """Whether ``version`` is this version, or starts with this prefix."""
        if self.exact is not None:
            return version == self.exact
        return version.release[: len(self.release)] == self.release


def _runs(typed: str, running: Sequence[str]) -> bool:
    """Whether a version as typed (``1.8``, ``1.8.0``) is one of the versions ``running``."""
    spec = _VersionSpec.parse(typed)
    return spec is None or any(spec.matches_version(parse_version(v)) for v in running)


def _newest_release(items: Sequence[CatalogItem]) -> CatalogItem | None:
    releases = [i for i in items if not i.prerelease]
    return max(releases, key=lambda i: i.parsed_version) if releases else None


def _versions_text(items: Sequence[CatalogItem]) -> str:
    return ", ".join(i.version for i in items)


# --- resolving against the context ----------------------------------------------------------


def _closest(word: str, options: Sequence[str], limit: int = 3) -> list[str]:
    lowered = word.lower()
    prefix = [o for o in options if o.split("-")[0] and lowered.startswith(o.split("-")[0])]
    close = difflib.get_close_matches(lowered, options, n=limit, cutoff=0.55)
    picked = list(dict.fromkeys([*prefix, *close]))[:limit]
    return picked or list(options)


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _devices_phrase(scope: Scope) -> str:
    """Name the devices of ``scope`` in words: ``the env-sensor devices at lyon-02``."""
    if scope.devices:
        return "devices " + ", ".join(scope.devices)
    kinds = f"{' and '.join(scope.classes)} devices" if scope.classes else "devices"
    places = []
    if scope.sites:
        places.append("at " + ", ".join(scope.sites))
    if scope.regions:
        places.append("in " + ", ".join(scope.regions))
    return f"the {kinds} " + (" ".join(places) if places else "across the fleet")


def _module_classes(ctx: PlanningContext, module: str) -> set[str]:
    return {c for item in ctx.releases(module) for c in item.device_classes}


@dataclass(frozen=True)
class Targets:
    """Devices, as groups with counts and explicit ids."""

    groups: list[DeviceGroup]
    """Groups of the devices, each with how many of its devices are meant."""
    explicit: list[str]
    """Explicit device ids whose facts are not in any single group (counted as fitting)."""

    @property
    def count(self) -> int:
        """How many devices, explicit ids included."""
        return sum(g.count for g in self.groups) + len(self.explicit)

    def installed(self, module: str) -> Counter[str | None]:
        """How many of the grouped devices run each version of ``module`` (None: not installed)."""
        counts: Counter[str | None] = Counter()
        for group in self.groups:
            counts[group.installed.get(module)] += group.count
        return counts


def _device_group(ctx: PlanningContext, device_id: str) -> DeviceGroup | None:
    """The group a generated device id (``{site}-{class}-{nn}``) belongs to, if unique."""
    for site in sorted(ctx.sites, key=lambda s: len(s.id), reverse=True):
        if device_id.startswith(site.id + "-"):
            rest = device_id[len(site.id) + 1 :]
            found = [
                g for g in ctx.groups if g.site == site.id and rest.startswith(g.device_class + "-")
            ]
            return found[0] if len(found) == 1 else None
    return None


def select_groups(ctx: PlanningContext, selector: Selector) -> Targets:
    """Devices ``selector`` picks, as groups with counts (its ``limit`` aside).

    Explicit device ids count one each in their group; ids whose group cannot be told from the
    id are kept as explicit and counted as picked.
    """
    if not selector.devices:
        return Targets(ctx.groups_for(selector), [])
    groups: list[DeviceGroup] = []
    explicit: list[str] = []
    in_scope = ctx.groups_for(selector.model_copy(update={"devices": []}))
    for device_id in selector.devices:
        group = _device_group(ctx, device_id)
        if group is None:
            explicit.append(device_id)
        elif group in in_scope:
            groups.append(group.model_copy(update={"count": 1}))
    return Targets(groups, explicit)


def find_targets(ctx: PlanningContext, scope: Scope, fits: Sequence[CatalogItem]) -> Targets:
    """Devices in ``scope`` that at least one of ``fits`` can run (counts from groups)."""
    found = select_groups(ctx, scope.selector())
    return Targets(
        [g for g in found.groups if any(item.fits_group(g) for item in fits)], found.explicit
    )


class _Resolver:
    """Turn a reading into an intent or a question."""

    def __init__(self, reading: _Reading, ctx: PlanningContext) -> None:
        self.r = reading
        self.ctx = ctx
        self.notes: list[str] = []
        self.context_versions: list[str] = []
        """Versions named besides the one after ``to`` (``2.4.1 is misbehaving``)."""

    def resolve(self) -> Intent | Clarification:
        r = self.r
        ctx = self.ctx
        if r.question and not r.verbs:
            return Clarification(
                reason="unclear_action",
                question=(
                    "That reads as a question, not a request. Should I plan a rollout or a "
                    "rollback? Name the module and version, e.g. 'roll out pump-logic 1.9.0 "
                    "to rtm-05'."
                ),
                candidates=["rollout", "rollback"],
            )
        if r.held_back is not None:
            named = list(dict.fromkeys(r.modules or r.module_words))
            return Clarification(
                reason="unclear_action",
                question=(
                    f"You said '{r.held_back}', so I read this as asking me not to act, or not "
                    "yet: I will not plan or change anything. What would you like me to do: "
                    "nothing for now, a rollout (say when), or a rollback?"
                ),
                candidates=["nothing", "rollout", "rollback"],
                module=named[0] if len(named) == 1 else None,
            )
        if not (r.verbs or r.weak_verb or r.back or r.modules or r.versions):
            return Clarification(
                reason="unclear_action",
                question=(
                    "I could not tell what to do. Ask for a rollout or a rollback of a module, "
                    "e.g. 'roll out hvac-controller 2.4.1 to ber-03'."
                ),
                candidates=["rollout", "rollback"],
            )
        module = self.resolve_module()
        if isinstance(module, Clarification):
            return module
        action = self.resolve_action(module)
        if isinstance(action, Clarification):
            return action
        scope = self.resolve_scope(module)
        if isinstance(scope, Clarification):
            return scope
        releases = ctx.releases(module)
        scope_targets = find_targets(ctx, scope, releases)
        if scope_targets.count == 0:
            return self.no_targets(module, scope, releases, None)
        chosen = self.resolve_version(module, action, scope, scope_targets)
        if isinstance(chosen, Clarification):
            return chosen
        item, version_reason = chosen
        targets = find_targets(ctx, scope, [item])
        if targets.count == 0:
            return self.no_targets(module, scope, releases, item)
        installed = targets.installed(module)
        checked = self.check_movement(action, item, scope, installed)
        if checked is not None:
            return checked
        limit = self.resolve_limit(targets.count)
        if scope.is_everything and not r.everywhere:
            self.notes.append(f"no site, region or class named: every device that {item.ref} fits")
        running = sorted(v for v in installed if v is not None)
        for typed in r.from_versions:
            if not _runs(typed, running):
                self.notes.append(
                    f"you said from {typed}, but the targets run {', '.join(running)}"
                    if running
                    else f"you said from {typed}, but no target runs {module} yet"
                )
        for typed in self.context_versions:
            if _runs(typed, running):
                known = "what the targets run now"
            else:
                known = f"context (the targets run {', '.join(running) or 'none of ' + module})"
            self.notes.append(
                f"named {typed} as well: planned {item.version}, the version after 'to'; "
                f"{typed} read as {known}"
            )
        for typed in r.not_versions:
            self.notes.append(f"not {typed}: left out, as asked")
        if r.wave_sizes:
            self.notes.append(
                f"asked for waves of {', '.join(r.wave_sizes)}: the planner sizes waves itself "
                "(a canary of at most 5% above 10 targets, then growing waves)"
            )
        same = installed.get(item.version, 0)
        if same:
            self.notes.append(f"{same} of the devices in scope already run {item.version}")
        return Intent(
            action=action,
            module=module,
            version=item.version,
            version_reason=version_reason,
            scope=scope.model_copy(update={"limit": limit}),
            flags=RequestFlags(**r.flags),
            ignored=list(dict.fromkeys(r.ignored)),
            notes=self.notes,
        )

    def resolve_module(self) -> str | Clarification:
        r = self.r
        ctx = self.ctx
        named = list(dict.fromkeys(r.modules)) or list(dict.fromkeys(r.module_words))
        if len(named) > 1:
            return Clarification(
                reason="several_modules",
                question=(
                    f"A plan installs one module; you named {', '.join(named)}. "
                    "Which one should I plan first?"
                ),
                candidates=named,
            )
        if named:
            if not r.modules:
                self.notes.append(f"'{named[0]}' read from a part of its name")
            return named[0]
        if r.unknown_names:
            name = r.unknown_names[0]
            return Clarification(
                reason="unknown_module",
                question=(
                    f"There is no module called '{name}' in the catalog. Did you mean one of these?"
                ),
                candidates=_closest(name, ctx.module_names),
            )
        # no module named: infer it only when the version and the devices leave one choice
        specs = [s for s in (_VersionSpec.parse(v) for v in r.versions) if s is not None]
        scope = Scope(
            sites=list(dict.fromkeys(r.sites)),
            regions=self.regions(),
            classes=list(dict.fromkeys(r.classes)),
        )
        fitting = []
        for name in ctx.module_names:
            releases = ctx.releases(name)
            if specs and not any(spec.matches(i) for spec in specs for i in releases):
                continue
            if find_targets(ctx, scope, releases).count:
                fitting.append(name)
        if specs and len(fitting) == 1:
            self.notes.append(
                f"no module named: {fitting[0]} is the only module with version "
                f"{r.versions[0]} for these devices"
            )
            return fitting[0]
        return Clarification(
            reason="unknown_module",
            question=f"Which module should I plan for {_devices_phrase(scope)}?",
            candidates=fitting or ctx.module_names,
        )

    def resolve_action(self, module: str) -> PlanIntent | Clarification:
        r = self.r
        if Role.rollback in r.verbs or r.back or (r.previous and Role.rollout not in r.verbs):
            return PlanIntent.rollback
        if Role.rollout in r.verbs or r.weak_verb:
            return PlanIntent.rollout
        if r.versions:
            self.notes.append("no verb: read as a rollout of the named version")
            return PlanIntent.rollout
        return Clarification(
            reason="unclear_action",
            question=f"Should I roll {module} out to a newer version, or roll it back?",
            candidates=["rollout", "rollback"],
            module=module,
        )

    def regions(self) -> list[str]:
        regions = list(dict.fromkeys(self.r.regions))
        for prefix in self.r.region_groups:
            regions += [g for g in self.ctx.regions if g.split("-")[0] == prefix]
        return list(dict.fromkeys(regions))

    def resolve_scope(self, module: str) -> Scope | Clarification:
        r = self.r
        ctx = self.ctx
        if r.unknown_sites:
            word = r.unknown_sites[0]
            options = [s.id for s in ctx.sites] + ctx.regions
            return Clarification(
                reason="unknown_site",
                question=f"I do not know a site or region called '{word}'. Which one did you mean?",
                candidates=_closest(word, options),
                module=module,
            )
        classes = list(dict.fromkeys(r.classes))
        module_classes = _module_classes(ctx, module)
        if r.unknown_classes:
            word = r.unknown_classes[0]
            present = [c for c in ctx.device_classes if c in module_classes]
            return Clarification(
                reason="unknown_class",
                question=(
                    f"I do not know a device class called '{word}'. {module} runs on "
                    f"{', '.join(sorted(module_classes))}. Which devices did you mean?"
                ),
                candidates=present or sorted(module_classes),
                module=module,
            )
        for word, owners in r.class_heads:
            fitting = [c for c in owners if c in module_classes]
            if not fitting:
                return Clarification(
                    reason="unknown_class",
                    question=(
                        f"'{word}' could mean {', '.join(owners)}, but {module} runs on "
                        f"{', '.join(sorted(module_classes))}. Which devices did you mean?"
                    ),
                    candidates=owners,
                    module=module,
                )
            if len(fitting) < len(owners) or len(fitting) > 1:
                self.notes.append(f"'{word}' read as {', '.join(fitting)}")
            classes += fitting
        if r.unsupported:
            return Clarification(
                reason="unsupported_scope",
                question=(
                    "A plan picks devices by site, region, device class or site label; it "
                    f"cannot express '{r.unsupported[0]}'. Which sites, regions or classes "
                    "should it cover?"
                ),
                candidates=[],
                module=module,
            )
        scope = Scope(
            sites=list(dict.fromkeys(r.sites)),
            regions=self.regions(),
            classes=list(dict.fromkeys(classes)),
            devices=list(dict.fromkeys(r.devices)),
            labels=dict(r.labels),
        )
        return self.leave_out(module, scope, module_classes)

    def leave_out(
        self, module: str, scope: Scope, module_classes: set[str]
    ) -> Scope | Clarification:
        """Apply exclusions by listing what is left: a selector only ever narrows."""
        r = self.r
        ctx = self.ctx
        if r.excluded_classes:
            base = scope.classes or [c for c in ctx.device_classes if c in module_classes]
            kept = [c for c in base if c not in r.excluded_classes]
            self.notes.append(
                f"leaving out {', '.join(r.excluded_classes)}: classes listed one by one"
            )
            scope = scope.model_copy(update={"classes": kept})
            if not kept:
                return self.no_targets(module, scope, ctx.releases(module), None)
        if r.excluded_sites or r.excluded_regions or r.excluded_labels:
            releases = ctx.releases(module)
            in_scope = sorted(
                {
                    g.site
                    for g in ctx.groups_for(scope.selector())
                    if any(i.fits_group(g) for i in releases)
                }
            )
            dropped = set(r.excluded_sites) | {
                s.id
                for s in ctx.sites
                if s.region in r.excluded_regions
                or any(s.labels.get(k) == v for k, v in r.excluded_labels.items())
            }
            kept = [site for site in in_scope if site not in dropped]
            left_out = sorted(dropped & set(in_scope)) or sorted(dropped)
            self.notes.append(f"leaving out {', '.join(left_out)}: sites listed one by one")
            if not kept:
                return self.no_targets(module, scope, releases, None)
            scope = scope.model_copy(update={"sites": kept})
        return scope

    def no_targets(
        self,
        module: str,
        scope: Scope,
        releases: Sequence[CatalogItem],
        item: CatalogItem | None,
    ) -> Clarification:
        ctx = self.ctx
        fits = [item] if item is not None else list(releases)
        sites_with = sorted({g.site for g in ctx.groups if any(i.fits_group(g) for i in fits)})
        what = item.ref if item is not None else module
        hardware = ""
        if item is not None:
            hardware = (
                f" ({', '.join(item.device_classes)}; {', '.join(item.arch)}; "
                f"at least {item.min_memory_mb} MiB)"
            )
        return Clarification(
            reason="no_targets",
            question=(
                f"None of {_devices_phrase(scope)} can run {what}{hardware}. "
                "Where should it go instead?"
            ),
            candidates=sites_with,
            module=module,
        )

    def resolve_version(
        self, module: str, action: PlanIntent, scope: Scope, targets: Targets
    ) -> tuple[CatalogItem, str] | Clarification:
        r = self.r
        ruled_out = [s for s in (_VersionSpec.parse(v) for v in r.not_versions) if s is not None]
        releases = [
            i for i in self.ctx.releases(module) if not any(s.matches(i) for s in ruled_out)
        ]
        stable = [i for i in releases if not i.prerelease]
        wanted = list(dict.fromkeys(r.versions))
        specs = [s for s in (_VersionSpec.parse(v) for v in wanted) if s is not None]
        picks = {
            pick.version: pick for spec in specs if (pick := self.pick(spec, releases)) is not None
        }
        if len(picks) > 1:
            # "from 1.8.0 to 1.9.0", "back to 2.3.4, 2.4.1 is misbehaving": "to" names the target
            to_specs = [s for s in specs if s.typed in r.to_versions]
            to_picks = {p.version for s in to_specs if (p := self.pick(s, releases)) is not None}
            if len(to_picks) == 1:
                target = next(iter(to_picks))
                self.context_versions = [s.typed for s in specs if s.typed not in r.to_versions]
                specs = [s for s in to_specs if s.matches(picks[target])]
                picks = {target: picks[target]}
        if len(picks) > 1:
            return Clarification(
                reason="version_ambiguous",
                question=f"You named several versions of {module}. Which one should I plan?",
                candidates=list(picks),
                module=module,
            )
        if specs and not picks:
            shown = stable or releases
            return Clarification(
                reason="unknown_version",
                question=(
                    f"{module} has no version {specs[0].typed} in the catalog. "
                    f"Known versions: {_versions_text(shown)}. Which one?"
                ),
                candidates=[i.version for i in shown],
                module=module,
            )
        if picks:
            item = next(iter(picks.values()))
            spec = specs[0]
            if spec.exact is not None:
                return item, "named in the request"
            return item, f"newest {spec.typed.lower().removeprefix('v')}.x release"
        installed = targets.installed(module)
        versions = sorted((parse_version(v) for v in installed if v is not None), key=lambda v: v)
        if r.latest and action is PlanIntent.rollout:
            newest = _newest_release(releases)
            if newest is not None:
                return newest, "newest release, as asked"
        devices = _devices_phrase(scope)
        if action is PlanIntent.rollout:
            lowest = versions[0] if versions else None
            newer = [i for i in stable if lowest is None or i.parsed_version > lowest]
            if len(newer) == 1:
                return newer[0], "the only release newer than what the targets run"
            if not newer:
                return Clarification(
                    reason="up_to_date",
                    question=(
                        f"{_capitalised(devices)} already run the newest release of {module} "
                        f"({_versions_text(stable[-1:])}). Which version did you want?"
                    ),
                    candidates=[i.version for i in stable],
                    module=module,
                )
            running = ", ".join(str(v) for v in versions) or "no version of it"
            skipped = [i.version for i in releases if i.prerelease]
            note = f" ({', '.join(skipped)} is a prerelease; name it to get it)" if skipped else ""
            return Clarification(
                reason="version_ambiguous",
                question=(
                    f"Which version of {module} should {devices} get? They run "
                    f"{running}; newer releases: {_versions_text(newer)}{note}."
                ),
                candidates=[i.version for i in newer],
                module=module,
            )
        if not versions:
            return Clarification(
                reason="no_targets",
                question=f"None of {devices} runs {module}, so there is nothing to roll back.",
                candidates=[],
                module=module,
            )
        highest = versions[-1]
        older = [i for i in stable if i.parsed_version < highest]
        distinct = sorted(set(versions))
        if len(distinct) == 2 and any(i.parsed_version == distinct[0] for i in stable):
            item = next(i for i in stable if i.parsed_version == distinct[0])
            return item, f"the version the rest of the targets still run ({item.version})"
        if older and (len(older) == 1 or r.previous):
            return older[-1], f"the release before {highest}"
        return Clarification(
            reason="version_ambiguous" if older else "unknown_version",
            question=(
                f"Which version should {module} go back to on {devices}? They run {highest}; "
                f"older releases: {_versions_text(older) or 'none'}."
            ),
            candidates=[i.version for i in older],
            module=module,
        )

    @staticmethod
    def pick(spec: _VersionSpec, releases: Sequence[CatalogItem]) -> CatalogItem | None:
        found = [i for i in releases if spec.matches(i)]
        if spec.exact is not None:
            return found[0] if found else None
        return _newest_release(found)

    def check_movement(
        self,
        action: PlanIntent,
        item: CatalogItem,
        scope: Scope,
        installed: Counter[str | None],
    ) -> Clarification | None:
        """Refuse to plan a no-op, and a 'rollback' that would move devices forward."""
        running = [parse_version(v) for v in installed if v is not None]
        devices = _devices_phrase(scope)
        if running and all(v == item.parsed_version for v in running) and None not in installed:
            return Clarification(
                reason="up_to_date",
                question=(
                    f"{_capitalised(devices)} already run {item.ref}. Nothing to do; did you "
                    "mean other devices or another version?"
                ),
                candidates=[i.version for i in self.ctx.releases(item.name) if not i.prerelease],
                module=item.name,
            )
        if action is PlanIntent.rollback:
            if running and all(v < item.parsed_version for v in running):
                return Clarification(
                    reason="unclear_action",
                    question=(
                        f"{item.version} is newer than what {devices} run "
                        f"({', '.join(sorted({str(v) for v in running}))}); that is a rollout, "
                        "not a rollback. Should I plan a rollout?"
                    ),
                    candidates=["rollout", "rollback"],
                    module=item.name,
                )
        elif running and all(v > item.parsed_version for v in running):
            self.notes.append(
                f"{item.version} is older than what every target runs: this moves them back"
            )
        return None

    def resolve_limit(self, total: int) -> int | None:
        r = self.r
        limit = r.limit
        if r.limit_share is not None:
            exact = total * r.limit_share
            limit = max(1, math.floor(exact))
            rounded = "" if exact == limit else " (rounded down, at least one)"
            self.notes.append(f"{r.limit_share_text} of {total} targets is {limit}{rounded}")
        if limit is None:
            return None
        if r.vague_limit:
            self.notes.append(f"'{r.vague_limit}' read as {limit} devices")
        if limit >= total:
            self.notes.append(f"asked for {limit} devices; {total} match, so all of them")
            return None
        return limit


def understand(request: str, ctx: PlanningContext) -> Intent | Clarification:
    """Resolve the engineer's request against the planning context.

    Args:
        request: What the engineer typed. Only the engineer's words: never telemetry, labels,
            manifest descriptions or tickets.
        ctx: The fleet and catalog summary.

    Returns:
        The intent, or a question when the module, version, site, class or action is unclear.
    """
    tokens = tokenize(request, [s.id for s in ctx.sites])
    matches = match(tokens, build_lexicon(ctx))
    reading = _Reader(tokens, matches, ctx).read()
    return _Resolver(reading, ctx).resolve()
