package cluster

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/testsupport/proc"
	"github.com/cairn-csi/cairn/internal/testsupport/repo"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// binDir returns .tools/bin, building the Kubernetes binaries first when
// CAIRN_E2E=1, and skips the test when they are not built otherwise.
func binDir(t *testing.T) string {
	t.Helper()
	root := repo.Root(t)
	script := filepath.Join(root, "hack", "k8s-tools.sh")
	if os.Getenv("CAIRN_E2E") == "1" {
		cmd := exec.Command("bash", script, "kube")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("hack/k8s-tools.sh kube: %v", err)
		}
	} else if err := exec.Command("bash", script, "--check").Run(); err != nil {
		t.Skip("Kubernetes binaries not built (hack/k8s-tools.sh --check fails); set CAIRN_E2E=1 to build them")
	}
	return filepath.Join(root, ".tools", "bin")
}

const testManifests = `
apiVersion: v1
kind: Namespace
metadata:
  name: e2e-test
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: reader
  namespace: e2e-test
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: configmap-reader
  namespace: e2e-test
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: reader
  namespace: e2e-test
subjects:
- kind: ServiceAccount
  name: reader
  namespace: e2e-test
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: configmap-reader
---
# empty documents are skipped
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.cairn.csi.dev
spec:
  group: e2e.cairn.csi.dev
  scope: Namespaced
  names:
    kind: Widget
    plural: widgets
    singular: widget
    listKind: WidgetList
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size:
                type: integer
---
apiVersion: e2e.cairn.csi.dev/v1
kind: Widget
metadata:
  name: w1
  namespace: e2e-test
spec:
  size: 3
`

