package csi

import (
	"maps"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/model"
)

// Request validation, one function per CSI request that carries more than
// an ID: each checks every field (with validate.go's rules) and returns
// the backend's request. Handlers call these first and nothing else
// validates.

func createVolumeRequest(req *csipb.CreateVolumeRequest) (model.CreateVolumeRequest, model.Placement, error) {
	var out model.CreateVolumeRequest
	if err := required(req.GetName(), "name"); err != nil {
		return out, model.Placement{}, err
	}
	caps, err := checkCapabilities(req.GetVolumeCapabilities(), "volume_capabilities")
	if err != nil {
		return out, model.Placement{}, err
	}
	paramFs, err := checkVolumeParameters(req.GetParameters())
	if err != nil {
		return out, model.Placement{}, err
	}
	if err := checkCapacity(req.GetCapacityRange()); err != nil {
		return out, model.Placement{}, err
	}
	where, err := placement(req.GetAccessibilityRequirements(), "accessibility_requirements")
	if err != nil {
		return out, model.Placement{}, err
	}
	fsType := caps.FsType
	if fsType == "" {
		fsType = paramFs
	}
	// StorageClass parameters may set I/O limits; a VolumeAttributesClass's
	// (mutable_parameters) override them.
	limits, err := model.IOLimits{}.With(req.GetParameters(), "parameters", false)
	if err == nil {
		limits, err = limits.With(req.GetMutableParameters(), "mutable_parameters", true)
	}
	if err != nil {
		return out, model.Placement{}, toStatus(err)
	}
	out = model.CreateVolumeRequest{
		Name:          req.GetName(),
		RequiredBytes: req.GetCapacityRange().GetRequiredBytes(),
		LimitBytes:    req.GetCapacityRange().GetLimitBytes(),
		Block:         caps.Block,
		FsType:        fsType,
		Parameters:    req.GetParameters(),
		IOLimits:      limits,
	}
	if src := req.GetVolumeContentSource(); src != nil {
		switch {
		case src.GetSnapshot() != nil:
			out.SourceSnapshotID = src.GetSnapshot().GetSnapshotId()
			if err := required(out.SourceSnapshotID, "volume_content_source.snapshot.snapshot_id"); err != nil {
				return out, where, err
			}
		case src.GetVolume() != nil:
			out.SourceVolumeID = src.GetVolume().GetVolumeId()
			if err := required(out.SourceVolumeID, "volume_content_source.volume.volume_id"); err != nil {
				return out, where, err
			}
		default:
			return out, where, invalid("volume_content_source: snapshot or volume is required")
		}
	}
	return out, where, nil
}

// validateVolumeCapabilitiesRequest checks what must be present; whether
// the capabilities are supported is the answer, not an error.
func validateVolumeCapabilitiesRequest(req *csipb.ValidateVolumeCapabilitiesRequest) error {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return err
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return invalid("volume_capabilities is required")
	}
	return nil
}

func createSnapshotRequest(req *csipb.CreateSnapshotRequest) error {
	if err := required(req.GetName(), "name"); err != nil {
		return err
	}
	return required(req.GetSourceVolumeId(), "source_volume_id")
}

func createGroupSnapshotRequest(req *csipb.CreateVolumeGroupSnapshotRequest) error {
	if err := required(req.GetName(), "name"); err != nil {
		return err
	}
	if err := model.CheckGroupMembers(req.GetSourceVolumeIds()); err != nil {
		return toStatus(err)
	}
	if req.GetParameters()[paramSnapshotType] == "backup" {
		return invalid("parameters.type \"backup\": a group snapshot is taken as local snapshots; back up its members' VolumeSnapshots afterwards")
	}
	params := req.GetParameters()
	if _, ok := params[paramGroupDeletionPolicy]; ok {
		// The class's own deletionPolicy field, which the upstream e2e
		// framework (v1.36) also copies into its parameters: harmless.
		params = maps.Clone(params)
		delete(params, paramGroupDeletionPolicy)
	}
	_, err := checkSnapshotParameters(params, nil)
	return err
}

// paramGroupDeletionPolicy is ignored in group snapshot parameters.
const paramGroupDeletionPolicy = "deletionPolicy"

func controllerExpandRequest(req *csipb.ControllerExpandVolumeRequest) error {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return err
	}
	if req.GetCapacityRange() == nil {
		return invalid("capacity_range is required")
	}
	if err := checkCapacity(req.GetCapacityRange()); err != nil {
		return err
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		return checkCapability(vc, "volume_capability")
	}
	return nil
}

// requiredCapability checks a capability that must be present.
func requiredCapability(vc *csipb.VolumeCapability, field string) error {
	if vc == nil {
		return invalid("%s is required", field)
	}
	return checkCapability(vc, field)
}

