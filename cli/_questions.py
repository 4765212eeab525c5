"""Read-only fleet and catalog questions in the chat, answered from the store.

"which version of edge-runtime runs in eu-west?", "what versions of pump-logic are
there?": a line that asks (a question word or a question mark) about a module the
catalog holds is answered from the catalog and the fleet; no plan is created.
"""

from __future__ import annotations

import re
from collections import Counter

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


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))
