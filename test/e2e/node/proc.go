package node

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a child process of the node: its own process group, SIGKILLed
// if the test process dies, output appended to <WorkDir>/logs/<name>.log.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed once Wait returned
	err  error         // Wait's result, valid after done
}

func startProc(logDir, name, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "### %s %q\n", bin, args)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) exitError() error {
	return fmt.Errorf("%s exited (%v); log %s:\n%s", p.name, p.err, p.log, logTail(p.log, 4000))
}

// stop sends SIGTERM to the process group, then SIGKILL after grace, and
// waits for the process.
func (p *proc) stop(grace time.Duration) {
	pid := p.cmd.Process.Pid
	if pid <= 0 {
		return
	}
	if grace > 0 && !p.exited() {
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
	}
	// The group outlives its leader when the leader spawned children.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-p.done
}

func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

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
