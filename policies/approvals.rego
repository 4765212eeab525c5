# Approval counting: whether the signed approvals on a plan fill the roles it needs.
#
# Query data.fieldgate.approvals.decision with the input built by
# fieldgate.policy.approvals_input. Signatures are verified in Python and passed in
# as signature_valid; roles come from the roster, never from the approval. The
# roster is input.roster when given (a scenario's or the configuration's), else
# data.fieldgate.roster.
#
# The count is one rule with local variables (`tally`): regopy 1.5.2 re-evaluates a
# rule at every reference under `with`, so a deep chain of small rules makes the
# Rego tests slow.
package fieldgate.approvals

roster := input.roster if {
	is_object(input.roster)
} else := data.fieldgate.roster

# The input's lists, empty where the input has none (errors says so): regorus stops with
# an error when it iterates null, where OPA and regopy iterate nothing.
default required := []

required := input.required if is_array(input.required)

default received := []

received := input.approvals if is_array(input.approvals)

# Approvals needed, by role (the same role named twice adds up).
need := {role: n |
	some r in required
	role := r.role
	n := sum([x.count | some x in required; x.role == role])
	n > 0
}

# Roles each person who decided holds in the roster that the plan needs. A table,
# not a function: regopy 1.5.2 does not cache function calls, and it treats a
# function argument inside a comprehension as a free variable.
holds := {person: roles_held |
	some person in {a.approver | some a in received}
	roles_held := {role | some role in roster[person]; need[role]}
}

decision := {
	"satisfied": satisfied,
	"rejected": count(t.rejected_by) > 0,
	"missing": t.missing,
	"rejected_by": t.rejected_by,
	"counted": t.counted,
	"ignored": ignored,
	"errors": errors,
} if {
	t := tally
	satisfied := count(errors) + count(t.rejected_by) + count(t.missing) == 0
}

errors := sorted(input_error)

input_error contains msg if {
	some key in {"plan_hash", "requester", "required", "approvals"}
	object.get(input, key, null) == null
	msg := sprintf("input: %s is missing from the policy input", [key])
}

# METADATA
# title: C1 signature
# description: An approval counts only when its ed25519 signature verifies.
problem contains {"index": i, "approver": a.approver, "reason": "the signature does not verify"} if {
	some i
	a := input.approvals[i]
	not a.signature_valid == true
}

# METADATA
# title: C2 plan hash
# description: An approval counts only when it names the current plan revision.
problem contains {"index": i, "approver": a.approver, "reason": reason} if {
	some i
	a := input.approvals[i]
	a.plan_hash != input.plan_hash
	reason := "it names another revision of the plan"
}

# METADATA
# title: C3 separation of duties
# description: The requester never approves or rejects their own plan.
problem contains {"index": i, "approver": a.approver, "reason": reason} if {
	some i
	a := input.approvals[i]
	a.approver == input.requester
	reason := "the requester cannot decide on their own plan"
}

# METADATA
# title: C8 deadline
# description: An approval counts only when it was signed and received before the approval deadline.
problem contains {"index": i, "approver": a.approver, "reason": reason} if {
	some i
	a := input.approvals[i]
	a.in_time == false
	reason := "it was signed or received after the approval deadline"
}

# METADATA
# title: C9 clock skew
# description: An approval counts only when its signed time is within the allowed skew of the control plane's clock.
problem contains {"index": i, "approver": a.approver, "reason": reason} if {
	some i
	a := input.approvals[i]
	a.within_skew == false
	reason := "its signed time is too far from the control plane's clock (back-dated or ahead)"
}

# METADATA
# title: C4 roster roles
# description: Roles come from the roster; an approver holding none of the needed roles does not count.
problem contains {"index": i, "approver": a.approver, "reason": reason} if {
	count(need) > 0
	some i
	a := input.approvals[i]
	count(holds[a.approver]) == 0
	reason := sprintf(
		"the roster gives %s none of the needed roles (%s)",
		[a.approver, join(object.keys(need))],
	)
}

problem contains {"index": i, "approver": a.approver, "reason": "the plan needs no approval"} if {
	count(need) == 0
	some i
	a := input.approvals[i]
}

# METADATA
# title: C5 one slot per person
# description: A person fills at most one slot, however many approvals or roles they have.
ignored contains entry if {
	t := tally
	some i in t.counted_index
	some j in t.counted_index
	j < i
	input.approvals[j].approver == input.approvals[i].approver
	input.approvals[j].decision == input.approvals[i].decision
	entry := {"index": i, "approver": input.approvals[i].approver, "reason": "this person already fills a slot"}
}

ignored contains p if some p in problem

# Every non-empty set of needed roles, for the quorum check in the tally.
role_sets contains s if {
	roles := sorted(object.keys(need))
	count(roles) > 0
	some m in numbers.range(1, bits.lsh(1, count(roles)) - 1)
	s := {role | role := roles[k]; bits.and(m, bits.lsh(1, k)) != 0}
}

# METADATA
# title: C6 rejection and C7 quorum
# description: Any counted rejection rejects the plan; each needed role gets its count of distinct roster holders, one slot per person.
tally := result if {
	bad := {p.index | some p in problem}
	counted_index := {i | input.approvals[i]; not i in bad}
	approvers := {input.approvals[i].approver | some i in counted_index; input.approvals[i].decision == "approve"}
	rejecters := {input.approvals[i].approver | some i in counted_index; input.approvals[i].decision == "reject"}

	# How many more people each set of roles needs than there are approvers able to
	# fill it. The quorum holds, each person in one slot, exactly when no set falls
	# short (Hall's theorem for roles with several slots); the largest shortfall is
	# the number of approvals still missing.
	shortfalls := [{"roles": s, "short": n} |
		some s in role_sets
		needed := sum([need[role] | some role in s])
		able := count({p | some p in approvers; count(holds[p] & s) > 0})
		n := needed - able
	]
	missing_total := max(array.concat([0], [f.short | some f in shortfalls]))

	# What each role lacks on its own, and what people holding several needed roles
	# leave open besides, counted against the first role of a set short by the most.
	short := {role: n |
		some role in object.keys(need)
		n := max([0, need[role] - count({p | some p in approvers; role in holds[p]})])
	}
	rest := missing_total - sum([n | some n in short])
	tight := {r | some f in shortfalls; f.short == missing_total; some r in f.roles}
	first := array.concat(sorted(tight), [""])[0]
	missing := [{"role": role, "count": n} |
		some role in sorted(object.keys(need))
		n := short[role] + extra_for(role, first, rest)
		n > 0
	]

	result := {
		"counted_index": counted_index,
		"counted": sorted(approvers),
		"rejected_by": sorted(rejecters),
		"missing": missing,
	}
}

extra_for(role, first, rest) := rest if role == first

extra_for(role, first, _) := 0 if role != first

join(xs) := trim_space(concat(", ", sorted(xs)))

# Sorts a set or an array into an array. regopy 1.5.2 returns sort() of a set as a
# set (it cannot be indexed and does not equal an array), so sets become arrays first.
sorted(xs) := sort(items) if {
	collection := xs
	items := [x | some x in collection]
}
