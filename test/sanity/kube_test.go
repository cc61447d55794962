package sanity

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/cairn-csi/cairn/internal/kube"
	cairnv1 "github.com/cairn-csi/cairn/internal/kube/api/v1alpha1"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// startKubeMode starts a kube-apiserver and etcd (envtest, with the
// binaries hack/k8s-tools.sh builds) with Cairn's CRDs, then `cairn node`
// and `cairn controller` on their own sockets, and returns the node and
// controller endpoints once the node agent has reported in.
func startKubeMode(t *testing.T, bin, dir, dataRoot string) (nodeEndpoint, controllerEndpoint string) {
	t.Helper()
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bins := filepath.Join(root, ".tools/bin")
	if _, err := os.Stat(filepath.Join(bins, "kube-apiserver")); err != nil {
		if os.Getenv("CAIRN_E2E") == "1" {
			t.Fatal("kube-apiserver not built (make tools)")
		}
		t.Skip("kube-apiserver not built: run `make tools`")
	}
	tenv := &envtest.Environment{BinaryAssetsDirectory: bins, CRDDirectoryPaths: []string{filepath.Join(root, "deploy/crds")}, ErrorIfCRDPathMissing: true}
	cfg, err := tenv.Start()
	if err != nil {
		t.Fatalf("envtest: %v", err)
	}
	t.Cleanup(func() { tenv.Stop() })
	admin, err := tenv.AddUser(envtest.User{Name: "sanity-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	nodeSock, ctrlSock := filepath.Join(dir, "node.sock"), filepath.Join(dir, "controller.sock")
	start := func(name string, args ...string) {
		log := filepath.Join(dir, name+".log")
		f, err := os.Create(log)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = f, f
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			f.Close()
			if t.Failed() {
				b, _ := os.ReadFile(log)
				if len(b) > 20000 {
					b = b[len(b)-20000:]
				}
				t.Logf("%s log (tail):\n%s", name, b)
			}
		})
	}
	start("cairn-node", "node", "--kubeconfig="+kubeconfig, "--endpoint=unix://"+nodeSock, "--node-id=sanity-node",
		"--data-root="+dataRoot, "--namespace=cairn-system", "--heartbeat-interval=2s", "-v=3")
	start("cairn-controller", "controller", "--kubeconfig="+kubeconfig, "--endpoint=unix://"+ctrlSock, "-v=3")
	cl, err := client.New(cfg, client.Options{Scheme: kube.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		var sn cairnv1.StorageNode
		err := cl.Get(ctx, client.ObjectKey{Name: "sanity-node"}, &sn)
		if err == nil && sn.Status.AvailableBytes > 0 {
			_, err1 := os.Stat(nodeSock)
			_, err2 := os.Stat(ctrlSock)
			if err = errors.Join(err1, err2); err == nil {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatal(fmt.Errorf("Kubernetes mode not ready: %w", err))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return "unix://" + nodeSock, "unix://" + ctrlSock
}
