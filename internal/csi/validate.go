package csi

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/model"
)

// The rules for request fields live in this file; requests.go applies
// them to each request. The servers call requests.go's functions before
// they touch a backend, and nothing else validates a request.

// singleNodeModes are the access modes a node-local volume can honour.
var singleNodeModes = []csipb.VolumeCapability_AccessMode_Mode{
	csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
	csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
	csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
	csipb.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
}

// capSummary is what the engine needs from a list of capabilities.
type capSummary struct {
	Block      bool
	FsType     string
	MountFlags []string
}

// checkCapability validates one capability; field names the request field
// for error messages.
func checkCapability(c *csipb.VolumeCapability, field string) error {
	if c == nil {
		return invalid("%s: capability is empty", field)
	}
	am := c.GetAccessMode()
	if am == nil {
		return invalid("%s.access_mode is required", field)
	}
	if !slices.Contains(singleNodeModes, am.GetMode()) {
		return invalid("%s.access_mode %s is not supported: Cairn volumes are node-local; use a SINGLE_NODE_* mode (ReadWriteOnce or ReadWriteOncePod)", field, am.GetMode())
	}
	switch {
	case c.GetBlock() != nil:
	case c.GetMount() != nil:
		fs := c.GetMount().GetFsType()
		if fs != "" && !model.SupportedFsType(fs) {
			return invalid("%s.mount.fs_type %q is not supported (use %s)", field, fs, strings.Join(model.SupportedFsTypes, " or "))
		}
	default:
		return invalid("%s.access_type: mount or block is required", field)
	}
	return nil
}

// checkCapabilities validates a non-empty list and summarises it.
func checkCapabilities(caps []*csipb.VolumeCapability, field string) (capSummary, error) {
	var s capSummary
	if len(caps) == 0 {
		return s, invalid("%s is required", field)
	}
	var sawBlock, sawMount bool
	for i, c := range caps {
		f := fmt.Sprintf("%s[%d]", field, i)
		if err := checkCapability(c, f); err != nil {
			return s, err
		}
		if c.GetBlock() != nil {
			sawBlock = true
			continue
		}
		sawMount = true
		if fs := c.GetMount().GetFsType(); fs != "" {
			if s.FsType != "" && s.FsType != fs {
				return s, invalid("%s: conflicting fs_type %q and %q", field, s.FsType, fs)
			}
			s.FsType = fs
		}
		s.MountFlags = c.GetMount().GetMountFlags()
	}
	if sawBlock && sawMount {
		return s, invalid("%s: a volume is either block or mount, not both", field)
	}
	s.Block = sawBlock
	return s, nil
}

// Parameters Cairn understands in StorageClasses. Keys with the
// csi.storage.k8s.io/ prefix come from the external-provisioner and are
// accepted as they are.
const (
	paramFsType       = "fsType"
	kubernetesPrefix  = "csi.storage.k8s.io/"
	paramK8sFsType    = kubernetesPrefix + "fstype"
	paramSnapshotType = "type"
)

// checkVolumeParameters rejects unknown StorageClass parameters so that a
// typo does not silently give the user something else, and returns the
// file system a parameter asks for.
func checkVolumeParameters(params map[string]string) (string, error) {
	var fs string
	for k, v := range params {
		switch {
		case k == paramFsType || k == paramK8sFsType:
			if v != "" && !model.SupportedFsType(v) {
				return "", invalid("parameters.%s %q is not supported (use %s)", k, v, strings.Join(model.SupportedFsTypes, " or "))
			}
			fs = v
		case strings.HasPrefix(k, kubernetesPrefix):
		case slices.Contains(model.MutableParameterKeys, k):
			if _, err := (model.IOLimits{}).With(map[string]string{k: v}, "parameters", true); err != nil {
				return "", toStatus(err)
			}
		default:
			return "", invalid("parameters: unknown key %q (Cairn knows %s, %s, %s*)", k, paramFsType, strings.Join(model.MutableParameterKeys, ", "), kubernetesPrefix)
		}
	}
	return fs, nil
}

// snapshotKind is what a VolumeSnapshotClass asks for.
type snapshotKind struct {
	Backup bool
	Target string
}

const paramBackupTarget = "backupTarget"

