package agent

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

func (a *Agent) reconcileVolume(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var v cairnv1.Volume
	if err := a.client.Get(ctx, req.NamespacedName, &v); err != nil {
		return reconcile.Result{}, a.gone(err)
	}
	if v.Spec.NodeName != a.Node {
		return reconcile.Result{}, nil
	}
	log := klog.FromContext(ctx).WithValues("volumeID", v.Name, "name", v.Spec.Name)
	if !v.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, a.deleteVolume(ctx, log, &v)
	}
	if v.Name != model.VolumeIDForName(v.Spec.Name) {
		// Not an object the controller wrote: the engine would make or
		// find a volume under another ID than this object's name.
		return reconcile.Result{}, a.refuse(ctx, &v, volumeStatus(&v), fmt.Sprintf("object name %q is not the volume ID of spec.name %q", v.Name, v.Spec.Name))
	}
	done := v.Status.Phase == cairnv1.PhaseReady && v.Status.ObservedGeneration == v.Generation
	if done {
		return reconcile.Result{}, nil
	}
	orig := v.DeepCopy()
	ev, err := a.Engine.GetVolume(ctx, v.Name)
	created := false
	if errors.Is(err, model.ErrNotFound) && recovered(&v) {
		err = model.Errorf(model.ErrNotFound, "volume %s was re-created from node %s's data root, whose data is now gone; nothing is made in its place", v.Name, a.Node)
	} else if errors.Is(err, model.ErrNotFound) && orig.Status.SizeBytes > 0 {
		// It existed (its status says how big) and its data is gone from
		// the data root: an empty volume in its place would hide the loss.
		err = model.Errorf(model.ErrFailedPrecondition, "volume %s existed on node %s but its data is gone from the data root; nothing is made in its place (its health says DataLoss: restore it from a snapshot or backup)", v.Name, a.Node)
	} else if errors.Is(err, model.ErrNotFound) {
		if err = a.prepareSource(ctx, v.Spec.Source); err == nil {
			cctx := ctx
			s := v.Spec.Source
			elsewhere := s != nil && s.Kind != cairnv1.SourceBackup && s.NodeName != "" && s.NodeName != a.Node
			if s != nil && (s.Kind == cairnv1.SourceBackup || elsewhere) {
				// A download or a copy from another node may take
				// hours: the engine goes on in the background and
				// answers Aborted with its progress at the deadline;
				// the status shows it and we look again.
				var cancel context.CancelFunc
				cctx, cancel = context.WithTimeout(ctx, a.Progress)
				defer cancel()
			}
			if elsewhere {
				ev, err = a.Engine.ImportVolume(cctx, createRequest(&v), s.NodeName, a.fetchFrom(s.NodeName, v.Name))
			} else {
				ev, err = a.Engine.CreateVolume(cctx, createRequest(&v))
			}
			created = err == nil
		}
	}
	msg := ""
	if err == nil {
		v.Status.SizeBytes, v.Status.FsType = ev.SizeBytes, ev.FsType
		msg = fmt.Sprintf("%d bytes on node %s", ev.SizeBytes, a.Node)
		// Expand when the file is smaller than asked, and also when it is
		// not but the status never recorded the growth (the agent died, or
		// its status patch failed, after the engine grew the file): the
		// engine's answer is idempotent and says whether the node must
		// still grow the file system.
		unrecorded := !created && orig.Status.SizeBytes > 0 && v.Spec.RequiredBytes > orig.Status.SizeBytes
		if v.Spec.RequiredBytes > ev.SizeBytes || unrecorded {
			var res *model.ExpandResult
			if res, err = a.Engine.ExpandVolume(ctx, v.Name, v.Spec.RequiredBytes, v.Spec.LimitBytes); err == nil {
				v.Status.SizeBytes, v.Status.NodeExpansionRequired = res.SizeBytes, res.NodeExpansionRequired
				msg = fmt.Sprintf("expanded to %d bytes on node %s", res.SizeBytes, a.Node)
				a.event(&v, v.Spec.Parameters, false, "Expanded", "Volume expanded to %d bytes (file system growth by the node: %t)", res.SizeBytes, res.NodeExpansionRequired)
			}
		}
		if want := kube.IOLimits(v.Spec.IOLimits); err == nil && ev.IOLimits != want {
			var mv *model.Volume
			if mv, err = a.Engine.ModifyVolume(ctx, v.Name, want); err == nil {
				ev.IOLimits = mv.IOLimits
				msg = fmt.Sprintf("I/O limits %s on node %s", want, a.Node)
				a.event(&v, v.Spec.Parameters, false, "Modified", "Volume I/O limits set: %s", want)
			}
		}
		if err == nil {
			v.Status.IOLimits = kube.IOLimitsObject(ev.IOLimits)
		}
	}
	setOutcome(volumeStatus(&v), v.Generation, err, msg)
	switch {
	case created:
		a.capacityChanged()
		log.Info("Volume created", "size", ev.SizeBytes, "source", v.Spec.Source)
		a.event(&v, v.Spec.Parameters, false, "Created", "Volume created on node %s: %d bytes%s", a.Node, ev.SizeBytes, sourceNote(v.Spec.Source))
	case err != nil && !errors.Is(err, model.ErrAborted) && orig.Status.Message != v.Status.Message:
		log.Error(err, "Volume not ready")
		a.event(&v, v.Spec.Parameters, true, "Failed", "%v", err)
	case errors.Is(err, model.ErrAborted) && orig.Status.Phase != cairnv1.PhasePending:
		a.event(&v, v.Spec.Parameters, false, "InProgress", "%v", err)
	}
	if perr := a.client.Status().Patch(ctx, &v, client.MergeFrom(orig)); perr != nil {
		return reconcile.Result{}, perr
	}
	return a.retryAfter(err)
}

func sourceNote(s *cairnv1.VolumeSource) string {
	if s == nil {
		return ""
	}
	return fmt.Sprintf(" from %s %s", s.Kind, s.ID)
}

func createRequest(v *cairnv1.Volume) model.CreateVolumeRequest {
	r := model.CreateVolumeRequest{
		Name: v.Spec.Name, RequiredBytes: v.Spec.RequiredBytes, LimitBytes: v.Spec.LimitBytes,
		Block: v.Spec.Block, FsType: v.Spec.FsType, Parameters: v.Spec.Parameters,
		IOLimits: kube.IOLimits(v.Spec.IOLimits),
	}
	if s := v.Spec.Source; s != nil {
		if s.Kind == cairnv1.SourceVolume {
			r.SourceVolumeID = s.ID
		} else {
			r.SourceSnapshotID = s.ID
		}
	}
	return r
}

// prepareSource makes sure a backup source's target is configured here.
func (a *Agent) prepareSource(ctx context.Context, s *cairnv1.VolumeSource) error {
	if s == nil || s.Kind != cairnv1.SourceBackup {
		return nil
	}
	h, err := model.ParseBackupHandle(s.ID)
	if err != nil {
		return err
	}
	return a.ensureTarget(ctx, h.Target)
}
