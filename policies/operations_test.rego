# Tests of who may set and lift the change freeze.
#
# Inputs are replaced part by part (regopy 1.5.2 crashes on `with input as …`).
package fieldgate.operations_test

import data.fieldgate.operations

check(action, actor, roster) := d if {
	d := operations.decision with input.action as action
		with input.actor as actor
		with input.roster as roster
}

roster := {"ops-max": ["ops"], "saf-lee": ["safety"], "eng-ana": ["engineer"]}

test_o2_an_ops_engineer_may_freeze_and_lift_allowed if {
	check("freeze", "ops-max", roster).allow == true
	check("unfreeze", "ops-max", roster).allow == true
}

test_o2_a_safety_engineer_may_freeze_allowed if {
	d := check("freeze", "saf-lee", roster)
	d.allow == true
	contains(d.reason, "safety")
}

test_o2_an_engineer_may_not_freeze_or_lift_denies if {
	d := check("freeze", "eng-ana", roster)
	d.allow == false
	contains(d.reason, "eng-ana")
	contains(d.reason, "may not")
	contains(d.reason, "freeze")
	check("unfreeze", "eng-ana", roster).allow == false
}

test_o2_someone_outside_the_roster_may_not_lift_denies if {
	d := check("unfreeze", "mallory", roster)
	d.allow == false
	contains(d.reason, "mallory")
	contains(d.reason, "may not")
	contains(d.reason, "unfreeze")
}

test_o2_the_pack_roster_is_used_without_one_in_the_input if {
	d := operations.decision with input.action as "freeze" with input.actor as "saf-ola"
	d.allow == true
	e := operations.decision with input.action as "freeze" with input.actor as "eng-ana"
	e.allow == false
}

test_o1_an_unknown_operation_denies if {
	d := check("delete-fleet", "ops-max", roster)
	d.allow == false
	contains(d.reason, "not an operation")
}
