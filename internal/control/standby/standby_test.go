package standby

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
)

func node(name string, avail int64, hb time.Time, targets ...string) cairnv1.StorageNode {
	return cairnv1.StorageNode{ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: cairnv1.StorageNodeStatus{AvailableBytes: avail, HeartbeatTime: metav1.Time{Time: hb}, BackupTargets: targets}}
}

func TestPickNode(t *testing.T) {
	now := time.Now()
	old := now.Add(-time.Hour)
	for _, c := range []struct {
		name  string
		nodes []cairnv1.StorageNode
		want  string
		why   string
	}{
		{"none registered", nil, "", "no Cairn node"},
		{"most room wins", []cairnv1.StorageNode{node("a", 10, now, "t"), node("b", 30, now, "t"), node("c", 20, now, "t")}, "b", ""},
		{"equal room: by name", []cairnv1.StorageNode{node("b", 10, now, "t"), node("a", 10, now, "t")}, "a", ""},
		{"silent node skipped", []cairnv1.StorageNode{node("a", 99, old, "t"), node("b", 1, now, "t")}, "b", ""},
		{"target required", []cairnv1.StorageNode{node("a", 99, now, "other"), node("b", 1, now, "t", "other")}, "b", ""},
		{"no node has the target", []cairnv1.StorageNode{node("a", 99, now, "other")}, "", `backup target "t"`},
		{"all silent", []cairnv1.StorageNode{node("a", 99, old, "t")}, "", "silent"},
	} {
		got, why := PickNode(c.nodes, "t", now, time.Minute)
		if got != c.want || !strings.Contains(why, c.why) {
			t.Errorf("%s: got %q (%q), want %q (%q)", c.name, got, why, c.want, c.why)
		}
	}
}

func claim(mode corev1.PersistentVolumeMode, size string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "shop", UID: "pvc-uid"},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To("fast"), VolumeMode: &mode,
			AccessModes:   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod},
			Resources:     corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
			DataSourceRef: &corev1.TypedObjectReference{APIGroup: ptr.To("cairn.csi.dev"), Kind: "StandbyVolume", Name: "db-dr"},
		}}
}

func TestStandbySource(t *testing.T) {
	p := claim(corev1.PersistentVolumeFilesystem, "1Gi")
	if name, ok := StandbySource(p); !ok || name != "db-dr" {
		t.Errorf("StandbySource = %q, %t", name, ok)
	}
	for what, mod := range map[string]func(*corev1.TypedObjectReference){
		"other group":     func(r *corev1.TypedObjectReference) { r.APIGroup = ptr.To("example.com") },
		"no group":        func(r *corev1.TypedObjectReference) { r.APIGroup = nil },
		"other kind":      func(r *corev1.TypedObjectReference) { r.Kind = "Volume" },
		"other namespace": func(r *corev1.TypedObjectReference) { r.Namespace = ptr.To("elsewhere") },
	} {
		q := p.DeepCopy()
		mod(q.Spec.DataSourceRef)
		if _, ok := StandbySource(q); ok {
			t.Errorf("%s: taken as a standby source", what)
		}
	}
	q := p.DeepCopy()
	q.Spec.DataSourceRef = nil
	if _, ok := StandbySource(q); ok {
		t.Error("a PVC without dataSourceRef taken as a standby source")
	}
}

func TestClaimProblem(t *testing.T) {
	if why := ClaimProblem(claim(corev1.PersistentVolumeBlock, "1Gi"), &cairnv1.StandbyVolume{}); !strings.Contains(why, "no backup yet") {
		t.Errorf("PVC of a standby holding nothing yet: %q", why)
	}
	block := &cairnv1.StandbyVolume{Status: cairnv1.StandbyVolumeStatus{BackupID: "b-1", Block: true}}
	if why := ClaimProblem(claim(corev1.PersistentVolumeFilesystem, "1Gi"), block); !strings.Contains(why, "raw block") {
		t.Errorf("Filesystem PVC of a block backup: %q", why)
	}
	if why := ClaimProblem(claim(corev1.PersistentVolumeBlock, "1Gi"), block); why != "" {
		t.Errorf("Block PVC of a block backup refused: %q", why)
	}
	activated := &cairnv1.StandbyVolume{Status: cairnv1.StandbyVolumeStatus{BackupID: "b-1", Phase: cairnv1.StandbyActivated, SizeBytes: 1 << 30}}
	if why := ClaimProblem(claim(corev1.PersistentVolumeFilesystem, "2Gi"), activated); !strings.Contains(why, "expand") {
		t.Errorf("PVC larger than an activated volume: %q", why)
	}
	if why := ClaimProblem(claim(corev1.PersistentVolumeFilesystem, "1Gi"), activated); why != "" {
		t.Errorf("PVC that fits an activated volume refused: %q", why)
	}
}

