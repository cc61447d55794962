package csi

import (
	"context"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

type nodeServer struct {
	csipb.UnimplementedNodeServer
	s *Services
}

func (n *nodeServer) NodeStageVolume(ctx context.Context, req *csipb.NodeStageVolumeRequest) (*csipb.NodeStageVolumeResponse, error) {
	sreq, err := stageRequest(req, n.s.node.OwnsPath)
	if err != nil {
		return nil, err
	}
	if err := n.s.node.StageVolume(ctx, sreq); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodeStageVolumeResponse{}, nil
}

func (n *nodeServer) NodeUnstageVolume(ctx context.Context, req *csipb.NodeUnstageVolumeRequest) (*csipb.NodeUnstageVolumeResponse, error) {
	if err := unstageRequest(req, n.s.node.OwnsPath); err != nil {
		return nil, err
	}
	if err := n.s.node.UnstageVolume(ctx, req.GetVolumeId(), req.GetStagingTargetPath()); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodeUnstageVolumeResponse{}, nil
}

func (n *nodeServer) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	preq, err := publishRequest(req, n.s.node.OwnsPath)
	if err != nil {
		return nil, err
	}
	if err := n.s.node.PublishVolume(ctx, preq); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

func (n *nodeServer) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	if err := unpublishRequest(req, n.s.node.OwnsPath); err != nil {
		return nil, err
	}
	if err := n.s.node.UnpublishVolume(ctx, req.GetVolumeId(), req.GetTargetPath()); err != nil {
		return nil, toStatus(err)
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

func (n *nodeServer) NodeGetVolumeStats(ctx context.Context, req *csipb.NodeGetVolumeStatsRequest) (*csipb.NodeGetVolumeStatsResponse, error) {
	if err := volumeStatsRequest(req); err != nil {
		return nil, err
	}
	st, err := n.s.node.VolumeStats(ctx, req.GetVolumeId(), req.GetVolumePath())
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
	if err := nodeExpandRequest(req); err != nil {
		return nil, err
	}
	size, err := n.s.node.NodeExpandVolume(ctx, req.GetVolumeId(), req.GetVolumePath(), req.GetCapacityRange().GetRequiredBytes())
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
		csipb.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csipb.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
	} {
		caps = append(caps, &csipb.NodeServiceCapability{Type: &csipb.NodeServiceCapability_Rpc{Rpc: &csipb.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}
