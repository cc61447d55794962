package csi

import (
	"context"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cairn-csi/cairn/internal/model"
)

// GroupBackend is what the GroupController service drives. A controller
// backend that implements it gets the service (and the plugin capability
// GROUP_CONTROLLER_SERVICE); one that does not has no group snapshots.
// Requests reaching it are validated; errors carry a model.Kind.
type GroupBackend interface {
	CreateGroupSnapshot(ctx context.Context, name string, volumeIDs []string, params map[string]string) (*model.GroupSnapshot, error)
	DeleteGroupSnapshot(ctx context.Context, id string, snapshotIDs []string) error
	GetGroupSnapshot(ctx context.Context, id string, snapshotIDs []string) (*model.GroupSnapshot, error)
}

// groups returns the controller backend's group snapshots, if it has them.
func (s *Services) groups() (GroupBackend, bool) {
	g, ok := s.backend.(GroupBackend)
	return g, ok
}

type groupControllerServer struct {
	csipb.UnimplementedGroupControllerServer
	g GroupBackend
}

func (g *groupControllerServer) GroupControllerGetCapabilities(context.Context, *csipb.GroupControllerGetCapabilitiesRequest) (*csipb.GroupControllerGetCapabilitiesResponse, error) {
	return &csipb.GroupControllerGetCapabilitiesResponse{Capabilities: []*csipb.GroupControllerServiceCapability{{
		Type: &csipb.GroupControllerServiceCapability_Rpc{Rpc: &csipb.GroupControllerServiceCapability_RPC{
			Type: csipb.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT,
		}},
	}}}, nil
}

func (g *groupControllerServer) CreateVolumeGroupSnapshot(ctx context.Context, req *csipb.CreateVolumeGroupSnapshotRequest) (*csipb.CreateVolumeGroupSnapshotResponse, error) {
	if err := createGroupSnapshotRequest(req); err != nil {
		return nil, err
	}
	gs, err := g.g.CreateGroupSnapshot(ctx, req.GetName(), req.GetSourceVolumeIds(), req.GetParameters())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.CreateVolumeGroupSnapshotResponse{GroupSnapshot: csiGroupSnapshot(gs)}, nil
}

func (g *groupControllerServer) DeleteVolumeGroupSnapshot(ctx context.Context, req *csipb.DeleteVolumeGroupSnapshotRequest) (*csipb.DeleteVolumeGroupSnapshotResponse, error) {
	if err := required(req.GetGroupSnapshotId(), "group_snapshot_id"); err != nil {
		return nil, err
	}
	if err := g.g.DeleteGroupSnapshot(ctx, req.GetGroupSnapshotId(), req.GetSnapshotIds()); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.DeleteVolumeGroupSnapshotResponse{}, nil
}

func (g *groupControllerServer) GetVolumeGroupSnapshot(ctx context.Context, req *csipb.GetVolumeGroupSnapshotRequest) (*csipb.GetVolumeGroupSnapshotResponse, error) {
	if err := required(req.GetGroupSnapshotId(), "group_snapshot_id"); err != nil {
		return nil, err
	}
	gs, err := g.g.GetGroupSnapshot(ctx, req.GetGroupSnapshotId(), req.GetSnapshotIds())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.GetVolumeGroupSnapshotResponse{GroupSnapshot: csiGroupSnapshot(gs)}, nil
}

func csiGroupSnapshot(gs *model.GroupSnapshot) *csipb.VolumeGroupSnapshot {
	out := &csipb.VolumeGroupSnapshot{GroupSnapshotId: gs.ID, CreationTime: timestamppb.New(gs.CreatedAt), ReadyToUse: true}
	for _, m := range gs.Members {
		out.Snapshots = append(out.Snapshots, csiSnapshot(m))
	}
	return out
}
