"""Follow-ups in a conversation: revise the conversation's last plan as the engineer asks.

"make the canary smaller", "only the Munich site", "use 1.9.1 instead": the offline
model reads the follow-up against the same lexicon as a request, takes from the last
plan (``plan_to_revise``) everything it does not change, and plans again. A follow-up
that names another module is a new request, read as one.
"""

from __future__ import annotations

import re
from typing import Any

from fieldgate.agents._summary import PlanningContext
from fieldgate.agents.offline.intent import Clarification, Intent, Scope, WaveAsk
from fieldgate.agents.offline.lexicon import Role, build_lexicon, match, tokenize
from fieldgate.agents.offline.planning import wave_sizes
from fieldgate.agents.offline.resolving import understand
from fieldgate.plan import PlanIntent, Selector, Wave

_VERSION = re.compile(r"(?<![\w.])v?(\d+\.\d+\.\d+)(?![\w.])")
_SMALLER = re.compile(r"\b(smaller|fewer|less|reduce|shrink|halve)\b", re.I)
_BIGGER = re.compile(r"\b(bigger|larger|more|increase|double|grow)\b", re.I)
_CANARY = re.compile(r"\b(canary|first wave|pilot)\b", re.I)


def revise(
    follow_up: str, previous: dict[str, Any], ctx: PlanningContext
) -> Intent | Clarification:
    """What ``follow_up`` asks, applied to the draft ``previous``.

    A version the catalog does not hold comes back as a question; a line that changes
    nothing of the plan is read as a request of its own.
    """
    module = str(previous.get("module", ""))
    tokens = tokenize(follow_up, [s.id for s in ctx.sites])
    matches = match(tokens, build_lexicon(ctx))
    named_modules = {m.value for m in matches if m.role is Role.module}
    if named_modules - {module}:
        return understand(follow_up, ctx)
    target = Selector.model_validate(previous.get("target") or {})
    scope = Scope(
        sites=list(target.sites),
        regions=list(target.regions),
        classes=list(target.classes),
        devices=list(target.devices),
        labels=dict(target.labels),
        installed=dict(target.installed),
        limit=target.limit,
    )
    version = str(previous.get("version", ""))
    notes: list[str] = []
    changed = False
    sites = [m.value for m in matches if m.role is Role.site]
    regions = [m.value for m in matches if m.role is Role.region]
    if sites or regions:
        scope = scope.model_copy(
            update={"sites": sorted(set(sites)), "regions": sorted(set(regions)), "devices": []}
        )
        notes.append("targets revised in the conversation: " + ", ".join([*sites, *regions]))
        changed = True
    versions = _VERSION.findall(follow_up)
    if versions:
        asked = versions[-1]
        known = sorted(i.version for i in ctx.catalog if i.name == module)
        if asked not in known:
            return Clarification(
                reason="unknown_version",
                question=f"{module} has no version {asked}; the catalog has {', '.join(known)}.",
                candidates=known,
                module=module,
            )
        version = asked
        changed = True
    wave_ask = WaveAsk()
    if _CANARY.search(follow_up) and (_SMALLER.search(follow_up) or _BIGGER.search(follow_up)):
        first = _first_wave_size(previous, ctx)
        size = max(1, first // 2) if _SMALLER.search(follow_up) else first * 2
        wave_ask = WaveAsk(canary=size, typed=[f"canary of {size} (was {first})"])
        changed = True
    if not changed:
        # Nothing of the last plan to change: the line is a request of its own.
        return understand(follow_up, ctx)
    return Intent(
        action=PlanIntent(previous.get("intent", "rollout")),
        module=module,
        version=version,
        version_reason="as asked in the conversation" if versions else "as in the plan revised",
        scope=scope,
        wave_ask=wave_ask,
        notes=notes,
    )


def _first_wave_size(previous: dict[str, Any], ctx: PlanningContext) -> int:
    """Devices the draft's first wave takes, counted on the planning context."""
    waves = [Wave.model_validate(w) for w in previous.get("waves") or []]
    target = Selector.model_validate(previous.get("target") or {})
    region = {s.id: s.region for s in ctx.sites}
    count = sum(
        g.count
        for g in ctx.groups
        if (not target.sites or g.site in target.sites)
        and (not target.regions or region.get(g.site) in target.regions)
        and (not target.classes or g.device_class in target.classes)
    )
    if target.limit is not None:
        count = min(count, target.limit)
    sizes = wave_sizes(waves, count)
    return sizes[0] if sizes else 1
