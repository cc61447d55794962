// Command backup measures Cairn's backup store (internal/backup) in one
// run, each result as a ratio against a baseline measured in the same run:
//
//   - full backup of a volume of random data (a reflink snapshot of it) to
//     MinIO (s3://) and to a filesystem target (file://), against the raw
//     sequential read rate of the same file and the in-memory hash+compress
//     rate (backup.PrepareBlock on GOMAXPROCS workers);
//   - the number of objects and bytes each target holds afterwards;
//   - restore from each target into a new file on the data root, against
//     the raw sequential write rate of the data root, checked byte for byte;
//   - an incremental backup after 1% of a larger volume changed, against
//     the full backup of it.
//
// Volumes live on a loop-backed XFS (reflink) data root over a sparse image
// under _out/bench-backup; MinIO keeps its data and the filesystem target
// its objects under _out/bench-backup on the host file system (outside the
// image). The page cache is dropped before every timed step. The program
// prints a markdown report, writes it to _out/bench-backup/results.md and
// removes everything else it made. See docs/BENCHMARKS.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
	"github.com/cairn-csi/cairn/internal/testsupport/benchutil"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
	bs  = int64(backup.DefaultBlockSize)
)

type config struct {
	fullGiB     int64
	incGiB      int64
	changePct   float64
	prepareMiB  int64
	prepareReps int
	waitQuiet   time.Duration
	seed        uint64
	out         string
	commandLine string
}

func main() {
	var c config
	flag.Int64Var(&c.fullGiB, "full-gib", 4, "size of the volume of the full backup and restore measurements, GiB")
	flag.Int64Var(&c.incGiB, "incremental-gib", 16, "size of the volume of the incremental measurement, GiB (it needs about twice this on the host disk: lower it if space is short)")
	flag.Float64Var(&c.changePct, "change-percent", 1, "incremental: percentage of the volume rewritten (in 1 MiB writes) between the two backups")
	flag.Int64Var(&c.prepareMiB, "prepare-mib", 512, "in-memory random data for the hash+compress baseline, MiB")
	flag.IntVar(&c.prepareReps, "prepare-reps", 3, "hash+compress baseline: passes over the data (median reported)")
	flag.DurationVar(&c.waitQuiet, "wait-quiet", 20*time.Minute, "wait up to this long for other benchmarks (go run ./bench…, fio) to finish before measuring")
	flag.Uint64Var(&c.seed, "seed", 1, "seed of the pseudo-random volume data and of the changed offsets")
	flag.StringVar(&c.out, "out", "", "work directory (default <module root>/_out/bench-backup)")
	flag.Parse()
	c.commandLine = strings.Join(append([]string{"go run ./bench/backup"}, os.Args[1:]...), " ")
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "bench/backup failed:", err)
		os.Exit(1)
	}
}

// target is one backup target.
type target struct {
	key   string // short name used in file and backup names
	name  string // for the report
	dir   string // where its bytes live on the host, for disk usage
	store objstore.Store
	repo  *backup.Repo
}

type bench struct {
	c        config
	ctx      context.Context
	work     string
	fs       *scratchfs.FS
	minio    *harness.MinIO
	fsTarget string
	res      *results
}

// phase logs the start of a step and notes any other benchmark running.
func (b *bench) phase(format string, args ...any) {
	benchutil.Logf(format, args...)
	for _, p := range otherBenchmarks() {
		b.res.busySeen[p] = true
	}
}

