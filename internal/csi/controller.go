package csi

import (
	"context"
	"sort"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cairn-csi/cairn/internal/model"
)

type controllerServer struct {
	csipb.UnimplementedControllerServer
	s *Services
}

func (c *controllerServer) CreateVolume(ctx context.Context, req *csipb.CreateVolumeRequest) (*csipb.CreateVolumeResponse, error) {
	creq, where, err := createVolumeRequest(req)
	if err != nil {
		return nil, err
	}
	vol, err := c.s.backend.CreateVolume(ctx, creq, where)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.CreateVolumeResponse{Volume: csiVolume(vol)}, nil
}

func csiVolume(v *model.Volume) *csipb.Volume {
	out := &csipb.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.SizeBytes,
		AccessibleTopology: topology(v.Node),
		VolumeContext:      map[string]string{},
	}
	if v.FsType != "" {
		out.VolumeContext["fsType"] = v.FsType
	}
	if v.Source != nil {
		switch src := v.Source.CSI(); src.Kind {
		case model.SourceSnapshot:
			out.ContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: src.ID}}}
		case model.SourceVolume:
			out.ContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Volume{Volume: &csipb.VolumeContentSource_VolumeSource{VolumeId: src.ID}}}
		}
	}
	return out
}

func (c *controllerServer) DeleteVolume(ctx context.Context, req *csipb.DeleteVolumeRequest) (*csipb.DeleteVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := c.s.backend.DeleteVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.DeleteVolumeResponse{}, nil
}

