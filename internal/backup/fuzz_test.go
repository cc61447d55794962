package backup

// Fuzz targets for every parser of store content (docs/FORMAT.md,
// "Validation"). Seeds are below and in testdata/fuzz/; `make fuzz` runs
// each for longer. The property everywhere: no panic, and what passes
// validation is within the bounds the rest of the package relies on.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
)

const fuzzBlockSize = 4 << 20

func seedManifest() []byte {
	h := strings.Repeat("ab", 32)
	m := Manifest{FormatVersion: 1, ID: model.BackupIDForName("s"), VolumeID: "v-1", SizeBytes: 6 << 20, BlockSize: fuzzBlockSize,
		Blocks: []Entry{
			{Offset: 0, Hash: h, Loc: Loc{Pack: h, Offset: 0, Length: 100, RawLength: fuzzBlockSize, Comp: compZstd}},
			{Offset: fuzzBlockSize, Hash: h, Loc: Loc{Pack: h, Offset: 100, Length: 2 << 20, RawLength: 2 << 20, Comp: compNone}},
		}}
	b, _ := json.Marshal(&m)
	return b
}

// FuzzManifest: any bytes as a manifest at backups/v-1/<id>.json.
func FuzzManifest(f *testing.F) {
	f.Add(seedManifest())
	f.Add([]byte(`{"formatVersion":1,"id":"b-x","blocks":[[0,"a","b",-1,1e30,0,"zstd"]]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Manifest
		if json.Unmarshal(b, &m) != nil {
			return
		}
		if m.validate("v-1", model.BackupIDForName("s"), fuzzBlockSize, 0) != nil {
			return
		}
		for _, e := range m.Blocks {
			if e.Offset < 0 || e.Offset+e.RawLength > m.SizeBytes || e.RawLength > fuzzBlockSize || e.Length > int64(blobCap(fuzzBlockSize)) || len(e.Hash) != 64 || len(e.Pack) != 64 {
				t.Fatalf("validated entry out of bounds: %+v", e)
			}
			_ = packKey(e.Pack)
			_ = short(e.Hash)
		}
	})
}

// FuzzPackIndex: any bytes as a pack's index, under the ID they hash to
// (so that parsing goes past the ID check), in a blob area of any size.
func FuzzPackIndex(f *testing.F) {
	f.Add([]byte(`[{"h":"`+strings.Repeat("ab", 32)+`","o":0,"l":100,"r":4194304,"c":"zstd"}]`), int64(100))
	f.Add([]byte(`[{"h":"x","o":-1,"l":1e20}]`), int64(0))
	f.Fuzz(func(t *testing.T, raw []byte, dataLen int64) {
		sum := blake3.Sum256(raw)
		idx, err := parsePackIndex(hex.EncodeToString(sum[:]), raw, dataLen, fuzzBlockSize, 0)
		if err != nil {
			return
		}
		end := int64(0)
		for _, e := range idx {
			if e.Offset < end || e.Offset+e.Length > dataLen || e.RawLength > fuzzBlockSize || e.Length < 1 || !ValidHash(e.Hash) {
				t.Fatalf("validated pack entry out of bounds: %+v (blob area %d)", e, dataLen)
			}
			end = e.Offset + e.Length
		}
	})
}

// FuzzPackObject: any bytes as a whole pack object read through the store.
func FuzzPackObject(f *testing.F) {
	f.Add([]byte("CAIRNPK1"))
	f.Add(append([]byte("[]"), 2, 0, 0, 0, 'C', 'A', 'I', 'R', 'N', 'P', 'K', '1'))
	f.Add(append([]byte("xx"), 0xff, 0xff, 0xff, 0xff, 'C', 'A', 'I', 'R', 'N', 'P', 'K', '1'))
	f.Fuzz(func(t *testing.T, pack []byte) {
		r := memRepo(t)
		id := strings.Repeat("cd", 32)
		if len(pack) >= 12 {
			n := int(binary.LittleEndian.Uint32(pack[len(pack)-12:]))
			if n <= len(pack)-12 {
				sum := blake3.Sum256(pack[len(pack)-12-n : len(pack)-12])
				id = hex.EncodeToString(sum[:])
			}
		}
		if err := r.store.Put(context.Background(), packKey(id), bytes.NewReader(pack), int64(len(pack))); err != nil {
			t.Fatal(err)
		}
		_, _ = r.readPackIndex(context.Background(), id)
	})
}

// FuzzLock: any bytes as a lock object.
func FuzzLock(f *testing.F) {
	f.Add([]byte(`{"kind":"backup","id":"` + model.BackupIDForName("s") + `","heartbeat":"2026-01-01T00:00:00Z","state":"running","packs":["` + strings.Repeat("ab", 32) + `"]}`))
	f.Add([]byte(`{"kind":"gc","id":"gc"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, key := range []string{lockKey(model.BackupIDForName("s")), lockKey("gc"), lockKey("gc-0123456789abcdef")} {
			var l lockInfo
			if json.Unmarshal(b, &l) != nil || l.validate(key) != nil {
				continue
			}
			for _, p := range l.Packs {
				_ = packKey(p)
			}
		}
	})
}

// FuzzConfig: any bytes as cairn-backup.json.
func FuzzConfig(f *testing.F) {
	f.Add([]byte(`{"formatVersion":1,"blockSize":4194304,"hash":"blake3-256","compression":"zstd"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c StoreConfig
		if json.Unmarshal(b, &c) != nil || c.validate() != nil {
			return
		}
		if c.BlockSize < MinBlockSize || c.BlockSize > MaxBlockSize {
			t.Fatalf("validated block size %d", c.BlockSize)
		}
		_ = blobCap(c.BlockSize)
	})
}

// FuzzDecodeBlock: any stored bytes with any entry fields decode to at
// most the raw length, or fail.
func FuzzDecodeBlock(f *testing.F) {
	_, stored, comp := PrepareBlock(bytes.Repeat([]byte("cairn"), 1000))
	f.Add(stored, comp, int64(5000))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd}, compZstd, int64(4<<20))
	f.Fuzz(func(t *testing.T, stored []byte, comp string, rawLen int64) {
		raw, err := (*keyring)(nil).decodeBlock(stored, comp, rawLen, strings.Repeat("0", 64), nil)
		if err == nil && int64(len(raw)) != rawLen {
			t.Fatalf("decoded %d bytes for raw length %d", len(raw), rawLen)
		}
	})
}

// FuzzQuarantineKey: any key under quarantine/.
func FuzzQuarantineKey(f *testing.F) {
	f.Add("quarantine/" + strings.Repeat("ab", 32) + "/4194304.json")
	f.Add("quarantine/x/-1.json")
	f.Fuzz(func(t *testing.T, key string) {
		l, ok := parseQuarantineKey(key)
		if ok && (l.off < 0 || !ValidHash(l.pack) || quarantineKey(l) != key && !strings.HasPrefix(key, quarantinePrefix)) {
			t.Fatalf("accepted %q as %+v", key, l)
		}
		_ = lockKind(key)
	})
}

// memRepo is a Repo on a fresh filesystem store in a temporary directory.
func memRepo(t *testing.T) *Repo {
	t.Helper()
	// Not t.TempDir(): a fuzz seed's name ("seed#0") puts a '#' in it,
	// which a URL takes for a fragment.
	dir, err := os.MkdirTemp("", "cairn-fuzz-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	st, err := objstore.Open(context.Background(), "file://"+dir, objstore.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	return &Repo{store: st, cfg: StoreConfig{FormatVersion: 1, BlockSize: fuzzBlockSize, Hash: hashName, Compression: compressionName, CreatedAt: time.Now()}, Concurrency: 2}
}
