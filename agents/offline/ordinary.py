"""Ordinary language or an unknown name: what a word the lexicon does not know is.

The lexicon knows every name in the planning context and the fixed English of requests. A
word it does not know is either ordinary language (``the valves chatter``, ``at your earliest
convenience``), which changes nothing, or a name fieldgate does not know (``rotterdam``,
``munich``), which must never be dropped. Telling them apart uses word frequencies from
`wordfreq <https://pypi.org/project/wordfreq/>`_ (ships its data in the wheel, works
offline), not a hand-written stop list:

- a word common in English (Zipf frequency at least :data:`COMMON_ZIPF`) is ordinary;
- a rarer word is a name when it is about as frequent in other languages as in English
  (place and person names travel across languages; ``convenience``, ``meantime`` and
  ``chatter`` do not), or when English has no record of it at all.
"""

from __future__ import annotations

import functools
import statistics

from wordfreq import zipf_frequency

COMMON_ZIPF = 5.0
"""Zipf frequency from which an English word is ordinary wherever it stands (``review``)."""
KNOWN_ZIPF = 1.5
"""Below this Zipf frequency English has no real record of the word (``updte``, ``xq-9``)."""
NAME_SPREAD = 1.2
"""How much rarer a word may be in other languages than in English and still be a name."""
_OTHER_LANGUAGES = ("de", "fr", "nl", "es", "it")


@functools.lru_cache(maxsize=8192)
def english_zipf(word: str) -> float:
    """The Zipf frequency of ``word`` in English (0 when unknown)."""
    return zipf_frequency(word, "en")


@functools.lru_cache(maxsize=8192)
def is_ordinary(word: str) -> bool:
    """Whether ``word`` is ordinary English rather than a name (see the module docstring)."""
    lowered = word.lower()
    if not lowered.isalpha():
        return False
    english = english_zipf(lowered)
    if english >= COMMON_ZIPF:
        return True
    if english < KNOWN_ZIPF:
        return False
    elsewhere = statistics.median(zipf_frequency(lowered, lang) for lang in _OTHER_LANGUAGES)
    return elsewhere < english - NAME_SPREAD


def is_common(word: str) -> bool:
    """Whether ``word`` is common English (``your``, ``team``): never a name in a sentence."""
    return english_zipf(word.lower()) >= COMMON_ZIPF
