// Command snapshot-metadata-lister is a backup application's view of
// changed-block tracking for Cairn's tests: it lists a VolumeSnapshot's
// allocated blocks, or the blocks changed since another one, through the
// csi-snapshot-metadata sidecar with upstream's client (pkg/iterator,
// which finds the SnapshotMetadataService, requests a token of its
// audience and verifies the CA). It prints the records as JSON.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/kubernetes-csi/external-snapshot-metadata/pkg/iterator"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file")
	namespace := flag.String("namespace", "default", "the VolumeSnapshots' namespace")
	snapshot := flag.String("snapshot", "", "the VolumeSnapshot to list")
	prev := flag.String("prev-snapshot", "", "list the blocks changed since this VolumeSnapshot")
	prevID := flag.String("prev-snapshot-id", "", "list the blocks changed since this CSI snapshot handle")
	start := flag.Int64("starting-offset", 0, "the first byte offset")
	max := flag.Int("max-results", 0, "ranges per record (0: the driver's choice)")
	saNS := flag.String("sa-namespace", "", "the ServiceAccount whose token is used: namespace")
	saName := flag.String("sa-name", "", "the ServiceAccount whose token is used: name")
	timeout := flag.Duration("timeout", time.Minute, "give up after this long")
	flag.Parse()
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fail(err)
	}
	clients, err := iterator.BuildClients(cfg)
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	err = iterator.GetSnapshotMetadata(ctx, iterator.Args{
		Clients: clients, Emitter: &iterator.JSONEmitter{Writer: os.Stdout},
		Namespace: *namespace, SnapshotName: *snapshot, PrevSnapshotName: *prev, PrevSnapshotID: *prevID,
		StartingOffset: *start, MaxResults: int32(*max), SANamespace: *saNS, SAName: *saName,
	})
	if err != nil {
		fail(err)
	}
	fmt.Println()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "snapshot-metadata-lister:", err)
	os.Exit(1)
}
