package iolimit

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/testsupport/machinelock"
)

func TestMain(m *testing.M) { os.Exit(machinelock.Main(m)) }

const podUID = "0b8f7f52-2a5c-4c39-9f5e-3a0d61b8f1e2"

// TestThrottleV1 throttles a real loop device in a pod's container cgroup
// laid out as kubelet does (cgroupfs driver), and in the root cgroup, and
// measures direct writes against the same writes unlimited.
func TestThrottleV1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	e, err := New("/sys/fs/cgroup")
	if errors.Is(err, ErrUnsupported) || (err == nil && e.Version() != 1) {
		t.Skipf("not a cgroup v1 blkio node: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "data.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.Close()
	d, err := loop.Attach(file, false, "iolimit-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loop.Detach(d.Path) })
	dev, err := DeviceOf(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(e.hier, fmt.Sprintf("cairn-iolimit-test-%d", os.Getpid()))
	pod := filepath.Join(top, "kubepods", "besteffort", "pod"+podUID)
	ctr := filepath.Join(pod, "c0ffee")
	if err := os.MkdirAll(ctr, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range []string{ctr, pod, filepath.Dir(pod), filepath.Dir(filepath.Dir(pod)), top} {
			os.Remove(p)
		}
	})
	t.Cleanup(func() { e.Apply(dev, model.IOLimits{}, []string{podUID}) })

	// 60 direct 4 KiB writes from the container's cgroup.
	write := func(cg string) time.Duration {
		t.Helper()
		start := time.Now()
		cmd := exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec dd if=/dev/zero of="$2" bs=4k count=60 oflag=direct status=none`, "sh", cg, d.Path)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("dd in %s: %v %s", cg, err, out)
		}
		return time.Since(start)
	}
	free := write(ctr)
	if e.PodDir(podUID) != pod {
		t.Fatalf("PodDir = %q, want %q", e.PodDir(podUID), pod)
	}
	lim := model.IOLimits{IOPS: 40, ThroughputMiBps: 100}
	if err := e.Apply(dev, lim, []string{podUID, "11111111-2222-3333-4444-555555555555"}); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{e.hier, pod, ctr} {
		if v, _ := readV1(filepath.Join(dir, "blkio.throttle.write_iops_device"), dev); v != 40 {
			t.Errorf("%s: write_iops %d, want 40", dir, v)
		}
		if v, _ := readV1(filepath.Join(dir, "blkio.throttle.read_bps_device"), dev); v != 100<<20 {
			t.Errorf("%s: read_bps %d, want %d", dir, v, 100<<20)
		}
	}
	limited := write(ctr)
	rootLimited := write(e.hier)
	t.Logf("60 direct writes: %v unlimited, %v at 40 IOPS in the container's cgroup, %v in the root cgroup", free, limited, rootLimited)
	// 60 writes at 40 IOPS take about 1.5 s (the first burst is free).
	for what, took := range map[string]time.Duration{"container": limited, "root": rootLimited} {
		if took < 900*time.Millisecond || took < 5*free {
			t.Errorf("%s cgroup: 60 writes at 40 IOPS took %v (unlimited %v): not throttled", what, took, free)
		}
	}
	// Removing the limit frees the device again.
	if err := e.Apply(dev, model.IOLimits{}, []string{podUID}); err != nil {
		t.Fatal(err)
	}
	if v, _ := readV1(filepath.Join(ctr, "blkio.throttle.write_iops_device"), dev); v != 0 {
		t.Errorf("limit left after clearing: %d", v)
	}
	if again := write(ctr); again > 600*time.Millisecond && again > 5*free {
		t.Errorf("after clearing the limit, 60 writes took %v (unlimited %v)", again, free)
	}
}

// TestV2Files: in cgroup v2 the pod's own cgroup gets one io.max line.
func TestV2Files(t *testing.T) {
	root := t.TempDir()
	if _, err := New(root); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("empty dir: %v, want ErrUnsupported", err)
	}
	os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644)
	pod := filepath.Join(root, "kubepods.slice", "kubepods-burstable.slice", "kubepods-burstable-pod"+strings.ReplaceAll(podUID, "-", "_")+".slice")
	os.MkdirAll(pod, 0o755)
	os.WriteFile(filepath.Join(pod, "io.max"), []byte("8:0 rbps=max wbps=max riops=5 wiops=max\n"), 0o644)
	e, err := New(root)
	if err != nil || e.Version() != 2 {
		t.Fatalf("New: %v %v", e, err)
	}
	dev := Device{7, 3}
	if err := e.Apply(dev, model.IOLimits{IOPS: 300, ThroughputMiBps: 2}, []string{podUID}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(pod, "io.max"))
	if want := "7:3 riops=300 wiops=300 rbps=2097152 wbps=2097152\n"; string(b) != want {
		t.Errorf("io.max = %q, want %q", b, want)
	}
	if _, err := os.Stat(filepath.Join(root, "io.max")); err == nil {
		t.Error("v2 root cgroup written")
	}
	if e.PodDir("../../etc") != "" {
		t.Error("PodDir accepted a path as a UID")
	}
}

// TestPodDirLayout: only kubelet's layout counts, the shallowest match
// wins (a pod with a writable cgroupfs cannot plant a decoy for another
// pod's UID inside its own subtree), and a missing pod is not searched
// for again at once.
func TestPodDirLayout(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("io memory\n"), 0o644)
	sys := func(uid string) string {
		return "kubepods-burstable-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	}
	attacker := filepath.Join(root, "kubepods.slice", "kubepods-besteffort.slice", sys("11111111-2222-3333-4444-555555555555"))
	// The decoy sorts first and sits in kubelet-like dirs, but deeper.
	decoy := filepath.Join(attacker, "kubepods", "besteffort", "pod"+podUID)
	// Not in kubelet's layout at all.
	stray := filepath.Join(root, "aaa", "pod"+podUID)
	real := filepath.Join(root, "kubepods.slice", "kubepods-burstable.slice", sys(podUID))
	for _, d := range []string{decoy, stray, real} {
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "io.max"), nil, 0o644)
	}
	e, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.PodDir(podUID); got != real {
		t.Fatalf("PodDir = %s, want the real pod cgroup %s", got, real)
	}
	other := "99999999-8888-7777-6666-555555555555"
	if e.PodDir(other) != "" {
		t.Fatal("found a pod that has no cgroup")
	}
	late := filepath.Join(root, "kubepods.slice", sys(other))
	os.MkdirAll(late, 0o755)
	if e.PodDir(other) != "" {
		t.Error("a missing pod was searched for again at once")
	}
	e.Forget(other)
	if e.PodDir(other) != late {
		t.Error("a forgotten pod was not searched for again")
	}
	// v2: a pod cgroup without io.max (io controller not enabled) is an
	// error, not silently unlimited.
	os.Remove(filepath.Join(real, "io.max"))
	if err := e.Apply(Device{7, 1}, model.IOLimits{IOPS: 10}, []string{podUID}); err == nil || !strings.Contains(err.Error(), "io controller") {
		t.Errorf("pod cgroup without io.max: %v", err)
	}
}
