// Command demo is Cairn's quick start: it makes a loop-backed XFS data root
// under _out/demo, starts `cairn standalone` on it and runs the mysql-pvc
// walkthrough (create, mount, write, snapshot, restore, clone, expand),
// printing each step with its duration, then removes everything.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/cairn-csi/cairn/internal/testsupport/harness"
	"github.com/cairn-csi/cairn/internal/testsupport/scratchfs"
	"github.com/cairn-csi/cairn/internal/testsupport/walkthrough"
)

func main() {
	fsType := flag.String("data-root-fs", "xfs", "file system of the scratch data root: xfs (reflink) or ext4 (copy fallback)")
	flag.Parse()
	if err := run(*fsType); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run(fsType string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the demo needs root: it attaches loop devices and mounts file systems")
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		return err
	}
	work := filepath.Join(root, "_out", "demo")
	os.RemoveAll(filepath.Join(work, "mnt"))
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	fmt.Printf("cairn demo: %s data root (sparse 8Gi image) in %s\n", fsType, work)
	fs, err := scratchfs.Create(filepath.Join(work, "data-root.img"), filepath.Join(work, "data-root"), fsType, 8<<30)
	if err != nil {
		return err
	}
	defer fs.Close()
	bin, err := harness.Build(work)
	if err != nil {
		return err
	}
	d := &harness.Driver{Bin: bin, Socket: filepath.Join(work, "csi.sock"), DataRoot: fs.Mount, NodeID: "demo-node", Log: filepath.Join(work, "cairn.log")}
	os.Remove(d.Log)
	if err := d.Start(ctx); err != nil {
		return err
	}
	defer d.Close()
	fmt.Printf("cairn standalone running (log: %s)\n\n", d.Log)
	return walkthrough.Run(ctx, d, filepath.Join(work, "mnt"), os.Stdout)
}
