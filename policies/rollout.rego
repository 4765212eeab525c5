# The rollout decision: whether a plan may run and who must approve it first.
#
# Query data.fieldgate.rollout.decision with the input built by
# fieldgate.policy.rollout_input: facts about the plan, the manifest, the artifact
# check and the targets grouped by identical facts (with counts), so that the cost
# of a decision does not grow with the number of devices. Python computes facts
# (version comparisons, wave membership, maintenance windows); every rule is here.
#
# Written for speed on regopy: references to input and data are bound to locals
# before a comprehension walks the targets (regopy evaluates a reference in a
# comprehension at every step), and the common case of a rule that does not fire
# is decided by a cheap first condition.
package fieldgate.rollout

default module_ref := "the module"

module_ref := sprintf("%s@%s", [input.plan.module, input.plan.version])

# The input's lists, empty where the input has none (D0 denies such an input): regorus
# stops with an error when it iterates null, where OPA and regopy iterate nothing.
default targets := []

targets := input.targets if is_array(input.targets)

default waves := []

waves := input.waves if is_array(input.waves)

default target_count := 0

target_count := sum([g.count | some g in targets])

regions := {g.region | some g in targets}

default safety := "unknown"

safety := input.manifest.safety

# A rollback plan: asked for as a rollback, to a version older than every target runs.
default is_rollback := false

is_rollback if {
	input.plan.intent == "rollback"
	count(targets) > 0
	every g in targets {
		g.relation == "downgrade"
	}
}

canary_limit := max([1, floor((target_count * data.fieldgate.config.canary_percent) / 100)])

decision := {
	"allow": count(violation) == 0,
	"deny": sorted({v.message | some v in violation}),
	"warn": sorted(warning),
	"approvals": [a | some a in approval],
	"violations": violation,
	"rollback": is_rollback,
	"targets": target_count,
}

missing_part contains "plan" if not is_object(object.get(input, "plan", null))

missing_part contains "manifest" if not is_object(object.get(input, "manifest", null))

missing_part contains "verification" if not is_object(object.get(input, "verification", null))

missing_part contains "targets" if not is_array(object.get(input, "targets", null))

missing_part contains "waves" if not is_array(object.get(input, "waves", null))

missing_part contains "coverage" if not is_object(object.get(input, "coverage", null))

missing_part contains "context" if not is_object(object.get(input, "context", null))

# METADATA
# title: D0 input
# description: The input carries every part, and the manifest is the one of the version the plan installs.
violation contains {"rule": "D0", "message": msg} if {
	some part in missing_part
	msg := sprintf("input: %s is missing from the policy input", [part])
}

violation contains {"rule": "D0", "message": msg} if {
	not input.manifest.name == input.plan.module
	msg := sprintf("input: the manifest is not the one of %s", [module_ref])
}

violation contains {"rule": "D0", "message": msg} if {
	not input.manifest.version == input.plan.version
	msg := sprintf("input: the manifest is not the one of %s", [module_ref])
}

# The reason Python found when the signature did not verify (missing: not said).
# Facts negated below. OPA moves the arguments of a negated call out of the negation (its
# issue 1877): `not is_string(x.y)` is undefined, not true, when x.y is undefined, where
# regopy and regorus say true. A negated rule means the same in every engine.
digest_checked if is_string(input.verification.observed_digest)

has_abort if is_object(input.plan.abort)

has_rollback_version if is_string(input.plan.rollback.version)

default signature_problem := "signature missing or not verified"

signature_problem := input.verification.signature_problem if is_string(input.verification.signature_problem)

# METADATA
# title: D1 signed
# description: The whole manifest must carry a factory signature that verifies.
violation contains {"rule": "D1", "message": msg} if {
	not input.verification.signature_valid == true
	msg := sprintf(
		"%s: the manifest is not signed by a trusted factory key: %s",
		[module_ref, signature_problem],
	)
}

# METADATA
# title: D2 digest
# description: The artifact held must have the digest its manifest names.
violation contains {"rule": "D2", "message": msg} if {
	is_string(input.verification.observed_digest)
	input.verification.observed_digest != input.manifest.digest
	msg := sprintf(
		"%s: the artifact digest %s does not match its manifest digest %s",
		[module_ref, input.verification.observed_digest, input.manifest.digest],
	)
}

violation contains {"rule": "D2", "message": msg} if {
	not digest_checked
	msg := sprintf("%s: the artifact digest was not checked against its manifest", [module_ref])
}

