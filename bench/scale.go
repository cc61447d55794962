package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/testsupport/benchutil"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// scaleRow is what one bracket of the many-volumes run measured: the
// calls that took the count from the previous checkpoint to Count, and
// the whole-node calls at Count.
type scaleRow struct {
	Count                              int
	Create, Stage, Snapshot            []time.Duration
	ListVolumes, ListSnapshots, GetCap []time.Duration
	Loops                              int
}

// scaleResult is the many-volumes run.
type scaleResult struct {
	rows                   []*scaleRow
	restart, firstList     time.Duration
	unstage, deleteSnap    []time.Duration
	deleteVol              []time.Duration
	loopsBefore, loopsLeft int
	stopped                string // why the run stopped early (the kernel ran out of loop devices), if it did
}

// scale creates volumes one by one up to the last checkpoint, stages each
// as a raw block device (a loop device) and snapshots it; at each
// checkpoint it times the calls that cover the whole node. Then it
// restarts the driver with everything staged (start-up reconcile), and
// unstages and deletes it all.
func (b *bench) scale(ctx context.Context) (err error) {
	r := &scaleResult{}
	b.res.scale = r
	before, err := loop.List()
	if err != nil {
		return err
	}
	r.loopsBefore = len(before)
	type vol struct{ id, staging, snap string }
	var vols []*vol
	defer func() {
		benchutil.Logf("scale: unstaging and deleting %d volumes", len(vols))
		for _, v := range vols {
			if v.staging != "" {
				start := time.Now()
				cerr := b.retry(func(ctx context.Context) error {
					_, err := b.d.Node().NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
					return err
				})
				r.unstage = append(r.unstage, time.Since(start))
				err = errors.Join(err, cerr)
			}
		}
		for _, v := range vols {
			if v.snap != "" {
				start := time.Now()
				err = errors.Join(err, b.deleteSnapshot(v.snap))
				r.deleteSnap = append(r.deleteSnap, time.Since(start))
			}
		}
		for _, v := range vols {
			start := time.Now()
			err = errors.Join(err, b.deleteVolume(v.id))
			r.deleteVol = append(r.deleteVol, time.Since(start))
		}
		if after, lerr := loop.List(); lerr == nil {
			r.loopsLeft = countUnder(after, b.fs.Mount)
		}
		b.trim()
	}()
	next := 0
	for _, count := range b.cfg.scaleCounts {
		row := &scaleRow{Count: count}
		b.res.scale.rows = append(b.res.scale.rows, row)
		for ; next < count; next++ {
			name := fmt.Sprintf("scale-%05d", next)
			start := time.Now()
			cv, err := b.d.CreateVolume(ctx, harness.VolumeSpec{Name: name, Bytes: 16 << 20, Block: true})
			if err != nil {
				return err
			}
			row.Create = append(row.Create, time.Since(start))
			v := &vol{id: cv.GetVolumeId()}
			vols = append(vols, v)
			staging := filepath.Join(b.mnt, "scale", v.id)
			if err := os.MkdirAll(staging, 0o750); err != nil {
				return err
			}
			start = time.Now()
			_, err = b.d.Node().NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: harness.Cap(true, "")})
			if err != nil {
				r.stopped = fmt.Sprintf("NodeStageVolume of volume %d failed: %v", next+1, err)
				benchutil.Logf("scale: %s", r.stopped)
				b.scaleCheckpoint(ctx, row)
				return nil
			}
			row.Stage = append(row.Stage, time.Since(start))
			v.staging = staging
			start = time.Now()
			s, err := b.d.Snapshot(ctx, name+"-snap", v.id)
			if err != nil {
				return err
			}
			row.Snapshot = append(row.Snapshot, time.Since(start))
			v.snap = s.GetSnapshotId()
		}
		b.scaleCheckpoint(ctx, row)
		benchutil.Logf("scale: %d volumes: create p50 %s, stage p50 %s, ListVolumes %s, GetCapacity %s", count,
			fmtMs(pct(row.Create, 50)), fmtMs(pct(row.Stage, 50)), fmtMs(median(row.ListVolumes)), fmtMs(median(row.GetCap)))
	}
	// Start-up with everything staged: stop, start, and the first full
	// listing.
	if err := b.d.Stop(); err != nil {
		return err
	}
	start := time.Now()
	if err := b.d.Start(ctx); err != nil {
		return err
	}
	r.restart = time.Since(start)
	start = time.Now()
	if _, err := listAll(ctx, b.d); err != nil {
		return err
	}
	r.firstList = time.Since(start)
	return nil
}

