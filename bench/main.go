// Command bench measures Cairn on a loop-backed XFS data root under
// _out/bench: the data path of a block volume against a plain file on the
// same data root (fio), and the latency of snapshots and clones of a small
// and a large half-filled volume. It prints a markdown summary, writes it to
// _out/bench/results.md and removes everything it made. See
// docs/BENCHMARKS.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cairn-csi/cairn/internal/testsupport/benchutil"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

const gib = int64(1) << 30

type config struct {
	runtime     time.Duration
	ramp        time.Duration
	sizeGiB     int64
	repeat      int
	ioengine    string
	iodepth     int
	smallGiB    int64
	largeGiB    int64
	reps        int
	fsType      string
	fsLarge     bool
	skipData    bool
	skipSnap    bool
	scaleCounts []int         // checkpoints of the many-volumes run (none: not run)
	cowHints    []string      // CoW extent size hints to compare ("" = XFS default; none: not run)
	cowGiB      int64         // size of the CoW run's volume
	cowSnaps    int           // snapshots the CoW run takes
	cowRuntime  time.Duration // each CoW fio run
	out         string
	imageDir    string
	commandLine string
}

func main() {
	var c config
	flag.DurationVar(&c.runtime, "runtime", 10*time.Second, "fio run time of each data-path job (time based)")
	flag.DurationVar(&c.ramp, "ramp", 2*time.Second, "fio ramp time before each data-path job is measured")
	flag.Int64Var(&c.sizeGiB, "size-gib", 2, "size of the data-path volume and of the baseline file, GiB")
	flag.IntVar(&c.repeat, "repeat", 5, "data path: run each (baseline, cairn) pair this many times and take the median")
	flag.StringVar(&c.ioengine, "ioengine", "libaio", "fio ioengine (libaio or psync)")
	flag.IntVar(&c.iodepth, "iodepth", 16, "fio iodepth (ignored by psync)")
	flag.Int64Var(&c.smallGiB, "small-gib", 1, "size of the small snapshot/clone volume, GiB")
	flag.Int64Var(&c.largeGiB, "large-gib", 64, "size of the large snapshot/clone volume, GiB (half of it is written)")
	flag.IntVar(&c.reps, "reps", 15, "snapshot/clone: repetitions per measurement (median reported)")
	flag.StringVar(&c.fsType, "fs-type", "ext4", "file system of the filesystem volumes used for the freeze-path measurement")
	flag.BoolVar(&c.fsLarge, "fs-large", true, "also measure the freeze path on the large volume (writes another large/2 GiB)")
	flag.BoolVar(&c.skipData, "skip-datapath", false, "skip the fio data-path benchmark")
	flag.BoolVar(&c.skipSnap, "skip-snapshots", false, "skip the snapshot/clone latency benchmark")
	scale := flag.String("scale", "", "many volumes: checkpoints, e.g. 10,100,1000 (empty: not run); each volume is created, staged as raw block and snapshotted")
	cow := flag.String("cow", "", "copy-on-write after snapshots: the CoW extent size hints to compare, e.g. default,1m,16m (empty: not run)")
	flag.Int64Var(&c.cowGiB, "cow-gib", 2, "size of the copy-on-write run's volume, GiB")
	flag.IntVar(&c.cowSnaps, "cow-snapshots", 1000, "snapshots the copy-on-write run takes (IOPS measured after the 1st, 100th, 1,000th and last)")
	flag.DurationVar(&c.cowRuntime, "cow-runtime", 5*time.Second, "each copy-on-write fio run (no ramp: the first writes after a snapshot are what is measured)")
	flag.StringVar(&c.out, "out", "", "work directory: results, logs, mounts (default <module root>/_out/bench)")
	flag.StringVar(&c.imageDir, "image-dir", "", "directory of the data root's sparse image (default: the work directory); e.g. /dev/shm to take the disk out of a data-path run")
	flag.Parse()
	for _, f := range strings.Split(*scale, ",") {
		if f = strings.TrimSpace(f); f != "" {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 || len(c.scaleCounts) > 0 && n <= c.scaleCounts[len(c.scaleCounts)-1] {
				fmt.Fprintf(os.Stderr, "bench: -scale %q: want increasing counts such as 10,100,1000\n", *scale)
				os.Exit(2)
			}
			c.scaleCounts = append(c.scaleCounts, n)
		}
	}
	for _, h := range strings.Split(*cow, ",") {
		switch h = strings.TrimSpace(h); h {
		case "":
		case "default":
			c.cowHints = append(c.cowHints, "")
		default:
			c.cowHints = append(c.cowHints, h)
		}
	}
	c.commandLine = strings.Join(append([]string{"go run ./bench"}, os.Args[1:]...), " ")
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "bench failed:", err)
		os.Exit(1)
	}
}

