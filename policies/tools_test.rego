# Tests of the tool-call enforcement point.
#
# Inputs are replaced part by part (regopy 1.5.2 crashes on `with input as …`).
# The devices a call names arrive as facts (input.devices, built by
# fieldgate.policy.tool_input): counts of those outside the wave and the plan, with
# a few ids, so the tests give the facts directly.
package fieldgate.tools_test

import data.fieldgate.tools

check(x) := d if {
	in_tool := object.get(x, "tool", null)
	in_args := object.get(x, "args", null)
	in_devices := object.get(x, "devices", null)
	in_plan := object.get(x, "plan", null)
	in_wave := object.get(x, "wave", null)
	in_kill_switch := object.get(x, "kill_switch", null)
	in_freeze := object.get(x, "freeze", null)
	d := tools.decision with input.tool as in_tool
		with input.args as in_args
		with input.devices as in_devices
		with input.plan as in_plan
		with input.wave as in_wave
		with input.kill_switch as in_kill_switch
		with input.freeze as in_freeze
}

digest := "sha256:1111111111111111111111111111111111111111111111111111111111111111"

plan_hash := "0000000000000000000000000000000000000000000000000000000000000001"

plan := {
	"id": "p-1",
	"hash": plan_hash,
	"module": "pump-logic",
	"version": "1.9.0",
	"digest": digest,
	"rollback_version": "1.8.0",
	"approved": true,
}

deploy_args := {
	"plan_hash": plan_hash,
	"module": "pump-logic",
	"version": "1.9.0",
	"digest": digest,
}

# The call names `named` devices; `off_wave` and `off_plan` are the example ids of those
# outside the current wave and the plan, and `n_off_wave`, `n_off_plan` how many there are.
devices(named, n_off_wave, off_wave, n_off_plan, off_plan) := {
	"count": named,
	"outside_wave": {"count": n_off_wave, "examples": off_wave},
	"outside_plan": {"count": n_off_plan, "examples": off_plan},
}

in_wave_and_plan(named) := devices(named, 0, [], 0, [])

deploy := {
	"tool": "deploy_wave",
	"args": deploy_args,
	"devices": in_wave_and_plan(2),
	"plan": plan,
	"wave": {"index": 0, "previous_gate_passed": false},
	"kill_switch": false,
	"freeze": false,
}

second_wave := {"index": 1, "previous_gate_passed": true}

rollback := object.union(deploy, {
	"tool": "rollback",
	"args": {"plan_hash": plan_hash, "module": "pump-logic", "version": "1.8.0"},
	"devices": in_wave_and_plan(1),
})

with_args(call, fields) := object.union(call, {"args": object.union(call.args, fields)})

with_devices(call, facts) := object.union(call, {"devices": facts})

refused_for(d, word) if {
	d.allow == false
	contains(d.reason, word)
}

test_deploy_to_current_wave_is_allowed if {
	d := check(deploy)
	d.allow == true
	d.kind == "deploy"
}

test_deploy_of_another_version_is_refused if {
	refused_for(check(with_args(deploy, {"version": "2.0.0"})), "version")
}

test_deploy_of_another_digest_is_refused if {
	refused_for(check(with_args(deploy, {"digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222"})), "digest")
}

test_deploy_of_another_module_is_refused if {
	refused_for(check(with_args(deploy, {"module": "hvac-controller"})), "module")
}

test_deploy_outside_current_wave_is_refused if {
	d := check(with_devices(deploy, devices(2, 1, ["d-03"], 0, [])))
	d.reasons == ["1 device(s) are not in the current wave 0 (e.g. d-03)"]
}

test_deploy_outside_current_wave_names_three_of_them if {
	d := check(with_devices(deploy, devices(9, 7, ["d-03", "d-04", "d-05"], 0, [])))
	d.reasons == ["7 device(s) are not in the current wave 0 (e.g. d-03, d-04, d-05)"]
}

test_deploy_outside_the_plan_but_in_the_wave_is_not_judged_by_the_plan if {
	# the wave is part of the plan; deploy is judged by the wave only
	check(with_devices(deploy, devices(2, 0, [], 1, ["x-99"]))).allow == true
}

test_deploy_of_another_wave_is_refused if {
	refused_for(check(with_args(deploy, {"wave": 1})), "not the current wave")
	check(with_args(deploy, {"wave": 0})).allow == true
}

test_deploy_when_no_wave_is_current_is_refused if {
	d := check(object.union(deploy, {"wave": null}))
	refused_for(d, "no wave is current")
	check(object.union(with_args(deploy, {"wave": 5}), {"wave": null})).allow == false
}

test_reads_need_no_current_wave if {
	check(object.union(object.union(deploy, {"tool": "fleet_status"}), {"wave": null})).allow == true
}

test_deploy_without_devices_is_refused if {
	d := check(with_devices(deploy, in_wave_and_plan(0)))
	d.reasons == ["the call names no devices"]
}

