package agent

import (
	"os"
	"testing"

	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/cairn-csi/cairn/internal/testsupport/machinelock"
)

// TestMain keeps these tests, which mount file systems or attach loop
// devices, apart from a real node's run on this machine (see machinelock).
// controller-runtime logs (reconcile errors among them) go to klog.
func TestMain(m *testing.M) {
	ctrl.SetLogger(klog.NewKlogr())
	os.Exit(machinelock.Main(m))
}
