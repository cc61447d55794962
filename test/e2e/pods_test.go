package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cairn-csi/cairn/internal/loop"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
	"github.com/cairn-csi/cairn/test/e2e/cluster"
	"github.com/cairn-csi/cairn/test/e2e/node"
)

// The pod-deployed run's fixed names: the images' registry and tag (not
// the chart's defaults, so the install works only through the image
// values), the release, and the nodes.
const (
	podRegistry = "e2e.cairn.local/cairn"
	podTag      = "e2e-1"
	release     = "cairn"
	podDataRoot = "/var/lib/cairn" // the chart's dataRoot, in each node's mount namespace
)

// podCluster is what TestPodDeployed runs: two isolated nodes, MinIO on
// the host bridge, and Cairn installed from its images.
type podCluster struct {
	*env
	nodes  []*node.Kubelet
	roots  []*scratchfs.FS // each node's data root, mounted at podDataRoot in its namespace
	minio  *harness.MinIO
	images map[string]string // image name (cairn, csi-provisioner, ...) -> reference
	// suiteImages: import the e2e suite's images too (hack/images -e2e).
	suiteImages bool
}

// TestPodDeployed installs Cairn as users do — its own images, `helm
// install` — into a cluster of two real kubelet + containerd nodes, each in
// its own network and mount namespace with its own data root (see
// test/e2e/node.Isolation), and runs the walkthrough with pods only: no
// Cairn or sidecar process runs outside a pod.
func TestPodDeployed(t *testing.T) {
	if _, err := exec.LookPath("containerd"); err != nil && os.Getenv("CAIRN_E2E_NODE") != "1" {
		t.Skip("containerd not installed; `make e2e-node` (CAIRN_E2E_NODE=1) installs it with hack/node-deps.sh")
	}
	p := &podCluster{env: newEnvNamed(t, "e2e-pods", true, 30*time.Minute)}
	p.start(false)
	if t.Failed() {
		return
	}
	nodeA, nodeB := p.nodes[0].NodeName(), p.nodes[1].NodeName()

	const write = `dd if=/dev/urandom of=/data/mysql.db bs=1M count=8 2>/dev/null && sha256sum /data/mysql.db > /data/mysql.sum && sync && cat /data/mysql.sum && echo written && exec sleep 100000`
	const verify = `cd /data && sha256sum -c mysql.sum && cat mysql.sum`
	var sum string // the sha256 line the mysql pod wrote
	p.step("pod mysql on node A writes into mysql-pvc (1Gi, bound at first use: the PV lands on node A)", func() error {
		if err := p.claim("mysql-pvc", storageClass, "1Gi", nil, false); err != nil {
			return err
		}
		if err := p.podOn("mysql", "mysql-pvc", nodeA, write, false); err != nil {
			return err
		}
		if err := p.eventually(3*time.Minute, func() error {
			out, err := p.kubectl("logs", "-n", appNS, "mysql")
			if err != nil || !strings.Contains(out, "written") {
				return fmt.Errorf("mysql pod not done writing: %v %s%s", err, out, p.podState("mysql"))
			}
			sum = strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
			return nil
		}); err != nil {
			return err
		}
		return p.pvOnNode("mysql-pvc", nodeA)
	})
	p.step("VolumeSnapshot mysql-snapshot-demo (class cairn-snap) readyToUse", func() error {
		return p.snapshot("mysql-snapshot-demo", "cairn-snap", "mysql-pvc")
	})
	p.step("restore mysql-restore-pvc from it: a pod on node A reads the same bytes", func() error {
		if err := p.claim("mysql-restore-pvc", storageClass, "1Gi", snapshotSource("mysql-snapshot-demo"), false); err != nil {
			return err
		}
		return p.podReads("restore-reader", "mysql-restore-pvc", nodeA, verify, sum)
	})
	p.step("clone mysql-clone-pvc from mysql-pvc: a pod on node A reads them too", func() error {
		if err := p.claim("mysql-clone-pvc", storageClass, "1Gi", &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "mysql-pvc"}, false); err != nil {
			return err
		}
		return p.podReads("clone-reader", "mysql-clone-pvc", nodeA, verify, sum)
	})
	p.step("restore mysql-snapshot-demo for a pod pinned to node B: node B's agent copies the snapshot from node A's, the pod reads the same bytes", func() error {
		if err := p.claim("mysql-restore-b-pvc", storageClass, "1Gi", snapshotSource("mysql-snapshot-demo"), false); err != nil {
			return err
		}
		if err := p.podReads("restore-reader-b", "mysql-restore-b-pvc", nodeB, verify, sum); err != nil {
			return err
		}
		return p.pvOnNode("mysql-restore-b-pvc", nodeB)
	})
	p.step("clone mysql-pvc (in use by pod mysql on node A) for a pod pinned to node B: it reads the same bytes", func() error {
		if err := p.claim("mysql-clone-b-pvc", storageClass, "1Gi", &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "mysql-pvc"}, false); err != nil {
			return err
		}
		if err := p.podReads("clone-reader-b", "mysql-clone-b-pvc", nodeB, verify, sum); err != nil {
			return err
		}
		return p.pvOnNode("mysql-clone-b-pvc", nodeB)
	})
	p.step("expand the detached clone to 2Gi: the next pod sees ~2Gi and the data", func() error {
		if err := p.patchSize("mysql-clone-pvc", "2Gi"); err != nil {
			return err
		}
		// The next pod is the one that starts after the controller side of
		// the expansion: a pod started earlier mounts the old size and is
		// grown online by kubelet later, after this one-shot pod has read df.
		if err := p.pvGrown("mysql-clone-pvc", "2Gi"); err != nil {
			return err
		}
		return p.podReads("clone-grown", "mysql-clone-pvc", nodeA, verify+` && df -k /data | tail -1 | awk '{print "size-kib", $2}'`, sum, "size-kib 2")
	})
	p.step("expand the clone to 64Gi, more than node A holds: ControllerResizeInfeasible; lower it to 2560Mi: done, allocatedResources 2560Mi", func() error {
		if err := p.recoverExpansion("mysql-clone-pvc", "64Gi", "2560Mi"); err != nil {
			return err
		}
		return p.podReads("clone-recovered", "mysql-clone-pvc", nodeA, verify+` && df -k /data | tail -1 | awk '{print "size-kib", $2}'`, sum, "size-kib 2")
	})
	p.step("expand mysql-pvc to 2Gi while pod mysql runs: the pod sees the larger file system, no restart", func() error {
		return p.growOnline("mysql", "mysql-pvc", "2Gi")
	})
	p.step("io-pvc of VolumeAttributesClass cairn-io-slow (iops 50): a pod's direct writes are throttled; switched to cairn-io-free while the pod runs: they are not", func() error {
		return p.ioLimited("io-pvc", nodeA)
	})
	p.lifecycleFaults(nodeA, nodeB, verify, sum)
	p.step("a pod pinned to node B with a claim larger than node B's free space is not scheduled (CSIStorageCapacity)", func() error {
		return p.tooBigForNode("too-big", nodeB)
	})
	p.step("backup VolumeSnapshot mysql-backup (class cairn-backup, MinIO on the host) readyToUse", func() error {
		if err := p.snapshotSized("mysql-backup", "cairn-backup", "mysql-pvc", 2*gi); err != nil {
			return err
		}
		return nil
	})
	p.step("delete pod mysql, then node A is lost (its kubelet, containerd and pods stop)", func() error {
		if err := p.deletePod("mysql"); err != nil {
			return err
		}
		return p.nodes[0].Stop()
	})
	p.step("restore the backup as mysql-dr-pvc: a pod on node B reads it byte-identical", func() error {
		if err := p.claim("mysql-dr-pvc", storageClass, "2Gi", snapshotSource("mysql-backup"), false); err != nil {
			return err
		}
		if err := p.podReads("dr-reader", "mysql-dr-pvc", nodeB, verify, sum); err != nil {
			return err
		}
		p.printLeader()
		return p.pvOnNode("mysql-dr-pvc", nodeB)
	})
	p.step("only pods run Cairn and the sidecars (kubectl get pods -A)", p.onlyPods)
}

