package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/objstore"
)

func fileStore(t *testing.T, dir string) objstore.Store {
	t.Helper()
	st, err := objstore.Open(context.Background(), "file://"+dir, objstore.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, MasterKeySize) }

// patterned is a volume of text that compresses well and is easy to find:
// its plaintext, or a compressed copy of it, shows up in a plain store.
func patterned(t *testing.T, path string, size int64) []byte {
	t.Helper()
	var b bytes.Buffer
	for i := 0; int64(b.Len()) < size; i++ {
		fmt.Fprintf(&b, "CAIRN-KNOWN-PLAINTEXT line %08d of the volume\n", i)
	}
	data := b.Bytes()[:size]
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return data
}

// storeContains reports whether any object of the store holds needle.
func storeContains(t *testing.T, dir string, needle []byte) []string {
	t.Helper()
	var hits []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, needle) {
			hits = append(hits, p)
		}
		return nil
	})
	return hits
}

func TestEncryptedStoreHoldsNoPlaintext(t *testing.T) {
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "vol")
	data := patterned(t, src, 24*mib)
	needle := []byte("CAIRN-KNOWN-PLAINTEXT")
	volName := []byte("a-volume-name-that-must-not-show")
	for _, encrypted := range []bool{false, true} {
		dir := t.TempDir()
		var key []byte
		if encrypted {
			key = testKey(7)
		}
		r, err := OpenKeyed(ctx, fileStore(t, dir), key)
		if err != nil {
			t.Fatal(err)
		}
		m, err := r.Backup(ctx, Source{Path: src}, Meta{BackupID: meta("s", "v-1").BackupID, VolumeID: "v-1", VolumeName: string(volName), SnapshotName: "s"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		hits := append(storeContains(t, dir, needle), storeContains(t, dir, volName)...)
		plainHash := hashBlock(data[:4*mib])
		hits = append(hits, storeContains(t, dir, []byte(plainHash))...)
		if encrypted && len(hits) > 0 {
			t.Errorf("the encrypted store holds plaintext, a name or a plain block hash in %v", hits)
		}
		if !encrypted && len(hits) == 0 {
			t.Fatal("the plain store holds none of the pattern: the check could not fail")
		}
		if r.Encrypted() != encrypted || m.FormatVersion != map[bool]int{false: 1, true: 2}[encrypted] {
			t.Errorf("encrypted %v: Encrypted() %v, manifest format %d", encrypted, r.Encrypted(), m.FormatVersion)
		}
		// Reopened with its key, the store restores the volume byte for byte.
		r2 := reopenRestores(t, dir, key, m, src)
		// The same data again dedups (keyed hashes are stable per store).
		m3, err := r2.Backup(ctx, Source{Path: src}, meta("s2", "v-2"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if m3.Stats.BytesUploaded != 0 || m3.Stats.BlocksDeduped != 6 {
			t.Errorf("encrypted %v: second backup uploaded %d bytes, %d blocks deduplicated; want 0 and 6", encrypted, m3.Stats.BytesUploaded, m3.Stats.BlocksDeduped)
		}
	}
}

func TestEncryptedStoreKeyErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := OpenKeyed(ctx, fileStore(t, dir), testKey(1)); err != nil {
		t.Fatal(err)
	}
	plainDir := t.TempDir()
	if _, err := Open(ctx, fileStore(t, plainDir)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		dir  string
		key  []byte
		want string
	}{
		{"wrong key", dir, testKey(2), "key check failed"},
		{"no key", dir, nil, "encrypted and no key"},
		{"short key", dir, testKey(1)[:16], "32 bytes"},
		{"key for a plain store", plainDir, testKey(1), "not encrypted"},
	} {
		_, err := OpenKeyed(ctx, fileStore(t, c.dir), c.key)
		if !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.dir) {
			t.Errorf("%s: %v; want ErrKey naming the store and %q", c.name, err, c.want)
		}
		if err != nil && bytes.Contains([]byte(err.Error()), testKey(1)[:8]) {
			t.Errorf("%s: the error shows the key", c.name)
		}
	}
}

func TestEncryptedStoreDamage(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	r, err := OpenKeyed(ctx, fileStore(t, dir), testKey(3))
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "vol")
	writeAt(t, src, 0, randBytes(t, 8*mib))
	m, err := r.Backup(ctx, Source{Path: src}, meta("s", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// A flipped byte in a blob fails the restore naming the block.
	e := m.Blocks[1]
	pack := filepath.Join(dir, packKey(e.Pack))
	flip(t, pack, e.Loc.Offset+e.Loc.Length-20)
	out := filepath.Join(t.TempDir(), "out")
	sparseFile(t, out, 0)
	err = r.Restore(ctx, m, out, nil)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "offset 4194304") || !strings.Contains(err.Error(), "authentication failed") {
		t.Errorf("restore with a flipped blob byte: %v", err)
	}
	// A flipped byte in the manifest makes it damaged.
	mkey := manifestKey(m.VolumeID, m.ID)
	orig, _ := os.ReadFile(filepath.Join(dir, mkey))
	flip(t, filepath.Join(dir, mkey), 40)
	if _, err := r.Manifest(ctx, m.VolumeID, m.ID); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), mkey) {
		t.Errorf("manifest with a flipped byte: %v", err)
	}
	// A manifest moved under another backup's name does not open.
	other := meta("other", "v-1")
	os.WriteFile(filepath.Join(dir, mkey), orig, 0o600)
	os.WriteFile(filepath.Join(dir, manifestKey("v-1", other.BackupID)), orig, 0o600)
	if _, err := r.Manifest(ctx, "v-1", other.BackupID); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a manifest moved to another name: %v", err)
	}
	// A plain manifest slipped into an encrypted store is damage.
	os.WriteFile(filepath.Join(dir, mkey), []byte(`{"formatVersion":2}`), 0o600)
	if _, err := r.Manifest(ctx, m.VolumeID, m.ID); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a plain manifest in an encrypted store: %v", err)
	}
}

