package agent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/cluster"

	"github.com/cairn-csi/cairn/internal/control/standby"
	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
)

// fileTarget creates the BackupTarget "default", a directory, and waits
// until the agent has configured it; it returns the directory.
func (f *fixture) fileTarget() string {
	f.t.Helper()
	target := f.t.TempDir()
	if err := f.cl.Create(f.ctx, &cairnv1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: cairnv1.BackupTargetSpec{URL: "file://" + target}}); err != nil {
		f.t.Fatal(err)
	}
	f.eventually(time.Minute, func() error {
		if !slices.Contains(f.eng.BackupTargets(), "default") {
			return errors.New("target not configured by the agent yet")
		}
		return nil
	})
	return target
}

// sourceBackup writes data at off into the engine volume id's file and
// backs it up to target "default", returning the backup ID.
func (f *fixture) sourceBackup(id, name string, off int64, data []byte) string {
	f.t.Helper()
	file, err := os.OpenFile(filepath.Join(f.eng.Root(), "volumes", id, "data.img"), os.O_WRONLY, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := file.WriteAt(data, off); err != nil {
		f.t.Fatal(err)
	}
	file.Close()
	var bid string
	f.eventually(time.Minute, func() error {
		info, err := f.eng.CreateBackup(f.ctx, name, id, "default", nil)
		if err != nil {
			return err
		}
		if !info.Ready {
			return errors.New("backup not committed yet")
		}
		bid = info.Handle.BackupID
		return nil
	})
	return bid
}

// A StandbyVolume on this node follows a volume's backups (the first in
// full, the next by its one changed block), and a PVC naming it in
// dataSourceRef activates it: the controller takes the PVC, the agent
// turns the copy into a Volume holding the newest backup, and the
// controller creates its PV pre-bound to the PVC.
func TestStandbyVolumeFollowsAndActivates(t *testing.T) {
	f := newFixture(t)
	f.fileTarget()
	src, err := f.eng.CreateVolume(f.ctx, model.CreateVolumeRequest{Name: "primary", RequiredBytes: 16 * mib, Block: true})
	if err != nil {
		t.Fatal(err)
	}
	first := bytes.Repeat([]byte("standby!"), 512*1024) // 4 MiB
	b1 := f.sourceBackup(src.ID, "b1", 0, first)

	// The controller's part runs as cairn controller runs it: a cluster
	// with a cached client.
	cl, err := cluster.New(f.cfg, func(o *cluster.Options) { o.Scheme = kube.Scheme })
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = cl.Start(f.ctx) }()
	ctl := &standby.Controller{Client: cl.GetClient(), Events: cl.GetEventRecorder("cairn-controller"),
		Driver: "cairn.csi.dev", TopologyKey: "topology.cairn.csi.dev/node", Resync: 200 * time.Millisecond}
	go ctl.Run(f.ctx)

	ns := "shop"
	if err := f.cl.Create(f.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	sv := &cairnv1.StandbyVolume{ObjectMeta: metav1.ObjectMeta{Name: "db-dr", Namespace: ns},
		Spec: cairnv1.StandbyVolumeSpec{BackupTargetName: "default", SourceVolumeID: src.ID, PollInterval: &metav1.Duration{Duration: 10 * time.Second}}}
	if err := f.cl.Create(f.ctx, sv); err != nil {
		t.Fatal(err)
	}
	get := func() *cairnv1.StandbyVolume {
		var got cairnv1.StandbyVolume
		if err := f.cl.Get(f.ctx, client.ObjectKeyFromObject(sv), &got); err != nil {
			t.Fatal(err)
		}
		return &got
	}
	f.eventually(time.Minute, func() error {
		got := get()
		if got.Spec.NodeName != testNode || got.Status.Phase != cairnv1.StandbyFollowing || got.Status.BackupID != b1 {
			return fmt.Errorf("standby: node %q, phase %q, backup %q (%s), want %s following %s", got.Spec.NodeName, got.Status.Phase, got.Status.BackupID, got.Status.Message, testNode, b1)
		}
		return nil
	})
	if got := get(); !got.Status.LastSyncFull || got.Status.LastSyncBlocks != 1 || !got.Status.Block || got.Status.SizeBytes != 16*mib {
		t.Errorf("after the first sync: %+v", got.Status)
	}
	// A second backup changes one 4 MiB block (at 8 MiB): that one block
	// is downloaded.
	second := bytes.Repeat([]byte("changed!"), 4096)
	b2 := f.sourceBackup(src.ID, "b2", 8*mib, second)
	f.eventually(30*time.Second, func() error {
		if got := get(); got.Status.BackupID != b2 {
			return fmt.Errorf("standby holds %s, want %s", got.Status.BackupID, b2)
		}
		return nil
	})
	if got := get(); got.Status.LastSyncFull || got.Status.LastSyncBlocks != 1 || got.Status.BehindBackups != 0 || got.Status.LatestBackupID != b2 {
		t.Errorf("after the incremental sync: %+v", got.Status)
	}

	// A Filesystem PVC is refused for a block backup; a Block PVC takes it.
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "cairn"}, Provisioner: "cairn.csi.dev",
		ReclaimPolicy: ptr.To(corev1.PersistentVolumeReclaimDelete)}
	if err := f.cl.Create(f.ctx, sc); err != nil {
		t.Fatal(err)
	}
	pvc := func(name string, mode corev1.PersistentVolumeMode) *corev1.PersistentVolumeClaim {
		p := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To("cairn"), AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, VolumeMode: &mode,
			Resources:     corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("32Mi")}},
			DataSourceRef: &corev1.TypedObjectReference{APIGroup: ptr.To("cairn.csi.dev"), Kind: "StandbyVolume", Name: "db-dr"},
		}}
		if err := f.cl.Create(f.ctx, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pvc("wrong-mode", corev1.PersistentVolumeFilesystem)
	f.eventually(30*time.Second, func() error {
		for _, e := range f.events("wrong-mode") {
			if bytes.Contains([]byte(e), []byte(standby.ReasonRefused)) {
				return nil
			}
		}
		return fmt.Errorf("no %s event on the Filesystem PVC: %v", standby.ReasonRefused, f.events("wrong-mode"))
	})
	if got := get(); got.Spec.Activate || got.Status.Claim != nil {
		t.Fatalf("a refused PVC activated the standby: %+v", got.Status.Claim)
	}
	claim := pvc("db", corev1.PersistentVolumeBlock)
	start := time.Now()
	var pv corev1.PersistentVolume
	f.eventually(time.Minute, func() error {
		got := get()
		if got.Status.Phase != cairnv1.StandbyActivated || got.Status.PersistentVolumeName == "" {
			return fmt.Errorf("standby %s (%s), PV %q", got.Status.Phase, got.Status.Message, got.Status.PersistentVolumeName)
		}
		return f.cl.Get(f.ctx, client.ObjectKey{Name: got.Status.PersistentVolumeName}, &pv)
	})
	took := time.Since(start)
	got := get()
	t.Logf("activated in %s (node: %s)", took, got.Status.ActivationDuration.Duration)
	if r := pv.Spec.ClaimRef; r == nil || r.UID != claim.UID || pv.Spec.CSI == nil || pv.Spec.CSI.VolumeHandle != got.Status.VolumeID ||
		pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || *pv.Spec.VolumeMode != corev1.PersistentVolumeBlock {
		t.Errorf("PV %+v does not serve PVC db with volume %s", pv.Spec, got.Status.VolumeID)
	}
	if q := pv.Spec.Capacity[corev1.ResourceStorage]; q.Value() != 32*mib {
		t.Errorf("PV capacity %s, want the PVC's 32Mi", q.String())
	}
	var v cairnv1.Volume
	f.eventually(30*time.Second, func() error {
		if err := f.cl.Get(f.ctx, client.ObjectKey{Name: got.Status.VolumeID}, &v); err != nil {
			return err
		}
		if v.Status.Phase != cairnv1.PhaseReady {
			return fmt.Errorf("Volume %s is %s", v.Name, v.Status.Phase)
		}
		return nil
	})
	data, err := os.ReadFile(filepath.Join(f.eng.Root(), "volumes", v.Name, "data.img"))
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 32*mib)
	copy(want, first)
	copy(want[8*mib:], second)
	if !bytes.Equal(data, want) {
		t.Error("the activated volume does not hold the newest backup")
	}
	if _, err := os.Stat(filepath.Join(f.eng.Root(), "standby")); err == nil {
		if entries, _ := os.ReadDir(filepath.Join(f.eng.Root(), "standby")); len(entries) > 0 {
			t.Errorf("standby copies left after activation: %v", entries)
		}
	}
	// Activated by the field, with no PVC: the PV is reserved for a PVC
	// named like the standby, so no other pending PVC takes it.
	sv2 := &cairnv1.StandbyVolume{ObjectMeta: metav1.ObjectMeta{Name: "db-dr-field", Namespace: ns},
		Spec: cairnv1.StandbyVolumeSpec{BackupTargetName: "default", SourceVolumeID: src.ID, Activate: true}}
	if err := f.cl.Create(f.ctx, sv2); err != nil {
		t.Fatal(err)
	}
	var pv2 corev1.PersistentVolume
	f.eventually(time.Minute, func() error {
		return f.cl.Get(f.ctx, client.ObjectKey{Name: cairnv1.StandbyVolumeName(sv2.UID)}, &pv2)
	})
	if r := pv2.Spec.ClaimRef; r == nil || r.UID != "" || r.Namespace != ns || r.Name != sv2.Name || *pv2.Spec.VolumeMode != corev1.PersistentVolumeBlock {
		t.Errorf("PV of a field-activated standby: claimRef %+v, mode %s", r, *pv2.Spec.VolumeMode)
	}
	// A status written by someone else naming another volume (the one
	// above) gets no PV: the controller derives the volume from the UID.
	sv3 := &cairnv1.StandbyVolume{ObjectMeta: metav1.ObjectMeta{Name: "forged", Namespace: ns},
		Spec: cairnv1.StandbyVolumeSpec{BackupTargetName: "default", SourceVolumeID: src.ID, NodeName: "node-z"}}
	if err := f.cl.Create(f.ctx, sv3); err != nil {
		t.Fatal(err)
	}
	forged := sv3.DeepCopy()
	forged.Status = cairnv1.StandbyVolumeStatus{Phase: cairnv1.StandbyActivated, VolumeID: got.Status.VolumeID, SizeBytes: 1 << 40, BackupID: b2,
		Claim: &cairnv1.StandbyClaim{Namespace: ns, Name: "db", UID: claim.UID}}
	if err := f.cl.Status().Update(f.ctx, forged); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: cairnv1.StandbyVolumeName(sv3.UID)}, &corev1.PersistentVolume{}); err == nil {
		t.Error("a PV was made from a forged status")
	}

	// Deleting the StandbyVolume leaves the volume alone.
	if err := f.cl.Delete(f.ctx, got); err != nil {
		t.Fatal(err)
	}
	f.eventually(30*time.Second, func() error {
		err := f.cl.Get(f.ctx, client.ObjectKeyFromObject(sv), &cairnv1.StandbyVolume{})
		if err == nil {
			return errors.New("StandbyVolume not gone yet")
		}
		return client.IgnoreNotFound(err)
	})
	if _, err := f.eng.GetVolume(f.ctx, v.Name); err != nil {
		t.Errorf("the activated volume went with its StandbyVolume: %v", err)
	}
}

