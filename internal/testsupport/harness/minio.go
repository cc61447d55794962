package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIO test credentials and bucket.
const (
	MinIOAccessKey = "cairntestaccess"
	MinIOSecretKey = "cairn-test-secret-Zq8vWm3k"
	MinIOBucket    = "cairn-test"
)

var (
	minioBinOnce sync.Once
	minioBin     string
	minioBinErr  error
)

// MinIOBinary returns the MinIO server built from source by hack/minio.sh
// into the git-ignored .tools/bin, building it first if needed (a cold
// build takes minutes; `make test` does it before the tests run).
func MinIOBinary() (string, error) {
	minioBinOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			minioBinErr = err
			return
		}
		out, err := exec.Command("bash", filepath.Join(root, "hack", "minio.sh")).Output()
		if err != nil {
			minioBinErr = fmt.Errorf("hack/minio.sh: %w", err)
			return
		}
		minioBin = strings.TrimSpace(string(out))
	})
	return minioBin, minioBinErr
}

// MinIO is one MinIO server (on 127.0.0.1 unless started with
// StartMinIOAt) with its own data directory, which
// can be killed, paused and started again on the same address.
type MinIO struct {
	Addr    string
	bin     string
	dataDir string
	console string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// FreeAddr returns a 127.0.0.1 address nothing listens on (yet).
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// StartMinIO starts a server on 127.0.0.1 with its data under dir and
// creates MinIOBucket.
func StartMinIO(dir string) (*MinIO, error) { return StartMinIOAt(dir, "127.0.0.1") }

// StartMinIOAt is StartMinIO on another address of this machine (the S3
// API there, the console on 127.0.0.1), e.g. one that pods reach.
func StartMinIOAt(dir, host string) (*MinIO, error) {
	bin, err := MinIOBinary()
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	console, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	m := &MinIO{bin: bin, Addr: addr, console: console, dataDir: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "minio.log")}
	if err := os.MkdirAll(m.dataDir, 0o755); err != nil {
		return nil, err
	}
	if err := m.Start(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.MakeBucket(ctx, MinIOBucket); err != nil {
		m.Stop()
		return nil, fmt.Errorf("create bucket: %w\n%s", err, m.LogTail())
	}
	return m, nil
}

// Start (re)starts the server process and waits until it is ready.
func (m *MinIO) Start() error {
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(m.bin, "server", m.dataDir, "--address", m.Addr, "--console-address", m.console, "--quiet")
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+MinIOAccessKey, "MINIO_ROOT_PASSWORD="+MinIOSecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "CI=true")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test
	if err := cmd.Start(); err != nil {
		return err
	}
	m.cmd = cmd
	m.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(m.exited) }()
	return m.waitReady(30 * time.Second)
}

func (m *MinIO) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-m.exited:
			return fmt.Errorf("minio exited during start-up:\n%s", m.LogTail())
		default:
		}
		if resp, err := client.Get("http://" + m.Addr + "/minio/health/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("minio not ready after %v:\n%s", timeout, m.LogTail())
}

// Kill stops the server abruptly (SIGKILL) and waits for it to be gone.
func (m *MinIO) Kill() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.exited
	m.cmd = nil
}

// Signal sends sig (e.g. SIGSTOP, SIGCONT) to the running server.
func (m *MinIO) Signal(sig syscall.Signal) error {
	return m.cmd.Process.Signal(sig)
}

// Stop shuts the server down gracefully.
func (m *MinIO) Stop() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGCONT)
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
	m.cmd = nil
}

// LogTail returns the end of the server's log.
func (m *MinIO) LogTail() string {
	b, _ := os.ReadFile(m.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// MakeBucket creates a bucket, retrying while the server settles.
func (m *MinIO) MakeBucket(ctx context.Context, bucket string) error {
	c, err := minio.New(m.Addr, &minio.Options{Creds: credentials.NewStaticV4(MinIOAccessKey, MinIOSecretKey, ""), Region: "us-east-1"})
	if err != nil {
		return err
	}
	for {
		err = c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: "us-east-1"})
		if err == nil || ctx.Err() != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// URL returns an s3:// URL for MinIOBucket under prefix, with extra query
// parameters (e.g. "maxRetryTime=5s").
func (m *MinIO) URL(prefix string, params ...string) string {
	u := "s3://" + MinIOBucket + "/" + prefix + "?endpoint=" + m.Addr + "&insecure=true&pathStyle=true&region=us-east-1"
	for _, p := range params {
		u += "&" + p
	}
	return u
}

// Env returns the AWS environment variables that carry the credentials.
func (m *MinIO) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + MinIOAccessKey, "AWS_SECRET_ACCESS_KEY=" + MinIOSecretKey}
}
