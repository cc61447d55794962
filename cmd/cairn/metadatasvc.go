package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/cairn-csi/cairn/internal/control/metadatasvc"
	"github.com/cairn-csi/cairn/internal/csi"
	"github.com/cairn-csi/cairn/internal/kube"
)

// runMetadataSetup prepares the csi-snapshot-metadata sidecar's TLS and
// the SnapshotMetadataService object (the controller pod's init container
// when the chart's snapshotMetadata.enabled is true; docs/CBT.md).
func runMetadataSetup(args []string) error {
	fs := flag.NewFlagSet("snapshot-metadata-setup", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file (in-cluster configuration if empty)")
	namespace := fs.String("namespace", envOr("POD_NAMESPACE", "cairn-system"), "namespace of the Secret and the Service ($POD_NAMESPACE overrides the default when set)")
	service := fs.String("service", "cairn-snapshot-metadata", "the sidecar's Service; its DNS names go into the server certificate")
	port := fs.Int("port", 6443, "the Service's port, in the published address")
	clusterDomain := fs.String("cluster-domain", "cluster.local", "the cluster's DNS domain")
	secret := fs.String("secret", "cairn-snapshot-metadata-tls", "the Secret holding the CA and the server key pair")
	address := fs.String("address", "", "host:port published to clients (default SERVICE.NAMESPACE.svc:PORT)")
	extra := fs.String("extra-names", "", "more names or IP addresses for the server certificate, comma-separated")
	audience := fs.String("audience", "cairn-snapshot-metadata", "the token audience clients must use, published in the SnapshotMetadataService")
	certDir := fs.String("cert-dir", "/tls", "where tls.crt and tls.key are written for the sidecar")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	klogFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	svc := *service + "." + *namespace + ".svc"
	names := []string{svc, *service, *service + "." + *namespace, svc + "." + *clusterDomain}
	for _, n := range strings.Split(*extra, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	if *address == "" {
		*address = net.JoinHostPort(svc, fmt.Sprint(*port))
	}
	kf := kubeFlags{kubeconfig: *kubeconfig, qps: 5, burst: 10}
	cfg, err := kf.restConfig("snapshot-metadata-setup")
	if err != nil {
		return err
	}
	cl, err := client.New(cfg, client.Options{Scheme: kube.Scheme})
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	err = metadatasvc.Setup(ctx, metadatasvc.Config{
		Client: cl, Driver: csi.DriverName, Namespace: *namespace, Secret: *secret,
		DNSNames: names, Address: *address, Audience: *audience, CertDir: *certDir,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "snapshot metadata service %s ready at %s (audience %s)\n", csi.DriverName, *address, *audience)
	return nil
}
