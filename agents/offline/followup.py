"""Follow-ups in a conversation: revise the conversation's last plan as the engineer asks.

"only muc-01", "leave out ber-03", "only the cameras", "a canary of 3", "make waves of 10",
"actually 1.1.0", "in the maintenance window": the offline model reads a follow-up with the
same reader as a request (every word resolved, ordinary language, or asked about) and applies
it to the last plan (``plan_to_revise``), keeping everything the follow-up does not change:
targets, version, waves asked for earlier, schedule.

A follow-up only narrows the plan's targets. A site, region, class or device outside them,
"everywhere", a larger limit, or a word that names nothing fieldgate knows is a question,
never a wider plan. A follow-up that would leave the plan as it stands (a canary already at
one device, a size policy refuses, a class the plan already keeps to) says so instead of
proposing the same plan again. A line naming another module is a new request, read as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fieldgate.agents._summary import CatalogItem, PlanningContext
from fieldgate.agents.offline.intent import Clarification, Intent, RequestFlags, Scope, WaveAsk
from fieldgate.agents.offline.lexicon import Role, normalise
from fieldgate.agents.offline.nearest import closest
from fieldgate.agents.offline.ordinary import is_ordinary
from fieldgate.agents.offline.planning import (
    count_targets,
    declined_in,
    is_careful,
    propose_plan,
    rollout_waves,
    wave_sizes,
)
from fieldgate.agents.offline.reading import Reading
from fieldgate.agents.offline.resolving import Resolver, read_request, understand
from fieldgate.agents.offline.targets import find_targets, select_groups
from fieldgate.plan import PlanIntent, RolloutPlan, ScheduleMode, Selector, Wave

_SMALLER = frozenset(
    normalise(w)
    for w in ("smaller", "fewer", "less", "reduce", "shrink", "halve", "tiny", "tinier", "lower")
)
_BIGGER = frozenset(
    normalise(w) for w in ("bigger", "larger", "more", "increase", "double", "grow", "higher")
)
_CHANGES = (
    "I can narrow its targets ('only muc-01', 'leave out ber-03', 'only the cameras'), change "
    "the canary or wave sizes ('a canary of 2', 'waves of 10'), the version (another of "
    "its versions) or the schedule ('now', 'in the maintenance window')."
)


def _sizes_text(sizes: list[int]) -> str:
    return ", ".join(str(s) for s in sizes)


def _wave_shape(waves: list[Wave]) -> list[tuple[str, int | None, float | None]]:
    return [(w.name, w.count, w.percent) for w in waves]


def _narrowing(before: Selector, after: Selector) -> str:
    """What changed between two target selectors, field by field: ``sites muc-01 (was any)``."""
    parts = []
    for name in ("sites", "regions", "classes", "devices", "arch"):
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            parts.append(f"{name} {', '.join(new) or 'any'} (was {', '.join(old) or 'any'})")
    for name in ("labels", "installed"):
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(new.items())) or "any"
            was = ", ".join(f"{k} {v}" for k, v in sorted(old.items())) or "any"
            parts.append(f"{name} {shown} (was {was})")
    if before.min_memory_mb != after.min_memory_mb:
        parts.append(f"at least {after.min_memory_mb or 0} MiB (was {before.min_memory_mb or 0})")
    if before.limit != after.limit:
        parts.append(f"at most {after.limit or 'all'} (was {before.limit or 'all'})")
    return "; ".join(parts)


@dataclass(frozen=True)
class LastPlan:
    """The plan a follow-up revises, read against the planning context."""

    action: PlanIntent
    item: CatalogItem
    target: Selector
    waves: list[Wave]
    schedule: ScheduleMode
    count: int
    """How many devices it targets, its limit applied."""
    sites: list[str]
    """The sites of its targets."""
    classes: list[str]
    """The device classes of its targets."""

    @classmethod
    def of(cls, draft: dict[str, Any], ctx: PlanningContext) -> LastPlan | Clarification:
        """The last plan, or a question when the catalog no longer has its version."""
        module = str(draft.get("module", ""))
        version = str(draft.get("version", ""))
        item = ctx.item(module, version)
        if item is None:
            return Clarification(
                reason="unknown_version",
                question=(
                    f"The last plan installs {module} {version}, which the catalog no longer "
                    "has. Ask for the rollout again with a version it has."
                ),
                candidates=[i.version for i in ctx.releases(module) if not i.prerelease],
                module=module or None,
            )
        target = Selector.model_validate(draft.get("target") or {})
        picked = select_groups(ctx, target.model_copy(update={"limit": None}))
        count = picked.count if target.limit is None else min(picked.count, target.limit)
        return cls(
            action=PlanIntent(draft.get("intent", "rollout")),
            item=item,
            target=target,
            waves=[Wave.model_validate(w) for w in draft.get("waves") or []],
            schedule=ScheduleMode((draft.get("schedule") or {}).get("mode", "now")),
            count=count,
            sites=sorted({g.site for g in picked.groups}),
            classes=sorted({g.device_class for g in picked.groups}),
        )

    @property
    def scope(self) -> Scope:
        """The plan's target as a scope (what fits the version is the planner's again)."""
        t = self.target
        return Scope(
            sites=list(t.sites),
            regions=list(t.regions),
            classes=list(t.classes),
            devices=list(t.devices),
            labels=dict(t.labels),
            installed=dict(t.installed),
            limit=t.limit,
        )

    @property
    def where(self) -> str:
        """Its targets in words: ``16 camera-node at muc-01``."""
        return f"{self.count} {', '.join(self.classes)} at {', '.join(self.sites)}"

    @property
    def sizes(self) -> list[int]:
        return wave_sizes(self.waves, self.count)

    def kept_asks(self) -> tuple[dict[str, bool], WaveAsk]:
        """What the engineer asked of the plan's running and waves before, read off the plan:
        its schedule and the waves where they differ from the planner's own."""
        careful = is_careful(self.item)
        flags = {"in_maintenance": True} if self.schedule is ScheduleMode.maintenance else {}
        if careful:
            flags = {}
        if self.action is PlanIntent.rollback or not self.waves:
            return flags, WaveAsk()
        own = rollout_waves(self.count, careful, one_wave=False)
        if _wave_shape(self.waves) == _wave_shape(own):
            return flags, WaveAsk()
        if len(self.waves) == 1:
            return {**flags, "all_at_once": self.count > 1}, WaveAsk()
        first, own_first = self.waves[0], own[0]
        ask: dict[str, Any] = {}
        if (first.count, first.percent) != (own_first.count, own_first.percent):
            if first.count is not None:
                ask["canary"] = first.count
            elif first.percent is not None:
                ask["canary_percent"] = first.percent
        middle = self.waves[1:-1]
        if middle and _wave_shape(middle) != _wave_shape(own[1:-1]):
            if all(w.count is not None for w in middle):
                ask["wave_size"] = middle[0].count
            elif all(w.percent is not None for w in middle):
                ask["wave_percent"] = middle[0].percent
        return flags, WaveAsk(**ask)


