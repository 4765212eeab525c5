"""How the phrases of one request govern each other: negated, held back, left out.

A :class:`Phrases` holds the matched phrases of a request; the reader asks it whether a
phrase is negated (``skip the canary``), whether the request is held back (``don't roll
out yet``) and whether an entity is left out (``everywhere but ber-03``).
"""

from __future__ import annotations

import re

from fieldgate.agents.offline.lexicon import Match, Role, Token

SKIPPABLE = frozenset({Role.article, Role.limiter, Role.filler, Role.rest})
_BREAKS = frozenset({Role.punct, Role.clause, Role.rollout, Role.rollback})
_NEGATION_REACH = 6
ENTITIES = frozenset(
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
    {
        Role.article,
        Role.filler,
        Role.site_prep,
        Role.target_prep,
        Role.generic,
        Role.limiter,
        Role.rest,
    }
)
_NAMES = frozenset({Role.module, Role.module_word, Role.version, Role.version_word})

# negations differ in what they can hold back: "not" and "don't" hold back an action anywhere in
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
        Role.rest,
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
ARROWS = ("->", "=>", "→")
_AFTER_TRAILING_NOT = frozenset(
    {"do", "it", "that", "this", "yet", "please", "so", "though", "now", "for", "anymore"}
)
"""Words that may follow a negation that ends its clause (``don't do it yet``)."""
_CONTRACTION = re.compile(r"\b(\w+n) t\b")
"""``don t`` as tokenised, to quote back as ``don't``."""


class Phrases:
    """The matched phrases of one request, and which of them negate, hold back or leave out."""

    def __init__(self, tokens: list[Token], matches: list[Match]) -> None:
        self.tokens = tokens
        self.matches = matches
        self.excluded_at: set[int] = set()
        """Indexes of the entities found left out."""

    def text(self, m: Match) -> str:
        return " ".join(t.raw for t in self.tokens[m.start : m.end])

    def neighbour(self, index: int, step: int, skip: frozenset[Role] = SKIPPABLE) -> Match | None:
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
        before = self.neighbour(index, -1, SKIPPABLE | {Role.target_prep})
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
            if m.role is Role.clause or (m.role is Role.punct and m.value not in ("%", *ARROWS)):
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
            if m.role in ENTITIES:
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
