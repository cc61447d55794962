package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/cairn-csi/cairn/internal/backup"
	"github.com/cairn-csi/cairn/internal/control/remote"
	"github.com/cairn-csi/cairn/internal/engine"
	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/objstore"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

const (
	testNode = "node-a"
	testNS   = "cairn-system"
	mib      = int64(1) << 20
	gib      = int64(1) << 30
)

// fixture is a real kube-apiserver and etcd (envtest, with the binaries
// hack/k8s-tools.sh builds), Cairn's CRDs from deploy/crds, one node agent
// over an engine on an XFS loop root, and the controller's Remote backend.
type fixture struct {
	t      *testing.T
	ctx    context.Context
	cl     client.Client
	remote *remote.Remote
	eng    *engine.Engine
	fs     *scratchfs.FS
	work   string
	cfg    *rest.Config
	crds   string     // deploy/crds
	agent  chan error // the agent's manager's end
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, mounts)")
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bins := filepath.Join(root, ".tools/bin")
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(bins, b)); err != nil {
			t.Skipf("%s not built: run `make tools` (hack/k8s-tools.sh builds it from source)", b)
		}
	}
	tenv := &envtest.Environment{BinaryAssetsDirectory: bins, CRDDirectoryPaths: []string{filepath.Join(root, "deploy/crds")}, ErrorIfCRDPathMissing: true}
	cfg, err := tenv.Start()
	if err != nil {
		tenv.Stop() // a start that failed after etcd and kube-apiserver began leaves them running
		t.Fatalf("envtest: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	f := &fixture{t: t, ctx: ctx, work: t.TempDir(), cfg: cfg, crds: filepath.Join(root, "deploy/crds"), agent: make(chan error, 1)}
	t.Cleanup(func() {
		cancel()
		if f.eng != nil {
			f.eng.Close()
		}
		if f.fs != nil {
			harness.DetachLoops(f.fs.Mount)
			f.fs.Close()
		}
		tenv.Stop()
	})
	if f.fs, err = scratchfs.Create(filepath.Join(f.work, "root.img"), filepath.Join(f.work, "root"), "xfs", 8<<30); err != nil {
		t.Fatal(err)
	}
	if f.eng, err = engine.Open(ctx, engine.Config{DataRoot: f.fs.Mount}); err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: kube.Scheme, Cache: CacheOptions(testNode, testNS),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	agent := &Agent{Engine: f.eng, Node: testNode, Namespace: testNS, Version: "test", Heartbeat: time.Second, Progress: 100 * time.Millisecond,
		TransferEndpoint: "127.0.0.1:0"}
	if err := agent.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	go func() { f.agent <- mgr.Start(ctx) }()
	if f.cl, err = client.New(cfg, client.Options{Scheme: kube.Scheme}); err != nil {
		t.Fatal(err)
	}
	f.remote = &remote.Remote{Client: f.cl, HeartbeatTimeout: 30 * time.Second, Poll: 50 * time.Millisecond}
	f.eventually(time.Minute, func() error {
		c, err := f.remote.Capacity(ctx, testNode)
		if err == nil && c <= 0 {
			err = errors.New("node agent has not reported capacity yet")
		}
		return err
	})
	return f
}

func (f *fixture) eventually(d time.Duration, fn func() error) {
	f.t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("after %s: %v", d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (f *fixture) create(name string, size int64, where model.Placement, mod func(*model.CreateVolumeRequest)) (*model.Volume, error) {
	req := model.CreateVolumeRequest{Name: name, RequiredBytes: size, FsType: "ext4"}
	if mod != nil {
		mod(&req)
	}
	ctx, cancel := context.WithTimeout(f.ctx, 60*time.Second)
	defer cancel()
	return f.remote.CreateVolume(ctx, req, where)
}

func onlyNode(n string) model.Placement {
	return model.Placement{Requisite: []string{n}, Preferred: []string{n}}
}

// events lists the events.k8s.io events about an object.
func (f *fixture) events(name string) []string {
	var list eventsv1.EventList
	if err := f.cl.List(f.ctx, &list); err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out = append(out, e.Reason+": "+e.Note)
		}
	}
	return out
}

func TestVolumeSnapshotCloneExpandDelete(t *testing.T) {
	f := newFixture(t)
	vol, err := f.create("pv-1", gib, onlyNode(testNode), nil)
	if err != nil {
		t.Fatal(err)
	}
	if vol.Node != testNode || vol.SizeBytes != gib || vol.ID != model.VolumeIDForName("pv-1") {
		t.Fatalf("volume %+v on %s", vol, vol.Node)
	}
	// What the user sees on the object.
	var obj cairnv1.Volume
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: vol.ID}, &obj); err != nil {
		t.Fatal(err)
	}
	if !meta.IsStatusConditionTrue(obj.Status.Conditions, cairnv1.ConditionReady) || obj.Labels[cairnv1.NodeLabel] != testNode || len(obj.Finalizers) != 1 {
		t.Errorf("volume object: conditions %+v labels %v finalizers %v", obj.Status.Conditions, obj.Labels, obj.Finalizers)
	}
	f.eventually(10*time.Second, func() error {
		if ev := f.events(vol.ID); len(ev) == 0 || !strings.HasPrefix(ev[0], "Created") {
			return errors.New("no Created event on the volume")
		}
		return nil
	})
	// Idempotent.
	again, err := f.create("pv-1", gib, onlyNode(testNode), nil)
	if err != nil || again.ID != vol.ID {
		t.Fatalf("repeated create: %v %v", again, err)
	}
	snap, err := f.remote.CreateSnapshot(f.ctx, "snap-1", vol.ID, nil, model.Placement{})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Node != testNode || snap.SizeBytes != gib || snap.ID != model.SnapshotIDForName("snap-1") {
		t.Fatalf("snapshot %+v", snap)
	}
	restored, err := f.create("pv-restored", gib, model.Placement{}, func(r *model.CreateVolumeRequest) { r.SourceSnapshotID = snap.ID })
	if err != nil || restored.Node != testNode {
		t.Fatalf("restore: %v %v", restored, err)
	}
	clone, err := f.create("pv-clone", gib, model.Placement{}, func(r *model.CreateVolumeRequest) { r.SourceVolumeID = vol.ID })
	if err != nil || clone.Node != testNode || clone.Source == nil || clone.Source.ID != vol.ID {
		t.Fatalf("clone: %v %v", clone, err)
	}
	res, err := f.remote.ExpandVolume(f.ctx, clone.ID, 2*gib, 0)
	if err != nil || res.SizeBytes != 2*gib || res.NodeExpansionRequired {
		t.Fatalf("expand: %+v %v", res, err)
	}
	if ev, _ := f.eng.GetVolume(f.ctx, clone.ID); ev.SizeBytes != 2*gib {
		t.Errorf("engine size after expand: %d", ev.SizeBytes)
	}
	if _, err := f.remote.ExpandVolume(f.ctx, clone.ID, gib, gib); !errors.Is(err, model.ErrOutOfRange) {
		t.Errorf("shrink: %v, want OutOfRange", err)
	}
	list, err := f.remote.ListVolumes(f.ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("list: %d volumes, %v", len(list), err)
	}
	if err := f.remote.DeleteSnapshot(f.ctx, snap.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{vol.ID, restored.ID, clone.ID} {
		if err := f.remote.DeleteVolume(f.ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := f.remote.DeleteVolume(f.ctx, id); err != nil {
			t.Fatalf("second delete: %v", err)
		}
	}
	if vols, _ := f.eng.ListVolumes(f.ctx); len(vols) != 0 {
		t.Errorf("engine still has %d volumes", len(vols))
	}
	if snaps, _ := f.eng.ListSnapshots(f.ctx); len(snaps) != 0 {
		t.Errorf("engine still has %d snapshots", len(snaps))
	}
}

// storageNode writes a StorageNode as a node agent would.
// TestExpansionRecordedAfterALostStatus: the engine grew a staged volume
// but the agent's status never said so (killed, or its status patch
// failed, between the two). The next expansion call must still tell
// kubelet to grow the file system.
func TestExpansionRecordedAfterALostStatus(t *testing.T) {
	f := newFixture(t)
	v, err := f.create("grown", 512*mib, onlyNode(testNode), nil)
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(f.work, "staging")
	if err := f.eng.StageVolume(f.ctx, model.StageRequest{VolumeID: v.ID, StagingPath: staging}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.eng.UnstageVolume(context.Background(), v.ID, staging) })
	if res, err := f.eng.ExpandVolume(f.ctx, v.ID, gib, 0); err != nil || !res.NodeExpansionRequired {
		t.Fatalf("engine expand: %+v %v", res, err)
	}
	res, err := f.remote.ExpandVolume(f.ctx, v.ID, gib, 0)
	if err != nil || res.SizeBytes != gib || !res.NodeExpansionRequired {
		t.Fatalf("expand after the engine already grew it: %+v %v, want %d bytes and node expansion", res, err, gib)
	}
}

