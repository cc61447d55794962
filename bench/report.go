package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/testsupport/benchutil"
)

// Targets from the benchmark issue.
const (
	dataRatioTarget    = 0.95
	latencyRatioTarget = 1.5
	latencyLimit       = 100 * time.Millisecond
)

type results struct {
	cfg               config
	info              [][2]string
	started, finished time.Time
	data              []*dataRow
	latency           map[latencyKey][]time.Duration
	cow               []*cowRow
	scale             *scaleResult
	notes             []string
	leaksAfterDriver  []string
	leaksAfterScratch []string
}

func median[T int64 | float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func fmtMs(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func machineInfo(work string) [][2]string {
	var uts unix.Utsname
	kernel := "unknown"
	if unix.Uname(&uts) == nil {
		kernel = unix.ByteSliceToString(uts.Release[:])
	}
	info := [][2]string{
		{"Date", time.Now().UTC().Format("2006-01-02 15:04 MST")},
		{"nproc", fmt.Sprint(runtime.NumCPU())},
		{"CPU", benchutil.ProcField("/proc/cpuinfo", "model name")},
		{"Memory", benchutil.ProcField("/proc/meminfo", "MemTotal")},
		{"Kernel", kernel},
		{"fio", fioVersion()},
		{"Go", runtime.Version()},
	}
	if out, err := exec.Command("findmnt", "-n", "-f", "-o", "SOURCE,FSTYPE", "-T", work).Output(); err == nil {
		info = append(info, [2]string{"Host file system of the image", strings.Join(strings.Fields(string(out)), " ")})
	}
	info = append(info, [2]string{"Load average at start", benchutil.LoadAvg()})
	return info
}

// markdown renders the summary.
func (r *results) markdown() string {
	var b strings.Builder
	c := r.cfg
	fmt.Fprintf(&b, "# Cairn benchmark results\n\n")
	fmt.Fprintf(&b, "Command: `%s` (took %s)\n\n", c.commandLine, r.finished.Sub(r.started).Round(time.Second))
	fmt.Fprintf(&b, "## Machine\n\n| | |\n|---|---|\n")
	for _, kv := range r.info {
		fmt.Fprintf(&b, "| %s | %s |\n", kv[0], kv[1])
	}
	fmt.Fprintf(&b, "| Load average at end | %s |\n", benchutil.LoadAvg())
	fmt.Fprintf(&b, "\nData root: XFS (reflink=1) on a loop device over a sparse image in `%s`.\n", c.imageDir)

	if len(r.data) > 0 {
		fmt.Fprintf(&b, "\n## Data path: Cairn block volume vs. a plain file on the same data root\n\n")
		fmt.Fprintf(&b, "fio direct=1, ioengine=%s, iodepth=%d, numjobs=1, %d GiB target, %s per run after a %s ramp; "+
			"median of %d runs per side, baseline and Cairn runs interleaved (order alternating). "+
			"Ratio = median Cairn IOPS / median baseline IOPS (equal to the MiB/s ratio for a fixed block size); "+
			"per-run ratios pair each Cairn run with the baseline run next to it. Target ≥ %.2f.\n\n",
			c.ioengine, c.iodepth, c.sizeGiB, c.runtime, c.ramp, c.repeat, dataRatioTarget)
		fmt.Fprintf(&b, "| Workload | Baseline IOPS | Baseline MiB/s | Cairn IOPS | Cairn MiB/s | Cairn/baseline | Per-run ratios (median) | ≥ %.2f |\n", dataRatioTarget)
		fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---|---|\n")
		for _, row := range r.data {
			if len(row.Baseline) == 0 || len(row.Cairn) == 0 {
				continue
			}
			bi, bm := medianOf(row.Baseline)
			ci, cm := medianOf(row.Cairn)
			ratio := ci / bi
			var (
				per  []string
				perQ []float64
			)
			for i := range min(len(row.Baseline), len(row.Cairn)) {
				q := row.Cairn[i].IOPS / row.Baseline[i].IOPS
				per = append(per, fmt.Sprintf("%.2f", q))
				perQ = append(perQ, q)
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.1f | %.0f | %.1f | %.3f | %s (%.2f) | %s |\n",
				row.W.Name, bi, bm, ci, cm, ratio, strings.Join(per, ", "), median(perQ), benchutil.YesNo(ratio >= dataRatioTarget))
		}
	}

	if len(r.latency) > 0 {
		fmt.Fprintf(&b, "\n## Snapshot and clone latency\n\n")
		fmt.Fprintf(&b, "Each volume is half filled with 1M sequential direct writes. Latency is the CSI call as the client sees it "+
			"(gRPC round trip included); median (min–max) of %d calls per cell. Both volumes exist together and their calls alternate; "+
			"each snapshot or clone is deleted before the next call, so every call finds the volume's extents unshared. "+
			"Ratio = median %d GiB / median %d GiB. Target: ratio ≤ %.1f and every median < %s.\n\n",
			c.reps, c.largeGiB, c.smallGiB, latencyRatioTarget, latencyLimit)
		fmt.Fprintf(&b, "| Operation | Volume | %d GiB | %d GiB | %d/%d ratio | Meets target |\n", c.smallGiB, c.largeGiB, c.largeGiB, c.smallGiB)
		fmt.Fprintf(&b, "|---|---|---:|---:|---:|---|\n")
		for _, state := range []string{stateBlockPublished, stateBlockDetached, stateFsMounted} {
			for _, op := range []string{"CreateSnapshot", "CreateVolume (clone)"} {
				small := r.latency[latencyKey{op, state, c.smallGiB}]
				large := r.latency[latencyKey{op, state, c.largeGiB}]
				if len(small) == 0 && len(large) == 0 {
					continue
				}
				vol := state
				if state == stateFsMounted {
					vol = strings.Replace(state, "filesystem", c.fsType, 1)
				}
				ratio, meets := "–", "–"
				if len(small) > 0 && len(large) > 0 {
					q := float64(median(large)) / float64(median(small))
					ratio = fmt.Sprintf("%.2f", q)
					meets = benchutil.YesNo(q <= latencyRatioTarget && median(large) < latencyLimit && median(small) < latencyLimit)
				} else if len(small) > 0 {
					meets = benchutil.YesNo(median(small) < latencyLimit) + " (< 100 ms only)"
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", op, vol, spread(small), spread(large), ratio, meets)
			}
		}
	}

	if len(r.cow) > 0 {
		cowMarkdown(&b, c, r.cow)
	}
	if r.scale != nil {
		r.scale.markdown(&b)
	}
	if len(r.notes) > 0 {
		fmt.Fprintf(&b, "\n## Notes\n\n")
		for _, n := range r.notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	fmt.Fprintf(&b, "\n## Clean-up\n\n")
	fmt.Fprintf(&b, "- Loop devices or mounts left after the driver stopped (harness.Leaks): %s\n", benchutil.LeakText(r.leaksAfterDriver))
	fmt.Fprintf(&b, "- Left after the scratch file system was closed: %s\n", benchutil.LeakText(r.leaksAfterScratch))
	return b.String()
}

func medianOf(rs []fioResult) (iops, mibps float64) {
	var is, bs []float64
	for _, r := range rs {
		is = append(is, r.IOPS)
		bs = append(bs, r.MiBps())
	}
	return median(is), median(bs)
}

func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return fmt.Sprintf("%.1f ms (%.1f–%.1f)", ms(median(ds)), ms(slices.Min(ds)), ms(slices.Max(ds)))
}

// write prints the summary and saves it to path.
func (r *results) write(path string) error {
	md := r.markdown()
	fmt.Print("\n" + md)
	if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
		return err
	}
	benchutil.Logf("results written to %s", path)
	return nil
}