// scaleCheckpoint times the whole-node calls: ListVolumes and
// ListSnapshots (all pages), GetCapacity; 5 of each.
func (b *bench) scaleCheckpoint(ctx context.Context, row *scaleRow) {
	for range 5 {
		start := time.Now()
		if n, err := listAll(ctx, b.d); err == nil && n >= len(row.Create) {
			row.ListVolumes = append(row.ListVolumes, time.Since(start))
		}
		start = time.Now()
		if _, err := b.d.Controller().ListSnapshots(ctx, &csipb.ListSnapshotsRequest{}); err == nil {
			row.ListSnapshots = append(row.ListSnapshots, time.Since(start))
		}
		start = time.Now()
		if _, err := b.d.Controller().GetCapacity(ctx, &csipb.GetCapacityRequest{}); err == nil {
			row.GetCap = append(row.GetCap, time.Since(start))
		}
	}
	if all, err := loop.List(); err == nil {
		row.Loops = countUnder(all, b.fs.Mount)
	}
}

// listAll pages through ListVolumes (100 per page, as external-provisioner
// does not, but a careful CO would) and returns the count.
func listAll(ctx context.Context, d *harness.Driver) (int, error) {
	n, token := 0, ""
	for {
		resp, err := d.Controller().ListVolumes(ctx, &csipb.ListVolumesRequest{MaxEntries: 100, StartingToken: token})
		if err != nil {
			return n, err
		}
		n += len(resp.GetEntries())
		if token = resp.GetNextToken(); token == "" {
			return n, nil
		}
	}
}

// countUnder counts loop devices whose backing file is under dir.
func countUnder(all []loop.Device, dir string) int {
	n := 0
	for _, d := range all {
		if strings.HasPrefix(d.BackingFile, dir+"/") {
			n++
		}
	}
	return n
}

// pct is the p-th percentile (nearest rank).
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))]
}

func p50p99(ds []time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	return fmt.Sprintf("%s / %s", fmtMs(pct(ds, 50)), fmtMs(pct(ds, 99)))
}

// markdown renders the many-volumes tables.
func (r *scaleResult) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "\n## Many volumes on one node\n\n")
	fmt.Fprintf(b, "Standalone driver, CSI calls as the client sees them. Volumes of 16 MiB, raw block, each staged (a loop device) and snapshotted right after it is made. "+
		"Per bracket: p50 / p99 of the calls that brought the count to the row's; ListVolumes pages 100 at a time through all, "+
		"ListSnapshots and GetCapacity are one call; median of 5 at the count.\n\n")
	fmt.Fprintf(b, "| Volumes | CreateVolume p50 / p99 | NodeStageVolume p50 / p99 | CreateSnapshot p50 / p99 | ListVolumes (all) | ListSnapshots | GetCapacity | Loop devices |\n")
	fmt.Fprintf(b, "|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, row := range r.rows {
		fmt.Fprintf(b, "| %d | %s | %s | %s | %s | %s | %s | %d |\n", row.Count, p50p99(row.Create), p50p99(row.Stage), p50p99(row.Snapshot),
			fmtMs(median(row.ListVolumes)), fmtMs(median(row.ListSnapshots)), fmtMs(median(row.GetCap)), row.Loops)
	}
	if r.stopped != "" {
		fmt.Fprintf(b, "\nStopped early: %s\n", r.stopped)
	}
	fmt.Fprintf(b, "\nDriver restart with every volume staged (SIGTERM, start, until Probe answers): %s; the first full ListVolumes after it: %s.\n", fmtMs(r.restart), fmtMs(r.firstList))
	fmt.Fprintf(b, "Clean-up: NodeUnstageVolume %s, DeleteSnapshot %s, DeleteVolume %s (p50 / p99); loop devices of the data root left: %d (host had %d before).\n",
		p50p99(r.unstage), p50p99(r.deleteSnap), p50p99(r.deleteVol), r.loopsLeft, r.loopsBefore)
}
