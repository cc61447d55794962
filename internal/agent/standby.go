package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// Standby polling bounds (docs/STANDBY.md).
const (
	defaultStandbyPoll = time.Minute
	minStandbyPoll     = 10 * time.Second
	// finalSyncTimeout bounds activation's last check: when the target
	// does not answer in time, the copy activates with what it holds.
	finalSyncTimeout = time.Minute
)

// reconcileStandby keeps a StandbyVolume's copy on this node: it follows
// the volume's backups until the spec asks for activation, then turns the
// copy into a Volume (docs/STANDBY.md).
func (a *Agent) reconcileStandby(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var sv cairnv1.StandbyVolume
	if err := a.client.Get(ctx, req.NamespacedName, &sv); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if sv.Spec.NodeName != a.Node {
		return reconcile.Result{}, nil
	}
	id := cairnv1.StandbyID(sv.UID)
	log := klog.FromContext(ctx).WithValues("standby", req.NamespacedName, "id", id)
	if !sv.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, a.deleteStandby(ctx, log, &sv, id)
	}
	if sv.Status.Phase == cairnv1.StandbyActivated {
		// A volume now; the object only records where it went. What an
		// activation interrupted after its commit left (extra names of
		// the volume's data) goes.
		if _, err := a.Engine.DeleteStandby(ctx, id, sv.Spec.BackupTargetName, sv.Spec.SourceVolumeID, false); err != nil {
			log.Error(err, "Removing an activated standby's directory")
		}
		return reconcile.Result{}, nil
	}
	if !controllerutil.ContainsFinalizer(&sv, cairnv1.Finalizer) {
		patch := client.MergeFrom(sv.DeepCopy())
		controllerutil.AddFinalizer(&sv, cairnv1.Finalizer)
		if err := a.client.Patch(ctx, &sv, patch); err != nil {
			return reconcile.Result{}, err
		}
	}
	orig := sv.DeepCopy()
	st := &sv.Status
	if why := standbySpecProblem(&sv.Spec); why != "" {
		err := model.Errorf(model.ErrInvalidArgument, "%s", why)
		st.Phase = cairnv1.PhaseFailed
		setStandbyOutcome(&sv, err, "")
		return reconcile.Result{}, a.patchStandby(ctx, orig, &sv)
	}
	poll := defaultStandbyPoll
	if p := sv.Spec.PollInterval; p != nil && p.Duration > 0 {
		poll = max(p.Duration, minStandbyPoll)
	}
	err := a.ensureTarget(ctx, sv.Spec.BackupTargetName)
	if sv.Spec.Activate {
		return a.activateStandby(ctx, log, orig, &sv, id, err)
	}
	if st.Phase == "" {
		st.Phase = cairnv1.PhasePending
	}
	if err == nil {
		if st.BackupID == "" {
			st.Phase, st.Message = cairnv1.StandbyRestoring, "restoring the newest backup in full"
			_ = a.patchStandby(ctx, orig, &sv) // progress only
			orig = sv.DeepCopy()
		}
		var rep backup.StandbyReport
		rep, err = a.Engine.StandbyStep(ctx, id, sv.Spec.BackupTargetName, sv.Spec.SourceVolumeID)
		a.recordStep(&sv, rep, err)
		if err == nil {
			a.capacityChanged()
			if rep.Applied {
				log.Info("Standby updated", "backup", rep.BackupID, "full", rep.Full, "blocks", rep.Delta.BlocksFetched, "bytes", rep.Delta.BytesDownloaded)
				a.event(&sv, nil, false, "Synced", "Standby on node %s holds backup %s (%s): %d blocks, %d bytes downloaded%s",
					a.Node, rep.BackupID, rep.CompletedAt.UTC().Format(time.RFC3339), rep.Delta.BlocksFetched, rep.Delta.BytesDownloaded, fullNote(rep.Full))
			}
		}
	}
	msg := ""
	if err == nil {
		msg = fmt.Sprintf("holds backup %s on node %s; %d newer", st.BackupID, a.Node, st.BehindBackups)
	} else if orig.Status.Message != err.Error() {
		log.Error(err, "Standby step failed")
		a.event(&sv, nil, true, "SyncFailed", "%v", err)
	}
	setStandbyOutcome(&sv, err, msg)
	if perr := a.patchStandby(ctx, orig, &sv); perr != nil {
		return reconcile.Result{}, perr
	}
	if err != nil && model.Final(err) {
		return reconcile.Result{RequeueAfter: poll}, nil // a spec fix or the target may change it
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{RequeueAfter: poll}, nil
}

func fullNote(full bool) string {
	if full {
		return " (first, full restore)"
	}
	return ""
}