func (f *fixture) storageNode(name string, avail int64, heartbeat time.Time) {
	sn := &cairnv1.StorageNode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := f.cl.Create(f.ctx, sn); err != nil {
		f.t.Fatal(err)
	}
	sn.Status = cairnv1.StorageNodeStatus{AvailableBytes: avail, CapacityBytes: avail, HeartbeatTime: metav1.NewTime(heartbeat)}
	if err := f.cl.Status().Update(f.ctx, sn); err != nil {
		f.t.Fatal(err)
	}
}

func TestPlacement(t *testing.T) {
	f := newFixture(t)
	f.storageNode("node-b", 100*gib, time.Now())                 // healthy but no agent runs here
	f.storageNode("node-c", 100*gib, time.Now().Add(-time.Hour)) // silent

	// The stale node is skipped even when preferred.
	v, err := f.create("placed", gib, model.Placement{Requisite: []string{"node-c", testNode}, Preferred: []string{"node-c", testNode}}, nil)
	if err != nil || v.Node != testNode {
		t.Fatalf("placement: %v %v", v, err)
	}
	_, err = f.create("only-stale", gib, onlyNode("node-c"), nil)
	if !errors.Is(err, model.ErrResourceExhausted) || !strings.Contains(err.Error(), "node-c: node agent silent") {
		t.Errorf("stale node only: %v", err)
	}
	_, err = f.create("too-big", 1<<50, onlyNode(testNode), nil)
	if !errors.Is(err, model.ErrResourceExhausted) || !strings.Contains(err.Error(), "bytes available") {
		t.Errorf("too big: %v", err)
	}
	_, err = f.create("unknown-node", gib, onlyNode("node-z"), nil)
	if !errors.Is(err, model.ErrResourceExhausted) || !strings.Contains(err.Error(), "node-z: no Cairn node agent") {
		t.Errorf("unknown node: %v", err)
	}
	// A clone whose source's node is excluded goes to an allowed node,
	// recording where to copy from (transfer_test.go copies for real).
	cctx, ccancel := context.WithTimeout(f.ctx, time.Second)
	defer ccancel()
	_, err = f.remote.CreateVolume(cctx, model.CreateVolumeRequest{Name: "clone-elsewhere", RequiredBytes: gib, FsType: "ext4", SourceVolumeID: v.ID}, onlyNode("node-b"))
	var ce cairnv1.Volume
	if gerr := f.cl.Get(f.ctx, client.ObjectKey{Name: model.VolumeIDForName("clone-elsewhere")}, &ce); !errors.Is(err, model.ErrAborted) || gerr != nil ||
		ce.Spec.NodeName != "node-b" || ce.Spec.Source == nil || ce.Spec.Source.NodeName != testNode {
		t.Errorf("clone to an excluded node: %v, object %+v %v", err, ce.Spec, gerr)
	}
	_, err = f.create("from-missing", gib, model.Placement{}, func(r *model.CreateVolumeRequest) { r.SourceSnapshotID = model.SnapshotIDForName("nope") })
	if !errors.Is(err, model.ErrNotFound) || !strings.Contains(err.Error(), "volume_content_source.snapshot.snapshot_id") {
		t.Errorf("missing source: %v", err)
	}
	// No preference: the node with the most room (node-b), whose agent
	// never answers; the call gives up at its deadline with Aborted and a
	// retry finds the same object.
	ctx, cancel := context.WithTimeout(f.ctx, time.Second)
	defer cancel()
	_, err = f.remote.CreateVolume(ctx, model.CreateVolumeRequest{Name: "waits", RequiredBytes: gib}, model.Placement{})
	if !errors.Is(err, model.ErrAborted) || !strings.Contains(err.Error(), "waiting for node agent on node-b") {
		t.Errorf("volume on an agent-less node: %v, want Aborted naming node-b", err)
	}
	if c, _ := f.remote.Capacity(f.ctx, "node-c"); c != 0 {
		t.Errorf("capacity of a silent node: %d", c)
	}
	if c, _ := f.remote.Capacity(f.ctx, ""); c != 100*gib {
		t.Errorf("capacity of any node: %d", c)
	}
}