// TestPodDeployedKustomize is TestPodDeployed's install with the
// kustomize base instead of helm (an overlay with the builtin-registrar
// Component and an images transformer, then the example classes), and a
// short walkthrough: write, snapshot, restore, on node B.
func TestPodDeployedKustomize(t *testing.T) {
	if _, err := exec.LookPath("containerd"); err != nil && os.Getenv("CAIRN_E2E_NODE") != "1" {
		t.Skip("containerd not installed; `make e2e-node` (CAIRN_E2E_NODE=1) installs it with hack/node-deps.sh")
	}
	p := &podCluster{env: newEnvNamed(t, "e2e-pods-kustomize", true, 20*time.Minute)}
	p.start(true)
	if t.Failed() {
		return
	}
	nodeB := p.nodes[1].NodeName()
	const write = `dd if=/dev/urandom of=/data/db bs=1M count=8 2>/dev/null && sha256sum /data/db > /data/db.sum && cat /data/db.sum`
	const verify = `cd /data && sha256sum -c db.sum && cat db.sum`
	var sum string
	p.step("pod on node B writes into data-pvc (bound at first use: the PV lands on node B)", func() error {
		if err := p.claim("data-pvc", storageClass, "1Gi", nil, false); err != nil {
			return err
		}
		if err := p.podSucceedsOn("writer", "data-pvc", nodeB, write, false); err != nil {
			return err
		}
		out, err := p.kubectl("logs", "-n", appNS, "writer")
		if err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		sum = strings.TrimSpace(out)
		return p.pvOnNode("data-pvc", nodeB)
	})
	p.step("VolumeSnapshot data-snap (class cairn-snap) readyToUse", func() error {
		return p.snapshot("data-snap", "cairn-snap", "data-pvc")
	})
	p.step("restore data-restore-pvc from it: a pod on node B reads the same bytes", func() error {
		if err := p.claim("data-restore-pvc", storageClass, "1Gi", snapshotSource("data-snap"), false); err != nil {
			return err
		}
		return p.podReads("reader", "data-restore-pvc", nodeB, verify, sum)
	})
	p.step("only pods run Cairn and the sidecars (kubectl get pods -A)", p.onlyPods)
}

