package ui

import (
	"context"
	"fmt"
	"sort"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// Volume is one Cairn PVC as the pages show it.
type Volume struct {
	Namespace, Name, Class, PV, VolumeID string
	UID                                  string // the PVC's
	Phase                                string // the PVC's phase
	State                                string // Ready, Pending, Failed, Unhealthy (from the Volume object)
	Message                              string
	SizeBytes                            int64
	UsedBytes                            int64 // on the node's data root (the Volume object's allocatedBytes)
	Node, Mode, FsType                   string
	Snapshots                            []Snapshot // newest first
	LastBackup                           *time.Time
	Created                              time.Time
}

// SnapshotCount and BackupCount split Snapshots by kind.
func (v Volume) SnapshotCount() int { return v.count(false) }

// BackupCount is the number of backups among the volume's snapshots.
func (v Volume) BackupCount() int { return v.count(true) }

func (v Volume) count(backup bool) int {
	n := 0
	for _, s := range v.Snapshots {
		if s.Backup == backup {
			n++
		}
	}
	return n
}

// Snapshot is a VolumeSnapshot of a Cairn PVC.
type Snapshot struct {
	Namespace, Name, Class, Handle string
	UID                            string // the VolumeSnapshot's
	Backup                         bool   // a backup in a target (bs:// handle, or a backup class)
	Target                         string
	Ready                          bool
	Error                          string
	Progress                       string // an upload's progress, from Cairn's Snapshot object
	RestoreBytes                   int64
	Created                        time.Time
}

// Backup is one backup in a target, as the backups page lists it: from
// Cairn's Snapshot object where the caller may read it (which knows
// imports and verification), joined with its VolumeSnapshot (which knows
// the PVC) where there is one.
type Backup struct {
	Target, Handle, Node string
	Object, ObjectUID    string // Cairn's Snapshot object ("" if unreadable)
	Ready                bool
	Message              string // upload progress or the last error
	SizeBytes            int64
	Created              time.Time
	Verification         *cairnv1.Verification
	// Snapshot is its VolumeSnapshot, if any, of the PVC PVCNamespace/
	// PVCName; without one, those name the source claim the backup
	// recorded.
	Snapshot              *Snapshot
	PVCNamespace, PVCName string
}

// Node is a StorageNode.
type Node struct {
	Name                                               string
	CapacityBytes, FreeBytes, ReservedBytes, UsedBytes int64
	AvailableBytes                                     int64
	CloneMode, Version, IOLimits                       string
	Targets                                            []string
	Heartbeat                                          time.Time
	Ready, Healthy                                     bool
	Message                                            string
	Volumes                                            int
}

// Class is a snapshot class of this driver.
type Class struct {
	Name   string
	Backup bool
	Target string
}

// State is everything the pages show, read with the caller's identity.
// Kinds the caller may not list are left empty and named in Denied.
type State struct {
	Volumes         []Volume
	Nodes           []Node
	SnapshotClasses []Class
	Targets         []cairnv1.BackupTarget
	Standbys        []cairnv1.StandbyVolume
	Backups         []Backup // by target, newest first
	Events          []corev1.Event
	Denied          []string
	Read            time.Time
}

// Read lists what the pages (and kubectl cairn) need. Forbidden kinds do not fail the read:
// RBAC decides what each person sees.
func Read(ctx context.Context, c client.Client, driver string) (*State, error) {
	s := &State{Read: time.Now()}
	var (
		pvcs   corev1.PersistentVolumeClaimList
		pvs    corev1.PersistentVolumeList
		scs    storagev1.StorageClassList
		vss    snapv1.VolumeSnapshotList
		vscs   snapv1.VolumeSnapshotContentList
		vsc    snapv1.VolumeSnapshotClassList
		vols   cairnv1.VolumeList
		snaps  cairnv1.SnapshotList
		nodes  cairnv1.StorageNodeList
		tgts   cairnv1.BackupTargetList
		sbvs   cairnv1.StandbyVolumeList
		events corev1.EventList
	)
	for _, l := range []struct {
		what string
		list client.ObjectList
	}{
		{"persistentvolumeclaims", &pvcs}, {"persistentvolumes", &pvs}, {"storageclasses", &scs},
		{"volumesnapshots", &vss}, {"volumesnapshotcontents", &vscs}, {"volumesnapshotclasses", &vsc},
		{"volumes.cairn.csi.dev", &vols}, {"snapshots.cairn.csi.dev", &snaps}, {"storagenodes.cairn.csi.dev", &nodes},
		{"backuptargets.cairn.csi.dev", &tgts}, {"standbyvolumes.cairn.csi.dev", &sbvs}, {"events", &events},
	} {
		if err := c.List(ctx, l.list); err != nil {
			if apierrors.IsForbidden(err) || apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
				s.Denied = append(s.Denied, l.what)
				continue
			}
			return nil, fmt.Errorf("list %s: %w", l.what, err)
		}
	}
	ours := map[string]bool{}
	for _, sc := range scs.Items {
		ours[sc.Name] = sc.Provisioner == driver
	}
	pvByName := map[string]*corev1.PersistentVolume{}
	for i := range pvs.Items {
		pvByName[pvs.Items[i].Name] = &pvs.Items[i]
	}
	volByID := map[string]*cairnv1.Volume{}
	perNode := map[string]int{}
	for i := range vols.Items {
		volByID[vols.Items[i].Name] = &vols.Items[i]
		perNode[vols.Items[i].Spec.NodeName]++
	}
	contents := map[string]*snapv1.VolumeSnapshotContent{}
	for i := range vscs.Items {
		contents[vscs.Items[i].Name] = &vscs.Items[i]
	}
	progress := map[string]string{} // Cairn snapshot object name -> message
	for _, sn := range snaps.Items {
		if !sn.Status.ReadyToUse && sn.Status.Message != "" {
			progress[sn.Spec.Name] = sn.Status.Message
		}
	}
	for _, c := range vsc.Items {
		if c.Driver != driver {
			continue
		}
		cl := Class{Name: c.Name, Backup: c.Parameters["type"] == cairnv1.SnapshotBackup, Target: c.Parameters["backupTarget"]}
		if cl.Backup && cl.Target == "" {
			cl.Target = "default"
		}
		s.SnapshotClasses = append(s.SnapshotClasses, cl)
	}
	sort.Slice(s.SnapshotClasses, func(i, j int) bool { return s.SnapshotClasses[i].Name < s.SnapshotClasses[j].Name })
	classBackup := map[string]Class{}
	for _, c := range s.SnapshotClasses {
		classBackup[c.Name] = c
	}
	byPVC := map[string][]Snapshot{}
	for _, vs := range vss.Items {
		src := vs.Spec.Source.PersistentVolumeClaimName
		if src == nil {
			continue
		}
		sn := Snapshot{Namespace: vs.Namespace, Name: vs.Name, UID: string(vs.UID), Created: vs.CreationTimestamp.Time}
		if vs.Spec.VolumeSnapshotClassName != nil {
			sn.Class = *vs.Spec.VolumeSnapshotClassName
			cl := classBackup[sn.Class]
			sn.Backup, sn.Target = cl.Backup, cl.Target
		}
		if st := vs.Status; st != nil {
			sn.Ready = st.ReadyToUse != nil && *st.ReadyToUse
			if st.CreationTime != nil {
				sn.Created = st.CreationTime.Time
			}
			if st.RestoreSize != nil {
				sn.RestoreBytes = st.RestoreSize.Value()
			}
			if st.Error != nil && st.Error.Message != nil {
				sn.Error = *st.Error.Message
			}
			if st.BoundVolumeSnapshotContentName != nil {
				if c := contents[*st.BoundVolumeSnapshotContentName]; c != nil && c.Status != nil && c.Status.SnapshotHandle != nil {
					sn.Handle = *c.Status.SnapshotHandle
					if model.IsBackupHandle(sn.Handle) {
						sn.Backup = true
						if h, err := model.ParseBackupHandle(sn.Handle); err == nil {
							sn.Target = h.Target
						}
					}
				}
				if !sn.Ready {
					// csi-snapshotter names the CSI snapshot after the VolumeSnapshot's UID.
					sn.Progress = progress["snapshot-"+string(vs.UID)]
				}
			}
		}
		k := vs.Namespace + "/" + *src
		byPVC[k] = append(byPVC[k], sn)
	}
	for _, p := range pvcs.Items {
		class := ""
		if p.Spec.StorageClassName != nil {
			class = *p.Spec.StorageClassName
		}
		pv := pvByName[p.Spec.VolumeName]
		if !ours[class] && (pv == nil || pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driver) {
			continue
		}
		v := Volume{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), Class: class, PV: p.Spec.VolumeName, Phase: string(p.Status.Phase),
			Created: p.CreationTimestamp.Time, Mode: "Filesystem", State: "Pending"}
		if p.Spec.VolumeMode != nil {
			v.Mode = string(*p.Spec.VolumeMode)
		}
		if q, ok := p.Status.Capacity[corev1.ResourceStorage]; ok {
			v.SizeBytes = q.Value()
		} else if q, ok := p.Spec.Resources.Requests[corev1.ResourceStorage]; ok {
			v.SizeBytes = q.Value()
		}
		if pv != nil && pv.Spec.CSI != nil {
			v.VolumeID = pv.Spec.CSI.VolumeHandle
			if o := volByID[v.VolumeID]; o != nil {
				v.Node, v.FsType, v.Message = o.Spec.NodeName, o.Status.FsType, o.Status.Message
				v.State, v.UsedBytes = o.Status.Phase, o.Status.AllocatedBytes
				if h := meta.FindStatusCondition(o.Status.Conditions, cairnv1.ConditionHealthy); h != nil && h.Status == "False" {
					v.State, v.Message = "Unhealthy", h.Message
				}
				if v.State == "" {
					v.State = "Pending"
				}
			}
		}
		v.Snapshots = byPVC[p.Namespace+"/"+p.Name]
		sort.Slice(v.Snapshots, func(i, j int) bool { return v.Snapshots[i].Created.After(v.Snapshots[j].Created) })
		for _, sn := range v.Snapshots {
			if sn.Backup && sn.Ready {
				t := sn.Created
				v.LastBackup = &t
				break
			}
		}
		s.Volumes = append(s.Volumes, v)
	}
	s.Backups = backups(snaps.Items, s.Volumes)
	for _, n := range nodes.Items {
		st := n.Status
		nd := Node{Name: n.Name, CapacityBytes: st.CapacityBytes, FreeBytes: st.FreeBytes, ReservedBytes: st.ReservedBytes,
			AvailableBytes: st.AvailableBytes, CloneMode: st.CloneMode, Version: st.Version, IOLimits: st.IOLimits,
			Targets: st.BackupTargets, Heartbeat: st.HeartbeatTime.Time, Volumes: perNode[n.Name]}
		if st.CapacityBytes > 0 && st.FreeBytes > 0 {
			nd.UsedBytes = st.CapacityBytes - st.FreeBytes
		}
		if c := meta.FindStatusCondition(st.Conditions, cairnv1.ConditionReady); c != nil {
			nd.Ready, nd.Message = c.Status == "True", c.Message
		}
		nd.Healthy = true
		if c := meta.FindStatusCondition(st.Conditions, cairnv1.ConditionHealthy); c != nil && c.Status == "False" {
			nd.Healthy, nd.Message = false, c.Message
		}
		s.Nodes = append(s.Nodes, nd)
	}
	sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].Name < s.Nodes[j].Name })
	s.Targets, s.Standbys = tgts.Items, sbvs.Items
	for _, e := range events.Items {
		if relevant(e) {
			s.Events = append(s.Events, e)
		}
	}
	sort.Slice(s.Events, func(i, j int) bool { return eventTime(s.Events[i]).After(eventTime(s.Events[j])) })
	if len(s.Events) > 30 {
		s.Events = s.Events[:30]
	}
	return s, nil
}