func run(c config) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the benchmark needs root: it attaches loop devices and mounts file systems")
	}
	if _, err := exec.LookPath("fio"); err != nil {
		return errors.New("fio not found: install it (apt-get install -y fio, or make deps)")
	}
	if c.repeat < 1 || c.reps < 1 || c.sizeGiB < 1 || c.smallGiB < 1 || c.largeGiB < c.smallGiB {
		return errors.New("bad flags: -repeat, -reps, -size-gib, -small-gib must be >= 1 and -large-gib >= -small-gib")
	}
	work, err := benchutil.WorkDir(c.out, "bench")
	if err != nil {
		return err
	}
	c.out = work
	for _, p := range []string{"mnt", "fio", "data-root"} {
		if err := os.RemoveAll(filepath.Join(work, p)); err != nil {
			return err
		}
	}

	if c.imageDir == "" {
		c.imageDir = work
	}
	if err := os.MkdirAll(c.imageDir, 0o755); err != nil {
		return err
	}
	imageSub := filepath.Join(c.imageDir, "cairn-bench-image")
	image := filepath.Join(imageSub, "data-root.img")
	if leaks, err := harness.Leaks(imageSub); err != nil {
		return err
	} else if len(leaks) > 0 {
		return fmt.Errorf("leftovers of an earlier run in %s, clean them up first:\n  %s", imageSub, strings.Join(leaks, "\n  "))
	}
	if err := os.RemoveAll(imageSub); err != nil {
		return err
	}
	// Real disk space: the large volume's half fill, the two data-path
	// files and some margin. The image itself is sparse.
	need := 4 * gib
	if !c.skipData {
		need += 2 * c.sizeGiB * gib
	}
	if !c.skipSnap {
		need += c.largeGiB*gib/2 + c.smallGiB*gib
	}
	if len(c.cowHints) > 0 {
		need += c.cowGiB*gib + 2*gib
	}
	if free, err := benchutil.FreeBytes(c.imageDir); err != nil {
		return err
	} else if free < need {
		return fmt.Errorf("%s has %.1f GiB free, the benchmark needs about %.1f GiB: lower -large-gib (now %d)",
			c.imageDir, float64(free)/float64(gib), float64(need)/float64(gib), c.largeGiB)
	}
	// The engine refuses a clone unless the data root's free space covers
	// the new volume's full size plus what existing volumes may still
	// allocate, so the (sparse) image is sized generously.
	imageSize := 4*c.sizeGiB*gib + 8*gib
	if !c.skipSnap {
		imageSize = max(imageSize, 3*c.largeGiB*gib+32*gib)
	}
	if len(c.scaleCounts) > 0 {
		imageSize = max(imageSize, int64(c.scaleCounts[len(c.scaleCounts)-1])*(64<<20)+16*gib)
	}
	if len(c.cowHints) > 0 {
		imageSize = max(imageSize, 4*c.cowGiB*gib+16*gib)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	info := machineInfo(c.imageDir)
	res := &results{cfg: c, info: info, started: time.Now()}

	benchutil.Logf("creating XFS data root (sparse %d GiB image %s)", imageSize/gib, image)
	fs, err := scratchfs.Create(image, filepath.Join(work, "data-root"), "xfs", imageSize)
	if err != nil {
		return err
	}
	mnt := filepath.Join(work, "mnt")
	defer func() {
		if cerr := fs.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close scratch fs: %w", cerr))
		}
		leaks, lerr := harness.Leaks(work, work)
		more, lerr2 := harness.Leaks(imageSub)
		leaks, lerr = append(leaks, more...), errors.Join(lerr, lerr2)
		os.Remove(imageSub)
		if lerr != nil {
			err = errors.Join(err, lerr)
		}
		res.leaksAfterScratch = leaks
		res.finished = time.Now()
		if werr := res.write(filepath.Join(work, "results.md")); werr != nil {
			err = errors.Join(err, werr)
		}
		if len(leaks) > 0 {
			err = errors.Join(err, fmt.Errorf("leaked after cleanup: %s", strings.Join(leaks, "; ")))
		}
	}()

	benchutil.Logf("building cairn")
	bin, err := harness.Build(work)
	if err != nil {
		return err
	}
	d := &harness.Driver{Bin: bin, Socket: filepath.Join(work, "csi.sock"), DataRoot: fs.Mount, NodeID: "bench-node", Log: filepath.Join(work, "cairn.log")}
	os.Remove(d.Log)
	os.Remove(d.Socket)
	if err := d.Start(ctx); err != nil {
		return err
	}
	benchutil.Logf("cairn standalone running, log: %s", d.Log)
	defer func() {
		if cerr := d.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("stop driver: %w", cerr))
		}
		leaks, lerr := harness.Leaks(fs.Mount, mnt)
		if lerr != nil {
			err = errors.Join(err, lerr)
		}
		res.leaksAfterDriver = leaks
	}()

	b := &bench{cfg: c, d: d, fs: fs, work: work, mnt: mnt, res: res}
	if !c.skipData {
		if err := b.dataPath(ctx); err != nil {
			return fmt.Errorf("data path benchmark: %w", err)
		}
	}
	if !c.skipSnap {
		if err := b.snapshots(ctx); err != nil {
			return fmt.Errorf("snapshot/clone benchmark: %w", err)
		}
	}
	if len(c.cowHints) > 0 {
		if err := b.cow(ctx); err != nil {
			return fmt.Errorf("copy-on-write benchmark: %w", err)
		}
	}
	if len(c.scaleCounts) > 0 {
		if err := b.scale(ctx); err != nil {
			return fmt.Errorf("many-volumes benchmark: %w", err)
		}
	}
	return nil
}

// bench holds what the benchmark phases share.
type bench struct {
	cfg  config
	d    *harness.Driver
	fs   *scratchfs.FS
	work string
	mnt  string
	res  *results
}

// trim returns the blocks freed on the data root to the image file, so the
// host disk gets the space of deleted volumes back.
func (b *bench) trim() {
	if out, err := exec.Command("fstrim", b.fs.Mount).CombinedOutput(); err != nil {
		benchutil.Logf("fstrim %s: %v: %s (continuing)", b.fs.Mount, err, strings.TrimSpace(string(out)))
	}
}