func TestCluster(t *testing.T) {
	bin := binDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	t0 := time.Now()
	c, err := Start(ctx, Config{BinDir: bin, WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	t.Logf("control plane up in %.1fs (logs in %s)", time.Since(t0).Seconds(), c.LogDir())
	defer func() {
		if t.Failed() {
			for _, p := range c.procs {
				t.Logf("--- %s:\n%s", p.Name, proc.LogTail(p.Log, 2000))
			}
		}
	}()
	admin, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}

	// Apply: core, RBAC, a CRD and an object of its kind in one go.
	objs, err := c.Apply(ctx, []byte(testManifests))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 6 {
		t.Fatalf("Apply returned %d objects, want 6", len(objs))
	}
	for _, o := range objs {
		if o.GetUID() == "" {
			t.Errorf("%s %s: no UID in the returned object", o.GetKind(), o.GetName())
		}
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	w, err := dyn.Resource(schema.GroupVersionResource{Group: "e2e.cairn.csi.dev", Version: "v1", Resource: "widgets"}).
		Namespace("e2e-test").Get(ctx, "w1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if mf := w.GetManagedFields(); len(mf) == 0 || mf[0].Manager != FieldManager {
		t.Errorf("widget managed fields %+v, want manager %s", mf, FieldManager)
	}
	// Applying again is a no-op, not an error.
	if _, err := c.Apply(ctx, []byte(testManifests)); err != nil {
		t.Fatalf("re-apply: %v", err)
	}
	// An unknown kind fails fast.
	t1 := time.Now()
	if _, err := c.Apply(ctx, []byte("apiVersion: nope.example.com/v1\nkind: Nope\nmetadata:\n  name: x\n")); err == nil {
		t.Error("applying an unknown kind succeeded")
	} else if time.Since(t1) > 10*time.Second {
		t.Errorf("unknown kind took %v to fail", time.Since(t1))
	}

	// The admin kubeconfig works as a file too.
	if cfg, err := clientcmd.BuildConfigFromFlags("", c.AdminKubeconfig()); err != nil {
		t.Fatal(err)
	} else if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().Get(ctx, "e2e-test", metav1.GetOptions{}); err != nil {
		t.Fatalf("admin kubeconfig: %v", err)
	}

	// A token for the ServiceAccount: RBAC applies to it.
	kc, err := c.ServiceAccountKubeconfig(ctx, "e2e-test", "reader")
	if err != nil {
		t.Fatal(err)
	}
	saCfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	sa := kubernetes.NewForConfigOrDie(saCfg)
	ssr, err := sa.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ssr.Status.UserInfo.Username, "system:serviceaccount:e2e-test:reader"; got != want {
		t.Errorf("service account kubeconfig authenticates as %q, want %q", got, want)
	}
	if _, err := sa.CoreV1().ConfigMaps("e2e-test").List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list configmaps as the service account: %v", err)
	}
	if _, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list nodes as the service account: got %v, want Forbidden", err)
	}
	if _, err := c.ServiceAccountKubeconfig(ctx, "e2e-test", "missing"); err == nil {
		t.Error("a kubeconfig for a missing ServiceAccount was written")
	}

	// A node with Cairn's CSI driver.
	const topoKey = "topology.cairn.csi.dev/node"
	t2 := time.Now()
	if err := c.RegisterNode(ctx, "node-a", map[string]string{topoKey: "node-a"}, []storagev1.CSINodeDriver{{
		Name: "cairn.csi.dev", NodeID: "node-a", TopologyKeys: []string{topoKey},
		Allocatable: &storagev1.VolumeNodeResources{Count: ptr.To[int32](16)},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Logf("node registered and untainted in %.1fs", time.Since(t2).Seconds())
	if err := c.RegisterNode(ctx, "node-a", nil, nil); err == nil {
		t.Error("registering node-a twice succeeded")
	}
	node, err := admin.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !nodeReady(node) {
		t.Errorf("node-a not Ready: %+v", node.Status.Conditions)
	}
	if node.Labels[corev1.LabelHostname] != "node-a" || node.Labels[topoKey] != "node-a" {
		t.Errorf("node-a labels %v", node.Labels)
	}
	csiNode, err := admin.StorageV1().CSINodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d := csiNode.Spec.Drivers; len(d) != 1 || d[0].Name != "cairn.csi.dev" || d[0].NodeID != "node-a" ||
		len(d[0].TopologyKeys) != 1 || d[0].TopologyKeys[0] != topoKey {
		t.Errorf("CSINode drivers %+v", d)
	}

	// The PV binder of the controller manager binds a claim to a PV.
	if _, err := admin.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-manual"},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName:              "manual",
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: "/tmp/cairn-e2e-pv"},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().PersistentVolumeClaims("e2e-test").Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "claim"},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To("manual"),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t3 := time.Now()
	for {
		pvc, err := admin.CoreV1().PersistentVolumeClaims("e2e-test").Get(ctx, "claim", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if pvc.Status.Phase == corev1.ClaimBound {
			if pvc.Spec.VolumeName != "pv-manual" {
				t.Errorf("claim bound to %q", pvc.Spec.VolumeName)
			}
			break
		}
		if time.Since(t3) > 60*time.Second {
			t.Fatalf("claim not Bound after 60s: phase %s", pvc.Status.Phase)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("claim bound in %.1fs", time.Since(t3).Seconds())

	// The scheduler places a pod on the node (the namespace's default
	// ServiceAccount, which admission requires, may still be on its way).
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sleeper", Namespace: "e2e-test"},
		Spec: corev1.PodSpec{
			Containers:   []corev1.Container{{Name: "c", Image: "registry.invalid/none:0"}},
			NodeSelector: map[string]string{topoKey: "node-a"},
		},
	}
	for {
		_, err := admin.CoreV1().Pods("e2e-test").Create(ctx, pod, metav1.CreateOptions{})
		if err == nil {
			break
		}
		if time.Since(t3) > 60*time.Second {
			t.Fatalf("create pod: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t4 := time.Now()
	for {
		p, err := admin.CoreV1().Pods("e2e-test").Get(ctx, "sleeper", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.NodeName == "node-a" {
			break
		}
		if time.Since(t4) > 30*time.Second {
			t.Fatalf("pod not scheduled after 30s: %+v", p.Status)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("pod scheduled in %.1fs", time.Since(t4).Seconds())

	// The heartbeat renews the node lease.
	lease, err := admin.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	first := lease.Spec.RenewTime.Time
	for {
		lease, err = admin.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, "node-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if lease.Spec.RenewTime.After(first) {
			break
		}
		if time.Since(first) > 2*heartbeatInterval+5*time.Second {
			t.Fatalf("node lease not renewed since %v", first)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Stop kills every process and ends the heartbeats; twice is fine.
	pids := map[string]int{}
	for _, p := range c.procs {
		pids[p.Name] = p.Pid()
	}
	if len(pids) != 4 {
		t.Errorf("processes %v, want etcd, kube-apiserver, kube-controller-manager, kube-scheduler", pids)
	}
	c.Stop()
	c.Stop()
	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still there after Stop: %v", name, pid, err)
		}
	}
	if err := c.RegisterNode(ctx, "node-b", nil, nil); err == nil {
		t.Error("RegisterNode after Stop succeeded")
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
