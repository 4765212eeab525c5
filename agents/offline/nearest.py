"""The known names nearest a word the engineer typed: for questions back, and to tell that a
word in a place slot is meant as a name (``munich`` for ``muc-01``)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def abbreviates(short: str, word: str) -> bool:
    """Whether ``short`` is ``word`` with letters left out, first letter kept (``rtm``)."""
    if not short or not word or short[0] != word[0]:
        return False
    rest = iter(word)
    return all(letter in rest for letter in short)


def _stem(name: str) -> str:
    return name.split("-")[0]


def closest(word: str, options: Sequence[str], limit: int = 3) -> list[str]:
    """The known names nearest ``word``: same prefix, abbreviated by it, or spelled alike."""
    lowered = word.lower()
    prefix = [o for o in options if _stem(o) and lowered.startswith(_stem(o))]
    short = [o for o in options if len(_stem(o)) >= 3 and abbreviates(_stem(o), lowered)]
    close = difflib.get_close_matches(lowered, options, n=limit, cutoff=0.55)
    return list(dict.fromkeys([*prefix, *short, *close]))[:limit]


def resembles(word: str, options: Sequence[str]) -> bool:
    """Whether ``word`` looks like a short or misspelt form of one of ``options``."""
    lowered = word.lower()
    if len(lowered) < 3:
        return False
    for option in options:
        stem = _stem(option)
        if len(stem) >= 3 and (lowered.startswith(stem) or abbreviates(stem, lowered)):
            return True
        if difflib.SequenceMatcher(None, lowered, option).ratio() >= 0.8:
            return True
    return False
