//go:build !cairnfaults

package faults

// Enabled reports whether fault points are compiled in (build tag
// cairnfaults): false in this build.
func Enabled() bool { return false }

// Point does nothing: this build has no fault points (see the package
// documentation); CAIRN_FAULTS is ignored.
func Point(name string) {}
