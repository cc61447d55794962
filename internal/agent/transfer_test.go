package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/cairn-csi/cairn/internal/engine"
	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/model"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
)

// addNode starts a second node agent, on its own XFS data root, in the
// fixture's cluster.
func (f *fixture) addNode(name string) *engine.Engine {
	f.t.Helper()
	dir := filepath.Join(f.work, name)
	fs, err := scratchfs.Create(filepath.Join(dir, "root.img"), filepath.Join(dir, "root"), "xfs", 4<<30)
	if err != nil {
		f.t.Fatal(err)
	}
	eng, err := engine.Open(f.ctx, engine.Config{DataRoot: fs.Mount})
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(f.ctx)
	stopped := make(chan struct{})
	f.t.Cleanup(func() {
		cancel()
		<-stopped
		eng.Close()
		harness.DetachLoops(fs.Mount)
		fs.Close()
	})
	mgr, err := ctrl.NewManager(f.cfg, ctrl.Options{
		Scheme: kube.Scheme, Cache: CacheOptions(name, testNS),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		f.t.Fatal(err)
	}
	a := &Agent{Engine: eng, Node: name, Namespace: testNS, Version: "test", Heartbeat: time.Second, Progress: 100 * time.Millisecond, TransferEndpoint: "127.0.0.1:0"}
	if err := a.SetupWithManager(mgr); err != nil {
		f.t.Fatal(err)
	}
	go func() { mgr.Start(ctx); close(stopped) }()
	f.eventually(time.Minute, func() error {
		c, err := f.remote.Capacity(f.ctx, name)
		if err == nil && c <= 0 {
			err = errors.New(name + " has not reported capacity yet")
		}
		return err
	})
	return eng
}

func (f *fixture) volumeData(e *engine.Engine, id string) []byte {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.Root(), "volumes", id, "data.img"))
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

func TestCrossNodeCloneAndRestore(t *testing.T) {
	f := newFixture(t)
	engB := f.addNode("node-b")
	src, err := f.create("src", 64*mib, onlyNode(testNode), func(r *model.CreateVolumeRequest) { r.Block = true; r.FsType = "" })
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("cairn moves data between nodes. "), 1<<15) // 1 MiB
	path := filepath.Join(f.eng.Root(), "volumes", src.ID, "data.img")
	fh, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt(data, 5*mib)
	fh.Close()
	snap, err := f.remote.CreateSnapshot(f.ctx, "src-snap", src.ID, nil, model.Placement{})
	if err != nil {
		t.Fatal(err)
	}
	want := f.volumeData(f.eng, src.ID)

	// A restore and a clone whose pods run on node-b: copied there.
	restored, err := f.create("restored", 128*mib, onlyNode("node-b"), func(r *model.CreateVolumeRequest) { r.Block = true; r.FsType = ""; r.SourceSnapshotID = snap.ID })
	if err != nil {
		t.Fatalf("restore on another node: %v", err)
	}
	clone, err := f.create("cloned", 0, onlyNode("node-b"), func(r *model.CreateVolumeRequest) { r.Block = true; r.FsType = ""; r.SourceVolumeID = src.ID })
	if err != nil {
		t.Fatalf("clone on another node: %v", err)
	}
	for _, v := range []*model.Volume{restored, clone} {
		if v.Node != "node-b" {
			t.Errorf("%s on %s, want node-b", v.Name, v.Node)
		}
		got := f.volumeData(engB, v.ID)
		if !bytes.Equal(got[:len(want)], want) || bytes.Count(got[len(want):], []byte{0}) != len(got)-len(want) {
			t.Errorf("%s: data differs from the source's", v.Name)
		}
	}
	if restored.SizeBytes != 128*mib || clone.SizeBytes != 64*mib {
		t.Errorf("sizes %d and %d", restored.SizeBytes, clone.SizeBytes)
	}
	var obj cairnv1.Volume
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: restored.ID}, &obj); err != nil || obj.Spec.Source.NodeName != testNode {
		t.Errorf("restored object's source: %+v %v", obj.Spec.Source, err)
	}
	// A source on the volume's own node is still a local reflink.
	local, err := f.create("local", 0, onlyNode(testNode), func(r *model.CreateVolumeRequest) { r.Block = true; r.FsType = ""; r.SourceSnapshotID = snap.ID })
	if err != nil || local.Node != testNode {
		t.Fatalf("local restore: %+v %v", local, err)
	}
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: local.ID}, &obj); err != nil || obj.Spec.Source.NodeName != "" {
		t.Errorf("local restore's source: %+v %v", obj.Spec.Source, err)
	}

	// The endpoint serves only what a Volume entitles the asking node to.
	var sn cairnv1.StorageNode
	if err := f.cl.Get(f.ctx, client.ObjectKey{Name: testNode}, &sn); err != nil || sn.Status.Transfer == nil || sn.Status.Transfer.Address == "" {
		t.Fatalf("node-a's transfer status: %+v %v", sn.Status.Transfer, err)
	}
	stranger, err := kube.NewIdentity("stranger")
	if err != nil {
		t.Fatal(err)
	}
	get := func(id *kube.Identity, volumeID string) (int, string) {
		cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
		if id != nil {
			cfg.Certificates = []tls.Certificate{id.Cert}
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
		resp, err := c.Get("https://" + sn.Status.Transfer.Address + "/v1/volumes/" + volumeID + "/source")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return resp.StatusCode, string(b)
	}
	for what, c := range map[string]struct {
		id     *kube.Identity
		volume string
		want   string
	}{
		"a certificate not pinned by node-b": {stranger, restored.ID, "not node node-b's"},
		"a volume copying nothing":           {stranger, src.ID, "copies nothing from node node-a"},
		"a volume that does not exist":       {stranger, model.VolumeIDForName("nope"), "not found"},
		"not a volume ID":                    {stranger, "..%2f..%2fetc", "is not a volume ID"},
	} {
		code, body := get(c.id, c.volume)
		if code != http.StatusForbidden || !strings.Contains(body, c.want) {
			t.Errorf("%s: HTTP %d %q, want 403 with %q", what, code, body, c.want)
		}
	}
	if code, body := get(nil, restored.ID); code != 0 {
		t.Errorf("no client certificate: HTTP %d %q, want the TLS handshake refused", code, body)
	}

	// A restore from a snapshot that is gone is NotFound, and leaves
	// nothing on node-b.
	if err := f.remote.DeleteSnapshot(f.ctx, snap.ID); err != nil {
		t.Fatal(err)
	}
	snap2, err := f.remote.CreateSnapshot(f.ctx, "src-snap-2", src.ID, nil, model.Placement{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.create("too-late", 0, onlyNode("node-b"), func(r *model.CreateVolumeRequest) { r.Block = true; r.FsType = ""; r.SourceSnapshotID = snap.ID })
	if !errors.Is(err, model.ErrNotFound) {
		t.Errorf("restore of a deleted snapshot: %v, want NotFound", err)
	}
	if _, err := engB.GetVolume(f.ctx, model.VolumeIDForName("too-late")); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("node-b holds a volume for a failed copy: %v", err)
	}
	// Deleting the copies deletes node-b's data only.
	for _, v := range []*model.Volume{restored, clone} {
		if err := f.remote.DeleteVolume(f.ctx, v.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := engB.GetVolume(f.ctx, v.ID); !errors.Is(err, model.ErrNotFound) {
			t.Errorf("%s still on node-b: %v", v.Name, err)
		}
	}
	if _, err := f.eng.GetSnapshot(f.ctx, snap2.ID); err != nil {
		t.Errorf("node-a's snapshot: %v", err)
	}
}
