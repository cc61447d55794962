package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// Claim is a PVC as policies see it: Bound to a Cairn volume, with the
// policy its classes name.
type Claim struct {
	Namespace, Name string
	Labels          map[string]string
	// VACPolicy and ClassPolicy are the protectionPolicy parameters of
	// the PVC's VolumeAttributesClass in effect and of its StorageClass
	// ("" when the class names none).
	VACPolicy, ClassPolicy string
}

// Named is the policy the PVC's classes name: the VolumeAttributesClass
// before the StorageClass; "" for none named, model.PolicyNone for an
// opt-out.
func (c Claim) Named() string {
	if c.VACPolicy != "" {
		return c.VACPolicy
	}
	return c.ClassPolicy
}

// Policy is a checked ProtectionPolicy.
type Policy struct {
	Obj      *cairnv1.ProtectionPolicy
	Schedule Schedule
	selector labels.Selector // nil: none set
	ns       map[string]bool // nil: all namespaces
}

// Check parses a policy's spec; the error names the field and the
// policy is not run.
func Check(p *cairnv1.ProtectionPolicy) (*Policy, error) {
	if !model.ValidPolicyName(p.Name) {
		return nil, fmt.Errorf("metadata.name %q: a policy's name must be a DNS label of at most 63 characters, and not %q", p.Name, model.PolicyNone)
	}
	s, err := ParseSchedule(p.Spec.Schedule, p.Spec.TimeZone)
	if err != nil {
		return nil, err
	}
	if p.Spec.Retain < 1 || p.Spec.Retain > 1000 {
		return nil, fmt.Errorf("spec.retain %d: want 1 to 1000", p.Spec.Retain)
	}
	if p.Spec.Concurrency < 0 || p.Spec.Concurrency > 100 {
		return nil, fmt.Errorf("spec.concurrency %d: want 1 to 100", p.Spec.Concurrency)
	}
	if p.Spec.MaxAge != nil && p.Spec.MaxAge.Duration <= 0 {
		return nil, fmt.Errorf("spec.maxAge %s: want a positive duration", p.Spec.MaxAge.Duration)
	}
	if p.Spec.SnapshotClassName == "" {
		return nil, fmt.Errorf("spec.snapshotClassName: required")
	}
	out := &Policy{Obj: p, Schedule: s}
	if p.Spec.Selector != nil {
		if out.selector, err = metav1.LabelSelectorAsSelector(p.Spec.Selector); err != nil {
			return nil, fmt.Errorf("spec.selector: %v", err)
		}
	}
	if len(p.Spec.Namespaces) > 0 {
		out.ns = map[string]bool{}
		for _, n := range p.Spec.Namespaces {
			out.ns[n] = true
		}
	}
	return out, nil
}

// Concurrency is how many PVCs the policy snapshots at once.
func (p *Policy) Concurrency() int {
	if p.Obj.Spec.Concurrency < 1 {
		return 1
	}
	return int(p.Obj.Spec.Concurrency)
}

// AppliesTo says whether the policy takes snapshots of c
// (docs/PROTECTION.md, "Which PVCs a policy applies to").
func (p *Policy) AppliesTo(c Claim) bool {
	if p.ns != nil && !p.ns[c.Namespace] {
		return false
	}
	named := c.Named()
	switch {
	case named == p.Obj.Name:
		return true
	case p.selector != nil && p.selector.Matches(labels.Set(c.Labels)):
		return true
	case p.Obj.Name == model.DefaultPolicyName && named == "":
		return p.selector == nil
	}
	return false
}

// SnapshotName is the VolumeSnapshot a policy's run at schedule time
// slot makes of PVC pvc: a function of the three, so that a run repeated
// after a crash finds what it made, and one to one: the parts are joined
// with dots, which neither a policy name nor the time has, so no two
// (pvc, policy) pairs give the same name.
func SnapshotName(pvc, policy string, slot time.Time) string {
	suffix := "." + slot.UTC().Format("20060102-150405")
	base := pvc + "." + policy
	const max = 253
	if len(base)+len(suffix) <= max {
		return base + suffix
	}
	sum := sha256.Sum256([]byte(pvc + "\x00" + policy))
	hash := "-" + hex.EncodeToString(sum[:4])
	base = base[:max-len(suffix)-len(hash)]
	for len(base) > 0 && (base[len(base)-1] == '-' || base[len(base)-1] == '.') {
		base = base[:len(base)-1]
	}
	return base + hash + suffix
}

// Snap is one of a PVC's snapshots made by a policy, for pruning.
type Snap struct {
	Name    string
	Created time.Time
	Ready   bool
	// InUse: a PVC that is not Bound yet is being restored from it.
	InUse bool
}

// Prune returns the snapshots to delete (docs/PROTECTION.md, "Pruning"):
// beyond the newest retain ready ones, ready ones older than maxAge (0:
// no age limit) except the newest ready one, and not-ready ones older
// than a ready one; never one InUse.
func Prune(snaps []Snap, retain int, maxAge time.Duration, now time.Time) []string {
	s := slices.Clone(snaps)
	sort.Slice(s, func(i, j int) bool {
		if !s[i].Created.Equal(s[j].Created) {
			return s[i].Created.After(s[j].Created)
		}
		return s[i].Name > s[j].Name
	})
	var del []string
	ready := 0
	for _, sn := range s {
		var drop bool
		if sn.Ready {
			ready++
			drop = ready > retain || (ready > 1 && maxAge > 0 && now.Sub(sn.Created) > maxAge)
		} else {
			drop = ready > 0 // a newer one is ready
		}
		if drop && !sn.InUse {
			del = append(del, sn.Name)
		}
	}
	return del
}