# METADATA
# title: D3 compatible
# description: Every target must have a device class, arch and memory the manifest supports.
violation contains {"rule": "D3", "message": msg} if {
	groups := targets
	supported := {c | some c in input.manifest.device_classes}
	bad := {g.class | some g in groups} - supported
	count(bad) > 0
	n := sum([g.count | some g in groups; g.class in bad])
	msg := sprintf(
		"incompatible: %d target device(s) have device class %s; %s runs on %s",
		[n, join(bad), module_ref, join(supported)],
	)
}

violation contains {"rule": "D3", "message": msg} if {
	groups := targets
	supported := {a | some a in input.manifest.arch}
	bad := {g.arch | some g in groups} - supported
	count(bad) > 0
	n := sum([g.count | some g in groups; g.arch in bad])
	msg := sprintf(
		"incompatible: %d target device(s) have arch %s; %s is built for %s",
		[n, join(bad), module_ref, join(supported)],
	)
}

violation contains {"rule": "D3", "message": msg} if {
	groups := targets
	needed := input.manifest.min_memory_mb
	low := [g | some g in groups; g.memory_mb < needed]
	count(low) > 0
	n := sum([g.count | some g in low])
	smallest := min([g.memory_mb | some g in low])
	msg := sprintf(
		"incompatible: %d target device(s) have less memory than the %d MiB %s needs (smallest %d MiB)",
		[n, needed, module_ref, smallest],
	)
}

# Requirements not met, one entry per group and requirement: [module, device count, installed].
unmet_requirements := [[r.module, g.count, installed_text(r.installed)] |
	some g in targets
	some r in g.requires
	not r.satisfied
]

# METADATA
# title: D4 requires
# description: Every module the manifest requires must be installed on each target in its range.
violation contains {"rule": "D4", "message": msg} if {
	count(unmet_requirements) > 0
	some req in input.manifest.requires
	name := req.module
	unmet := [u | some u in unmet_requirements; u[0] == name]
	count(unmet) > 0
	n := sum([u[1] | some u in unmet])
	found := {u[2] | some u in unmet}
	msg := sprintf(
		"requires: %s %s is not met on %d target device(s) (installed: %s)",
		[name, req.range, n, join(found)],
	)
}

installed_text(v) := v if is_string(v)

installed_text(v) := "none" if not is_string(v)

# METADATA
# title: D5 canary
# description: With more than 10 targets the first wave takes at most max(1, 5% of targets); rollbacks are exempt.
violation contains {"rule": "D5", "message": msg} if {
	first := input.waves[0]
	first.size > canary_limit
	target_count > data.fieldgate.config.canary_min_targets
	not is_rollback
	msg := sprintf(
		"canary: the first wave '%s' takes %d devices; with %d targets it may take at most %d (%d%% of the targets, at least 1)",
		[first.name, first.size, target_count, canary_limit, data.fieldgate.config.canary_percent],
	)
}

# METADATA
# title: D6 gates
# description: Every wave needs a health gate and the plan abort criteria (how strict they must be is D11).
violation contains {"rule": "D6", "message": msg} if {
	some w in waves
	not is_object(object.get(w, "health_gate", null))
	msg := sprintf("health gate: wave '%s' has no health gate", [w.name])
}

violation contains {"rule": "D6", "message": msg} if {
	not has_abort
	msg := "abort: the plan has no abort criteria"
}


# METADATA
# title: D7 maintenance
# description: Modules of safety class high or critical change devices only inside maintenance windows.
violation contains {"rule": "D7", "message": msg} if {
	safety in data.fieldgate.config.maintenance_safety_classes
	some w in waves
	w.outside_window > 0
	msg := sprintf(
		"maintenance: %s has safety class %s and wave '%s' would change %d device(s) outside maintenance windows (schedule %s)",
		[module_ref, safety, w.name, w.outside_window, input.plan.schedule.mode],
	)
}

# METADATA
# title: D8 downgrade
# description: A target running a newer version is not moved back unless the manifest to install allows downgrades.
violation contains {"rule": "D8", "message": msg} if {
	down := [g | some g in targets; g.relation == "downgrade"]
	count(down) > 0
	not input.manifest.downgrade_allowed == true
	n := sum([g.count | some g in down])
	newer := {g.installed | some g in down}
	msg := sprintf(
		"downgrade: %d target device(s) run a newer %s (%s) and the manifest of %s does not allow downgrades",
		[n, input.plan.module, join(newer), module_ref],
	)
}

