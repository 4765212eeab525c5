# Tests of D11 gate floors: for each safety class, a plan with every health gate and abort
# field exactly at the floor is allowed, and one a step below on any field is denied with a
# message naming the wave, the field and the floor. The fixtures are those of rollout_test.
#
# Functions of rollout_test are called by their full path: regorus 0.9 does not find a
# function called through an import alias. A gate is replaced after object.remove, since
# object.union merges nested objects in OPA and regorus (regopy 1.5.2 replaces them).
package fieldgate.rollout_floors_test

import data.fieldgate.rollout_test

# The floors are written out here, not read from data.json, so that a
# weaker data.json fails these tests. Each plan below is 60 targets in a canary of 3 and a
# rest of 57, every field exactly at the floor of its safety class: max_failures is 5%
# of the wave rounded up (10% for none), min_executed the canary's size.
floor_gates(rate, canary_failures, rest_failures, soak) := [
	object.union(data.fieldgate.rollout_test.wave(0, 3), {"health_gate": {"min_success_rate": rate, "max_failures": canary_failures, "soak_minutes": soak}}),
	object.union(data.fieldgate.rollout_test.wave(1, 57), {"health_gate": {"min_success_rate": rate, "max_failures": rest_failures, "soak_minutes": soak}}),
]

# Replaces fields of wave ``index``'s health gate.
gate_changed(inp, index, fields) := object.union(inp, {"waves": array.concat(
	array.slice(inp.waves, 0, index),
	array.concat(
		[object.union(inp.waves[index], {"health_gate": object.union(inp.waves[index].health_gate, fields)})],
		array.slice(inp.waves, index + 1, count(inp.waves)),
	),
)})

abort_changed(inp, fields) := object.union(inp, {"plan": object.union(inp.plan, {"abort": object.union(inp.plan.abort, fields)})})

at_floor_none := object.union(rollout_test.base, {
	"manifest": object.union(rollout_test.base.manifest, {"safety": "none"}),
	"plan": object.union(rollout_test.base.plan, {"abort": {"failure_threshold": 0.1, "min_executed": 3}}),
	"waves": floor_gates(0.9, 1, 6, 5),
})

test_d11_none_at_the_floors_is_allowed if {
	d := data.fieldgate.rollout_test.decide(at_floor_none)
	not data.fieldgate.rollout_test.fired(d, "D11")
	d.allow == true
}

test_d11_none_min_success_rate_below_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_none, 0, {"min_success_rate": 0.89}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 1 canary: min_success_rate 0.89 is below the floor 0.9 for safety class none")
}

test_d11_none_max_failures_above_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_none, 1, {"max_failures": 7}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: max_failures 7 is above the floor 6 (")
	data.fieldgate.rollout_test.denies_with(d, "for safety class none")
}

test_d11_none_soak_below_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_none, 1, {"soak_minutes": 4}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: soak_minutes 4 is below the floor 5 for safety class none")
}

test_d11_none_abort_threshold_above_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(abort_changed(at_floor_none, {"failure_threshold": 0.11}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "abort: failure_threshold 0.11 is above the floor 0.1 for safety class none")
}

at_floor_low := object.union(rollout_test.base, {
	"manifest": object.union(rollout_test.base.manifest, {"safety": "low"}),
	"plan": object.union(rollout_test.base.plan, {"abort": {"failure_threshold": 0.1, "min_executed": 3}}),
	"waves": floor_gates(0.95, 1, 3, 10),
})

test_d11_low_at_the_floors_is_allowed if {
	d := data.fieldgate.rollout_test.decide(at_floor_low)
	not data.fieldgate.rollout_test.fired(d, "D11")
	d.allow == true
}

test_d11_low_min_success_rate_below_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_low, 0, {"min_success_rate": 0.94}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 1 canary: min_success_rate 0.94 is below the floor 0.95 for safety class low")
}

test_d11_low_max_failures_above_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_low, 1, {"max_failures": 4}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: max_failures 4 is above the floor 3 (")
	data.fieldgate.rollout_test.denies_with(d, "for safety class low")
}

test_d11_low_soak_below_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_low, 1, {"soak_minutes": 9}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: soak_minutes 9 is below the floor 10 for safety class low")
}

test_d11_low_abort_threshold_above_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(abort_changed(at_floor_low, {"failure_threshold": 0.11}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "abort: failure_threshold 0.11 is above the floor 0.1 for safety class low")
}

