// Package proc runs the child processes of the e2e test harnesses
// (test/e2e/cluster and test/e2e/node): it starts each in its own process
// group with its output in a log file, waits for it to become ready,
// reports its exit with the end of its log, and kills it.
package proc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Proc is one child process: its own process group (so Stop can kill it
// together with anything it spawned), SIGKILLed if the test process dies,
// output appended to <logDir>/<name>.log.
type Proc struct {
	Name string // as given to Start
	Log  string // path of the log file

	cmd  *exec.Cmd
	done chan struct{} // closed once Wait returned
	err  error         // Wait's result, valid after done
}

// Start runs bin with args, logging to <logDir>/<name>.log.
func Start(logDir, name, bin string, args ...string) (*Proc, error) {
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
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id (also the id of its process group).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended (and been reaped).
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill SIGKILLs the whole process group and waits for the process.
func (p *Proc) Kill() { p.Stop(0) }

// Stop sends SIGTERM to the process group, then SIGKILL after grace (at
// once if grace is 0), and waits for the process.
func (p *Proc) Stop(grace time.Duration) {
	pid := p.Pid()
	if pid <= 0 {
		return
	}
	if grace > 0 && !p.Exited() {
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
	}
	// The group outlives its leader only if the leader spawned children;
	// killing an empty group just fails with ESRCH.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-p.done
}

// LogTail returns at most n bytes of the end of a log file.
func LogTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Policy is how a harness waits for its processes and words their
// failures.
type Policy struct {
	ExitNote     string        // what ExitError says happened, e.g. "exited"
	TailBytes    int           // bytes of the end of a log that errors quote
	CheckTimeout time.Duration // bound on one check of WaitFor
	Poll         time.Duration // pause between WaitFor's checks
}

// ExitError describes an unexpected exit of p, with the end of its log.
func (pol Policy) ExitError(p *Proc) error {
	return fmt.Errorf("%s %s (%v); log %s:\n%s", p.Name, pol.ExitNote, p.err, p.Log, LogTail(p.Log, pol.TailBytes))
}

// abort ends a WaitFor loop early with its error.
type abort struct{ err error }

func (a abort) Error() string { return a.err.Error() }

// Abort wraps err so that WaitFor returns err at once instead of checking
// again.
func Abort(err error) error { return abort{err} }

// WaitFor polls check until it returns nil, failing early if p exits, the
// timeout passes, ctx ends or check returns an Abort error; the error
// carries the end of p's log.
func (pol Policy) WaitFor(ctx context.Context, p *Proc, timeout time.Duration, check func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		if p.Exited() {
			return pol.ExitError(p)
		}
		cctx, cancel := context.WithTimeout(ctx, pol.CheckTimeout)
		last := check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		var stop abort
		if errors.As(last, &stop) {
			return stop.err
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %v; log %s:\n%s", p.Name, timeout, last, p.Log, LogTail(p.Log, pol.TailBytes))
		}
		select {
		case <-ctx.Done():
		case <-p.done:
		case <-time.After(pol.Poll):
		}
	}
}

// HTTPOK GETs url with hc and fails unless the answer is 200 OK.
func HTTPOK(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// FreePorts returns n distinct TCP ports on 127.0.0.1 that nothing listens
// on at the moment (all listeners are held until every port is picked).
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
