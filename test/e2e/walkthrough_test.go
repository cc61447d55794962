package e2e

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/fsops"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

const (
	appNS        = "default"
	storageClass = "cairn" // deploy/examples/storageclass.yaml
	gi           = int64(1) << 30
)

// TestKubernetesMode is the walkthrough, step by step.
func TestKubernetesMode(t *testing.T) {
	e := newEnv(t)
	var err error
	e.step("build cairn", func() error {
		e.cairn, err = harness.Build(e.work)
		return err
	})
	e.step("XFS data root on a loop device", func() error {
		e.fs, err = scratchfs.Create(filepath.Join(e.work, "root.img"), filepath.Join(e.work, "root"), "xfs", 16<<30)
		return err
	})
	e.step("control plane: etcd, kube-apiserver (RBAC), kube-controller-manager, kube-scheduler", e.startControlPlane)
	e.step("prerequisites: snapshot CRDs and snapshot-controller", e.installPrerequisites)
	e.step("install Cairn from deploy/kustomize/base + example classes + BackupTarget", e.installCairn)
	e.step("register node-a and its CSINode (kubelet's part)", e.registerNode)
	e.step("start cairn node (as cairn-node) and 2 controller replicas (as cairn-controller)", func() error {
		if err := e.startNode(); err != nil {
			return err
		}
		pods, err := e.controllerPods(2)
		if err != nil {
			return err
		}
		for _, p := range pods {
			if _, err := e.startReplica(p); err != nil {
				return err
			}
		}
		return e.waitStorageNode()
	})
	e.step("csi-provisioner publishes CSIStorageCapacity for node-a", e.checkCapacity)

	var data []byte
	var pvcVol *mounted
	e.step("mysql-pvc 1Gi is Bound", func() error { return e.createPVC("mysql-pvc", "1Gi", nil) })
	e.step("write data into mysql-pvc through NodeStage/NodePublish", func() error {
		if pvcVol, err = e.mount("mysql-pvc"); err != nil {
			return err
		}
		data = make([]byte, 8<<20)
		rand.Read(data)
		return fsops.WriteFileAtomic(filepath.Join(pvcVol.Target, "mysql.db"), data, 0o644)
	})
	e.step("VolumeSnapshotClass longhorn (deletionPolicy Delete)", func() error {
		return e.snapshotClass("longhorn", snapv1.VolumeSnapshotContentDelete, map[string]string{"type": "snap"})
	})
	e.step("mysql-snapshot-demo readyToUse, content bound (restoreSize 1Gi, handle set)", func() error {
		return e.snapshot("mysql-snapshot-demo", "longhorn", "mysql-pvc")
	})
	e.step("mysql-restore-pvc from the snapshot is Bound with the data", func() error {
		return e.restoreAndCheck("mysql-restore-pvc", "1Gi", snapshotSource("mysql-snapshot-demo"), data)
	})
	e.step("mysql-clone-pvc from mysql-pvc is Bound with the data", func() error {
		return e.restoreAndCheck("mysql-clone-pvc", "1Gi", &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "mysql-pvc"}, data)
	})
	e.step("patch mysql-clone-pvc to 2Gi: PVC and PV 2Gi, Resizing + VolumeResizeSuccessful", func() error {
		return e.expand("mysql-clone-pvc", "2Gi")
	})
	e.step("the expanded clone mounts with a ~2Gi file system and the data", func() error {
		return e.checkMounted("mysql-clone-pvc", data, 19*gi/10)
	})
	e.step("type: backup snapshot (cairn-backup) readyToUse; cairn backup show prints the PVC it was taken of", func() error {
		if err := e.snapshot("mysql-backup", "cairn-backup", "mysql-pvc"); err != nil {
			return err
		}
		return e.checkBackupClaim("mysql-backup", "mysql-pvc")
	})
	e.step("restore from the backup is Bound with the data", func() error {
		return e.restoreAndCheck("mysql-backup-restore-pvc", "1Gi", snapshotSource("mysql-backup"), data)
	})
	e.step("a Retain snapshot survives deletion of its VolumeSnapshot", e.retainSnapshot)
	e.step("changed-block tracking: a backup application lists a block PVC's allocated and changed ranges through csi-snapshot-metadata", e.changedBlockTracking)
	e.step("cairn ui in headless Chromium: dashboard, Snapshot on mysql-pvc turns Ready without a reload, Restore gives a Bound PVC, Expand grows one, a viewer is refused by RBAC", e.webUI)
	e.step("kubectl cairn volumes, nodes, backups -o json, snapshots -o yaml (the binary as kubectl's plugin)", e.kubectlPlugin)
	var drData []byte
	var drHandle string
	e.step("another cluster's backup (standalone driver, same target)", func() error {
		drHandle, drData, err = e.foreignBackup()
		return err
	})
	e.step("pre-provisioned VolumeSnapshotContent naming that backup restores into a new PVC", func() error {
		return e.preProvisioned(drHandle, drData)
	})
	e.step("StandbyVolume follows another cluster's backups (1 full, 3 by changed blocks); a PVC naming it in dataSourceRef activates it in seconds with the newest data", e.standbyVolume)
	e.step("kubectl delete the Volume of mysql-clone-pvc: data kept, the node agent re-creates the object", func() error {
		return e.deleteVolumeObject("mysql-clone-pvc")
	})
	e.step("the re-created mysql-clone-pvc expands to 3Gi and mounts with the data", func() error {
		if err := e.expand("mysql-clone-pvc", "3Gi"); err != nil {
			return err
		}
		return e.checkMounted("mysql-clone-pvc", data, 29*gi/10)
	})
	e.step("delete Cairn's CRDs (as kubectl delete -k does), apply them again: data kept, objects re-created", e.reinstallCRDs)
	e.step("after the reinstall mysql-restore-pvc expands to 2Gi and mounts with the data", func() error {
		if err := e.expand("mysql-restore-pvc", "2Gi"); err != nil {
			return err
		}
		return e.checkMounted("mysql-restore-pvc", data, 19*gi/10)
	})
	e.step("kill cairn node while a snapshot is taken (file system frozen); restart: readyToUse", e.killNodeDuringSnapshot)
	e.step("data written after the restart is intact (file system thawed)", func() error {
		return fsops.WriteFileAtomic(filepath.Join(pvcVol.Target, "after-restart"), []byte("still writable\n"), 0o644)
	})
	e.step("ProtectionPolicy every minute, retain 3, two PVCs: 5 runs (one after every controller was down over 2 schedule times), 3 kept each, the hand-made one too", e.protectionPolicies)
	e.step("kill the active controller replica: the other takes over and provisions", e.failover)
	e.step("delete snapshots and PVCs (re-created objects too): volumes removed, nothing left on the data root", e.cleanup)
}

