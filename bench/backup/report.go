package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/testsupport/benchutil"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// Targets (ratios against baselines of the same run).
const (
	backupRatioTarget  = 0.8  // backup ÷ min(raw read, hash+compress)
	objectsTarget      = 100  // objects in a target after one full backup
	restoreRatioTarget = 0.8  // restore ÷ raw write
	incRatioTarget     = 0.05 // T_inc ÷ T_full
	encRatioTarget     = 0.85 // encrypted ÷ plain throughput
)

type fullRow struct {
	target                    string
	size                      int64
	rawRead, backup           time.Duration
	stats                     backup.Stats
	objects, packs, diskFiles int
	listBytes, storedBytes    int64
	diskBytes                 int64
	rawWrite, restore         time.Duration
	restoreOK                 bool
	// plain is the unencrypted row of the same target kind, for an
	// encrypted target's row (nil otherwise).
	plain *fullRow
}

type incRow struct {
	size                      int64
	changedMiB, touchedBlocks int
	tFull, tInc               time.Duration
	full, inc                 backup.Stats
	objects                   int
	listBytes                 int64
	check                     string
}

type results struct {
	cfg                config
	info               [][2]string
	started, finished  time.Time
	freeAtStart        int64
	waited             time.Duration
	busyAtStart        []string
	busySeen           map[string]bool
	loadAtEnd          string
	prepare            []float64
	genRate            float64
	full               []*fullRow
	inc                *incRow
	notes              []string
	leaks, leftFiles   []string
	err                error
	restoreConcurrency int
}

func median(xs []float64) float64 {
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

func fmtRates(rs []float64) string {
	var s []string
	for _, r := range rs {
		s = append(s, fmt.Sprintf("%.0f", r))
	}
	return strings.Join(s, ", ")
}

func fmtBytes(n int64) string {
	switch {
	case n >= gib:
		return fmt.Sprintf("%.2f GiB", float64(n)/float64(gib))
	case n >= mib:
		return fmt.Sprintf("%.1f MiB", float64(n)/float64(mib))
	default:
		return fmt.Sprintf("%d B", n)
	}
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.2f s", d.Seconds())
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
		{"GOMAXPROCS", fmt.Sprint(runtime.GOMAXPROCS(0))},
		{"CPU", benchutil.ProcField("/proc/cpuinfo", "model name")},
		{"Memory", benchutil.ProcField("/proc/meminfo", "MemTotal")},
		{"Kernel", kernel},
		{"Go", runtime.Version()},
	}
	if root, err := harness.ModuleRoot(); err == nil {
		if v, err := os.ReadFile(filepath.Join(root, ".tools", "bin", "minio.version")); err == nil {
			info = append(info, [2]string{"MinIO", "built from source, " + strings.TrimSpace(string(v))})
		}
	}
	if out, err := exec.Command("findmnt", "-n", "-f", "-o", "SOURCE,FSTYPE", "-T", work).Output(); err == nil {
		info = append(info, [2]string{"Host file system of _out/bench-backup", strings.Join(strings.Fields(string(out)), " ")})
	}
	if first, second, err := touchRate(256 << 20); err == nil {
		info = append(info, [2]string{"Touching fresh memory (256 MiB mmap, 1 byte per page)",
			fmt.Sprintf("first touch %.0f MiB/s (%.1f µs per 4 KiB page), second touch %.0f MiB/s", first, 4.0/1024/first*1e6, second)})
	}
	info = append(info, [2]string{"Freed guest memory returned to the host", freePageReporting()})
	info = append(info, [2]string{"Load average at start", benchutil.LoadAvg()})
	return info
}

