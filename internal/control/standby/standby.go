// Package standby is the controller's part of StandbyVolumes
// (docs/STANDBY.md): it places a standby on a node, acts as the populator
// of PVCs that name one in dataSourceRef (which activates it), and creates
// the PersistentVolume of an activated one. The node agent keeps the copy
// and activates it. No storage code: it reads and writes API objects only.
package standby

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// LeaseName is the Lease that elects the replica running this controller.
const LeaseName = "cairn-standby-volumes"

// Event reasons.
const (
	ReasonNotFound = "StandbyVolumeNotFound"
	ReasonTaken    = "StandbyVolumeTaken"
	ReasonRefused  = "StandbyVolumeRefused"
	ReasonPlaced   = "Placed"
	ReasonNoNode   = "NoNode"
	ReasonPV       = "PersistentVolumeCreated"
)

// StandbyAnnotation on a PV names the StandbyVolume (namespace/name) it
// was activated from.
const StandbyAnnotation = "cairn.csi.dev/standby"

// provisionedBy is the annotation csi-provisioner reads to know that it
// deletes a PV (CSI DeleteVolume) when its reclaim policy is Delete.
const provisionedBy = "pv.kubernetes.io/provisioned-by"

// Controller runs the controller's part of StandbyVolumes: Run on one
// replica at a time.
type Controller struct {
	Client client.Client
	Events recorder.EventRecorder
	// Driver is the CSI driver name, TopologyKey its node topology key.
	Driver, TopologyKey string
	// HeartbeatTimeout: a node whose agent is silent longer gets no
	// standby (default 2m).
	HeartbeatTimeout time.Duration
	// Resync is how often the objects are looked at (default 3s).
	Resync time.Duration

	mu     sync.Mutex
	warned map[types.UID]string // the last warning given each object
}

// Run looks at every StandbyVolume and every PVC naming one, every
// Resync, until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	resync := c.Resync
	if resync <= 0 {
		resync = 3 * time.Second
	}
	tick := time.NewTicker(resync)
	defer tick.Stop()
	for {
		c.pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (c *Controller) pass(ctx context.Context) {
	var list cairnv1.StandbyVolumeList
	if err := c.Client.List(ctx, &list); err != nil {
		if ctx.Err() == nil {
			klog.ErrorS(err, "Listing StandbyVolumes")
		}
		return
	}
	var pvcs corev1.PersistentVolumeClaimList
	if err := c.Client.List(ctx, &pvcs); err != nil {
		if ctx.Err() == nil {
			klog.ErrorS(err, "Listing PersistentVolumeClaims")
		}
		return
	}
	// PVCs naming a standby, by the standby, oldest first: the first one
	// takes it.
	claims := map[types.NamespacedName][]*corev1.PersistentVolumeClaim{}
	for i := range pvcs.Items {
		p := &pvcs.Items[i]
		if name, ok := StandbySource(p); ok && p.DeletionTimestamp.IsZero() && p.Spec.VolumeName == "" {
			k := types.NamespacedName{Namespace: p.Namespace, Name: name}
			claims[k] = append(claims[k], p)
		}
	}
	for _, ps := range claims {
		sort.SliceStable(ps, func(i, j int) bool { return ps[i].CreationTimestamp.Before(&ps[j].CreationTimestamp) })
	}
	for i := range list.Items {
		sv := &list.Items[i]
		k := types.NamespacedName{Namespace: sv.Namespace, Name: sv.Name}
		if err := c.sync(ctx, sv, claims[k]); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "StandbyVolume", "standby", k)
		}
		delete(claims, k)
	}
	for k, ps := range claims {
		for _, p := range ps {
			if !c.owned(ctx, p) {
				continue
			}
			c.warn(p, ReasonNotFound, "No StandbyVolume %s in namespace %s: this PVC stays Pending until one exists", k.Name, k.Namespace)
		}
	}
}