// waitStorageNode waits for the node agent's first report.
func (e *env) waitStorageNode() error {
	return e.eventually(time.Minute, func() error {
		var sn cairnv1.StorageNode
		if err := e.cc.Get(e.ctx, client.ObjectKey{Name: e.nodeName}, &sn); err != nil {
			if e.node.exited(0) {
				return errors.Join(err, fmt.Errorf("cairn node exited:\n%s", e.node.tail(3000)))
			}
			return err
		}
		if sn.Status.AvailableBytes <= 0 || sn.Status.CloneMode != "reflink" {
			return fmt.Errorf("storage node status %+v", sn.Status)
		}
		return nil
	})
}

func (e *env) checkCapacity() error {
	return e.eventually(2*time.Minute, func() error {
		caps, err := e.kc.StorageV1().CSIStorageCapacities(namespace).List(e.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, c := range caps.Items {
			if c.StorageClassName == storageClass && c.Capacity != nil && c.Capacity.Value() > gi &&
				c.NodeTopology != nil && c.NodeTopology.MatchLabels[topoKey] == e.nodeName {
				return nil
			}
		}
		return fmt.Errorf("no CSIStorageCapacity for %s on %s among %d", storageClass, e.nodeName, len(caps.Items))
	})
}

// createPVC creates a PVC of the cairn StorageClass and waits until it is
// Bound. The class binds WaitForFirstConsumer: the scheduler's part (the
// selected-node annotation a pod's scheduling sets) is played here.
func (e *env) createPVC(name, size string, source *corev1.TypedLocalObjectReference, mods ...func(*corev1.PersistentVolumeClaim)) error {
	sc := storageClass
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: appNS, Annotations: map[string]string{"volume.kubernetes.io/selected-node": e.nodeName}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &sc,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
			DataSource:       source,
		},
	}
	if source != nil && source.Kind == "VolumeSnapshot" {
		pvc.Spec.DataSource.APIGroup = ptr("snapshot.storage.k8s.io")
	}
	for _, m := range mods {
		m(pvc)
	}
	if _, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Create(e.ctx, pvc, metav1.CreateOptions{}); err != nil {
		return err
	}
	return e.eventually(3*time.Minute, func() error {
		got, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got.Status.Phase != corev1.ClaimBound {
			return fmt.Errorf("PVC %s is %s%s", name, got.Status.Phase, e.lastEvent("PersistentVolumeClaim", name))
		}
		pv, err := e.kc.CoreV1().PersistentVolumes().Get(e.ctx, got.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driver || pv.Spec.NodeAffinity == nil {
			return fmt.Errorf("PV %s is not a Cairn volume with node affinity: %+v", pv.Name, pv.Spec.PersistentVolumeSource)
		}
		return nil
	})
}