func TestFinalFailureLeavesNothing(t *testing.T) {
	f := newFixture(t)
	v, err := f.create("big", 2*gib, onlyNode(testNode), nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := f.remote.CreateSnapshot(f.ctx, "big-snap", v.ID, nil, model.Placement{})
	if err != nil {
		t.Fatal(err)
	}
	// Restoring a 2 GiB snapshot into at most 1 GiB fails on the node.
	_, err = f.create("small", gib, model.Placement{}, func(r *model.CreateVolumeRequest) { r.SourceSnapshotID = snap.ID; r.LimitBytes = gib })
	if !errors.Is(err, model.ErrOutOfRange) {
		t.Fatalf("restore into smaller: %v, want OutOfRange", err)
	}
	var obj cairnv1.Volume
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: model.VolumeIDForName("small")}, &obj); !apierrors.IsNotFound(err) {
		t.Errorf("failed volume object left behind: %v", err)
	}
	// A snapshot of a missing volume.
	if _, err := f.remote.CreateSnapshot(f.ctx, "orphan", model.VolumeIDForName("missing"), nil, model.Placement{}); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("snapshot of a missing volume: %v", err)
	}
	// A snapshot name reused for another volume.
	if _, err := f.remote.CreateSnapshot(f.ctx, "big-snap", model.VolumeIDForName("other"), nil, model.Placement{}); !errors.Is(err, model.ErrAlreadyExists) {
		t.Errorf("snapshot name reuse: %v", err)
	}
}

