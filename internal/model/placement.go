package model

import "slices"

// Allows reports whether node may hold the object.
func (p Placement) Allows(node string) bool {
	return p.Requisite == nil || slices.Contains(p.Requisite, node)
}

// Candidates lists the nodes to try, preferred ones first.
func (p Placement) Candidates() []string {
	out := slices.Clone(p.Preferred)
	for _, n := range p.Requisite {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// LocalSnapshotExcluded is the refusal of a local snapshot whose volume's
// node the placement excludes: a local snapshot lives where its volume
// does.
func LocalSnapshotExcluded(node string) error {
	return Errorf(ErrResourceExhausted, "accessibility_requirements: a local snapshot lives on node %q, which the requirements exclude (use type: backup for a snapshot usable anywhere)", node)
}