// lastEvent describes the newest event about an object, for messages.
func (e *env) lastEvent(kind, name string) string { return e.lastEventIn(appNS, kind, name) }

// lastEventIn is lastEvent for an object of namespace ns.
func (e *env) lastEventIn(ns, kind, name string) string {
	evs, err := e.kc.CoreV1().Events(ns).List(e.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name + ",involvedObject.kind=" + kind})
	if err != nil || len(evs.Items) == 0 {
		return ""
	}
	last := evs.Items[len(evs.Items)-1]
	return fmt.Sprintf(" (last event: %s %s)", last.Reason, last.Message)
}

func snapshotSource(name string) *corev1.TypedLocalObjectReference {
	return &corev1.TypedLocalObjectReference{Kind: "VolumeSnapshot", Name: name}
}

func ptr[T any](v T) *T { return &v }

// mounted is a PVC's volume staged and published by the test.
type mounted = harness.Mounted

// nodeClient connects to the node plugin's socket, as kubelet does.
func (e *env) nodeClient() (csipb.NodeClient, func(), error) {
	conn, err := grpc.NewClient("unix://"+e.nodeSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return csipb.NewNodeClient(conn), func() { conn.Close() }, nil
}

// mount stages and publishes a bound PVC's volume with the PV's volume
// attributes, as kubelet would for a pod.
func (e *env) mount(pvcName string) (*mounted, error) {
	pv, err := e.pvOf(pvcName)
	if err != nil {
		return nil, err
	}
	node, done, err := e.nodeClient()
	if err != nil {
		return nil, err
	}
	defer done()
	fs := pv.Spec.CSI.FSType
	return harness.MountVia(e.ctx, node, pv.Spec.CSI.VolumeHandle, e.mnt, false, fs, pv.Spec.CSI.VolumeAttributes)
}

func (e *env) unmount(m *mounted) error {
	node, done, err := e.nodeClient()
	if err != nil {
		return err
	}
	defer done()
	return harness.UnmountVia(e.ctx, node, m)
}

func (e *env) pvOf(pvcName string) (*corev1.PersistentVolume, error) {
	pvc, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, pvcName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return e.kc.CoreV1().PersistentVolumes().Get(e.ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
}

func (e *env) snapshotClass(name string, policy snapv1.DeletionPolicy, params map[string]string) error {
	_, err := e.snaps.SnapshotV1().VolumeSnapshotClasses().Create(e.ctx, &snapv1.VolumeSnapshotClass{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Driver: driver, DeletionPolicy: policy, Parameters: params,
	}, metav1.CreateOptions{})
	return err
}

// snapshot creates a VolumeSnapshot of a PVC and waits until it is ready
// with a bound content.
func (e *env) snapshot(name, class, pvc string) error {
	if err := e.createSnapshot(name, class, pvc); err != nil {
		return err
	}
	return e.waitSnapshotReady(name, 1*gi)
}

// createSnapshot creates a VolumeSnapshot of a PVC.
func (e *env) createSnapshot(name, class, pvc string) error {
	_, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Create(e.ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: appNS},
		Spec:       snapv1.VolumeSnapshotSpec{VolumeSnapshotClassName: &class, Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvc}},
	}, metav1.CreateOptions{})
	return err
}

