# Tests of the rollout decision: each rule denies (or asks for approval) and lets pass.
#
# Inputs are replaced part by part: regopy 1.5.2 crashes on `with input as …` (the
# whole document) but handles `with input.plan as …`. A part left out is null.
package fieldgate.rollout_test

import data.fieldgate.rollout

decide(x) := d if {
	in_plan := object.get(x, "plan", null)
	in_manifest := object.get(x, "manifest", null)
	in_verification := object.get(x, "verification", null)
	in_targets := object.get(x, "targets", null)
	in_waves := object.get(x, "waves", null)
	in_coverage := object.get(x, "coverage", null)
	in_actor := object.get(x, "actor", null)
	in_context := object.get(x, "context", null)
	d := rollout.decision with input.plan as in_plan
		with input.manifest as in_manifest
		with input.verification as in_verification
		with input.targets as in_targets
		with input.waves as in_waves
		with input.coverage as in_coverage
		with input.actor as in_actor
		with input.context as in_context
}

fired(d, rule) if {
	some v in d.violations
	v.rule == rule
}

denies_with(d, word) if {
	some msg in d.deny
	contains(msg, word)
}

# A plan that passes: 60 pump controllers at one site, a 3-device canary.
gate := {"min_success_rate": 0.95, "max_failures": 1, "soak_minutes": 10}

group := {
	"count": 60,
	"class": "pump-ctl",
	"arch": "arm64",
	"memory_mb": 512,
	"installed": "1.8.0",
	"relation": "upgrade",
	"requires": [{"module": "edge-runtime", "range": ">=3.2,<4", "installed": "3.3.1", "satisfied": true}],
	"region": "eu-west",
	"site_labels": {},
	"sites": ["rtm-05"],
	"site_count": 1,
}

base := {
	"plan": {
		"id": "p-1",
		"hash": "0000000000000000000000000000000000000000000000000000000000000001",
		"revision": 1,
		"intent": "rollout",
		"module": "pump-logic",
		"version": "1.9.0",
		"requested_by": "eng-ana",
		"abort": {"failure_threshold": 0.05, "min_executed": 1},
		"rollback": {"version": "1.8.0", "automatic": true, "known": true, "downgrade_allowed": true},
		"schedule": {"mode": "now", "start": "2026-11-21T10:00:00Z"},
	},
	"waves": [
		{"index": 0, "name": "canary", "size": 3, "health_gate": gate, "outside_window": 3},
		{"index": 1, "name": "rest", "size": 57, "health_gate": gate, "outside_window": 57},
	],
	"manifest": {
		"name": "pump-logic",
		"version": "1.9.0",
		"safety": "low",
		"device_classes": ["pump-ctl"],
		"arch": ["arm64"],
		"min_memory_mb": 256,
		"requires": [{"module": "edge-runtime", "range": ">=3.2,<4"}],
		"downgrade_allowed": false,
		"digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
		"signature_present": true,
		"signer": "ed25519:0123456789abcdef",
	},
	"verification": {
		"signature_valid": true,
		"observed_digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
	},
	"targets": [group],
	"coverage": {
		"assigned_twice": {"count": 0, "examples": []},
		"not_targets": {"count": 0, "examples": []},
		"unassigned": {"count": 0, "examples": []},
	},
	"actor": "eng-ana",
	"context": {"now": "2026-11-21T10:00:00Z", "freeze": false},
}

with_plan(fields) := object.union(base, {"plan": object.union(base.plan, fields)})

with_manifest(fields) := object.union(base, {"manifest": object.union(base.manifest, fields)})

with_verification(fields) := object.union(base, {"verification": object.union(base.verification, fields)})

with_group(fields) := object.union(base, {"targets": [object.union(group, fields)]})

with_waves(waves) := object.union(base, {"waves": waves})

with_context(fields) := object.union(base, {"context": object.union(base.context, fields)})

# Names come from a rule, not an argument: regopy 1.5.2 quotes a string that came in as
# a function argument when sprintf formats it.
wave_names := ["canary", "rest"]

wave(index, size) := {"index": index, "name": wave_names[index], "size": size, "health_gate": gate, "outside_window": 0}

