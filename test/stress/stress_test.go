// Package stress runs the backup store's lock protocol under load for a
// bounded time against a filesystem target and a real MinIO: backup
// workers (full and incremental backups of small sparse volumes with
// random writes between them), deletes of random committed backups, GC
// loops with minimum age 0, and backups in child processes killed with
// SIGKILL at random moments and then resumed. At the end every committed,
// not deleted backup must restore byte-identical to the content it was
// started from.
//
// STRESS_TIME (a Go duration, default 60s) is the time per target:
// `make stress` runs it verbose, `STRESS_TIME=10m make stress` for long
// runs.
package stress

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

const (
	blockSize = 64 << 10
	volSize   = 4 << 20
	heartbeat = 200 * time.Millisecond
	lockLive  = 4 * time.Second
	workers   = 3
)

// job is what a child process backs up (CAIRN_STRESS_JOB).
type job struct {
	URL          string
	Src          string
	ParentPath   string
	ParentVolume string
	ParentID     string
	Meta         backup.Meta
}

// TestHelperBackupProcess is the child: it runs one backup and exits. It
// does nothing unless started by the stress test.
func TestHelperBackupProcess(t *testing.T) {
	raw := os.Getenv("CAIRN_STRESS_JOB")
	if raw == "" {
		return
	}
	var j job
	if err := json.Unmarshal([]byte(raw), &j); err != nil {
		t.Fatal(err)
	}
	backup.SetLockTimingForTests(heartbeat, lockLive)
	ctx := context.Background()
	st, err := objstore.Open(ctx, j.URL, objstore.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	// Small random delays, so that the kill lands in the middle of the
	// protocol rather than before or after it.
	r, err := backup.Open(ctx, &delayStore{Store: st, max: 4 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	src := backup.Source{Path: j.Src}
	if j.ParentID != "" {
		if p, err := r.Manifest(ctx, j.ParentVolume, j.ParentID); err == nil {
			src.Parent, src.ParentPath = p, j.ParentPath
		}
	}
	if _, err := r.Backup(ctx, src, j.Meta, nil); err != nil {
		t.Fatal(err)
	}
}

// delayStore sleeps up to max before each request.
type delayStore struct {
	objstore.Store
	max time.Duration
}

func (d *delayStore) pause() { time.Sleep(time.Duration(mrand.Int63n(int64(d.max)))) }
func (d *delayStore) Put(ctx context.Context, k string, r io.Reader, n int64) error {
	d.pause()
	return d.Store.Put(ctx, k, r, n)
}
func (d *delayStore) Get(ctx context.Context, k string) (io.ReadCloser, error) {
	d.pause()
	return d.Store.Get(ctx, k)
}
func (d *delayStore) Stat(ctx context.Context, k string) (objstore.Info, error) {
	d.pause()
	return d.Store.Stat(ctx, k)
}
func (d *delayStore) List(ctx context.Context, p string, fn func(objstore.Info) error) error {
	d.pause()
	return d.Store.List(ctx, p, fn)
}
func (d *delayStore) Delete(ctx context.Context, k string) error {
	d.pause()
	return d.Store.Delete(ctx, k)
}

func stressTime(t *testing.T) time.Duration {
	s := os.Getenv("STRESS_TIME")
	if s == "" {
		return 60 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("STRESS_TIME=%q is not a positive Go duration", s)
	}
	return d
}

// TestStress runs the stress against both targets at once.
func TestStress(t *testing.T) {
	if os.Getenv("CAIRN_STRESS_JOB") != "" {
		return
	}
	d := stressTime(t)
	t.Cleanup(backup.SetLockTimingForTests(heartbeat, lockLive))
	t.Run("file", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		run(t, "file://"+dir, objstore.Credentials{}, nil, d)
	})
	t.Run("minio", func(t *testing.T) {
		t.Parallel()
		root, err := harness.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		if err := exec.Command("bash", filepath.Join(root, "hack", "minio.sh"), "--check").Run(); err != nil {
			t.Skip("MinIO is not built into .tools/bin (hack/minio.sh --check failed): run `make tools` first")
		}
		m, err := harness.StartMinIO(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Stop)
		creds := objstore.Credentials{AccessKey: harness.MinIOAccessKey, SecretKey: harness.MinIOSecretKey}
		run(t, m.URL("stress"), creds, m.Env(), d)
	})
}

type counts struct {
	started, committed, deleted, gcs, gcBusy, gcDeletedPacks, kills, childDone, resumed, midRestores, finalRestores, retries atomic.Int64
}

type rec struct {
	vol, id string
	sum     [32]byte
}

func run(t *testing.T, url string, creds objstore.Credentials, childEnv []string, d time.Duration) {
	ctx := context.Background()
	st, err := objstore.Open(ctx, url, creds)
	if err != nil {
		t.Fatal(err)
	}
	// A small block size, so that a few MiB are many blocks.
	cfg := fmt.Sprintf(`{"formatVersion":1,"blockSize":%d,"hash":"blake3-256","compression":"zstd","createdAt":%q}`, blockSize, time.Now().UTC().Format(time.RFC3339))
	if err := st.Put(ctx, "cairn-backup.json", strings.NewReader(cfg), int64(len(cfg))); err != nil {
		t.Fatal(err)
	}
	openRepo := func() *backup.Repo {
		r, err := backup.Open(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		if r.BlockSize() != blockSize {
			t.Fatalf("block size %d", r.BlockSize())
		}
		return r
	}
	base := openRepo()
	dir := t.TempDir()
	var (
		c         counts
		mu        sync.Mutex
		expected  = map[string][32]byte{} // backup ID → SHA-256 of its source
		committed = map[string]rec{}      // committed, not deleted
		pinned    = map[string]int{}      // being restored mid-run: not deleted
		problems  []string
		seq       atomic.Int64
		hist      = map[string][]string{} // backup ID → what happened to it, for reports
	)
	note := func(id, format string, args ...any) {
		mu.Lock()
		hist[id] = append(hist[id], time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	history := func(id string) string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(hist[id], "; ")
	}
	problem := func(format string, args ...any) {
		mu.Lock()
		problems = append(problems, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	deadline := time.Now().Add(d)
	running := func() bool { return time.Now().Before(deadline) }

	restoreSum := func(r *backup.Repo, vol, id string) ([32]byte, error) {
		m, err := r.Manifest(ctx, vol, id)
		if err != nil {
			return [32]byte{}, err
		}
		out := filepath.Join(dir, "restore-"+strconv.FormatInt(seq.Add(1), 10))
		defer os.Remove(out)
		if err := os.WriteFile(out, nil, 0o600); err != nil {
			return [32]byte{}, err
		}
		if err := r.Restore(ctx, m, out, nil); err != nil {
			return [32]byte{}, err
		}
		b, err := os.ReadFile(out)
		if err != nil {
			return [32]byte{}, err
		}
		return sha256.Sum256(b), nil
	}

	// child runs one backup in a child process; with kill, it is killed
	// with SIGKILL after a random moment. It reports whether the child
	// ran to a successful end.
	child := func(rng *mrand.Rand, j job, kill bool) bool {
		b, _ := json.Marshal(j)
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperBackupProcess$", "-test.count=1")
		cmd.Env = append(append(os.Environ(), childEnv...), "CAIRN_STRESS_JOB="+string(b))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			problem("start child: %v", err)
			return false
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if kill {
			select {
			case err := <-done:
				c.childDone.Add(1)
				return err == nil
			case <-time.After(time.Duration(rng.Intn(600)) * time.Millisecond):
				_ = cmd.Process.Kill()
				<-done
				c.kills.Add(1)
				return false
			}
		}
		err := <-done
		if err == nil {
			c.childDone.Add(1)
		}
		return err == nil
	}

	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewSource(time.Now().UnixNano() + int64(w)))
			repo := openRepo()
			vol := fmt.Sprintf("v-stress-%d", w)
			content := make([]byte, volSize)
			for off := 0; off < volSize; off += blockSize {
				if rng.Intn(2) == 0 {
					rng.Read(content[off : off+blockSize])
				}
			}
			var parent *backup.Manifest
			var parentPath string
			for running() {
				// Random writes: data, zeros, a pattern shared by every
				// volume (dedup across volumes).
				for n := 1 + rng.Intn(6); n > 0; n-- {
					off := rng.Intn(volSize)
					l := min(1+rng.Intn(3*blockSize), volSize-off)
					switch rng.Intn(4) {
					case 0:
						clear(content[off : off+l])
					case 1:
						for i := off; i < off+l; i++ {
							content[i] = byte(i % 251)
						}
					default:
						rng.Read(content[off : off+l])
					}
				}
				snap := filepath.Join(dir, "snap-"+strconv.FormatInt(seq.Add(1), 10))
				writeSparse(t, snap, content)
				name := fmt.Sprintf("stress-%d-%d", w, seq.Add(1))
				meta := backup.Meta{BackupID: model.BackupIDForName(name), VolumeID: vol, SnapshotName: name}
				mu.Lock()
				expected[meta.BackupID] = sha256.Sum256(content)
				mu.Unlock()
				c.started.Add(1)
				src := backup.Source{Path: snap}
				j := job{URL: url, Src: snap, Meta: meta}
				if parent != nil && rng.Intn(3) > 0 {
					src.Parent, src.ParentPath = parent, parentPath
					j.ParentVolume, j.ParentID, j.ParentPath = parent.VolumeID, parent.ID, parentPath
				}
				var m *backup.Manifest
				if parent != nil {
					note(meta.BackupID, "incremental of %s: %v", parent.ID, src.Parent != nil)
				}
				if rng.Intn(4) == 0 {
					note(meta.BackupID, "child (killed at a random moment) ok=%v", child(rng, j, true))
					c.resumed.Add(1)
					if rng.Intn(2) == 0 {
						note(meta.BackupID, "child ok=%v", child(rng, j, false))
					}
				}
				// In-process: resumes what a killed child left, or returns
				// the manifest a child committed.
				for attempt := 0; ; attempt++ {
					var err error
					m, err = repo.Backup(ctx, src, meta, nil)
					if err == nil {
						note(meta.BackupID, "in-process attempt %d committed", attempt)
						break
					}
					note(meta.BackupID, "in-process attempt %d: %v", attempt, err)
					c.retries.Add(1)
					if attempt > 100 {
						problem("backup %s never committed: %v", meta.BackupID, err)
						return
					}
					if !errors.Is(err, backup.ErrBusy) && attempt < 3 {
						t.Logf("backup %s (retried): %v", meta.BackupID, err)
					}
					time.Sleep(time.Duration(20+rng.Intn(100)) * time.Millisecond)
				}
				c.committed.Add(1)
				mu.Lock()
				committed[m.ID] = rec{vol: vol, id: m.ID, sum: expected[m.ID]}
				mu.Unlock()
				if parentPath != "" {
					os.Remove(parentPath)
				}
				parent, parentPath = m, snap
			}
		}()
	}
	// Deleter.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := mrand.New(mrand.NewSource(time.Now().UnixNano() + 100))
		for running() {
			time.Sleep(time.Duration(50+rng.Intn(300)) * time.Millisecond)
			mu.Lock()
			var victim *rec
			for id, r := range committed { // map order: random enough
				if pinned[id] == 0 && rng.Intn(3) == 0 {
					victim = &r
					delete(committed, id)
					break
				}
			}
			mu.Unlock()
			if victim == nil {
				continue
			}
			if err := base.Delete(ctx, victim.vol, victim.id); err != nil {
				problem("delete %s: %v", victim.id, err)
			}
			c.deleted.Add(1)
		}
	}()
	// GC loop, minimum age 0.
	wg.Add(1)
	go func() {
		defer wg.Done()
		repo := openRepo()
		for running() {
			time.Sleep(time.Duration(100+mrand.Intn(400)) * time.Millisecond)
			rep, err := repo.GC(ctx, 0)
			c.gcs.Add(1)
			switch {
			case errors.Is(err, backup.ErrBusy):
				c.gcBusy.Add(1)
			case err != nil:
				problem("GC: %v", err)
			}
			if rep != nil {
				c.gcDeletedPacks.Add(int64(rep.Deleted))
			}
		}
	}()
	// Verifier: restores random committed backups while everything runs
	// (pinned, so the deleter leaves them alone meanwhile).
	wg.Add(1)
	go func() {
		defer wg.Done()
		repo := openRepo()
		for running() {
			time.Sleep(300 * time.Millisecond)
			mu.Lock()
			var r *rec
			for _, x := range committed {
				r = &x
				pinned[x.id]++
				break
			}
			mu.Unlock()
			if r == nil {
				continue
			}
			sum, err := restoreSum(repo, r.vol, r.id)
			mu.Lock()
			pinned[r.id]--
			mu.Unlock()
			switch {
			case err != nil:
				problem("INVARIANT BROKEN: committed backup %s/%s does not restore mid-run: %v [history: %s]", r.vol, r.id, err, history(r.id))
			case sum != r.sum:
				problem("INVARIANT BROKEN: committed backup %s/%s restores different bytes mid-run", r.vol, r.id)
			default:
				c.midRestores.Add(1)
			}
		}
	}()
	wg.Wait()

	// Everything stopped (children are waited for by their workers).
	// Every manifest in the store must be one the test started and
	// restore to its content; every committed, not deleted backup must be
	// there.
	ms, damaged, err := base.Manifests(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, dmg := range damaged {
		problem("damaged manifest %s", dmg)
	}
	listed := map[string]bool{}
	for _, m := range ms {
		listed[m.ID] = true
		mu.Lock()
		want, ok := expected[m.ID]
		mu.Unlock()
		if !ok {
			problem("manifest %s/%s was never started by the test", m.VolumeID, m.ID)
			continue
		}
		sum, err := restoreSum(base, m.VolumeID, m.ID)
		switch {
		case err != nil:
			problem("INVARIANT BROKEN: committed backup %s/%s does not restore: %v [history: %s]", m.VolumeID, m.ID, err, history(m.ID))
		case sum != want:
			problem("INVARIANT BROKEN: committed backup %s/%s restores different bytes", m.VolumeID, m.ID)
		default:
			c.finalRestores.Add(1)
		}
	}
	for id := range committed {
		if !listed[id] {
			problem("INVARIANT BROKEN: backup %s committed and not deleted, but its manifest is gone", id)
		}
	}
	// A last GC must succeed with nothing running.
	if rep, err := base.GC(ctx, 0); err != nil && !errors.Is(err, backup.ErrBusy) {
		problem("final GC: %v", err)
	} else if rep != nil {
		c.gcDeletedPacks.Add(int64(rep.Deleted))
	}
	t.Logf("%s for %s: %d backups started, %d committed (%d with a child first, %d children killed with SIGKILL, %d ran to the end), %d attempts retried, %d deleted, %d GCs (%d busy) deleting %d packs, %d restores verified mid-run, %d at the end",
		st, d, c.started.Load(), c.committed.Load(), c.resumed.Load(), c.kills.Load(), c.childDone.Load(), c.retries.Load(), c.deleted.Load(),
		c.gcs.Load(), c.gcBusy.Load(), c.gcDeletedPacks.Load(), c.midRestores.Load(), c.finalRestores.Load())
	for _, p := range problems {
		t.Error(p)
	}
}

// writeSparse writes content to a new file, leaving all-zero blocks as
// holes.
func writeSparse(t *testing.T, path string, content []byte) {
	f, err := os.Create(path)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	if err := f.Truncate(int64(len(content))); err != nil {
		t.Error(err)
	}
	zero := make([]byte, blockSize)
	for off := 0; off < len(content); off += blockSize {
		b := content[off:min(off+blockSize, len(content))]
		if !bytes.Equal(b, zero[:len(b)]) {
			if _, err := f.WriteAt(b, int64(off)); err != nil {
				t.Error(err)
			}
		}
	}
}
