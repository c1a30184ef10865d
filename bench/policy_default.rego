# The appliance's default policy in Rego, for the engine comparison in
# bench_policy.py only. The product uses deploy/policies/default.cedar; this
# file mirrors its rules so both engines answer the same questions.
package appliance

import rego.v1

read_verbs := {"file.list", "file.stat", "file.read"}

change_verbs := {
	"file.mkdir", "file.copy", "file.move", "file.rename",
	"file.write", "file.delete", "action.undo",
}

file_verbs := read_verbs | change_verbs

risk_rank := {"low": 0, "medium": 1, "high": 2}

# -- permits: [approval needed, reason, risk] -------------------------------

permits contains [false, "Listing, inspecting and reading files inside a share changes nothing, so it is allowed.", "low"] if {
	input.verb in read_verbs
	input.share != null
}

permits contains [true, "Changing files (write, copy, move, rename, new folder, delete, undo) needs a press of the button.", "medium"] if {
	input.verb in change_verbs
}

permits contains [true, "Pairing a new desktop needs a press of the button on the box.", "medium"] if {
	input.verb == "client.pair"
}

# -- forbids: [lifted by approval, reason, risk] ----------------------------

forbids contains [false, "The file is outside every share; the appliance only works inside its shares.", "high"] if {
	input.verb in file_verbs
	input.share == null
}

forbids contains [false, "The destination is outside every share; files are never copied or moved out of the shares.", "high"] if {
	input.verb in change_verbs
	input.to_path != null
	input.to_share == null
}

forbids contains [true, "Details of this change came from content the model read, so a person must check it first.", "high"] if {
	input.verb in change_verbs
	count(input.derived_fields) > 0
}

forbids contains [true, "Deleting or moving a whole folder affects many files at once, so a person must approve it.", "high"] if {
	input.verb in {"file.delete", "file.move"}
	input.is_dir != false
}

# -- the three-way answer ---------------------------------------------------

hard_forbids := {f | some f in forbids; f[0] == false}

direct_permits := {p | some p in permits; p[0] == false}

decision := "deny" if {
	count(hard_forbids) > 0
} else := "allow" if {
	count(direct_permits) > 0
	count(forbids) == 0
} else := "approve" if {
	count(permits) > 0
} else := "deny"

determining := hard_forbids if {
	decision == "deny"
} else := direct_permits if {
	decision == "allow"
} else := forbids | {p | some p in permits; p[0] == true} if {
	decision == "approve"
} else := set()

reasons := [r[1] | some r in determining]

risk := "high" if {
	count(determining) == 0
} else := r if {
	ranks := [risk_rank[d[2]] | some d in determining]
	some r, n in risk_rank
	n == max(ranks)
}