// start builds the images, makes the data roots, starts the control plane
// and the two nodes, MinIO, and installs Cairn with helm (or, kustomize,
// from the kustomize base), each a step.
func (p *podCluster) start(kustomize bool) {
	t := p.t
	if os.Getenv("CAIRN_E2E_NODE") == "1" {
		deps := exec.Command("bash", filepath.Join(p.root, "hack/node-deps.sh"))
		deps.Stdout, deps.Stderr = os.Stderr, os.Stderr
		if err := deps.Run(); err != nil {
			t.Fatalf("hack/node-deps.sh: %v", err)
		}
	}
	// Clean-ups run last-registered first: the nodes stop, then MinIO,
	// then the data roots go (the env's clean-up stops the control plane).
	t.Cleanup(func() {
		if t.Failed() {
			p.dumpPodLogs()
		}
		for _, k := range p.nodes {
			if err := k.Stop(); err != nil {
				t.Errorf("stopping node %s: %v", k.NodeName(), err)
			}
		}
		if p.minio != nil {
			p.minio.Stop()
		}
		for _, fs := range p.roots {
			harness.DetachLoops(fs.Mount)
			fs.Close()
		}
	})
	images := filepath.Join(p.work, "images")
	p.step("make images: cairn and the sidecars (tag "+podTag+"), busybox and pause (and the e2e suite's)", func() error {
		var err error
		p.images, err = buildProductImages(p.root, images)
		if err != nil {
			return err
		}
		cmd := exec.Command("go", "run", "./hack/images", "-out", images, "-e2e="+strconv.FormatBool(p.suiteImages))
		cmd.Dir = p.root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go run ./hack/images: %v\n%s", err, out)
		}
		return nil
	})
	tars, _ := filepath.Glob(filepath.Join(images, "*.tar"))
	var cfgs []node.Config
	p.step("two XFS data roots on loop devices, one per node", func() error {
		for i, name := range []string{"a", "b"} {
			fs, err := scratchfs.Create(filepath.Join(p.work, "root-"+name+".img"), filepath.Join(p.work, "root-"+name), "xfs", 8<<30)
			if err != nil {
				return err
			}
			p.roots = append(p.roots, fs)
			cfgs = append(cfgs, node.Config{
				BinDir: p.bins, WorkDir: filepath.Join(p.work, "n"+name), ImageTars: tars,
				PKIDir: filepath.Join(p.work, "node-pki"), PodCIDR: fmt.Sprintf("10.244.%d.0/24", i),
				Isolated: &node.Isolation{Name: name, IP: fmt.Sprintf("10.89.0.%d", i+2),
					Binds: []node.Bind{{Source: fs.Mount, Target: podDataRoot}}},
			})
		}
		return nil
	})
	p.step("control plane (serving on the host bridge too)", func() error {
		var apiArgs []string
		for _, cfg := range cfgs {
			var err error
			if apiArgs, err = node.APIServerArgs(cfg); err != nil {
				return err
			}
		}
		c, err := cluster.Start(p.ctx, cluster.Config{BinDir: p.bins, WorkDir: filepath.Join(p.work, "cluster"),
			ExtraServingIPs:    []net.IP{net.ParseIP(node.HostIP)},
			ExtraAPIServerArgs: append(apiArgs, "--bind-address=0.0.0.0")})
		if err != nil {
			return err
		}
		p.c = c
		return p.clients()
	})
	for _, cfg := range cfgs {
		p.step(fmt.Sprintf("node cairn-%s (%s, own network and mount namespace, images imported) is Ready", cfg.Isolated.Name, cfg.Isolated.IP), func() error {
			cfg.Kubeconfig = p.c.AdminKubeconfig()
			k, err := node.Start(p.ctx, cfg)
			if err != nil {
				return err
			}
			p.nodes = append(p.nodes, k)
			tm := k.Timings()
			fmt.Printf("e2e    node %s: containerd %v, %d images imported in %v, Ready after %v\n", k.NodeName(),
				tm.Containerd.Round(time.Millisecond), len(tars), tm.Images.Round(time.Millisecond), tm.Total.Round(time.Millisecond))
			return nil
		})
	}
	p.step("MinIO on the host bridge; its credentials as Secret cairn-s3", func() error {
		var err error
		if p.minio, err = harness.StartMinIOAt(filepath.Join(p.work, "minio"), node.HostIP); err != nil {
			return err
		}
		if _, err := p.kc.CoreV1().Namespaces().Create(p.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
			return err
		}
		_, err = p.kc.CoreV1().Secrets(namespace).Create(p.ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "cairn-s3", Namespace: namespace},
			StringData: map[string]string{"AWS_ACCESS_KEY_ID": harness.MinIOAccessKey, "AWS_SECRET_ACCESS_KEY": harness.MinIOSecretKey},
		}, metav1.CreateOptions{})
		return err
	})
	p.step("snapshot CRDs and snapshot-controller (a Deployment, from its image)", p.snapshotController)
	if kustomize {
		p.step("kubectl apply -k: deploy/kustomize/base + builtin-registrar Component + images; example classes", p.kustomizeInstall)
	} else {
		p.step("helm install cairn (image values, node.registrar=builtin, a MinIO BackupTarget)", p.helmInstall)
	}
	p.step("controller Deployment 2/2 and node DaemonSet 2/2 Ready", p.waitInstalled)
}

// buildProductImages runs `hack/images -product` into dir and returns the
// references it printed, by image name.
func buildProductImages(root, dir string) (map[string]string, error) {
	return buildProductImagesTagged(root, dir, podTag)
}

// buildProductImagesTagged is buildProductImages with the cairn image's
// tag.
func buildProductImagesTagged(root, dir, tag string) (map[string]string, error) {
	cmd := exec.Command("go", "run", "./hack/images", "-product", "-out", dir, "-registry", podRegistry, "-tag", tag)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go run ./hack/images -product: %v\n%s%s", err, out, stderr.String())
	}
	refs := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && strings.HasSuffix(f[0], ".tar") {
			refs[strings.TrimSuffix(f[0], ".tar")] = f[1]
			fmt.Printf("e2e    image %s\n", sc.Text())
		}
	}
	for _, n := range []string{"cairn", "csi-provisioner", "csi-resizer", "csi-snapshotter", "snapshot-controller"} {
		if refs[n] == "" {
			return nil, fmt.Errorf("hack/images -product printed no %s image:\n%s", n, out)
		}
	}
	return refs, nil
}

