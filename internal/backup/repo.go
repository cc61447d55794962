package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
)

// Errors callers test with errors.Is.
var (
	ErrNotFound = errors.New("backup not found")
	ErrCorrupt  = errors.New("backup data corrupt")
)

// Repo is a backup store on an object store.
type Repo struct {
	store objstore.Store
	cfg   StoreConfig
	// enc holds an encrypted store's keys; nil for a plain store.
	enc    *keyring
	master []byte

	mu sync.Mutex
	// packs caches validated pack indexes by pack ID; a pack's ID is the
	// hash of its index, so an entry never goes stale, only missing.
	packs map[string][]packIndexEntry
	// bad holds blob locations found damaged in this process.
	bad map[badLoc]bool
	// verified holds blob locations this process wrote or read back and
	// checked: a backup dedups into them without reading them again.
	verified map[blobAt]bool
	// Concurrency bounds parallel object requests.
	Concurrency int
}

// Open opens the plain backup store on st, initialising it on first use.
func Open(ctx context.Context, st objstore.Store) (*Repo, error) { return OpenKeyed(ctx, st, nil) }

// OpenKeyed opens the backup store on st with its master key (nil for a
// plain store); a new store is created encrypted when a key is given. A
// key for a plain store, none for an encrypted one, or a wrong one is
// ErrKey, found before anything but the configuration is read.
func OpenKeyed(ctx context.Context, st objstore.Store, master []byte) (*Repo, error) {
	r := &Repo{store: st, Concurrency: 8, packs: map[string][]packIndexEntry{}}
	err := r.readJSON(ctx, configKey, maxConfigBytes, -1, &r.cfg)
	if errors.Is(err, objstore.ErrNotFound) {
		created, cerr := r.create(ctx, master)
		if cerr != nil || created != nil {
			return created, cerr
		}
		// Another client created the store first: open what it made.
		r.cfg = StoreConfig{}
		err = r.readJSON(ctx, configKey, maxConfigBytes, -1, &r.cfg)
	}
	if err == nil {
		err = r.cfg.validate()
	}
	if err == nil {
		switch {
		case r.cfg.Encryption == nil && master != nil:
			err = fmt.Errorf("%w: the store is not encrypted, but a key was given (an existing store keeps what it is: use a new target for encrypted backups)", ErrKey)
		case r.cfg.Encryption != nil && master == nil:
			err = fmt.Errorf("%w: the store is encrypted and no key was given", ErrKey)
		case r.cfg.Encryption != nil:
			r.enc, err = r.cfg.Encryption.open(master)
			r.master = master
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open backup store %s: %w", st, err)
	}
	return r, nil
}

// create initialises a new store, with a create-only write so that of
// clients creating it at once exactly one configuration (and data key)
// wins; it returns nil, nil when another client's won.
func (r *Repo) create(ctx context.Context, master []byte) (*Repo, error) {
	r.cfg = StoreConfig{FormatVersion: formatPlain, BlockSize: DefaultBlockSize, Hash: hashName, Compression: compressionName, CreatedAt: time.Now().UTC()}
	if master != nil {
		enc, keys, err := newEncryption(master)
		if err != nil {
			return nil, fmt.Errorf("initialise backup store %s: %w", r.store, err)
		}
		r.cfg.FormatVersion, r.cfg.Encryption, r.enc, r.master = formatEncrypted, enc, keys, master
	}
	b, err := json.Marshal(&r.cfg)
	if err != nil {
		return nil, err
	}
	err = r.store.Create(ctx, configKey, bytes.NewReader(b), int64(len(b)))
	if errors.Is(err, objstore.ErrExists) {
		r.enc, r.master = nil, nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("initialise backup store %s: %w", r.store, err)
	}
	return r, nil
}

// checkConfig re-reads the store's configuration before a backup commits:
// if it is not the one this Repo works with (a store created at the same
// moment by a client whose conditional write the store did not honour,
// or a rotation elsewhere to another data key), committing would publish
// a backup no other client could read. ErrConfigChanged tells the caller
// to open the store again and retry.
func (r *Repo) checkConfig(ctx context.Context) error {
	var now StoreConfig
	if err := r.readJSON(ctx, configKey, maxConfigBytes, -1, &now); err != nil {
		return fmt.Errorf("re-read %s of %s: %w", configKey, r.store, err)
	}
	same := now.FormatVersion == r.cfg.FormatVersion && now.BlockSize == r.cfg.BlockSize && (now.Encryption == nil) == (r.cfg.Encryption == nil)
	if same && now.Encryption != nil {
		same = now.Encryption.Salt == r.cfg.Encryption.Salt && r.enc != nil && r.sameDataKey(now.Encryption)
	}
	if !same {
		return fmt.Errorf("%w: %s of %s is not the one this client opened; open the store again", ErrConfigChanged, configKey, r.store)
	}
	return nil
}

// sameDataKey says whether c wraps this Repo's data key (a rotation
// changes the wrapping, not the key).
func (r *Repo) sameDataKey(c *EncryptionConfig) bool {
	if c.DataKey == r.cfg.Encryption.DataKey {
		return true
	}
	dek, err := c.dataKey(r.master)
	return err == nil && newKeyring(dek).sameAs(r.enc)
}

// Encrypted reports whether the store is encrypted.
func (r *Repo) Encrypted() bool { return r.enc != nil }

// RotateKey wraps the store's data key with a new master key and
// replaces the configuration (one atomic write); no blob or manifest is
// rewritten. The Repo must have been opened with the current key, and
// the configuration must not have changed since.
func (r *Repo) RotateKey(ctx context.Context, next []byte) error {
	if r.enc == nil {
		return fmt.Errorf("%w: the store is not encrypted", ErrKey)
	}
	var now StoreConfig
	if err := r.readJSON(ctx, configKey, maxConfigBytes, -1, &now); err != nil {
		return err
	}
	if now.Encryption == nil || now.Encryption.KeyCheck != r.cfg.Encryption.KeyCheck {
		return fmt.Errorf("%w: the store's key changed since it was opened", ErrKey)
	}
	enc, err := r.cfg.Encryption.rewrapped(r.master, next)
	if err != nil {
		return err
	}
	cfg := r.cfg
	cfg.Encryption = enc
	if err := r.putJSON(ctx, configKey, &cfg); err != nil {
		return fmt.Errorf("rotate the key of %s: %w", r.store, err)
	}
	// Read it back: of two rotations at once only one key can win.
	var after StoreConfig
	if err := r.readJSON(ctx, configKey, maxConfigBytes, -1, &after); err != nil {
		return fmt.Errorf("rotate the key of %s: read back: %w", r.store, err)
	}
	if after.Encryption == nil || after.Encryption.KeyCheck != enc.KeyCheck {
		return fmt.Errorf("%w: another rotation of %s won at the same moment; its key is the store's now", ErrKey, r.store)
	}
	r.cfg, r.master = cfg, next
	return nil
}

// Store returns the underlying object store.
func (r *Repo) Store() objstore.Store { return r.store }

// BlockSize is the store's block size.
func (r *Repo) BlockSize() int64 { return r.cfg.BlockSize }

func (r *Repo) putJSON(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.store.Put(ctx, key, bytes.NewReader(b), int64(len(b)))
}

// Manifest loads a committed backup. A manifest that fails validation is
// reported as ErrCorrupt (or ErrUnsupported for a newer format), naming
// the object.
func (r *Repo) Manifest(ctx context.Context, volumeID, backupID string) (*Manifest, error) {
	return r.manifest(ctx, volumeID, backupID, -1)
}

// manifest is Manifest with the object's size if a listing gave it (-1
// if not).
func (r *Repo) manifest(ctx context.Context, volumeID, backupID string, size int64) (*Manifest, error) {
	if !model.ValidStoreVolumeID(volumeID) || !model.ValidBackupID(backupID) {
		return nil, fmt.Errorf("%w: %s/%s is not a valid backup name", ErrNotFound, volumeID, backupID)
	}
	var m Manifest
	key := manifestKey(volumeID, backupID)
	b, err := r.readObject(ctx, key, maxManifestBytes+r.enc.objectOverhead(), size)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s/%s in %s", ErrNotFound, volumeID, backupID, r.store)
	}
	if err == nil {
		b, err = r.enc.openObject(key, b)
	}
	if err == nil {
		err = parseJSON(key, b, &m)
	}
	if err == nil {
		err = m.validate(volumeID, backupID, r.cfg.BlockSize, r.enc.overhead())
	}
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// BackupRef names a committed backup.
type BackupRef struct {
	VolumeID string `json:"volumeId"`
	BackupID string `json:"backupId"`
}

// less orders backup references by volume, then backup ID.
func (a BackupRef) less(b BackupRef) bool {
	return a.VolumeID < b.VolumeID || a.VolumeID == b.VolumeID && a.BackupID < b.BackupID
}

// List returns the committed backups, optionally of one volume, sorted.
func (r *Repo) List(ctx context.Context, volumeID string) ([]BackupRef, error) {
	ls, err := r.list(ctx, volumeID)
	out := make([]BackupRef, len(ls))
	for i, l := range ls {
		out[i] = l.BackupRef
	}
	return out, err
}

type listed struct {
	BackupRef
	size int64
}

func (r *Repo) list(ctx context.Context, volumeID string) ([]listed, error) {
	prefix := "backups/"
	if volumeID != "" {
		prefix += volumeID + "/"
	}
	var out []listed
	err := r.store.List(ctx, prefix, func(info objstore.Info) error {
		rest := strings.TrimPrefix(info.Key, "backups/")
		vol, file, ok := strings.Cut(rest, "/")
		id := strings.TrimSuffix(file, ".json")
		if ok && path.Ext(file) == ".json" && model.ValidBackupID(id) && model.ValidStoreVolumeID(vol) {
			out = append(out, listed{BackupRef{VolumeID: vol, BackupID: id}, info.Size})
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].less(out[j].BackupRef) })
	return out, err
}

// Damage is a manifest that could not be read or failed validation.
type Damage struct {
	BackupRef
	Key string `json:"key"`
	Err error  `json:"-"`
}

func (d Damage) String() string { return d.Key + ": " + d.Err.Error() }

// Damaged reports whether the manifest is invalid; otherwise it is of a
// newer format (ErrUnsupported) or could not be read (the store failed).
func (d Damage) Damaged() bool { return errors.Is(d.Err, ErrCorrupt) }

// MarshalJSON writes a damaged manifest with its error as a string.
func (d Damage) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{"key": d.Key, "volumeId": d.VolumeID, "backupId": d.BackupID, "error": d.Err.Error()})
}