func TestBackupsThroughObjects(t *testing.T) {
	f := newFixture(t)
	target := filepath.Join(f.work, "target")
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := f.cl.Create(f.ctx, &cairnv1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "default"}, Spec: cairnv1.BackupTargetSpec{URL: "file://" + target}}); err != nil {
		t.Fatal(err)
	}
	f.eventually(30*time.Second, func() error {
		if names, _ := f.remote.BackupTargets(f.ctx); len(names) != 1 {
			return errors.New("target not listed")
		}
		var sn cairnv1.StorageNode
		if err := f.cl.Get(f.ctx, client.ObjectKey{Name: testNode}, &sn); err != nil || len(sn.Status.BackupTargets) != 1 {
			return errors.New("node has not opened the target yet")
		}
		return nil
	})
	v, err := f.create("data", 512*mib, onlyNode(testNode), nil)
	if err != nil {
		t.Fatal(err)
	}
	var info *model.BackupInfo
	f.eventually(time.Minute, func() error {
		if info, err = f.remote.CreateBackup(f.ctx, "bk-1", v.ID, "default"); err != nil {
			return err
		}
		if !info.Ready {
			return errors.New("backup not ready")
		}
		return nil
	})
	handle := info.Handle.String()
	if got, err := f.remote.GetBackup(f.ctx, handle); err != nil || !got.Ready || got.SizeBytes != 512*mib {
		t.Fatalf("get backup: %+v %v", got, err)
	}
	restored, err := f.create("from-backup", 512*mib, model.Placement{}, func(r *model.CreateVolumeRequest) { r.SourceSnapshotID = handle })
	if err != nil || restored.Node != testNode {
		t.Fatalf("restore from backup: %v %v", restored, err)
	}
	// A backup this cluster has no object for (taken by the engine
	// directly, as another cluster would) is imported on first sight.
	foreign, err := f.eng.CreateBackup(f.ctx, "foreign", v.ID, "default", nil)
	if err != nil {
		t.Fatal(err)
	}
	f.eventually(time.Minute, func() error {
		b, err := f.eng.GetBackup(f.ctx, foreign.Handle.String())
		if err == nil && !b.Ready {
			err = errors.New("foreign backup not committed")
		}
		return err
	})
	fh := foreign.Handle.String()
	got, err := f.remote.GetBackup(f.ctx, fh)
	if err != nil || !got.Ready {
		t.Fatalf("import: %+v %v", got, err)
	}
	var imported cairnv1.Snapshot
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: kube.SnapshotObjectName(fh)}, &imported); err != nil || imported.Spec.Handle != fh {
		t.Fatalf("imported object: %+v %v", imported.Spec, err)
	}
	missing := model.BackupHandle{Target: "default", VolumeID: v.ID, BackupID: strings.Repeat("0", 32)}.String()
	if _, err := f.remote.GetBackup(f.ctx, missing); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("missing backup: %v, want NotFound", err)
	}
	// The same backup seen through a target this cluster does not have yet:
	// the lookup fails for good and the controller deletes the import. That
	// must only forget it, even once the target exists and the agent's
	// retried clean-up can reach the store.
	later := model.BackupHandle{Target: "later", VolumeID: foreign.Handle.VolumeID, BackupID: foreign.Handle.BackupID}.String()
	ctx, cancel := context.WithTimeout(f.ctx, 20*time.Second)
	_, err = f.remote.GetBackup(ctx, later)
	cancel()
	if !errors.Is(err, model.ErrInvalidArgument) {
		t.Fatalf("import through a missing target: %v, want InvalidArgument", err)
	}
	if err := f.cl.Create(f.ctx, &cairnv1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: "later"}, Spec: cairnv1.BackupTargetSpec{URL: "file://" + target}}); err != nil {
		t.Fatal(err)
	}
	f.eventually(time.Minute, func() error {
		var s cairnv1.Snapshot
		if err := f.cl.Get(f.ctx, client.ObjectKey{Name: kube.SnapshotObjectName(later)}, &s); !apierrors.IsNotFound(err) {
			return fmt.Errorf("failed import still there: %v %v", s.Status, err)
		}
		return nil
	})
	// Read the target itself: the engine also knows the backup as its own.
	st, err := objstore.Open(f.ctx, "file://"+target, objstore.Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	repo, err := backup.Open(f.ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Manifest(f.ctx, foreign.Handle.VolumeID, foreign.Handle.BackupID); err != nil {
		t.Fatalf("the backup went with the failed import: %v", err)
	}
	for _, h := range []string{handle, fh} {
		if err := f.remote.DeleteBackup(f.ctx, h); err != nil {
			t.Fatal(err)
		}
		if _, err := f.eng.GetBackup(f.ctx, h); !errors.Is(err, model.ErrNotFound) {
			t.Errorf("backup %s still in the target: %v", h, err)
		}
	}
}

// TestS3TargetFromSecret configures an S3 target (a real MinIO) whose
// credentials come from a Secret in Cairn's namespace, backs up and
// restores through it, and checks that wrong credentials are reported
// without their values.
func TestS3TargetFromSecret(t *testing.T) {
	f := newFixture(t)
	if _, err := harness.MinIOBinary(); err != nil {
		t.Skipf("MinIO not built (make tools): %v", err)
	}
	m, err := harness.StartMinIO(filepath.Join(f.work, "minio"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	if err := f.cl.Create(f.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}); err != nil {
		t.Fatal(err)
	}
	secret := func(name, key string) {
		if err := f.cl.Create(f.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS},
			StringData: map[string]string{"AWS_ACCESS_KEY_ID": harness.MinIOAccessKey, "AWS_SECRET_ACCESS_KEY": key}}); err != nil {
			t.Fatal(err)
		}
	}
	secret("s3-creds", harness.MinIOSecretKey)
	secret("s3-wrong", "not-the-secret-key-0123456789")
	for name, sec := range map[string]string{"s3": "s3-creds", "s3-wrong": "s3-wrong"} {
		if err := f.cl.Create(f.ctx, &cairnv1.BackupTarget{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: cairnv1.BackupTargetSpec{URL: m.URL("kube", "maxRetryTime=2s"), CredentialsSecret: sec}}); err != nil {
			t.Fatal(err)
		}
	}
	v, err := f.create("s3-data", 256*mib, onlyNode(testNode), nil)
	if err != nil {
		t.Fatal(err)
	}
	var info *model.BackupInfo
	f.eventually(2*time.Minute, func() error {
		if info, err = f.remote.CreateBackup(f.ctx, "s3-bk", v.ID, "s3"); err != nil {
			return err
		}
		if !info.Ready {
			return errors.New("backup not ready")
		}
		return nil
	})
	restored, err := f.create("s3-restored", 256*mib, model.Placement{}, func(r *model.CreateVolumeRequest) { r.SourceSnapshotID = info.Handle.String() })
	if err != nil || restored.SizeBytes != 256*mib {
		t.Fatalf("restore from S3: %v %v", restored, err)
	}
	// Wrong credentials: the call reports the target's failure, never the key.
	ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
	defer cancel()
	_, err = f.remote.CreateBackup(ctx, "s3-bk-wrong", v.ID, "s3-wrong")
	if err == nil || !strings.Contains(err.Error(), "s3-wrong") || strings.Contains(err.Error(), "not-the-secret-key") {
		t.Errorf("backup with wrong credentials: %v", err)
	}
	var snap cairnv1.Snapshot
	h := model.BackupHandle{Target: "s3-wrong", VolumeID: v.ID, BackupID: model.BackupIDForName("s3-bk-wrong")}
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: kube.SnapshotObjectName(h.String())}, &snap); err != nil {
		t.Fatal(err)
	}
	if snap.Status.Phase != cairnv1.PhaseFailed || strings.Contains(snap.Status.Message, "not-the-secret-key") {
		t.Errorf("status with wrong credentials: %+v", snap.Status)
	}
	t.Logf("wrong credentials reported as: %s", snap.Status.Message)
}