// StandbySource is the StandbyVolume a PVC names in its dataSourceRef.
func StandbySource(p *corev1.PersistentVolumeClaim) (string, bool) {
	r := p.Spec.DataSourceRef
	if r == nil || r.APIGroup == nil || *r.APIGroup != cairnv1.GroupVersion.Group || r.Kind != cairnv1.StandbyVolumeKind {
		return "", false
	}
	if r.Namespace != nil && *r.Namespace != "" && *r.Namespace != p.Namespace {
		return "", false // cross-namespace sources are not taken
	}
	return r.Name, r.Name != ""
}

// owned tells whether a PVC's class is of this driver (the PVCs of other
// provisioners are not ours to populate).
func (c *Controller) owned(ctx context.Context, p *corev1.PersistentVolumeClaim) bool {
	sc, err := c.class(ctx, className(p))
	return err == nil && sc != nil && sc.Provisioner == c.Driver
}

func className(p *corev1.PersistentVolumeClaim) string {
	if p.Spec.StorageClassName == nil {
		return ""
	}
	return *p.Spec.StorageClassName
}

func (c *Controller) class(ctx context.Context, name string) (*storagev1.StorageClass, error) {
	if name == "" {
		return nil, nil
	}
	var sc storagev1.StorageClass
	if err := c.Client.Get(ctx, client.ObjectKey{Name: name}, &sc); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	return &sc, nil
}

// sync does what one StandbyVolume needs from the controller.
func (c *Controller) sync(ctx context.Context, sv *cairnv1.StandbyVolume, claims []*corev1.PersistentVolumeClaim) error {
	if !sv.DeletionTimestamp.IsZero() {
		return nil
	}
	if sv.Spec.NodeName == "" || sv.Labels[cairnv1.NodeLabel] != sv.Spec.NodeName {
		return c.place(ctx, sv)
	}
	if err := c.takeClaim(ctx, sv, claims); err != nil {
		return err
	}
	if sv.Status.Phase == cairnv1.StandbyActivated {
		return c.publish(ctx, sv)
	}
	return nil
}