// standbySpecProblem says which spec field cannot be followed, or "".
func standbySpecProblem(s *cairnv1.StandbyVolumeSpec) string {
	switch {
	case !model.ValidTargetName(s.BackupTargetName):
		return fmt.Sprintf("spec.backupTargetName %q is not a backup target name", s.BackupTargetName)
	case !model.ValidStoreVolumeID(s.SourceVolumeID):
		return fmt.Sprintf("spec.sourceVolumeID %q is not a volume ID of a backup target", s.SourceVolumeID)
	}
	return ""
}

// recordStep writes what a step found into the status.
func (a *Agent) recordStep(sv *cairnv1.StandbyVolume, rep backup.StandbyReport, err error) {
	st := &sv.Status
	if rep.Latest != "" {
		st.LatestBackupID = rep.Latest
		st.LatestBackupTime = &metav1.Time{Time: rep.LatestCompletedAt}
		st.BehindBackups = int32(rep.Behind)
	}
	if rep.BackupID != "" {
		h := model.BackupHandle{Target: sv.Spec.BackupTargetName, VolumeID: sv.Spec.SourceVolumeID, BackupID: rep.BackupID}
		st.BackupID, st.BackupHandle = rep.BackupID, h.String()
		st.BackupTime = &metav1.Time{Time: rep.CompletedAt}
		st.SizeBytes, st.FsType, st.Block = rep.SizeBytes, rep.FsType, rep.Block
		st.SourceClaim = kube.ClaimObject(rep.Claim)
	}
	if rep.Applied {
		st.LastSyncBytes, st.LastSyncBlocks, st.LastSyncFull = rep.Delta.BytesDownloaded, int32(rep.Delta.BlocksFetched), rep.Full
	}
	if err == nil {
		st.LastSyncTime = &metav1.Time{Time: time.Now()}
		st.Phase = cairnv1.StandbyFollowing
	}
}

// activateStandby turns the copy into a volume: one last check, bounded,
// then the engine's activation, the Volume object, the status.
func (a *Agent) activateStandby(ctx context.Context, log klog.Logger, orig, sv *cairnv1.StandbyVolume, id string, targetErr error) (reconcile.Result, error) {
	start := time.Now()
	st := &sv.Status
	note := ""
	if st.Phase != cairnv1.StandbyActivating {
		st.Phase, st.Message = cairnv1.StandbyActivating, "activating on node "+a.Node
		_ = a.patchStandby(ctx, orig, sv)
		orig = sv.DeepCopy()
	}
	name := cairnv1.StandbyVolumeName(sv.UID)
	_, verr := a.Engine.GetVolume(ctx, model.VolumeIDForName(name))
	if err := targetErr; err == nil && verr != nil {
		// The last check. A copy that holds a complete backup gets a
		// bounded one (the target may be gone: it activates with what it
		// holds); one that holds none yet, or whose apply was
		// interrupted (a mix of two backups), must finish first.
		held, herr := a.Engine.StandbyHeld(id, sv.Spec.SourceVolumeID)
		complete := herr == nil && held != nil && held.BackupID != "" && held.Applying == ""
		sctx, cancel := ctx, context.CancelFunc(func() {})
		if complete {
			sctx, cancel = context.WithTimeout(ctx, finalSyncTimeout)
		}
		rep, err := a.Engine.StandbyStep(sctx, id, sv.Spec.BackupTargetName, sv.Spec.SourceVolumeID)
		cancel()
		if held, herr := a.Engine.StandbyHeld(id, sv.Spec.SourceVolumeID); err != nil && complete && herr == nil && held != nil && held.Applying != "" {
			// The bound cut an apply short: finish it.
			rep, err = a.Engine.StandbyStep(ctx, id, sv.Spec.BackupTargetName, sv.Spec.SourceVolumeID)
		}
		a.recordStep(sv, rep, err)
		if err != nil && !errors.Is(err, model.ErrFailedPrecondition) {
			note = fmt.Sprintf(" (the last check failed, so it holds the backup it had: %v)", err)
		}
	} else if err != nil {
		note = fmt.Sprintf(" (the target could not be opened, so it holds the backup it had: %v)", err)
	}
	held, herr := a.Engine.StandbyHeld(id, sv.Spec.SourceVolumeID)
	if herr == nil && held != nil && held.BackupID != "" {
		st.SizeBytes, st.FsType, st.Block = held.SizeBytes, held.FsType, held.Block
	}
	req := model.CreateVolumeRequest{Name: name, Block: st.Block, FsType: st.FsType}
	if c := st.Claim; c != nil {
		req.RequiredBytes = c.RequestBytes
	}
	vol, err := a.Engine.ActivateStandby(ctx, id, sv.Spec.BackupTargetName, sv.Spec.SourceVolumeID, req)
	if err == nil {
		err = a.ensureVolumeObject(ctx, vol)
	}
	if err != nil {
		log.Error(err, "Standby activation failed")
		if orig.Status.Message != err.Error() {
			a.event(sv, nil, true, "ActivationFailed", "%v", err)
		}
		setStandbyOutcome(sv, err, "")
		st.Phase = cairnv1.StandbyActivating
		if perr := a.patchStandby(ctx, orig, sv); perr != nil {
			return reconcile.Result{}, perr
		}
		if model.Final(err) {
			return reconcile.Result{RequeueAfter: time.Minute}, nil
		}
		return reconcile.Result{RequeueAfter: 5 * time.Second}, nil
	}
	a.capacityChanged()
	st.Phase, st.VolumeID, st.SizeBytes = cairnv1.StandbyActivated, vol.ID, vol.SizeBytes
	st.ActivatedTime = &metav1.Time{Time: time.Now()}
	st.ActivationDuration = &metav1.Duration{Duration: time.Since(start).Round(time.Millisecond)}
	msg := fmt.Sprintf("activated into volume %s on node %s (backup %s)%s", vol.ID, a.Node, st.BackupID, note)
	setStandbyOutcome(sv, nil, msg)
	log.Info("Standby activated", "volumeID", vol.ID, "duration", st.ActivationDuration.Duration)
	a.event(sv, nil, note != "", "Activated", "Standby %s", msg)
	return reconcile.Result{}, a.patchStandby(ctx, orig, sv)
}