// markdown renders the report.
func (r *results) markdown() string {
	var b strings.Builder
	c := r.cfg
	prep := median(r.prepare)
	fmt.Fprintf(&b, "# Cairn backup benchmark results\n\n")
	fmt.Fprintf(&b, "Command: `%s` (took %s)\n\n", c.commandLine, r.finished.Sub(r.started).Round(time.Second))
	if r.err != nil {
		fmt.Fprintf(&b, "**The run failed:** %v\n\n", r.err)
	}
	fmt.Fprintf(&b, "## Machine\n\n| | |\n|---|---|\n")
	for _, kv := range r.info {
		fmt.Fprintf(&b, "| %s | %s |\n", kv[0], kv[1])
	}
	fmt.Fprintf(&b, "| Load average at end | %s |\n", r.loadAtEnd)
	fmt.Fprintf(&b, "| Free on the host disk at start | %s |\n", fmtBytes(r.freeAtStart))
	switch {
	case len(r.busyAtStart) > 0:
		fmt.Fprintf(&b, "\n**The machine was not quiet:** after waiting %s, other benchmarks were still running: %s.\n",
			r.waited.Round(time.Second), strings.Join(r.busyAtStart, "; "))
	case r.waited > time.Second:
		fmt.Fprintf(&b, "\nWaited %s for other benchmarks to finish before measuring.\n", r.waited.Round(time.Second))
	}
	if len(r.busySeen) > 0 {
		var seen []string
		for p := range r.busySeen {
			seen = append(seen, p)
		}
		slices.Sort(seen)
		fmt.Fprintf(&b, "\n**Other benchmarks ran during the measurements** (seen at the start of a step): %s.\n", strings.Join(seen, "; "))
	} else {
		fmt.Fprintf(&b, "\nNo other benchmark (`go run ./bench…`, fio) was seen running at the start of any step.\n")
	}

	fmt.Fprintf(&b, "\n## Set-up\n\n")
	fmt.Fprintf(&b, "- Data root: XFS (reflink=1) on a loop device (direct I/O) over a sparse image in `_out/bench-backup/`; volumes are files on it "+
		"written with ChaCha8 pseudo-random (incompressible) data in 16 MiB sequential writes + fsync"+
		" (%.0f MiB/s for the %d GiB volume, generation included); every backup reads a reflink snapshot of its volume.\n", r.genRate, c.fullGiB)
	fmt.Fprintf(&b, "- Targets: MinIO (one local server, data in `_out/bench-backup/minio`, reached over HTTP on 127.0.0.1) and a filesystem target "+
		"`_out/bench-backup/fs-target`. Both are on the host file system, outside the XFS image, so on the same disk as the data root.\n")
	fmt.Fprintf(&b, "- Store: block %d MiB, packs of ~64 MiB, BLAKE3 + zstd fastest; backup with GOMAXPROCS=%d read/hash workers and 2 uploaders, "+
		"restore with %d parallel block fetches (`Repo.Concurrency`).\n", bs/mib, runtime.GOMAXPROCS(0), r.restoreConcurrency)
	fmt.Fprintf(&b, "- `sync; echo 3 > /proc/sys/vm/drop_caches` before every timed step. Baselines are measured in this run, right before the step they are compared with.\n")
	fmt.Fprintf(&b, "- Hash+compress baseline: `backup.PrepareBlock` over %d MiB of in-memory random 4 MiB blocks on %d goroutines: "+
		"**%.0f MiB/s** (median of passes: %s MiB/s).\n", c.prepareMiB, runtime.GOMAXPROCS(0), prep, fmtRates(r.prepare))

	if len(r.full) > 0 {
		fmt.Fprintf(&b, "\n## Full backup (%d GiB of random data)\n\n", c.fullGiB)
		fmt.Fprintf(&b, "Throughput = volume size ÷ wall time of `Repo.Backup`. (a) ÷ raw sequential read of the same snapshot file "+
			"(4 MiB buffered reads, one thread); (b) ÷ the hash+compress rate above. Target: ≥ %.1f × the lower of the two.\n\n", backupRatioTarget)
		fmt.Fprintf(&b, "| Target | Backup MiB/s (time) | Raw read MiB/s | (a) ÷ read | (b) ÷ hash+compress | ÷ lower | ≥ %.1f |\n", backupRatioTarget)
		fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---|\n")
		for _, row := range r.full {
			if row.backup == 0 {
				continue
			}
			bk, rd := mibps(row.size, row.backup), mibps(row.size, row.rawRead)
			low := min(rd, prep)
			fmt.Fprintf(&b, "| %s | %.0f (%s) | %.0f | %.2f | %.2f | %.2f | %s |\n",
				row.target, bk, fmtDur(row.backup), rd, bk/rd, bk/prep, bk/low, benchutil.YesNo(bk/low >= backupRatioTarget))
		}

		fmt.Fprintf(&b, "\n### Objects in each target after the backup\n\n")
		fmt.Fprintf(&b, "`objstore.Store.List(\"\")` over the whole target: configuration, packs, manifest (the lock is gone). Target ≤ %d (Longhorn writes about 2,000 for 4 GiB).\n\n", objectsTarget)
		fmt.Fprintf(&b, "| Target | Objects | of which packs | Listed bytes | Manifest's stored bytes | Uploaded (stats) | Host disk used | ≤ %d |\n", objectsTarget)
		fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---:|---|\n")
		for _, row := range r.full {
			if row.backup == 0 {
				continue
			}
			fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | %s | %s in %d files | %s |\n",
				row.target, row.objects, row.packs, fmtBytes(row.listBytes), fmtBytes(row.storedBytes), fmtBytes(row.stats.BytesUploaded),
				fmtBytes(row.diskBytes), row.diskFiles, benchutil.YesNo(row.objects <= objectsTarget))
		}

		fmt.Fprintf(&b, "\n## Restore (%d GiB)\n\n", c.fullGiB)
		fmt.Fprintf(&b, "`Repo.Restore` into a new empty file on the data root (it fsyncs), ÷ the raw sequential write rate of the data root "+
			"(a new %d GiB file, 4 MiB writes + fsync) measured right before. The restored file's SHA-256 is compared with the snapshot's. Target ≥ %.1f.\n\n",
			c.fullGiB, restoreRatioTarget)
		fmt.Fprintf(&b, "| From | Restore MiB/s (time) | Raw write MiB/s | Restore ÷ write | ≥ %.1f | Byte-identical |\n", restoreRatioTarget)
		fmt.Fprintf(&b, "|---|---:|---:|---:|---|---|\n")
		for _, row := range r.full {
			if row.restore == 0 {
				continue
			}
			rs, wr := mibps(row.size, row.restore), mibps(row.size, row.rawWrite)
			fmt.Fprintf(&b, "| %s | %.0f (%s) | %.0f | %.2f | %s | %s |\n", row.target, rs, fmtDur(row.restore), wr, rs/wr,
				benchutil.YesNo(rs/wr >= restoreRatioTarget), benchutil.YesNo(row.restoreOK))
		}
	}

	if len(r.full) > 0 {
		fmt.Fprintf(&b, "\n## Encryption cost\n\n")
		fmt.Fprintf(&b, "The same snapshot backed up to, and restored from, a target of the same kind opened with a master key "+
			"(AES-256-GCM blobs and manifests, keyed BLAKE3 identities; docs/FORMAT.md), in the same run. Target: encrypted ≥ %.2f × plain.\n\n", encRatioTarget)
		fmt.Fprintf(&b, "| Target | Backup MiB/s plain → encrypted | ratio | Restore MiB/s plain → encrypted | ratio | ≥ %.2f |\n", encRatioTarget)
		fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---|\n")
		for _, row := range r.full {
			p := row.plain
			if p == nil || row.backup == 0 || row.restore == 0 || p.backup == 0 || p.restore == 0 {
				continue
			}
			bq, rq := p.backup.Seconds()/row.backup.Seconds(), p.restore.Seconds()/row.restore.Seconds()
			fmt.Fprintf(&b, "| %s | %.0f → %.0f | %.2f | %.0f → %.0f | %.2f | %s |\n", p.target,
				mibps(p.size, p.backup), mibps(row.size, row.backup), bq, mibps(p.size, p.restore), mibps(row.size, row.restore), rq,
				benchutil.YesNo(bq >= encRatioTarget && rq >= encRatioTarget))
		}
	}

	if in := r.inc; in != nil && in.tInc > 0 {
		nblocks := (in.size + bs - 1) / bs
		fmt.Fprintf(&b, "\n## Incremental backup (%d GiB volume, filesystem target)\n\n", in.size/gib)
		fmt.Fprintf(&b, "Snapshot s1 (reflink), full backup (T_full); then %d distinct random 1 MiB-aligned 1 MiB writes spread over the volume "+
			"(%.2f%%) + fsync, snapshot s2, incremental backup with `Source{Path: s2, ParentPath: s1, Parent: manifest1}` (T_inc). "+
			"Target T_inc/T_full ≤ %.2f.\n\n", in.changedMiB, 100*float64(in.changedMiB)*float64(mib)/float64(in.size), incRatioTarget)
		fmt.Fprintf(&b, "| T_full (MiB/s) | T_inc | T_inc / T_full | ≤ %.2f | 4 MiB blocks touched | Bytes read | Blocks new / reused / deduped / skipped | Uploaded | Manifest check |\n", incRatioTarget)
		fmt.Fprintf(&b, "|---:|---:|---:|---|---:|---:|---|---:|---|\n")
		q := in.tInc.Seconds() / in.tFull.Seconds()
		fmt.Fprintf(&b, "| %s (%.0f) | %s | %.3f | %s | %d of %d (%.2f%%) | %s | %d / %d / %d / %d | %s | %s |\n",
			fmtDur(in.tFull), mibps(in.size, in.tFull), fmtDur(in.tInc), q, benchutil.YesNo(q <= incRatioTarget),
			in.touchedBlocks, nblocks, 100*float64(in.touchedBlocks)/float64(nblocks),
			fmtBytes(in.inc.BytesRead), in.inc.BlocksNew, in.inc.BlocksReused, in.inc.BlocksDeduped, in.inc.BlocksSkipped,
			fmtBytes(in.inc.BytesUploaded), in.check)
		fmt.Fprintf(&b, "\nThe full backup read %s and uploaded %s in %d packs; after both backups the target holds %d objects (%s).\n",
			fmtBytes(in.full.BytesRead), fmtBytes(in.full.BytesUploaded), in.full.PacksUploaded, in.objects, fmtBytes(in.listBytes))
		fmt.Fprintf(&b, "\nA block (4 MiB) is the unit of change detection and upload, so %d scattered 1 MiB writes dirty up to %d blocks: "+
			"here %d (%s, %.2f%% of the volume) were read, hashed and uploaded for %.2f%% written. "+
			"T_inc/T_full therefore tracks %.2f%% rather than %.2f%%; it also depends on each backup's per-byte rate "+
			"(full: %.0f MiB/s; incremental: %.0f MiB/s of blocks read) and on fixed costs (FIEMAP of both snapshots, loading the store's manifests, writing the manifest).\n",
			in.changedMiB, in.changedMiB, in.touchedBlocks, fmtBytes(int64(in.touchedBlocks)*bs),
			100*float64(in.touchedBlocks)/float64(nblocks), 100*float64(in.changedMiB)*float64(mib)/float64(in.size),
			100*float64(in.touchedBlocks)/float64(nblocks), 100*float64(in.changedMiB)*float64(mib)/float64(in.size),
			mibps(in.size, in.tFull), mibps(in.inc.BytesRead, in.tInc))
		if c.incGiB != 16 {
			fmt.Fprintf(&b, "\n**The incremental volume was shrunk to %d GiB with `-incremental-gib` (default 16).**\n", c.incGiB)
		}
	}

	if len(r.notes) > 0 {
		fmt.Fprintf(&b, "\n## Notes\n\n")
		for _, n := range r.notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	fmt.Fprintf(&b, "\n## Clean-up\n\n")
	fmt.Fprintf(&b, "- MinIO stopped; scratch file system unmounted, its loop device detached and image removed; targets removed.\n")
	fmt.Fprintf(&b, "- Loop devices or mounts left (harness.Leaks on the data root and on `_out/bench-backup`): %s\n", benchutil.LeakText(r.leaks))
	fmt.Fprintf(&b, "- Left in `_out/bench-backup` besides results.md: %s\n", benchutil.LeakText(r.leftFiles))
	return b.String()
}

// write prints the report and saves it to path.
func (r *results) write(path string) error {
	md := r.markdown()
	fmt.Print("\n" + md)
	if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
		return err
	}
	benchutil.Logf("results written to %s", path)
	return nil
}