// reopenRestores opens the store in dir afresh with key and checks that
// backup m restores byte for byte as src; it returns the new Repo.
func reopenRestores(t *testing.T, dir string, key []byte, m *Manifest, src string) *Repo {
	t.Helper()
	ctx := context.Background()
	r, err := OpenKeyed(ctx, fileStore(t, dir), key)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := r.Manifest(ctx, m.VolumeID, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, src, restoreTo(t, r, m2, t.TempDir()))
	return r
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x40
	f.WriteAt(b, off)
}

// digestTree hashes every object but the configuration.
func digestTree(t *testing.T, dir string) map[string][32]byte {
	out := map[string][32]byte{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Base(p) == configKey {
			return err
		}
		b, _ := os.ReadFile(p)
		out[p] = sha256.Sum256(b)
		return nil
	})
	return out
}

func TestKeyRotation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	oldKey, newKey := testKey(4), testKey(5)
	r, err := OpenKeyed(ctx, fileStore(t, dir), oldKey)
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "vol")
	writeAt(t, src, 0, randBytes(t, 9*mib))
	m, err := r.Backup(ctx, Source{Path: src}, meta("s", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	before := digestTree(t, dir)
	if err := r.RotateKey(ctx, newKey); err != nil {
		t.Fatal(err)
	}
	after := digestTree(t, dir)
	if len(before) != len(after) {
		t.Fatalf("rotation changed the objects: %d before, %d after", len(before), len(after))
	}
	for k, v := range before {
		if after[k] != v {
			t.Errorf("rotation rewrote %s", k)
		}
	}
	if _, err := OpenKeyed(ctx, fileStore(t, dir), oldKey); !errors.Is(err, ErrKey) {
		t.Errorf("the old key after rotation: %v, want ErrKey", err)
	}
	r2 := reopenRestores(t, dir, newKey, m, src)
	// The Repo that rotated goes on working with the new key, and a
	// second rotation from a stale Repo is refused.
	if _, err := r.Backup(ctx, Source{Path: src}, meta("s2", "v-1"), nil); err != nil {
		t.Fatal(err)
	}
	stale, _ := OpenKeyed(ctx, fileStore(t, dir), newKey)
	if err := r2.RotateKey(ctx, testKey(6)); err != nil {
		t.Fatal(err)
	}
	if err := stale.RotateKey(ctx, testKey(7)); !errors.Is(err, ErrKey) {
		t.Errorf("rotation from a stale Repo: %v, want ErrKey", err)
	}
}

func TestHostileEncryptionConfig(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := OpenKeyed(ctx, fileStore(t, dir), testKey(1)); err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(filepath.Join(dir, configKey))
	for name, change := range map[string]func(string) string{
		"format 1 with encryption": func(s string) string { return strings.Replace(s, `"formatVersion":2`, `"formatVersion":1`, 1) },
		"format 2 without":         func(s string) string { return s[:strings.Index(s, `,"encryption"`)] + "}" },
		"short salt":               func(s string) string { return strings.Replace(s, `"salt":"`, `"salt":"AAAA`, 1) },
		"other aead":               func(s string) string { return strings.Replace(s, aeadName, "rot13", 1) },
	} {
		os.WriteFile(filepath.Join(dir, configKey), []byte(change(string(orig))), 0o600)
		_, err := OpenKeyed(ctx, fileStore(t, dir), testKey(1))
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: %v, want ErrCorrupt or ErrUnsupported", name, err)
		}
	}
}

