"""Read-only fleet and catalog questions in the chat, answered from the store.

"which version of edge-runtime runs in eu-west?", "what versions of pump-logic are
there?": a line that asks (a question word or a question mark) about a module the
catalog holds is answered from the catalog and the fleet; "how many devices?" about the
conversation's last plan is counted on the fleet; another question says what the chat
answers. None of them creates a plan.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from fieldgate.plan import Selector, select_devices
from fieldgate.store import Store

_ASKS = re.compile(r"^\s*(which|what|how many|where|is|are|does|do)\b|\?\s*$", re.I)
_CATALOG = re.compile(
    r"\b(versions?|releases?)\b.*\b(are there|exist|available|in the catalog)\b|"
    r"\bwhat versions?\b|\bwhich versions? (of \S+ )?(are|exist)\b",
    re.I,
)
_ACTION = re.compile(r"\b(roll|deploy|install|update|upgrade|push|pilot|put|pin|bring)\b", re.I)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9][a-z0-9._-]*", text.lower()))


def answer_question(store: Store, text: str) -> str | None:
    """The answer to a fleet or catalog question, or None when ``text`` asks for none."""
    if not _ASKS.search(text) or _ACTION.search(text):
        return None
    words = _words(text)
    records = store.catalog.list()
    modules = sorted({r.manifest.name for r in records} & words)
    if len(modules) != 1:
        return None
    module = modules[0]
    sites, devices = store.fleet.snapshot()
    by_site = {s.id: s for s in sites}
    places = sorted(({s.id for s in sites} | {s.region for s in sites}) & words)
    runs_on = [
        d
        for d in devices
        if module in d.installed
        and (not places or d.site in places or by_site[d.site].region in places)
    ]
    if _CATALOG.search(text) and not places:
        versions = sorted(
            (r.manifest.version for r in records if r.manifest.name == module),
            key=_version_key,
        )
        return f"{module} in the catalog: {', '.join(versions)}."
    where = f" in {', '.join(places)}" if places else ""
    if not runs_on:
        return f"No device{where} runs {module}."
    counts = Counter(d.installed[module] for d in runs_on)
    told = ", ".join(
        f"{version} on {n} device{'s' if n != 1 else ''}"
        for version, n in sorted(counts.items(), key=lambda item: _version_key(item[0]))
    )
    return f"{module}{where}: {told}."


_HOW_MANY = re.compile(
    r"^\s*(?:and\s+|so\s+)?how many\s+(?:devices|targets|units|nodes|boxes)\b"
    r"(?:\s+(?:(?:does|will|would)\s+)?(?:it|that|this|the plan)(?:\s+\w+)?)?\s*\??\s*$",
    re.I,
)
_QUESTION_WORD = re.compile(r"^\s*(what|which|how|where|who|when|why)\b(?!\s+(about|if)\b)", re.I)
QUESTIONS_ANSWERED = (
    "I answer questions about the last plan (why?, status?, how many devices?) and about the "
    "fleet and catalog when they name a module (which version of edge-runtime runs in "
    "eu-west?, what versions of pump-logic are there?); nothing was planned."
)
"""What the chat says to a question it cannot answer, instead of planning from it."""


def answer_plan_question(store: Store, plan_id: str, plan: dict[str, Any], text: str) -> str | None:
    """The answer to a question about the conversation's last plan (``how many devices?``),
    counted on the fleet as it is now; None when ``text`` asks none."""
    if not _HOW_MANY.match(text):
        return None
    sites, devices = store.fleet.snapshot()
    picked = select_devices(
        Selector.model_validate(plan.get("target") or {}), devices, {s.id: s for s in sites}
    )
    where = Counter((d.site, d.device_class) for d in picked)
    told = ", ".join(f"{site} {n} {cls}" for (site, cls), n in sorted(where.items()))
    return f"{plan_id} targets {len(picked)} device{'s' if len(picked) != 1 else ''}: {told}."


_CHANGE = re.compile(
    r"\b(revert|back|downgrade|restore|make|switch|move|change|set|use|leave|skip|drop|exclude"
    r"|only|just|instead|canary|waves?)\b",
    re.I,
)


def asks_for_action(text: str) -> bool:
    """Whether ``text`` has a rollout verb (``roll``, ``deploy``, ``upgrade``, …)."""
    return bool(_ACTION.search(text))


def unanswerable_question(text: str) -> bool:
    """Whether ``text`` asks a question (a question word first) and asks for no action or
    change (``what about only muc-01?``, ``why not use 1.9.1?`` go to the planner)."""
    return bool(_QUESTION_WORD.match(text)) and not (_ACTION.search(text) or _CHANGE.search(text))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))