func stageRequest(req *csipb.NodeStageVolumeRequest, owned func(string) bool) (model.StageRequest, error) {
	var out model.StageRequest
	vc := req.GetVolumeCapability()
	if err := volumePaths(req.GetVolumeId(), owned, "staging_target_path", req.GetStagingTargetPath()); err != nil {
		return out, err
	}
	if err := requiredCapability(vc, "volume_capability"); err != nil {
		return out, err
	}
	out = model.StageRequest{
		VolumeID:    req.GetVolumeId(),
		StagingPath: req.GetStagingTargetPath(),
		Block:       vc.GetBlock() != nil,
		ReadOnly:    vc.GetAccessMode().GetMode() == csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
	}
	if m := vc.GetMount(); m != nil {
		out.FsType = m.GetFsType()
		if out.FsType == "" {
			out.FsType = req.GetVolumeContext()["fsType"]
		}
		out.MountFlags = m.GetMountFlags()
	}
	return out, nil
}

func unstageRequest(req *csipb.NodeUnstageVolumeRequest, owned func(string) bool) error {
	return volumePaths(req.GetVolumeId(), owned, "staging_target_path", req.GetStagingTargetPath())
}

func publishRequest(req *csipb.NodePublishVolumeRequest, owned func(string) bool) (model.PublishRequest, error) {
	var out model.PublishRequest
	vc := req.GetVolumeCapability()
	if err := volumePaths(req.GetVolumeId(), owned, "target_path", req.GetTargetPath(), "staging_target_path", req.GetStagingTargetPath()); err != nil {
		return out, err
	}
	if err := requiredCapability(vc, "volume_capability"); err != nil {
		return out, err
	}
	mode := vc.GetAccessMode().GetMode()
	out = model.PublishRequest{
		VolumeID:     req.GetVolumeId(),
		StagingPath:  req.GetStagingTargetPath(),
		TargetPath:   req.GetTargetPath(),
		Block:        vc.GetBlock() != nil,
		ReadOnly:     req.GetReadonly() || mode == csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		SingleWriter: mode == csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
	}
	if m := vc.GetMount(); m != nil {
		out.MountFlags = m.GetMountFlags()
	}
	if uid, ok := req.GetVolumeContext()[contextPodUID]; ok {
		// Only a UID names a pod's cgroup; anything else is not passed on
		// (the publish goes ahead: the pod just gets no I/O limits).
		if model.ValidPodUID(uid) {
			out.PodUID = uid
		} else {
			klog.InfoS("Ignoring a volume_context pod UID that is not a UID", "key", contextPodUID, "value", uid, "volumeID", req.GetVolumeId())
		}
	}
	return out, nil
}

// contextPodUID is set by kubelet with the CSIDriver's podInfoOnMount.
const contextPodUID = "csi.storage.k8s.io/pod.uid"

// modifyVolumeRequest checks ControllerModifyVolume: a volume and only
// mutable parameters Cairn knows, with values in range, so that nothing
// is applied from a request that is refused.
func modifyVolumeRequest(req *csipb.ControllerModifyVolumeRequest) error {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return err
	}
	_, err := model.IOLimits{}.With(req.GetMutableParameters(), "mutable_parameters", true)
	return toStatus(err)
}

func unpublishRequest(req *csipb.NodeUnpublishVolumeRequest, owned func(string) bool) error {
	return volumePaths(req.GetVolumeId(), owned, "target_path", req.GetTargetPath())
}

// volumePaths checks a node request's volume ID and then its paths, given
// as field name, value pairs, in order.
func volumePaths(id string, owned func(string) bool, fieldsAndPaths ...string) error {
	if err := required(id, "volume_id"); err != nil {
		return err
	}
	for i := 0; i+1 < len(fieldsAndPaths); i += 2 {
		if err := checkPath(fieldsAndPaths[i+1], fieldsAndPaths[i], owned); err != nil {
			return err
		}
	}
	return nil
}

func volumeStatsRequest(req *csipb.NodeGetVolumeStatsRequest) error {
	return volumeAndPath(req.GetVolumeId(), req.GetVolumePath())
}

// volumeHealthRequest requires the volume ID; the paths are optional
// and, when given, absolute and clean.
func volumeHealthRequest(req *csipb.NodeGetVolumeHealthRequest) error {
	if err := required(req.GetVolumeId(), "volume_id"); err != nil {
		return err
	}
	for field, p := range map[string]string{"volume_publish_path": req.GetVolumePublishPath(), "staging_target_path": req.GetStagingTargetPath()} {
		if p != "" {
			if err := checkPath(p, field, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

func nodeExpandRequest(req *csipb.NodeExpandVolumeRequest) error {
	if err := volumeAndPath(req.GetVolumeId(), req.GetVolumePath()); err != nil {
		return err
	}
	if err := checkCapacity(req.GetCapacityRange()); err != nil {
		return err
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		return checkCapability(vc, "volume_capability")
	}
	return nil
}

// volumeAndPath requires the volume ID and volume path a node call on a
// published volume names (any path: the backend checks it is one of the
// volume's).
func volumeAndPath(id, path string) error {
	if err := required(id, "volume_id"); err != nil {
		return err
	}
	return required(path, "volume_path")
}
