package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/testsupport/benchutil"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// Volume states the latency is measured in.
const (
	stateBlockPublished = "block, staged + published (flush, reflink)"
	stateBlockDetached  = "block, not staged (reflink)"
	stateFsMounted      = "filesystem, mounted (freeze, reflink, thaw)"
)

// latencyKey names one measurement.
type latencyKey struct {
	Op    string // "CreateSnapshot" or "CreateVolume (clone)"
	State string
	GiB   int64
}

// latVolume is a half-filled volume whose snapshots and clones are timed.
type latVolume struct {
	g  int64
	id string
	m  *harness.Mounted // nil once unmounted
}

// snapshots measures CreateSnapshot and clone latency on a small and a large
// half-filled volume. Both volumes exist at the same time and their calls
// alternate, so the two sizes are measured under the same conditions.
func (b *bench) snapshots(ctx context.Context) error {
	b.trim()
	if b.res.latency == nil {
		b.res.latency = map[latencyKey][]time.Duration{}
	}
	if err := b.blockLatency(ctx, []int64{b.cfg.smallGiB, b.cfg.largeGiB}); err != nil {
		return err
	}
	sizes := []int64{b.cfg.smallGiB}
	if b.cfg.fsLarge {
		need := b.cfg.largeGiB*gib/2 + 2*gib
		free, err := benchutil.FreeBytes(b.cfg.imageDir)
		if err != nil {
			return err
		}
		if free >= need {
			sizes = append(sizes, b.cfg.largeGiB)
		} else {
			b.res.notes = append(b.res.notes, fmt.Sprintf("Freeze path on the %d GiB volume skipped: %.1f GiB free on the host, %.1f GiB needed.", b.cfg.largeGiB, float64(free)/float64(gib), float64(need)/float64(gib)))
		}
	}
	return b.fsLatency(ctx, sizes)
}

// createFilled creates, stages, publishes and half fills one volume per
// size. The returned clean-up unmounts and deletes them.
func (b *bench) createFilled(ctx context.Context, kind string, sizes []int64, block bool) (vols []*latVolume, cleanup func() error, err error) {
	cleanup = func() error {
		var errs []error
		for i := len(vols) - 1; i >= 0; i-- {
			v := vols[i]
			if v.m != nil {
				errs = append(errs, b.unmount(v.m))
				v.m = nil
			}
			errs = append(errs, b.deleteVolume(v.id))
		}
		b.trim()
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, cleanup())
		}
	}()
	fsType := ""
	if !block {
		fsType = b.cfg.fsType
	}
	for _, g := range sizes {
		size := g * gib
		vol, err := b.d.CreateVolume(ctx, harness.VolumeSpec{Name: fmt.Sprintf("bench-%s-%dg", kind, g), Bytes: size, Block: block, FsType: fsType})
		if err != nil {
			return vols, cleanup, err
		}
		v := &latVolume{g: g, id: vol.GetVolumeId()}
		vols = append(vols, v)
		if v.m, err = b.d.Mount(ctx, v.id, b.mnt, block, fsType); err != nil {
			return vols, cleanup, err
		}
		file, what := v.m.Target, fmt.Sprintf("%d GiB block volume", g)
		if !block {
			file, what = filepath.Join(v.m.Target, "fill.dat"), fmt.Sprintf("%d GiB %s volume (one file)", g, fsType)
		}
		benchutil.Logf("%s: writing %d MiB into %s", what, size/2>>20, file)
		r, err := b.fio(ctx, fmt.Sprintf("fill-%s-%dg", kind, g), file, "write", "1m", size/2, 0)
		if err != nil {
			return vols, cleanup, err
		}
		b.res.notes = append(b.res.notes, fmt.Sprintf("Half fill of the %s: %d MiB in %.1f s (%.0f MiB/s).", what, size/2>>20, r.Elapsed.Seconds(), r.MiBps()))
	}
	settle()
	return vols, cleanup, nil
}

func (b *bench) blockLatency(ctx context.Context, sizes []int64) (err error) {
	vols, cleanup, err := b.createFilled(ctx, "block", sizes, true)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, cleanup()) }()
	if err := b.measure(ctx, stateBlockPublished, vols, true, ""); err != nil {
		return err
	}
	for _, v := range vols {
		err := b.unmount(v.m)
		v.m = nil
		if err != nil {
			return err
		}
	}
	return b.measure(ctx, stateBlockDetached, vols, true, "")
}

func (b *bench) fsLatency(ctx context.Context, sizes []int64) (err error) {
	vols, cleanup, err := b.createFilled(ctx, "fs", sizes, false)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, cleanup()) }()
	return b.measure(ctx, stateFsMounted, vols, false, b.cfg.fsType)
}

// settle flushes everything the fill left dirty (file system metadata, the
// host's write-back of the image) so the first timed call does not pay for
// writing back the fill.
func settle() {
	start := time.Now()
	unix.Sync()
	benchutil.Logf("sync after fill: %s", time.Since(start).Round(time.Millisecond))
}

// measure times reps CreateSnapshot calls and reps clones of each volume,
// alternating between the volumes (and the order each round), and deletes
// each result before the next call so every call sees the same state (the
// volume's extents not yet shared).
func (b *bench) measure(ctx context.Context, state string, vols []*latVolume, block bool, fsType string) error {
	slug := map[string]string{stateBlockPublished: "pub", stateBlockDetached: "det", stateFsMounted: "fs"}[state]
	for i := 0; i < b.cfg.reps; i++ {
		for k := range vols {
			v := vols[k]
			if i%2 == 1 {
				v = vols[len(vols)-1-k]
			}
			key := latencyKey{"CreateSnapshot", state, v.g}
			start := time.Now()
			snap, err := b.d.Snapshot(ctx, fmt.Sprintf("bench-%s-%dg-snap-%d", slug, v.g, i), v.id)
			dt := time.Since(start)
			if err != nil {
				return err
			}
			b.res.latency[key] = append(b.res.latency[key], dt)
			if err := b.deleteSnapshot(snap.GetSnapshotId()); err != nil {
				return err
			}
		}
	}
	for i := 0; i < b.cfg.reps; i++ {
		for k := range vols {
			v := vols[k]
			if i%2 == 1 {
				v = vols[len(vols)-1-k]
			}
			key := latencyKey{"CreateVolume (clone)", state, v.g}
			start := time.Now()
			clone, err := b.d.CreateVolume(ctx, harness.VolumeSpec{Name: fmt.Sprintf("bench-%s-%dg-clone-%d", slug, v.g, i), Bytes: v.g * gib, Block: block, FsType: fsType, FromVolume: v.id})
			dt := time.Since(start)
			if err != nil {
				return err
			}
			b.res.latency[key] = append(b.res.latency[key], dt)
			if err := b.deleteVolume(clone.GetVolumeId()); err != nil {
				return err
			}
		}
	}
	for _, v := range vols {
		benchutil.Logf("%d GiB, %s: CreateSnapshot median %s, clone median %s", v.g, state,
			fmtMs(median(b.res.latency[latencyKey{"CreateSnapshot", state, v.g}])),
			fmtMs(median(b.res.latency[latencyKey{"CreateVolume (clone)", state, v.g}])))
	}
	return nil
}
