// Package faults implements crash-injection points for tests. A process
// started with CAIRN_FAULTS=point1,point2 kills itself with SIGKILL when it
// reaches one of the named points, so tests can prove that a kill -9 at that
// exact instruction loses nothing. Without the variable every point is a
// no-op.
package faults

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
)

// EnvVar names the environment variable that arms fault points.
const EnvVar = "CAIRN_FAULTS"

var (
	once  sync.Once
	armed map[string]bool
)

func load() {
	armed = map[string]bool{}
	for _, p := range strings.Split(os.Getenv(EnvVar), ",") {
		if p = strings.TrimSpace(p); p != "" {
			armed[p] = true
		}
	}
}

// Point kills the process with SIGKILL if name is armed.
func Point(name string) {
	once.Do(load)
	if !armed[name] {
		return
	}
	fmt.Fprintf(os.Stderr, "cairn: fault point %q reached, killing process\n", name)
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not deliverable to a handler; wait for it
}