# A rollback to 1.8.0 of devices running 1.9.0, whose manifest allows downgrades.
rollback_plan := object.union(base, {
	"plan": object.union(base.plan, {"intent": "rollback", "version": "1.8.0"}),
	"manifest": object.union(base.manifest, {"version": "1.8.0", "downgrade_allowed": true}),
	"targets": [object.union(group, {"installed": "1.9.0", "relation": "downgrade"})],
	"waves": [wave(0, 60)],
})

test_base_plan_is_allowed_without_approvals if {
	d := decide(base)
	d.allow == true
	d.deny == []
	d.approvals == []
	d.targets == 60
}

test_d0_missing_input_part_denies if {
	d := decide(object.remove(base, ["coverage"]))
	d.allow == false
	fired(d, "D0")
	denies_with(d, "coverage")
}

test_d0_manifest_of_other_version_denies if {
	d := decide(with_manifest({"version": "1.8.0"}))
	fired(d, "D0")
	not fired(decide(base), "D0")
}

test_d0_manifest_of_other_module_denies if {
	d := decide(with_manifest({"name": "hvac-controller"}))
	fired(d, "D0")
	denies_with(d, "not the one of pump-logic@1.9.0")
}

test_d0_empty_input_denies if {
	d := decide({})
	d.allow == false
	fired(d, "D1")
}

test_d1_unsigned_artifact_denies if {
	d := decide(with_verification({"signature_valid": false}))
	d.allow == false
	fired(d, "D1")
	denies_with(d, "signed")
}

test_d1_names_why_the_signature_does_not_count if {
	d := decide(with_verification({"signature_valid": false, "signature_problem": "a signed field was changed"}))
	fired(d, "D1")
	denies_with(d, "a signed field was changed")
}

test_d1_signed_artifact_passes if {
	not fired(decide(base), "D1")
}

test_d2_digest_mismatch_denies if {
	d := decide(with_verification({"observed_digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222"}))
	d.allow == false
	fired(d, "D2")
	denies_with(d, "digest")
}

test_d2_unchecked_digest_denies if {
	d := decide(with_verification({"observed_digest": null}))
	fired(d, "D2")
	denies_with(d, "digest")
}

test_d2_matching_digest_passes if {
	not fired(decide(base), "D2")
}

test_d3_wrong_class_denies_with_count if {
	d := decide(with_group({"class": "hvac-gw"}))
	fired(d, "D3")
	denies_with(d, "60 target device(s) have device class hvac-gw")
}

test_d3_wrong_arch_denies_with_count if {
	d := decide(with_group({"arch": "amd64"}))
	fired(d, "D3")
	denies_with(d, "60 target device(s) have arch amd64")
}

test_d3_too_little_memory_denies_with_count if {
	d := decide(with_group({"memory_mb": 128}))
	fired(d, "D3")
	denies_with(d, "less memory than the 256 MiB")
}

test_d3_memory_at_the_minimum_passes if {
	not fired(decide(with_group({"memory_mb": 256})), "D3")
}

test_d3_compatible_targets_pass if {
	not fired(decide(base), "D3")
}

test_d4_unmet_requirement_names_the_module if {
	req := {"module": "edge-runtime", "range": ">=3.2,<4", "installed": "3.1.0", "satisfied": false}
	d := decide(with_group({"requires": [req]}))
	fired(d, "D4")
	denies_with(d, "edge-runtime")
	denies_with(d, "installed: 3.1.0")
}

test_d4_missing_required_module_denies if {
	req := {"module": "edge-runtime", "range": ">=3.2,<4", "installed": null, "satisfied": false}
	d := decide(with_group({"requires": [req]}))
	denies_with(d, "installed: none")
}

test_d4_met_requirement_passes if {
	not fired(decide(base), "D4")
}

test_d5_large_first_wave_denies if {
	d := decide(with_waves([wave(0, 4), wave(1, 56)]))
	d.allow == false
	fired(d, "D5")
	denies_with(d, "canary")
}

test_d5_first_wave_at_the_limit_passes if {
	# 5% of 60 targets is 3
	not fired(decide(base), "D5")
}

