// Command cbt measures changed-block tracking (docs/CBT.md) on a
// loop-backed XFS data root under _out/bench-cbt: for a 1 GiB and a 64 GiB
// block volume of a standalone driver, it writes scattered ranges through
// the published loop device, snapshots, writes more, snapshots again and
// times GetMetadataAllocated and GetMetadataDelta over CSI against a bare
// FIEMAP of the target snapshot's file (the baseline, same run), checking
// that the delta lists exactly the second round's ranges. It prints a
// markdown table and removes everything it made.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/testsupport/benchutil"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

const (
	gib   = int64(1) << 30
	block = int64(4096)
)

func main() {
	sizes := flag.String("sizes-gib", "1,64", "volume sizes, GiB, comma-separated")
	writes := flag.Int("writes", 2000, "scattered writes per round (4 KiB to 256 KiB each, 4 KiB aligned)")
	reps := flag.Int("reps", 7, "timed calls per measurement (median reported)")
	maxResults := flag.Int("max-results", 0, "max_results of each call (0: the driver's default)")
	out := flag.String("out", "", "work directory (default <module root>/_out/bench-cbt)")
	flag.Parse()
	var gibs []int64
	for _, s := range strings.Split(*sizes, ",") {
		var g int64
		if _, err := fmt.Sscan(strings.TrimSpace(s), &g); err != nil || g < 1 {
			fmt.Fprintf(os.Stderr, "bad -sizes-gib %q\n", *sizes)
			os.Exit(2)
		}
		gibs = append(gibs, g)
	}
	if err := run(gibs, *writes, *reps, int32(*maxResults), *out); err != nil {
		fmt.Fprintln(os.Stderr, "bench-cbt failed:", err)
		os.Exit(1)
	}
}

type row struct {
	gib                        int64
	written, changed           int64 // bytes written in round 2; bytes the delta lists
	ranges, allocRanges        int
	exact                      bool
	delta, alloc, fiemap       time.Duration
	deltaChunks, allocChunks   int
	targetExtents, baseExtents int
}

func run(gibs []int64, writes, reps int, maxResults int32, out string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: loop devices and mounts")
	}
	work, err := benchutil.WorkDir(out, "bench-cbt")
	if err != nil {
		return err
	}
	for _, p := range []string{"root", "mnt", "root.img"} {
		os.RemoveAll(filepath.Join(work, p))
	}
	ctx := context.Background()
	bin, err := harness.Build(work)
	if err != nil {
		return err
	}
	size := 2*slices.Max(gibs)*gib + 8*gib
	fs, err := scratchfs.Create(filepath.Join(work, "root.img"), filepath.Join(work, "root"), "xfs", size)
	if err != nil {
		return err
	}
	defer func() {
		harness.UnmountAll(filepath.Join(work, "mnt"))
		harness.DetachLoops(fs.Mount)
		fs.Close()
		os.Remove(filepath.Join(work, "root.img"))
	}()
	d := &harness.Driver{Bin: bin, Socket: filepath.Join(work, "csi.sock"), DataRoot: fs.Mount, NodeID: "bench", Log: filepath.Join(work, "cairn.log")}
	if err := d.Start(ctx); err != nil {
		return err
	}
	defer d.Close()
	var rows []row
	for _, g := range gibs {
		benchutil.Logf("%d GiB volume: %d + %d scattered writes", g, writes, writes)
		r, err := measure(ctx, d, fs.Mount, filepath.Join(work, "mnt"), g, writes, reps, maxResults)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	fmt.Printf("\n%s\n", report(rows, writes, reps))
	return nil
}

