package cluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// proc is one child process of the cluster: its own process group (so Stop
// can kill it together with anything it spawned), SIGKILLed if the test
// process dies, output appended to <WorkDir>/logs/<name>.log.
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

// exited reports whether the process has ended (and been reaped).
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes an unexpected exit, with the end of the log.
func (p *proc) exitError() error {
	return fmt.Errorf("%s exited during start-up (%v); log %s:\n%s", p.name, p.err, p.log, logTail(p.log, 3000))
}

// kill SIGKILLs the whole process group and waits for the process.
func (p *proc) kill() {
	if pid := p.cmd.Process.Pid; pid > 0 {
		// The group outlives its leader only if it spawned children; killing
		// an empty group just fails with ESRCH.
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	<-p.done
}

// logTail returns at most n bytes of the end of a log file.
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

// freePorts returns n distinct TCP ports on 127.0.0.1 that nothing listens
// on at the moment (all listeners are held until every port is picked).
func freePorts(n int) ([]int, error) {
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

var errStopped = errors.New("cluster stopped")
