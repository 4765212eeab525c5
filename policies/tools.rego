# Tool calls: the enforcement point every executor tool call passes before it runs.
#
# Query data.fieldgate.tools.decision with the input built by
# fieldgate.policy.tool_input: the tool and its arguments, the devices the call
# names as facts, the approved plan, the current wave, whether the previous wave's
# gate passed, the kill switch and the change freeze. Device lists never reach the policy: Python
# checks each named device against the wave and the plan and passes counts with a
# few ids (input.devices), so a decision costs the same for 10 devices or 10,000.
package fieldgate.tools

tools := data.fieldgate.config.tools

kind := "read" if {
	input.tool in tools.read
} else := "halt" if {
	input.tool in tools.halt
} else := "resume" if {
	input.tool in tools.resume
} else := "deploy" if {
	input.tool in tools.deploy
} else := "rollback" if {
	input.tool in tools.rollback
} else := "unknown"

changes_devices if kind in {"deploy", "rollback", "resume"}

# Facts negated below. OPA moves the arguments of a negated call out of the negation (its
# issue 1877): `not input.devices.count > 0` is undefined, not true, when input.devices is
# undefined, where regopy and regorus say true. A negated rule means the same in every engine.
names_devices if input.devices.count > 0

has_wave if is_object(input.wave)

has_rollback_version if is_string(input.plan.rollback_version)

decision := {
	"allow": allow,
	"reason": reason,
	"reasons": sorted(refusal),
	"kind": kind,
}

default allow := false

allow if {
	kind != "unknown"
	count(refusal) == 0
}

reason := trim_space(concat("; ", sorted(refusal))) if {
	count(refusal) > 0
} else := sprintf("unknown tool %s", [input.tool]) if {
	kind == "unknown"
} else := sprintf("%s: %s", [kind, kind_reason[kind]])

kind_reason := {
	"read": "status and telemetry reads are always allowed",
	"halt": "stopping a rollout is always allowed",
	"resume": "dispatch of the approved plan continues",
	"deploy": "the approved module, version and digest to devices of the current wave",
	"rollback": "the plan's rollback version on the plan's devices",
}

# METADATA
# title: T1 kill switch
# description: Nothing that changes a device runs while the kill switch is on.
refusal contains "kill switch is on: nothing that changes a device runs" if {
	changes_devices
	not input.kill_switch == false
}

# METADATA
# title: T7 change freeze
# description: While the change freeze is in force a forward rollout neither deploys nor resumes; rollbacks (and rollback plans) go on.
refusal contains "change freeze is in force: a forward rollout holds; only rollbacks run" if {
	kind in {"deploy", "resume"}
	not input.freeze == false
	not input.plan.rollback_plan == true
}

# METADATA
# title: T2 approved plan
# description: Changes run only for an approved plan, and the call names its exact revision.
refusal contains "the plan is not approved" if {
	changes_devices
	not input.plan.approved == true
}

refusal contains msg if {
	kind in {"deploy", "rollback"}
	not input.args.plan_hash == input.plan.hash
	msg := "the call does not name the approved revision of the plan (plan_hash)"
}

refusal contains msg if {
	kind in {"deploy", "rollback"}
	not names_devices
	msg := "the call names no devices"
}

# METADATA
# title: T3 approved artifact
# description: Deploy installs only the approved module, version and digest.
refusal contains msg if {
	kind == "deploy"
	some field in ["module", "version", "digest"]
	not input.args[field] == input.plan[field]
	msg := sprintf("%s %v is not the approved %s %s", [field, object.get(input.args, field, null), field, input.plan[field]])
}

# METADATA
# title: T4 current wave
# description: Deploy reaches only devices of the current wave.
refusal contains msg if {
	kind == "deploy"
	outside := input.devices.outside_wave
	outside.count > 0
	msg := sprintf(
		"%d device(s) are not in the current wave %d (e.g. %s)",
		[outside.count, input.wave.index, join(outside.examples)],
	)
}

refusal contains msg if {
	kind == "deploy"
	not has_wave
	msg := "no wave is current: every wave of the plan has run"
}

refusal contains msg if {
	kind == "deploy"
	is_number(input.args.wave)
	input.args.wave != input.wave.index
	msg := sprintf("wave %d is not the current wave %d", [input.args.wave, input.wave.index])
}

# METADATA
# title: T5 previous gate
# description: A wave starts only after the previous wave's health gate passed.
refusal contains msg if {
	kind == "deploy"
	input.wave.index > 0
	not input.wave.previous_gate_passed == true
	msg := sprintf("the health gate of wave %d has not passed", [input.wave.index - 1])
}

# METADATA
# title: T6 rollback target
# description: Rollback returns only the plan's devices, only to the plan's rollback version of its module.
refusal contains msg if {
	kind == "rollback"
	not has_rollback_version
	msg := "the plan names no rollback version"
}

refusal contains msg if {
	kind == "rollback"
	is_string(input.plan.rollback_version)
	not input.args.version == input.plan.rollback_version
	msg := sprintf(
		"version %v is not the plan's rollback version %s",
		[object.get(input.args, "version", null), input.plan.rollback_version],
	)
}

refusal contains msg if {
	kind == "rollback"
	not input.args.module == input.plan.module
	msg := sprintf("module %v is not the plan's module %s", [object.get(input.args, "module", null), input.plan.module])
}

refusal contains msg if {
	kind == "rollback"
	outside := input.devices.outside_plan
	outside.count > 0
	msg := sprintf("%d device(s) are not devices of the plan (e.g. %s)", [outside.count, join(outside.examples)])
}

join(xs) := trim_space(concat(", ", xs))

# Sorts a set or an array into an array. regopy 1.5.2 returns sort() of a set as a
# set (it cannot be indexed and does not equal an array), so sets become arrays first.
sorted(xs) := sort(items) if {
	collection := xs
	items := [x | some x in collection]
}