func run(c config) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the benchmark needs root: it mounts a loop-backed XFS and drops the page cache")
	}
	if c.fullGiB < 1 || c.incGiB < 1 || c.prepareMiB < 4 || c.prepareReps < 1 || c.changePct <= 0 || c.changePct > 100 {
		return errors.New("bad flags: -full-gib, -incremental-gib, -prepare-reps must be >= 1, -prepare-mib >= 4, 0 < -change-percent <= 100")
	}
	work, err := benchutil.WorkDir(c.out, "bench-backup")
	if err != nil {
		return err
	}
	c.out = work
	for _, p := range []string{"data-root", "data-root.img", "minio", "fs-target", "fs-target-enc"} {
		if err := os.RemoveAll(filepath.Join(work, p)); err != nil {
			return err
		}
	}

	// Host disk: the sparse image holds at most the full volume, one
	// baseline or restored copy of it, then the incremental volume and its
	// changes; the targets hold one backup each (random data does not
	// compress). Deleted files are trimmed out of the image.
	needFull := 4*c.fullGiB*gib + 2*gib
	needInc := 2*c.incGiB*gib + c.incGiB*gib/20 + 2*gib
	free, err := benchutil.FreeBytes(work)
	if err != nil {
		return err
	}
	if free < max(needFull, needInc) {
		return fmt.Errorf("%s has %.1f GiB free; the benchmark needs about %.1f GiB (full phase) and %.1f GiB (incremental phase): lower -incremental-gib (now %d) or -full-gib (now %d)",
			work, float64(free)/float64(gib), float64(needFull)/float64(gib), float64(needInc)/float64(gib), c.incGiB, c.fullGiB)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	res := &results{cfg: c, busySeen: map[string]bool{}, freeAtStart: free}
	waited, busy := waitQuiet(ctx, c.waitQuiet)
	res.waited, res.busyAtStart = waited, busy
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(busy) > 0 {
		benchutil.Logf("other benchmarks still running after %s, measuring anyway: %s", waited.Round(time.Second), strings.Join(busy, "; "))
	}
	res.started = time.Now()
	res.info = machineInfo(work)

	imageSize := 3*c.fullGiB*gib + 2*c.incGiB*gib + 16*gib
	image := filepath.Join(work, "data-root.img")
	benchutil.Logf("creating XFS data root (sparse %d GiB image %s)", imageSize/gib, image)
	sfs, err := scratchfs.Create(image, filepath.Join(work, "data-root"), "xfs", imageSize)
	if err != nil {
		return err
	}
	b := &bench{c: c, ctx: ctx, work: work, fs: sfs, fsTarget: filepath.Join(work, "fs-target"), res: res}
	defer func() {
		if b.minio != nil {
			b.minio.Stop()
		}
		var leaks []string
		l1, lerr := harness.Leaks(sfs.Mount) // loop devices over files on the data root
		leaks = append(leaks, l1...)
		if cerr := sfs.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close scratch fs: %w", cerr))
		}
		l2, lerr2 := harness.Leaks(work, work) // the image's loop device, mounts under work
		leaks = append(leaks, l2...)
		if lerr = errors.Join(lerr, lerr2); lerr != nil {
			err = errors.Join(err, lerr)
		}
		if len(leaks) == 0 {
			// Nothing is mounted under work any more: safe to delete.
			os.Remove(sfs.Mount)
			for _, p := range []string{"minio", "fs-target", "fs-target-enc"} {
				if rerr := os.RemoveAll(filepath.Join(work, p)); rerr != nil {
					err = errors.Join(err, rerr)
				}
			}
		}
		res.leaks = leaks
		if ents, rerr := os.ReadDir(work); rerr == nil {
			for _, e := range ents {
				if e.Name() != "results.md" {
					res.leftFiles = append(res.leftFiles, e.Name())
				}
			}
		}
		res.loadAtEnd = benchutil.LoadAvg()
		res.finished = time.Now()
		res.err = err
		if werr := res.write(filepath.Join(work, "results.md")); werr != nil {
			err = errors.Join(err, werr)
		}
		if len(leaks) > 0 {
			err = errors.Join(err, fmt.Errorf("leaked after clean-up: %s", strings.Join(leaks, "; ")))
		}
	}()
	if ok, perr := fsops.ProbeReflink(sfs.Mount); perr != nil || !ok {
		return fmt.Errorf("data root %s does not reflink (%v)", sfs.Mount, perr)
	}

	b.phase("hash+compress baseline: backup.PrepareBlock over %d MiB of random 4 MiB blocks, %d workers, %d passes",
		c.prepareMiB, runtime.GOMAXPROCS(0), c.prepareReps)
	res.prepare = prepareRates(c.prepareMiB*mib, c.prepareReps, c.seed)
	benchutil.Logf("  %.0f MiB/s (passes: %s)", median(res.prepare), fmtRates(res.prepare))
	runtime.GC()

	if err := b.fullPhase(); err != nil {
		return err
	}
	if err := b.incrementalPhase(); err != nil {
		return err
	}
	return nil
}

