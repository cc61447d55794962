package node

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procInfo is a process of the machine, as /proc shows it.
type procInfo struct {
	pid  int
	comm string   // /proc/pid/comm
	args []string // /proc/pid/cmdline
}

// processes lists the machine's processes (those /proc can read).
func processes() []procInfo {
	ents, _ := os.ReadDir("/proc")
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil {
			continue
		}
		cl, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		var args []string
		for _, a := range bytes.Split(bytes.TrimRight(cl, "\x00"), []byte{0}) {
			args = append(args, string(a))
		}
		st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			continue // a zombie: already dead
		}
		out = append(out, procInfo{pid: pid, comm: strings.TrimSpace(string(comm)), args: args})
	}
	return out
}

// hasArg reports whether args hold flag value (as "flag value" or
// "flag=value").
func hasArg(args []string, flag, value string) bool {
	for i, a := range args {
		if a == flag+"="+value || (a == flag && i+1 < len(args) && args[i+1] == value) {
			return true
		}
	}
	return false
}
