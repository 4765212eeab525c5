# Tests of approval counting: what counts, what does not, quorum and rejection.
#
# Inputs are replaced part by part (regopy 1.5.2 crashes on `with input as …`).
package fieldgate.approvals_test

import data.fieldgate.approvals

count_approvals(x) := d if {
	in_plan_hash := object.get(x, "plan_hash", null)
	in_requester := object.get(x, "requester", null)
	in_required := object.get(x, "required", null)
	in_approvals := object.get(x, "approvals", null)
	in_roster := object.get(x, "roster", null)
	d := approvals.decision with input.plan_hash as in_plan_hash
		with input.requester as in_requester
		with input.required as in_required
		with input.approvals as in_approvals
		with input.roster as in_roster
}

hash := "00000000000000000000000000000000000000000000000000000000000000aa"

other_hash := "00000000000000000000000000000000000000000000000000000000000000bb"

roster := {
	"eng-ana": ["engineer", "safety"],
	"saf-lee": ["safety"],
	"saf-ola": ["safety"],
	"rm-kim": ["release-manager"],
	"cmp-ivo": ["compliance"],
	"dual-max": ["safety", "compliance"],
}

approve(who) := {"approver": who, "plan_hash": hash, "decision": "approve", "signature_valid": true, "claimed_roles": []}

reject(who) := {"approver": who, "plan_hash": hash, "decision": "reject", "signature_valid": true, "claimed_roles": []}

needs(wanted, decisions) := {
	"plan_hash": hash,
	"requester": "eng-ana",
	"required": wanted,
	"approvals": decisions,
	"roster": roster,
}

safety_1 := [{"role": "safety", "count": 1}]

safety_2 := [{"role": "safety", "count": 2}]

ignored_for(d, index, word) if {
	some entry in d.ignored
	entry.index == index
	contains(entry.reason, word)
}

test_one_safety_approval_satisfies if {
	d := count_approvals(needs(safety_1, [approve("saf-lee")]))
	d.satisfied == true
	d.counted == ["saf-lee"]
	d.missing == []
}

test_no_approval_leaves_role_missing if {
	d := count_approvals(needs(safety_1, []))
	d.satisfied == false
	d.missing == [{"role": "safety", "count": 1}]
}

test_bad_signature_does_not_count if {
	bad := object.union(approve("saf-lee"), {"signature_valid": false})
	d := count_approvals(needs(safety_1, [bad]))
	d.satisfied == false
	ignored_for(d, 0, "signature")
}

test_approval_of_another_plan_revision_does_not_count if {
	stale := object.union(approve("saf-lee"), {"plan_hash": other_hash})
	d := count_approvals(needs(safety_1, [stale]))
	d.satisfied == false
	ignored_for(d, 0, "another revision")
}

test_requester_cannot_approve_own_plan if {
	# eng-ana holds safety in the roster but asked for the rollout
	d := count_approvals(needs(safety_1, [approve("eng-ana")]))
	d.satisfied == false
	ignored_for(d, 0, "requester")
}

test_requester_plus_other_approver_satisfies if {
	d := count_approvals(needs(safety_1, [approve("eng-ana"), approve("saf-lee")]))
	d.satisfied == true
	d.counted == ["saf-lee"]
}

test_role_claimed_in_approval_but_not_in_roster_does_not_count if {
	claimed := object.union(approve("rm-kim"), {"claimed_roles": ["safety"]})
	d := count_approvals(needs(safety_1, [claimed]))
	d.satisfied == false
	ignored_for(d, 0, "roster")
}

test_unknown_person_does_not_count if {
	d := count_approvals(needs(safety_1, [approve("mallory")]))
	d.satisfied == false
	ignored_for(d, 0, "roster")
}

test_one_person_twice_fills_one_slot if {
	d := count_approvals(needs(safety_2, [approve("saf-lee"), approve("saf-lee")]))
	d.satisfied == false
	d.missing == [{"role": "safety", "count": 1}]
	ignored_for(d, 1, "already")
}