func (e *env) waitSnapshotReady(name string, restoreSize int64) error {
	return e.eventually(3*time.Minute, func() error {
		vs, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		st := vs.Status
		if st == nil || st.ReadyToUse == nil || !*st.ReadyToUse || st.BoundVolumeSnapshotContentName == nil {
			msg := ""
			if st != nil && st.Error != nil && st.Error.Message != nil {
				msg = ": " + *st.Error.Message
			}
			return fmt.Errorf("VolumeSnapshot %s not ready%s", name, msg)
		}
		vsc, err := e.snaps.SnapshotV1().VolumeSnapshotContents().Get(e.ctx, *st.BoundVolumeSnapshotContentName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if vsc.Status == nil || vsc.Status.SnapshotHandle == nil || *vsc.Status.SnapshotHandle == "" {
			return fmt.Errorf("content %s has no snapshot handle", vsc.Name)
		}
		if vsc.Status.RestoreSize == nil || *vsc.Status.RestoreSize != restoreSize {
			return fmt.Errorf("content %s restoreSize %v, want %d", vsc.Name, vsc.Status.RestoreSize, restoreSize)
		}
		if st.RestoreSize == nil || st.RestoreSize.Value() != restoreSize {
			return fmt.Errorf("VolumeSnapshot %s restoreSize %v, want %d", name, st.RestoreSize, restoreSize)
		}
		return nil
	})
}

// restoreAndCheck creates a PVC from a source and checks its data.
func (e *env) restoreAndCheck(name, size string, src *corev1.TypedLocalObjectReference, want []byte) error {
	if err := e.createPVC(name, size, src); err != nil {
		return err
	}
	return e.checkMounted(name, want, 0)
}

// checkMounted mounts a PVC's volume, compares the data file and, if
// minFS > 0, the file system's size, then unmounts it.
func (e *env) checkMounted(name string, want []byte, minFS int64) error {
	m, err := e.mount(name)
	if err != nil {
		return err
	}
	defer e.unmount(m)
	got, err := os.ReadFile(filepath.Join(m.Target, "mysql.db"))
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s: data differs from what was written (%d bytes vs %d)", name, len(got), len(want))
	}
	if minFS > 0 {
		var st unix.Statfs_t
		if err := unix.Statfs(m.Target, &st); err != nil {
			return err
		}
		if size := int64(st.Blocks) * st.Bsize; size < minFS {
			return fmt.Errorf("%s: file system is %d bytes, want at least %d", name, size, minFS)
		}
	}
	return nil
}