// place sets spec.nodeName (if empty) and the node label.
func (c *Controller) place(ctx context.Context, sv *cairnv1.StandbyVolume) error {
	orig := sv.DeepCopy()
	if sv.Spec.NodeName == "" {
		var nodes cairnv1.StorageNodeList
		if err := c.Client.List(ctx, &nodes); err != nil {
			return err
		}
		node, why := PickNode(nodes.Items, sv.Spec.BackupTargetName, time.Now(), c.HeartbeatTimeout)
		if node == "" {
			c.warn(sv, ReasonNoNode, "No node can keep this standby: %s", why)
			return nil
		}
		sv.Spec.NodeName = node
		c.Events.Eventf(sv, nil, corev1.EventTypeNormal, ReasonPlaced, ReasonPlaced, "Standby placed on node %s", node)
	}
	if sv.Labels == nil {
		sv.Labels = map[string]string{}
	}
	sv.Labels[cairnv1.NodeLabel] = sv.Spec.NodeName
	// Optimistic: two writers placing at once cannot both win.
	return c.Client.Patch(ctx, sv, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
}

// PickNode is the node for a standby of target: among the nodes whose
// agent reported within timeout (default 2m) and that list the target,
// the one with the most available bytes (by name among equals); "" and
// why when there is none.
func PickNode(nodes []cairnv1.StorageNode, target string, now time.Time, timeout time.Duration) (string, string) {
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	best, why := "", "no Cairn node is registered"
	var room int64 = -1
	for _, n := range nodes {
		hb := n.Status.HeartbeatTime
		switch {
		case hb.IsZero() || now.Sub(hb.Time) > timeout:
			why = fmt.Sprintf("node %s's agent is silent", n.Name)
		case !slices.Contains(n.Status.BackupTargets, target):
			why = fmt.Sprintf("no node has backup target %q configured (node %s has %v)", target, n.Name, n.Status.BackupTargets)
		case n.Status.AvailableBytes > room || (n.Status.AvailableBytes == room && n.Name < best):
			best, room = n.Name, n.Status.AvailableBytes
		}
	}
	if best != "" {
		return best, ""
	}
	return "", why
}

// takeClaim gives the standby to the oldest PVC naming it, if it has no
// claim yet, and activates it; later PVCs are told it is taken. A claim
// whose PVC is gone, before activation, is released.
func (c *Controller) takeClaim(ctx context.Context, sv *cairnv1.StandbyVolume, claims []*corev1.PersistentVolumeClaim) error {
	if cl := sv.Status.Claim; cl != nil && sv.Status.Phase != cairnv1.StandbyActivated {
		var p corev1.PersistentVolumeClaim
		err := c.Client.Get(ctx, client.ObjectKey{Namespace: cl.Namespace, Name: cl.Name}, &p)
		if apierrors.IsNotFound(err) || (err == nil && p.UID != cl.UID) {
			orig := sv.DeepCopy()
			sv.Status.Claim = nil
			if err := c.Client.Status().Patch(ctx, sv, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
	}
	for _, p := range claims {
		if !c.owned(ctx, p) {
			continue
		}
		if cl := sv.Status.Claim; cl != nil {
			if cl.UID != p.UID {
				c.warn(p, ReasonTaken, "StandbyVolume %s was taken by PVC %s/%s", sv.Name, cl.Namespace, cl.Name)
			}
			continue
		}
		if why := ClaimProblem(p, sv); why != "" {
			c.warn(p, ReasonRefused, "StandbyVolume %s cannot populate this PVC: %s", sv.Name, why)
			continue
		}
		orig := sv.DeepCopy()
		req := p.Spec.Resources.Requests[corev1.ResourceStorage]
		sv.Status.Claim = &cairnv1.StandbyClaim{Namespace: p.Namespace, Name: p.Name, UID: p.UID, RequestBytes: req.Value()}
		// The claim first (the agent grows the volume to its request),
		// then activation; with the optimistic lock two replicas
		// cannot give it to two PVCs.
		if err := c.Client.Status().Patch(ctx, sv, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			return err
		}
		c.Events.Eventf(p, sv, corev1.EventTypeNormal, "Activating", "Activating", "Activating StandbyVolume %s for this PVC", sv.Name)
		break
	}
	if sv.Status.Claim != nil && !sv.Spec.Activate {
		orig := sv.DeepCopy()
		sv.Spec.Activate = true
		return c.Client.Patch(ctx, sv, client.MergeFrom(orig))
	}
	return nil
}

// ClaimProblem says why a PVC cannot take a standby now, or "".
func ClaimProblem(p *corev1.PersistentVolumeClaim, sv *cairnv1.StandbyVolume) string {
	block := p.Spec.VolumeMode != nil && *p.Spec.VolumeMode == corev1.PersistentVolumeBlock
	req := p.Spec.Resources.Requests[corev1.ResourceStorage]
	switch {
	case sv.Status.BackupID == "":
		return "it holds no backup yet (the PVC is taken once its first restore is done)"
	case sv.Status.Block && !block:
		return "it holds a raw block volume and the PVC asks for volumeMode Filesystem (a file system would be made over the data)"
	case sv.Status.Phase == cairnv1.StandbyActivated && req.Value() > sv.Status.SizeBytes:
		return fmt.Sprintf("it was activated with %d bytes and the PVC requests %s: request at most that, then expand", sv.Status.SizeBytes, req.String())
	}
	return ""
}

// Volume is what the PV of an activated standby is made from: read from
// the Volume object of the ID derived from the standby's UID, never from
// the standby's status (which others may write).
type Volume struct {
	ID, Node, FsType string
	SizeBytes        int64
	Block            bool
}

// activated reads the Volume an activated standby became and checks that
// it is this standby's, on its node.
func (c *Controller) activated(ctx context.Context, sv *cairnv1.StandbyVolume) (*Volume, string, error) {
	name := cairnv1.StandbyVolumeName(sv.UID)
	id := model.VolumeIDForName(name)
	if sv.Status.VolumeID != id {
		return nil, fmt.Sprintf("status.volumeID %q is not this standby's volume %s", sv.Status.VolumeID, id), nil
	}
	var v cairnv1.Volume
	if err := c.Client.Get(ctx, client.ObjectKey{Name: id}, &v); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, "", nil // not yet (the agent creates it)
		}
		return nil, "", err
	}
	if v.Spec.Name != name || v.Spec.NodeName != sv.Spec.NodeName || v.Status.Phase != cairnv1.PhaseReady || v.Status.SizeBytes <= 0 {
		return nil, "", nil // not this standby's, or not ready yet
	}
	fs := v.Status.FsType
	if fs == "" {
		fs = v.Spec.FsType
	}
	return &Volume{ID: id, Node: v.Spec.NodeName, FsType: fs, SizeBytes: v.Status.SizeBytes, Block: v.Spec.Block}, "", nil
}

// publish creates the PV of an activated standby, or binds its unclaimed
// PV to the PVC that now claims it.
func (c *Controller) publish(ctx context.Context, sv *cairnv1.StandbyVolume) error {
	vol, why, err := c.activated(ctx, sv)
	if err != nil || vol == nil {
		if why != "" {
			c.warn(sv, ReasonRefused, "No PersistentVolume is made: %s", why)
		}
		return err
	}
	name := cairnv1.StandbyVolumeName(sv.UID)
	var pvc *corev1.PersistentVolumeClaim
	if cl := sv.Status.Claim; cl != nil && cl.Namespace == sv.Namespace {
		var p corev1.PersistentVolumeClaim
		err := c.Client.Get(ctx, client.ObjectKey{Namespace: cl.Namespace, Name: cl.Name}, &p)
		switch {
		case err != nil && !apierrors.IsNotFound(err):
			return err
		case err != nil || p.UID != cl.UID || !p.DeletionTimestamp.IsZero():
		case p.Spec.VolumeName != "" && p.Spec.VolumeName != name:
			c.warn(&p, ReasonRefused, "This PVC is bound to %s, not to StandbyVolume %s's volume", p.Spec.VolumeName, sv.Name)
		case vol.Block && (p.Spec.VolumeMode == nil || *p.Spec.VolumeMode != corev1.PersistentVolumeBlock):
			c.warn(&p, ReasonRefused, "StandbyVolume %s became a raw block volume and this PVC asks for volumeMode Filesystem (a file system would be made over the data)", sv.Name)
			return nil
		default:
			pvc = &p
		}
	}
	var pv corev1.PersistentVolume
	err = c.Client.Get(ctx, client.ObjectKey{Name: name}, &pv)
	switch {
	case apierrors.IsNotFound(err):
		cname := sv.Spec.StorageClassName
		if pvc != nil {
			cname = className(pvc)
		} else if cname == "" && sv.Status.SourceClaim != nil {
			cname = sv.Status.SourceClaim.StorageClassName
		}
		sc, err := c.class(ctx, cname)
		if err != nil {
			return err
		}
		if sc != nil && sc.Provisioner != c.Driver {
			sc = nil // another driver's class: its reclaim policy and mount options are not ours to use
		}
		want := PersistentVolume(sv, vol, pvc, cname, sc, c.Driver, c.TopologyKey)
		if err := c.Client.Create(ctx, want); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create PersistentVolume %s: %w", name, err)
		}
		c.Events.Eventf(sv, nil, corev1.EventTypeNormal, ReasonPV, ReasonPV, "PersistentVolume %s created for volume %s%s", name, vol.ID, claimNote(pvc, sv))
	case err != nil:
		return err
	case pvc != nil && pv.Status.Phase == corev1.VolumeAvailable && (pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID == ""):
		// Reserved by name only (activated without a PVC): a PVC that
		// names the standby takes it.
		orig := pv.DeepCopy()
		pv.Spec.ClaimRef = claimRef(pvc)
		if err := c.Client.Patch(ctx, &pv, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			return err
		}
	}
	if sv.Status.PersistentVolumeName != name {
		orig := sv.DeepCopy()
		sv.Status.PersistentVolumeName = name
		return c.Client.Status().Patch(ctx, sv, client.MergeFrom(orig))
	}
	return nil
}