// A StandbyVolume with a bad spec field is Failed naming it; the API
// server refuses changing an immutable field and undoing activation.
func TestStandbyVolumeSpecChecks(t *testing.T) {
	f := newFixture(t)
	ns := "default"
	sv := &cairnv1.StandbyVolume{ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: ns, Labels: map[string]string{cairnv1.NodeLabel: testNode}},
		Spec: cairnv1.StandbyVolumeSpec{BackupTargetName: "default", SourceVolumeID: "Not/A/Volume", NodeName: testNode}}
	if err := f.cl.Create(f.ctx, sv); err != nil {
		t.Fatal(err)
	}
	f.eventually(30*time.Second, func() error {
		var got cairnv1.StandbyVolume
		if err := f.cl.Get(f.ctx, client.ObjectKeyFromObject(sv), &got); err != nil {
			return err
		}
		if got.Status.Phase != cairnv1.PhaseFailed || !bytes.Contains([]byte(got.Status.Message), []byte("spec.sourceVolumeID")) {
			return fmt.Errorf("phase %q, message %q", got.Status.Phase, got.Status.Message)
		}
		return nil
	})
	var got cairnv1.StandbyVolume
	if err := f.cl.Get(f.ctx, client.ObjectKeyFromObject(sv), &got); err != nil {
		t.Fatal(err)
	}
	for what, mod := range map[string]func(*cairnv1.StandbyVolume){
		"backupTargetName": func(s *cairnv1.StandbyVolume) { s.Spec.BackupTargetName = "other" },
		"nodeName":         func(s *cairnv1.StandbyVolume) { s.Spec.NodeName = "node-b" },
	} {
		c := got.DeepCopy()
		mod(c)
		if err := f.cl.Update(f.ctx, c); err == nil {
			t.Errorf("changing spec.%s was accepted", what)
		}
	}
	c := got.DeepCopy()
	c.Spec.Activate = true
	if err := f.cl.Update(f.ctx, c); err != nil {
		t.Fatal(err)
	}
	c.Spec.Activate = false
	if err := f.cl.Update(f.ctx, c); err == nil {
		t.Error("undoing spec.activate was accepted")
	}
}