test_d5_small_plan_is_exempt if {
	inp := object.union(base, {
		"targets": [object.union(group, {"count": 10})],
		"waves": [wave(0, 10)],
	})
	not fired(decide(inp), "D5")
}

test_d5_eleven_targets_take_one_canary if {
	inp := object.union(base, {
		"targets": [object.union(group, {"count": 11})],
		"waves": [wave(0, 2), wave(1, 9)],
	})
	fired(decide(inp), "D5")
}

test_d5_rollback_is_exempt if {
	d := decide(rollback_plan)
	d.rollback == true
	not fired(d, "D5")
	d.allow == true
}

test_d5_rollback_to_a_newer_version_is_not_exempt if {
	inp := object.union(rollback_plan, {"targets": [object.union(group, {"relation": "upgrade"})]})
	d := decide(inp)
	d.rollback == false
	fired(d, "D5")
	some w in d.warn
	contains(w, "judged as a rollout")
}

test_d6_wave_without_health_gate_denies if {
	d := decide(with_waves([wave(0, 3), object.union(wave(1, 57), {"health_gate": null})]))
	fired(d, "D6")
	denies_with(d, "wave 'rest' has no health gate")
}

test_d6_plan_without_abort_criteria_denies if {
	d := decide(with_plan({"abort": null}))
	fired(d, "D6")
	denies_with(d, "no abort criteria")
}

test_d6_gates_on_every_wave_and_abort_criteria_passes if {
	not fired(decide(base), "D6")
}

test_d6_wave_without_health_gate_is_not_judged_against_floors if {
	d := decide(with_waves([wave(0, 3), object.union(wave(1, 57), {"health_gate": null})]))
	not fired(d, "D11")
}

test_d7_high_safety_outside_windows_denies if {
	d := decide(with_manifest({"safety": "high"}))
	fired(d, "D7")
	denies_with(d, "maintenance")
}

test_d7_critical_safety_outside_windows_denies if {
	fired(decide(with_manifest({"safety": "critical"})), "D7")
}

test_d7_high_safety_inside_windows_passes if {
	careful := object.union(gate, {"soak_minutes": 30})
	waves := [object.union(wave(0, 3), {"health_gate": careful}), object.union(wave(1, 57), {"health_gate": careful})]
	inp := object.union(with_manifest({"safety": "high"}), {"waves": waves})
	d := decide(inp)
	not fired(d, "D7")
	d.allow == true
}

test_d7_low_safety_outside_windows_passes if {
	not fired(decide(base), "D7")
}

test_d8_downgrade_not_allowed_denies if {
	d := decide(with_group({"installed": "2.0.0", "relation": "downgrade"}))
	fired(d, "D8")
	denies_with(d, "downgrade")
	denies_with(d, "(2.0.0)")
}

test_d8_downgrade_allowed_by_manifest_passes if {
	inp := object.union(with_group({"installed": "2.0.0", "relation": "downgrade"}), {"manifest": object.union(base.manifest, {"downgrade_allowed": true})})
	not fired(decide(inp), "D8")
}

test_d8_applies_to_rollbacks if {
	inp := object.union(rollback_plan, {"manifest": object.union(rollback_plan.manifest, {"downgrade_allowed": false})})
	d := decide(inp)
	d.rollback == true
	fired(d, "D8")
	denies_with(d, "downgrade")
}

test_d8_upgrade_passes if {
	not fired(decide(base), "D8")
}

test_d9_freeze_denies_rollouts if {
	d := decide(with_context({"freeze": true}))
	fired(d, "D9")
	denies_with(d, "freeze")
}

test_d9_freeze_lets_rollbacks_run if {
	inp := object.union(rollback_plan, {"context": {"now": "2026-11-21T10:00:00Z", "freeze": true}})
	d := decide(inp)
	not fired(d, "D9")
	d.allow == true
}

test_d9_no_freeze_passes if {
	not fired(decide(base), "D9")
}

test_d10_device_in_two_waves_denies if {
	inp := object.union(base, {"coverage": object.union(base.coverage, {"assigned_twice": {"count": 1, "examples": ["rtm-05-pump-ctl-01"]}})})
	d := decide(inp)
	fired(d, "D10")
	denies_with(d, "rtm-05-pump-ctl-01")
}

