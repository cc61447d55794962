package agent

import (
	"os"
	"testing"

	"github.com/cairn-csi/cairn/internal/testsupport/machinelock"
)

// TestMain keeps these tests, which mount file systems or attach loop
// devices, apart from a real node's run on this machine (see machinelock).
func TestMain(m *testing.M) { os.Exit(machinelock.Main(m)) }
