package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
	"github.com/cairn-csi/cairn/test/e2e/cluster"
	"github.com/cairn-csi/cairn/test/e2e/node"
)

// TestRealNode is the walkthrough with real pods: kubelet and containerd
// run on this machine (test/e2e/node), kubelet calls Cairn's node service
// (registered through plugins_registry) for NodeStage/NodePublish/
// NodeExpand, and busybox pods write and read the data.
func TestRealNode(t *testing.T) {
	if _, err := exec.LookPath("containerd"); err != nil && os.Getenv("CAIRN_E2E_NODE") != "1" {
		t.Skip("containerd not installed; `make e2e-node` (CAIRN_E2E_NODE=1) installs it with hack/node-deps.sh")
	}
	e := newEnvNamed(t, "e2e-node", true, 20*time.Minute)
	e.startRealNode(false)

	const write = `dd if=/dev/urandom of=/data/mysql.db bs=1M count=8 2>/dev/null && sha256sum /data/mysql.db > /data/mysql.sum && sync && echo written && exec sleep 100000`
	const verify = `cd /data && sha256sum -c mysql.sum`
	e.step("pod mysql writes into mysql-pvc (1Gi, bound at first use)", func() error {
		if err := e.claim("mysql-pvc", "cairn-xfs", "1Gi", nil, false); err != nil {
			return err
		}
		if err := e.pod("mysql", "mysql-pvc", write, false); err != nil {
			return err
		}
		return e.eventually(2*time.Minute, func() error {
			out, err := e.kubectl("logs", "-n", appNS, "mysql")
			if err != nil || !strings.Contains(out, "written") {
				return fmt.Errorf("mysql pod not done writing: %v %s%s", err, out, e.podState("mysql"))
			}
			return nil
		})
	})
	e.step("VolumeSnapshot mysql-snapshot-demo readyToUse (volume mounted in a running pod)", func() error {
		if err := e.snapshotClass("longhorn", snapv1.VolumeSnapshotContentDelete, map[string]string{"type": "snap"}); err != nil {
			return err
		}
		return e.snapshot("mysql-snapshot-demo", "longhorn", "mysql-pvc")
	})
	e.step("pod on mysql-restore-pvc reads the same bytes", func() error {
		if err := e.claim("mysql-restore-pvc", "cairn-xfs", "1Gi", snapshotSource("mysql-snapshot-demo"), false); err != nil {
			return err
		}
		return e.podSucceeds("restore-reader", "mysql-restore-pvc", verify, false)
	})
	e.step("pod on mysql-clone-pvc reads them too", func() error {
		if err := e.claim("mysql-clone-pvc", "cairn-xfs", "1Gi", &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "mysql-pvc"}, false); err != nil {
			return err
		}
		return e.podSucceeds("clone-reader", "mysql-clone-pvc", verify, false)
	})
	e.step("patch the mounted mysql-pvc to 2Gi: the running pod sees ~2Gi (online, through kubelet)", func() error {
		return e.growOnline("mysql", "mysql-pvc", "2Gi")
	})
	e.step("delete Cairn's CRDs and apply them again while pod mysql uses its volume: data kept, the pod reads it", func() error {
		if err := e.reinstallCRDs(); err != nil {
			return err
		}
		out, err := e.kubectl("exec", "-n", appNS, "mysql", "--", "sh", "-c", verify+" && echo >> /data/after-reinstall")
		if err != nil {
			return fmt.Errorf("pod mysql after the reinstall: %v %s", err, out)
		}
		return nil
	})
	e.step("raw block PVC used by a pod through volumeDevices", func() error {
		if err := e.claim("block-pvc", storageClass, "1Gi", nil, true); err != nil {
			return err
		}
		script := `dd if=/dev/urandom of=/tmp/a bs=1M count=4 2>/dev/null && dd if=/tmp/a of=/dev/xvda bs=1M count=4 conv=fsync 2>/dev/null && dd if=/dev/xvda of=/tmp/b bs=1M count=4 2>/dev/null && cmp /tmp/a /tmp/b && echo block-ok`
		return e.podSucceeds("block-user", "block-pvc", script, true)
	})
	e.step("delete pods and PVCs: no mounts, loop devices or files left", func() error {
		return e.cleanupRealNode(e.kubeletRoot)
	})
}

