// Package harness builds and runs `cairn standalone` as a real process for
// tests, the demo and benchmarks: start it on a socket, talk CSI to it,
// kill -9 it and start it again.
package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairn-csi/cairn/internal/faults"
)

// ModuleRoot returns the directory of the cairn module's go.mod.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the cairn module")
	}
	return filepath.Dir(mod), nil
}

// Build compiles ./cmd/cairn into dir, with the fault points compiled in
// (build tag cairnfaults, see internal/faults), and returns the binary's
// path.
func Build(dir string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "cairn")
	cmd := exec.Command("go", "build", "-tags", faults.Tag, "-o", bin, "./cmd/cairn")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/cairn: %v\n%s", err, out)
	}
	return bin, nil
}

// Driver is one `cairn standalone` process.
type Driver struct {
	Bin      string
	Socket   string
	DataRoot string
	NodeID   string
	// Args are extra flags; Env extra environment (e.g. CAIRN_FAULTS).
	Args []string
	Env  []string
	// Log receives the process's output (appended across restarts).
	Log string

	cmd  *exec.Cmd
	done chan error
	Conn *grpc.ClientConn
}

// Endpoint returns the CSI endpoint URL.
func (d *Driver) Endpoint() string { return "unix://" + d.Socket }

// Start launches the process and waits until it answers Probe. It refuses
// to arm fault points (CAIRN_FAULTS in Env) from a test built without the
// cairnfaults tag: such a test must fail, not pass untested.
func (d *Driver) Start(ctx context.Context) error {
	if err := CheckFaults(d.Env); err != nil {
		return err
	}
	logf, err := os.OpenFile(d.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := append([]string{"standalone", "--endpoint", d.Endpoint(), "--data-root", d.DataRoot, "--node-id", d.NodeID, "-v=3"}, d.Args...)
	d.cmd = exec.Command(d.Bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.Env = append(os.Environ(), d.Env...)
	// Its own process group: a Ctrl-C meant for the test or demo must not
	// kill the driver (or its mkfs and umount children) half-way; the
	// harness stops it in order.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	d.done = make(chan error, 1)
	go func() { d.done <- d.cmd.Wait(); logf.Close() }()
	if d.Conn == nil {
		d.Conn, err = grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := csipb.NewIdentityClient(d.Conn).Probe(pctx, &csipb.ProbeRequest{})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case werr := <-d.done:
			d.done <- werr
			return fmt.Errorf("cairn standalone exited during start-up (%v); log: %s", werr, d.Log)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cairn standalone not ready after 60s: %v; log: %s", err, d.Log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CheckFaults returns an error if env (NAME=value entries) arms fault points
// but this process was built without the cairnfaults tag: a test that
// relies on fault points needs `go test -tags cairnfaults` (the Makefile's
// TESTTAGS).
func CheckFaults(env []string) error {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, faults.EnvVar+"="); ok && strings.TrimSpace(v) != "" && !faults.Enabled() {
			return fmt.Errorf("%s: this test relies on fault points, which are compiled out: run it with go test -tags %s (make test, unit and integration do)", kv, faults.Tag)
		}
	}
	return nil
}

// Kill sends SIGKILL and waits for the process to go.
func (d *Driver) Kill() error {
	if d.cmd == nil || d.cmd.Process == nil {
		return nil
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	d.cmd = nil
	return nil
}

// Stop sends SIGTERM and waits up to 30s, then kills.
func (d *Driver) Stop() error {
	if d.cmd == nil || d.cmd.Process == nil {
		return nil
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
	}
	d.cmd = nil
	return nil
}

// Exited waits up to timeout for the process to exit by itself (e.g. at a
// fault point) and reports whether it did.
func (d *Driver) Exited(timeout time.Duration) bool {
	select {
	case err := <-d.done:
		d.done <- err
		d.cmd = nil
		return true
	case <-time.After(timeout):
		return false
	}
}

// Close stops the process and closes the connection.
func (d *Driver) Close() error {
	err := d.Stop()
	if d.Conn != nil {
		d.Conn.Close()
		d.Conn = nil
	}
	return err
}

// Controller returns a CSI controller client.
func (d *Driver) Controller() csipb.ControllerClient { return csipb.NewControllerClient(d.Conn) }

// Node returns a CSI node client.
func (d *Driver) Node() csipb.NodeClient { return csipb.NewNodeClient(d.Conn) }

// Identity returns a CSI identity client.
func (d *Driver) Identity() csipb.IdentityClient { return csipb.NewIdentityClient(d.Conn) }