// repoTag splits an image reference into repository and tag.
func repoTag(ref string) (string, string) {
	i := strings.LastIndex(ref, ":")
	return ref[:i], ref[i+1:]
}

// snapshotController applies the snapshot CRDs and upstream's
// snapshot-controller RBAC and Deployment with the image built here.
func (p *podCluster) snapshotController() error {
	if err := p.snapshotCRDsAndRBAC(); err != nil {
		return err
	}
	dir := snapshotControllerDir(p.root)
	b, err := os.ReadFile(filepath.Join(dir, "setup-snapshot-controller.yaml"))
	if err != nil {
		return err
	}
	// Upstream's manifest names the registry.k8s.io image; use ours.
	var out []string
	found := false
	for _, l := range strings.Split(string(b), "\n") {
		if t := strings.TrimSpace(l); strings.HasPrefix(t, "image:") && strings.Contains(t, "snapshot-controller") {
			l = l[:strings.Index(l, "image:")] + "image: " + p.images["snapshot-controller"]
			found = true
		}
		out = append(out, l)
	}
	if !found {
		return errors.New("setup-snapshot-controller.yaml has no snapshot-controller image line")
	}
	if _, err := p.c.Apply(p.ctx, []byte(strings.Join(out, "\n"))); err != nil {
		return err
	}
	return p.eventually(3*time.Minute, func() error {
		d, err := p.kc.AppsV1().Deployments("kube-system").Get(p.ctx, "snapshot-controller", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas < 1 {
			return fmt.Errorf("snapshot-controller: %d ready replicas%s", d.Status.ReadyReplicas, p.podsState("kube-system", "app.kubernetes.io/name=snapshot-controller"))
		}
		return nil
	})
}

// helmInstall installs deploy/helm/cairn with the images built here, the
// in-process registrar, XFS volumes (online growth: the kernel refuses it
// for ext4 here) and the MinIO BackupTarget "default".
func (p *podCluster) helmInstall() error {
	set := []string{
		"node.registrar=builtin",
		"storageClass.fsType=xfs",
		"backupTargets[0].name=default",
		"backupTargets[0].url=" + p.minio.URL("e2e-pods"),
		"backupTargets[0].credentialsSecret=cairn-s3",
		"sidecars.provisioner.extraArgs={--capacity-poll-interval=5s}",
	}
	repo, tag := repoTag(p.images["cairn"])
	set = append(set, "image.repository="+repo, "image.tag="+tag)
	for value, img := range map[string]string{"provisioner": "csi-provisioner", "resizer": "csi-resizer", "snapshotter": "csi-snapshotter"} {
		repo, tag := repoTag(p.images[img])
		set = append(set, "sidecars."+value+".image.repository="+repo, "sidecars."+value+".image.tag="+tag)
	}
	var args []string
	for _, v := range set {
		args = append(args, "--set", v)
	}
	return p.helm("install", args...)
}

// kustomizeInstall applies an overlay of deploy/kustomize/base with the
// builtin-registrar Component and the images built here (kubectl apply
// -k), then the example StorageClass and VolumeSnapshotClasses.
func (p *podCluster) kustomizeInstall() error {
	overlay := filepath.Join(p.work, "overlay")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		return err
	}
	rel, err := filepath.Rel(overlay, filepath.Join(p.root, "deploy/kustomize"))
	if err != nil {
		return err
	}
	k := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [%s/base]\ncomponents: [%s/builtin-registrar]\nimages:\n", rel, rel)
	for upstream, img := range map[string]string{
		"ghcr.io/cairn-csi/cairn":                     "cairn",
		"registry.k8s.io/sig-storage/csi-provisioner": "csi-provisioner",
		"registry.k8s.io/sig-storage/csi-resizer":     "csi-resizer",
		"registry.k8s.io/sig-storage/csi-snapshotter": "csi-snapshotter",
	} {
		repo, tag := repoTag(p.images[img])
		k += fmt.Sprintf("  - name: %s\n    newName: %s\n    newTag: %s\n", upstream, repo, tag)
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		return err
	}
	fmt.Printf("e2e    overlay kustomization.yaml:\n%s", indent(k))
	// The Namespace exists already (the Secret of the MinIO step).
	if out, err := p.kubectl("apply", "--server-side", "-k", overlay); err != nil {
		return fmt.Errorf("kubectl apply -k: %v\n%s", err, out)
	}
	for _, f := range []string{"storageclass.yaml", "volumesnapshotclass-snap.yaml", "volumesnapshotclass-backup.yaml"} {
		if err := p.applyFile(filepath.Join(p.root, "deploy/examples", f)); err != nil {
			return err
		}
	}
	return nil
}