// openTarget opens a backup store.
// masterKey, if set, makes it an encrypted store.
func (b *bench) openTarget(key, name, url, dir string, creds objstore.Credentials, masterKey []byte) (*target, error) {
	st, err := objstore.Open(b.ctx, url, creds)
	if err != nil {
		return nil, err
	}
	r, err := backup.OpenKeyed(b.ctx, st, masterKey)
	if err != nil {
		return nil, err
	}
	return &target{key: key, name: name, dir: dir, store: st, repo: r}, nil
}

// fullPhase: full backups of a fullGiB volume to MinIO and the filesystem
// target, object counts, restores.
func (b *bench) fullPhase() error {
	c, res, root := b.c, b.res, b.fs.Mount
	size := c.fullGiB * gib

	b.phase("starting MinIO (data under %s)", filepath.Join(b.work, "minio"))
	mi, err := harness.StartMinIO(filepath.Join(b.work, "minio"))
	if err != nil {
		return err
	}
	b.minio = mi
	if err := os.MkdirAll(b.fsTarget, 0o755); err != nil {
		return err
	}
	minioCreds := objstore.Credentials{AccessKey: harness.MinIOAccessKey, SecretKey: harness.MinIOSecretKey}
	s3t, err := b.openTarget("minio", "MinIO (s3://)", mi.URL("bench-backup"), filepath.Join(b.work, "minio", "data", harness.MinIOBucket, "bench-backup"), minioCreds, nil)
	if err != nil {
		return err
	}
	fst, err := b.openTarget("fs", "filesystem (file://)", "file://"+b.fsTarget, b.fsTarget, objstore.Credentials{}, nil)
	if err != nil {
		return err
	}
	// The same two kinds of target, encrypted (a fixed test key).
	masterKey := make([]byte, backup.MasterKeySize)
	fillRandom(masterKey, c.seed, 11)
	s3e, err := b.openTarget("minio-enc", "MinIO (s3://), encrypted", mi.URL("bench-backup-enc"), filepath.Join(b.work, "minio", "data", harness.MinIOBucket, "bench-backup-enc"), minioCreds, masterKey)
	if err != nil {
		return err
	}
	fsEncDir := b.fsTarget + "-enc"
	if err := os.MkdirAll(fsEncDir, 0o755); err != nil {
		return err
	}
	fse, err := b.openTarget("fs-enc", "filesystem (file://), encrypted", "file://"+fsEncDir, fsEncDir, objstore.Credentials{}, masterKey)
	if err != nil {
		return err
	}
	targets := []*target{s3t, fst, s3e, fse}
	plainOf := map[string]string{"minio-enc": "minio", "fs-enc": "fs"}
	res.restoreConcurrency = fst.repo.Concurrency

	vol := filepath.Join(root, "vol-full.img")
	snap := filepath.Join(root, "vol-full-snap.img")
	b.phase("writing a %d GiB volume of random data: %s", c.fullGiB, vol)
	d, err := writeRandom(b.ctx, vol, size, c.seed, 1)
	if err != nil {
		return err
	}
	res.genRate = mibps(size, d)
	benchutil.Logf("  %.0f MiB/s (generate + write + fsync)", res.genRate)
	if err := fsops.Reflink(vol, snap); err != nil {
		return err
	}
	benchutil.Logf("hashing the snapshot (SHA-256, for the restore check)")
	srcHash, err := hashFile(snap)
	if err != nil {
		return err
	}

	manifests := map[string]*backup.Manifest{}
	rows := map[string]*fullRow{}
	for _, t := range targets {
		row := &fullRow{target: t.name, size: size, plain: rows[plainOf[t.key]]}
		rows[t.key] = row
		res.full = append(res.full, row)

		b.phase("[%s] raw sequential read of the snapshot (4 MiB buffered reads, page cache dropped)", t.name)
		if err := dropCaches(); err != nil {
			return err
		}
		n, d, err := rawRead(b.ctx, snap)
		if err != nil {
			return err
		}
		if n != size {
			return fmt.Errorf("read %d bytes of %s, want %d", n, snap, size)
		}
		row.rawRead = d
		benchutil.Logf("  %.0f MiB/s", mibps(size, d))

		b.phase("[%s] full backup of the %d GiB snapshot (page cache dropped)", t.name, c.fullGiB)
		if err := dropCaches(); err != nil {
			return err
		}
		meta := backup.Meta{BackupID: model.BackupIDForName("bench-full"), VolumeID: "bench-full", VolumeName: "bench-full", SnapshotName: "bench-full"}
		start := time.Now()
		m, err := t.repo.Backup(b.ctx, backup.Source{Path: snap}, meta, nil)
		if err != nil {
			return fmt.Errorf("backup to %s: %w", t.name, err)
		}
		row.backup = time.Since(start)
		row.stats = m.Stats
		row.storedBytes = m.StoredBytes()
		manifests[t.key] = m
		benchutil.Logf("  %.0f MiB/s (%s)", mibps(size, row.backup), row.backup.Round(time.Millisecond))

		row.objects, row.packs, row.listBytes, err = countObjects(b.ctx, t.store)
		if err != nil {
			return err
		}
		row.diskFiles, row.diskBytes = diskUsage(t.dir)
		benchutil.Logf("  %d objects (%d packs), %.1f MiB listed, %.1f MiB on disk in %d files",
			row.objects, row.packs, float64(row.listBytes)/float64(mib), float64(row.diskBytes)/float64(mib), row.diskFiles)
	}

	// Restores. Source data for the raw write baseline: 64 MiB of random
	// bytes, cycled (content does not matter to XFS, which does not
	// compress).
	wsrc := make([]byte, 64*mib)
	fillRandom(wsrc, c.seed, 7)
	for i, t := range targets {
		row := res.full[i]
		b.phase("[%s] raw sequential write baseline: %d GiB, 4 MiB writes + fsync (page cache dropped)", t.name, c.fullGiB)
		raw := filepath.Join(root, "raw-write.img")
		if err := dropCaches(); err != nil {
			return err
		}
		d, err := rawWrite(b.ctx, raw, size, wsrc)
		if err != nil {
			return err
		}
		row.rawWrite = d
		benchutil.Logf("  %.0f MiB/s", mibps(size, d))
		if err := os.Remove(raw); err != nil {
			return err
		}
		trim(root)

		b.phase("[%s] restore into a new empty file on the data root (page cache dropped)", t.name)
		out := filepath.Join(root, "restored-"+t.key+".img")
		f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		f.Close()
		if err := dropCaches(); err != nil {
			return err
		}
		start := time.Now()
		if err := t.repo.Restore(b.ctx, manifests[t.key], out, nil); err != nil {
			return fmt.Errorf("restore from %s: %w", t.name, err)
		}
		row.restore = time.Since(start)
		benchutil.Logf("  %.0f MiB/s (%s)", mibps(size, row.restore), row.restore.Round(time.Millisecond))
		got, err := hashFile(out)
		if err != nil {
			return err
		}
		row.restoreOK = got == srcHash
		if !row.restoreOK {
			res.notes = append(res.notes, fmt.Sprintf("**Restore from %s is NOT byte-identical to the snapshot** (SHA-256 %s, want %s).", t.name, got, srcHash))
		}
		benchutil.Logf("  restored content identical: %v", row.restoreOK)
		if err := os.Remove(out); err != nil {
			return err
		}
		trim(root)
	}

	// Free the space for the incremental phase.
	b.phase("removing the %d GiB volume, MinIO and the filesystem target", c.fullGiB)
	b.minio.Stop()
	b.minio = nil
	for _, p := range []string{vol, snap} {
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	trim(root)
	for _, p := range []string{filepath.Join(b.work, "minio"), b.fsTarget, fsEncDir} {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

// countObjects lists the whole store.
func countObjects(ctx context.Context, st objstore.Store) (objects, packs int, bytes int64, err error) {
	err = st.List(ctx, "", func(i objstore.Info) error {
		objects++
		bytes += i.Size
		if strings.HasPrefix(i.Key, "packs/") {
			packs++
		}
		return nil
	})
	return objects, packs, bytes, err
}

// incrementalPhase: full backup of an incGiB volume, then an incremental
// one after changePct of it was rewritten in scattered 1 MiB writes.
func (b *bench) incrementalPhase() error {
	c, res, root := b.c, b.res, b.fs.Mount
	size := c.incGiB * gib
	row := &incRow{size: size}
	res.inc = row
	if err := os.MkdirAll(b.fsTarget, 0o755); err != nil {
		return err
	}
	t, err := b.openTarget("fs", "filesystem (file://)", "file://"+b.fsTarget, b.fsTarget, objstore.Credentials{}, nil)
	if err != nil {
		return err
	}
	vol := filepath.Join(root, "vol-inc.img")
	s1 := filepath.Join(root, "vol-inc-s1.img")
	s2 := filepath.Join(root, "vol-inc-s2.img")
	b.phase("writing a %d GiB volume of random data: %s", c.incGiB, vol)
	d, err := writeRandom(b.ctx, vol, size, c.seed, 2)
	if err != nil {
		return err
	}
	benchutil.Logf("  %.0f MiB/s (generate + write + fsync)", mibps(size, d))
	if err := fsops.Reflink(vol, s1); err != nil {
		return err
	}

	b.phase("[incremental] full backup of snapshot s1 (%d GiB, page cache dropped)", c.incGiB)
	if err := dropCaches(); err != nil {
		return err
	}
	meta1 := backup.Meta{BackupID: model.BackupIDForName("bench-inc-s1"), VolumeID: "bench-inc", VolumeName: "bench-inc", SnapshotName: "bench-inc-s1"}
	start := time.Now()
	m1, err := t.repo.Backup(b.ctx, backup.Source{Path: s1}, meta1, nil)
	if err != nil {
		return err
	}
	row.tFull = time.Since(start)
	row.full = m1.Stats
	benchutil.Logf("  %s (%.0f MiB/s)", row.tFull.Round(time.Millisecond), mibps(size, row.tFull))

	// Change changePct of the volume: distinct random 1 MiB-aligned 1 MiB
	// writes spread over the whole volume.
	nMiB := size / mib
	nChange := int(math.Ceil(float64(nMiB) * c.changePct / 100))
	rng := rand.New(rand.NewPCG(c.seed, 3))
	perm := rng.Perm(int(nMiB))[:nChange]
	slices.Sort(perm)
	row.changedMiB = nChange
	touched := map[int64]bool{}
	b.phase("[incremental] rewriting %d random 1 MiB pieces (%.2f%% of the volume), fsync", nChange, 100*float64(nChange)/float64(nMiB))
	f, err := os.OpenFile(vol, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, mib)
	for _, i := range perm {
		_, _ = chacha(c.seed, 4, uint64(i)).Read(buf)
		if _, err := f.WriteAt(buf, int64(i)*mib); err != nil {
			f.Close()
			return err
		}
		touched[int64(i)*mib/bs] = true
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	f.Close()
	row.touchedBlocks = len(touched)
	if err := fsops.Reflink(vol, s2); err != nil {
		return err
	}

	b.phase("[incremental] incremental backup of s2 against s1 (page cache dropped)")
	if err := dropCaches(); err != nil {
		return err
	}
	meta2 := backup.Meta{BackupID: model.BackupIDForName("bench-inc-s2"), VolumeID: "bench-inc", VolumeName: "bench-inc", SnapshotName: "bench-inc-s2"}
	start = time.Now()
	m2, err := t.repo.Backup(b.ctx, backup.Source{Path: s2, ParentPath: s1, Parent: m1}, meta2, nil)
	if err != nil {
		return err
	}
	row.tInc = time.Since(start)
	row.inc = m2.Stats
	benchutil.Logf("  %s; read %.0f MiB, %d blocks new, %d reused, %d deduplicated",
		row.tInc.Round(time.Millisecond), float64(m2.Stats.BytesRead)/float64(mib), m2.Stats.BlocksNew, m2.Stats.BlocksReused, m2.Stats.BlocksDeduped)
	if row.objects, _, row.listBytes, err = countObjects(b.ctx, t.store); err != nil {
		return err
	}

	benchutil.Logf("checking the incremental manifest against s2 and the parent")
	row.check = "ok"
	if err := checkIncremental(m1, m2, s2, touched); err != nil {
		row.check = err.Error()
		res.notes = append(res.notes, "**Incremental manifest check failed**: "+err.Error())
	}
	benchutil.Logf("  %s", row.check)

	b.phase("removing the incremental volume, its snapshots and the target")
	for _, p := range []string{vol, s1, s2} {
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	trim(root)
	return os.RemoveAll(b.fsTarget)
}

// checkIncremental checks that m2 describes s2: every changed block has a
// new entry with the hash of s2's content, every other block the parent's
// entry.
func checkIncremental(m1, m2 *backup.Manifest, s2 string, touched map[int64]bool) error {
	if m2.Parent != m1.ID {
		return fmt.Errorf("manifest parent %q, want %q", m2.Parent, m1.ID)
	}
	h1, h2 := map[int64]string{}, map[int64]string{}
	for _, e := range m1.Blocks {
		h1[e.Offset] = e.Hash
	}
	for _, e := range m2.Blocks {
		h2[e.Offset] = e.Hash
	}
	nblocks := (m2.SizeBytes + bs - 1) / bs
	if int64(len(h2)) != nblocks || int64(len(h1)) != nblocks {
		return fmt.Errorf("manifests store %d and %d blocks, want %d (random data: no block is zero)", len(h1), len(h2), nblocks)
	}
	f, err := os.Open(s2)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, bs)
	var bad []string
	for n := range nblocks {
		off := n * bs
		if !touched[n] {
			if h2[off] != h1[off] {
				bad = append(bad, fmt.Sprintf("unchanged block at %d has a new hash", off))
			}
			continue
		}
		l := min(bs, m2.SizeBytes-off)
		if _, err := f.ReadAt(buf[:l], off); err != nil {
			return err
		}
		h, _, _ := backup.PrepareBlock(buf[:l])
		switch {
		case h2[off] == h1[off]:
			bad = append(bad, fmt.Sprintf("changed block at %d kept the parent's entry", off))
		case h2[off] != h:
			bad = append(bad, fmt.Sprintf("changed block at %d: manifest hash %.16s…, content %.16s…", off, h2[off], h))
		}
	}
	if len(bad) > 0 {
		if len(bad) > 5 {
			bad = append(bad[:5], fmt.Sprintf("and %d more", len(bad)-5))
		}
		return errors.New(strings.Join(bad, "; "))
	}
	return nil
}