at_floor_high := object.union(rollout_test.base, {
	"manifest": object.union(rollout_test.base.manifest, {"safety": "high"}),
	"plan": object.union(rollout_test.base.plan, {"abort": {"failure_threshold": 0.05, "min_executed": 3}}),
	"waves": floor_gates(0.95, 1, 3, 30),
})

test_d11_high_at_the_floors_is_allowed if {
	d := data.fieldgate.rollout_test.decide(at_floor_high)
	not data.fieldgate.rollout_test.fired(d, "D11")
	d.allow == true
}

test_d11_high_min_success_rate_below_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_high, 0, {"min_success_rate": 0.94}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 1 canary: min_success_rate 0.94 is below the floor 0.95 for safety class high")
}

test_d11_high_max_failures_above_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_high, 1, {"max_failures": 4}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: max_failures 4 is above the floor 3 (")
	data.fieldgate.rollout_test.denies_with(d, "for safety class high")
}

test_d11_high_soak_below_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_high, 1, {"soak_minutes": 29}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: soak_minutes 29 is below the floor 30 for safety class high")
}

test_d11_high_abort_threshold_above_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(abort_changed(at_floor_high, {"failure_threshold": 0.06}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "abort: failure_threshold 0.06 is above the floor 0.05 for safety class high")
}

at_floor_critical := object.union(rollout_test.base, {
	"manifest": object.union(rollout_test.base.manifest, {"safety": "critical"}),
	"plan": object.union(rollout_test.base.plan, {"abort": {"failure_threshold": 0.05, "min_executed": 3}}),
	"waves": floor_gates(0.95, 1, 3, 30),
})

test_d11_critical_at_the_floors_is_allowed if {
	d := data.fieldgate.rollout_test.decide(at_floor_critical)
	not data.fieldgate.rollout_test.fired(d, "D11")
	d.allow == true
}

test_d11_critical_min_success_rate_below_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_critical, 0, {"min_success_rate": 0.94}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 1 canary: min_success_rate 0.94 is below the floor 0.95 for safety class critical")
}

test_d11_critical_max_failures_above_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_critical, 1, {"max_failures": 4}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: max_failures 4 is above the floor 3 (")
	data.fieldgate.rollout_test.denies_with(d, "for safety class critical")
}

test_d11_critical_soak_below_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(at_floor_critical, 1, {"soak_minutes": 29}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: soak_minutes 29 is below the floor 30 for safety class critical")
}

