package backup

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/objstore"
)

// DefaultGCMinAge protects packs of crashed backups that may still resume.
const DefaultGCMinAge = time.Hour

// GCReport is what GC did.
type GCReport struct {
	Packs        int   `json:"packs"`
	Referenced   int   `json:"referenced"`
	Deleted      int   `json:"deleted"`
	BytesDeleted int64 `json:"bytesDeleted"`
	TooYoung     int   `json:"tooYoung"`
	StaleLocks   int   `json:"staleLocksRemoved"`
}

// GC deletes packs no manifest refers to and that are older than minAge.
// It holds the exclusive GC lock and refuses (ErrBusy) while any backup is
// running, so it never deletes data a running backup may refer to.
func (r *Repo) GC(ctx context.Context, minAge time.Duration) (*GCReport, error) {
	if live, err := r.liveLock(ctx, gcLockID); err != nil {
		return nil, err
	} else if live {
		return nil, fmt.Errorf("%w: another garbage collection is running", ErrBusy)
	}
	info := lockInfo{Kind: "gc", ID: gcLockID, Heartbeat: time.Now().UTC()}
	if err := r.putJSON(ctx, lockKey(gcLockID), &info); err != nil {
		return nil, err
	}
	defer r.store.Delete(context.WithoutCancel(ctx), lockKey(gcLockID))
	rep := &GCReport{}
	locks, err := r.locks(ctx)
	if err != nil {
		return nil, err
	}
	for _, l := range locks {
		if l.Kind != "backup" {
			continue
		}
		if time.Since(l.Heartbeat) < lockLive {
			return nil, fmt.Errorf("%w: backup %s is running (heartbeat %s ago)", ErrBusy, l.ID, time.Since(l.Heartbeat).Round(time.Second))
		}
		// A stale lock belongs to a crashed backup; its packs are kept
		// by the minimum age, so the lock itself can go.
		if err := r.store.Delete(ctx, lockKey(l.ID)); err != nil {
			return nil, err
		}
		rep.StaleLocks++
	}
	ms, err := r.Manifests(ctx)
	if err != nil {
		return nil, err
	}
	ref := map[string]bool{}
	for _, m := range ms {
		for _, e := range m.Blocks {
			ref[e.Pack] = true
		}
	}
	var victims []objstore.Info
	err = r.store.List(ctx, "packs/", func(i objstore.Info) error {
		id := i.Key[strings.LastIndex(i.Key, "/")+1:]
		if !packIDRe.MatchString(id) {
			return nil
		}
		rep.Packs++
		switch {
		case ref[id]:
			rep.Referenced++
		case time.Since(i.ModTime) < minAge:
			rep.TooYoung++
		default:
			victims = append(victims, i)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, v := range victims {
		if err := r.store.Delete(ctx, v.Key); err != nil {
			return rep, err
		}
		rep.Deleted++
		rep.BytesDeleted += v.Size
	}
	klog.InfoS("Backup store garbage collected", "store", r.store, "packs", rep.Packs, "deleted", rep.Deleted, "bytes", rep.BytesDeleted, "tooYoung", rep.TooYoung)
	return rep, nil
}