test_d10_device_outside_targets_denies if {
	inp := object.union(base, {"coverage": object.union(base.coverage, {"not_targets": {"count": 2, "examples": ["x-1", "x-2"]}})})
	d := decide(inp)
	fired(d, "D10")
	denies_with(d, "not targets")
}

test_d10_target_in_no_wave_denies if {
	inp := object.union(base, {"coverage": object.union(base.coverage, {"unassigned": {"count": 5, "examples": ["a", "b"]}})})
	d := decide(inp)
	fired(d, "D10")
	denies_with(d, "5 target(s) are in no wave")
}

test_d10_no_targets_denies if {
	d := decide(object.union(base, {"targets": []}))
	fired(d, "D10")
}

test_d10_exact_cover_passes if {
	not fired(decide(base), "D10")
}

approval_roles(d) := roles if {
	decision := d
	roles := {[a.role, a.count] | some a in decision.approvals}
}

test_high_safety_needs_one_safety_approval if {
	inp := object.union(with_manifest({"safety": "high"}), {"waves": [wave(0, 3), wave(1, 57)]})
	approval_roles(decide(inp)) == {["safety", 1]}
}

test_critical_safety_needs_two_safety_approvals if {
	approval_roles(decide(with_manifest({"safety": "critical"}))) == {["safety", 2]}
}

test_low_and_no_safety_need_no_approval if {
	decide(base).approvals == []
	decide(with_manifest({"safety": "none"})).approvals == []
}

test_more_than_100_targets_need_release_manager if {
	inp := object.union(base, {"targets": [object.union(group, {"count": 101})], "waves": [wave(0, 5), wave(1, 96)]})
	d := decide(inp)
	approval_roles(d) == {["release-manager", 1]}
	d.allow == true
}

test_100_targets_need_no_release_manager if {
	inp := object.union(base, {"targets": [object.union(group, {"count": 100})], "waves": [wave(0, 5), wave(1, 95)]})
	decide(inp).approvals == []
}

test_two_regions_need_release_manager if {
	other := object.union(group, {"count": 10, "region": "eu-north", "sites": ["osl-01"]})
	inp := object.union(base, {"targets": [object.union(group, {"count": 50}), other]})
	approval_roles(decide(inp)) == {["release-manager", 1]}
}

test_regulated_site_needs_compliance if {
	d := decide(with_group({"site_labels": {"regulated": "true"}}))
	approval_roles(d) == {["compliance", 1]}
	some a in d.approvals
	contains(a.reason, "rtm-05")
}

test_site_not_labelled_regulated_true_needs_no_compliance if {
	decide(with_group({"site_labels": {"regulated": "false"}})).approvals == []
}

test_approvals_add_up if {
	inp := object.union(with_manifest({"safety": "critical"}), {"targets": [
		object.union(group, {"count": 100, "site_labels": {"regulated": "true"}}),
		object.union(group, {"count": 20, "region": "us-east", "sites": ["nyc-01"]}),
	], "waves": [wave(0, 6), wave(1, 114)]})
	approval_roles(decide(inp)) == {["safety", 2], ["release-manager", 1], ["compliance", 1]}
}

test_rollback_version_that_forbids_downgrades_warns if {
	d := decide(with_plan({"rollback": {"version": "1.8.0", "automatic": true, "known": true, "downgrade_allowed": false}}))
	d.allow == true
	some w in d.warn
	contains(w, "does not allow downgrades")
}

test_missing_rollback_version_warns if {
	d := decide(with_plan({"rollback": null}))
	some w in d.warn
	contains(w, "no rollback version")
	decide(base).warn == []
}

test_unknown_rollback_version_warns if {
	d := decide(with_plan({"rollback": {"version": "1.0.0", "automatic": true, "known": false, "downgrade_allowed": null}}))
	d.allow == true
	some w in d.warn
	contains(w, "1.0.0 is not in the catalog")
}

test_empty_wave_warns if {
	d := decide(with_waves([wave(0, 3), wave(1, 57), object.union(wave(1, 0), {"index": 2, "name": "late"})]))
	some w in d.warn
	contains(w, "takes no devices")
}