// Manifests loads the committed backups' manifests (of one volume, or all
// if volumeID is empty) in parallel. A manifest that cannot be read or is
// invalid does not fail the call: it is returned in damaged, so one bad
// object cannot stop every other backup's listing, dedup or restore. The
// error is for a listing that failed or a cancelled context.
func (r *Repo) Manifests(ctx context.Context, volumeID string) (ms []*Manifest, damaged []Damage, err error) {
	refs, err := r.list(ctx, volumeID)
	if err != nil {
		return nil, nil, err
	}
	out := make([]*Manifest, len(refs))
	errs := make([]error, len(refs))
	err = parallel(ctx, r.Concurrency, len(refs), func(i int) error {
		out[i], errs[i] = r.manifest(ctx, refs[i].VolumeID, refs[i].BackupID, refs[i].size)
		return ctx.Err()
	})
	if err != nil {
		return nil, nil, err
	}
	for i, m := range out {
		switch {
		case m != nil:
			ms = append(ms, m)
		case errors.Is(errs[i], ErrNotFound): // deleted meanwhile
		default:
			damaged = append(damaged, Damage{BackupRef: refs[i].BackupRef, Key: manifestKey(refs[i].VolumeID, refs[i].BackupID), Err: errs[i]})
		}
	}
	return ms, damaged, nil
}