// clients makes the API clients once the control plane runs.
func (e *env) clients() error { return e.connect(e.c) }

// claim creates a PVC of a class that binds at first use; the pod that
// uses it lets the scheduler pick the node.
func (e *env) claim(name, class, size string, source *corev1.TypedLocalObjectReference, block bool) error {
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: appNS},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &class,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
			DataSource:       source,
		},
	}
	if block {
		mode := corev1.PersistentVolumeBlock
		pvc.Spec.VolumeMode = &mode
	}
	if source != nil && source.Kind == "VolumeSnapshot" {
		pvc.Spec.DataSource.APIGroup = ptr("snapshot.storage.k8s.io")
	}
	_, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Create(e.ctx, pvc, metav1.CreateOptions{})
	return err
}

// pod starts a busybox pod running script with the PVC at /data (or, for
// a block PVC, as /dev/xvda).
func (e *env) pod(name, pvc, script string, block bool) error {
	return e.podOn(name, pvc, "", script, block)
}

// podOn is pod on the node named node (any node if "").
func (e *env) podOn(name, pvc, node, script string, block bool) error {
	c := corev1.Container{Name: "main", Image: "docker.io/library/busybox:1.36", ImagePullPolicy: corev1.PullNever,
		Command: []string{"sh", "-c", script}}
	if block {
		c.VolumeDevices = []corev1.VolumeDevice{{Name: "vol", DevicePath: "/dev/xvda"}}
	} else {
		c.VolumeMounts = []corev1.VolumeMount{{Name: "vol", MountPath: "/data"}}
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: appNS},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{c},
			TerminationGracePeriodSeconds: ptr(int64(1)),
			NodeSelector:                  nodeSelector(node),
			Volumes: []corev1.Volume{{Name: "vol", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc}}}},
		},
	}
	_, err := e.kc.CoreV1().Pods(appNS).Create(e.ctx, p, metav1.CreateOptions{})
	return err
}

// podSucceeds runs a pod to completion and fails unless it Succeeded.
func (e *env) podSucceeds(name, pvc, script string, block bool) error {
	return e.podSucceedsOn(name, pvc, "", script, block)
}

// podSucceedsOn is podSucceeds on the node named node (any node if "").
func (e *env) podSucceedsOn(name, pvc, node, script string, block bool) error {
	if err := e.podOn(name, pvc, node, script, block); err != nil {
		return err
	}
	return e.eventually(3*time.Minute, func() error {
		p, err := e.kc.CoreV1().Pods(appNS).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			return nil
		case corev1.PodFailed:
			out, _ := e.kubectl("logs", "-n", appNS, name)
			return backoffStop(fmt.Errorf("pod %s failed: %s", name, out))
		}
		return fmt.Errorf("pod %s is %s%s", name, p.Status.Phase, e.podState(name))
	})
}

