"""The request vocabulary: tokens, and the phrases that name modules, sites, regions, device
classes and what the engineer asks for.

Entity phrases are built from the planning context (module names, site ids, regions, class ids
with their abbreviations expanded), so a new module or class is understood without code
changes; the fixed part is English: verbs, flags, negations, deferrals, fractions and polite filler.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from fieldgate.agents._summary import PlanningContext


class Role(StrEnum):
    """What a phrase means in a request."""

    module = "module"
    module_word = "module_word"
    site = "site"
    region = "region"
    region_group = "region_group"
    device_class = "class"
    class_head = "class_head"
    label = "label"
    rollout = "rollout"
    rollback = "rollback"
    weak_verb = "weak_verb"
    back = "back"
    now = "now"
    all_at_once = "all_at_once"
    at_once = "at_once"
    canary = "canary"
    no_canary = "no_canary"
    staging = "staging"
    maintenance = "maintenance"
    business_hours = "business_hours"
    wait = "wait"
    health = "health"
    negation = "negation"
    defer = "defer"
    """Holds the whole request back wherever it stands: ``cancel``, ``hold off``, ``not yet``."""
    halt = "halt"
    """Holds back only the action it comes right before: ``stop the rollout``, ``pause``."""
    exclusion = "exclusion"
    comparison = "comparison"
    latest = "latest"
    previous = "previous"
    from_ = "from"
    version_word = "version_word"
    everywhere = "everywhere"
    generic = "generic"
    number_word = "number_word"
    vague_number = "vague_number"
    percent = "percent"
    fraction = "fraction"
    """A share of the devices (``half``, ``a third``); the value is ``numerator/denominator``."""
    limiter = "limiter"
    site_prep = "site_prep"
    target_prep = "target_prep"
    article = "article"
    clause = "clause"
    question = "question"
    time = "time"
    filler = "filler"
    rest = "rest"
    """The devices not yet done: ``the rest``, ``the others``, ``those still on 1.8.0``."""
    # tokens no phrase matched
    word = "word"
    number = "number"
    version = "version"
    device = "device"
    punct = "punct"


TokenKind = Literal["word", "number", "version", "device", "punct"]


@dataclass(frozen=True)
class Token:
    """One unit of the request: a word, a number, a version, a device id or punctuation."""

    kind: TokenKind
    text: str
    """Normalised: lower-case and singular for words, as typed (lower-case) otherwise."""
    raw: str
    """As typed."""
    piece: int
    """Index of the whitespace/punctuation-delimited piece it came from."""
    compound: bool = False
    """Whether the piece was joined by hyphens, dots or underscores (``air-quality-model``)."""

    @property
    def plural(self) -> bool:
        """Whether the word was typed in a plural form."""
        return self.kind == "word" and self.text != self.raw.lower()


@dataclass(frozen=True)
class Phrase:
    """Words that, in sequence, mean one thing."""

    words: tuple[str, ...]
    role: Role
    value: str
    rank: int
    """Breaks ties between phrases of equal length: higher wins."""


@dataclass(frozen=True)
class Match:
    """A run of tokens and what it means."""

    role: Role
    value: str
    start: int
    end: int
    """One past the last token."""


# --- tokens -------------------------------------------------------------------------------

_PIECE = re.compile(r"[A-Za-z0-9]+(?:[._\-][A-Za-z0-9*]+)*|->|=>|→|[,;:!?%()\"\n]|\.")
_VERSION = re.compile(
    r"^v?\d+(?:\.\d+){1,2}(?:\.[x*])?(?:[-.]?(?:rc|alpha|beta|a|b|pre|dev)\.?\d*)?$"
)
_MAJOR_VERSION = re.compile(r"^v\d+$")
_SUBWORD = re.compile(r"[A-Za-z]+|\d+")


_SHORT_PLURALS = {"gws": "gw", "pcs": "pc"}


def singular(word: str) -> str:
    """Reduce an English plural to its singular well enough for matching (``gateways``)."""
    if word in _SHORT_PLURALS:
        return _SHORT_PLURALS[word]
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def normalise(word: str) -> str:
    """Lower-case and singularise a word; digits are kept as typed."""
    lowered = word.lower()
    return lowered if lowered.isdigit() else singular(lowered)


def tokenize(request: str, site_ids: Iterable[str]) -> list[Token]:
    """Split ``request`` into tokens; versions and device ids stay whole."""
    sites = sorted(site_ids, key=len, reverse=True)
    text = request.replace("’", " ").replace("'", " ").replace("`", " ")
    tokens: list[Token] = []
    for piece_index, found in enumerate(_PIECE.finditer(text)):
        piece = found.group(0)
        lowered = piece.lower()
        if not piece[0].isalnum():
            tokens.append(Token("punct", piece, piece, piece_index))
            continue
        if _VERSION.match(lowered) or _MAJOR_VERSION.match(lowered):
            tokens.append(Token("version", lowered, piece, piece_index))
            continue
        if any(
            lowered.startswith(site + "-") and not lowered[len(site) + 1 :].isdigit()
            for site in sites
        ):
            tokens.append(Token("device", lowered, piece, piece_index))
            continue
        parts = _SUBWORD.findall(piece)
        compound = len(parts) > 1 and any(sep in piece for sep in "-_.")
        for part in parts:
            kind: TokenKind = "number" if part.isdigit() else "word"
            tokens.append(Token(kind, normalise(part), part, piece_index, compound))
    return tokens


# --- fixed English vocabulary ---------------------------------------------------------------

_DOUBLED_FINAL = {"ship", "put", "get", "set", "drop", "stop", "plan", "swap"}


def _inflections(verb: str) -> set[str]:
    forms = {verb}
    if verb.endswith("e"):
        forms |= {verb + "d", verb[:-1] + "ing"}
    elif verb in _DOUBLED_FINAL:
        forms |= {verb + verb[-1] + "ed", verb + verb[-1] + "ing"}
    else:
        forms |= {verb + "ed", verb + "ing"}
    return forms


def _verb_phrases(verbs: Iterable[str], role: Role) -> list[tuple[str, Role]]:
    phrases = []
    for verb in verbs:
        head, *rest = verb.split()
        for form in _inflections(head):
            phrases.append((" ".join([form, *rest]), role))
    return phrases


def _alternatives(text: str) -> list[str]:
    """Split ``"a | b c | d"`` into phrases."""
    return [phrase.strip() for phrase in text.split("|") if phrase.strip()]


_ROLLOUT_VERBS = _alternatives(
    "roll out | rollout | roll forward | deploy | redeploy | update | upgrade | push | install"
    " | ship | release | apply | migrate | bump | promote | patch | distribute"
    " | upgrate | updte | deply"
)
_ROLLBACK_VERBS = _alternatives(
    "roll back | rollback | revert | downgrade | restore | undo | undone | rolled back"
)
_WEAK_VERBS = _alternatives("put | bring | move | switch | get | take | set | send | turn | roll")
_DEFER_VERBS = _alternatives(
    "cancel | call off | hold off | held off | postpone | defer | put off | shelve"
)
_HALT_VERBS = _alternatives("stop | halt | pause | abort | delay | hold | hold back | held back")

# fixed phrases by role; verbs get their inflections added below
_FIXED_TEXT: dict[Role, str] = {
    Role.back: "back",
    Role.now: "now | right now | immediately | asap | a s a p | right away | straight away"
    " | straightaway | urgent | urgently | today | without delay | this minute",
    Role.wait: "wait | waiting",
    Role.maintenance: "maintenance | maintenance window | maint window | change window"
    " | service window | downtime window | off hour | after hour | overnight | quiet hour"
    " | window",
    Role.business_hours: "business hour | working hour | office hour",
    Role.all_at_once: "all at once | everything at once | in one go | one go | single wave"
    " | one wave | one batch | single batch | one shot | single shot | simultaneously"
    " | same time | big bang | one step | single step | in parallel | in one hit"
    " | all together | all in one | in bulk",
    Role.at_once: "at once",
    Role.canary: "canary | canary wave | canary phase | canary stage",
    Role.no_canary: "canary less | canaryless | no canary",
    Role.staging: "wave | stage | staging | staged | phase | phasing",
    Role.health: "health check | health gate | healthcheck | soak | soak time | gate",
    Role.negation: "no | not | skip | skipping | skipped | without | don | dont | doesn | didn"
    " | won | shouldn | needn | t | never | bypass | omit | drop | forget | ignore | outside"
    " | instead | rather | avoid | disable | nix | leave out"
    # contractions and auxiliaries read as one "not", so "don't skip" is two negations, not three
    " | don t | do not | does not | doesn t | did not | didn t | won t | will not | shouldn t"
    " | should not | must not | mustn t | can not | cannot | can t | needn t | need not",
    Role.defer: "put on hold | on hold | not yet | but not yet | not now | but not now"
    " | not right now | not today | cancelled | cancelling | deferred | deferring",
    Role.filler: "never mind | no worries | no problem",
    Role.exclusion: "except | excluding | exclude | but not | other than | apart from | minus"
    " | save for | not including | leaving out | aside from | except for",
    Role.comparison: "at least | more than | less than | fewer than | greater than"
    " | bigger than | smaller than | larger than | above | below | under",
    Role.latest: "latest | newest | most recent | latest version | newest version",
    Role.previous: "previous | prior | last good | last known good | earlier | older",
    Role.from_: "from | running | run | installed | currently on",
    Role.version_word: "version | ver | v",
    Role.everywhere: "everywhere | all site | every site | each site | whole fleet"
    " | entire fleet | fleet wide | all device | every device | each device | all region"
    " | every region | every single device | across the fleet | the fleet",
    Role.generic: "device | unit | box | node | machine | endpoint | host | target"
    " | edge device | edge node | edge box | fleet",
    Role.percent: "percent | per cent | pct",
    Role.rest: "rest | the rest | remaining | remainder | other | others | still | leftover"
    " | everything else | the remaining ones | not yet updated",
    Role.limiter: "first | only | just | exactly | max | up to | at most | no more than",
    Role.site_prep: "at | in | within | near | inside",
    Role.target_prep: "to | on | onto | for | across | into | over",
    # "teh", "hte": the typos of "the" fast typists make, so they never read as a name
    Role.article: "the | teh | hte | all | every | each | our | my | those | these | its | their"
    " | both | any | some | a | an | of | current | existing | whole | entire"
    " | all the | all of the | all our",
    Role.clause: "and | or | but | then | also | plus | however | after that",
    Role.question: "what | which | how | where | when | why | who | is | are | was | were"
    " | did | does | has | have",
    Role.time: "morning | afternoon | evening | night | tonight | tomorrow | weekend | week"
    " | monday | tuesday | wednesday | thursday | friday | saturday | sunday | am | pm"
    " | hour | minute | noon | midnight | utc | cet | cest | local time | o clock | later"
    " | soon | this week | next week | yesterday | today s | last week | month | ago"
    " | earlier today | last night | day",
}

_FIXED: list[tuple[str, Role]] = [
    *_verb_phrases(_ROLLOUT_VERBS, Role.rollout),
    *_verb_phrases(_ROLLBACK_VERBS, Role.rollback),
    *_verb_phrases(_WEAK_VERBS, Role.weak_verb),
    *_verb_phrases(_DEFER_VERBS, Role.defer),
    *_verb_phrases(_HALT_VERBS, Role.halt),
    *[(phrase, role) for role, text in _FIXED_TEXT.items() for phrase in _alternatives(text)],
]

_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "hundred": 100, "dozen": 12, "single": 1,
}  # fmt: skip
_UNITS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9,
}  # fmt: skip
_VAGUE_NUMBERS = {"couple": 2, "pair": 2, "few": 3, "handful": 3}
_FRACTIONS = {
    "half": "1/2", "a half": "1/2", "one half": "1/2",
    "a third": "1/3", "one third": "1/3", "two thirds": "2/3",
    "a quarter": "1/4", "one quarter": "1/4", "three quarters": "3/4",
    "a fifth": "1/5", "one fifth": "1/5", "a tenth": "1/10", "one tenth": "1/10",
}  # fmt: skip

_FILLER_TEXT = (
    "please pls plz could can would will you kindly hey hi hello hiya greetings dear sir "
    "thanks thank thx cheers ty appreciated grateful great good nice awesome fine alright "
    "ok okay okey yes yeah yep sure btw fyi anyway hope mate team folks guys y all "
    "we i me us let lets s d ll ve m re want wanna need like think believe go ahead "
    "it this that them they there here he she his her him everyone everybody everything "
    "whatever wherever whichever new newer build module package software firmware model "
    "be do have if possible much make ensure safe safely carefully reasonably kind "
    "should shall must may might really actually mind just quick quickly again too well "
    "thing stuff order start begin kick kicking started usual normal standard "
    "currently presently yet already same respective respectively pretty "
    "via using through per by as up out down off bit lot edge time one ones "
    "hurry rush case general advance short fact particular sequence turn progress future "
    "with about bother try trying production prod live u during while"
)
FILLER = frozenset(normalise(word) for word in _FILLER_TEXT.split())

# --- phrases built from the planning context ----------------------------------------------

_ABBREVIATIONS: dict[str, tuple[str, ...]] = {
    "gw": ("gateway",),
    "ctl": ("controller", "control"),
    "ctrl": ("controller", "control"),
    "env": ("environment", "environmental", "environmment"),
    "bms": ("battery management", "battery", "battery management system"),
    "cam": ("camera",),
    "temp": ("temperature",),
    "mgmt": ("management",),
    "plc": ("plc",),
}
_CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    "env-sensor": ("air sensor", "air quality sensor", "air monitor", "air quality monitor"),
    "hvac-gw": ("hvac controller", "hvac unit", "hvac box"),
    "bms-ctl": ("battery management system",),
}
_GENERIC_CLASS_WORDS = frozenset(
    {"node", "unit", "device", "box", "system", "management", "control", "air", "quality"}
)
_REGION_WORDS: dict[str, tuple[str, ...]] = {
    "eu": ("eu", "europe"),
    "us": ("us", "usa"),
    "ap": ("ap", "apac", "asia"),
    "central": ("central", "centre"),
}
_REGION_GROUPS: dict[str, tuple[str, ...]] = {
    "eu": ("eu", "europe", "european"),
    "us": ("us", "usa", "america", "american", "united states", "north america"),
    "ap": ("ap", "apac", "asia", "asia pacific"),
}
_NOT_MODULE_ALIASES = frozenset(
    {"model", "policy", "safety", "edge", "air", "quality", "logic", "inspect", "controller"}
)

RANK = {
    Role.module: 60,
    Role.site: 55,
    Role.region: 50,
    Role.device_class: 45,
    Role.region_group: 25,
    Role.module_word: 22,
    Role.class_head: 21,
    Role.label: 20,
}
_CLASS_WORD_RANK = 22
"""A single word naming one class (``camera``) ranks like a single word naming one module."""
_PLURAL_MODULE_RANK = 40
_FIXED_RANK = 30
_WEAK_FIXED_RANK = 5


def _words(text: str) -> tuple[str, ...]:
    return tuple(normalise(w) for w in _SUBWORD.findall(text))


def class_phrases(device_class: str, *, synonyms: bool = True) -> set[tuple[str, ...]]:
    """Ways to say a device class: its id, abbreviations expanded, and listed synonyms."""
    alternatives = [(part, *_ABBREVIATIONS.get(part, ())) for part in device_class.split("-")]
    phrases = {_words(" ".join(choice)) for choice in itertools.product(*alternatives)}
    if synonyms:
        phrases |= {_words(s) for s in _CLASS_SYNONYMS.get(device_class, ())}
    return phrases


def class_words(device_classes: Iterable[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Single words that name one class (``camera``), and those shared by several (``gateway``)."""
    owners: dict[str, set[str]] = defaultdict(set)
    for device_class in device_classes:
        for phrase in class_phrases(device_class, synonyms=False):
            for word in phrase:
                if word not in _GENERIC_CLASS_WORDS and not word.isdigit():
                    owners[word].add(device_class)
    unique = {w: next(iter(c)) for w, c in owners.items() if len(c) == 1}
    shared = {w: sorted(c) for w, c in owners.items() if len(c) > 1}
    return unique, shared


