"""Read an engineer's request: what it names, before any of it is checked against the fleet.

Only the engineer's own words come in here. Telemetry, labels, manifest descriptions and tickets
are untrusted and never reach the reader, so nothing in them can name a target, a version or
a flag.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from fieldgate.agents._summary import PlanningContext
from fieldgate.agents.offline.lexicon import Match, Role, Token
from fieldgate.agents.offline.nearest import resembles
from fieldgate.agents.offline.ordinary import is_common, is_ordinary
from fieldgate.agents.offline.phrases import ARROWS, ENTITIES, SKIPPABLE, Phrases

_SITE_LIKE = re.compile(r"^[a-z]{2,8}-?\d{1,4}$")
_REGION_LIKE = re.compile(
    r"^[a-z]{2}-(north|south|east|west|central|northeast|northwest|southeast|southwest)(-\d)?$"
)
_CLASS_HEADS = frozenset(
    {"gw", "ctl", "ctrl", "sensor", "node", "gateway", "controller", "cam", "camera", "unit"}
)
_NOUNS = frozenset({Role.class_head, Role.generic})
_PLACE_WORDS = frozenset(
    {"site", "location", "plant", "station", "region", "facility", "depot", "campus"}
)
"""Words that only say the next id is a place: ``at site rtm-05``, ``in region eu-west``."""
_TROUBLE = (
    "broke", "break", "crash", "bug", "causing", "caus", "making", "make", "made", "fail",
    "fault", "misbehav", "regress", "bad", "brick", "hang", "hung", "leak", "problem", "issue",
    "error", "trouble", "wrong", "glitch", "corrupt", "unstable", "flak", "reboot", "kill",
    "stuck", "freez", "froze", "trigger", "introduc", "slow", "worse", "spam", "drain",
    "chatter", "flicker", "overheat", "degrad", "mess", "screw", "no good", "buggy", "panic",
)  # fmt: skip
"""Word beginnings that say a version named right before them is trouble, so it is the reason."""
_FIXES = ("fix", "solv", "resolv", "repair", "cure", "address")
_SENTENCE_ENDS = frozenset({".", "!", "?", ";", "\n"})
_REQUEST_CONTENT = frozenset(
    {
        Role.module,
        Role.module_word,
        Role.version,
        Role.rollout,
        Role.rollback,
        Role.weak_verb,
        Role.back,
        Role.site,
        Role.region,
        Role.region_group,
        Role.device_class,
        Role.class_head,
        Role.device,
        Role.everywhere,
        Role.label,
    }
)
"""What makes a sentence part of the request rather than context around it."""


_QUESTION_LEAD = frozenset({Role.filler, Role.clause, Role.punct, Role.limiter, Role.word})
"""What may come before the question word of a question (``so basically, if you could just``)."""


def _ends_sentence(m: Match) -> bool:
    return m.role is Role.punct and m.value in _SENTENCE_ENDS


_WAVE_WORDS = frozenset({Role.canary, Role.staging})
_START_WORDS = frozenset({"start", "starting", "begin", "beginning", "starts", "begins", "kick"})
_LOOSE_PREPS = frozenset({"for", "over"})
"""Prepositions that name what a request is for as often as where (``for Ana``, ``over lunch``)."""
_PLACES = frozenset({Role.site, Role.region, Role.region_group, Role.device})


@dataclass
class Reading:
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
    """Wave or canary sizes the engineer asked for, as typed."""
    canary: int | None = None
    canary_percent: float | None = None
    wave_count: int | None = None
    wave_size: int | None = None
    wave_percent: float | None = None
    reason_versions: list[str] = field(default_factory=list)
    """Versions named as the reason (``2.4.1 is making the valves chatter``), not as targets."""
    because: list[str] = field(default_factory=list)
    """The reasons as typed."""
    context: list[str] = field(default_factory=list)
    """Context read as such: ticket ids, dates, people, side fields of a ticket."""
    aside: set[str] = field(default_factory=set)
    """Unknown names in sentences that ask for nothing (context, unless nothing else narrows)."""
    unresolved_places: list[str] = field(default_factory=list)
    """Objects of place prepositions that resolved to nothing (``the north sea platform``)."""
    kind_notes: list[str] = field(default_factory=list)
    """How words naming a kind of site were read (``'field' read as the field sites``)."""
    rest: bool = False
    """``the rest``, ``the others``, ``those still on 1.8.0``: devices not yet on the target."""
    times: list[str] = field(default_factory=list)
    """Times of day and dates as typed (``tonight``, ``monday``): plans start now or in
    maintenance windows, so these change nothing (they are among ``ignored`` too)."""
    canary_named: bool = False
    """Whether the request speaks of the first wave (``the canary``, ``the first wave``)."""
    flags: dict[str, bool] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


class Reader(Phrases):
    """Walk the matched phrases of one request and collect what they say."""

    def __init__(
        self,
        tokens: list[Token],
        matches: list[Match],
        ctx: PlanningContext,
        tickets: Sequence[str] = (),
    ) -> None:
        super().__init__(tokens, matches)
        self.ctx = ctx
        self.tickets = {t.lower() for t in tickets}
        """Ticket-shaped ids in the request (``CHG-1234``): context unless meant as a place."""
        self.found = Reading()
        self.used: set[int] = set()
        self.place_names = [s.id for s in ctx.sites] + ctx.regions

    def flag(self, name: str) -> None:
        self.found.flags[name] = True

    def read(self) -> Reading:
        found = self.found
        found.question = self.asks_a_question()
        for index, m in enumerate(self.matches):
            if index in self.used:
                continue
            if m.role in ENTITIES and self.excluded(index):
                self.excluded_at.add(index)
                self.read_excluded(index, m)
            else:
                self.read_one(index, m)
        self.read_leftovers()
        found.held_back = self.holding_back()
        return found

    def asks_a_question(self) -> bool:
        """Whether a sentence ending in ``?`` starts its clause with a question word.

        ``which version runs in eu-west?``, ``so, if you could just: what runs at rtm-05?``;
        not ``can you roll out pump-logic 1.9.0 to rtm-05?``.
        """
        for index, m in enumerate(self.matches):
            if not (m.role is Role.punct and m.value == "?"):
                continue
            at = index - 1
            while at >= 0 and not _ends_sentence(self.matches[at]):
                at -= 1
            words = [w for w in self.matches[at + 1 : index] if w.role not in _QUESTION_LEAD]
            if words and words[0].role is Role.question:
                return True
        return False

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
            found.canary_named = True
            if self.negated(index):
                self.flag("skip_canary")
        elif role is Role.no_canary:
            self.flag("skip_canary")
        elif role is Role.staging:
            before = self.neighbour(index, -1, frozenset({Role.article}))
            if before is not None and before.role is Role.limiter and before.value == "first":
                found.canary_named = True
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
            found.times.append(self.text(m))
        elif role is Role.rest:
            found.rest = True

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
        reason = self.reason_at(index)
        if reason is not None:
            # "4.7.1 is making the valves chatter": the version is why, not where to go
            found.reason_versions.append(m.value)
            found.because.append(reason)
            return
        plain = frozenset({Role.article, Role.version_word})
        before = self.neighbour(index, -1, plain)
        named_from = self.neighbour(index, -1, plain | {Role.module, Role.module_word})
        following = (
            self.neighbour(self.matches.index(after), 1, plain)
            if after is not None and after.value in ARROWS
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
                or before.value in ARROWS
            ):
                found.to_versions.append(m.value)

    def reason_at(self, index: int) -> str | None:
        """The reason the version at ``index`` is named with, if it is named as one.

        ``2.4.1 is making the valves chatter``, ``2.4.0 keeps crashing``, ``1.9.0 broke the
        integration``: a version followed within a few words by trouble, unless it comes right
        after ``to`` or an arrow (then it is where to go, whatever follows).
        """
        before = self.neighbour(index, -1, frozenset({Role.article, Role.version_word}))
        if before is not None and (
            (before.role is Role.target_prep and before.value in ("to", "onto", "into"))
            or before.value in ARROWS
        ):
            return None
        start = self.matches[index].end
        window = []
        for token in self.tokens[start : start + 4]:
            if token.kind == "punct" or token.kind == "version":
                break
            window.append(token.text)
        if any(w.startswith(_FIXES) for w in window):
            return None
        if not any(w.startswith(_TROUBLE) for w in window):
            return None
        return self.clause_around(index)

    def clause_around(self, index: int) -> str:
        """The words of the clause the match at ``index`` stands in, as typed."""
        first = index
        while first > 0 and not self.ends_clause(self.matches[first - 1]):
            first -= 1
        last = index
        while last + 1 < len(self.matches) and not self.ends_clause(self.matches[last + 1]):
            last += 1
        tokens = self.tokens[self.matches[first].start : self.matches[last].end]
        pieces: dict[int, list[str]] = {}
        for token in tokens:
            pieces.setdefault(token.piece, []).append(token.raw)
        return " ".join("-".join(raws) for raws in pieces.values())

    @staticmethod
    def ends_clause(m: Match) -> bool:
        return (m.role is Role.punct and m.value not in ("%", *ARROWS)) or m.role in (
            Role.clause,
            Role.rollout,
            Role.rollback,
            Role.weak_verb,
            Role.back,
        )

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
            self.read_wave_ask(index, float(share * 100), typed, percent=True)
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
        elif self.first_then_rest(index, before):
            # "first 3 then the rest": a canary of 3, then everything else
            found.canary = value
            found.wave_sizes.append("first " + self.text(m))
        elif self.goes_first(index):
            # "two first", "start with 2 devices": a canary size, not a limit
            found.canary = value
            found.wave_sizes.append(self.text(m) + " first")
        elif self.about_waves(index):
            # "a canary of 5 devices", "a 10% canary", "in 3 waves": wave sizes, not a limit
            percent = after is not None and (after.role is Role.percent or after.value == "%")
            typed = self.text(m) + ("%" if percent else "")
            self.read_wave_ask(index, float(value), typed, percent=percent)
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

    def first_then_rest(self, index: int, before: Match | None) -> bool:
        """Whether ``first N`` is followed by ``then the rest`` (``first 3, then the others``)."""
        if before is None or before.role is not Role.limiter or before.value != "first":
            return False
        later = self.matches[index + 1 :]
        for at, m in enumerate(later):
            if m.role is Role.clause and m.value == "then":
                return any(n.role in (Role.rest, Role.everywhere) for n in later[at + 1 : at + 5])
        return False

    def goes_first(self, index: int) -> bool:
        """Whether the number at ``index`` says how many go first (``two first``)."""
        after = self.neighbour(index, 1, _NOUNS | {Role.article, Role.device_class})
        if after is not None and after.role is Role.limiter and after.value == "first":
            further = self.neighbour(self.matches.index(after), 1, frozenset())
            return further is None or further.role in (Role.punct, Role.clause, Role.filler)
        start = self.matches[index].start
        words = [t.text for t in self.tokens[max(0, start - 2) : start]]
        return len(words) == 2 and words[1] == "with" and words[0] in _START_WORDS

    def read_wave_ask(self, index: int, value: float, typed: str, *, percent: bool) -> None:
        """Record a canary or wave size: ``a canary of 2``, ``in 3 waves``, ``waves of 10``."""
        found = self.found
        found.wave_sizes.append(typed)
        near = frozenset({Role.article, Role.filler, Role.limiter, Role.target_prep})
        before = self.neighbour(index, -1, near)
        after = self.neighbour(index, 1, near | _NOUNS | {Role.percent, Role.device_class})
        wave = before if before is not None and before.role in _WAVE_WORDS else after
        if wave is None or wave.role not in _WAVE_WORDS:
            return
        at = self.matches.index(wave)
        first = self.neighbour(at, -1, frozenset({Role.article}))
        canary = wave.role is Role.canary or (
            first is not None and first.role is Role.limiter and first.value == "first"
        )
        if canary:
            if percent:
                found.canary_percent = value
            elif value >= 1:
                found.canary = int(value)
        elif percent:
            if wave is before:
                found.wave_percent = value
        elif wave is after and self.tokens[wave.end - 1].plural:
            found.wave_count = int(value)
        elif wave is before:
            found.wave_size = int(value)

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
        kinds: dict[str, list[str]] = {}
        for site in self.ctx.sites:
            kinds.setdefault(str(site.kind.value), []).append(site.id)
        for index, m in enumerate(self.matches):
            if m.role is not Role.word:
                continue
            token = self.tokens[m.start]
            if token.compound:
                compounds.setdefault(token.piece, []).append(index)
                continue
            after = self.neighbour(index, 1, frozenset())
            if m.value in _PLACE_WORDS:
                # a place word marks a name ("the rotterdam site", "at site rtm-05"), it is
                # never one itself
                continue
            if m.value in kinds and not self.excluded(index) and self.names_a_kind(index):
                # "in the field", "the factory": the sites of that kind
                found.sites += kinds[m.value]
                found.kind_notes.append(f"'{token.raw}' read as the {m.value} sites")
                continue
            if m.value in by_prefix and prefixes[m.value] == 1:
                if after is not None and after.role is Role.number:
                    found.unknown_sites.append(f"{m.value}-{self.text(after)}")
                elif self.excluded(index):
                    # "except lyon": the site by its prefix, left out
                    self.excluded_at.add(index)
                    found.excluded_sites.append(by_prefix[m.value])
                else:
                    found.sites.append(by_prefix[m.value])
                continue
            before, skipped = self.walk_back(index)
            place = before is not None and before.role is Role.site_prep
            towards = before is not None and before.role is Role.target_prep
            adjacent = self.neighbour(index, -1, SKIPPABLE | {Role.number, Role.number_word})
            marked = after is not None and after.role is Role.word and after.value in _PLACE_WORDS
            named_next = after is not None and after.role in _PLACES
            name = (
                self.proper_noun(m)
                or not is_ordinary(token.raw)
                or (not is_common(token.text) and resembles(token.text, self.place_names))
            )
            in_slot = (
                adjacent is not None
                and adjacent.role in (Role.site_prep, Role.target_prep)
                and adjacent.value not in _LOOSE_PREPS
                and not (adjacent.role is Role.site_prep and skipped & {"a", "an"})
            )
            proper = self.proper_noun(m) and not is_common(token.raw)
            narrowing = self.after_only(index) and (
                self.proper_noun(m)
                or (
                    after is not None
                    and (
                        after.role in (*_NOUNS, Role.device_class)
                        or self.tokens[after.start].text == "one"
                    )
                )
            )
            if (towards or place or narrowing) and proper and not named_next:
                self.unknown_site(index, token.raw)
            elif towards and token.plural:
                self.unknown_class(index, self.unknown_run(index))
            elif ((in_slot or narrowing) and name and not named_next) or (
                marked and not is_common(token.raw)
            ):
                self.unknown_site(index, token.raw)
            elif towards and after is not None and after.role in _NOUNS:
                self.unknown_class(index, self.unknown_run(index))
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
            place = before is not None and before.role is Role.site_prep
            adjacent = self.neighbour(first, -1, SKIPPABLE)
            slot = adjacent is not None and adjacent.role in (Role.site_prep, Role.target_prep)
            if raw in self.tickets and not (slot or resembles(raw.split("-")[0], self.place_names)):
                found.context.append(f"ticket {raw.upper()}")
            elif _SITE_LIKE.match(raw) or _REGION_LIKE.match(raw):
                self.unknown_site(first, raw)
            elif raw.split("-")[-1] in _CLASS_HEADS or (towards and last.plural):
                self.unknown_class(first, raw)
            elif before is not None and before.role is Role.site_prep:
                self.unknown_site(first, raw)
            elif any(t.piece == piece and t.kind == "word" for t in self.tokens):
                found.unknown_names.append(raw)
            else:
                found.ignored.extend(self.text(self.matches[i]) for i in indexes)
        if not found.modules and not found.module_words and not found.unknown_names:
            found.unknown_names.extend(self.name_before_version())
        found.unresolved_places = self.unresolved_places()

    def unresolved_places(self) -> list[str]:
        """Words after ``to``, ``at``, ``in``, ``on`` that resolved to nothing and are not all
        common English (``to the north sea platform``): a place the request names but
        fieldgate does not know, so the request must not be read as everywhere."""
        places = []
        for index, m in enumerate(self.matches):
            if m.role not in (Role.site_prep, Role.target_prep) or m.value in _LOOSE_PREPS:
                continue
            at = index + 1
            while at < len(self.matches) and self.matches[at].role is Role.article:
                at += 1
            run = []
            while at < len(self.matches) and self.matches[at].role is Role.word:
                run.append(self.tokens[self.matches[at].start].raw)
                at += 1
            if run and not all(is_common(word) for word in run):
                places.append(" ".join(run))
        return places

    def after_only(self, index: int) -> bool:
        """Whether the word at ``index`` comes right after ``only`` or ``just`` (and articles)."""
        at = index - 1
        while at >= 0 and self.matches[at].role is Role.article:
            at -= 1
        m = self.matches[at] if at >= 0 else None
        return m is not None and m.role is Role.limiter and m.value in ("only", "just")

    def names_a_kind(self, index: int) -> bool:
        """Whether a site-kind word stands where a place does: ``in the field``, ``field sites``.

        Elsewhere (``the field team asked``) it says nothing about which devices.
        """
        adjacent = self.neighbour(index, -1, SKIPPABLE)
        after = self.neighbour(index, 1, frozenset())
        marked = after is not None and after.role is Role.word and after.value in _PLACE_WORDS
        return marked or (
            adjacent is not None
            and adjacent.role in (Role.site_prep, Role.target_prep)
            and adjacent.value not in _LOOSE_PREPS
            and (after is None or after.role not in (Role.word, Role.generic))
        )

    def unknown_site(self, index: int, word: str) -> None:
        self.found.unknown_sites.append(word)
        if not self.in_request(index):
            self.found.aside.add(word)

    def unknown_class(self, index: int, words: str) -> None:
        self.found.unknown_classes.append(words)
        if not self.in_request(index):
            self.found.aside.add(words)

    def in_request(self, index: int) -> bool:
        """Whether the sentence around ``index`` asks for something (names an action or thing).

        ``keep an eye on the dashboards`` beside ``roll out pump-logic 1.9.0 to rtm-05`` does
        not: its unknown words are context, unless nothing else narrows the request. A sentence
        that narrows (``only the Rotterdam ones``, ``except hall B``) always asks.
        """
        first = index
        while first > 0 and not _ends_sentence(self.matches[first - 1]):
            first -= 1
        last = index
        while last + 1 < len(self.matches) and not _ends_sentence(self.matches[last + 1]):
            last += 1
        return any(
            m.role in _REQUEST_CONTENT
            or m.role is Role.exclusion
            or (m.role is Role.limiter and m.value in ("only", "just", "exactly"))
            for m in self.matches[first : last + 1]
        )

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
        skip = SKIPPABLE | {Role.number, Role.number_word, Role.word}
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