# METADATA
# title: D9 freeze
# description: While a change freeze is in force only rollback plans run.
violation contains {"rule": "D9", "message": msg} if {
	input.context.freeze == true
	not is_rollback
	msg := "freeze: a change freeze is in force; only rollback plans may run"
}

# METADATA
# title: D10 coverage
# description: The waves cover the targets exactly once.
violation contains {"rule": "D10", "message": msg} if {
	fact := input.coverage.assigned_twice
	fact.count > 0
	msg := sprintf(
		"waves: %d device(s) are assigned to more than one wave or twice in one wave (e.g. %s)",
		[fact.count, join(fact.examples)],
	)
}

violation contains {"rule": "D10", "message": msg} if {
	fact := input.coverage.not_targets
	fact.count > 0
	msg := sprintf("waves: %d device(s) in the waves are not targets of the plan (e.g. %s)", [fact.count, join(fact.examples)])
}

violation contains {"rule": "D10", "message": msg} if {
	fact := input.coverage.unassigned
	fact.count > 0
	msg := sprintf("waves: %d target(s) are in no wave (e.g. %s)", [fact.count, join(fact.examples)])
}

violation contains {"rule": "D10", "message": msg} if {
	target_count == 0
	msg := "waves: the plan has no target devices"
}

# The floors a plan's gates are held to: a rollback's own (it returns devices to a version
# they ran, and is exempt from the canary too) or a rollout's, for the module's safety class.
default floor_kind := "rollout"

floor_kind := "rollback" if is_rollback

gate_floor := data.fieldgate.config.gate_floors[floor_kind][safety]

default floor_label := "safety class unknown"

floor_label := sprintf("safety class %s", [safety]) if floor_kind == "rollout"

floor_label := sprintf("safety class %s (rollback)", [safety]) if floor_kind == "rollback"

# METADATA
# title: D11 gate floors
# description: Every wave's health gate and the abort criteria are at least as strict as the floors data.fieldgate.config.gate_floors sets for the safety class (rollbacks have their own); the abort criteria are judged within the first wave.
violation contains {"rule": "D11", "message": msg} if {
	not gate_floor
	msg := sprintf("gate floors: the pack sets no %s floors for safety class %s", [floor_kind, safety])
}

violation contains {"rule": "D11", "message": msg} if {
	some w in waves
	is_object(w.health_gate)
	some field in ["min_success_rate", "max_failures"]
	not is_number(object.get(w.health_gate, field, null))
	msg := sprintf("wave %d %s: the health gate has no %s", [w.index + 1, w.name, field])
}

violation contains {"rule": "D11", "message": msg} if {
	least := gate_floor.min_success_rate
	some w in waves
	rate := w.health_gate.min_success_rate
	rate < least
	msg := sprintf(
		"wave %d %s: min_success_rate %s is below the floor %s for %s",
		[w.index + 1, w.name, number_text(rate), number_text(least), floor_label],
	)
}

violation contains {"rule": "D11", "message": msg} if {
	percent := gate_floor.max_failures_percent
	some w in waves
	failures := w.health_gate.max_failures
	allowed := ceil((w.size * percent) / 100)
	failures > allowed
	msg := sprintf(
		"wave %d %s: max_failures %s is above the floor %s (%s%% of the wave's %d devices, rounded up) for %s",
		[w.index + 1, w.name, number_text(failures), number_text(allowed), number_text(percent), w.size, floor_label],
	)
}

violation contains {"rule": "D11", "message": msg} if {
	least := gate_floor.min_soak_minutes
	some w in waves
	is_object(w.health_gate)
	soak := object.get(w.health_gate, "soak_minutes", 0)
	soak < least
	msg := sprintf(
		"wave %d %s: soak_minutes %s is below the floor %s for %s",
		[w.index + 1, w.name, number_text(soak), number_text(least), floor_label],
	)
}

violation contains {"rule": "D11", "message": msg} if {
	is_object(input.plan.abort)
	not is_number(object.get(input.plan.abort, "failure_threshold", null))
	msg := "abort: the abort criteria have no failure_threshold"
}

violation contains {"rule": "D11", "message": msg} if {
	most := gate_floor.max_abort_threshold
	threshold := input.plan.abort.failure_threshold
	threshold > most
	msg := sprintf(
		"abort: failure_threshold %s is above the floor %s for %s",
		[number_text(threshold), number_text(most), floor_label],
	)
}