def revise(
    follow_up: str, previous: dict[str, Any], ctx: PlanningContext
) -> Intent | Clarification:
    """What ``follow_up`` asks of the draft ``previous``: the revised intent, or a question.

    A follow-up naming another module, or asking for a rollout or rollback and naming
    nothing a plan has, is a request of its own, read by :func:`understand`.
    """
    last = LastPlan.of(previous, ctx)
    if isinstance(last, Clarification):
        return last
    reading = read_request(follow_up, ctx)
    named = set(reading.modules or reading.module_words)
    if named - {last.item.name}:
        return understand(follow_up, ctx)
    understood = FollowUp(reading, ctx, last).resolve()
    if (
        isinstance(understood, Clarification)
        and understood.reason == "nothing_to_change"
        and reading.verbs
        and not _asks_anything(reading)
    ):
        # "roll out the thing": asks for a rollout and names nothing of the plan, a request
        return understand(follow_up, ctx)
    return understood


def _asks_anything(r: Reading) -> bool:
    """Whether a follow-up names anything a plan has: targets, version, waves, timing."""
    return bool(
        r.sites
        or r.regions
        or r.region_groups
        or r.classes
        or r.class_heads
        or r.devices
        or r.labels
        or r.excluded_sites
        or r.excluded_regions
        or r.excluded_classes
        or r.excluded_labels
        or r.versions
        or r.not_versions
        or r.latest
        or r.flags
        or r.wave_sizes
        or r.canary_named
        or r.rest
        or r.limit is not None
        or r.limit_share is not None
    )