// expand patches a PVC's request and waits for the PVC and PV capacities
// and the resizer's events.
func (e *env) expand(name, size string) error {
	patch := fmt.Sprintf(`{"spec":{"resources":{"requests":{"storage":%q}}}}`, size)
	if _, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Patch(e.ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return err
	}
	want := resource.MustParse(size)
	return e.eventually(2*time.Minute, func() error {
		pvc, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got := pvc.Status.Capacity[corev1.ResourceStorage]; got.Cmp(want) < 0 {
			return fmt.Errorf("PVC capacity %s, want %s%s", got.String(), size, e.lastEvent("PersistentVolumeClaim", name))
		}
		pv, err := e.kc.CoreV1().PersistentVolumes().Get(e.ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got := pv.Spec.Capacity[corev1.ResourceStorage]; got.Cmp(want) < 0 {
			return fmt.Errorf("PV capacity %s, want %s", got.String(), size)
		}
		evs, err := e.kc.CoreV1().Events(appNS).List(e.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			return err
		}
		var reasons []string
		for _, ev := range evs.Items {
			reasons = append(reasons, ev.Reason)
		}
		for _, r := range []string{"Resizing", "VolumeResizeSuccessful"} {
			if !slices.Contains(reasons, r) {
				return fmt.Errorf("PVC events %v lack %s", reasons, r)
			}
		}
		return nil
	})
}

// retainSnapshot takes a snapshot with a Retain class, deletes the
// VolumeSnapshot and checks that the content, Cairn's Snapshot and the
// data stay; then deletes the content and the Cairn Snapshot by hand, with
// the delete annotation (what an administrator does to reclaim a retained
// snapshot: without it the data would stay).
func (e *env) retainSnapshot() error {
	if err := e.snapshotClass("cairn-retain", snapv1.VolumeSnapshotContentRetain, map[string]string{"type": "snap"}); err != nil {
		return err
	}
	if err := e.snapshot("mysql-retained", "cairn-retain", "mysql-pvc"); err != nil {
		return err
	}
	vs, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Get(e.ctx, "mysql-retained", metav1.GetOptions{})
	if err != nil {
		return err
	}
	content := *vs.Status.BoundVolumeSnapshotContentName
	if err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Delete(e.ctx, "mysql-retained", metav1.DeleteOptions{}); err != nil {
		return err
	}
	if err := e.eventually(time.Minute, func() error {
		_, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Get(e.ctx, "mysql-retained", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("VolumeSnapshot still there (%v)", err)
		}
		return nil
	}); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // give a wrong deletion the chance to happen
	vsc, err := e.snaps.SnapshotV1().VolumeSnapshotContents().Get(e.ctx, content, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("retained content: %w", err)
	}
	id := *vsc.Status.SnapshotHandle
	var snap cairnv1.Snapshot
	if err := e.cc.Get(e.ctx, client.ObjectKey{Name: id}, &snap); err != nil || snap.DeletionTimestamp != nil {
		return fmt.Errorf("Cairn snapshot %s of the retained content is gone or going (%v)", id, err)
	}
	if _, err := os.Stat(filepath.Join(e.fs.Mount, "snapshots", id)); err != nil {
		return fmt.Errorf("retained snapshot data: %w", err)
	}
	// Reclaim it.
	if err := e.snaps.SnapshotV1().VolumeSnapshotContents().Delete(e.ctx, content, metav1.DeleteOptions{}); err != nil {
		return err
	}
	patch := client.MergeFrom(snap.DeepCopy())
	metav1.SetMetaDataAnnotation(&snap.ObjectMeta, cairnv1.DeleteDataAnnotation, "true")
	if err := e.cc.Patch(e.ctx, &snap, patch); err != nil {
		return err
	}
	if err := e.cc.Delete(e.ctx, &snap); err != nil {
		return err
	}
	return e.eventually(time.Minute, func() error {
		if _, err := os.Stat(filepath.Join(e.fs.Mount, "snapshots", id)); !os.IsNotExist(err) {
			return fmt.Errorf("reclaimed snapshot data still present (%v)", err)
		}
		return nil
	})
}

// foreignBackup makes a backup the way another cluster (or a standalone
// node) would: a separate driver on its own data root writing to the same
// target. This cluster has no object for it.
func (e *env) foreignBackup() (string, []byte, error) {
	fs, err := scratchfs.Create(filepath.Join(e.work, "dr.img"), filepath.Join(e.work, "dr"), "xfs", 2<<30)
	if err != nil {
		return "", nil, err
	}
	mnt := filepath.Join(e.work, "dr-mnt")
	d := &harness.Driver{Bin: e.cairn, Socket: filepath.Join(e.work, "dr.sock"), DataRoot: fs.Mount, NodeID: "elsewhere",
		Log: filepath.Join(e.logs, "dr-standalone.log"), Args: []string{"--backup-target", "default=file://" + e.backups}}
	defer func() {
		d.Close()
		harness.UnmountAll(mnt)
		harness.DetachLoops(fs.Mount)
		fs.Close()
	}()
	if err := d.Start(e.ctx); err != nil {
		return "", nil, err
	}
	vol, err := d.CreateVolume(e.ctx, harness.VolumeSpec{Name: "elsewhere-db", Bytes: 512 << 20, FsType: "ext4"})
	if err != nil {
		return "", nil, err
	}
	m, err := d.Mount(e.ctx, vol.GetVolumeId(), mnt, false, "ext4")
	if err != nil {
		return "", nil, err
	}
	data := make([]byte, 3<<20)
	rand.Read(data)
	if err := fsops.WriteFileAtomic(filepath.Join(m.Target, "mysql.db"), data, 0o644); err != nil {
		return "", nil, err
	}
	if err := d.Unmount(e.ctx, m); err != nil {
		return "", nil, err
	}
	req := &csipb.CreateSnapshotRequest{Name: "elsewhere-backup", SourceVolumeId: vol.GetVolumeId(), Parameters: map[string]string{"type": "backup"}}
	var handle string
	err = e.eventually(2*time.Minute, func() error {
		resp, err := d.Controller().CreateSnapshot(e.ctx, req)
		if err != nil {
			return err
		}
		handle = resp.GetSnapshot().GetSnapshotId()
		if !resp.GetSnapshot().GetReadyToUse() {
			return errors.New("backup not ready yet")
		}
		return nil
	})
	return handle, data, err
}

// preProvisioned imports a backup handle through a pre-provisioned
// VolumeSnapshotContent and restores it into a new PVC.
func (e *env) preProvisioned(handle string, data []byte) error {
	if handle == "" {
		return errors.New("no backup handle")
	}
	class := "cairn-backup"
	_, err := e.snaps.SnapshotV1().VolumeSnapshotContents().Create(e.ctx, &snapv1.VolumeSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: "imported-backup-content"},
		Spec: snapv1.VolumeSnapshotContentSpec{
			Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
			Source:                  snapv1.VolumeSnapshotContentSource{SnapshotHandle: &handle},
			VolumeSnapshotClassName: &class,
			VolumeSnapshotRef:       corev1.ObjectReference{Name: "imported-backup", Namespace: appNS},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	contentName := "imported-backup-content"
	if _, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Create(e.ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: "imported-backup", Namespace: appNS},
		Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{VolumeSnapshotContentName: &contentName}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if err := e.waitSnapshotReady("imported-backup", 512<<20); err != nil {
		return err
	}
	return e.restoreAndCheck("imported-restore-pvc", "1Gi", snapshotSource("imported-backup"), data)
}

// killNodeDuringSnapshot restarts cairn node with a fault point that kills
// it while the mounted mysql-pvc is frozen for a snapshot, then restarts it
// cleanly and expects the VolumeSnapshot to become ready.
func (e *env) killNodeDuringSnapshot() error {
	e.node.kill()
	if err := e.startNode("CAIRN_FAULTS=freeze:frozen"); err != nil {
		return err
	}
	class, pvc := "longhorn", "mysql-pvc"
	if _, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Create(e.ctx, &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: "snapshot-during-crash", Namespace: appNS},
		Spec:       snapv1.VolumeSnapshotSpec{VolumeSnapshotClassName: &class, Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &pvc}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if !e.node.exited(2 * time.Minute) {
		return errors.New("cairn node did not hit the fault point freeze:frozen")
	}
	if err := e.startNode(); err != nil {
		return err
	}
	return e.waitSnapshotReady("snapshot-during-crash", gi)
}

// failover kills every process of the replica holding the provisioner's
// lease and expects the other replica to provision a new PVC.
func (e *env) failover() error {
	lease, err := e.kc.CoordinationV1().Leases(namespace).Get(e.ctx, strings.ReplaceAll(driver, ".", "-"), metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("provisioner lease: %w", err)
	}
	holder := ""
	if lease.Spec.HolderIdentity != nil {
		holder = *lease.Spec.HolderIdentity
	}
	var killed *replica
	for _, r := range e.replicas {
		if r.pod == holder {
			killed = r
		}
	}
	if killed == nil {
		return fmt.Errorf("lease holder %q is not a controller replica", holder)
	}
	for _, p := range killed.procs {
		p.kill()
	}
	start := time.Now()
	if err := e.createPVC("after-failover-pvc", "1Gi", nil); err != nil {
		return err
	}
	lease, err = e.kc.CoordinationV1().Leases(namespace).Get(e.ctx, lease.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == holder {
		return fmt.Errorf("lease still held by the killed replica %s", holder)
	}
	fmt.Printf("e2e    fail-over: %s -> %s, PVC bound %.1fs after the kill\n", holder, *lease.Spec.HolderIdentity, time.Since(start).Seconds())
	return nil
}

// cleanup deletes everything the walkthrough made and checks that the
// volumes, snapshots and backups' local bases are gone from the data root.
func (e *env) cleanup() error {
	ents, _ := os.ReadDir(e.mnt)
	node, done, err := e.nodeClient()
	if err != nil {
		return err
	}
	defer done()
	for _, ent := range ents { // what is still mounted: mysql-pvc
		m := &mounted{VolumeID: ent.Name(), Staging: filepath.Join(e.mnt, ent.Name(), "staging"), Target: filepath.Join(e.mnt, ent.Name(), "target")}
		if err := harness.UnmountVia(e.ctx, node, m); err != nil {
			return err
		}
	}
	vss, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).List(e.ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, vs := range vss.Items {
		if err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Delete(e.ctx, vs.Name, metav1.DeleteOptions{}); err != nil {
			return err
		}
	}
	pvcs, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).List(e.ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, p := range pvcs.Items {
		if err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Delete(e.ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			return err
		}
	}
	err = e.eventually(3*time.Minute, func() error {
		var vols cairnv1.VolumeList
		var snaps cairnv1.SnapshotList
		if err := e.cc.List(e.ctx, &vols); err != nil {
			return err
		}
		if err := e.cc.List(e.ctx, &snaps); err != nil {
			return err
		}
		pvs, err := e.kc.CoreV1().PersistentVolumes().List(e.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if n := len(vols.Items) + len(snaps.Items) + len(pvs.Items); n > 0 {
			return fmt.Errorf("%d Volumes, %d Snapshots, %d PVs remain", len(vols.Items), len(snaps.Items), len(pvs.Items))
		}
		return nil
	})
	if err != nil {
		return err
	}
	var left []string
	for _, d := range []string{"volumes", "snapshots", "backups", "standby", "tmp", "trash"} {
		ents, _ := os.ReadDir(filepath.Join(e.fs.Mount, d))
		for _, ent := range ents {
			if strings.HasPrefix(ent.Name(), ".health-") {
				continue // the node's health probe, written and removed while it runs
			}
			left = append(left, d+"/"+ent.Name())
		}
	}
	leaks, err := harness.Leaks(e.fs.Mount, e.mnt)
	if err != nil {
		return err
	}
	left = append(left, leaks...)
	if len(left) > 0 {
		return fmt.Errorf("left behind: %s", strings.Join(left, ", "))
	}
	// The imported backup was deleted from the target by its Delete policy.
	if m, _ := filepath.Glob(filepath.Join(e.backups, "manifests", "*", "*")); len(m) > 0 {
		return fmt.Errorf("backup manifests remain in the target: %v", m)
	}
	return nil
}