def _region_phrases(region: str) -> set[tuple[str, ...]]:
    parts = region.split("-")
    alternatives = [_REGION_WORDS.get(part, (part,)) for part in parts]
    phrases = set()
    for choice in itertools.product(*alternatives):
        phrases.add(_words(" ".join(choice)))
        if len(choice) == 2:
            phrases.add(_words(" ".join(reversed(choice))))
    return phrases


class Lexicon:
    """Every phrase a request can use, for one planning context, indexed by first word."""

    def __init__(self, phrases: Iterable[Phrase]) -> None:
        # sorted, so that ties between equal phrases resolve the same way in every process
        ordered = sorted(phrases, key=lambda p: (p.words, p.role.value, p.value, p.rank))
        self.phrases = tuple(ordered)
        self._by_first: dict[str, list[Phrase]] = defaultdict(list)
        for phrase in ordered:
            self._by_first[_index_key(phrase.words[0])].append(phrase)

    def starting_with(self, token: Token) -> list[Phrase]:
        """Phrases whose first word is ``token``."""
        if token.kind == "number":
            return [p for p in self._by_first["#"] if same(token, p.words[0])]
        if token.kind != "word":
            return []
        return self._by_first.get(token.text, [])


def _index_key(word: str) -> str:
    return "#" if word.isdigit() else word


