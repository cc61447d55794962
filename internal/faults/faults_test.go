package faults_test

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/cairn-csi/cairn/internal/faults"
)

const helperEnv = "CAIRN_FAULTS_TEST_HELPER"

// TestHelperProcess is the child of TestCrashAtPoint: it passes an unarmed and
// then an armed point and says how far it got.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process for TestCrashAtPoint")
	}
	faults.Point("test:unarmed")
	os.Stdout.WriteString("passed test:unarmed\n")
	faults.Point("test:armed")
	os.Stdout.WriteString("passed test:armed\n")
	os.Exit(0)
}

// TestCrashAtPoint runs TestHelperProcess with CAIRN_FAULTS=test:armed: with the
// cairnfaults tag it dies of SIGKILL at the armed point and only there;
// without the tag it ignores the variable.
func TestCrashAtPoint(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=1", faults.EnvVar+"= test:other , test:armed")
	out, err := cmd.Output()
	got := string(out)
	if !strings.Contains(got, "passed test:unarmed\n") {
		t.Fatalf("helper did not pass the unarmed point: %v, output %q", err, got)
	}
	if !faults.Enabled() {
		if err != nil || !strings.Contains(got, "passed test:armed\n") {
			t.Fatalf("built without -tags %s, yet the armed point stopped the process: %v, output %q", faults.Tag, err, got)
		}
		return
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("helper was not killed at the armed point: %v, output %q", err, got)
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper ended with %v, want SIGKILL at the armed point", err)
	}
	if strings.Contains(got, "passed test:armed") {
		t.Fatalf("helper went past the armed point: %q", got)
	}
	if !strings.Contains(string(ee.Stderr), `fault point "test:armed" reached`) {
		t.Errorf("stderr does not name the point: %q", ee.Stderr)
	}
}
