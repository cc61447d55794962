// Command cairn is Cairn's single binary: the CSI driver in its modes and
// the command-line tools for people.
package main

import (
	"fmt"
	"os"
)

const usage = `cairn — node-local CSI storage for Kubernetes

Usage:
  cairn standalone --endpoint unix:///path/csi.sock --data-root DIR --node-id ID [flags]
      Serve CSI Identity, Controller and Node over the engine in one process.
  cairn controller [--endpoint unix:///csi/csi.sock] [--kubeconfig FILE] [flags]
      Kubernetes mode: the CSI controller for the sidecars, over Cairn's
      custom resources (never touches a disk).
  cairn node --node-id NODE [--data-root /var/lib/cairn] [flags]
      Kubernetes mode: the CSI node service for kubelet plus the node agent
      that carries out the controller's volumes and snapshots on this node.
  cairn snapshot-metadata-setup [--namespace NS] [--service NAME] [flags]
      Kubernetes mode: the csi-snapshot-metadata sidecar's TLS Secret and
      certificate files, and the SnapshotMetadataService object (docs/CBT.md).
  cairn backup list|show|verify|restore|delete|gc --target URL
      Inspect and maintain a backup store (run "cairn backup help").
  cairn ui [--kubeconfig FILE] [--context NAME] [--listen 127.0.0.1:8080]
      A web UI over your cluster's volumes, snapshots, backups and nodes,
      acting with your kubeconfig's identity (README, "Web UI").
  cairn version
      Print the version.

Named kubectl-cairn (a copy or symlink on PATH), the binary is kubectl's
plugin: kubectl cairn volumes|snapshots|backups|nodes|ui.

Run "cairn <command> -h" for a command's flags.
`

func main() {
	if isPlugin(os.Args[0]) {
		if err := runPlugin(os.Args[1:], os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "kubectl cairn: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "standalone":
		err = runStandalone(os.Args[2:])
	case "controller":
		err = runController(os.Args[2:])
	case "node":
		err = runNode(os.Args[2:])
	case "snapshot-metadata-setup":
		err = runMetadataSetup(os.Args[2:])
	case "backup":
		os.Exit(runBackupCLI(os.Args[2:]))
	case "ui":
		err = runUI(os.Args[2:])
	case "version", "--version":
		fmt.Println(version())
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "cairn: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cairn %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
