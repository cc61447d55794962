// Package remote is the controller backend of Kubernetes mode: it turns
// CSI controller calls into Cairn custom resources assigned to a node
// (placement.go picks the node) and waits for the node agent's status. It
// never touches a disk and links no storage code.
package remote

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/csi"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// Remote is the controller's csi.ControllerBackend in Kubernetes mode. It never
// touches a disk: it writes Volume and Snapshot objects assigned to a node
// and waits until that node's agent reports them done. It keeps no state
// of its own, so any number of replicas can serve the sidecars.
type Remote struct {
	// Client reads (from an informer cache) and writes Cairn objects.
	Client client.Client
	// Reader reads other objects (a backup's source PVC) from the API
	// server, without a cache; Client if nil.
	Reader client.Reader
	// HeartbeatTimeout is how old a StorageNode's heartbeat may be for the
	// node to get new volumes.
	HeartbeatTimeout time.Duration
	// Poll is how often a waiting call re-reads status.
	Poll time.Duration

	creds agentCreds // towards the node agents (metadata.go)
}

var _ csi.ControllerBackend = (*Remote)(nil)

func (r *Remote) poll() time.Duration {
	if r.Poll > 0 {
		return r.Poll
	}
	return 200 * time.Millisecond
}

// Health checks that the API server answers.
func (r *Remote) Health(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var nodes cairnv1.StorageNodeList
	if err := r.Client.List(ctx, &nodes, client.Limit(1)); err != nil {
		return fmt.Errorf("list storage nodes: %w", err)
	}
	return nil
}

// BackupTargets lists the BackupTarget objects.
func (r *Remote) BackupTargets(ctx context.Context) ([]string, error) {
	var list cairnv1.BackupTargetList
	if err := r.Client.List(ctx, &list); err != nil {
		return nil, apiError("list backup targets", err)
	}
	var out []string
	for _, t := range list.Items {
		out = append(out, t.Name)
	}
	sort.Strings(out)
	return out, nil
}

// finalFailure is a failure the node reported that no retry can fix.
type finalFailure struct {
	obj client.Object
	err error
}

func (f *finalFailure) Error() string { return f.err.Error() }
func (f *finalFailure) Unwrap() error { return f.err }

// waitVolume polls a Volume until done says so for a status that describes
// its current spec, a final failure, or the context's deadline (Aborted,
// so the sidecar retries and the retry picks up the same object). wrote is
// the generation this call's own write produced (0: none): a cached read
// older than it, with the status of the spec before, is waited out.
func (r *Remote) waitVolume(ctx context.Context, id string, wrote int64, done func(*cairnv1.Volume) bool) (*cairnv1.Volume, error) {
	var v cairnv1.Volume
	err := r.wait(ctx, func() (bool, string, error) {
		if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &v); err != nil {
			return absent(err)
		}
		return r.judge(&v, max(v.Generation, wrote), v.Status.ObservedGeneration, v.Status.Phase, v.Status.Reason, v.Status.Message, func() bool { return done(&v) })
	}, "volume "+id)
	return &v, err
}

// absent is how a wait treats a failed read: an object it just created may
// not have reached the informer cache yet, so NotFound means keep waiting
// (a retry after the deadline recreates an object that is really gone).
func absent(err error) (bool, string, error) {
	if apierrors.IsNotFound(err) {
		return false, "waiting for the object to appear", nil
	}
	return false, "", apiError("read status", err)
}

// judge decides from a reported status whether a wait is over.
func (r *Remote) judge(obj client.Object, generation, observed int64, phase, reason, msg string, done func() bool) (bool, string, error) {
	if observed < generation {
		return false, "waiting for node agent on " + obj.GetLabels()[cairnv1.NodeLabel], nil
	}
	if phase == cairnv1.PhaseFailed {
		err := model.FromReason(reason, msg)
		if model.Final(err) {
			return false, "", &finalFailure{obj: obj, err: err}
		}
		return false, msg, nil
	}
	if done() {
		return true, "", nil
	}
	return false, msg, nil
}

// wait runs check until it reports done or an error; at the deadline it
// answers Aborted with the last progress message.
func (r *Remote) wait(ctx context.Context, check func() (bool, string, error), what string) error {
	// Leave time to answer before the caller's deadline.
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-min(time.Second, time.Until(dl)/10)))
		defer cancel()
	}
	tick := time.NewTicker(r.poll())
	defer tick.Stop()
	var last string
	for {
		done, msg, err := check()
		if err != nil || done {
			return err
		}
		if msg != "" {
			last = msg
		}
		select {
		case <-ctx.Done():
			if last == "" {
				last = "no progress reported"
			}
			return model.Errorf(model.ErrAborted, "%s is not done yet (%s); retry", what, last)
		case <-tick.C:
		}
	}
}

func (r *Remote) deleteObject(ctx context.Context, obj client.Object) error {
	if err := r.Client.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return apiError("delete "+obj.GetName(), err)
	}
	key := client.ObjectKeyFromObject(obj)
	return r.wait(ctx, func() (bool, string, error) {
		err := r.Client.Get(ctx, key, obj)
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		if err != nil {
			return false, "", apiError("get "+key.Name, err)
		}
		return false, "waiting for the node agent on " + obj.GetLabels()[cairnv1.NodeLabel] + " to remove the data", nil
	}, "deletion of "+key.Name)
}

// deleteData is how a CSI delete removes data: it marks obj with the
// delete annotation (cairnv1.DataDeletionRequested; on a backup's Snapshot
// also with its older name, for agents that predate it), then deletes it
// and waits until its node removed the data. The mark goes straight to the
// API server (a merge patch, not a cached read), so an object this
// replica's cache has not seen yet is still found; a missing object is
// already deleted.
func (r *Remote) deleteData(ctx context.Context, obj client.Object) error {
	ann := map[string]string{cairnv1.DeleteDataAnnotation: "true"}
	if s, ok := obj.(*cairnv1.Snapshot); ok && model.IsBackupHandle(s.Spec.Handle) {
		ann[cairnv1.DeleteBackupAnnotation] = "true"
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return err
	}
	if err := r.Client.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch)); apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		return apiError("mark "+obj.GetName()+" for deletion", err)
	}
	return r.deleteObject(ctx, obj)
}

// DeleteVolume deletes the Volume and waits until its node removed the data.
func notFoundOr(err error, format string, args ...any) error {
	if err == nil || apierrors.IsNotFound(err) {
		return model.Errorf(model.ErrNotFound, format, args...)
	}
	return apiError(fmt.Sprintf(format, args...), err)
}

// apiError reports a failed API call as Unavailable, so the sidecar retries.
func apiError(what string, err error) error {
	if apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) {
		return model.Errorf(model.ErrInvalidArgument, "%s: %v", what, err)
	}
	return model.Errorf(model.ErrUnavailable, "%s: Kubernetes API: %v", what, err)
}
