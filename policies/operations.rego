# Operations on the whole fleet: who may set and lift the change freeze.
#
# Query data.fieldgate.operations.decision with the input built by
# fieldgate.policy.operations_input: the action (freeze or unfreeze), who asks, and
# the run's roster when one is configured. Roles come from the roster, never from
# the request: input.roster when given, else data.fieldgate.roster. The roles that
# may act are data: data.fieldgate.config.operations.
package fieldgate.operations

roster := input.roster if {
	is_object(input.roster)
} else := data.fieldgate.roster

may := data.fieldgate.config.operations

actions := {"freeze", "unfreeze"}

roles := {role | some role in object.get(roster, input.actor, [])}

allowed_roles := {role | some role in object.get(may, input.action, [])}

decision := {
	"allow": allow,
	"reason": reason,
	"reasons": sorted(refusal),
}

default allow := false

allow if {
	input.action in actions
	count(refusal) == 0
}

reason := trim_space(concat("; ", sorted(refusal))) if {
	count(refusal) > 0
} else := sprintf("%s: %s holds %s", [input.action, input.actor, join(sorted(roles & allowed_roles))])

# METADATA
# title: O1 known operation
# description: Only the operations the pack knows (freeze, unfreeze) are allowed.
refusal contains msg if {
	not input.action in actions
	msg := sprintf("%v is not an operation of the pack (freeze, unfreeze)", [input.action])
}

# METADATA
# title: O2 freeze roles
# description: Setting or lifting the change freeze takes a role the operations data allows for it, held in the roster.
refusal contains msg if {
	input.action in actions
	count(roles & allowed_roles) == 0
	msg := sprintf(
		"%s may not %s: it takes one of the roles %s in the roster",
		[input.actor, input.action, join(sorted(allowed_roles))],
	)
}

join(xs) := trim_space(concat(", ", xs))

# Sorts a set or an array into an array (see tools.rego: regopy 1.5.2 and sets).
sorted(xs) := sort(items) if {
	collection := xs
	items := [x | some x in collection]
}