// waitInstalled waits until the controller Deployment has 2 ready
// replicas and the node DaemonSet a ready pod on each node, then prints
// the pods and their nodes.
func (p *podCluster) waitInstalled() error {
	err := p.eventually(5*time.Minute, func() error {
		d, err := p.kc.AppsV1().Deployments(namespace).Get(p.ctx, "cairn-controller", metav1.GetOptions{})
		if err != nil {
			return err
		}
		ds, err := p.kc.AppsV1().DaemonSets(namespace).Get(p.ctx, "cairn-node", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != 2 || ds.Status.DesiredNumberScheduled != 2 || ds.Status.NumberReady != 2 {
			return fmt.Errorf("controller %d/2 ready, node %d/%d ready%s", d.Status.ReadyReplicas, ds.Status.NumberReady,
				ds.Status.DesiredNumberScheduled, p.podsState(namespace, ""))
		}
		return nil
	})
	if err != nil {
		return err
	}
	out, _ := p.kubectl("get", "pods", "-A", "-o", "wide")
	fmt.Printf("e2e    kubectl get pods -A -o wide:\n%s", indent(out))
	return nil
}

// podsState describes the pods of a namespace that are not ready, for
// messages.
func (p *podCluster) podsState(ns, selector string) string {
	pods, err := p.kc.CoreV1().Pods(ns).List(p.ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return ""
	}
	var parts []string
	for _, pod := range pods.Items {
		for _, cs := range pod.Status.ContainerStatuses {
			switch {
			case cs.State.Waiting != nil:
				parts = append(parts, fmt.Sprintf("%s/%s waiting: %s %s", pod.Name, cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message))
			case cs.State.Terminated != nil:
				parts = append(parts, fmt.Sprintf("%s/%s terminated: %s", pod.Name, cs.Name, cs.State.Terminated.Reason))
			case !cs.Ready:
				parts = append(parts, fmt.Sprintf("%s/%s not ready (restarts %d)", pod.Name, cs.Name, cs.RestartCount))
			}
		}
		if pod.Status.Phase == corev1.PodPending && len(pod.Status.ContainerStatuses) == 0 {
			parts = append(parts, pod.Name+" pending"+p.lastEventIn(ns, "Pod", pod.Name))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, "; ") + ")"
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("e2e      " + l + "\n")
	}
	return b.String()
}

// podReads runs a pod on node with the PVC at /data and script, and
// checks that it succeeds and that its log holds each of wants.
func (p *podCluster) podReads(name, pvc, node, script string, wants ...string) error {
	if err := p.podSucceedsOn(name, pvc, node, script, false); err != nil {
		return err
	}
	out, err := p.kubectl("logs", "-n", appNS, name)
	if err != nil {
		return fmt.Errorf("logs of %s: %v %s", name, err, out)
	}
	for _, w := range wants {
		if !strings.Contains(out, w) {
			return fmt.Errorf("pod %s printed %q, want %q in it", name, out, w)
		}
	}
	pod, err := p.kc.CoreV1().Pods(appNS).Get(p.ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	fmt.Printf("e2e    pod %s ran on %s\n", name, pod.Spec.NodeName)
	return nil
}

// pvOnNode checks that the PVC's PV is pinned to node (its node affinity
// names the node's topology value).
func (p *podCluster) pvOnNode(pvc, node string) error {
	pv, err := p.pvOf(pvc)
	if err != nil {
		return err
	}
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return fmt.Errorf("PV %s has no node affinity", pv.Name)
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == topoKey && len(e.Values) == 1 && e.Values[0] == node {
				fmt.Printf("e2e    PV %s of %s is on %s\n", pv.Name, pvc, node)
				return nil
			}
		}
	}
	return fmt.Errorf("PV %s node affinity %+v, want %s=%s", pv.Name, pv.Spec.NodeAffinity.Required, topoKey, node)
}

// tooBigForNode checks that a pod pinned to node, with a claim larger
// than the node's data root, stays Pending because of storage capacity
// (the scheduler reads the provisioner's CSIStorageCapacity objects),
// and that no volume is made; then it deletes both.
func (p *podCluster) tooBigForNode(name, node string) error {
	if err := p.claim(name, storageClass, "100Gi", nil, false); err != nil {
		return err
	}
	if err := p.podOn(name, name, node, "true", false); err != nil {
		return err
	}
	err := p.eventually(time.Minute, func() error {
		pod, err := p.kc.CoreV1().Pods(appNS).Get(p.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.Spec.NodeName != "" {
			return backoffStop(fmt.Errorf("pod %s was scheduled to %s", name, pod.Spec.NodeName))
		}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && strings.Contains(c.Message, "enough free storage") {
				fmt.Printf("e2e    pod %s: %s\n", name, c.Message)
				return nil
			}
		}
		return fmt.Errorf("pod %s not refused for storage yet: %+v", name, pod.Status.Conditions)
	})
	if err != nil {
		return err
	}
	c, err := p.kc.CoreV1().PersistentVolumeClaims(appNS).Get(p.ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if c.Spec.VolumeName != "" {
		return fmt.Errorf("PVC %s got a volume %s", name, c.Spec.VolumeName)
	}
	if err := p.kc.CoreV1().Pods(appNS).Delete(p.ctx, name, metav1.DeleteOptions{}); err != nil {
		return err
	}
	return p.kc.CoreV1().PersistentVolumeClaims(appNS).Delete(p.ctx, name, metav1.DeleteOptions{})
}

// snapshotSized is snapshot for a volume of size bytes.
func (p *podCluster) snapshotSized(name, class, pvc string, size int64) error {
	if err := p.createSnapshot(name, class, pvc); err != nil {
		return err
	}
	return p.waitSnapshotReady(name, size)
}

// onlyPods prints every pod and checks that each process of Cairn or a
// sidecar on this machine runs in a pod (in the kubepods cgroup of a
// node), none on the host.
func (p *podCluster) onlyPods() error {
	out, err := p.kubectl("get", "pods", "-A", "-o", "wide")
	if err != nil {
		return fmt.Errorf("kubectl get pods -A: %v %s", err, out)
	}
	fmt.Printf("e2e    kubectl get pods -A -o wide:\n%s", indent(out))
	// /proc/PID/comm holds the first 15 bytes of the name.
	names := map[string]bool{}
	for _, n := range []string{"cairn", "csi-provisioner", "csi-resizer", "csi-snapshotter", "snapshot-controller"} {
		names[n[:min(len(n), 15)]] = true
	}
	ents, _ := os.ReadDir("/proc")
	seen := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || !names[strings.TrimSpace(string(comm))] {
			continue
		}
		cg, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if !strings.Contains(string(cg), "/kubepods") {
			return fmt.Errorf("process %s %s runs outside a pod (cgroups %q)", e.Name(), strings.TrimSpace(string(comm)), cg)
		}
		seen++
	}
	if seen == 0 {
		return errors.New("no Cairn or sidecar process found at all")
	}
	fmt.Printf("e2e    %d Cairn and sidecar processes, all in pods\n", seen)
	return nil
}