// TestConcurrentCreateAgreesOnOneDataKey opens a new encrypted store from
// many clients at once: every one must end up with the one data key the
// store holds, so each one's backups are readable by all.
func TestConcurrentCreateAgreesOnOneDataKey(t *testing.T) {
	ctx := context.Background()
	for round := range 5 {
		dir := t.TempDir()
		const n = 6
		repos := make([]*Repo, n)
		errs := make(chan error, n)
		for i := range n {
			go func() {
				var err error
				repos[i], err = OpenKeyed(ctx, fileStore(t, dir), testKey(9))
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		fresh, err := OpenKeyed(ctx, fileStore(t, dir), testKey(9))
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range repos {
			if !r.enc.sameAs(fresh.enc) {
				t.Fatalf("round %d: client %d holds a data key the store does not", round, i)
			}
		}
	}
}

// TestCommitRefusesAChangedConfig swaps the store's configuration for
// another store's under an open Repo: its next backup must not commit a
// manifest sealed under a data key the store no longer holds.
func TestCommitRefusesAChangedConfig(t *testing.T) {
	ctx := context.Background()
	dir, other := t.TempDir(), t.TempDir()
	r, err := OpenKeyed(ctx, fileStore(t, dir), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKeyed(ctx, fileStore(t, other), testKey(1)); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(other, configKey))
	os.WriteFile(filepath.Join(dir, configKey), b, 0o600)
	src := filepath.Join(t.TempDir(), "vol")
	writeAt(t, src, 0, randBytes(t, 4*mib))
	m := meta("s", "v-1")
	if _, err := r.Backup(ctx, Source{Path: src}, m, nil); !errors.Is(err, ErrConfigChanged) {
		t.Fatalf("backup after the configuration changed: %v, want ErrConfigChanged", err)
	}
	if _, err := os.Stat(filepath.Join(dir, manifestKey(m.VolumeID, m.BackupID))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a manifest was committed: %v", err)
	}
	// Opened again, the store takes backups that a fresh client reads.
	r2, err := OpenKeyed(ctx, fileStore(t, dir), testKey(1))
	if err != nil {
		t.Fatal(err)
	}
	got, err := r2.Backup(ctx, Source{Path: src}, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	reopenRestores(t, dir, testKey(1), got, src)
}
