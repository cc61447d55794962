package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/model"
)

func reasons(ps []model.HealthProblem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, string(p.Kind)+"/"+p.Reason)
	}
	return out
}

// wantHealth checks that a volume has exactly the problems want
// ("Kind/Reason"), each with a message.
func wantHealth(t *testing.T, e *Engine, id string, want ...string) {
	t.Helper()
	ps, err := e.VolumeHealth(context.Background(), id)
	if err != nil {
		t.Fatalf("VolumeHealth(%s): %v", id, err)
	}
	if got := reasons(ps); !slices.Equal(got, want) {
		t.Fatalf("health of %s: %v, want %v (%+v)", id, got, want, ps)
	}
	for _, p := range ps {
		if len(p.Message) < 40 {
			t.Errorf("message too short to act on: %q", p.Message)
		}
	}
	all, err := e.AllVolumeHealth(context.Background(), 0)
	if err != nil || !slices.Equal(reasons(all[id]), want) {
		t.Errorf("AllVolumeHealth[%s] = %v (%v), want %v", id, reasons(all[id]), err, want)
	}
}

// TestVolumeHealth breaks volumes the ways an admin or a failing disk
// would and checks each is reported, and that repairing it clears it.
func TestVolumeHealth(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	e := newTestEngine(t, "xfs")

	// A healthy staged ext4 volume; its file system goes read-only, then
	// is unmounted behind the driver's back.
	v, staging := stageFS(t, e, "health-ext4", "ext4")
	wantHealth(t, e, v.ID)
	ok(t, exec.Command("mount", "-o", "remount,ro", staging).Run())
	wantHealth(t, e, v.ID, "Degraded/FileSystemReadOnly")
	ok(t, exec.Command("mount", "-o", "remount,rw", staging).Run())
	wantHealth(t, e, v.ID)
	ok(t, unix.Unmount(staging, 0))
	wantHealth(t, e, v.ID, "Inaccessible/NotMounted")
	ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: v.ID, StagingPath: staging, FsType: "ext4"}))
	wantHealth(t, e, v.ID)
	ok(t, e.UnstageVolume(ctx, v.ID, staging))

	// XFS shut down after an error.
	x, xstaging := stageFS(t, e, "health-xfs", "xfs")
	wantHealth(t, e, x.ID)
	ok(t, exec.Command("xfs_io", "-x", "-c", "shutdown", xstaging).Run())
	wantHealth(t, e, x.ID, "Inaccessible/FileSystemShutDown")
	ok(t, e.UnstageVolume(ctx, x.ID, xstaging))

	// A staged block volume whose loop device is detached by hand.
	b := must(e.CreateVolume(ctx, model.CreateVolumeRequest{Name: "health-block", RequiredBytes: 64 * mib, Block: true,
		Parameters: map[string]string{"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "shop"}}))(t)
	bstaging := kubePath(e, "staging", "health-block")
	ok(t, e.StageVolume(ctx, model.StageRequest{VolumeID: b.ID, StagingPath: bstaging, Block: true}))
	wantHealth(t, e, b.ID)
	for _, d := range loopsOf(t, e, b.ID) {
		ok(t, loop.Detach(d.Path))
	}
	waitNoLoop(t, e, b.ID)
	wantHealth(t, e, b.ID, "Inaccessible/LoopDeviceDetached")
	ok(t, e.UnstageVolume(ctx, b.ID, bstaging))
	wantHealth(t, e, b.ID)

	// The data file truncated, then gone; the whole volume gone.
	data := e.volumeData(b.ID)
	ok(t, os.Truncate(data, 32*mib))
	wantHealth(t, e, b.ID, "DataLoss/DataFileTruncated")
	// The metric names the volume, its PVC and the problem.
	reg := prometheus.NewRegistry()
	RegisterMetrics(reg, e)
	var series []string
	for _, mf := range must(reg.Gather())(t) {
		if mf.GetName() != "cairn_volume_health_problem" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			series = append(series, fmt.Sprintf("%s %s/%s %s/%s %v", l["volume_id"], l["pvc_namespace"], l["pvc_name"], l["type"], l["reason"], m.GetGauge().GetValue()))
		}
	}
	if want := b.ID + " shop/data DataLoss/DataFileTruncated 1"; !slices.Equal(series, []string{want}) {
		t.Errorf("cairn_volume_health_problem series %v, want [%s]", series, want)
	}
	ok(t, os.Remove(data))
	// A scrape within HealthCacheAge answers from the last pass; the
	// heartbeat's pass (maxAge 0) sees the change.
	if all, err := e.AllVolumeHealth(ctx, time.Hour); err != nil || !slices.Equal(reasons(all[b.ID]), []string{"DataLoss/DataFileTruncated"}) {
		t.Errorf("cached health: %v (%v), want the last pass's DataFileTruncated", reasons(all[b.ID]), err)
	}
	wantHealth(t, e, b.ID, "DataLoss/DataFileMissing")
	ok(t, os.RemoveAll(e.volumeDir(b.ID)))
	if _, err := e.VolumeHealth(ctx, b.ID); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("health of a volume without metadata: %v, want NotFound", err)
	}

	// The data root filled by something else: nearly full, and what the
	// volumes were promised no longer fits.
	if got := e.StorageHealth(ctx); len(got) != 0 {
		t.Fatalf("healthy data root: %+v", got)
	}
	c := must(e.Capacity())(t)
	filler := filepath.Join(e.Root(), "filler")
	t.Cleanup(func() { os.Remove(filler) })
	f := must(os.Create(filler))(t)
	ok(t, unix.Fallocate(int(f.Fd()), 0, 0, c.FreeBytes-c.TotalBytes/100))
	f.Close()
	if got := reasons(e.StorageHealth(ctx)); !slices.Equal(got, []string{"Degraded/DataRootNearlyFull", "Degraded/ReservationNotMet"}) {
		t.Errorf("full data root: %v", got)
	}
	wantHealth(t, e, v.ID, "Degraded/ReservationNotMet")
	ok(t, os.Remove(filler))
	// XFS frees a removed file's blocks in the background.
	for i := 0; i < 250 && len(e.StorageHealth(ctx)) > 0; i++ {
		unix.Sync()
		time.Sleep(20 * time.Millisecond)
	}
	wantHealth(t, e, v.ID)
	if got := e.StorageHealth(ctx); len(got) != 0 {
		t.Errorf("data root after freeing space: %+v", got)
	}
	ok(t, e.DeleteVolume(ctx, v.ID))
	ok(t, e.DeleteVolume(ctx, x.ID))
}

func waitNoLoop(t *testing.T, e *Engine, id string) {
	t.Helper()
	for i := 0; i < 100 && len(loopsOf(t, e, id)) > 0; i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHealthCheckBounded: a check that blocks (a hung disk) fails its
// caller when the context ends instead of blocking it.
func TestHealthCheckBounded(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := boundedCheck(ctx, func() (int, error) { <-block; return 1, nil })
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("blocked check: %v after %v, want a deadline error at once", err, time.Since(start))
	}
	if v, err := boundedCheck(context.Background(), func() (int, error) { return 7, nil }); v != 7 || err != nil {
		t.Fatalf("quick check: %v %v", v, err)
	}
}