// dumpPodLogs prints the end of each Cairn pod's logs and of the nodes'
// kubelet logs.
func (p *podCluster) dumpPodLogs() {
	if p.c == nil {
		return
	}
	for _, ns := range []string{namespace, "kube-system"} {
		pods, err := p.kc.CoreV1().Pods(ns).List(p.ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for _, pod := range pods.Items {
			for _, c := range pod.Spec.Containers {
				out, _ := p.kubectl("logs", "-n", ns, pod.Name, "-c", c.Name, "--tail=40")
				p.t.Logf("--- %s/%s %s (%s):\n%s", ns, pod.Name, c.Name, pod.Spec.NodeName, out)
			}
		}
	}
	for _, k := range p.nodes {
		b, _ := os.ReadFile(filepath.Join(k.LogDir(), "kubelet.log"))
		if len(b) > 5000 {
			b = b[len(b)-5000:]
		}
		p.t.Logf("--- kubelet of %s:\n%s", k.NodeName(), b)
	}
}

// printLeader prints which controller pod holds the provisioner's lease
// (after node A's loss, node B's replica must have taken it over).
func (p *podCluster) printLeader() {
	l, err := p.kc.CoordinationV1().Leases(namespace).Get(p.ctx, "cairn-csi-dev", metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		fmt.Printf("e2e    csi-provisioner lease: %v\n", err)
		return
	}
	node := "?"
	if pod, err := p.kc.CoreV1().Pods(namespace).Get(p.ctx, *l.Spec.HolderIdentity, metav1.GetOptions{}); err == nil {
		node = pod.Spec.NodeName
	}
	fmt.Printf("e2e    csi-provisioner leader: %s on %s (lease transitions %d)\n", *l.Spec.HolderIdentity, node, ptrValue(l.Spec.LeaseTransitions))
}

func ptrValue[T any](v *T) T {
	var zero T
	if v == nil {
		return zero
	}
	return *v
}

// writerScript writes and fsyncs a file in a loop, counting rounds in
// /data/count; an I/O error ends it with "IOERR" (the pod then fails).
const writerScript = `i=0; while true; do dd if=/dev/urandom of=/data/f$((i % 4)) bs=64k count=4 conv=fsync 2>/dev/null || { echo IOERR; exit 1; }; i=$((i+1)); echo $i > /data/count; sleep 0.2; done`

// lifecycleFaults: the node pod deleted and an upgrade of the images
// while a pod writes, the leading controller deleted during a
// provisioning, and an uninstall and reinstall with volumes in use.
func (p *podCluster) lifecycleFaults(nodeA, nodeB, verify, sum string) {
	p.step("pod writer on node A writes to writer-pvc in a loop (fsync every round)", func() error {
		if err := p.claim("writer-pvc", storageClass, "1Gi", nil, false); err != nil {
			return err
		}
		if err := p.podOn("writer", "writer-pvc", nodeA, writerScript, false); err != nil {
			return err
		}
		_, err := p.writerProgress(0)
		return err
	})
	var before nodeUse
	p.step("delete node A's cairn-node pod: the DaemonSet restarts it, pod writer keeps writing, no restart", func() error {
		var err error
		if before, err = p.nodeUse(0); err != nil {
			return err
		}
		old, err := p.nodePod(nodeA)
		if err != nil {
			return err
		}
		if err := p.kc.CoreV1().Pods(namespace).Delete(p.ctx, old.Name, metav1.DeleteOptions{}); err != nil {
			return err
		}
		if err := p.eventually(3*time.Minute, func() error {
			n, err := p.nodePod(nodeA)
			if err != nil {
				return err
			}
			if n.UID == old.UID || !podReady(n) {
				return fmt.Errorf("no new ready cairn-node pod on %s yet%s", nodeA, p.podsState(namespace, ""))
			}
			fmt.Printf("e2e    %s replaced %s on %s\n", n.Name, old.Name, nodeA)
			return nil
		}); err != nil {
			return err
		}
		if _, err := p.writerProgress(3); err != nil {
			return err
		}
		out, err := p.kubectl("exec", "-n", appNS, "mysql", "--", "sh", "-c", verify)
		if err != nil {
			return fmt.Errorf("pod mysql after the node pod's restart: %v %s", err, out)
		}
		return p.sameUse(0, before)
	})
	p.step("helm upgrade to image tag e2e-2 while pod writer writes: no I/O error, no leaked loop device or mount", func() error {
		images := filepath.Join(p.work, "images-2")
		refs, err := buildProductImagesTagged(p.root, images, "e2e-2")
		if err != nil {
			return err
		}
		for _, k := range p.nodes {
			if out, err := k.Ctr(p.ctx, "images", "import", filepath.Join(images, "cairn.tar")); err != nil {
				return fmt.Errorf("import into %s: %v %s", k.NodeName(), err, out)
			}
		}
		repo, tag := repoTag(refs["cairn"])
		if err := p.helm("upgrade", "--reuse-values", "--set", "image.repository="+repo, "--set", "image.tag="+tag); err != nil {
			return err
		}
		if err := p.waitRolledOut(refs["cairn"]); err != nil {
			return err
		}
		if _, err := p.writerProgress(3); err != nil {
			return err
		}
		return p.sameUse(0, before)
	})
	p.step("delete pod writer: unpublish and unstage by the restarted node pod succeed, nothing of the volume left on node A", func() error {
		if err := p.deletePod("writer"); err != nil {
			return err
		}
		pv, err := p.pvOf("writer-pvc")
		if err != nil {
			return err
		}
		return p.eventually(time.Minute, func() error {
			u, err := p.nodeUse(0)
			if err != nil {
				return err
			}
			for _, l := range u.mounts {
				if strings.Contains(l, pv.Spec.CSI.VolumeHandle) || strings.Contains(l, pv.Name) {
					return fmt.Errorf("left on node A: %s", l)
				}
			}
			// Its loop device is gone: one fewer than while it was staged.
			if len(u.loops) != len(before.loops)-1 {
				return fmt.Errorf("node A has loop devices %v, had %v with writer-pvc staged", u.loops, before.loops)
			}
			return nil
		})
	})
	p.step("delete the leading controller pod right after a PVC's pod is created: the other replica provisions it", func() error {
		if err := p.claim("failover-pvc", storageClass, "1Gi", nil, false); err != nil {
			return err
		}
		if err := p.podOn("failover-user", "failover-pvc", nodeB, "echo provisioned > /data/f && cat /data/f", false); err != nil {
			return err
		}
		// The lease names a running pod once the leader of the upgraded
		// Deployment has renewed it.
		var leader string
		if err := p.eventually(time.Minute, func() error {
			leader = p.leader()
			if pod, err := p.kc.CoreV1().Pods(namespace).Get(p.ctx, leader, metav1.GetOptions{}); err != nil || !podReady(pod) {
				return fmt.Errorf("csi-provisioner lease holder %q is not a ready pod: %v", leader, err)
			}
			return nil
		}); err != nil {
			return err
		}
		if err := p.kc.CoreV1().Pods(namespace).Delete(p.ctx, leader, metav1.DeleteOptions{}); err != nil {
			return err
		}
		fmt.Printf("e2e    deleted leader %s\n", leader)
		if err := p.eventually(3*time.Minute, func() error {
			pod, err := p.kc.CoreV1().Pods(appNS).Get(p.ctx, "failover-user", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if pod.Status.Phase != corev1.PodSucceeded {
				return fmt.Errorf("pod failover-user is %s%s", pod.Status.Phase, p.podState("failover-user"))
			}
			return nil
		}); err != nil {
			return err
		}
		if l := p.leader(); l == leader || l == "" {
			return fmt.Errorf("leader after the deletion: %q", l)
		}
		p.printLeader()
		return p.waitInstalled()
	})
	p.step("helm uninstall while pod mysql runs, then install again: PVs and data kept, pods read them", func() error {
		pvs, err := p.kc.CoreV1().PersistentVolumes().List(p.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if err := p.helm("uninstall"); err != nil {
			return err
		}
		if err := p.noPods(namespace); err != nil {
			return err
		}
		after, err := p.kc.CoreV1().PersistentVolumes().List(p.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(after.Items) != len(pvs.Items) {
			return fmt.Errorf("%d PVs before helm uninstall, %d after", len(pvs.Items), len(after.Items))
		}
		if err := p.helmInstall(); err != nil {
			return err
		}
		if err := p.waitInstalled(); err != nil {
			return err
		}
		if out, err := p.kubectl("exec", "-n", appNS, "mysql", "--", "sh", "-c", verify); err != nil {
			return fmt.Errorf("pod mysql after the reinstall: %v %s", err, out)
		}
		return p.podReads("clone-after-reinstall", "mysql-clone-pvc", nodeA, verify, sum)
	})
}

// helm runs a helm command on the release (install and upgrade get the
// chart), with Helm's folders in the work folder.
func (p *podCluster) helm(verb string, args ...string) error {
	all := []string{verb, release}
	if verb == "install" || verb == "upgrade" {
		all = append(all, filepath.Join(p.root, "deploy/helm/cairn"))
	}
	all = append(append(all, "--namespace", namespace, "--kubeconfig", p.c.AdminKubeconfig()), args...)
	cmd := exec.CommandContext(p.ctx, filepath.Join(p.bins, "helm"), all...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(p.work, "helm-cache"),
		"HELM_CONFIG_HOME="+filepath.Join(p.work, "helm-config"), "HELM_DATA_HOME="+filepath.Join(p.work, "helm-data"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("helm %s: %v\n%s", strings.Join(all, " "), err, out)
	}
	return nil
}

// writerProgress waits until pod writer has written more than n more
// rounds than when called and is still running, never restarted.
func (p *podCluster) writerProgress(n int) (int, error) {
	count := func() (int, error) {
		out, err := p.kubectl("exec", "-n", appNS, "writer", "--", "cat", "/data/count")
		if err != nil {
			return 0, fmt.Errorf("%v %s%s", err, out, p.podState("writer"))
		}
		return strconv.Atoi(strings.TrimSpace(out))
	}
	var start, now int
	err := p.eventually(2*time.Minute, func() error {
		var err error
		start, err = count()
		return err
	})
	if err != nil {
		return 0, err
	}
	err = p.eventually(2*time.Minute, func() error {
		pod, err := p.kc.CoreV1().Pods(appNS).Get(p.ctx, "writer", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.Status.Phase != corev1.PodRunning || len(pod.Status.ContainerStatuses) == 0 || pod.Status.ContainerStatuses[0].RestartCount != 0 {
			out, _ := p.kubectl("logs", "-n", appNS, "writer")
			return backoffStop(fmt.Errorf("pod writer is %s (restarts?) %+v: %s", pod.Status.Phase, pod.Status.ContainerStatuses, out))
		}
		if now, err = count(); err != nil {
			return err
		}
		if now <= start+n {
			return fmt.Errorf("pod writer at round %d, want more than %d", now, start+n)
		}
		return nil
	})
	if err == nil {
		fmt.Printf("e2e    pod writer: round %d -> %d, still running\n", start, now)
	}
	return now, err
}

// nodeUse is what is mounted under the kubelet's root and which loop
// devices are attached to data-root files, inside a node's namespaces.
type nodeUse struct{ mounts, loops []string }

func (p *podCluster) nodeUse(i int) (nodeUse, error) {
	k := p.nodes[i]
	var u nodeUse
	out, err := k.Command(p.ctx, "findmnt", "-rn", "-o", "TARGET").CombinedOutput()
	if err != nil {
		return u, fmt.Errorf("findmnt on %s: %v %s", k.NodeName(), err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, k.RootDir()+"/") && (strings.Contains(l, "kubernetes.io~csi") || strings.Contains(l, "kubernetes.io/csi")) {
			u.mounts = append(u.mounts, l)
		}
	}
	// Loop devices of files on the node's data root file system (by
	// device number: the paths the kernel reports are relative to the
	// mount of the container that attached them).
	var st unix.Stat_t
	if err := unix.Stat(p.roots[i].Mount, &st); err != nil {
		return u, err
	}
	devs, err := loop.List()
	if err != nil {
		return u, err
	}
	for _, d := range devs {
		if d.Dev == uint64(st.Dev) {
			u.loops = append(u.loops, fmt.Sprintf("%s (inode %d)", d.Path, d.Inode))
		}
	}
	return u, nil
}

// sameUse checks that node i has the CSI mounts and loop devices it had
// (none leaked, none lost).
func (p *podCluster) sameUse(i int, before nodeUse) error {
	now, err := p.nodeUse(i)
	if err != nil {
		return err
	}
	if fmt.Sprint(now) != fmt.Sprint(before) {
		return fmt.Errorf("node %s: CSI mounts and loop devices before %v, now %v", p.nodes[i].NodeName(), before, now)
	}
	fmt.Printf("e2e    node %s: %d CSI mounts and %d loop devices, as before\n", p.nodes[i].NodeName(), len(now.mounts), len(now.loops))
	return nil
}

// nodePod is the running cairn-node pod on node.
func (p *podCluster) nodePod(node string) (*corev1.Pod, error) {
	pods, err := p.kc.CoreV1().Pods(namespace).List(p.ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=node", FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			return &pods.Items[i], nil
		}
	}
	return nil, fmt.Errorf("no cairn-node pod on %s", node)
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitRolledOut waits until every controller and node pod runs image ref
// and is ready.
func (p *podCluster) waitRolledOut(ref string) error {
	return p.eventually(5*time.Minute, func() error {
		pods, err := p.kc.CoreV1().Pods(namespace).List(p.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		n := 0
		for _, pod := range pods.Items {
			if pod.DeletionTimestamp != nil || pod.Spec.Containers[0].Image != ref || !podReady(&pod) {
				continue
			}
			n++
		}
		if n != 4 || len(pods.Items) != 4 {
			return fmt.Errorf("%d of %d pods ready with %s%s", n, len(pods.Items), ref, p.podsState(namespace, ""))
		}
		fmt.Printf("e2e    4 pods run %s\n", ref)
		return nil
	})
}

// leader is the pod holding the csi-provisioner's lease.
func (p *podCluster) leader() string {
	l, err := p.kc.CoordinationV1().Leases(namespace).Get(p.ctx, "cairn-csi-dev", metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// nothingLeft waits until every PV is gone, then checks that neither node
// has a CSI mount or a loop device of its data root, nor a volume or
// snapshot on it.
func (p *podCluster) nothingLeft() error {
	return p.eventually(3*time.Minute, func() error {
		pvs, err := p.kc.CoreV1().PersistentVolumes().List(p.ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pvs.Items) > 0 {
			return fmt.Errorf("%d PVs remain", len(pvs.Items))
		}
		for i, k := range p.nodes {
			u, err := p.nodeUse(i)
			if err != nil {
				return err
			}
			if len(u.mounts)+len(u.loops) > 0 {
				return fmt.Errorf("node %s: CSI mounts %v, loop devices %v", k.NodeName(), u.mounts, u.loops)
			}
			for _, d := range []string{"volumes", "snapshots"} {
				if ents, _ := os.ReadDir(filepath.Join(p.roots[i].Mount, d)); len(ents) > 0 {
					return fmt.Errorf("node %s: %d entries in %s of its data root", k.NodeName(), len(ents), d)
				}
			}
		}
		return nil
	})
}
