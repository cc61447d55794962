// Package faults implements crash-injection points for tests. A process
// started with CAIRN_FAULTS=point1,point2 kills itself with SIGKILL when it
// reaches one of the named points, so tests can prove that a kill -9 at that
// exact instruction loses nothing. Without the variable every point is a
// no-op.
//
// Only builds with the build tag cairnfaults honour CAIRN_FAULTS
// (faults_on.go): `go build -tags cairnfaults`, `go test -tags cairnfaults`
// (the Makefile's TESTTAGS; the test harness builds ./cmd/cairn with it).
// In every other build, the shipped binary among them, Point is an empty
// function the compiler inlines away and the variable is ignored
// (faults_off.go). A test that arms fault points checks Enabled first and
// fails if they are compiled out.
package faults

// EnvVar names the environment variable that arms fault points.
const EnvVar = "CAIRN_FAULTS"

// Tag is the build tag that compiles fault points in.
const Tag = "cairnfaults"