// checkSnapshotParameters validates VolumeSnapshotClass parameters: type
// snap (default, a local reflink) or backup (to backupTarget, which may be
// left out when exactly one target is configured).
func checkSnapshotParameters(params map[string]string, targets []string) (snapshotKind, error) {
	var k snapshotKind
	for key, v := range params {
		switch {
		case key == paramSnapshotType:
			switch v {
			case "", "snap":
			case "backup":
				k.Backup = true
			default:
				return k, invalid("parameters.type %q is not supported (use \"snap\" or \"backup\")", v)
			}
		case key == paramBackupTarget:
			k.Target = v
		case strings.HasPrefix(key, kubernetesPrefix):
		default:
			return k, invalid("parameters: unknown key %q (Cairn knows %q and %q)", key, paramSnapshotType, paramBackupTarget)
		}
	}
	if !k.Backup {
		if k.Target != "" {
			return k, invalid("parameters.backupTarget is set but parameters.type is not \"backup\"")
		}
		return k, nil
	}
	if k.Target == "" {
		if len(targets) != 1 {
			return k, invalid("parameters.backupTarget is required with type \"backup\" (configured targets: %s)", strings.Join(targets, ", "))
		}
		k.Target = targets[0]
	}
	if !slices.Contains(targets, k.Target) {
		return k, invalid("parameters.backupTarget %q is not configured (configured targets: %s)", k.Target, strings.Join(targets, ", "))
	}
	return k, nil
}

// checkPath requires an absolute, clean path for field (no "..", ".",
// doubled or trailing slashes: what the CO sends is compared with what was
// recorded as it is), outside what the data root keeps (owned, nil for no
// data root).
func checkPath(p, field string, owned func(string) bool) error {
	if p == "" {
		return invalid("%s is required", field)
	}
	if strings.Contains(p, "\x00") {
		return invalid("%s contains a NUL byte", field)
	}
	if !filepath.IsAbs(p) {
		return invalid("%s %q must be an absolute path", field, p)
	}
	if filepath.Clean(p) != p {
		return invalid("%s %q must be a clean path (%q)", field, p, filepath.Clean(p))
	}
	if owned != nil && owned(p) {
		return invalid("%s %q is inside what Cairn's data root keeps", field, p)
	}
	return nil
}

// CheckNodeID validates a node ID: it is the value of the topology segment
// TopologyKey, which CSI limits to 63 characters, alphanumeric at both
// ends with '-', '_' and '.' between (a Kubernetes label value).
func CheckNodeID(id, field string) error {
	if !nodeIDRe.MatchString(id) {
		return invalid("%s %q: a node ID is 1 to 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit", field, id)
	}
	return nil
}

var nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

func required(v, field string) error {
	if v == "" {
		return invalid("%s is required", field)
	}
	return nil
}

// checkCapacity validates a capacity range.
func checkCapacity(r *csipb.CapacityRange) error {
	if r == nil {
		return nil
	}
	if r.GetRequiredBytes() < 0 || r.GetLimitBytes() < 0 {
		return invalid("capacity_range: bytes must not be negative")
	}
	return nil
}

// placement turns a topology requirement into node names. Every segment
// must name a node under TopologyKey, the only key this driver reports.
func placement(req *csipb.TopologyRequirement, field string) (model.Placement, error) {
	var p model.Placement
	nodes := func(list []*csipb.Topology, sub string) ([]string, error) {
		var out []string
		for i, t := range list {
			n, ok := t.GetSegments()[TopologyKey]
			if !ok || n == "" {
				return nil, invalid("%s.%s[%d]: segment %v lacks the key %s", field, sub, i, t.GetSegments(), TopologyKey)
			}
			if err := CheckNodeID(n, fmt.Sprintf("%s.%s[%d].segments[%s]", field, sub, i, TopologyKey)); err != nil {
				return nil, err
			}
			out = append(out, n)
		}
		return out, nil
	}
	var err error
	if p.Requisite, err = nodes(req.GetRequisite(), "requisite"); err != nil {
		return p, err
	}
	if p.Preferred, err = nodes(req.GetPreferred(), "preferred"); err != nil {
		return p, err
	}
	return p, nil
}
