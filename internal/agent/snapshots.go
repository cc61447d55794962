package agent

import (
	"context"
	"errors"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

func (a *Agent) reconcileSnapshot(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var s cairnv1.Snapshot
	if err := a.client.Get(ctx, req.NamespacedName, &s); err != nil {
		return reconcile.Result{}, a.gone(err)
	}
	if s.Spec.NodeName != a.Node {
		return reconcile.Result{}, nil
	}
	log := klog.FromContext(ctx).WithValues("snapshot", s.Name, "type", s.Spec.Type, "handle", s.Spec.Handle)
	if !s.DeletionTimestamp.IsZero() {
		a.stopVerify(s.Name)
		a.progress.forget("upload/" + s.Name)
		return reconcile.Result{}, a.deleteSnapshot(ctx, log, &s)
	}
	if why := snapshotNameProblem(&s); why != "" {
		return reconcile.Result{}, a.refuse(ctx, &s, snapshotStatus(&s), why)
	}
	if s.Status.ReadyToUse && s.Status.ObservedGeneration == s.Generation {
		return a.reconcileVerify(ctx, &s)
	}
	orig := s.DeepCopy()
	var err error
	msg := ""
	switch {
	case s.Spec.Type == cairnv1.SnapshotLocal:
		var snap *model.Snapshot
		if recovered(&s) || s.Spec.GroupSnapshot != "" {
			// Never take a new snapshot in place of one that is gone; a
			// group member is taken only with its group.
			snap, err = a.Engine.GetSnapshot(ctx, s.Name)
		} else {
			snap, err = a.Engine.CreateSnapshot(ctx, s.Spec.Name, s.Spec.SourceVolumeID, s.Spec.Parameters)
		}
		if err == nil {
			setLocalSnapshotStatus(&s, snap)
			msg = "snapshot taken on node " + a.Node
		}
	default:
		var info *model.BackupInfo
		if err = a.ensureTarget(ctx, s.Spec.BackupTarget); err == nil {
			if s.Spec.Name != "" {
				info, err = a.Engine.CreateBackup(ctx, s.Spec.Name, s.Spec.SourceVolumeID, s.Spec.BackupTarget, kube.Claim(s.Spec.SourceClaim))
			} else {
				info, err = a.Engine.GetBackup(ctx, s.Spec.Handle)
			}
		}
		if err == nil {
			s.Status.SnapshotID, s.Status.SizeBytes, s.Status.SourceVolumeID = info.Handle.String(), info.SizeBytes, info.Handle.VolumeID
			s.Status.CreationTime = &metav1.Time{Time: info.CreatedAt}
			s.Status.ReadyToUse = info.Ready
			switch {
			case info.Ready:
				msg = "backup committed to target " + info.Handle.Target
			case info.LastError != "":
				err = model.Errorf(model.ErrUnavailable, "upload to %s failed, retrying: %s", info.Handle.Target, info.LastError)
			default:
				err = model.Errorf(model.ErrAborted, "uploading: %s", model.TransferProgress(info.BytesDone, info.SizeBytes, info.Elapsed))
			}
		}
	}
	if errors.Is(err, model.ErrAborted) && orig.Status.Phase == cairnv1.PhasePending && orig.Status.CreationTime != nil {
		// An upload under way whose progress was written lately.
		if wait := a.progressDue("upload/" + s.Name); wait > 0 {
			return reconcile.Result{RequeueAfter: wait}, nil
		}
	}
	if s.Status.ReadyToUse || err == nil {
		a.progress.forget("upload/" + s.Name)
	}
	setOutcome(snapshotStatus(&s), s.Generation, err, msg)
	switch {
	case s.Status.ReadyToUse:
		log.Info("Snapshot ready")
		a.event(&s, s.Spec.Parameters, false, "Ready", "%s", msg)
	case err != nil && !errors.Is(err, model.ErrAborted) && orig.Status.Message != s.Status.Message:
		log.Error(err, "Snapshot not ready")
		a.event(&s, s.Spec.Parameters, true, "Failed", "%v", err)
	case orig.Status.CreationTime == nil && s.Status.CreationTime != nil:
		a.event(&s, s.Spec.Parameters, false, "Uploading", "Point-in-time copy taken; uploading to backup target %s", s.Spec.BackupTarget)
	}
	if perr := a.client.Status().Patch(ctx, &s, client.MergeFrom(orig)); perr != nil {
		return reconcile.Result{}, perr
	}
	if errors.Is(err, model.ErrUnavailable) && s.Status.CreationTime != nil {
		// The engine retries the upload itself; look again for progress.
		return reconcile.Result{RequeueAfter: a.Progress}, nil
	}
	return a.retryAfter(err)
}