// backups joins Cairn's backup Snapshot objects with the volumes'
// backup VolumeSnapshots (by handle, or by the CSI name before the handle
// is known); a VolumeSnapshot without a readable object is a row of its
// own.
func backups(objs []cairnv1.Snapshot, vols []Volume) []Backup {
	type vsRef struct {
		sn      *Snapshot
		ns, pvc string
	}
	byHandle, byCSIName := map[string]vsRef{}, map[string]vsRef{}
	for i := range vols {
		for j := range vols[i].Snapshots {
			sn := &vols[i].Snapshots[j]
			if !sn.Backup {
				continue
			}
			r := vsRef{sn, vols[i].Namespace, vols[i].Name}
			byCSIName["snapshot-"+sn.UID] = r // csi-snapshotter's name for it
			if sn.Handle != "" {
				byHandle[sn.Handle] = r
			}
		}
	}
	var out []Backup
	joined := map[*Snapshot]bool{}
	for _, o := range objs {
		if o.Spec.Type != cairnv1.SnapshotBackup {
			continue
		}
		b := Backup{Target: o.Spec.BackupTarget, Handle: o.Status.SnapshotID, Node: o.Spec.NodeName, Object: o.Name, ObjectUID: string(o.UID),
			Ready: o.Status.ReadyToUse, SizeBytes: o.Status.SizeBytes, Created: o.CreationTimestamp.Time, Verification: o.Status.Verification}
		if b.Handle == "" {
			b.Handle = o.Spec.Handle
		}
		if h, err := model.ParseBackupHandle(b.Handle); err == nil {
			b.Target = h.Target
		}
		if o.Status.CreationTime != nil {
			b.Created = o.Status.CreationTime.Time
		}
		if !b.Ready {
			b.Message = o.Status.Message
		}
		r, ok := byHandle[b.Handle]
		if !ok && o.Spec.Name != "" {
			r, ok = byCSIName[o.Spec.Name]
		}
		if ok {
			b.Snapshot, b.PVCNamespace, b.PVCName = r.sn, r.ns, r.pvc
			joined[r.sn] = true
		} else if c := o.Spec.SourceClaim; c != nil {
			b.PVCNamespace, b.PVCName = c.Namespace, c.Name
		}
		out = append(out, b)
	}
	for _, r := range byCSIName {
		if joined[r.sn] {
			continue
		}
		out = append(out, Backup{Target: r.sn.Target, Handle: r.sn.Handle, Ready: r.sn.Ready, Message: r.sn.Progress + r.sn.Error,
			SizeBytes: r.sn.RestoreBytes, Created: r.sn.Created, Snapshot: r.sn, PVCNamespace: r.ns, PVCName: r.pvc})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Target != out[j].Target {
			return out[i].Target < out[j].Target
		}
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		if out[i].Handle != out[j].Handle {
			return out[i].Handle < out[j].Handle
		}
		return out[i].Object < out[j].Object
	})
	return out
}

// relevant: events about storage objects.
func relevant(e corev1.Event) bool {
	switch e.InvolvedObject.Kind {
	case "PersistentVolumeClaim", "PersistentVolume", "VolumeSnapshot", "VolumeSnapshotContent",
		"Volume", "Snapshot", "GroupSnapshot", "StorageNode", "BackupTarget", "StandbyVolume", "ProtectionPolicy":
		return true
	}
	return false
}

func eventTime(e corev1.Event) time.Time {
	switch {
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

// volume finds one PVC's row.
func (s *State) volume(ns, name string) *Volume {
	for i := range s.Volumes {
		if s.Volumes[i].Namespace == ns && s.Volumes[i].Name == name {
			return &s.Volumes[i]
		}
	}
	return nil
}
