package model

import "regexp"

// Protection policies (docs/PROTECTION.md): a StorageClass or a
// VolumeAttributesClass may name the ProtectionPolicy of its volumes.
const (
	// ParamProtectionPolicy names the ProtectionPolicy of a class's
	// volumes; PolicyNone opts them out of the policy named
	// DefaultPolicyName.
	ParamProtectionPolicy = "protectionPolicy"
	// PolicyNone, as protectionPolicy, means no policy at all.
	PolicyNone = "none"
	// DefaultPolicyName is the policy of the volumes whose classes name
	// none.
	DefaultPolicyName = "default"
)

// A policy name is a DNS-1123 label: it is also the value of the label
// cairn.csi.dev/policy on the VolumeSnapshots a policy makes.
var policyNameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ValidPolicyName reports whether s can name a ProtectionPolicy.
func ValidPolicyName(s string) bool { return s != PolicyNone && policyNameRe.MatchString(s) }

// CheckPolicyReference checks the value of a protectionPolicy parameter
// (a policy name or "none"); field names it in the error.
func CheckPolicyReference(v, field string) error {
	if v == PolicyNone || ValidPolicyName(v) {
		return nil
	}
	return Errorf(ErrInvalidArgument, "%s %q: want the name of a ProtectionPolicy (a DNS label of at most 63 characters) or %q", field, v, PolicyNone)
}