// ReadableManifests is Manifests for operations that skip damage: each
// damaged manifest is logged as a warning naming the object, and only the
// readable ones are returned.
func (r *Repo) ReadableManifests(ctx context.Context, volumeID, op string) ([]*Manifest, error) {
	ms, damaged, err := r.Manifests(ctx, volumeID)
	for _, d := range damaged {
		klog.InfoS("Warning: skipping a damaged backup manifest", "op", op, "store", r.store, "object", d.Key, "err", d.Err)
	}
	return ms, err
}

// Delete deletes a backup's manifest; garbage collection reclaims its data.
// Deleting a missing backup succeeds.
func (r *Repo) Delete(ctx context.Context, volumeID, backupID string) error {
	if !model.ValidStoreVolumeID(volumeID) || !model.ValidBackupID(backupID) {
		return nil
	}
	return r.store.Delete(ctx, manifestKey(volumeID, backupID))
}

// parallel runs fn(0..n-1) on up to workers goroutines and returns the
// first error; it stops handing out work after an error.
func parallel(ctx context.Context, workers, n int, fn func(i int) error) error {
	if workers < 1 {
		workers = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		next     int
		firstErr error
		wg       sync.WaitGroup
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if firstErr != nil || next >= n || ctx.Err() != nil {
					mu.Unlock()
					return
				}
				i := next
				next++
				mu.Unlock()
				if err := safeCall(func() error { return fn(i) }); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
						cancel()
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// safeCall runs fn, turning a panic into an error: the last line of
// defence for worker goroutines, which no gRPC interceptor covers. The
// validation layer (validate.go) is the fix; this only keeps a bug from
// taking the process down.
func safeCall(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			klog.ErrorS(nil, "Panic in a backup store worker", "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("internal error: %v", p)
		}
	}()
	return fn()
}
