package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cairn-csi/cairn/internal/testsupport/benchutil"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// cowRow is one copy-on-write run: 4k random write IOPS of a filled block
// volume in steady state, right after its first snapshot, and right after
// its 100th and 1,000th (with a little random writing between the
// snapshots, so that they differ).
type cowRow struct {
	Setup     string // the data root's CoW extent size hint
	Steady    float64
	After     map[int]float64 // snapshot count -> IOPS right after the latest
	Delete    []time.Duration // DeleteSnapshot of every snapshot, oldest first
	SnapTimes []time.Duration // CreateSnapshot of every snapshot
}

// cow runs the copy-on-write measurement once per CoW extent size hint
// ("" is XFS's default, 32 blocks).
func (b *bench) cow(ctx context.Context) error {
	for _, hint := range b.cfg.cowHints {
		row, err := b.cowOnce(ctx, hint)
		if err != nil {
			return err
		}
		b.res.cow = append(b.res.cow, row)
	}
	return nil
}

// setCoWHint sets the CoW extent size hint on the data root's directories
// (new files and directories in them inherit it; XFS default: none, i.e.
// 32 file system blocks).
func (b *bench) setCoWHint(hint string) error {
	dirs := []string{b.fs.Mount}
	ents, err := os.ReadDir(b.fs.Mount)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(b.fs.Mount, e.Name()))
		}
	}
	for _, d := range dirs {
		if out, err := exec.Command("xfs_io", "-c", "cowextsize "+hint, d).CombinedOutput(); err != nil {
			return fmt.Errorf("xfs_io cowextsize %s %s: %v: %s", hint, d, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

func (b *bench) cowOnce(ctx context.Context, hint string) (row *cowRow, err error) {
	row = &cowRow{Setup: "XFS default (no hint)", After: map[int]float64{}}
	h := hint
	if h == "" {
		h = "0"
	} else {
		row.Setup = "cowextsize " + hint + " on the data root's directories"
	}
	if err := b.setCoWHint(h); err != nil {
		return nil, err
	}
	size := b.cfg.cowGiB * gib
	v, err := b.d.CreateVolume(ctx, harness.VolumeSpec{Name: "cow-" + h, Bytes: size, Block: true})
	if err != nil {
		return nil, err
	}
	var snaps []string
	m, err := b.d.Mount(ctx, v.GetVolumeId(), b.mnt, true, "")
	defer func() {
		if m != nil {
			err = errors.Join(err, b.unmount(m))
		}
		for _, s := range snaps {
			err = errors.Join(err, b.deleteSnapshot(s))
		}
		err = errors.Join(err, b.deleteVolume(v.GetVolumeId()))
		b.trim()
	}()
	if err != nil {
		return nil, err
	}
	if out, err := exec.Command("xfs_io", "-c", "cowextsize", filepath.Join(b.fs.Mount, "volumes", v.GetVolumeId(), "data.img")).CombinedOutput(); err == nil {
		benchutil.Logf("cow: %s: the volume's file has %s", row.Setup, strings.TrimSpace(string(out)))
	}
	benchutil.Logf("cow: filling the %d GiB volume", b.cfg.cowGiB)
	if _, err := b.fio(ctx, "cow-fill-"+h, m.Target, "write", "1m", size, 0); err != nil {
		return nil, err
	}
	run := func(label string) (float64, error) {
		j := fioJob{Name: "cow-" + h + "-" + label, File: m.Target, RW: "randwrite", BS: "4k", Size: size, Engine: b.cfg.ioengine, IODepth: b.cfg.iodepth,
			Runtime: b.cfg.cowRuntime, JSONPath: filepath.Join(b.work, "fio", "cow-"+h+"-"+label+".json")}
		r, err := j.run(ctx)
		if err != nil {
			return 0, err
		}
		benchutil.Logf("cow: %s, %s: %.0f IOPS", row.Setup, label, r.IOPS)
		return r.IOPS, nil
	}
	// A little writing between snapshots: 32 random 4k writes (each makes
	// an extent of its own, and a snapshot's reflink is O(extents): more
	// would make the 1,000 snapshots take hours).
	between := func(i int) error {
		j := fioJob{Name: fmt.Sprintf("cow-%s-between-%d", h, i), File: m.Target, RW: "randwrite", BS: "4k", Size: size, IOSize: 32 << 12, Engine: b.cfg.ioengine, IODepth: b.cfg.iodepth,
			JSONPath: filepath.Join(b.work, "fio", "cow-between.json")}
		_, err := j.run(ctx)
		return err
	}
	if row.Steady, err = run("steady"); err != nil {
		return row, err
	}
	for n := 1; n <= b.cfg.cowSnaps; n++ {
		if n > 1 {
			if err := between(n); err != nil {
				return row, err
			}
		}
		start := time.Now()
		s, err := b.d.Snapshot(ctx, fmt.Sprintf("cow-%s-%04d", h, n), v.GetVolumeId())
		if err != nil {
			return row, err
		}
		row.SnapTimes = append(row.SnapTimes, time.Since(start))
		snaps = append(snaps, s.GetSnapshotId())
		if n == 1 || n == 100 || n == 1000 || n == b.cfg.cowSnaps {
			if _, done := row.After[n]; !done {
				if row.After[n], err = run(fmt.Sprintf("after-snapshot-%d", n)); err != nil {
					return row, err
				}
			}
		}
	}
	// Deleting them, oldest first, times every call.
	for len(snaps) > 0 {
		start := time.Now()
		if err := b.deleteSnapshot(snaps[0]); err != nil {
			return row, err
		}
		row.Delete = append(row.Delete, time.Since(start))
		snaps = snaps[1:]
	}
	return row, nil
}

// cowMarkdown renders the copy-on-write table.
func cowMarkdown(b *strings.Builder, c config, rows []*cowRow) {
	fmt.Fprintf(b, "\n## Writes after snapshots (copy-on-write)\n\n")
	fmt.Fprintf(b, "A %d GiB raw block volume, staged and published (loop device, direct I/O), filled with 1M sequential writes; then fio 4k random writes, "+
		"direct, ioengine=%s, iodepth=%d, %s each, no ramp: in steady state (no snapshot), and right after the 1st, 100th and 1,000th snapshot "+
		"(with 32 random 4k writes between snapshots). Ratio = IOPS right after the snapshot / steady state. Target ≥ 0.8, and no further loss with 1,000 snapshots.\n\n",
		c.cowGiB, c.ioengine, c.iodepth, c.cowRuntime)
	fmt.Fprintf(b, "| Data root | Steady IOPS | After 1st | After 100th | After 1,000th | CreateSnapshot p50 / p99 | DeleteSnapshot p50 / p99 (first 10 / last 10) |\n")
	fmt.Fprintf(b, "|---|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		cell := func(n int) string {
			v, ok := r.After[n]
			if !ok {
				return "–"
			}
			return fmt.Sprintf("%.0f (%.2f)", v, v/r.Steady)
		}
		first, last := r.Delete, r.Delete
		if len(r.Delete) > 10 {
			first, last = r.Delete[:10], r.Delete[len(r.Delete)-10:]
		}
		fmt.Fprintf(b, "| %s | %.0f | %s | %s | %s | %s | %s (%s / %s) |\n", r.Setup, r.Steady, cell(1), cell(100), cell(1000),
			p50p99(r.SnapTimes), p50p99(r.Delete), fmtMs(median(first)), fmtMs(median(last)))
	}
}