// ensureVolumeObject creates the Volume an activated copy became (as the
// controller would for a provisioned one), unless it exists.
func (a *Agent) ensureVolumeObject(ctx context.Context, ev *model.Volume) error {
	var probe cairnv1.Volume
	if err := a.reader.Get(ctx, client.ObjectKey{Name: ev.ID}, &probe); err == nil {
		return nil
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	v := a.volumeObject(ev)
	if err := a.client.Create(ctx, v); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create Volume %s: %w", ev.ID, err)
	}
	orig := v.DeepCopy()
	v.Status.SizeBytes, v.Status.FsType = ev.SizeBytes, ev.FsType
	setOutcome(volumeStatus(v), v.Generation, nil, fmt.Sprintf("%d bytes on node %s (an activated standby)", ev.SizeBytes, a.Node))
	if err := a.client.Status().Patch(ctx, v, client.MergeFrom(orig)); err != nil {
		klog.ErrorS(err, "Status of an activated standby's Volume not written; its reconcile fills it", "volumeID", ev.ID)
	}
	return nil
}

// deleteStandby removes the copy of a deleted StandbyVolume, unless it
// may be the last copy of its data (engine.DeleteStandby).
func (a *Agent) deleteStandby(ctx context.Context, log klog.Logger, sv *cairnv1.StandbyVolume, id string) error {
	if !controllerutil.ContainsFinalizer(sv, cairnv1.Finalizer) {
		return nil
	}
	if sv.Status.Phase != cairnv1.StandbyActivated {
		if err := a.ensureTarget(ctx, sv.Spec.BackupTargetName); err != nil {
			log.V(2).Info("Target not configured for a deleted standby", "err", err)
		}
		kept, err := a.Engine.DeleteStandby(ctx, id, sv.Spec.BackupTargetName, sv.Spec.SourceVolumeID, cairnv1.DataDeletionRequested(sv))
		if err != nil {
			return err
		}
		if kept != "" {
			log.Info("Standby deleted; its copy is kept", "why", kept)
			a.event(sv, nil, true, "DataKept", "StandbyVolume deleted; its copy stays on node %s under %s/standby/%s because %s (annotate %s=true before deleting to remove it)",
				a.Node, a.Engine.Root(), id, kept, cairnv1.DeleteDataAnnotation)
		} else {
			log.Info("Standby copy removed")
		}
		a.capacityChanged()
	}
	return a.removeFinalizer(ctx, sv)
}

func (a *Agent) patchStandby(ctx context.Context, orig, sv *cairnv1.StandbyVolume) error {
	return client.IgnoreNotFound(a.client.Status().Patch(ctx, sv, client.MergeFrom(orig)))
}

// setStandbyOutcome records an attempt's result in the status (reason,
// message, Ready condition); the phase is set by the caller.
func setStandbyOutcome(sv *cairnv1.StandbyVolume, err error, okMsg string) {
	st := &sv.Status
	phase := st.Phase
	setOutcome(statusFields{&phase, &st.Reason, &st.Message, &st.ObservedGeneration, &st.Conditions}, sv.Generation, err, okMsg)
	if err != nil && st.Phase == "" {
		st.Phase = cairnv1.PhasePending
	}
}
