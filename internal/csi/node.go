package csi

import (
	"context"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/engine"
)

type nodeServer struct {
	csipb.UnimplementedNodeServer
	s *Services
}

func (n *nodeServer) NodeStageVolume(ctx context.Context, req *csipb.NodeStageVolumeRequest) (*csipb.NodeStageVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := checkPath(req.GetStagingTargetPath(), "staging_target_path", n.s.engine.OwnsPath); err != nil {
		return nil, err
	}
	if req.GetVolumeCapability() == nil {
		return nil, invalid("volume_capability is required")
	}
	if err := checkCapability(req.GetVolumeCapability(), "volume_capability"); err != nil {
		return nil, err
	}
	vc := req.GetVolumeCapability()
	ereq := engine.StageRequest{
		VolumeID:    req.GetVolumeId(),
		StagingPath: req.GetStagingTargetPath(),
		Block:       vc.GetBlock() != nil,
		ReadOnly:    vc.GetAccessMode().GetMode() == csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
	}
	if m := vc.GetMount(); m != nil {
		ereq.FsType = m.GetFsType()
		if ereq.FsType == "" {
			ereq.FsType = req.GetVolumeContext()["fsType"]
		}
		ereq.MountFlags = m.GetMountFlags()
	}
	if err := n.s.engine.StageVolume(ctx, ereq); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodeStageVolumeResponse{}, nil
}

func (n *nodeServer) NodeUnstageVolume(ctx context.Context, req *csipb.NodeUnstageVolumeRequest) (*csipb.NodeUnstageVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := checkPath(req.GetStagingTargetPath(), "staging_target_path", n.s.engine.OwnsPath); err != nil {
		return nil, err
	}
	if err := n.s.engine.UnstageVolume(ctx, req.GetVolumeId(), req.GetStagingTargetPath()); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodeUnstageVolumeResponse{}, nil
}

func (n *nodeServer) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := checkPath(req.GetTargetPath(), "target_path", n.s.engine.OwnsPath); err != nil {
		return nil, err
	}
	if err := checkPath(req.GetStagingTargetPath(), "staging_target_path", n.s.engine.OwnsPath); err != nil {
		return nil, err
	}
	if req.GetVolumeCapability() == nil {
		return nil, invalid("volume_capability is required")
	}
	if err := checkCapability(req.GetVolumeCapability(), "volume_capability"); err != nil {
		return nil, err
	}
	vc := req.GetVolumeCapability()
	mode := vc.GetAccessMode().GetMode()
	ereq := engine.PublishRequest{
		VolumeID:     req.GetVolumeId(),
		StagingPath:  req.GetStagingTargetPath(),
		TargetPath:   req.GetTargetPath(),
		Block:        vc.GetBlock() != nil,
		ReadOnly:     req.GetReadonly() || mode == csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		SingleWriter: mode == csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
	}
	if m := vc.GetMount(); m != nil {
		ereq.MountFlags = m.GetMountFlags()
	}
	if err := n.s.engine.PublishVolume(ctx, ereq); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

func (n *nodeServer) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := checkPath(req.GetTargetPath(), "target_path", n.s.engine.OwnsPath); err != nil {
		return nil, err
	}
	if err := n.s.engine.UnpublishVolume(ctx, req.GetVolumeId(), req.GetTargetPath()); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

func (n *nodeServer) NodeGetVolumeStats(ctx context.Context, req *csipb.NodeGetVolumeStatsRequest) (*csipb.NodeGetVolumeStatsResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := required(req.GetVolumePath(), "volume_path"); err != nil {
		return nil, err
	}
	st, err := n.s.engine.VolumeStats(ctx, req.GetVolumeId(), req.GetVolumePath())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csipb.NodeGetVolumeStatsResponse{}
	if st.Block {
		resp.Usage = []*csipb.VolumeUsage{{Unit: csipb.VolumeUsage_BYTES, Total: st.TotalBytes}}
	} else {
		resp.Usage = []*csipb.VolumeUsage{
			{Unit: csipb.VolumeUsage_BYTES, Total: st.TotalBytes, Available: st.AvailableBytes, Used: st.UsedBytes},
			{Unit: csipb.VolumeUsage_INODES, Total: st.TotalInodes, Available: st.FreeInodes, Used: st.UsedInodes},
		}
	}
	return resp, nil
}

func (n *nodeServer) NodeExpandVolume(ctx context.Context, req *csipb.NodeExpandVolumeRequest) (*csipb.NodeExpandVolumeResponse, error) {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return nil, err
	}
	if err := required(req.GetVolumePath(), "volume_path"); err != nil {
		return nil, err
	}
	if err := checkCapacity(req.GetCapacityRange()); err != nil {
		return nil, err
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		if err := checkCapability(vc, "volume_capability"); err != nil {
			return nil, err
		}
	}
	size, err := n.s.engine.NodeExpandVolume(ctx, req.GetVolumeId(), req.GetVolumePath(), req.GetCapacityRange().GetRequiredBytes())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

func (n *nodeServer) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{
		NodeId:             n.s.opts.NodeID,
		MaxVolumesPerNode:  n.s.opts.MaxVolumesPerNode,
		AccessibleTopology: topology(n.s.opts.NodeID)[0],
	}, nil
}

func (n *nodeServer) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	var caps []*csipb.NodeServiceCapability
	for _, t := range []csipb.NodeServiceCapability_RPC_Type{
		csipb.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csipb.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csipb.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csipb.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csipb.NodeServiceCapability{Type: &csipb.NodeServiceCapability_Rpc{Rpc: &csipb.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}