// TestExpansionRecovery: an expansion beyond what the node can hold is
// OutOfRange (Kubernetes records ControllerResizeInfeasible) and changes
// nothing; the smaller size the user then asks for (not below the current
// one) is carried out, though the Volume still records the larger request.
func TestExpansionRecovery(t *testing.T) {
	f := newFixture(t)
	vol, err := f.create("grow-too-far", 512*mib, onlyNode(testNode), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.remote.ExpandVolume(f.ctx, vol.ID, 64*gib, 0)
	if !errors.Is(err, model.ErrOutOfRange) || !strings.Contains(err.Error(), "ask for less") {
		t.Fatalf("expansion beyond the node's space: %v, want OutOfRange saying what to do", err)
	}
	if ev, _ := f.eng.GetVolume(f.ctx, vol.ID); ev == nil || ev.SizeBytes != 512*mib {
		t.Fatalf("the refused expansion changed the volume: %+v", ev)
	}
	res, err := f.remote.ExpandVolume(f.ctx, vol.ID, gib, 0)
	if err != nil || res.SizeBytes != gib {
		t.Fatalf("smaller expansion after the refused one: %+v %v", res, err)
	}
	var obj cairnv1.Volume
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: vol.ID}, &obj); err != nil {
		t.Fatal(err)
	}
	if obj.Spec.RequiredBytes != gib || obj.Status.SizeBytes != gib || obj.Status.Phase != cairnv1.PhaseReady {
		t.Errorf("volume after recovery: spec %d, status %+v", obj.Spec.RequiredBytes, obj.Status)
	}
	if ev, _ := f.eng.GetVolume(f.ctx, vol.ID); ev == nil || ev.SizeBytes != gib {
		t.Errorf("engine after recovery: %+v", ev)
	}
	if _, err := f.remote.ExpandVolume(f.ctx, vol.ID, 768*mib, 0); err != nil {
		t.Errorf("a request below the current size after growth: %v (answers the current size)", err)
	}
}