def same(token: Token, word: str) -> bool:
    """Tell whether ``token`` is the lexicon word ``word`` (numbers compare by value)."""
    if word.isdigit():
        return token.kind == "number" and int(token.text) == int(word)
    return token.kind == "word" and token.text == word


def build_lexicon(ctx: PlanningContext) -> Lexicon:
    """Collect the phrases of ``ctx`` (modules, sites, regions, classes) and the fixed ones.

    The lexicon depends only on names (not on counts or versions), so it is built once
    per set of names and reused across requests.
    """
    device_classes = tuple(
        sorted(
            {g.device_class for g in ctx.groups}
            | {c for item in ctx.catalog for c in item.device_classes}
        )
    )
    sites = tuple((site.id, tuple(sorted(site.labels.items()))) for site in ctx.sites)
    return _lexicon_of(device_classes, tuple(ctx.module_names), sites, tuple(ctx.regions))


@functools.lru_cache(maxsize=32)
def _lexicon_of(
    device_classes: tuple[str, ...],
    module_names: tuple[str, ...],
    sites: tuple[tuple[str, tuple[tuple[str, str], ...]], ...],
    regions: tuple[str, ...],
) -> Lexicon:
    phrases: list[Phrase] = []
    for words, role in [(_words(text), role) for text, role in _FIXED]:
        phrases.append(Phrase(words, role, " ".join(words), _FIXED_RANK))
    phrases += [Phrase((w,), Role.filler, w, _WEAK_FIXED_RANK) for w in FILLER]
    phrases += [
        Phrase((normalise(w),), Role.number_word, str(n), _FIXED_RANK)
        for w, n in _NUMBER_WORDS.items()
    ]
    # "twenty-five", "forty two": tens and units as one number
    phrases += [
        Phrase((tens, unit), Role.number_word, str(_NUMBER_WORDS[tens] + value), _FIXED_RANK)
        for tens in ("twenty", "thirty", "forty", "fifty")
        for unit, value in _UNITS.items()
    ]
    phrases += [
        Phrase((normalise(w),), Role.vague_number, str(n), _FIXED_RANK)
        for w, n in _VAGUE_NUMBERS.items()
    ]
    phrases += [
        Phrase(_words(text), Role.fraction, share, _FIXED_RANK)
        for text, share in _FRACTIONS.items()
    ]

    unique, shared = class_words(list(device_classes))
    for device_class in device_classes:
        for words in class_phrases(device_class):
            phrases.append(Phrase(words, Role.device_class, device_class, RANK[Role.device_class]))
    for word, device_class in unique.items():
        phrases.append(Phrase((word,), Role.device_class, device_class, _CLASS_WORD_RANK))
    for word, owners in shared.items():
        phrases.append(Phrase((word,), Role.class_head, "|".join(owners), RANK[Role.class_head]))

    module_word_owners: dict[str, set[str]] = defaultdict(set)
    for name in module_names:
        phrases.append(Phrase(_words(name), Role.module, name, RANK[Role.module]))
        for word in _words(name):
            module_word_owners[word].add(name)
    for word, module_owners in module_word_owners.items():
        if (
            len(module_owners) == 1
            and word not in _NOT_MODULE_ALIASES
            and word not in unique
            and word not in shared
            and word not in FILLER
            and not word.isdigit()
        ):
            phrases.append(
                Phrase((word,), Role.module_word, next(iter(module_owners)), RANK[Role.module_word])
            )

    for site_id, _ in sites:
        phrases.append(Phrase(_words(site_id), Role.site, site_id, RANK[Role.site]))
    for region in regions:
        for words in _region_phrases(region):
            phrases.append(Phrase(words, Role.region, region, RANK[Role.region]))
    for _, labels in sites:
        for key, value in labels:
            if value == "true":
                phrases.append(Phrase(_words(key), Role.label, f"{key}=true", RANK[Role.label]))
            elif value != "false":
                phrases.append(
                    Phrase(_words(value), Role.label, f"{key}={value}", RANK[Role.label])
                )
    prefixes = {region.split("-")[0] for region in regions}
    for prefix, names in _REGION_GROUPS.items():
        if prefix in prefixes:
            for name in names:
                phrases.append(
                    Phrase(_words(name), Role.region_group, prefix, RANK[Role.region_group])
                )
    return Lexicon(phrases)


def match(tokens: Sequence[Token], lexicon: Lexicon) -> list[Match]:
    """Read ``tokens`` left to right, taking the longest phrase at each place."""
    matches: list[Match] = []
    index = 0
    while index < len(tokens):
        best: tuple[int, int, Phrase] | None = None
        for phrase in lexicon.starting_with(tokens[index]):
            size = len(phrase.words)
            if index + size > len(tokens):
                continue
            if not all(same(tokens[index + k], phrase.words[k]) for k in range(size)):
                continue
            rank = phrase.rank
            # "the hvac controllers" names devices, not the hvac-controller module
            if phrase.role is Role.module and tokens[index + size - 1].plural:
                rank = _PLURAL_MODULE_RANK
            if best is None or (size, rank) > (best[0], best[1]):
                best = (size, rank, phrase)
        if best is not None:
            size, _, phrase = best
            matches.append(Match(phrase.role, phrase.value, index, index + size))
            index += size
            continue
        token = tokens[index]
        matches.append(Match(Role(token.kind), token.text, index, index + 1))
        index += 1
    return matches