// patchSize sets a PVC's requested size.
func (e *env) patchSize(pvc, size string) error {
	patch := fmt.Sprintf(`{"spec":{"resources":{"requests":{"storage":%q}}}}`, size)
	_, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Patch(e.ctx, pvc, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// pvGrown waits until the PV bound to pvc has at least size: the
// controller side of an expansion is done.
func (e *env) pvGrown(pvc, size string) error {
	want := resource.MustParse(size)
	return e.eventually(2*time.Minute, func() error {
		c, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, pvc, metav1.GetOptions{})
		if err != nil {
			return err
		}
		pv, err := e.kc.CoreV1().PersistentVolumes().Get(e.ctx, c.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got := pv.Spec.Capacity[corev1.ResourceStorage]; got.Cmp(want) < 0 {
			return fmt.Errorf("PV capacity %s, want %s%s", got.String(), size, e.lastEvent("PersistentVolumeClaim", pvc))
		}
		return nil
	})
}

// recoverExpansion asks for more than the volume's node can hold: the
// PVC must record ControllerResizeInfeasible with the size unchanged; then
// it lowers the request to size (recovery from expansion failure), which
// must be carried out, with allocatedResources settling at size and no
// resize status left.
func (e *env) recoverExpansion(pvc, tooBig, size string) error {
	if err := e.patchSize(pvc, tooBig); err != nil {
		return err
	}
	var before resource.Quantity
	err := e.eventually(2*time.Minute, func() error {
		c, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, pvc, metav1.GetOptions{})
		if err != nil {
			return err
		}
		before = c.Status.Capacity[corev1.ResourceStorage]
		if st := c.Status.AllocatedResourceStatuses[corev1.ResourceStorage]; st != corev1.PersistentVolumeClaimControllerResizeInfeasible {
			return fmt.Errorf("allocatedResourceStatuses %q, want ControllerResizeInfeasible%s", st, e.lastEvent("PersistentVolumeClaim", pvc))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := e.patchSize(pvc, size); err != nil {
		return fmt.Errorf("lower the request to %s (capacity %s): %w", size, before.String(), err)
	}
	want := resource.MustParse(size)
	return e.eventually(2*time.Minute, func() error {
		c, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, pvc, metav1.GetOptions{})
		if err != nil {
			return err
		}
		got, alloc := c.Status.Capacity[corev1.ResourceStorage], c.Status.AllocatedResources[corev1.ResourceStorage]
		st, stSet := c.Status.AllocatedResourceStatuses[corev1.ResourceStorage]
		if got.Cmp(want) != 0 || alloc.Cmp(want) != 0 || stSet {
			return fmt.Errorf("capacity %s, allocatedResources %s, allocatedResourceStatuses %q; want %s, %s and none%s", got.String(), alloc.String(), st, size, size, e.lastEvent("PersistentVolumeClaim", pvc))
		}
		return nil
	})
}

// growOnline patches the PVC of a running pod to size and waits until the
// pod sees the larger file system, without a restart.
func (e *env) growOnline(pod, pvc, size string) error {
	before, err := e.kc.CoreV1().Pods(appNS).Get(e.ctx, pod, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if err := e.patchSize(pvc, size); err != nil {
		return err
	}
	want := resource.MustParse(size)
	err = e.eventually(3*time.Minute, func() error {
		c, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, pvc, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got := c.Status.Capacity[corev1.ResourceStorage]; got.Cmp(want) < 0 {
			return fmt.Errorf("PVC capacity %s%s", got.String(), e.lastEvent("PersistentVolumeClaim", pvc))
		}
		out, err := e.kubectl("exec", "-n", appNS, pod, "--", "df", "-k", "/data")
		if err != nil {
			return err
		}
		fields := strings.Fields(lastLine(out))
		if len(fields) < 2 {
			return fmt.Errorf("df output %q", out)
		}
		kb, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil || kb*1024 < want.Value()*9/10 {
			return fmt.Errorf("the pod sees %d KiB at /data", kb)
		}
		fmt.Printf("e2e    pod %s sees %d KiB at /data\n", pod, kb)
		return nil
	})
	if err != nil {
		return err
	}
	after, err := e.kc.CoreV1().Pods(appNS).Get(e.ctx, pod, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if after.UID != before.UID || after.Status.ContainerStatuses[0].RestartCount != 0 {
		return errors.New("the pod was restarted")
	}
	return nil
}

// noPods waits until namespace ns has no pods.
func (e *env) noPods(ns string) error {
	return e.eventually(2*time.Minute, func() error {
		pods, err := e.kc.CoreV1().Pods(ns).List(e.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d pods remain in %s", len(pods.Items), ns)
		}
		return nil
	})
}

// deletePod deletes a pod of appNS and waits until it is gone (its
// volumes unpublished).
func (e *env) deletePod(name string) error {
	if err := e.kc.CoreV1().Pods(appNS).Delete(e.ctx, name, metav1.DeleteOptions{}); err != nil {
		return err
	}
	return e.eventually(2*time.Minute, func() error {
		if _, err := e.kc.CoreV1().Pods(appNS).Get(e.ctx, name, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("pod %s still there", name)
		}
		return nil
	})
}

// nodeSelector pins a pod to the node named node (nil: any node).
func nodeSelector(node string) map[string]string {
	if node == "" {
		return nil
	}
	return map[string]string{"kubernetes.io/hostname": node}
}

// podState describes why a pod is not there yet, for messages.
func (e *env) podState(name string) string {
	p, err := e.kc.CoreV1().Pods(appNS).Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	var parts []string
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			parts = append(parts, string(c.Type)+": "+c.Message)
		}
	}
	return " (" + strings.Join(parts, "; ") + ")" + e.lastEvent("Pod", name)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// kubectl runs the built kubectl as admin.
func (e *env) kubectl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	args = append([]string{"--kubeconfig", e.c.AdminKubeconfig(), "--cache-dir", filepath.Join(e.work, "kubectl-cache")}, args...)
	out, err := exec.CommandContext(ctx, filepath.Join(e.bins, "kubectl"), args...).CombinedOutput()
	return string(out), err
}

// cleanupRealNode deletes the pods (kubelet unpublishes and unstages),
// snapshots and PVCs, and checks nothing is left of the volumes.
func (e *env) cleanupRealNode(kubeletRoot string) error {
	if err := e.kc.CoreV1().Pods(appNS).DeleteCollection(e.ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return err
	}
	if err := e.noPods(appNS); err != nil {
		return err
	}
	if err := e.snaps.SnapshotV1().VolumeSnapshots(appNS).DeleteCollection(e.ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err := e.kc.CoreV1().PersistentVolumeClaims(appNS).DeleteCollection(e.ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return err
	}
	if err := e.eventually(3*time.Minute, func() error {
		pvs, err := e.kc.CoreV1().PersistentVolumes().List(e.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pvs.Items) > 0 {
			return fmt.Errorf("%d PVs remain", len(pvs.Items))
		}
		ents, _ := os.ReadDir(filepath.Join(e.fs.Mount, "volumes"))
		snaps, _ := os.ReadDir(filepath.Join(e.fs.Mount, "snapshots"))
		if len(ents)+len(snaps) > 0 {
			return fmt.Errorf("%d volumes, %d snapshots on the data root", len(ents), len(snaps))
		}
		return nil
	}); err != nil {
		return err
	}
	// Cairn's part: loop devices of the data root, and mounts kubelet made
	// for CSI volumes (staging under plugins/kubernetes.io/csi, targets
	// under pods/*/volumes/kubernetes.io~csi or volumeDevices). Kubelet
	// tears down its own tmpfs token mounts of deleted pods at its pace.
	all, err := harness.Leaks(e.fs.Mount, kubeletRoot)
	if err != nil {
		return err
	}
	var leaks []string
	for _, l := range all {
		if strings.HasPrefix(l, "loop device") || strings.Contains(l, "kubernetes.io~csi") || strings.Contains(l, "kubernetes.io/csi") {
			leaks = append(leaks, l)
		}
	}
	if len(leaks) > 0 {
		return fmt.Errorf("left behind: %s", strings.Join(leaks, ", "))
	}
	return nil
}

// startRealNode brings up the control plane, Cairn and a kubelet +
// containerd node with Cairn registered, as the steps of the run; extra
// images (e.g. the e2e suite's) are imported into containerd too.
func (e *env) startRealNode(allImages bool) {
	t := e.t
	if os.Getenv("CAIRN_E2E_NODE") == "1" {
		deps := exec.Command("bash", filepath.Join(e.root, "hack/node-deps.sh"))
		deps.Stdout, deps.Stderr = os.Stderr, os.Stderr
		if err := deps.Run(); err != nil {
			t.Fatalf("hack/node-deps.sh: %v", err)
		}
	}
	var err error
	var kubelet *node.Kubelet
	t.Cleanup(func() {
		if kubelet != nil {
			if err := kubelet.Stop(); err != nil {
				t.Errorf("stopping the node: %v", err)
			}
		}
	})
	e.step("build cairn and the images (busybox, pause)", func() error {
		if e.cairn, err = harness.Build(e.work); err != nil {
			return err
		}
		cmd := exec.Command("go", "run", "./hack/images", "-out", filepath.Join(e.work, "images"), "-e2e="+strconv.FormatBool(allImages))
		cmd.Dir = e.root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go run ./hack/images: %v\n%s", err, out)
		}
		return nil
	})
	e.step("XFS data root on a loop device", func() error {
		e.fs, err = scratchfs.Create(filepath.Join(e.work, "root.img"), filepath.Join(e.work, "root"), "xfs", 16<<30)
		return err
	})
	ncfg := node.Config{BinDir: e.bins, WorkDir: filepath.Join(e.work, "node"),
		ImageTars: []string{filepath.Join(e.work, "images", "busybox.tar"), filepath.Join(e.work, "images", "pause.tar")}}
	if allImages { // the e2e suite's images too (hack/images writes e2e-*.tar)
		more, _ := filepath.Glob(filepath.Join(e.work, "images", "e2e-*.tar"))
		ncfg.ImageTars = append(ncfg.ImageTars, more...)
	}
	e.step("control plane (apiserver can reach kubelet)", func() error {
		apiArgs, err := node.APIServerArgs(ncfg)
		if err != nil {
			return err
		}
		c, err := cluster.Start(e.ctx, cluster.Config{BinDir: e.bins, WorkDir: filepath.Join(e.work, "cluster"), ExtraAPIServerArgs: apiArgs})
		if err != nil {
			return err
		}
		e.c = c
		return e.clients()
	})
	e.step("prerequisites: snapshot CRDs and snapshot-controller", e.installPrerequisites)
	e.step("install Cairn from deploy/kustomize/base + example classes", e.installCairn)
	e.step("kubelet + containerd node is Ready", func() error {
		ncfg.Kubeconfig = e.c.AdminKubeconfig()
		if kubelet, err = node.Start(e.ctx, ncfg); err != nil {
			return err
		}
		e.nodeName, e.kubeletRoot = kubelet.NodeName(), kubelet.RootDir()
		return nil
	})
	e.step("cairn node registers with kubelet (CSINode, topology label)", func() error {
		if err := e.startNode(); err != nil {
			return err
		}
		return e.eventually(time.Minute, func() error {
			cn, err := e.kc.StorageV1().CSINodes().Get(e.ctx, e.nodeName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			for _, d := range cn.Spec.Drivers {
				if d.Name == driver && d.NodeID == e.nodeName && len(d.TopologyKeys) == 1 && d.TopologyKeys[0] == topoKey {
					n, err := e.kc.CoreV1().Nodes().Get(e.ctx, e.nodeName, metav1.GetOptions{})
					if err != nil {
						return err
					}
					if n.Labels[topoKey] != e.nodeName {
						return fmt.Errorf("node lacks the topology label: %v", n.Labels)
					}
					return nil
				}
			}
			return fmt.Errorf("CSINode drivers %+v", cn.Spec.Drivers)
		})
	})
	e.step("cairn controller with its sidecars", func() error {
		pods, err := e.controllerPods(1)
		if err != nil {
			return err
		}
		if _, err := e.startReplica(pods[0]); err != nil {
			return err
		}
		return e.waitStorageNode()
	})
	e.step("StorageClass cairn-xfs (online growth: the kernel refuses it for ext4 here)", func() error {
		sc, err := e.kc.StorageV1().StorageClasses().Get(e.ctx, storageClass, metav1.GetOptions{})
		if err != nil {
			return err
		}
		xfs := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "cairn-xfs"}, Provisioner: sc.Provisioner,
			Parameters: map[string]string{"csi.storage.k8s.io/fstype": "xfs"}, AllowVolumeExpansion: sc.AllowVolumeExpansion,
			VolumeBindingMode: sc.VolumeBindingMode, ReclaimPolicy: sc.ReclaimPolicy}
		_, err = e.kc.StorageV1().StorageClasses().Create(e.ctx, xfs, metav1.CreateOptions{})
		return err
	})
}

// ioLimited checks I/O limits from a VolumeAttributesClass on a running
// pod: direct writes to pvc, created with a class of 50 IOPS, are
// throttled; switching the PVC to a class without limits
// (ControllerModifyVolume through csi-resizer) frees them, and the pod is
// not restarted.
func (e *env) ioLimited(pvc, node string) error {
	for name, iops := range map[string]string{"cairn-io-slow": "50", "cairn-io-free": "0"} {
		vac := &storagev1.VolumeAttributesClass{ObjectMeta: metav1.ObjectMeta{Name: name}, DriverName: driver,
			Parameters: map[string]string{"iops": iops, "throughput": "0"}}
		if _, err := e.kc.StorageV1().VolumeAttributesClasses().Create(e.ctx, vac, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	class := storageClass
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: pvc, Namespace: appNS},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:               []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName:          &class,
			VolumeAttributesClassName: ptr("cairn-io-slow"),
			Resources:                 corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
	if _, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Create(e.ctx, c, metav1.CreateOptions{}); err != nil {
		return err
	}
	const pod = "io-writer"
	if err := e.podOn(pod, pvc, node, "exec sleep 100000", false); err != nil {
		return err
	}
	current := func(want string) error {
		return e.eventually(3*time.Minute, func() error {
			c, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Get(e.ctx, pvc, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if c.Status.CurrentVolumeAttributesClassName == nil || *c.Status.CurrentVolumeAttributesClassName != want || c.Status.ModifyVolumeStatus != nil {
				return fmt.Errorf("PVC %s: current class %v, modify status %+v%s", pvc, c.Status.CurrentVolumeAttributesClassName, c.Status.ModifyVolumeStatus, e.lastEvent("PersistentVolumeClaim", pvc))
			}
			return nil
		})
	}
	// 100 direct 4 KiB writes, timed from here (kubectl exec included).
	writes := func() (time.Duration, error) {
		var took time.Duration
		err := e.eventually(2*time.Minute, func() error {
			start := time.Now()
			out, err := e.kubectl("exec", "-n", appNS, pod, "--", "dd", "if=/dev/zero", "of=/data/io", "bs=4k", "count=100", "oflag=direct")
			took = time.Since(start)
			if err != nil {
				return fmt.Errorf("dd in pod %s: %v %s%s", pod, err, out, e.lastEvent("Pod", pod))
			}
			return nil
		})
		return took, err
	}
	if err := current("cairn-io-slow"); err != nil {
		return err
	}
	slow, err := writes()
	if err != nil {
		return err
	}
	before, err := e.kc.CoreV1().Pods(appNS).Get(e.ctx, pod, metav1.GetOptions{})
	if err != nil {
		return err
	}
	patch := `{"spec":{"volumeAttributesClassName":"cairn-io-free"}}`
	if _, err := e.kc.CoreV1().PersistentVolumeClaims(appNS).Patch(e.ctx, pvc, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return err
	}
	if err := current("cairn-io-free"); err != nil {
		return err
	}
	free, err := writes()
	if err != nil {
		return err
	}
	fmt.Printf("e2e    100 direct writes in pod %s: %v at 50 IOPS, %v without a limit\n", pod, slow, free)
	// 100 writes at 50 IOPS take about 2 s (the first few are free).
	if slow < 1500*time.Millisecond || free*2 > slow {
		return fmt.Errorf("100 direct writes took %v at 50 IOPS and %v without a limit: not throttled by the class", slow, free)
	}
	after, err := e.kc.CoreV1().Pods(appNS).Get(e.ctx, pod, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if after.UID != before.UID || after.Status.ContainerStatuses[0].RestartCount != 0 {
		return errors.New("the pod was restarted")
	}
	// The pod keeps running: deleting it here would unstage io-pvc while
	// the next steps compare node A's mounts and loop devices.
	return nil
}