test_call_without_device_facts_is_refused if {
	every call in [deploy, rollback] {
		refused_for(check(object.remove(call, {"devices"})), "no devices")
	}
}

test_next_wave_before_gate_passed_is_refused if {
	wave := object.union(second_wave, {"previous_gate_passed": false})
	call := object.union(deploy, {"wave": wave})
	refused_for(check(call), "health gate of wave 0")
}

test_next_wave_after_gate_passed_is_allowed if {
	call := object.union(deploy, {"wave": second_wave})
	check(call).allow == true
}

test_deploy_for_unapproved_plan_is_refused if {
	call := object.union(deploy, {"plan": object.union(plan, {"approved": false})})
	refused_for(check(call), "not approved")
}

test_deploy_naming_another_plan_revision_is_refused if {
	refused_for(check(with_args(deploy, {"plan_hash": "ff"})), "revision")
}

test_deploy_under_kill_switch_is_refused if {
	refused_for(check(object.union(deploy, {"kill_switch": true})), "kill switch")
}

test_rollback_to_plan_rollback_version_is_allowed if {
	d := check(rollback)
	d.allow == true
	d.kind == "rollback"
}

test_rollback_to_another_version_is_refused if {
	refused_for(check(with_args(rollback, {"version": "1.7.0"})), "rollback version")
}

test_rollback_of_another_module_is_refused if {
	refused_for(check(with_args(rollback, {"module": "hvac-controller"})), "module")
}

test_rollback_of_device_outside_plan_is_refused if {
	d := check(with_devices(rollback, devices(2, 1, ["x-99"], 1, ["x-99"])))
	d.reasons == ["1 device(s) are not devices of the plan (e.g. x-99)"]
}

test_rollback_is_not_held_to_the_current_wave if {
	# rollback returns devices of any wave that ran; only the plan bounds it
	check(with_devices(rollback, devices(3, 2, ["d-03", "d-04"], 0, []))).allow == true
	check(object.union(rollback, {"wave": null})).allow == true
}

test_rollback_without_devices_is_refused if {
	d := check(with_devices(rollback, in_wave_and_plan(0)))
	d.reasons == ["the call names no devices"]
}

test_rollback_without_rollback_version_is_refused if {
	call := object.union(rollback, {"plan": object.union(plan, {"rollback_version": null})})
	refused_for(check(call), "no rollback version")
}

test_rollback_under_kill_switch_is_refused if {
	refused_for(check(object.union(rollback, {"kill_switch": true})), "kill switch")
}

test_status_and_telemetry_reads_are_always_allowed if {
	every tool in ["fleet_status", "device_telemetry"] {
		d := check({"tool": tool, "args": {}, "kill_switch": true})
		d.allow == true
		d.kind == "read"
	}
}

test_resume_is_refused_under_kill_switch if {
	call := {"tool": "resume", "args": {}, "plan": plan, "kill_switch": true}
	refused_for(check(call), "kill switch")
	check(object.union(call, {"kill_switch": false, "freeze": false})).allow == true
}

test_resume_of_unapproved_plan_is_refused if {
	call := {"tool": "resume", "args": {}, "plan": object.union(plan, {"approved": false}), "kill_switch": false}
	refused_for(check(call), "not approved")
}

test_halt_is_allowed_under_kill_switch if {
	d := check({"tool": "pause", "args": {}, "kill_switch": true})
	d.allow == true
}

test_unknown_tool_is_refused if {
	d := check({"tool": "format_disk", "args": {}, "kill_switch": false})
	d.allow == false
	contains(d.reason, "unknown tool")
}

# T7: the change freeze holds forward rollouts, lets rollbacks and rollback plans go on.

test_t7_freeze_refuses_a_forward_deploy if {
	refused_for(check(object.union(deploy, {"freeze": true})), "change freeze")
}

test_t7_freeze_refuses_resuming_a_forward_rollout if {
	call := object.union(deploy, {"tool": "resume", "args": {}, "freeze": true})
	refused_for(check(call), "change freeze")
}

test_t7_a_missing_freeze_fact_refuses_a_deploy if {
	call := object.remove(deploy, ["freeze"])
	refused_for(check(call), "change freeze")
}

test_t7_freeze_lets_a_rollback_run if {
	d := check(object.union(rollback, {"freeze": true}))
	d.allow == true
}

test_t7_freeze_lets_a_rollback_plan_deploy if {
	call := object.union(deploy, {"freeze": true, "plan": object.union(plan, {"rollback_plan": true})})
	d := check(call)
	d.allow == true
}

test_t7_no_freeze_lets_a_deploy_run if {
	check(deploy).allow == true
}

test_t7_freeze_lets_reads_and_halts_run if {
	check(object.union(deploy, {"tool": "fleet_status", "args": {}, "freeze": true})).allow == true
	check(object.union(deploy, {"tool": "pause", "args": {}, "freeze": true})).allow == true
}
