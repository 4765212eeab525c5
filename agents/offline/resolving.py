"""Resolve a reading against the fleet and catalog: an intent, or a question back.

What cannot be resolved against the planning context becomes a question, not a guess.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from fieldgate.agents._summary import CatalogItem, PlanningContext
from fieldgate.agents.offline.context import read_context
from fieldgate.agents.offline.intent import Clarification, Intent, RequestFlags, Scope, WaveAsk
from fieldgate.agents.offline.lexicon import Role, build_lexicon, match, tokenize
from fieldgate.agents.offline.nearest import closest
from fieldgate.agents.offline.reading import Reader, Reading
from fieldgate.agents.offline.targets import Targets, find_targets
from fieldgate.agents.offline.versions import VersionSpec, newest_release, runs, versions_text
from fieldgate.contract import parse_version
from fieldgate.plan import PlanIntent


def _closest(word: str, options: Sequence[str], limit: int = 3) -> list[str]:
    return closest(word, options, limit) or list(options)


def _nearest_text(candidates: Sequence[str], options: Sequence[str]) -> str:
    """``Nearest known: rtm-05.`` when the candidates are a choice, not every name there is."""
    if not candidates or len(candidates) == len(options):
        return f"Known: {', '.join(options)}."
    return f"Nearest known: {', '.join(candidates)}."


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


class Resolver:
    """Turn a reading into an intent or a question."""

    def __init__(self, reading: Reading, ctx: PlanningContext) -> None:
        self.r = reading
        self.ctx = ctx
        self.notes: list[str] = []
        self.ran_from: list[str] = []
        """What the targets ran before a rollback to the version they ran before."""
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
        scope = self.the_rest(module, item, scope)
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
            if not runs(typed, running):
                self.notes.append(
                    f"you said from {typed}, but the targets run {', '.join(running)}"
                    if running
                    else f"you said from {typed}, but no target runs {module} yet"
                )
        for typed in self.context_versions:
            if runs(typed, running):
                known = "what the targets run now"
            else:
                known = f"context (the targets run {', '.join(running) or 'none of ' + module})"
            self.notes.append(
                f"named {typed} as well: planned {item.version}, the version after 'to'; "
                f"{typed} read as {known}"
            )
        for typed in dict.fromkeys(r.reason_versions):
            if runs(typed, running) or runs(typed, self.ran_from):
                known = "what the targets run now" if runs(typed, running) else "what they ran"
            else:
                known = f"context (the targets run {', '.join(running) or 'none of ' + module})"
            self.notes.append(
                f"named {typed} as the reason: planned {item.version}; {typed} read as {known}"
            )
        self.notes += r.kind_notes
        for typed in r.not_versions:
            self.notes.append(f"not {typed}: left out, as asked")
        wave_ask = WaveAsk(
            canary=r.canary,
            canary_percent=r.canary_percent,
            waves=r.wave_count,
            wave_size=r.wave_size,
            wave_percent=r.wave_percent,
            typed=list(dict.fromkeys(r.wave_sizes)),
        )
        if r.wave_sizes and not wave_ask.asked:
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
            wave_ask=wave_ask,
            because=list(dict.fromkeys(r.because)),
            context=list(dict.fromkeys(r.context)),
            ignored=list(dict.fromkeys(r.ignored)),
            notes=self.notes,
        )

    def the_rest(self, module: str, item: CatalogItem, scope: Scope) -> Scope:
        """``the rest``, ``the others``: leave out the devices that already run the target."""
        if not self.r.rest or self.r.devices:
            return scope
        installed = {module: f"!={item.version}"}
        running = [v for v in self.r.from_versions if VersionSpec.parse(v) is not None]
        if len(running) == 1 and (spec := VersionSpec.parse(running[0])) and spec.exact:
            installed = {module: f"=={spec.exact}"}
        found = find_targets(self.ctx, scope, [item])
        already = found.installed(module).get(item.version, 0)
        if not already and installed[module].startswith("!="):
            return scope
        self.notes.append(
            f"the rest: only devices whose {module} is {installed[module]} "
            f"({already} in scope already run {item.version})"
        )
        return scope.model_copy(update={"installed": installed})

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
        specs = [s for s in (VersionSpec.parse(v) for v in r.versions) if s is not None]
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
        """The devices the request names, with what it leaves out taken away; or a question."""
        named = self.named_scope(module)
        if isinstance(named, Clarification):
            return named
        return self.leave_out(module, named, _module_classes(self.ctx, module))

    def named_scope(self, module: str) -> Scope | Clarification:
        """The sites, regions, classes, devices and labels the request names (exclusions
        aside), or a question for a word that names none of them."""
        r = self.r
        ctx = self.ctx
        # a place dimension that says nothing known is not narrowed, whatever the classes say
        placed = bool(
            r.sites
            or r.regions
            or r.region_groups
            or r.devices
            or r.labels
            or r.everywhere
            or r.excluded_sites
            or r.excluded_regions
        )
        if placed:
            # unknown words in sentences that ask for nothing cannot widen a narrowed request
            r.ignored += [w for w in (*r.unknown_sites, *r.unknown_classes) if w in r.aside]
            r.unknown_sites = [w for w in r.unknown_sites if w not in r.aside]
            r.unknown_classes = [w for w in r.unknown_classes if w not in r.aside]
        if not placed and r.unresolved_places:
            # an ignored place must never become everywhere
            r.unknown_sites = [*r.unknown_sites, *r.unresolved_places]
        if r.unknown_sites:
            word = r.unknown_sites[0]
            options = [s.id for s in ctx.sites] + ctx.regions
            nearest = _closest(word, options)
            return Clarification(
                reason="unknown_site",
                question=(
                    f"I do not know a site or region called '{word}'. "
                    f"{_nearest_text(nearest, options)} Which one did you mean?"
                ),
                candidates=nearest,
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
        return Scope(
            sites=list(dict.fromkeys(r.sites)),
            regions=self.regions(),
            classes=list(dict.fromkeys(classes)),
            devices=list(dict.fromkeys(r.devices)),
            labels=dict(r.labels),
        )

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
        ruled_out = [s for s in (VersionSpec.parse(v) for v in r.not_versions) if s is not None]
        releases = [
            i for i in self.ctx.releases(module) if not any(s.matches(i) for s in ruled_out)
        ]
        stable = [i for i in releases if not i.prerelease]
        wanted = list(dict.fromkeys(r.versions))
        specs = [s for s in (VersionSpec.parse(v) for v in wanted) if s is not None]
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
                    f"Known versions: {versions_text(shown)}. Which one?"
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
            newest = newest_release(releases)
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
                        f"({versions_text(stable[-1:])}). Which version did you want?"
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
                    f"{running}; newer releases: {versions_text(newer)}{note}."
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
        before = self.ran_before(module, targets, devices)
        if before is not None:
            return before
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
                f"older releases: {versions_text(older) or 'none'}."
            ),
            candidates=[i.version for i in older],
            module=module,
        )

    def ran_before(
        self, module: str, targets: Targets, devices: str
    ) -> tuple[CatalogItem, str] | Clarification | None:
        """The version ``targets`` ran before, from the fleet's history; None without a record.

        With a broken version named as the reason, only the devices running it count. When the
        devices ran different versions before, or only some have a record, ask.
        """
        broken = [s for s in map(VersionSpec.parse, self.r.reason_versions) if s is not None]
        groups = [g for g in targets.groups if module in g.installed]
        if broken:
            groups = [
                g
                for g in groups
                if any(b.matches_version(parse_version(g.installed[module])) for b in broken)
            ]
            if not groups:
                running = sorted(
                    {g.installed[module] for g in targets.groups if module in g.installed}
                )
                return Clarification(
                    reason="no_targets",
                    question=(
                        f"You named {', '.join(self.r.reason_versions)} as the trouble, but "
                        f"{devices} run {module} {', '.join(running)}. Which devices or "
                        "version did you mean?"
                    ),
                    candidates=running,
                    module=module,
                )
        ran: Counter[str] = Counter()
        unknown = 0
        for group in groups:
            version = group.previous.get(module)
            if version is None:
                unknown += group.count
            else:
                ran[version] += group.count
        if not ran:
            return None
        if len(ran) > 1 or unknown:
            parts = [f"{v} on {c}" for v, c in sorted(ran.items())]
            if unknown:
                parts.append(f"no record for {unknown}")
            return Clarification(
                reason="version_ambiguous",
                question=(
                    f"The {devices} ran different versions of {module} before: "
                    f"{', '.join(parts)}. Which version should they go back to?"
                ),
                candidates=sorted(ran),
                module=module,
            )
        version = next(iter(ran))
        item = self.ctx.item(module, version)
        if item is None:
            return Clarification(
                reason="unknown_version",
                question=(
                    f"The {devices} ran {module} {version} before, but the catalog no longer "
                    "has it. Which version should they go back to?"
                ),
                candidates=[i.version for i in self.ctx.releases(module) if not i.prerelease],
                module=module,
            )
        self.ran_from = sorted({g.installed[module] for g in groups})
        return item, f"the version these devices ran before ({version}, from the fleet's history)"

    @staticmethod
    def pick(spec: VersionSpec, releases: Sequence[CatalogItem]) -> CatalogItem | None:
        found = [i for i in releases if spec.matches(i)]
        if spec.exact is not None:
            return found[0] if found else None
        return newest_release(found)

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
    return Resolver(read_request(request, ctx), ctx).resolve()


def read_request(request: str, ctx: PlanningContext) -> Reading:
    """What ``request`` names, read against the lexicon of ``ctx`` (nothing resolved yet)."""
    context = read_context(request)
    tokens = tokenize(context.text, [s.id for s in ctx.sites])
    matches = match(tokens, build_lexicon(ctx))
    reading = Reader(tokens, matches, ctx, tickets=context.tickets).read()
    reading.context = [*context.notes, *reading.context]
    return reading