func claimNote(p *corev1.PersistentVolumeClaim, sv *cairnv1.StandbyVolume) string {
	if p == nil {
		return fmt.Sprintf(", reserved for a PVC named %s in namespace %s", sv.Name, sv.Namespace)
	}
	return fmt.Sprintf(", bound to PVC %s/%s", p.Namespace, p.Name)
}

func claimRef(p *corev1.PersistentVolumeClaim) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: p.Namespace, Name: p.Name, UID: p.UID}
}

// PersistentVolume is the PV of volume vol, which standby sv became:
// pre-bound to pvc when there is one (class, access modes and volume mode
// from it), else reserved for a PVC named like the standby in its
// namespace, with the access modes and volume mode the backup recorded;
// reclaim policy and mount options from class sc (none: Retain).
func PersistentVolume(sv *cairnv1.StandbyVolume, vol *Volume, pvc *corev1.PersistentVolumeClaim, className string, sc *storagev1.StorageClass, driver, topologyKey string) *corev1.PersistentVolume {
	modes := []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	mode := corev1.PersistentVolumeFilesystem
	if vol.Block {
		mode = corev1.PersistentVolumeBlock
	}
	if c := sv.Status.SourceClaim; c != nil {
		if len(c.AccessModes) > 0 {
			modes = nil
			for _, m := range c.AccessModes {
				modes = append(modes, corev1.PersistentVolumeAccessMode(m))
			}
		}
		if c.VolumeMode == string(corev1.PersistentVolumeBlock) {
			mode = corev1.PersistentVolumeBlock
		}
	}
	ref := &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: sv.Namespace, Name: sv.Name}
	if pvc != nil {
		if len(pvc.Spec.AccessModes) > 0 {
			modes = pvc.Spec.AccessModes
		}
		mode = corev1.PersistentVolumeFilesystem
		if pvc.Spec.VolumeMode != nil {
			mode = *pvc.Spec.VolumeMode
		}
		ref = claimRef(pvc)
	}
	reclaim := corev1.PersistentVolumeReclaimRetain
	var mountOptions []string
	if sc != nil {
		reclaim = corev1.PersistentVolumeReclaimDelete
		if sc.ReclaimPolicy != nil {
			reclaim = *sc.ReclaimPolicy
		}
		mountOptions = sc.MountOptions
	}
	src := &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: vol.ID, VolumeAttributes: map[string]string{}}
	if mode == corev1.PersistentVolumeFilesystem && vol.FsType != "" {
		src.FSType = vol.FsType
		src.VolumeAttributes["fsType"] = vol.FsType
	}
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        cairnv1.StandbyVolumeName(sv.UID),
			Annotations: map[string]string{provisionedBy: driver, StandbyAnnotation: sv.Namespace + "/" + sv.Name},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(vol.SizeBytes, resource.BinarySI)},
			AccessModes:                   modes,
			VolumeMode:                    &mode,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              className,
			MountOptions:                  mountOptions,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: src},
			ClaimRef:                      ref,
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{vol.Node}}},
			}}}},
		},
	}
}

// warn records a Warning event on obj unless the same one was the last
// given it.
func (c *Controller) warn(obj client.Object, reason, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.mu.Lock()
	if c.warned == nil {
		c.warned = map[types.UID]string{}
	}
	same := c.warned[obj.GetUID()] == reason+msg
	c.warned[obj.GetUID()] = reason + msg
	c.mu.Unlock()
	if !same {
		c.Events.Eventf(obj, nil, corev1.EventTypeWarning, reason, reason, "%s", msg)
	}
}