func TestPersistentVolume(t *testing.T) {
	sv := &cairnv1.StandbyVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "db-dr", Namespace: "shop", UID: "u-1"},
		Spec:       cairnv1.StandbyVolumeSpec{NodeName: "node-b"},
		Status: cairnv1.StandbyVolumeStatus{VolumeID: "v-forged", SizeBytes: 1, FsType: "ext4",
			SourceClaim: &cairnv1.SourceClaim{AccessModes: []string{"ReadWriteMany"}, VolumeMode: "Filesystem"}},
	}
	// What the PV says comes from the Volume, not from the status.
	vol := &Volume{ID: "v-1", Node: "node-b", FsType: "xfs", SizeBytes: 3 << 30}
	retain := corev1.PersistentVolumeReclaimRetain
	sc := &storagev1.StorageClass{ReclaimPolicy: &retain, MountOptions: []string{"noatime"}}

	// Pre-bound to a PVC: the PVC's modes and class.
	pv := PersistentVolume(sv, vol, claim(corev1.PersistentVolumeFilesystem, "1Gi"), "fast", sc, "cairn.csi.dev", "topo")
	if pv.Name != "standby-u-1" || pv.Annotations[provisionedBy] != "cairn.csi.dev" || pv.Annotations[StandbyAnnotation] != "shop/db-dr" {
		t.Errorf("PV metadata %+v", pv.ObjectMeta)
	}
	s := pv.Spec
	if s.ClaimRef == nil || s.ClaimRef.UID != "pvc-uid" || s.StorageClassName != "fast" || s.AccessModes[0] != corev1.ReadWriteOncePod ||
		*s.VolumeMode != corev1.PersistentVolumeFilesystem || s.PersistentVolumeReclaimPolicy != retain || s.MountOptions[0] != "noatime" {
		t.Errorf("PV for a PVC: %+v", s)
	}
	if s.CSI.Driver != "cairn.csi.dev" || s.CSI.VolumeHandle != "v-1" || s.CSI.FSType != "xfs" || s.CSI.VolumeAttributes["fsType"] != "xfs" {
		t.Errorf("PV source %+v", s.CSI)
	}
	if q := s.Capacity[corev1.ResourceStorage]; q.Value() != 3<<30 {
		t.Errorf("capacity %s", q.String())
	}
	if r := s.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0]; r.Key != "topo" || r.Values[0] != "node-b" {
		t.Errorf("node affinity %+v", r)
	}

	// No PVC, no class here: reserved by name for a PVC like the
	// standby's, the backup's recorded modes, Retain.
	pv = PersistentVolume(sv, vol, nil, "gone", nil, "cairn.csi.dev", "topo")
	if r := pv.Spec.ClaimRef; r == nil || r.UID != "" || r.Namespace != "shop" || r.Name != "db-dr" ||
		pv.Spec.AccessModes[0] != corev1.ReadWriteMany || pv.Spec.PersistentVolumeReclaimPolicy != retain || pv.Spec.StorageClassName != "gone" {
		t.Errorf("unbound PV: %+v", pv.Spec)
	}
	// A block volume: Block, and no fsType.
	sv.Status.SourceClaim = nil
	vol.Block, vol.FsType = true, ""
	pv = PersistentVolume(sv, vol, nil, "", nil, "cairn.csi.dev", "topo")
	if *pv.Spec.VolumeMode != corev1.PersistentVolumeBlock || pv.Spec.CSI.FSType != "" || pv.Spec.AccessModes[0] != corev1.ReadWriteOnce {
		t.Errorf("block PV: %+v", pv.Spec)
	}
}
