package csi

import (
	"context"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/model"
)

// Volume and storage health (CSI 1.13): NodeGetVolumeHealth,
// NodeGetStorageHealth and ControllerGetVolumeHealth. The checks are the
// backends'; docs/HEALTH.md lists them.

func (n *nodeServer) NodeGetVolumeHealth(ctx context.Context, req *csipb.NodeGetVolumeHealthRequest) (*csipb.NodeGetVolumeHealthResponse, error) {
	if err := volumeHealthRequest(req); err != nil {
		return nil, err
	}
	problems, err := n.s.node.VolumeHealth(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodeGetVolumeHealthResponse{VolumeHealth: volumeHealth(req.GetVolumeId(), problems)}, nil
}

func (n *nodeServer) NodeGetStorageHealth(ctx context.Context, _ *csipb.NodeGetStorageHealthRequest) (*csipb.NodeGetStorageHealthResponse, error) {
	resp := &csipb.NodeGetStorageHealthResponse{}
	for _, p := range n.s.node.StorageHealth(ctx) {
		st := csipb.StorageHealthErrorType_STORAGE_DEGRADED
		if p.Kind != model.HealthDegraded {
			st = csipb.StorageHealthErrorType_STORAGE_UNREACHABLE
		}
		resp.BackendHealth = append(resp.BackendHealth, &csipb.NodeGetStorageHealthResponse_StorageBackendHealth{Status: st, Reason: p.Reason, Message: p.Message})
	}
	return resp, nil
}

func (c *controllerServer) ControllerGetVolumeHealth(ctx context.Context, req *csipb.ControllerGetVolumeHealthRequest) (*csipb.ControllerGetVolumeHealthResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	problems, err := c.s.backend.VolumeHealth(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.ControllerGetVolumeHealthResponse{VolumeHealth: volumeHealth(req.GetVolumeId(), problems)}, nil
}

// volumeHealth is a volume's problems as CSI reports them: no entries
// when healthy.
func volumeHealth(id string, problems []model.HealthProblem) *csipb.VolumeHealth {
	out := &csipb.VolumeHealth{VolumeId: id}
	for _, p := range problems {
		out.HealthStatuses = append(out.HealthStatuses, &csipb.VolumeHealth_VolumeHealthEntry{Status: healthType(p.Kind), Reason: p.Reason, Message: p.Message})
	}
	return out
}

func healthType(k model.HealthKind) csipb.VolumeHealthErrorType {
	switch k {
	case model.HealthDegraded:
		return csipb.VolumeHealthErrorType_DEGRADED
	case model.HealthInaccessible:
		return csipb.VolumeHealthErrorType_INACCESSIBLE
	case model.HealthDataLoss:
		return csipb.VolumeHealthErrorType_DATA_LOSS
	}
	return csipb.VolumeHealthErrorType_UNKNOWN_VOLUME_HEALTH_TYPE
}