class FollowUp:
    """Apply one follow-up's reading to the last plan."""

    def __init__(self, reading: Reading, ctx: PlanningContext, last: LastPlan) -> None:
        self.r = reading
        self.ctx = ctx
        self.last = last
        self.resolver = Resolver(reading, ctx)
        self.module = last.item.name
        self.understood: set[str] = set()
        """Words the reader ignored that the follow-up reading understood (``smaller``)."""

    def resolve(self) -> Intent | Clarification:
        r = self.r
        last = self.last
        asked = self.refused_outright()
        if asked is not None:
            return asked
        named = self.resolver.named_scope(self.module)
        if isinstance(named, Clarification):
            return named
        scope = self.narrowed(named)
        if isinstance(scope, Clarification):
            return scope
        scope = self.left_out(scope)
        if isinstance(scope, Clarification):
            return scope
        chosen = self.version(scope)
        if isinstance(chosen, Clarification):
            return chosen
        item, version_reason = chosen
        scope = self.resolver.the_rest(self.module, item, self.moved_on(scope, item))
        targets = find_targets(self.ctx, scope, [item])
        if targets.count == 0:
            releases = self.ctx.releases(self.module)
            return self.resolver.no_targets(self.module, scope, releases, item)
        checked = self.resolver.check_movement(
            last.action, item, scope, targets.installed(self.module)
        )
        if checked is not None:
            return checked
        scope = self.limited(scope, targets.count)
        if isinstance(scope, Clarification):
            return scope
        waves = self.wave_ask()
        if isinstance(waves, Clarification):
            return waves
        flags, wave_ask = waves
        ignored = [w for w in dict.fromkeys(r.ignored) if normalise(w) not in self.understood]
        intent = Intent(
            action=last.action,
            module=self.module,
            version=item.version,
            version_reason=version_reason,
            scope=scope,
            flags=RequestFlags(**flags),
            wave_ask=wave_ask,
            because=list(dict.fromkeys(r.because)),
            context=list(dict.fromkeys(r.context)),
            ignored=ignored,
            notes=list(self.resolver.notes),
        )
        plan = propose_plan(intent, self.ctx, plan_id="draft", requested_by="draft")
        changes = self.changes(plan, intent)
        if not changes:
            return self.unchanged(plan, ignored)
        return intent.model_copy(update={"notes": [*changes, *intent.notes]})

    # --- what a follow-up cannot ask ---------------------------------------------------------

    def refused_outright(self) -> Clarification | None:
        """A question for a follow-up that holds back, widens, turns the plan round or names
        a module fieldgate does not know; None when it can be applied."""
        r = self.r
        last = self.last
        module = self.module
        if r.held_back is not None:
            return Clarification(
                reason="unclear_action",
                question=(
                    f"You said '{r.held_back}', so I changed nothing: the last plan ({module} "
                    f"{last.item.version} on {last.where}) stays as it is. Say 'withdraw' to "
                    "take it back while it waits."
                ),
                candidates=[],
                module=module,
            )
        back = Role.rollback in r.verbs or r.back or (r.previous and Role.rollout not in r.verbs)
        if (last.action is PlanIntent.rollout and back) or (
            last.action is PlanIntent.rollback and Role.rollout in r.verbs and not back
        ):
            other = "rollback" if back else "rollout"
            return Clarification(
                reason="unclear_action",
                question=(
                    f"The last plan is a {last.action.value} of {module} {last.item.version}; a "
                    f"follow-up changes it but does not turn it into a {other}. Say 'withdraw' "
                    f"to take it back, then ask for the {other} with its version and place."
                ),
                candidates=[],
                module=module,
            )
        if r.everywhere:
            return Clarification(
                reason="widens",
                question=(
                    f"A follow-up only narrows the last plan ({last.where}); it never widens it "
                    "to every device. For a wider rollout, ask for it as a new request with the "
                    "module and version."
                ),
                candidates=[],
                module=module,
            )
        unknown = [w for w in r.unknown_names if not is_ordinary(w.replace("-", ""))]
        if unknown:
            return Clarification(
                reason="unknown_module",
                question=(
                    f"There is no module called '{unknown[0]}' in the catalog (the last plan "
                    f"installs {module}). Did you mean one of these?"
                ),
                candidates=closest(unknown[0], self.ctx.module_names) or [module],
            )
        return None

    def outside(self, named: list[str], what: str = "") -> Clarification:
        """A question for places, classes or devices that are not among the plan's targets."""
        last = self.last
        verb = "is" if len(named) == 1 else "are"
        return Clarification(
            reason="widens",
            question=(
                f"{', '.join(named)} {verb} not among the targets of the last plan "
                f"({last.where}){what}: a follow-up only narrows a plan. For devices outside "
                f"it, ask for a new plan, e.g. 'roll out {self.module} {last.item.version} "
                f"to {named[0]}'."
            ),
            candidates=[],
            module=self.module,
        )

    # --- targets -----------------------------------------------------------------------------

    def narrowed(self, named: Scope) -> Scope | Clarification:
        """The last plan's scope, narrowed to what the follow-up names (never wider)."""
        had = self.last.scope
        update: dict[str, Any] = {}
        for dimension in ("sites", "regions", "classes", "devices"):
            asked: list[str] = getattr(named, dimension)
            before: list[str] = getattr(had, dimension)
            if not asked:
                continue
            outside = [v for v in asked if before and v not in before]
            if outside:
                return self.outside(outside)
            update[dimension] = asked
        clashing = [f"{k}={v}" for k, v in named.labels.items() if had.labels.get(k, v) != v]
        if clashing:
            return self.outside(clashing)
        if named.labels:
            update["labels"] = {**had.labels, **named.labels}
        if not update:
            return had
        scope = had.model_copy(update=update)
        if find_targets(self.ctx, scope, [self.last.item]).count == 0:
            words = [*named.sites, *named.regions, *named.classes, *named.devices]
            return self.outside(words or [f"{k}={v}" for k, v in named.labels.items()])
        return scope

    def left_out(self, scope: Scope) -> Scope | Clarification:
        """Leave out what the follow-up excludes; a question when none of it is a target."""
        r = self.r
        if not (r.excluded_sites or r.excluded_regions or r.excluded_labels or r.excluded_classes):
            return scope
        groups = find_targets(self.ctx, scope, [self.last.item]).groups
        sites = {g.site for g in groups}
        if r.excluded_sites or r.excluded_regions or r.excluded_labels:
            dropped = set(r.excluded_sites) | {
                s.id
                for s in self.ctx.sites
                if s.region in r.excluded_regions
                or any(s.labels.get(k) == v for k, v in r.excluded_labels.items())
            }
            if not dropped & sites:
                named = [
                    *r.excluded_sites,
                    *r.excluded_regions,
                    *(f"{k}={v}" for k, v in r.excluded_labels.items()),
                ]
                return self.outside(named, ", so there is nothing to leave out")
        if r.excluded_classes and not set(r.excluded_classes) & {g.device_class for g in groups}:
            return self.outside(list(r.excluded_classes), ", so there is nothing to leave out")
        classes = {c for i in self.ctx.releases(self.module) for c in i.device_classes}
        return self.resolver.leave_out(self.module, scope, classes)

    def limited(self, scope: Scope, total: int) -> Scope | Clarification:
        """Take the follow-up's count (``only 5 of them``), never more than the plan took."""
        if self.r.limit is None and self.r.limit_share is None:
            return scope
        asked = self.resolver.resolve_limit(total)
        before = self.last.target.limit
        if asked is None and before is None:
            return scope
        if before is not None and (asked is None or asked > before):
            return Clarification(
                reason="widens",
                question=(
                    f"The last plan takes at most {before} devices; a follow-up only narrows "
                    "it. For more devices, ask for a new plan."
                ),
                candidates=[],
                module=self.module,
            )
        return scope.model_copy(update={"limit": asked})

    # --- version -----------------------------------------------------------------------------

    def version(self, scope: Scope) -> tuple[CatalogItem, str] | Clarification:
        """The version the follow-up names, else the plan's."""
        r = self.r
        last = self.last
        rollback = last.action is PlanIntent.rollback
        if not (r.versions or r.not_versions or r.latest or (r.previous and rollback)):
            return last.item, "as in the plan revised"
        releases = self.ctx.releases(self.module)
        targets = find_targets(self.ctx, scope, releases)
        if targets.count == 0:
            return self.resolver.no_targets(self.module, scope, releases, None)
        chosen = self.resolver.resolve_version(self.module, last.action, scope, targets)
        if isinstance(chosen, Clarification):
            return chosen
        item, reason = chosen
        return item, reason.replace("in the request", "in the conversation")

    def moved_on(self, scope: Scope, item: CatalogItem) -> Scope:
        """Installed-version conditions of the plan that were about its old version."""
        old = self.last.item.version
        spec = scope.installed.get(self.module)
        if item.version == old or spec is None:
            return scope
        installed = dict(scope.installed)
        if spec == f"!={old}":
            # "the rest": the devices not yet on the new version
            installed[self.module] = f"!={item.version}"
        elif spec == f">{old}":
            # a rollback's "only those that moved": the planner works it out again
            del installed[self.module]
        return scope.model_copy(update={"installed": installed})

    # --- running and waves -------------------------------------------------------------------

    def wave_ask(self) -> tuple[dict[str, bool], WaveAsk] | Clarification:
        """The flags and wave sizes of the revision: those asked before, then the follow-up's."""
        r = self.r
        last = self.last
        flags, kept = last.kept_asks()
        if r.flags.get("now"):
            flags.pop("in_maintenance", None)
        if r.flags.get("in_maintenance"):
            flags.pop("now", None)
        if r.flags.get("all_at_once") or r.flags.get("skip_canary"):
            kept = WaveAsk()
        flags.update(r.flags)
        ask = kept.model_dump(exclude={"typed"})
        if r.canary is not None or r.canary_percent is not None:
            ask.update(canary=r.canary, canary_percent=r.canary_percent)
        later = (r.wave_count, r.wave_size, r.wave_percent)
        if any(v is not None for v in later):
            ask.update(waves=r.wave_count, wave_size=r.wave_size, wave_percent=r.wave_percent)
        relative = self.relative_canary()
        if isinstance(relative, Clarification):
            return relative
        if relative is not None:
            ask.update(canary=relative, canary_percent=None)
        return flags, WaveAsk(**ask, typed=list(r.wave_sizes))

    def relative_canary(self) -> int | Clarification | None:
        """``make the canary smaller``, ``a bigger first wave``: half or twice the canary now."""
        r = self.r
        words = {normalise(w) for w in r.ignored}
        smaller, bigger = words & _SMALLER, words & _BIGGER
        if not r.canary_named or not (smaller or bigger) or r.canary is not None:
            return None
        self.understood |= smaller | bigger
        first = self.last.sizes[0] if self.last.sizes else 1
        if smaller and len(self.last.waves) > 1 and first <= 1:
            return Clarification(
                reason="nothing_to_change",
                question=(
                    f"The canary of the last plan is already 1 device, the smallest a first "
                    f"wave can be, so it stays as it is ({self.module} {self.last.item.version} "
                    f"on {self.last.where}, waves {_sizes_text(self.last.sizes)}). What "
                    f"else should change? {_CHANGES}"
                ),
                candidates=[],
                module=self.module,
            )
        return max(1, first // 2) if smaller else first * 2

    # --- what changed ------------------------------------------------------------------------

    def changes(self, plan: RolloutPlan, intent: Intent) -> list[str]:
        """What the revision changes of the last plan, for the rationale; empty: nothing."""
        last = self.last
        changes = []
        if plan.target != last.target:
            changes.append(f"targets: {_narrowing(last.target, plan.target)}")
        if plan.version != last.item.version:
            changes.append(f"version {plan.version} (was {last.item.version})")
        sizes = wave_sizes(plan.waves, count_targets(intent, self.ctx))
        if sizes != last.sizes or [w.name for w in plan.waves] != [w.name for w in last.waves]:
            changes.append(f"waves {_sizes_text(sizes)} (were {_sizes_text(last.sizes)})")
        if plan.schedule.mode is not last.schedule:
            changes.append(f"schedule {plan.schedule.mode.value} (was {last.schedule.value})")
        return changes

    def unchanged(self, plan: RolloutPlan, ignored: list[str]) -> Clarification:
        """Say why the follow-up leaves the last plan as it is."""
        last = self.last
        r = self.r
        reasons = declined_in(plan.rationale)
        waves_asked = r.wave_sizes or r.canary_named or r.flags.get("all_at_once")
        if last.action is PlanIntent.rollback and waves_asked:
            reasons.append(
                "a rollback goes in the planner's gated rollback waves, whatever sizes are asked"
            )
        times = [w for w in ignored if w in r.times]
        if times:
            quoted = ", ".join(f"'{w}'" for w in times)
            reasons.append(
                f"{quoted}: a plan starts now or in each site's maintenance window, not at a "
                "time of day"
            )
        unclear = [w for w in ignored if w not in r.times]
        if unclear:
            quoted = ", ".join(f"'{w}'" for w in unclear)
            reasons.append(f"I could not tell what {quoted} should change")
        if reasons:
            said = "; ".join(reasons)
        elif _asks_anything(r):
            said = "the last plan already is what you asked"
        else:
            said = "I could not tell what to change"
        return Clarification(
            reason="nothing_to_change",
            question=(
                f"That leaves the last plan as it is ({said}): "
                f"{self.module} {last.item.version} on {last.where}, waves "
                f"{_sizes_text(last.sizes)}, schedule {last.schedule.value}. "
                f"What should change? {_CHANGES}"
            ),
            candidates=[],
            module=self.module,
        )
