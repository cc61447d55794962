package remote

import (
	"context"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// VolumeHealth is what the volume's node agent last found (Volume
// status.health), or Inaccessible when that agent has gone silent.
func (r *Remote) VolumeHealth(ctx context.Context, id string) ([]model.HealthProblem, error) {
	var v cairnv1.Volume
	if !model.ValidVolumeID(id) {
		return nil, model.Errorf(model.ErrNotFound, "volume %q not found", id)
	}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: id}, &v); err != nil {
		return nil, notFoundOr(err, "volume %q not found", id)
	}
	var out []model.HealthProblem
	var sn cairnv1.StorageNode
	err := r.Client.Get(ctx, client.ObjectKey{Name: v.Spec.NodeName}, &sn)
	if err != nil {
		sn = cairnv1.StorageNode{}
		sn.Name = v.Spec.NodeName
	}
	if st := nodeStates([]cairnv1.StorageNode{sn}, time.Now(), r.HeartbeatTimeout)[v.Spec.NodeName]; st.why != "" {
		out = append(out, model.HealthProblem{Kind: model.HealthInaccessible, Reason: "NodeNotReporting",
			Message: "the volume's node " + v.Spec.NodeName + " is not reporting (" + st.why + "): check the node and its cairn-node pod"})
	}
	for _, p := range v.Status.Health {
		out = append(out, model.HealthProblem{Kind: model.HealthKind(p.Type), Reason: p.Reason, Message: p.Message})
	}
	return out, nil
}