func measure(ctx context.Context, d *harness.Driver, root, mnt string, g int64, writes, reps int, maxResults int32) (row, error) {
	r := row{gib: g}
	name := fmt.Sprintf("cbt-%d", g)
	vol, err := d.CreateVolume(ctx, harness.VolumeSpec{Name: name, Bytes: g * gib, Block: true})
	if err != nil {
		return r, err
	}
	m, err := d.Mount(ctx, vol.VolumeId, mnt, true, "")
	if err != nil {
		return r, err
	}
	rng := rand.New(rand.NewPCG(uint64(g), 7))
	scatter := func() ([]fsops.Range, error) {
		f, err := os.OpenFile(m.Target, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		buf := make([]byte, 256<<10)
		var rs []fsops.Range
		for range writes {
			n := (1 + rng.Int64N(64)) * block
			off := rng.Int64N(g*gib/block-64) * block
			for i := range buf[:n] {
				buf[i] = byte(rng.Uint32()) | 1 // never zero: a zero block could be left sparse
			}
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return nil, err
			}
			rs = append(rs, fsops.Range{Offset: off, Length: n})
		}
		return merge(rs), f.Sync()
	}
	snap := func(n string) (string, error) {
		resp, err := d.Controller().CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: n, SourceVolumeId: vol.VolumeId})
		if err != nil {
			return "", err
		}
		return resp.GetSnapshot().GetSnapshotId(), nil
	}
	if _, err := scatter(); err != nil {
		return r, err
	}
	base, err := snap(name + "-base")
	if err != nil {
		return r, err
	}
	want, err := scatter()
	if err != nil {
		return r, err
	}
	target, err := snap(name + "-target")
	if err != nil {
		return r, err
	}
	for _, w := range want {
		r.written += w.Length
	}
	md := csipb.NewSnapshotMetadataClient(d.Conn)
	var got []fsops.Range
	r.delta, r.deltaChunks, err = timed(reps, func() (int, error) {
		got = got[:0]
		s, err := md.GetMetadataDelta(ctx, &csipb.GetMetadataDeltaRequest{BaseSnapshotId: base, TargetSnapshotId: target, MaxResults: maxResults})
		if err != nil {
			return 0, err
		}
		return drain(func() ([]*csipb.BlockMetadata, error) { x, err := s.Recv(); return x.GetBlockMetadata(), err }, &got)
	})
	if err != nil {
		return r, fmt.Errorf("GetMetadataDelta: %w", err)
	}
	r.ranges = len(got)
	for _, x := range got {
		r.changed += x.Length
	}
	r.exact = slices.Equal(merge(got), want)
	var alloc []fsops.Range
	r.alloc, r.allocChunks, err = timed(reps, func() (int, error) {
		alloc = alloc[:0]
		s, err := md.GetMetadataAllocated(ctx, &csipb.GetMetadataAllocatedRequest{SnapshotId: target, MaxResults: maxResults})
		if err != nil {
			return 0, err
		}
		return drain(func() ([]*csipb.BlockMetadata, error) { x, err := s.Recv(); return x.GetBlockMetadata(), err }, &alloc)
	})
	if err != nil {
		return r, fmt.Errorf("GetMetadataAllocated: %w", err)
	}
	r.allocRanges = len(alloc)
	// The baseline: one FIEMAP of the target's file, no comparison, no CSI.
	file := filepath.Join(root, "snapshots", target, "data.img")
	r.fiemap, _, err = timed(reps, func() (int, error) {
		f, err := os.Open(file)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		exts, err := fsops.Extents(f)
		r.targetExtents = len(exts)
		return 1, err
	})
	if err != nil {
		return r, fmt.Errorf("FIEMAP baseline (%s): %w", file, err)
	}
	if f, err := os.Open(filepath.Join(root, "snapshots", base, "data.img")); err == nil {
		exts, _ := fsops.Extents(f)
		r.baseExtents = len(exts)
		f.Close()
	}
	errs := []error{harness.UnmountVia(ctx, d.Node(), m)}
	for _, s := range []string{target, base} {
		_, err := d.Controller().DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: s})
		errs = append(errs, err)
	}
	_, err = d.Controller().DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: vol.VolumeId})
	return r, errors.Join(append(errs, err)...)
}

// drain reads a stream to its end into out, returning the chunk count.
func drain(recv func() ([]*csipb.BlockMetadata, error), out *[]fsops.Range) (int, error) {
	n := 0
	for {
		bm, err := recv()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		for _, b := range bm {
			*out = append(*out, fsops.Range{Offset: b.GetByteOffset(), Length: b.GetSizeBytes()})
		}
	}
}

// timed runs fn reps times and returns the median duration and fn's count.
func timed(reps int, fn func() (int, error)) (time.Duration, int, error) {
	var ds []time.Duration
	n := 0
	for range reps {
		start := time.Now()
		c, err := fn()
		if err != nil {
			return 0, 0, err
		}
		ds = append(ds, time.Since(start))
		n = c
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], n, nil
}

// merge sorts ranges and joins overlapping or adjacent ones.
func merge(rs []fsops.Range) []fsops.Range {
	rs = slices.Clone(rs)
	sort.Slice(rs, func(i, j int) bool { return rs[i].Offset < rs[j].Offset })
	var out []fsops.Range
	for _, r := range rs {
		if n := len(out); n > 0 && r.Offset <= out[n-1].End() {
			out[n-1].Length = max(out[n-1].End(), r.End()) - out[n-1].Offset
			continue
		}
		out = append(out, r)
	}
	return out
}

func report(rows []row, writes, reps int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Changed-block tracking, %s; %d scattered writes per round, median of %d calls; load %s\n\n", time.Now().Format("2006-01-02"), writes, reps, benchutil.LoadAvg())
	b.WriteString("| volume | written in round 2 | delta lists | exact | delta ranges (chunks) | GetMetadataDelta | GetMetadataAllocated (ranges) | FIEMAP of the target (extents) | delta / FIEMAP |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d GiB | %.1f MiB | %.1f MiB | %s | %d (%d) | %s | %s (%d) | %s (%d; base %d) | %.1f |\n",
			r.gib, float64(r.written)/(1<<20), float64(r.changed)/(1<<20), benchutil.YesNo(r.exact), r.ranges, r.deltaChunks,
			r.delta.Round(10*time.Microsecond), r.alloc.Round(10*time.Microsecond), r.allocRanges,
			r.fiemap.Round(10*time.Microsecond), r.targetExtents, r.baseExtents, float64(r.delta)/float64(r.fiemap))
	}
	return b.String()
}
