package machinelock

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain points the package at a lock file of its own, shared with the
// helper processes through the environment, so these tests neither wait
// for nor block the machine's real lock.
func TestMain(m *testing.M) {
	if p := os.Getenv("MACHINELOCK_TEST_FILE"); p != "" {
		path = p
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "machinelock-")
	if err != nil {
		panic(err)
	}
	path = filepath.Join(dir, "lock")
	os.Setenv("MACHINELOCK_TEST_FILE", path)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// holder runs this test binary as a child that takes the lock (shared or
// exclusive) and holds it until its stdin closes, so the lock is held by
// another process, as it is between test binaries.
func holder(t *testing.T, excl bool) (stop func()) {
	t.Helper()
	mode := "shared"
	if excl {
		mode = "exclusive"
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHolder$")
	cmd.Env = append(os.Environ(), "MACHINELOCK_HOLD="+mode)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := out.Read(buf)
	if !strings.Contains(string(buf[:n]), "held") {
		t.Fatalf("holder did not take the lock: %q", buf[:n])
	}
	return func() { in.Close(); cmd.Wait() }
}

func TestHelperHolder(t *testing.T) {
	mode := os.Getenv("MACHINELOCK_HOLD")
	if mode == "" {
		t.Skip("helper process")
	}
	release, err := acquire(context.Background(), mode == "exclusive")
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("held\n")
	os.Stdin.Read(make([]byte, 1))
	release()
}

func try(excl bool, wait time.Duration) (func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	return acquire(ctx, excl)
}

func TestSharedHoldersExcludeANode(t *testing.T) {
	stop := holder(t, false)
	// Another shared holder gets in at once.
	release, err := try(false, time.Second)
	if err != nil {
		t.Fatalf("second shared holder: %v", err)
	}
	release()
	// A node does not, until the shared holders are gone.
	if release, err := try(true, 500*time.Millisecond); err == nil {
		release()
		t.Fatal("exclusive lock granted while another process holds it shared")
	}
	stop()
	release, err = try(true, 2*time.Second)
	if err != nil {
		t.Fatalf("exclusive after the shared holder left: %v", err)
	}
	release()
}

func TestANodeExcludesSharedHolders(t *testing.T) {
	stop := holder(t, true)
	if release, err := try(false, 500*time.Millisecond); err == nil {
		release()
		t.Fatal("shared lock granted while another process holds it exclusively")
	}
	stop()
	release, err := try(false, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	release()
}

func TestReentrantWithinAProcess(t *testing.T) {
	outer, err := try(true, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := try(true, time.Second)
	if err != nil {
		t.Fatalf("exclusive again in the same process: %v", err)
	}
	shared, err := try(false, time.Second)
	if err != nil {
		t.Fatalf("shared inside exclusive: %v", err)
	}
	inner()
	inner() // twice is harmless
	shared()
	// Still held by outer: another process cannot take it.
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperTry$")
	cmd.Env = append(os.Environ(), "MACHINELOCK_TRY=1")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "refused") {
		t.Fatalf("other process while held: %v %s", err, out)
	}
	outer()
	cmd = exec.Command(os.Args[0], "-test.run=^TestHelperTry$")
	cmd.Env = append(os.Environ(), "MACHINELOCK_TRY=1")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "granted") {
		t.Fatalf("other process after release: %v %s", err, out)
	}
}

func TestSharedCannotBecomeExclusive(t *testing.T) {
	release, err := try(false, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if r, err := try(true, time.Second); err == nil {
		r()
		t.Fatal("a shared holder was granted the exclusive lock")
	}
}

func TestHelperTry(t *testing.T) {
	if os.Getenv("MACHINELOCK_TRY") == "" {
		t.Skip("helper process")
	}
	if release, err := try(false, 300*time.Millisecond); err != nil {
		os.Stdout.WriteString("refused\n")
	} else {
		release()
		os.Stdout.WriteString("granted\n")
	}
}