test_critical_quorum_of_two_distinct_safety_approvers if {
	d := count_approvals(needs(safety_2, [approve("saf-lee"), approve("saf-ola")]))
	d.satisfied == true
	d.counted == ["saf-lee", "saf-ola"]
}

test_counted_rejection_rejects_the_plan if {
	d := count_approvals(needs(safety_1, [approve("saf-ola"), reject("saf-lee")]))
	d.satisfied == false
	d.rejected == true
	d.rejected_by == ["saf-lee"]
}

test_rejection_that_does_not_count_leaves_plan_open if {
	# rm-kim holds no needed role; the requester's own rejection does not count either
	d := count_approvals(needs(safety_1, [reject("rm-kim"), reject("eng-ana"), approve("saf-lee")]))
	d.satisfied == true
	d.rejected == false
	d.rejected_by == []
}

test_rejection_with_bad_signature_does_not_count if {
	forged := object.union(reject("saf-ola"), {"signature_valid": false})
	d := count_approvals(needs(safety_1, [forged, approve("saf-lee")]))
	d.rejected == false
	d.satisfied == true
}

test_person_with_two_roles_fills_one_slot if {
	required := [{"role": "safety", "count": 1}, {"role": "compliance", "count": 1}]
	d := count_approvals(needs(required, [approve("dual-max")]))
	d.satisfied == false
	# one more approval is needed, of either role; it is counted against the first
	d.missing == [{"role": "compliance", "count": 1}]
}

test_two_roles_filled_by_two_people if {
	required := [{"role": "safety", "count": 1}, {"role": "compliance", "count": 1}]
	d := count_approvals(needs(required, [approve("dual-max"), approve("saf-lee")]))
	d.satisfied == true
}

test_three_roles_each_filled if {
	required := [
		{"role": "safety", "count": 2},
		{"role": "release-manager", "count": 1},
		{"role": "compliance", "count": 1},
	]
	list := [approve("saf-lee"), approve("saf-ola"), approve("rm-kim"), approve("cmp-ivo")]
	d := count_approvals(needs(required, list))
	d.satisfied == true
	partial := count_approvals(needs(required, [approve("saf-lee"), approve("rm-kim"), approve("cmp-ivo")]))
	partial.missing == [{"role": "safety", "count": 1}]
}

test_nothing_required_is_satisfied_without_approvals if {
	d := count_approvals(needs([], []))
	d.satisfied == true
	d.missing == []
	extra := count_approvals(needs([], [approve("saf-lee")]))
	extra.satisfied == true
	ignored_for(extra, 0, "needs no approval")
}

test_default_roster_from_data_when_input_has_none if {
	x := object.remove(needs(safety_1, [approve("saf-lee")]), ["roster"])
	count_approvals(x).satisfied == true
}

test_input_roster_replaces_default_roster if {
	x := object.union(needs(safety_1, [approve("saf-lee")]), {"roster": {"saf-lee": ["engineer"]}})
	count_approvals(x).satisfied == false
}

test_incomplete_input_is_not_satisfied if {
	d := count_approvals({"plan_hash": hash, "requester": "eng-ana", "required": []})
	d.satisfied == false
	count(d.errors) == 1
}

test_an_approval_after_the_deadline_does_not_count if {
	late := object.union(approve("saf-lee"), {"in_time": false})
	d := count_approvals(needs(safety_1, [late]))
	d.satisfied == false
	ignored_for(d, 0, "after the approval deadline")
}

test_an_approval_signed_too_far_from_the_clock_does_not_count if {
	skewed := object.union(approve("saf-lee"), {"within_skew": false})
	d := count_approvals(needs(safety_1, [skewed]))
	d.satisfied == false
	ignored_for(d, 0, "too far from the control plane's clock")
}

test_a_timely_approval_still_counts if {
	timely := object.union(approve("saf-lee"), {"in_time": true, "within_skew": true})
	d := count_approvals(needs(safety_1, [timely]))
	d.satisfied == true
}
