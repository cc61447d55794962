package policy

import (
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
)

// TestMadeByRefusesLookAlikes: only the policy's own snapshots of this
// very PVC may ever be pruned; a hand-made snapshot that copies the
// label, one of an earlier PVC of the same name, or one renamed are not.
func TestMadeByRefusesLookAlikes(t *testing.T) {
	slot := time.Date(2026, 12, 4, 19, 30, 0, 0, time.UTC)
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "shop", UID: "uid-now"}}
	snap := func(mod func(*snapv1.VolumeSnapshot)) *snapv1.VolumeSnapshot {
		src := "db"
		vs := &snapv1.VolumeSnapshot{
			ObjectMeta: metav1.ObjectMeta{Name: SnapshotName("db", "hourly", slot), Namespace: "shop",
				Labels:      map[string]string{cairnv1.PolicyLabel: "hourly"},
				Annotations: map[string]string{cairnv1.ScheduleTimeAnnotation: slot.Format(time.RFC3339), cairnv1.PVCUIDAnnotation: "uid-now"}},
			Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &src}},
		}
		if mod != nil {
			mod(vs)
		}
		return vs
	}
	if !madeBy(snap(nil), "hourly", pvc) {
		t.Fatal("the policy's own snapshot is not recognized")
	}
	for name, mod := range map[string]func(*snapv1.VolumeSnapshot){
		"label copied by hand": func(vs *snapv1.VolumeSnapshot) { vs.Annotations = nil; vs.Name = "by-hand" },
		"an earlier PVC's":     func(vs *snapv1.VolumeSnapshot) { vs.Annotations[cairnv1.PVCUIDAnnotation] = "uid-before" },
		"another policy's":     func(vs *snapv1.VolumeSnapshot) { vs.Labels[cairnv1.PolicyLabel] = "daily" },
		"another PVC's":        func(vs *snapv1.VolumeSnapshot) { other := "db2"; vs.Spec.Source.PersistentVolumeClaimName = &other },
		"renamed":              func(vs *snapv1.VolumeSnapshot) { vs.Name = "db-keep-this" },
		"schedule time edited": func(vs *snapv1.VolumeSnapshot) {
			vs.Annotations[cairnv1.ScheduleTimeAnnotation] = "2020-01-01T00:00:00Z"
		},
		"schedule time unparsable": func(vs *snapv1.VolumeSnapshot) { vs.Annotations[cairnv1.ScheduleTimeAnnotation] = "soon" },
		"from a content, no PVC":   func(vs *snapv1.VolumeSnapshot) { vs.Spec.Source.PersistentVolumeClaimName = nil },
	} {
		if madeBy(snap(mod), "hourly", pvc) {
			t.Errorf("%s: taken for the policy's own snapshot", name)
		}
	}
}
