package model

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// I/O limit parameters: the names the cloud drivers' VolumeAttributesClasses
// use. They may be set in a StorageClass, in a VolumeAttributesClass (CSI
// mutable_parameters) and changed by ControllerModifyVolume (docs/IOLIMITS.md).
const (
	// ParamIOPS limits reads and writes each to this many operations per
	// second; "0" removes the limit.
	ParamIOPS = "iops"
	// ParamThroughput limits reads and writes each to this many MiB per
	// second; "0" removes the limit.
	ParamThroughput = "throughput"

	// MaxIOPS and MaxThroughputMiBps bound the values (far above what a
	// node's disk gives, below what overflows the kernel's counters).
	MaxIOPS            = 10_000_000
	MaxThroughputMiBps = 1_000_000
)

// MutableParameterKeys are the keys a VolumeAttributesClass may carry.
var MutableParameterKeys = []string{ParamIOPS, ParamThroughput, ParamProtectionPolicy}

// IOLimits are the block I/O limits of a volume; zero fields are no limit.
type IOLimits struct {
	IOPS            int64 `json:"iops,omitempty"`
	ThroughputMiBps int64 `json:"throughputMiBps,omitempty"`
}

// Zero reports whether l limits nothing.
func (l IOLimits) Zero() bool { return l == IOLimits{} }

// ThroughputBytes is the throughput limit in bytes per second.
func (l IOLimits) ThroughputBytes() int64 { return l.ThroughputMiBps << 20 }

func (l IOLimits) String() string {
	if l.Zero() {
		return "no limit"
	}
	var parts []string
	if l.IOPS > 0 {
		parts = append(parts, fmt.Sprintf("%d IOPS", l.IOPS))
	}
	if l.ThroughputMiBps > 0 {
		parts = append(parts, fmt.Sprintf("%d MiB/s", l.ThroughputMiBps))
	}
	return strings.Join(parts, ", ")
}

// With returns l changed by the I/O limit keys in params: a key that is
// absent leaves its limit as it is (the CSI rule for mutable parameters).
// It checks every mutable parameter, protectionPolicy too (which the
// controller's policy runner reads from the PVC's classes, not the
// volume). With strict, any other key is INVALID_ARGUMENT (a
// VolumeAttributesClass holds only mutable parameters); without, other
// keys are left to the caller (a StorageClass has more). field names the
// map in messages.
func (l IOLimits) With(params map[string]string, field string, strict bool) (IOLimits, error) {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the first bad key is reported, the same each time
	for _, k := range keys {
		v := params[k]
		var dst *int64
		var limit int64
		switch k {
		case ParamIOPS:
			dst, limit = &l.IOPS, MaxIOPS
		case ParamThroughput:
			dst, limit = &l.ThroughputMiBps, MaxThroughputMiBps
		case ParamProtectionPolicy:
			if err := CheckPolicyReference(v, field+"."+k); err != nil {
				return l, err
			}
			continue
		default:
			if strict {
				return l, Errorf(ErrInvalidArgument, "%s: unknown key %q (Cairn's mutable parameters are %s)", field, k, strings.Join(MutableParameterKeys, ", "))
			}
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n < 0 || n > limit {
			return l, Errorf(ErrInvalidArgument, "%s.%s %q: want a whole number from 0 (no limit) to %d", field, k, v, limit)
		}
		*dst = n
	}
	return l, nil
}

var podUIDRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ValidPodUID reports whether s is a Kubernetes object UID (it names a
// pod's cgroup, so nothing else may pass).
func ValidPodUID(s string) bool { return podUIDRe.MatchString(s) }
