package agent

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// waitRecovered waits until the object named name exists again as a
// re-created object (another UID than old, RecoveredAnnotation) whose
// status the agent filled from its engine.
func (f *fixture) waitRecovered(obj client.Object, name string, old types.UID) {
	f.t.Helper()
	f.eventually(90*time.Second, func() error {
		if err := f.cl.Get(f.ctx, client.ObjectKey{Name: name}, obj); err != nil {
			return err
		}
		if obj.GetUID() == old || !obj.GetDeletionTimestamp().IsZero() {
			return fmt.Errorf("%s not re-created yet", name)
		}
		if !recovered(obj) {
			return fmt.Errorf("%s lacks %s", name, cairnv1.RecoveredAnnotation)
		}
		switch o := obj.(type) {
		case *cairnv1.Volume:
			if o.Status.Phase != cairnv1.PhaseReady || o.Status.ObservedGeneration != o.Generation || o.Status.SizeBytes == 0 {
				return fmt.Errorf("re-created volume status %+v", o.Status)
			}
		case *cairnv1.Snapshot:
			if !o.Status.ReadyToUse || o.Status.CreationTime == nil || o.Status.SizeBytes == 0 {
				return fmt.Errorf("re-created snapshot status %+v", o.Status)
			}
		case *cairnv1.GroupSnapshot:
			if !o.Status.ReadyToUse || o.Status.CreationTime == nil || len(o.Status.Members) == 0 {
				return fmt.Errorf("re-created group snapshot status %+v", o.Status)
			}
		}
		return nil
	})
	if obj.GetLabels()[cairnv1.NodeLabel] != testNode || !slices.Equal(obj.GetFinalizers(), []string{cairnv1.Finalizer}) {
		f.t.Errorf("re-created %s: labels %v, finalizers %v", name, obj.GetLabels(), obj.GetFinalizers())
	}
}

// csiDelete deletes a snapshot and volumes as CSI does and checks that
// their data is gone from the engine.
func (f *fixture) csiDelete(snapID string, volIDs ...string) {
	f.t.Helper()
	if err := f.remote.DeleteSnapshot(f.ctx, snapID); err != nil {
		f.t.Fatal(err)
	}
	for _, id := range volIDs {
		if err := f.remote.DeleteVolume(f.ctx, id); err != nil {
			f.t.Fatal(err)
		}
	}
	if vols, _ := f.eng.ListVolumes(f.ctx); len(vols) != 0 {
		f.t.Errorf("engine still has %d volumes after DeleteVolume", len(vols))
	}
	if snaps, _ := f.eng.ListSnapshots(f.ctx); len(snaps) != 0 {
		f.t.Errorf("engine still has %d snapshots after DeleteSnapshot", len(snaps))
	}
}

// agentRunning fails the test if the agent's manager has stopped.
func (f *fixture) agentRunning() {
	f.t.Helper()
	select {
	case err := <-f.agent:
		f.t.Fatalf("the node agent stopped: %v", err)
	default:
	}
}