func (c *controllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csipb.ValidateVolumeCapabilitiesRequest) (*csipb.ValidateVolumeCapabilitiesResponse, error) {
	if err := validateVolumeCapabilitiesRequest(req); err != nil {
		return nil, err
	}
	vol, err := c.s.backend.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	caps, err := checkCapabilities(req.GetVolumeCapabilities(), "volume_capabilities")
	if err != nil {
		// Well-formed but unsupported: not confirmed, with the reason.
		return &csipb.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	if caps.Block != vol.Block {
		return &csipb.ValidateVolumeCapabilitiesResponse{Message: "volume was created for " + map[bool]string{true: "block", false: "filesystem"}[vol.Block] + " access"}, nil
	}
	if _, err := checkVolumeParameters(req.GetParameters()); err != nil {
		return &csipb.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csipb.ValidateVolumeCapabilitiesResponse{Confirmed: &csipb.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// page applies CSI pagination over a sorted list of IDs: the token is the
// ID to start at.
func page(ids []string, token string, max int32, validToken func(string) bool) (start, end int, next string, err error) {
	if max < 0 {
		return 0, 0, "", invalid("max_entries must not be negative")
	}
	if token != "" {
		if !validToken(token) {
			return 0, 0, "", status.Errorf(codes.Aborted, "starting_token %q is not a token this driver issued", token)
		}
		start = sort.SearchStrings(ids, token)
	}
	end = len(ids)
	if max > 0 && start+int(max) < end {
		end = start + int(max)
		next = ids[end]
	}
	return start, end, next, nil
}

func (c *controllerServer) ListVolumes(ctx context.Context, req *csipb.ListVolumesRequest) (*csipb.ListVolumesResponse, error) {
	vols, err := c.s.backend.ListVolumes(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	ids := make([]string, len(vols))
	for i, v := range vols {
		ids[i] = v.ID
	}
	start, end, next, err := page(ids, req.GetStartingToken(), req.GetMaxEntries(), model.ValidVolumeID)
	if err != nil {
		return nil, err
	}
	resp := &csipb.ListVolumesResponse{NextToken: next}
	for _, v := range vols[start:end] {
		resp.Entries = append(resp.Entries, &csipb.ListVolumesResponse_Entry{
			Volume: csiVolume(v),
		})
	}
	return resp, nil
}

func (c *controllerServer) ControllerGetVolume(ctx context.Context, req *csipb.ControllerGetVolumeRequest) (*csipb.ControllerGetVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	v, err := c.s.backend.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.ControllerGetVolumeResponse{
		Volume: csiVolume(v),
		Status: &csipb.ControllerGetVolumeResponse_VolumeStatus{},
	}, nil
}

func (c *controllerServer) GetCapacity(ctx context.Context, req *csipb.GetCapacityRequest) (*csipb.GetCapacityResponse, error) {
	for i, vc := range req.GetVolumeCapabilities() {
		if err := checkCapability(vc, "volume_capabilities["+itoa(i)+"]"); err != nil {
			return &csipb.GetCapacityResponse{}, nil // nothing can be provisioned with these
		}
	}
	node := req.GetAccessibleTopology().GetSegments()[TopologyKey]
	if len(req.GetAccessibleTopology().GetSegments()) > 0 && CheckNodeID(node, "") != nil {
		return &csipb.GetCapacityResponse{}, nil // a topology this driver does not know
	}
	avail, err := c.s.backend.Capacity(ctx, node)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.GetCapacityResponse{AvailableCapacity: avail}, nil
}

func (c *controllerServer) ControllerGetCapabilities(context.Context, *csipb.ControllerGetCapabilitiesRequest) (*csipb.ControllerGetCapabilitiesResponse, error) {
	var caps []*csipb.ControllerServiceCapability
	for _, t := range []csipb.ControllerServiceCapability_RPC_Type{
		csipb.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csipb.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csipb.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csipb.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csipb.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csipb.ControllerServiceCapability_RPC_GET_VOLUME,
		csipb.ControllerServiceCapability_RPC_GET_CAPACITY,
		csipb.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csipb.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csipb.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csipb.ControllerServiceCapability_RPC_MODIFY_VOLUME,
	} {
		caps = append(caps, &csipb.ControllerServiceCapability{Type: &csipb.ControllerServiceCapability_Rpc{Rpc: &csipb.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csipb.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (c *controllerServer) CreateSnapshot(ctx context.Context, req *csipb.CreateSnapshotRequest) (*csipb.CreateSnapshotResponse, error) {
	if err := createSnapshotRequest(req); err != nil {
		return nil, err
	}
	targets, err := c.s.backend.BackupTargets(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	kind, err := checkSnapshotParameters(req.GetParameters(), targets)
	if err != nil {
		return nil, err
	}
	if kind.Backup {
		info, err := c.s.backend.CreateBackup(ctx, req.GetName(), req.GetSourceVolumeId(), kind.Target)
		if err != nil {
			return nil, toStatus(err)
		}
		if !info.Ready && info.LastError != "" {
			// Not final: the CO shows the error and keeps asking while
			// the upload retries.
			return nil, status.Errorf(codes.Unavailable, "backup %s: upload failed, retrying: %s", info.Handle, info.LastError)
		}
		return &csipb.CreateSnapshotResponse{Snapshot: csiBackup(info)}, nil
	}
	where, err := placement(req.GetAccessibilityRequirements(), "accessibility_requirements")
	if err != nil {
		return nil, err
	}
	snap, err := c.s.backend.CreateSnapshot(ctx, req.GetName(), req.GetSourceVolumeId(), req.GetParameters(), where)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.CreateSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
}

func csiSnapshot(snap *model.Snapshot) *csipb.Snapshot {
	return &csipb.Snapshot{
		SnapshotId:      snap.ID,
		SourceVolumeId:  snap.SourceVolumeID,
		SizeBytes:       snap.SizeBytes,
		CreationTime:    timestamppb.New(snap.CreatedAt),
		ReadyToUse:      true,
		GroupSnapshotId: snap.GroupSnapshotID,
	}
}

func csiBackup(b *model.BackupInfo) *csipb.Snapshot {
	return &csipb.Snapshot{
		SnapshotId:     b.Handle.String(),
		SourceVolumeId: b.Handle.VolumeID,
		SizeBytes:      b.SizeBytes,
		CreationTime:   timestamppb.New(b.CreatedAt),
		ReadyToUse:     b.Ready,
	}
}

func (c *controllerServer) DeleteSnapshot(ctx context.Context, req *csipb.DeleteSnapshotRequest) (*csipb.DeleteSnapshotResponse, error) {
	if err := required(req.GetSnapshotId(), "snapshot_id"); err != nil {
		return nil, err
	}
	del := c.s.backend.DeleteSnapshot
	if model.IsBackupHandle(req.GetSnapshotId()) {
		del = c.s.backend.DeleteBackup
	}
	if err := del(ctx, req.GetSnapshotId()); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.DeleteSnapshotResponse{}, nil
}

func (c *controllerServer) ListSnapshots(ctx context.Context, req *csipb.ListSnapshotsRequest) (*csipb.ListSnapshotsResponse, error) {
	var snaps []*csipb.Snapshot
	if id := req.GetSnapshotId(); id != "" {
		s, err := c.getSnapshot(ctx, id)
		if err != nil && !isNotFoundErr(err) {
			return nil, toStatus(err)
		}
		if s != nil {
			snaps = []*csipb.Snapshot{s}
		}
	} else {
		all, err := c.s.backend.ListSnapshots(ctx)
		if err != nil {
			return nil, toStatus(err)
		}
		for _, s := range all {
			snaps = append(snaps, csiSnapshot(s))
		}
		backups, err := c.s.backend.ListBackups(ctx)
		if err != nil {
			return nil, toStatus(err)
		}
		for _, b := range backups {
			snaps = append(snaps, csiBackup(b))
		}
	}
	if src := req.GetSourceVolumeId(); src != "" {
		kept := snaps[:0]
		for _, s := range snaps {
			if s.GetSourceVolumeId() == src {
				kept = append(kept, s)
			}
		}
		snaps = kept
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].GetSnapshotId() < snaps[j].GetSnapshotId() })
	ids := make([]string, len(snaps))
	for i, s := range snaps {
		ids[i] = s.GetSnapshotId()
	}
	start, end, next, err := page(ids, req.GetStartingToken(), req.GetMaxEntries(), model.ValidSnapshotHandle)
	if err != nil {
		return nil, err
	}
	resp := &csipb.ListSnapshotsResponse{NextToken: next}
	for _, s := range snaps[start:end] {
		resp.Entries = append(resp.Entries, &csipb.ListSnapshotsResponse_Entry{Snapshot: s})
	}
	return resp, nil
}

// getSnapshot finds a local snapshot or a backup by ID.
func (c *controllerServer) getSnapshot(ctx context.Context, id string) (*csipb.Snapshot, error) {
	if model.IsBackupHandle(id) {
		b, err := c.s.backend.GetBackup(ctx, id)
		if err != nil {
			return nil, err
		}
		return csiBackup(b), nil
	}
	s, err := c.s.backend.GetSnapshot(ctx, id)
	if err != nil {
		return nil, err
	}
	return csiSnapshot(s), nil
}

func (c *controllerServer) GetSnapshot(ctx context.Context, req *csipb.GetSnapshotRequest) (*csipb.GetSnapshotResponse, error) {
	if err := required(req.GetSnapshotId(), "snapshot_id"); err != nil {
		return nil, err
	}
	s, err := c.getSnapshot(ctx, req.GetSnapshotId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.GetSnapshotResponse{Snapshot: s}, nil
}

func (c *controllerServer) ControllerExpandVolume(ctx context.Context, req *csipb.ControllerExpandVolumeRequest) (*csipb.ControllerExpandVolumeResponse, error) {
	if err := controllerExpandRequest(req); err != nil {
		return nil, err
	}
	res, err := c.s.backend.ExpandVolume(ctx, req.GetVolumeId(), req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.ControllerExpandVolumeResponse{CapacityBytes: res.SizeBytes, NodeExpansionRequired: res.NodeExpansionRequired}, nil
}

// ControllerModifyVolume changes a volume's mutable parameters (a
// VolumeAttributesClass): its I/O limits. A key left out keeps its value.
func (c *controllerServer) ControllerModifyVolume(ctx context.Context, req *csipb.ControllerModifyVolumeRequest) (*csipb.ControllerModifyVolumeResponse, error) {
	if err := modifyVolumeRequest(req); err != nil {
		return nil, err
	}
	if err := c.s.backend.ModifyVolume(ctx, req.GetVolumeId(), req.GetMutableParameters()); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.ControllerModifyVolumeResponse{}, nil
}
