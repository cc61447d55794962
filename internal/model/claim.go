package model

import (
	"fmt"
	"regexp"
	"slices"
)

// Claim describes the PersistentVolumeClaim a backup was taken of, so
// that it can be recreated in another cluster (docs/FORMAT.md, the
// manifest's claim). Every field may be empty where it is not known
// (standalone mode knows only what the CO passed).
type Claim struct {
	Name             string   `json:"name,omitempty"`
	Namespace        string   `json:"namespace,omitempty"`
	StorageClassName string   `json:"storageClassName,omitempty"`
	AccessModes      []string `json:"accessModes,omitempty"`
	// VolumeMode is Filesystem or Block.
	VolumeMode string `json:"volumeMode,omitempty"`
	// RequestBytes is the PVC's storage request when backed up.
	RequestBytes int64 `json:"requestBytes,omitempty"`
}

// CSI parameters the external-provisioner (--extra-create-metadata) adds
// to CreateVolume.
const (
	ParamPVCName      = "csi.storage.k8s.io/pvc/name"
	ParamPVCNamespace = "csi.storage.k8s.io/pvc/namespace"
)

// ClaimFromParameters is what a volume's CreateVolume parameters tell of
// its PVC (name and namespace, when the CO passed them); nil if nothing.
func ClaimFromParameters(params map[string]string, block bool) *Claim {
	c := &Claim{Name: params[ParamPVCName], Namespace: params[ParamPVCNamespace], VolumeMode: "Filesystem"}
	if c.Name == "" || c.Check() != nil {
		return nil
	}
	if block {
		c.VolumeMode = "Block"
	}
	return c
}

var (
	dnsSubdomainRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	dnsLabelRe     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	accessModes    = []string{"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}
)

// Check bounds a claim read from a backup store or an object: Kubernetes
// names, known access and volume modes, so that printing or using one
// is safe.
func (c *Claim) Check() error {
	switch {
	case c.Name != "" && !dnsSubdomainRe.MatchString(c.Name):
		return fmt.Errorf("claim.name %q is not a Kubernetes object name", c.Name)
	case c.Namespace != "" && !dnsLabelRe.MatchString(c.Namespace):
		return fmt.Errorf("claim.namespace %q is not a namespace name", c.Namespace)
	case c.StorageClassName != "" && !dnsSubdomainRe.MatchString(c.StorageClassName):
		return fmt.Errorf("claim.storageClassName %q is not a StorageClass name", c.StorageClassName)
	case len(c.AccessModes) > len(accessModes):
		return fmt.Errorf("claim.accessModes: %d entries", len(c.AccessModes))
	case c.VolumeMode != "" && c.VolumeMode != "Filesystem" && c.VolumeMode != "Block":
		return fmt.Errorf("claim.volumeMode %q: want Filesystem or Block", c.VolumeMode)
	case c.RequestBytes < 0:
		return fmt.Errorf("claim.requestBytes %d is negative", c.RequestBytes)
	}
	for _, m := range c.AccessModes {
		if !slices.Contains(accessModes, m) {
			return fmt.Errorf("claim.accessModes: %q is not an access mode", m)
		}
	}
	return nil
}