// TestObjectDeletedWithoutCSIDelete: a person deletes a Volume and a
// Snapshot object (kubectl delete volume.cairn.csi.dev …). The data stays,
// the agent re-creates both objects from its data root, and the controller
// answers everything as before: lookups, a repeated CreateVolume,
// ListSnapshots, a restore, expansion, and the CSI deletes, which do
// remove the data.
func TestObjectDeletedWithoutCSIDelete(t *testing.T) {
	f := newFixture(t)
	params := map[string]string{"csi.storage.k8s.io/fstype": "ext4", "custom": "kept"}
	vol, err := f.create("kept", 512*mib, onlyNode(testNode), func(r *model.CreateVolumeRequest) { r.Parameters = params })
	if err != nil {
		t.Fatal(err)
	}
	snap, err := f.remote.CreateSnapshot(f.ctx, "kept-snap", vol.ID, map[string]string{"type": "snap"}, model.Placement{})
	if err != nil {
		t.Fatal(err)
	}
	var v0 cairnv1.Volume
	var s0 cairnv1.Snapshot
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: vol.ID}, &v0); err != nil {
		t.Fatal(err)
	}
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: snap.ID}, &s0); err != nil {
		t.Fatal(err)
	}
	for _, o := range []client.Object{&v0, &s0} {
		if err := f.cl.Delete(f.ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	var v cairnv1.Volume
	var s cairnv1.Snapshot
	f.waitRecovered(&v, vol.ID, v0.UID)
	f.waitRecovered(&s, snap.ID, s0.UID)
	if _, err := f.eng.GetVolume(f.ctx, vol.ID); err != nil {
		t.Fatalf("the volume's data went with its object: %v", err)
	}
	if _, err := f.eng.GetSnapshot(f.ctx, snap.ID); err != nil {
		t.Fatalf("the snapshot's data went with its object: %v", err)
	}
	if !reflect.DeepEqual(v.Spec, v0.Spec) {
		t.Errorf("re-created volume spec %+v, want %+v", v.Spec, v0.Spec)
	}
	if !reflect.DeepEqual(s.Spec, s0.Spec) {
		t.Errorf("re-created snapshot spec %+v, want %+v", s.Spec, s0.Spec)
	}
	f.eventually(10*time.Second, func() error {
		if ev := strings.Join(f.events(vol.ID), "\n"); !strings.Contains(ev, "DataKept") || !strings.Contains(ev, "Recovered") {
			return fmt.Errorf("volume events lack DataKept and Recovered: %s", ev)
		}
		return nil
	})

	// The controller answers as before.
	got, err := f.remote.GetVolume(f.ctx, vol.ID)
	if err != nil || got.Node != testNode || got.SizeBytes != 512*mib || got.Name != "kept" || got.FsType != "ext4" || !reflect.DeepEqual(got.Parameters, params) {
		t.Fatalf("GetVolume of the re-created volume: %+v %v", got, err)
	}
	if again, err := f.create("kept", 512*mib, onlyNode(testNode), func(r *model.CreateVolumeRequest) { r.Parameters = params }); err != nil || again.ID != vol.ID {
		t.Fatalf("repeated CreateVolume: %+v %v", again, err)
	}
	snaps, err := f.remote.ListSnapshots(f.ctx)
	if err != nil || len(snaps) != 1 || snaps[0].ID != snap.ID || snaps[0].SizeBytes != 512*mib || snaps[0].SourceVolumeID != vol.ID {
		t.Fatalf("ListSnapshots: %v %v", snaps, err)
	}
	restored, err := f.create("from-kept", 512*mib, model.Placement{}, func(r *model.CreateVolumeRequest) { r.SourceSnapshotID = snap.ID })
	if err != nil || restored.Node != testNode {
		t.Fatalf("restore from the re-created snapshot: %v %v", restored, err)
	}
	if res, err := f.remote.ExpandVolume(f.ctx, vol.ID, gib, 0); err != nil || res.SizeBytes != gib {
		t.Fatalf("expand the re-created volume: %+v %v", res, err)
	}
	if ev, _ := f.eng.GetVolume(f.ctx, vol.ID); ev == nil || ev.SizeBytes != gib {
		t.Errorf("engine after expansion: %+v", ev)
	}

	// CSI deletes still delete, and nothing comes back.
	f.csiDelete(snap.ID, vol.ID, restored.ID)
	time.Sleep(3 * time.Second) // three recovery passes
	for _, o := range []client.Object{&cairnv1.Volume{}, &cairnv1.Snapshot{}} {
		for _, id := range []string{vol.ID, snap.ID, restored.ID} {
			if err := f.cl.Get(f.ctx, client.ObjectKey{Name: id}, o); !apierrors.IsNotFound(err) {
				t.Errorf("%s came back after its CSI delete (%v)", id, err)
			}
		}
	}
}

// TestRecoveredOrForeignObjectsMakeNoData: an object marked as re-created
// whose data is gone, or whose name is not its spec's ID, never makes data.
func TestRecoveredOrForeignObjectsMakeNoData(t *testing.T) {
	f := newFixture(t)
	ghost := model.VolumeIDForName("ghost")
	mismatched := model.VolumeIDForName("one-name")
	for _, v := range []*cairnv1.Volume{
		{ObjectMeta: metav1.ObjectMeta{Name: ghost, Annotations: map[string]string{cairnv1.RecoveredAnnotation: "2026-01-01T00:00:00Z"}}, Spec: cairnv1.VolumeSpec{Name: "ghost"}},
		{ObjectMeta: metav1.ObjectMeta{Name: mismatched}, Spec: cairnv1.VolumeSpec{Name: "another-name"}},
	} {
		v.Labels = map[string]string{cairnv1.NodeLabel: testNode}
		v.Spec.NodeName, v.Spec.RequiredBytes = testNode, 64*mib
		if err := f.cl.Create(f.ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	for id, reason := range map[string]string{ghost: "NotFound", mismatched: "InvalidArgument"} {
		f.eventually(30*time.Second, func() error {
			var v cairnv1.Volume
			if err := f.cl.Get(f.ctx, client.ObjectKey{Name: id}, &v); err != nil {
				return err
			}
			if v.Status.Phase != cairnv1.PhaseFailed || v.Status.Reason != reason {
				return fmt.Errorf("volume %s status %+v, want Failed %s", id, v.Status, reason)
			}
			return nil
		})
	}
	if vols, _ := f.eng.ListVolumes(f.ctx); len(vols) != 0 {
		t.Errorf("the engine made %d volumes for them", len(vols))
	}
}

// TestCRDsRemovedAndRestored: the CRDs are deleted (kubectl delete -k
// deploy/kustomize/base deletes them, and with them every object) while a
// volume and a snapshot exist, then applied again. The data stays, the
// agent survives, re-creates the objects and resumes its work, and a later
// CSI delete removes the data.
func TestCRDsRemovedAndRestored(t *testing.T) {
	f := newFixture(t)
	vol, err := f.create("survivor", 512*mib, onlyNode(testNode), nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := f.remote.CreateSnapshot(f.ctx, "survivor-snap", vol.ID, nil, model.Placement{})
	if err != nil {
		t.Fatal(err)
	}
	var v0 cairnv1.Volume
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: vol.ID}, &v0); err != nil {
		t.Fatal(err)
	}
	crds := envtest.CRDInstallOptions{Paths: []string{f.crds}}
	if err := envtest.UninstallCRDs(f.cfg, crds); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	f.eventually(2*time.Minute, func() error {
		for _, name := range []string{"volumes.cairn.csi.dev", "snapshots.cairn.csi.dev", "storagenodes.cairn.csi.dev", "backuptargets.cairn.csi.dev"} {
			crd := &metav1.PartialObjectMetadata{}
			crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
			if err := f.cl.Get(f.ctx, client.ObjectKey{Name: name}, crd); !apierrors.IsNotFound(err) {
				return fmt.Errorf("CRD %s still there (%v)", name, err)
			}
		}
		return nil
	})
	t.Logf("CRDs gone after %s", time.Since(start).Round(time.Millisecond))
	if _, err := f.eng.GetVolume(f.ctx, vol.ID); err != nil {
		t.Fatalf("the volume's data went with the CRDs: %v", err)
	}
	if _, err := f.eng.GetSnapshot(f.ctx, snap.ID); err != nil {
		t.Fatalf("the snapshot's data went with the CRDs: %v", err)
	}
	time.Sleep(2 * time.Second) // recovery passes and heartbeats fail meanwhile
	f.agentRunning()

	if _, err := envtest.InstallCRDs(f.cfg, crds); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	var v cairnv1.Volume
	f.waitRecovered(&v, vol.ID, v0.UID)
	f.waitRecovered(&cairnv1.Snapshot{}, snap.ID, "")
	t.Logf("objects re-created %s after the CRDs were applied again", time.Since(start).Round(time.Millisecond))
	if !reflect.DeepEqual(v.Spec, v0.Spec) {
		t.Errorf("re-created volume spec %+v, want %+v", v.Spec, v0.Spec)
	}
	// The agent resumed: its StorageNode is back, and it carries out new
	// work (an expansion, a new volume) through its informers.
	f.eventually(90*time.Second, func() error {
		c, err := f.remote.Capacity(f.ctx, testNode)
		if err == nil && c <= 0 {
			err = errors.New("no StorageNode report since the CRDs came back")
		}
		return err
	})
	f.eventually(90*time.Second, func() error {
		_, err := f.remote.ExpandVolume(f.ctx, vol.ID, gib, 0)
		return err
	})
	if ev, _ := f.eng.GetVolume(f.ctx, vol.ID); ev == nil || ev.SizeBytes != gib {
		t.Errorf("engine after expansion: %+v", ev)
	}
	t.Logf("agent working again %s after the CRDs were applied again", time.Since(start).Round(time.Millisecond))
	fresh, err := f.create("after-reinstall", 256*mib, onlyNode(testNode), nil)
	if err != nil {
		t.Fatal(err)
	}
	f.agentRunning()
	f.csiDelete(snap.ID, vol.ID, fresh.ID)
}
