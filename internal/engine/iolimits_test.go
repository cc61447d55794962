package engine

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/iolimit"
	"github.com/cairn-csi/cairn/internal/model"
)

const blkio = "/sys/fs/cgroup/blkio"

// throttleOf reads dev's write IOPS limit in a v1 cgroup directory.
func throttleOf(t *testing.T, dir string, dev iolimit.Device) int64 {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "blkio.throttle.write_iops_device"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var n int64
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == dev.String() {
			fmt.Sscan(fields[1], &n)
			return n
		}
	}
	return 0
}

// TestIOLimits: a block volume with an IOPS limit is throttled in the
// cgroups of the pod it is published to — also a container cgroup made
// after the publish — and in the root cgroup; ModifyVolume changes the
// limit live; unstaging clears the device; bad values and unknown keys
// change nothing.
func TestIOLimits(t *testing.T) {
	requireRoot(t)
	if _, err := os.Stat(filepath.Join(blkio, "blkio.throttle.write_iops_device")); err != nil {
		t.Skip("not a cgroup v1 blkio node")
	}
	ctx := context.Background()
	e := newTestEngine(t, "xfs")
	if got := e.IOLimitsSupport(); got != "cgroup-v1" {
		t.Fatalf("IOLimitsSupport = %q", got)
	}
	uid := "6a0c1f7e-93a1-4d0b-8a55-0e4f7b1c2d3e"
	top := filepath.Join(blkio, fmt.Sprintf("cairn-engine-test-%d", os.Getpid()))
	pod := filepath.Join(top, "kubepods", "burstable", "pod"+uid)
	ok(t, os.MkdirAll(filepath.Join(pod, "pause"), 0o755))
	t.Cleanup(func() {
		for _, d := range []string{filepath.Join(pod, "app"), filepath.Join(pod, "pause"), pod, filepath.Dir(pod), filepath.Dir(filepath.Dir(pod)), top} {
			os.Remove(d)
		}
	})

	v := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "limited", RequiredBytes: 64 * mib, Block: true, IOLimits: model.IOLimits{IOPS: 40}}))(t)
	if v.IOLimits.IOPS != 40 {
		t.Fatalf("created with limits %+v", v.IOLimits)
	}
	staging := kubePath(e, "staging", "limited")
	target := kubePath(e, "pods", uid, "volumeDevices", "limited")
	ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: v.ID, StagingPath: staging, Block: true}))
	ok(t, e.PublishVolume(ctx, model.PublishRequest{VolumeID: v.ID, StagingPath: staging, TargetPath: target, Block: true, PodUID: uid}))
	devs := loopsOf(t, e, v.ID)
	if len(devs) != 1 {
		t.Fatalf("loop devices %v", devs)
	}
	dev := must(iolimit.DeviceOf(devs[0].Path))(t)
	for _, d := range []string{blkio, pod, filepath.Join(pod, "pause")} {
		if got := throttleOf(t, d, dev); got != 40 {
			t.Errorf("%s: write IOPS limit %d, want 40", d, got)
		}
	}
	// A container started after the publish gets the limit from the watch.
	app := filepath.Join(pod, "app")
	ok(t, os.Mkdir(app, 0o755))
	deadline := time.Now().Add(limitsResync + time.Second)
	for throttleOf(t, app, dev) != 40 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := throttleOf(t, app, dev); got != 40 {
		t.Fatalf("new container cgroup: limit %d, want 40", got)
	}
	write := func() time.Duration {
		start := time.Now()
		cmd := exec.Command("sh", "-c", `echo $$ > "$1/cgroup.procs" && exec dd if=/dev/zero of="$2" bs=4k count=60 oflag=direct status=none`, "sh", app, target)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("dd: %v %s", err, out)
		}
		return time.Since(start)
	}
	limited := write()

	// Bad values and unknown keys are refused by the parser; the engine
	// refuses nothing valid. Removing the limit frees the device at once.
	if _, err := (model.IOLimits{}).With(map[string]string{"iops": "-5"}, "mutable_parameters", true); model.KindOf(err) != model.ErrInvalidArgument {
		t.Errorf("negative iops: %v", err)
	}
	got := must(e.ModifyVolume(ctx, v.ID, model.IOLimits{}))(t)
	if !got.IOLimits.Zero() || throttleOf(t, app, dev) != 0 || throttleOf(t, blkio, dev) != 0 {
		t.Fatalf("limits left after removing them: %+v app=%d root=%d", got.IOLimits, throttleOf(t, app, dev), throttleOf(t, blkio, dev))
	}
	free := write()
	t.Logf("60 direct writes in the pod: %v at 40 IOPS, %v without a limit", limited, free)
	if limited < 900*time.Millisecond || limited < 4*free {
		t.Errorf("60 writes at 40 IOPS took %v (unlimited %v): not throttled", limited, free)
	}
	must(e.ModifyVolume(ctx, v.ID, model.IOLimits{IOPS: 500, ThroughputMiBps: 8}))(t)
	if throttleOf(t, app, dev) != 500 || must(e.GetVolume(ctx, v.ID))(t).IOLimits.ThroughputMiBps != 8 {
		t.Errorf("modified limit not applied: %d", throttleOf(t, app, dev))
	}
	// Unpublish clears the pod, unstage the device.
	ok(t, e.UnpublishVolume(ctx, v.ID, target))
	if throttleOf(t, app, dev) != 0 {
		t.Errorf("pod cgroup keeps the limit after unpublish")
	}
	if throttleOf(t, blkio, dev) != 500 {
		t.Errorf("root cgroup lost the limit while staged")
	}
	ok(t, e.UnstageVolume(ctx, v.ID, staging))
	if throttleOf(t, blkio, dev) != 0 {
		t.Errorf("root cgroup keeps the limit of a detached loop device")
	}
	// A rule left on a loop number with no device attached (a crash
	// between lifting and detaching, a lift that failed) is lifted by the
	// resync before another device gets the number.
	if loopsOf(t, e, v.ID) == nil {
		ok(t, os.WriteFile(filepath.Join(blkio, "blkio.throttle.write_iops_device"), []byte(dev.String()+" 7\n"), 0))
		deadline := time.Now().Add(limitsResync + 2*time.Second)
		for throttleOf(t, blkio, dev) != 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if got := throttleOf(t, blkio, dev); got != 0 {
			ok(t, os.WriteFile(filepath.Join(blkio, "blkio.throttle.write_iops_device"), []byte(dev.String()+" 0\n"), 0))
			t.Errorf("stale root rule on detached %s: %d, not lifted by the resync", dev, got)
		}
	}
	ok(t, e.DeleteVolume(ctx, v.ID))
}
