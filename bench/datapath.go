package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/testsupport/benchutil"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// workload is one data-path row.
type workload struct {
	Name string
	RW   string
	BS   string
}

var workloads = []workload{
	{"4k random read", "randread", "4k"},
	{"4k random write", "randwrite", "4k"},
	{"1M sequential read", "read", "1m"},
	{"1M sequential write", "write", "1m"},
}

// dataRow holds every sample of one workload on both targets.
type dataRow struct {
	W        workload
	Baseline []fioResult
	Cairn    []fioResult
}

// dataPath compares fio on a published Cairn block volume with fio on a
// plain file of the same size on the same data root.
func (b *bench) dataPath(ctx context.Context) (err error) {
	size := b.cfg.sizeGiB * gib
	vol, err := b.d.CreateVolume(ctx, harness.VolumeSpec{Name: "bench-datapath", Bytes: size, Block: true})
	if err != nil {
		return err
	}
	id := vol.GetVolumeId()
	defer func() { err = errors.Join(err, b.deleteVolume(id)) }()
	m, err := b.d.Mount(ctx, id, b.mnt, true, "")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.unmount(m)) }()

	baseline := filepath.Join(b.fs.Mount, "bench-baseline.dat")
	f, err := os.Create(baseline)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.Remove(baseline)); b.trim() }()

	targets := []struct{ name, path string }{{"baseline", baseline}, {"cairn", m.Target}}
	labels := map[string]string{"baseline": "baseline file", "cairn": "Cairn block volume"}
	for _, t := range targets {
		benchutil.Logf("filling %s (%s, %d GiB) with 1M sequential writes", t.name, t.path, b.cfg.sizeGiB)
		r, err := b.fio(ctx, "fill-"+t.name, t.path, "write", "1m", size, 0)
		if err != nil {
			return err
		}
		b.res.notes = append(b.res.notes, fmt.Sprintf("Data-path fill of the %s (%d GiB, 1M sequential, direct): %.0f MiB/s.", labels[t.name], b.cfg.sizeGiB, r.MiBps()))
	}

	settle()
	rows := make([]*dataRow, len(workloads))
	for i, w := range workloads {
		rows[i] = &dataRow{W: w}
	}
	b.res.data = rows
	for rep := 0; rep < b.cfg.repeat; rep++ {
		for _, row := range rows {
			// Alternate the order so a drift of the machine (other load,
			// the host's cache) does not always favour the same side.
			order := []int{0, 1}
			if rep%2 == 1 {
				order = []int{1, 0}
			}
			for _, ti := range order {
				t := targets[ti]
				name := fmt.Sprintf("%s-%s-%d", row.W.RW, t.name, rep)
				r, err := b.fio(ctx, name, t.path, row.W.RW, row.W.BS, size, b.cfg.runtime)
				if err != nil {
					return err
				}
				benchutil.Logf("%-20s %-8s run %d: %9.0f IOPS %8.1f MiB/s", row.W.Name, t.name, rep+1, r.IOPS, r.MiBps())
				if ti == 0 {
					row.Baseline = append(row.Baseline, r)
				} else {
					row.Cairn = append(row.Cairn, r)
				}
			}
		}
	}
	return nil
}

func (b *bench) fio(ctx context.Context, name, file, rw, bs string, size int64, runtime time.Duration) (fioResult, error) {
	j := fioJob{
		Name: name, File: file, RW: rw, BS: bs, Size: size,
		Engine: b.cfg.ioengine, IODepth: b.cfg.iodepth,
		Runtime: runtime, JSONPath: filepath.Join(b.work, "fio", name+".json"),
	}
	if runtime > 0 {
		j.Ramp = b.cfg.ramp
	}
	return j.run(ctx)
}

// unmount unpublishes and unstages with a fresh context, so clean-up runs
// even after an interrupt.
func (b *bench) unmount(m *harness.Mounted) error {
	return b.retry(func(ctx context.Context) error { return b.d.Unmount(ctx, m) })
}

func (b *bench) deleteVolume(id string) error {
	return b.retry(func(ctx context.Context) error {
		if _, err := b.d.Controller().DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
			return fmt.Errorf("DeleteVolume %s: %w", id, err)
		}
		return nil
	})
}

func (b *bench) deleteSnapshot(id string) error {
	return b.retry(func(ctx context.Context) error {
		if _, err := b.d.Controller().DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			return fmt.Errorf("DeleteSnapshot %s: %w", id, err)
		}
		return nil
	})
}

// retry runs a clean-up call with a fresh context a few times. A Ctrl-C in a
// terminal reaches the whole process group: it can kill a umount the driver
// runs, or the driver itself, and clean-up must still go through.
func (b *bench) retry(call func(ctx context.Context) error) error {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 500 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		b.ensureDriver(ctx)
		err = call(ctx)
		cancel()
		if err == nil {
			return nil
		}
		benchutil.Logf("clean-up: %v (attempt %d)", err, attempt+1)
	}
	return err
}

// ensureDriver restarts the driver if it has exited.
func (b *bench) ensureDriver(ctx context.Context) {
	if !b.d.Exited(10 * time.Millisecond) {
		return
	}
	benchutil.Logf("cairn standalone has exited; restarting it to clean up")
	if err := b.d.Start(ctx); err != nil {
		benchutil.Logf("restart cairn standalone: %v", err)
	}
}
