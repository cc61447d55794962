package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// checkHealth runs the engine's health checks over this node's volumes
// (docs/HEALTH.md) and, for each Volume whose health changed, records it
// in the status (health, the Healthy condition) and as an event on the
// Volume and its PVC. A Volume whose data is gone from the data root is
// DataLoss: the object says the volume should exist.
func (a *Agent) checkHealth(ctx context.Context) error {
	var list cairnv1.VolumeList
	if err := a.client.List(ctx, &list, client.MatchingLabels{cairnv1.NodeLabel: a.Node}); err != nil {
		return err
	}
	all, err := a.Engine.AllVolumeHealth(ctx, 0)
	if err != nil {
		return err
	}
	for i := range list.Items {
		v := &list.Items[i]
		if v.Spec.NodeName != a.Node || !v.DeletionTimestamp.IsZero() || v.Status.Phase != cairnv1.PhaseReady {
			continue // not ours, going, or not made yet
		}
		problems, ok := all[v.Name]
		alloc := v.Status.AllocatedBytes
		ev, err := a.Engine.GetVolume(ctx, v.Name)
		switch {
		case err == nil:
			alloc = ev.AllocatedBytes
		case !ok && model.KindOf(err) == model.ErrNotFound && a.stillWanted(ctx, v):
			problems = []model.HealthProblem{{Kind: model.HealthDataLoss, Reason: "VolumeMissing",
				Message: fmt.Sprintf("the volume's directory is gone from node %s's data root %s (deleted by hand?): its data is lost; restore it from a snapshot or backup into a new PVC, then delete this one", a.Node, a.Engine.Root())}}
		}
		if err := a.recordHealth(ctx, v, problems, alloc); err != nil {
			klog.ErrorS(err, "Recording volume health failed", "volume", v.Name)
		}
	}
	return nil
}

// recordHealth writes a Volume's health when it changed, and its
// allocated bytes when they moved by AllocatedStep or more, in one patch.
// (Volumes whose data is being written cost one patch per heartbeat each.)
func (a *Agent) recordHealth(ctx context.Context, v *cairnv1.Volume, problems []model.HealthProblem, alloc int64) error {
	var health []cairnv1.HealthProblem
	for _, p := range problems {
		health = append(health, cairnv1.HealthProblem{Type: string(p.Kind), Reason: p.Reason, Message: p.Message})
	}
	known := meta.FindStatusCondition(v.Status.Conditions, cairnv1.ConditionHealthy) != nil
	same := known && slices.Equal(health, v.Status.Health)
	step := cairnv1.AllocatedStep(v.Status.SizeBytes)
	moved := alloc-v.Status.AllocatedBytes >= step || v.Status.AllocatedBytes-alloc >= step
	if same && !moved {
		return nil
	}
	orig := v.DeepCopy()
	v.Status.AllocatedBytes = alloc
	if same {
		return a.client.Status().Patch(ctx, v, client.MergeFrom(orig))
	}
	v.Status.Health = health
	v.Status.HealthChangedTime = &metav1.Time{Time: metav1.Now().Time}
	cond := metav1.Condition{Type: cairnv1.ConditionHealthy, Status: metav1.ConditionTrue, Reason: "Healthy", Message: "no problems found on node " + a.Node, ObservedGeneration: v.Generation}
	if len(health) > 0 {
		var reasons, msgs []string
		for _, h := range health {
			reasons = append(reasons, h.Reason)
			msgs = append(msgs, h.Type+": "+h.Message)
		}
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, reasons[0], strings.Join(msgs, "; ")
	}
	meta.SetStatusCondition(&v.Status.Conditions, cond)
	if err := a.client.Status().Patch(ctx, v, client.MergeFrom(orig)); err != nil {
		return err
	}
	switch {
	case len(health) > 0:
		klog.InfoS("Volume unhealthy", "volume", v.Name, "problems", cond.Message)
		a.event(v, v.Spec.Parameters, true, "VolumeUnhealthy", "%s", cond.Message)
	case known:
		klog.InfoS("Volume healthy again", "volume", v.Name)
		a.event(v, v.Spec.Parameters, false, "VolumeHealthy", "The volume's health problems are gone")
	}
	return nil
}

// stillWanted re-reads a Volume from the API server (the cache may lag a
// deletion that has just removed its data): only a volume still present,
// not being deleted, with the same UID is missing rather than deleted.
func (a *Agent) stillWanted(ctx context.Context, v *cairnv1.Volume) bool {
	var live cairnv1.Volume
	if err := a.reader.Get(ctx, client.ObjectKeyFromObject(v), &live); err != nil {
		return false
	}
	return live.UID == v.UID && live.DeletionTimestamp.IsZero()
}