# min_executed is bounded by the first wave (at least 1, as the contract's minimum), so
# that a failing canary trips the abort before the next wave starts.
violation contains {"rule": "D11", "message": msg} if {
	is_object(input.plan.abort)
	executed := object.get(input.plan.abort, "min_executed", 1)
	first := input.waves[0]
	most := max([1, first.size])
	executed > most
	msg := sprintf(
		"abort: min_executed %s is above the floor %s, the size of wave 1 %s, so a failing first wave would not trip the abort",
		[number_text(executed), number_text(most), first.name],
	)
}

# Warnings do not deny; they are shown to the approvers.
warning contains msg if {
	input.plan.intent == "rollback"
	not is_rollback
	msg := sprintf(
		"rollback: the plan is asked for as a rollback but %s is not older than what every target runs; it is judged as a rollout",
		[input.plan.version],
	)
}

warning contains msg if {
	not has_rollback_version
	some g in targets
	g.relation != "fresh"
	msg := "rollback: the plan names no rollback version although targets run the module"
}

warning contains msg if {
	input.plan.rollback.known == false
	msg := sprintf("rollback: version %s is not in the catalog", [input.plan.rollback.version])
}

warning contains msg if {
	input.plan.rollback.downgrade_allowed == false
	msg := sprintf(
		"rollback: the manifest of %s does not allow downgrades: a separate rollback plan to it would be denied (this plan's own rollback is not)",
		[input.plan.rollback.version],
	)
}

warning contains msg if {
	some w in waves
	w.size == 0
	msg := sprintf("waves: wave '%s' takes no devices", [w.name])
}

# METADATA
# title: A1 safety approval
# description: Safety class high needs one safety approval, critical two.
approval contains {"role": "safety", "count": n, "reason": reason} if {
	n := data.fieldgate.config.safety_approvals[safety]
	reason := sprintf("%s has safety class %s", [module_ref, safety])
}

release_manager_reason contains msg if {
	maximum := data.fieldgate.config.release_manager_max_targets
	target_count > maximum
	msg := sprintf("%d targets (more than %d)", [target_count, maximum])
}

release_manager_reason contains msg if {
	count(regions) > data.fieldgate.config.release_manager_max_regions
	msg := sprintf("targets in %d regions (%s)", [count(regions), join(regions)])
}

# METADATA
# title: A2 release-manager approval
# description: More than 100 targets, or targets in more than one region, need one release-manager approval.
approval contains {"role": "release-manager", "count": 1, "reason": reason} if {
	count(release_manager_reason) > 0
	reason := trim_space(concat("; ", sorted(release_manager_reason)))
}

# A comprehension, not a partial rule: regopy 1.5.2 is several times slower at
# partial rules that iterate.
regulated_sites := {site |
	label := data.fieldgate.config.regulated_label
	some g in targets
	g.site_labels[label] == "true"
	some site in g.sites
}

# METADATA
# title: A3 compliance approval
# description: Targets at a site labelled regulated "true" need one compliance approval.
approval contains {"role": "compliance", "count": 1, "reason": reason} if {
	count(regulated_sites) > 0
	reason := sprintf("targets at regulated sites (%s)", [join(regulated_sites)])
}

# Joins strings for messages, sorted. The trim_space is not decoration: regopy 1.5.2
# renders the result of concat with quotes when sprintf formats it beside other values.
join(xs) := trim_space(concat(", ", sorted(xs)))

# Writes a number for a message: %v in regopy 1.5.2 prints 0.94 as 0.9399999999999999,
# %g of an integer is not a number in OPA, and %d of a whole float (0.0) is an error in
# regopy. The trim_space is there for the reason given at join.
number_text(x) := trim_space(format_int(x, 10)) if x == floor(x)

# Six decimals without trailing zeros: regorus writes %g as 8.9e-1, regopy %v as
# 0.9399999999999999; this reads the same in every engine.
number_text(x) := trim_right(trim_right(sprintf("%.6f", [x]), "0"), ".") if x != floor(x)

# Sorts a set or an array into an array. regopy 1.5.2 returns sort() of a set as a
# set (it cannot be indexed and does not equal an array), so sets become arrays first.
sorted(xs) := sort(items) if {
	collection := xs
	items := [x | some x in collection]
}
