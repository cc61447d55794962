package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// changedBlockTracking is what a backup application does with CBT
// (docs/CBT.md): the chart's snapshot metadata RBAC, `cairn
// snapshot-metadata-setup` and the csi-snapshot-metadata sidecar run as
// the cairn-controller ServiceAccount beside the first controller replica;
// upstream's client (pkg/iterator, built as snapshot-metadata-lister)
// finds the SnapshotMetadataService, requests a token of its audience for
// its own ServiceAccount and reads a block PVC's ranges.
func (e *env) changedBlockTracking() error {
	// The CRD from upstream's client module (a cluster prerequisite).
	tools := filepath.Join(e.root, "hack/tools/snapshotmetadata")
	mod := goModDir(tools, "github.com/kubernetes-csi/external-snapshot-metadata/client")
	if mod == "" {
		return fmt.Errorf("the external-snapshot-metadata client module is not in the module cache (make tools)")
	}
	if err := e.applyFile(filepath.Join(mod, "config/crd/cbt.storage.k8s.io_snapshotmetadataservices.yaml")); err != nil {
		return err
	}
	// The chart's RBAC for the sidecar and the setup, as snapshotMetadata.enabled renders it.
	out, err := exec.Command(filepath.Join(e.bins, "helm"), "template", "cairn", filepath.Join(e.root, "deploy/helm/cairn"),
		"--namespace", namespace, "--set", "snapshotMetadata.enabled=true", "--show-only", "templates/snapshot-metadata.yaml").Output()
	if err != nil {
		return fmt.Errorf("helm template: %w", err)
	}
	if _, err := e.c.Apply(e.ctx, out); err != nil {
		return fmt.Errorf("apply the chart's snapshot metadata objects: %w", err)
	}
	kcfg, err := e.c.ServiceAccountKubeconfig(e.ctx, namespace, "cairn-controller")
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	httpPort, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	tls := filepath.Join(e.work, "snapshot-metadata-tls")
	setup := exec.Command(e.cairn, "snapshot-metadata-setup", "--kubeconfig", kcfg, "--namespace", namespace,
		"--address", addr, "--extra-names", "127.0.0.1", "--cert-dir", tls, "--audience", "cairn-snapshot-metadata")
	if b, err := setup.CombinedOutput(); err != nil {
		return fmt.Errorf("cairn snapshot-metadata-setup: %v\n%s", err, b)
	}
	sock := ""
	for _, r := range e.replicas {
		if strings.HasPrefix(r.pod, "cairn-controller") {
			sock = filepath.Join(e.work, r.pod, "csi.sock")
			break
		}
	}
	if _, err := os.Stat(sock); err != nil {
		return fmt.Errorf("the first controller replica's socket %q: %w", sock, err)
	}
	side, err := startProcess(e.logs, "csi-snapshot-metadata", "", filepath.Join(e.bins, "csi-snapshot-metadata"), []string{
		"--kubeconfig=" + kcfg, "--csi-address=" + sock, "--tls-cert=" + filepath.Join(tls, "tls.crt"), "--tls-key=" + filepath.Join(tls, "tls.key"),
		fmt.Sprintf("--port=%d", port), fmt.Sprintf("--http-endpoint=127.0.0.1:%d", httpPort), "--v=4"}, nil)
	if err != nil {
		return err
	}
	defer side.kill()

	// The backup application's ServiceAccount, with upstream's client role.
	app := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: appNS, Name: "backup-app"}}
	crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "backup-app-snapshot-metadata"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: appNS, Name: "backup-app"}},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "external-snapshot-metadata-client-runner"}}
	for _, o := range []client.Object{app, crb} {
		if err := e.cc.Create(e.ctx, o); err != nil {
			return err
		}
	}
	if err := e.applyFile(filepath.Join(goModDir(tools, "github.com/kubernetes-csi/external-snapshot-metadata"),
		"deploy/snapshot-metadata-client-cluster-role.yaml")); err != nil {
		return err
	}
	var sms unstructured.Unstructured
	sms.SetGroupVersionKind(schema.GroupVersionKind{Group: "cbt.storage.k8s.io", Version: "v1beta1", Kind: "SnapshotMetadataService"})
	if err := e.cc.Get(e.ctx, client.ObjectKey{Name: driver}, &sms); err != nil {
		return fmt.Errorf("SnapshotMetadataService %s: %w", driver, err)
	}
	if a, _, _ := unstructured.NestedString(sms.Object, "spec", "address"); a != addr {
		return fmt.Errorf("SnapshotMetadataService address %q, want %q", a, addr)
	}

	// A 64 MiB block PVC: 1 MiB written, a snapshot, 64 KiB and 4 KiB
	// more, another snapshot.
	const mi = int64(1) << 20
	block := corev1.PersistentVolumeBlock
	if err := e.createPVC("cbt-pvc", "64Mi", nil, func(p *corev1.PersistentVolumeClaim) { p.Spec.VolumeMode = &block }); err != nil {
		return err
	}
	pv, err := e.pvOf("cbt-pvc")
	if err != nil {
		return err
	}
	node, done, err := e.nodeClient()
	if err != nil {
		return err
	}
	defer done()
	m, err := harness.MountVia(e.ctx, node, pv.Spec.CSI.VolumeHandle, e.mnt, true, "", pv.Spec.CSI.VolumeAttributes)
	if err != nil {
		return err
	}
	write := func(off, n int64) error {
		f, err := os.OpenFile(m.Target, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xcb}, int(n)), off); err != nil {
			return err
		}
		return f.Sync()
	}
	if err := write(4*mi, mi); err != nil {
		return err
	}
	if err := e.createSnapshot("cbt-1", "longhorn", "cbt-pvc"); err != nil {
		return err
	}
	if err := e.waitSnapshotReady("cbt-1", 64*mi); err != nil {
		return err
	}
	if err := write(16*mi, 64<<10); err != nil {
		return err
	}
	if err := write(40*mi, 4096); err != nil {
		return err
	}
	if err := e.createSnapshot("cbt-2", "longhorn", "cbt-pvc"); err != nil {
		return err
	}
	if err := e.waitSnapshotReady("cbt-2", 64*mi); err != nil {
		return err
	}

	list := func(args ...string) ([][2]int64, string, error) {
		base := []string{"--kubeconfig", e.c.AdminKubeconfig(), "--namespace", appNS, "--sa-namespace", appNS, "--sa-name", "backup-app", "--snapshot", "cbt-2"}
		cmd := exec.Command(filepath.Join(e.bins, "snapshot-metadata-lister"), append(base, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		start := time.Now()
		out, err := cmd.Output()
		took := time.Since(start)
		if err != nil {
			return nil, stderr.String(), fmt.Errorf("snapshot-metadata-lister %v: %v: %s", args, err, stderr.String())
		}
		var records []struct {
			Type     int   `json:"block_metadata_type"` // 2: VARIABLE_LENGTH
			Capacity int64 `json:"volume_capacity_bytes"`
			Blocks   []struct {
				Offset int64 `json:"byte_offset"`
				Length int64 `json:"size_bytes"`
			} `json:"block_metadata"`
		}
		if err := json.Unmarshal(bytes.TrimSpace(out), &records); err != nil {
			return nil, "", fmt.Errorf("lister output %q: %w", out, err)
		}
		var got [][2]int64
		for _, r := range records {
			if r.Capacity != 64*mi || r.Type != 2 {
				return nil, "", fmt.Errorf("record capacity %d type %d, want %d VARIABLE_LENGTH", r.Capacity, r.Type, 64*mi)
			}
			for _, b := range r.Blocks {
				got = append(got, [2]int64{b.Offset, b.Length})
			}
		}
		fmt.Printf("e2e    snapshot-metadata-lister %v: %d records, %v in %s\n", args, len(records), got, took.Round(time.Millisecond))
		return got, "", nil
	}
	got, _, err := list()
	if want := [][2]int64{{4 * mi, mi}, {16 * mi, 64 << 10}, {40 * mi, 4096}}; err != nil || !reflect.DeepEqual(got, want) {
		return fmt.Errorf("allocated ranges of cbt-2: %v %v, want %v", got, err, want)
	}
	got, _, err = list("--prev-snapshot", "cbt-1", "--max-results", "1")
	if want := [][2]int64{{16 * mi, 64 << 10}, {40 * mi, 4096}}; err != nil || !reflect.DeepEqual(got, want) {
		return fmt.Errorf("ranges changed from cbt-1 to cbt-2: %v %v, want %v", got, err, want)
	}
	// A deleted base: FAILED_PRECONDITION with the reason, never a short list.
	handle, err := e.snapshotHandle("cbt-1")
	if err != nil {
		return err
	}
	if err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Delete(e.ctx, "cbt-1", metav1.DeleteOptions{}); err != nil {
		return err
	}
	if err := e.eventually(time.Minute, func() error {
		var s unstructured.Unstructured
		s.SetGroupVersionKind(schema.GroupVersionKind{Group: "cairn.csi.dev", Version: "v1alpha1", Kind: "Snapshot"})
		if err := e.cc.Get(e.ctx, client.ObjectKey{Name: handle}, &s); err == nil {
			return fmt.Errorf("snapshot %s still there", handle)
		}
		return nil
	}); err != nil {
		return err
	}
	if got, msg, err := list("--prev-snapshot-id", handle); err == nil || !strings.Contains(err.Error(), "FailedPrecondition") {
		return fmt.Errorf("delta from a deleted base: %v %q %v, want FailedPrecondition", got, msg, err)
	}
	return harness.UnmountVia(e.ctx, node, m)
}

// snapshotHandle is the CSI snapshot ID of a ready VolumeSnapshot.
func (e *env) snapshotHandle(name string) (string, error) {
	vs, err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).Get(e.ctx, name, metav1.GetOptions{})
	if err != nil || vs.Status == nil || vs.Status.BoundVolumeSnapshotContentName == nil {
		return "", fmt.Errorf("VolumeSnapshot %s has no content: %v", name, err)
	}
	vsc, err := e.snaps.SnapshotV1().VolumeSnapshotContents().Get(e.ctx, *vs.Status.BoundVolumeSnapshotContentName, metav1.GetOptions{})
	if err != nil || vsc.Status == nil || vsc.Status.SnapshotHandle == nil {
		return "", fmt.Errorf("content of %s has no handle: %v", name, err)
	}
	return *vsc.Status.SnapshotHandle, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
