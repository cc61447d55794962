//go:build cairnfaults

package faults

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
)

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

// Enabled reports whether fault points are compiled in (build tag
// cairnfaults): true in this build.
func Enabled() bool { return true }

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
