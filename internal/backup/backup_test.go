package backup

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/fsops"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

const mib = int64(1) << 20

// newRepo opens a backup store on a filesystem target.
func newRepo(t *testing.T) (*Repo, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := objstore.Open(context.Background(), "file://"+dir, objstore.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	return r, dir
}

// xfsDir returns a directory on a reflink-capable XFS scratch file system.
func xfsDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop-mounted XFS")
	}
	dir := t.TempDir()
	fs, err := scratchfs.Create(filepath.Join(dir, "img"), filepath.Join(dir, "mnt"), "xfs", 4<<30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	return fs.Mount
}

func randBytes(t *testing.T, n int64) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// writeAt writes data into path at off (creating it) and syncs.
func writeAt(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func sparseFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func restoreTo(t *testing.T, r *Repo, m *Manifest, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "restored-"+m.ID)
	sparseFile(t, out, 0)
	if err := r.Restore(context.Background(), m, out, nil); err != nil {
		t.Fatal(err)
	}
	return out
}

func sameContent(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ", a, b)
	}
}

func meta(name, vol string) Meta {
	return Meta{BackupID: model.BackupIDForName(name), VolumeID: vol, SnapshotName: name}
}

// TestRoundTrip backs up a sparse file with data, zeros and holes and
// restores it byte for byte, with holes where nothing was stored.
func TestRoundTrip(t *testing.T) {
	r, _ := newRepo(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "vol")
	sparseFile(t, src, 64*mib+12345) // odd size: a short last block
	writeAt(t, src, 0, randBytes(t, 5*mib))
	writeAt(t, src, 20*mib, make([]byte, 8*mib)) // allocated zeros
	writeAt(t, src, 40*mib+100, []byte("hello, cairn"))
	writeAt(t, src, 64*mib, randBytes(t, 12345))
	m, err := r.Backup(context.Background(), Source{Path: src}, meta("snap-1", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Blocks: 0,1 (data), 10 (hello), 16 (tail) stored; zero and hole blocks not.
	if len(m.Blocks) != 4 {
		t.Fatalf("%d blocks stored, want 4: %+v", len(m.Blocks), m.Blocks)
	}
	out := restoreTo(t, r, m, dir)
	sameContent(t, src, out)
	alloc, _ := fsops.AllocatedBytes(out)
	if alloc > 20*mib {
		t.Errorf("restore allocated %d bytes; holes and zero blocks should stay holes", alloc)
	}
	// Committed and listed; a repeated call returns the same backup.
	refs, err := r.List(context.Background(), "")
	if err != nil || len(refs) != 1 || refs[0].BackupID != m.ID {
		t.Fatalf("List = %v, %v", refs, err)
	}
	again, err := r.Backup(context.Background(), Source{Path: src}, meta("snap-1", "v-1"), nil)
	if err != nil || again.CompletedAt != m.CompletedAt {
		t.Fatalf("repeated backup: %v (completed %v vs %v)", err, again.CompletedAt, m.CompletedAt)
	}
}

// TestIncrementalReadsOnlyChangedBlocks changes 1% of a reflinked volume
// and checks that only the changed blocks were read and uploaded.
func TestIncrementalReadsOnlyChangedBlocks(t *testing.T) {
	root := xfsDir(t)
	r, _ := newRepo(t)
	vol := filepath.Join(root, "vol")
	const size = 400 * mib
	sparseFile(t, vol, size)
	writeAt(t, vol, 0, randBytes(t, size))
	snap1 := filepath.Join(root, "snap1")
	if err := fsops.Reflink(vol, snap1); err != nil {
		t.Fatal(err)
	}
	m1, err := r.Backup(context.Background(), Source{Path: snap1}, meta("s1", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m1.Stats.BytesRead != size {
		t.Fatalf("full backup read %d bytes, want %d", m1.Stats.BytesRead, size)
	}
	// Change 1% of the volume: four 1 MiB writes in four different blocks.
	for _, off := range []int64{3 * mib, 101 * mib, 202 * mib, 398 * mib} {
		writeAt(t, vol, off, randBytes(t, mib))
	}
	snap2 := filepath.Join(root, "snap2")
	if err := fsops.Reflink(vol, snap2); err != nil {
		t.Fatal(err)
	}
	m2, err := r.Backup(context.Background(), Source{Path: snap2, ParentPath: snap1, Parent: m1}, meta("s2", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	bs := r.BlockSize()
	if m2.Stats.BytesRead != 4*bs {
		t.Errorf("incremental backup read %d bytes, want exactly the 4 changed blocks (%d)", m2.Stats.BytesRead, 4*bs)
	}
	if m2.Stats.BlocksNew != 4 || m2.Stats.BlocksReused != int(size/bs)-4 {
		t.Errorf("incremental stats %+v: want 4 new blocks and %d reused", m2.Stats, size/bs-4)
	}
	if m2.Stats.BytesUploaded > 5*bs {
		t.Errorf("incremental uploaded %d bytes for 4 changed blocks", m2.Stats.BytesUploaded)
	}
	if m2.Parent != m1.ID {
		t.Errorf("parent %q, want %q", m2.Parent, m1.ID)
	}
	sameContent(t, snap2, restoreTo(t, r, m2, root))
	sameContent(t, snap1, restoreTo(t, r, m1, root))
}

// TestDedupAcrossVolumes backs up two copies of one volume under different
// volume IDs: the second uploads no data.
func TestDedupAcrossVolumes(t *testing.T) {
	r, _ := newRepo(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	data := randBytes(t, 32*mib)
	writeAt(t, a, 0, data)
	writeAt(t, b, 0, data)
	m1, err := r.Backup(context.Background(), Source{Path: a}, meta("a", "v-a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := r.Backup(context.Background(), Source{Path: b}, meta("b", "v-b"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m1.Stats.BytesUploaded < 32*mib {
		t.Errorf("first backup uploaded only %d bytes", m1.Stats.BytesUploaded)
	}
	if m2.Stats.BytesUploaded != 0 || m2.Stats.BlocksDeduped != 8 {
		t.Errorf("second backup uploaded %d bytes, deduped %d blocks; want 0 and 8", m2.Stats.BytesUploaded, m2.Stats.BlocksDeduped)
	}
	sameContent(t, b, restoreTo(t, r, m2, dir))
}

// TestCorruptionIsDetected flips one byte in a pack: the restore fails
// naming the damaged block, verify reports it, and nothing wrong is
// silently restored.
func TestCorruptionIsDetected(t *testing.T) {
	r, storeDir := newRepo(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "vol")
	writeAt(t, src, 0, randBytes(t, 16*mib))
	m, err := r.Backup(context.Background(), Source{Path: src}, meta("s", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	victim := m.Blocks[2]
	packPath := filepath.Join(storeDir, packKey(victim.Pack))
	f, err := os.OpenFile(packPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	pos := victim.Loc.Offset + victim.Length/2
	f.ReadAt(b, pos)
	b[0] ^= 0x40
	f.WriteAt(b, pos)
	f.Close()

	out := filepath.Join(dir, "restored")
	sparseFile(t, out, 0)
	err = r.Restore(context.Background(), m, out, nil)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("volume offset %d", victim.Offset)) || !strings.Contains(err.Error(), victim.Pack) {
		t.Fatalf("restore of a damaged backup: %v; want ErrCorrupt naming offset %d and pack %s", err, victim.Offset, victim.Pack)
	}
	rep, err := r.Verify(context.Background(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 1 || rep.Problems[0].Offset != victim.Offset || rep.Problems[0].Pack != victim.Pack {
		t.Fatalf("verify problems %+v, want exactly the block at %d", rep.Problems, victim.Offset)
	}
}

// failingStore fails Puts of packs after n have succeeded.
type failingStore struct {
	objstore.Store
	packsLeft atomic.Int64
}

func (f *failingStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if strings.HasPrefix(key, "packs/") && f.packsLeft.Add(-1) < 0 {
		return errors.New("injected outage")
	}
	return f.Store.Put(ctx, key, r, size)
}

// TestInterruptedBackupResumes fails a backup after two packs: it is not
// listed, GC keeps its packs, and the retry reuses them.
func TestInterruptedBackupResumes(t *testing.T) {
	r, _ := newRepo(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "vol")
	writeAt(t, src, 0, randBytes(t, 300*mib)) // about 5 packs
	fs := &failingStore{Store: r.store}
	fs.packsLeft.Store(2)
	broken := &Repo{store: fs, cfg: r.cfg, Concurrency: r.Concurrency}
	if _, err := broken.Backup(context.Background(), Source{Path: src}, meta("s", "v-1"), nil); err == nil {
		t.Fatal("backup through a failing store succeeded")
	}
	if refs, _ := r.List(context.Background(), ""); len(refs) != 0 {
		t.Fatalf("half-finished backup is listed: %v", refs)
	}
	// Which packs made it depends on timing (the failure cancels uploads
	// in flight); every pack that is stored must be reused.
	stored := 0
	r.store.List(context.Background(), "packs/", func(objstore.Info) error { stored++; return nil })
	if stored == 0 {
		t.Fatal("no pack of the interrupted backup was stored")
	}
	// The interrupted backup no longer blocks GC (its lock ages like
	// any other), but GC keeps the packs its lock lists while the lock is
	// younger than GC's minimum age.
	rep, err := r.GC(context.Background(), time.Hour)
	if err != nil || rep.Deleted != 0 || rep.Referenced != stored {
		t.Fatalf("GC after an interrupted backup: %+v, %v; want its %d packs kept", rep, err, stored)
	}
	m, err := r.Backup(context.Background(), Source{Path: src}, meta("s", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := stored * int(packTarget/r.BlockSize()); m.Stats.BlocksDeduped < want {
		t.Errorf("resumed backup reused %d blocks; the %d stored packs hold %d: %+v", m.Stats.BlocksDeduped, stored, want, m.Stats)
	}
	sameContent(t, src, restoreTo(t, r, m, dir))
}

// TestGC deletes a backup and collects its unreferenced packs, keeping
// packs another backup still refers to.
func TestGC(t *testing.T) {
	r, _ := newRepo(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	shared := randBytes(t, 8*mib)
	writeAt(t, a, 0, shared)
	writeAt(t, a, 8*mib, randBytes(t, 8*mib))
	writeAt(t, b, 0, shared)
	ma, err := r.Backup(context.Background(), Source{Path: a}, meta("a", "v-a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// b's new data goes to its own pack; its shared blocks live in a's.
	writeAt(t, b, 8*mib, randBytes(t, 8*mib))
	mb, err := r.Backup(context.Background(), Source{Path: b}, meta("b", "v-b"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.GC(context.Background(), 0)
	if err != nil || rep.Deleted != 0 {
		t.Fatalf("GC with every pack referenced: %+v, %v", rep, err)
	}
	if err := r.Delete(context.Background(), ma.VolumeID, ma.ID); err != nil {
		t.Fatal(err)
	}
	rep, err = r.GC(context.Background(), time.Hour)
	if err != nil || rep.Deleted != 0 || rep.TooYoung != 0 {
		t.Fatalf("GC with min age 1h: %+v, %v (a's pack is still referenced by b)", rep, err)
	}
	sameContent(t, b, restoreTo(t, r, mb, dir))
	if err := r.Delete(context.Background(), mb.VolumeID, mb.ID); err != nil {
		t.Fatal(err)
	}
	rep, err = r.GC(context.Background(), time.Hour)
	if err != nil || rep.TooYoung != 2 || rep.Deleted != 0 {
		t.Fatalf("GC of young unreferenced packs: %+v, %v; want both kept as too young", rep, err)
	}
	rep, err = r.GC(context.Background(), 0)
	if err != nil || rep.Deleted != 2 {
		t.Fatalf("GC: %+v, %v; want 2 packs deleted", rep, err)
	}
}