test_d11_critical_abort_threshold_above_the_floor_denies if {
	d := data.fieldgate.rollout_test.decide(abort_changed(at_floor_critical, {"failure_threshold": 0.06}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "abort: failure_threshold 0.06 is above the floor 0.05 for safety class critical")
}

test_d11_min_executed_above_the_first_wave_denies if {
	d := data.fieldgate.rollout_test.decide(abort_changed(at_floor_low, {"min_executed": 4}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "abort: min_executed 4 is above the floor 3, the size of wave 1 canary")
}

test_d11_min_executed_of_one_passes_with_an_empty_first_wave if {
	empty := gate_changed(at_floor_low, 0, {"max_failures": 0})
	inp := object.union(empty, {"waves": [object.union(empty.waves[0], {"size": 0}), empty.waves[1]]})
	not data.fieldgate.rollout_test.fired(data.fieldgate.rollout_test.decide(abort_changed(inp, {"min_executed": 1})), "D11")
	data.fieldgate.rollout_test.fired(data.fieldgate.rollout_test.decide(abort_changed(inp, {"min_executed": 2})), "D11")
}

test_d11_the_lax_plan_is_denied_on_every_field if {
	lax := abort_changed(
		gate_changed(gate_changed(at_floor_low, 0, {"min_success_rate": 0, "max_failures": 100000, "soak_minutes": 0}), 1, {"min_success_rate": 0}),
		{"failure_threshold": 1, "min_executed": 1000000},
	)
	d := data.fieldgate.rollout_test.decide(lax)
	d.allow == false
	data.fieldgate.rollout_test.denies_with(d, "wave 1 canary: min_success_rate 0 is below the floor 0.95 for safety class low")
	data.fieldgate.rollout_test.denies_with(d, "wave 1 canary: max_failures 100000 is above the floor 1 (5% of the wave's 3 devices, rounded up) for safety class low")
	data.fieldgate.rollout_test.denies_with(d, "wave 1 canary: soak_minutes 0 is below the floor 10 for safety class low")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: min_success_rate 0 is below the floor 0.95 for safety class low")
	data.fieldgate.rollout_test.denies_with(d, "abort: failure_threshold 1 is above the floor 0.1 for safety class low")
	data.fieldgate.rollout_test.denies_with(d, "abort: min_executed 1000000 is above the floor 3")
}

test_d11_gate_without_max_failures_denies if {
	inp := object.union(at_floor_low, {"waves": [object.remove(data.fieldgate.rollout_test.wave(0, 3), ["health_gate"]), data.fieldgate.rollout_test.wave(1, 57)]})
	d := data.fieldgate.rollout_test.decide(data.fieldgate.rollout_test.with_waves([object.union(object.remove(data.fieldgate.rollout_test.wave(0, 3), ["health_gate"]), {"health_gate": {"min_success_rate": 1}}), data.fieldgate.rollout_test.wave(1, 57)]))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "wave 1 canary: the health gate has no max_failures")
	data.fieldgate.rollout_test.fired(data.fieldgate.rollout_test.decide(inp), "D6")
}

test_d11_gate_without_soak_is_judged_as_no_soak if {
	no_soak := object.union(object.remove(data.fieldgate.rollout_test.wave(0, 3), ["health_gate"]), {"health_gate": {"min_success_rate": 1, "max_failures": 0}})
	d := data.fieldgate.rollout_test.decide(object.union(at_floor_low, {"waves": [no_soak, at_floor_low.waves[1]]}))
	data.fieldgate.rollout_test.denies_with(d, "wave 1 canary: soak_minutes 0 is below the floor 10")
}

test_d11_safety_class_without_floors_denies if {
	d := data.fieldgate.rollout_test.decide(data.fieldgate.rollout_test.with_manifest({"safety": "experimental"}))
	data.fieldgate.rollout_test.fired(d, "D11")
	data.fieldgate.rollout_test.denies_with(d, "the pack sets no rollout floors for safety class experimental")
}

# A rollback (every target moves back) has its own floors: 90% healthy, 10% failures,
# soak 5 minutes (10 for high and critical), abort at most 10%.
rollback_at_floor_high := object.union(rollout_test.rollback_plan, {
	"manifest": object.union(rollout_test.rollback_plan.manifest, {"safety": "high"}),
	"plan": object.union(rollout_test.rollback_plan.plan, {"abort": {"failure_threshold": 0.1, "min_executed": 12}}),
	"waves": [
		object.union(data.fieldgate.rollout_test.wave(0, 12), {"health_gate": {"min_success_rate": 0.9, "max_failures": 2, "soak_minutes": 10}}),
		object.union(data.fieldgate.rollout_test.wave(1, 48), {"health_gate": {"min_success_rate": 0.9, "max_failures": 5, "soak_minutes": 10}}),
	],
})

test_d11_rollback_at_its_floors_is_allowed if {
	d := data.fieldgate.rollout_test.decide(rollback_at_floor_high)
	d.rollback == true
	not data.fieldgate.rollout_test.fired(d, "D11")
	d.allow == true
}

test_d11_rollback_below_its_floors_denies if {
	d := data.fieldgate.rollout_test.decide(gate_changed(rollback_at_floor_high, 1, {"min_success_rate": 0.89, "max_failures": 6, "soak_minutes": 9}))
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: min_success_rate 0.89 is below the floor 0.9 for safety class high (rollback)")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: max_failures 6 is above the floor 5 (10% of the wave's 48 devices, rounded up)")
	data.fieldgate.rollout_test.denies_with(d, "wave 2 rest: soak_minutes 9 is below the floor 10 for safety class high (rollback)")
	data.fieldgate.rollout_test.denies_with(data.fieldgate.rollout_test.decide(abort_changed(rollback_at_floor_high, {"failure_threshold": 0.11})), "abort: failure_threshold 0.11 is above the floor 0.1")
}

test_d11_rollout_floors_hold_for_a_rollback_that_is_judged_as_a_rollout if {
	inp := object.union(rollback_at_floor_high, {"targets": [object.union(rollout_test.group, {"relation": "upgrade"})]})
	d := data.fieldgate.rollout_test.decide(inp)
	d.rollback == false
	data.fieldgate.rollout_test.denies_with(d, "min_success_rate 0.9 is below the floor 0.95 for safety class high")
}
