package backup

// Tests of a damaged or hostile backup store: every class of docs/FORMAT.md
// "Validation" and "Locks and garbage collection" that once panicked,
// allocated without bound, waited forever or accepted wrong data.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
)

// backedUp makes a store with one backup of size bytes of random data.
func backedUp(t *testing.T, size int64) (*Repo, string, *Manifest, string) {
	t.Helper()
	r, storeDir := newRepo(t)
	src := filepath.Join(t.TempDir(), "vol")
	writeAt(t, src, 0, randBytes(t, size))
	m, err := r.Backup(context.Background(), Source{Path: src}, meta("s", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return r, storeDir, m, src
}

// rawManifest reads a manifest object as generic JSON.
func rawManifest(t *testing.T, storeDir string, m *Manifest) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(storeDir, manifestKey(m.VolumeID, m.ID)))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func writeObject(t *testing.T, storeDir, key string, v any) {
	t.Helper()
	var b []byte
	switch x := v.(type) {
	case []byte:
		b = x
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(storeDir, key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestHostileManifestFields: out-of-range and malformed manifest fields
// are ErrCorrupt (or ErrUnsupported) naming the object, for every reader
// — show, restore, verify, list, GC, dedup — and never a panic.
func TestHostileManifestFields(t *testing.T) {
	r, storeDir, m, src := backedUp(t, 8*mib)
	entry := func(v map[string]any, i int) []any { return v["blocks"].([]any)[i].([]any) }
	cases := map[string]func(v map[string]any){
		"short pack ID":      func(v map[string]any) { entry(v, 0)[2] = "ab" },
		"short hash":         func(v map[string]any) { entry(v, 0)[1] = "x" },
		"upper-case hash":    func(v map[string]any) { entry(v, 0)[1] = strings.ToUpper(m.Blocks[0].Hash) },
		"negative length":    func(v map[string]any) { entry(v, 0)[4] = -5 },
		"2^50 length":        func(v map[string]any) { entry(v, 0)[4] = int64(1) << 50 },
		"2^50 raw length":    func(v map[string]any) { entry(v, 0)[5] = int64(1) << 50 },
		"negative offset":    func(v map[string]any) { entry(v, 0)[0] = -4 * mib },
		"unaligned offset":   func(v map[string]any) { entry(v, 1)[0] = 4*mib + 1 },
		"offset past volume": func(v map[string]any) { entry(v, 1)[0] = 64 * mib },
		"negative pack offset": func(v map[string]any) {
			entry(v, 0)[3] = -1
		},
		"duplicate offsets":    func(v map[string]any) { entry(v, 1)[0] = 0 },
		"unknown compression":  func(v map[string]any) { entry(v, 0)[6] = "lz4" },
		"six fields":           func(v map[string]any) { v["blocks"].([]any)[0] = entry(v, 0)[:6] },
		"2^50 block size":      func(v map[string]any) { v["blockSize"] = int64(1) << 50 },
		"zero block size":      func(v map[string]any) { v["blockSize"] = 0 },
		"negative size":        func(v map[string]any) { v["sizeBytes"] = -1 },
		"2^60 size":            func(v map[string]any) { v["sizeBytes"] = int64(1) << 60 },
		"other identity":       func(v map[string]any) { v["id"] = model.BackupIDForName("other") },
		"other volume":         func(v map[string]any) { v["volumeId"] = "v-2" },
		"bad parent":           func(v map[string]any) { v["parent"] = "../../x" },
		"newer format":         func(v map[string]any) { v["formatVersion"] = FormatVersion + 1 },
		"zero format":          func(v map[string]any) { v["formatVersion"] = 0 },
		"too many entries":     func(v map[string]any) { v["sizeBytes"] = 4 * mib },
		"raw length not block": func(v map[string]any) { entry(v, 1)[5] = 4*mib - 1 },
		"claim name with escapes": func(v map[string]any) {
			v["claim"] = map[string]any{"name": "pvc\x1b]0;owned\x07", "namespace": "default"}
		},
		"claim access mode":  func(v map[string]any) { v["claim"] = map[string]any{"name": "pvc", "accessModes": []any{"Always"}} },
		"claim volume mode":  func(v map[string]any) { v["claim"] = map[string]any{"name": "pvc", "volumeMode": "Raw"} },
		"claim wrong type":   func(v map[string]any) { v["claim"] = "pvc" },
		"claim negative ask": func(v map[string]any) { v["claim"] = map[string]any{"name": "pvc", "requestBytes": -1} },
	}
	key := manifestKey(m.VolumeID, m.ID)
	ctx := context.Background()
	orig := rawManifest(t, storeDir, m)
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			var v map[string]any
			b, _ := json.Marshal(orig)
			json.Unmarshal(b, &v)
			mutate(v)
			writeObject(t, storeDir, key, v)
			_, err := r.Manifest(ctx, m.VolumeID, m.ID)
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), key) {
				t.Fatalf("Manifest: %v; want ErrCorrupt or ErrUnsupported naming %s", err, key)
			}
			ms, damaged, err := r.Manifests(ctx, "")
			if err != nil || len(ms) != 0 || len(damaged) != 1 || damaged[0].Key != key {
				t.Fatalf("Manifests: %d good, damaged %v, %v; want it as the one damaged", len(ms), damaged, err)
			}
			rep, err := r.Verify(ctx, nil, nil)
			if name == "newer format" {
				// Not damage: this driver cannot check it, and says so.
				if err != nil || rep.Damaged() || len(rep.NewerManifests) != 1 {
					t.Fatalf("Verify: %+v, %v; want the newer manifest noted, not damage", rep, err)
				}
			} else if err != nil || !rep.Damaged() || len(rep.DamagedBackups) != 1 {
				t.Fatalf("Verify: %+v, %v; want the damaged manifest named", rep, err)
			}
			if _, err := r.GC(ctx, 0); err == nil || !strings.Contains(err.Error(), key) {
				t.Fatalf("GC: %v; want a refusal naming %s", err, key)
			}
			// A hand-made manifest handed straight to Restore is checked too.
			var hm Manifest
			b, _ = json.Marshal(v)
			if json.Unmarshal(b, &hm) == nil && hm.validate(hm.VolumeID, hm.ID, r.BlockSize(), 0) != nil {
				out := filepath.Join(t.TempDir(), "out")
				sparseFile(t, out, 0)
				if err := r.Restore(ctx, &hm, out, nil); err == nil {
					t.Fatal("Restore of a hostile manifest succeeded")
				}
			}
			// A new backup of another volume is not stopped by it.
			if _, err := r.Backup(ctx, Source{Path: src}, meta("n-"+name, "v-9"), nil); err != nil {
				t.Fatalf("a new backup with a damaged manifest in the store: %v", err)
			}
			if err := r.Delete(ctx, "v-9", model.BackupIDForName("n-"+name)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestManifestIdentityMustMatchKey: a copy of a manifest under another
// key is not listed as the other backup.
func TestManifestIdentityMustMatchKey(t *testing.T) {
	r, storeDir, m, _ := backedUp(t, 4*mib)
	other := model.BackupIDForName("other")
	writeObject(t, storeDir, manifestKey("v-2", other), rawManifest(t, storeDir, m))
	if _, err := r.Manifest(context.Background(), "v-2", other); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Manifest of a copy under another key: %v, want ErrCorrupt", err)
	}
	ms, damaged, err := r.Manifests(context.Background(), "")
	if err != nil || len(ms) != 1 || ms[0].ID != m.ID || len(damaged) != 1 {
		t.Fatalf("Manifests: %v, damaged %v, %v", ms, damaged, err)
	}
}

// TestHostileStoreConfig: a config with out-of-range fields is refused,
// not used.
func TestHostileStoreConfig(t *testing.T) {
	for name, cfg := range map[string]string{
		"2^50 block size": `{"formatVersion":1,"blockSize":1125899906842624,"hash":"blake3-256","compression":"zstd"}`,
		"tiny block size": `{"formatVersion":1,"blockSize":1,"hash":"blake3-256","compression":"zstd"}`,
		"odd block size":  `{"formatVersion":1,"blockSize":4194305,"hash":"blake3-256","compression":"zstd"}`,
		"newer format":    `{"formatVersion":99,"blockSize":4194304,"hash":"blake3-256","compression":"zstd"}`,
		"other hash":      `{"formatVersion":1,"blockSize":4194304,"hash":"md5","compression":"zstd"}`,
		"not JSON":        `{"formatVersion":`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeObject(t, dir, configKey, []byte(cfg))
			st, err := objstore.Open(context.Background(), "file://"+dir, objstore.Credentials{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Open(context.Background(), st); err == nil {
				t.Fatal("Open accepted the config")
			}
		})
	}
}

// TestOversizedObjectsAreNotRead: a 6 GiB (sparse) manifest or lock is
// refused by its size, without reading or allocating it.
func TestOversizedObjectsAreNotRead(t *testing.T) {
	r, storeDir, m, _ := backedUp(t, 4*mib)
	for _, key := range []string{manifestKey(m.VolumeID, m.ID), lockKey(m.ID)} {
		p := filepath.Join(storeDir, key)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.Truncate(p, 6<<30); err != nil {
			f, _ := os.Create(p)
			f.Truncate(6 << 30)
			f.Close()
		}
	}
	before := totalAlloc()
	start := time.Now()
	if _, err := r.Manifest(context.Background(), m.VolumeID, m.ID); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Manifest of a 6 GiB object: %v, want ErrCorrupt", err)
	}
	if _, err := r.GC(context.Background(), 0); err == nil {
		t.Fatal("GC ran with an unreadable manifest")
	}
	if d := totalAlloc() - before; d > 64<<20 {
		t.Fatalf("reading 6 GiB objects allocated %d MiB", d>>20)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %s", d)
	}
}

func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// TestZstdBombIsBounded: a tiny blob that decompresses to 1 GiB fails by
// the entry's raw length, allocating about one block.
func TestZstdBombIsBounded(t *testing.T) {
	var bomb bytes.Buffer
	enc, err := zstd.NewWriter(&bomb, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for i := 0; i < 1024; i++ {
		enc.Write(zeros)
	}
	enc.Close()
	one, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	single := one.EncodeAll(make([]byte, 1<<30), nil) // a single frame declaring 1 GiB
	for name, blob := range map[string][]byte{"stream": bomb.Bytes(), "single frame": single} {
		t.Run(name, func(t *testing.T) {
			if len(blob) > 1<<20 {
				t.Fatalf("bomb is %d bytes", len(blob))
			}
			before := totalAlloc()
			_, err := (*keyring)(nil).decodeBlock(blob, compZstd, 4*mib, strings.Repeat("0", 64), nil)
			if err == nil {
				t.Fatal("decoded a bomb")
			}
			if d := totalAlloc() - before; d > 24<<20 {
				t.Fatalf("decoding a %d-byte bomb allocated %d MiB", len(blob), d>>20)
			}
		})
	}
}

// TestHostilePackIndexes: packs whose trailer or index is out of range or
// does not hash to the pack's ID are never deduplicated into, and a
// backup of the same data uploads its own copy and restores.
func TestHostilePackIndexes(t *testing.T) {
	r, storeDir, m, src := backedUp(t, 8*mib)
	good := filepath.Join(storeDir, packKey(m.Blocks[0].Pack))
	packBytes, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	trailer := func(index []byte, data []byte) []byte {
		out := append(append([]byte{}, data...), index...)
		n := len(index)
		out = append(out, byte(n), byte(n>>8), byte(n>>16), byte(n>>24))
		return append(out, packMagic...)
	}
	idxJSON := func(e ...packIndexEntry) []byte { b, _ := json.Marshal(e); return b }
	h := m.Blocks[0].Hash
	b0 := m.Blocks[0].Loc
	data := packBytes[b0.Offset : b0.Offset+b0.Length]
	bad := map[string][]byte{
		"index length 4 GiB":     append(append([]byte{}, data...), 0xff, 0xff, 0xff, 0xff, 'C', 'A', 'I', 'R', 'N', 'P', 'K', '1'),
		"no trailer":             data,
		"blob past the end":      trailer(idxJSON(packIndexEntry{h, 0, 1 << 30, 4 * mib, compZstd}), data),
		"negative offset":        trailer(idxJSON(packIndexEntry{h, -10, 10, 4 * mib, compZstd}), data),
		"2^50 raw length":        trailer(idxJSON(packIndexEntry{h, 0, int64(len(data)), 1 << 50, compZstd}), data),
		"short hash":             trailer(idxJSON(packIndexEntry{"ab", 0, int64(len(data)), 4 * mib, compZstd}), data),
		"not JSON":               trailer([]byte("[{"), data),
		"overlapping blobs":      trailer(idxJSON(packIndexEntry{h, 0, 100, 4 * mib, compZstd}, packIndexEntry{h, 50, 100, 4 * mib, compZstd}), data),
		"index not the ID's":     trailer(idxJSON(packIndexEntry{h, 0, int64(len(data)), 4 * mib, m.Blocks[0].Comp}), data),
		"garbage at a true name": nil, // see below
	}
	ctx := context.Background()
	for name, pack := range bad {
		t.Run(name, func(t *testing.T) {
			os.RemoveAll(filepath.Join(storeDir, "packs"))
			os.RemoveAll(filepath.Join(storeDir, "backups"))
			r.mu.Lock()
			r.packs = nil
			r.mu.Unlock()
			id := m.Blocks[0].Pack
			if pack == nil {
				// The right index under its right name, but blobs that
				// are not what it says.
				pack = append([]byte{}, packBytes...)
				for i := b0.Offset; i < b0.Offset+b0.Length; i++ {
					pack[i] ^= 0x5a
				}
			}
			writeObject(t, storeDir, packKey(id), pack)
			// A manifest that refers to the hostile pack.
			hm := *m
			hm.Blocks = []Entry{m.Blocks[0]}
			writeObject(t, storeDir, manifestKey(m.VolumeID, m.ID), &hm)
			if name == "garbage at a true name" {
				// Restore finds it and quarantines the location.
				out := filepath.Join(t.TempDir(), "out")
				sparseFile(t, out, 0)
				if err := r.Restore(ctx, &hm, out, nil); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("restore from a garbage blob: %v", err)
				}
			}
			m2, err := r.Backup(ctx, Source{Path: src}, meta("again-"+name, "v-2"), nil)
			if err != nil {
				t.Fatal(err)
			}
			// (Its upload of the same blocks may land under the same pack
			// ID, replacing the hostile object with the true one.)
			if name == "garbage at a true name" {
				// The pack's other blob is intact and may be reused; the
				// quarantined one is not.
				if m2.Blocks[0].Loc == b0 || m2.Stats.BlocksNew != 1 {
					t.Fatalf("the new backup reuses the quarantined blob: %+v", m2.Stats)
				}
			} else if m2.Stats.BlocksDeduped != 0 || m2.Stats.BlocksNew != 2 {
				t.Fatalf("the new backup dedups into the hostile pack: %+v", m2.Stats)
			}
			sameContent(t, src, restoreTo(t, r, m2, t.TempDir()))
		})
	}
}

// TestVerifyChecksEveryEntry: an entry that shares its place with another
// backup's valid entry but names another hash is reported, with its
// backup, and verify does not call that backup fine.
func TestVerifyChecksEveryEntry(t *testing.T) {
	r, storeDir, m, src := backedUp(t, 8*mib)
	m2, err := r.Backup(context.Background(), Source{Path: src}, meta("b", "v-2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	v := rawManifest(t, storeDir, m2)
	v["blocks"].([]any)[0].([]any)[1] = strings.Repeat("ab", 32)
	writeObject(t, storeDir, manifestKey(m2.VolumeID, m2.ID), v)
	rep, err := r.Verify(context.Background(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 1 || rep.Problems[0].BackupID != m2.ID || len(rep.DamagedBackups) != 1 || rep.DamagedBackups[0].BackupID != m2.ID {
		t.Fatalf("verify: %+v; want exactly backup %s's first entry", rep, m2.ID)
	}
	_ = m
}

// TestDedupIgnoresManifestLocations: a manifest entry naming a hash at a
// wrong location (another blob's) must not make a later backup of that
// block point there: it uploads its own copy and restores.
func TestDedupIgnoresManifestLocations(t *testing.T) {
	r, storeDir, m, _ := backedUp(t, 4*mib)
	dir := t.TempDir()
	other := filepath.Join(dir, "other")
	block := randBytes(t, 4*mib)
	writeAt(t, other, 0, block)
	// A valid-looking manifest: the new block's hash at the old block's place.
	liar := Manifest{FormatVersion: 1, ID: model.BackupIDForName("liar"), VolumeID: "v-9", SizeBytes: 4 * mib, BlockSize: r.BlockSize(),
		Blocks: []Entry{{Offset: 0, Hash: hashBlock(block), Loc: m.Blocks[0].Loc}}}
	writeObject(t, storeDir, manifestKey(liar.VolumeID, liar.ID), &liar)
	if _, err := r.Manifest(context.Background(), liar.VolumeID, liar.ID); err != nil {
		t.Fatalf("the lying manifest should pass validation (it is well-formed): %v", err)
	}
	m2, err := r.Backup(context.Background(), Source{Path: other}, meta("o", "v-3"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Stats.BlocksNew != 1 {
		t.Fatalf("the backup deduped into the lying location: %+v", m2.Stats)
	}
	sameContent(t, other, restoreTo(t, r, m2, dir))
	// verify names the liar.
	rep, err := r.Verify(context.Background(), nil, nil)
	if err != nil || len(rep.DamagedBackups) != 1 || rep.DamagedBackups[0].BackupID != liar.ID {
		t.Fatalf("verify: %+v, %v; want the lying backup named", rep, err)
	}
}

// TestDamagedLocationIsNeverReused: a blob found damaged by a restore is
// quarantined in the store; later backups of that block, also by another
// process (a fresh Repo), upload their own copy.
func TestDamagedLocationIsNeverReused(t *testing.T) {
	r, storeDir, m, src := backedUp(t, 8*mib)
	victim := m.Blocks[1]
	p := filepath.Join(storeDir, packKey(victim.Pack))
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	f.ReadAt(b, victim.Loc.Offset+10)
	b[0] ^= 0xff
	f.WriteAt(b, victim.Loc.Offset+10)
	f.Close()
	out := filepath.Join(t.TempDir(), "out")
	sparseFile(t, out, 0)
	if err := r.Restore(context.Background(), m, out, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("restore: %v", err)
	}
	fresh, err := Open(context.Background(), r.store)
	if err != nil {
		t.Fatal(err)
	}
	// The fresh Repo knows the damage only from the store's record; the
	// second backup dedups into the first one's new copy.
	for i, repo := range []*Repo{fresh, r} {
		m2, err := repo.Backup(context.Background(), Source{Path: src}, meta("again"+string(rune('a'+i)), "v-2"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if m2.Blocks[1].Loc == victim.Loc || i == 0 && m2.Stats.BlocksNew != 1 {
			t.Fatalf("backup %d reused the damaged location: %+v", i, m2.Stats)
		}
		sameContent(t, src, restoreTo(t, repo, m2, t.TempDir()))
	}
}

// setLockTiming shortens the lock protocol's times for a test.
func setLockTiming(t *testing.T, heartbeat, liveFor, wait time.Duration) {
	t.Helper()
	h, l, w := heartbeatEvery, lockLive, gcWaitStep
	heartbeatEvery, lockLive, gcWaitStep = heartbeat, liveFor, wait
	t.Cleanup(func() { heartbeatEvery, lockLive, gcWaitStep = h, l, w })
}

func setMtime(t *testing.T, storeDir, key string, at time.Time) {
	t.Helper()
	if err := os.Chtimes(filepath.Join(storeDir, key), at, at); err != nil {
		t.Fatal(err)
	}
}

// TestLockLivenessUsesTheStoresClock: liveness is the lock object's
// modification time against the store's clock; the writer's heartbeat
// field is not trusted, and a time in the future beyond the skew is stale.
func TestLockLivenessUsesTheStoresClock(t *testing.T) {
	setLockTiming(t, time.Hour, 10*time.Minute, 50*time.Millisecond)
	r, storeDir, m, src := backedUp(t, 4*mib)
	ctx := context.Background()
	now := time.Now()
	future := lockInfo{Kind: lockGC, ID: "gc", Heartbeat: now.Add(100 * 365 * 24 * time.Hour)}

	// A GC lock written far in the future must not stop backups forever.
	writeObject(t, storeDir, lockKey("gc"), &future)
	setMtime(t, storeDir, lockKey("gc"), now.Add(time.Hour))
	bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.Backup(bctx, Source{Path: src}, meta("x", "v-2"), nil); err != nil {
		t.Fatalf("backup with a GC lock from the future: %v", err)
	}
	os.Remove(filepath.Join(storeDir, lockKey("gc")))

	// A malformed GC lock, however fresh, blocks nobody: no GC writes it.
	writeObject(t, storeDir, lockKey("gc-0123456789abcdef"), []byte(`{"kind":"gc","id":"someone-else"}`))
	bctx2, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	if _, err := r.Backup(bctx2, Source{Path: src}, meta("y", "v-2"), nil); err != nil {
		t.Fatalf("backup with a malformed GC lock: %v", err)
	}
	if _, err := r.GC(ctx, time.Hour); err != nil {
		t.Fatalf("GC with a malformed GC lock: %v", err)
	}
	os.Remove(filepath.Join(storeDir, lockKey("gc-0123456789abcdef")))

	// A backup lock whose writer's clock is a century ahead, written 20
	// minutes ago by the store's clock, is stale.
	id := model.BackupIDForName("crashed")
	writeObject(t, storeDir, lockKey(id), &lockInfo{Kind: lockBackup, ID: id, State: stateRunning, Heartbeat: future.Heartbeat})
	setMtime(t, storeDir, lockKey(id), now.Add(-20*time.Minute))
	rep, err := r.GC(ctx, 15*time.Minute)
	if err != nil || rep.StaleLocks != 1 {
		t.Fatalf("GC with a stale lock whose heartbeat field lies: %+v, %v", rep, err)
	}

	// A backup lock just written by a writer whose clock is an hour
	// behind is live.
	writeObject(t, storeDir, lockKey(id), &lockInfo{Kind: lockBackup, ID: id, State: stateRunning, Heartbeat: now.Add(-time.Hour)})
	if _, err := r.GC(ctx, time.Hour); !errors.Is(err, ErrBusy) {
		t.Fatalf("GC with a live backup lock from a slow clock: %v, want ErrBusy", err)
	}
	os.Remove(filepath.Join(storeDir, lockKey(id)))

	// A malformed lock counts as running while it is fresh, and is removed
	// once stale; it never panics anyone.
	writeObject(t, storeDir, lockKey(id), []byte(`{"kind":"backup","id":"b-x","packs":["ab"]}`))
	if _, err := r.GC(ctx, time.Hour); !errors.Is(err, ErrBusy) {
		t.Fatalf("GC with a fresh malformed lock: %v, want ErrBusy", err)
	}
	if _, err := r.Backup(ctx, Source{Path: src}, meta("crashed", "v-3"), nil); err != nil {
		t.Fatalf("backup over its own malformed lock: %v", err)
	}
	_ = m
}

// slowStore delays deletes and puts of packs and notes them in order.
type slowStore struct {
	objstore.Store
	deleteDelay, packDelay time.Duration
	mu                     sync.Mutex
	events                 []string
}

func (s *slowStore) Delete(ctx context.Context, key string) error {
	if strings.HasPrefix(key, "packs/") {
		time.Sleep(s.deleteDelay)
		s.note("delete")
	}
	return s.Store.Delete(ctx, key)
}

func (s *slowStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if strings.HasPrefix(key, "packs/") {
		time.Sleep(s.packDelay)
		s.note("put")
	}
	return s.Store.Put(ctx, key, r, size)
}

func (s *slowStore) note(ev string) {
	s.mu.Lock()
	s.events = append(s.events, ev)
	s.mu.Unlock()
}

// TestLongGCKeepsBlockingBackups: GC refreshes its lock while it runs, so
// a GC longer than the lock's lifetime still keeps backups out until it
// is done.
func TestLongGCKeepsBlockingBackups(t *testing.T) {
	setLockTiming(t, 50*time.Millisecond, 600*time.Millisecond, 20*time.Millisecond)
	r, _ := newRepo(t)
	ctx := context.Background()
	dir := t.TempDir()
	for i := 0; i < 4; i++ {
		src := filepath.Join(dir, "v")
		writeAt(t, src, 0, randBytes(t, 4*mib))
		m, err := r.Backup(ctx, Source{Path: src}, meta("g"+string(rune('a'+i)), "v-1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Delete(ctx, m.VolumeID, m.ID)
	}
	slow := &slowStore{Store: r.store, deleteDelay: 400 * time.Millisecond}
	sr := &Repo{store: slow, cfg: r.cfg, Concurrency: 4}
	gcDone := gcInBackground(ctx, sr, 4)
	for deadline := time.Now().Add(5 * time.Second); ; {
		var n int
		r.store.List(ctx, "locks/gc", func(objstore.Info) error { n++; return nil })
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("GC never wrote its lock")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Clients that predate gc-… locks look at locks/gc.json and its
	// heartbeat field: it is there, fresh, for as long as GC runs.
	time.Sleep(700 * time.Millisecond) // past the lock's lifetime
	var legacy lockInfo
	if err := r.readJSON(ctx, lockKey("gc"), maxLockBytes, -1, &legacy); err != nil || legacy.Kind != lockGC || time.Since(legacy.Heartbeat) > 300*time.Millisecond {
		t.Fatalf("locks/gc.json during a long GC: %+v, %v", legacy, err)
	}
	src := filepath.Join(dir, "new")
	writeAt(t, src, 0, randBytes(t, 4*mib))
	if _, err := sr.Backup(ctx, Source{Path: src}, meta("during-gc", "v-2"), nil); err != nil {
		t.Fatal(err)
	}
	if err := <-gcDone; err != nil {
		t.Fatal(err)
	}
	if _, err := r.store.Stat(ctx, lockKey("gc")); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("locks/gc.json after GC: %v", err)
	}
	slow.mu.Lock()
	defer slow.mu.Unlock()
	if got := strings.Join(slow.events, ","); got != "delete,delete,delete,delete,put" {
		t.Fatalf("store operations %s: the backup uploaded while GC was deleting", got)
	}
}

// TestLapsedBackupDoesNotCommit: a backup whose lock was not refreshed
// for half its lifetime (others may have judged it stale and collected
// packs it dedups into) does not write its manifest; its retry does.
func TestLapsedBackupDoesNotCommit(t *testing.T) {
	setLockTiming(t, time.Hour, 400*time.Millisecond, 20*time.Millisecond)
	r, _ := newRepo(t)
	src := filepath.Join(t.TempDir(), "v")
	writeAt(t, src, 0, randBytes(t, 8*mib))
	sr := &Repo{store: &slowStore{Store: r.store, packDelay: 300 * time.Millisecond}, cfg: r.cfg, Concurrency: 4}
	_, err := sr.Backup(context.Background(), Source{Path: src}, meta("lapse", "v-1"), nil)
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("backup with a lapsed lock: %v, want ErrBusy", err)
	}
	if refs, _ := r.List(context.Background(), ""); len(refs) != 0 {
		t.Fatalf("a lapsed backup committed: %v", refs)
	}
	lockLive = 10 * time.Minute
	m, err := r.Backup(context.Background(), Source{Path: src}, meta("lapse", "v-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, src, restoreTo(t, r, m, t.TempDir()))
}

// TestWorkerPanicIsAnError: the last line of defence turns a panic in a
// worker goroutine into an error instead of a dead process.
func TestWorkerPanicIsAnError(t *testing.T) {
	err := parallel(context.Background(), 4, 100, func(i int) error {
		if i == 42 {
			var m map[string]int
			m["x"] = 1
		}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("parallel with a panicking worker: %v", err)
	}
}

// flakyGets fails reads of manifests as an unreachable store would.
type flakyGets struct{ objstore.Store }

func (f flakyGets) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasPrefix(key, "backups/") {
		return nil, errors.New("connection reset by peer")
	}
	return f.Store.Get(ctx, key)
}

// TestStoreFailureIsNotDamage: a manifest the store fails to return is not
// called damaged by verify (which fails instead), but listings and dedup
// still skip it, and GC refuses.
func TestStoreFailureIsNotDamage(t *testing.T) {
	r, _, _, _ := backedUp(t, 4*mib)
	fr := &Repo{store: flakyGets{r.store}, cfg: r.cfg, Concurrency: 2}
	rep, err := fr.Verify(context.Background(), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("verify through a failing store: %+v, %v; want an error, not a damage report", rep, err)
	}
	if ms, err := fr.ReadableManifests(context.Background(), "", "test"); err != nil || len(ms) != 0 {
		t.Fatalf("listing through a failing store: %v, %v", ms, err)
	}
	if _, err := fr.GC(context.Background(), 0); err == nil {
		t.Fatal("GC ran without being able to read a manifest")
	}
}

// TestForgedPackIsNotDeduplicatedInto: a pack whose index truly hashes to
// its ID but whose blob is not what the index claims (a hash taken from
// another backup's manifest), referred to by a valid manifest, must not
// receive another backup's block: the location is read back before the
// first dedup, found wrong, quarantined, and the backup stores its own
// copy. A claim with the wrong raw length is never used either.
func TestForgedPackIsNotDeduplicatedInto(t *testing.T) {
	r, storeDir, m, src := backedUp(t, 8*mib)
	fresh, err := Open(context.Background(), r.store) // another process: nothing verified yet
	if err != nil {
		t.Fatal(err)
	}
	h := m.Blocks[1].Hash
	for _, rawLen := range []int64{4 * mib, 100} {
		garbage := bytes.Repeat([]byte{7}, 100)
		stored, comp := garbage, compNone
		if rawLen != 100 {
			stored, comp = encodeBlock(randBytes(t, rawLen), make([]byte, 0, blobCap(rawLen)))
		}
		// A field the parser ignores lets the forger pick an ID that sorts
		// before the true pack's, so that it is the index's first choice.
		var idx []byte
		for i := 0; ; i++ {
			idx = []byte(fmt.Sprintf(`[{"h":%q,"o":0,"l":%d,"r":%d,"c":%q,"x":%d}]`, h, len(stored), rawLen, comp, i))
			if hashBlock(idx) < m.Blocks[1].Pack {
				break
			}
		}
		pack := append(append([]byte{}, stored...), idx...)
		n := len(idx)
		pack = append(append(pack, byte(n), byte(n>>8), byte(n>>16), byte(n>>24)), packMagic...)
		id := hashBlock(idx)
		writeObject(t, storeDir, packKey(id), pack)
		evil := Manifest{FormatVersion: 1, ID: model.BackupIDForName(fmt.Sprint("evil", rawLen)), VolumeID: "v-evil", SizeBytes: rawLen, BlockSize: r.BlockSize(),
			Blocks: []Entry{{Offset: 0, Hash: h, Loc: Loc{Pack: id, Offset: 0, Length: int64(len(stored)), RawLength: rawLen, Comp: comp}}}}
		writeObject(t, storeDir, manifestKey(evil.VolumeID, evil.ID), &evil)
		m2, err := fresh.Backup(context.Background(), Source{Path: src}, meta(fmt.Sprint("victim", rawLen), "v-2"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if m2.Blocks[1].Pack == id || rawLen != 100 && m2.Stats.BlocksNew != 1 {
			t.Fatalf("raw length %d: the backup deduplicated into the forged pack: %+v", rawLen, m2.Stats)
		}
		sameContent(t, src, restoreTo(t, fresh, m2, t.TempDir()))
	}
}

// gcInBackground runs GC with minimum age 0 and reports its error, or an
// error if it did not delete exactly want packs.
func gcInBackground(ctx context.Context, r *Repo, want int) <-chan error {
	done := make(chan error, 1)
	go func() {
		rep, err := r.GC(ctx, 0)
		if err == nil && rep.Deleted != want {
			err = fmt.Errorf("GC deleted %d packs, want %d", rep.Deleted, want)
		}
		done <- err
	}()
	return done
}
