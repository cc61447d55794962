package metadatasvc

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/cairn-csi/cairn/internal/kube"
	"github.com/cairn-csi/cairn/internal/testsupport/harness"
)

// crdDir is the SnapshotMetadataService CRD's folder in the module cache
// (hack/tools/snapshotmetadata requires the client module).
func crdDir(t *testing.T, root string) string {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/kubernetes-csi/external-snapshot-metadata/client")
	cmd.Dir = filepath.Join(root, "hack/tools/snapshotmetadata")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the external-snapshot-metadata client module: %v (make tools fetches it)", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "config/crd")
}

func TestSetup(t *testing.T) {
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bins := filepath.Join(root, ".tools/bin")
	if _, err := os.Stat(filepath.Join(bins, "kube-apiserver")); err != nil {
		t.Skip("kube-apiserver not built: run `make tools`")
	}
	tenv := &envtest.Environment{BinaryAssetsDirectory: bins, CRDDirectoryPaths: []string{crdDir(t, root)}, ErrorIfCRDPathMissing: true}
	cfg, err := tenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer tenv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := client.New(cfg, client.Options{Scheme: kube.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cairn"}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	now := time.Now()
	c := Config{Client: cl, Driver: "cairn.csi.dev", Namespace: "cairn", Secret: "cairn-snapshot-metadata-tls",
		DNSNames: []string{"cairn-snapshot-metadata.cairn.svc", "127.0.0.1"}, Address: "cairn-snapshot-metadata.cairn.svc:6443",
		Audience: "cairn-snapshot-metadata", CertDir: filepath.Join(dir, "tls"), Now: func() time.Time { return now }}

	// check verifies the written server certificate against the CA the
	// SnapshotMetadataService publishes, for every name, and returns its
	// serial number and the Secret's resource version.
	check := func(what string) (string, string) {
		t.Helper()
		var svc unstructured.Unstructured
		svc.SetGroupVersionKind(ServiceGVK)
		if err := cl.Get(ctx, client.ObjectKey{Name: c.Driver}, &svc); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		spec, _ := svc.Object["spec"].(map[string]any)
		if spec["address"] != c.Address || spec["audience"] != c.Audience {
			t.Fatalf("%s: spec %v", what, spec)
		}
		caPEM, err := base64.StdEncoding.DecodeString(spec["caCert"].(string))
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			t.Fatalf("%s: caCert is not PEM", what)
		}
		b, err := os.ReadFile(filepath.Join(c.CertDir, "tls.crt"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(c.CertDir, "tls.key")); err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range c.DNSNames {
			if _, err := cert.Verify(x509.VerifyOptions{DNSName: n, Roots: pool, CurrentTime: now}); err != nil {
				t.Errorf("%s: %s: %v", what, n, err)
			}
		}
		var sec corev1.Secret
		if err := cl.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: c.Secret}, &sec); err != nil {
			t.Fatal(err)
		}
		return cert.SerialNumber.String(), sec.ResourceVersion
	}

	if err := Setup(ctx, c); err != nil {
		t.Fatal(err)
	}
	serial, rv := check("first setup")
	// Again (a restart, a second replica): nothing changes.
	if err := Setup(ctx, c); err != nil {
		t.Fatal(err)
	}
	if s, r := check("second setup"); s != serial || r != rv {
		t.Errorf("a second setup changed the certificate (%s -> %s) or the Secret (%s -> %s)", serial, s, rv, r)
	}
	// A changed object is put back.
	var svc unstructured.Unstructured
	svc.SetGroupVersionKind(ServiceGVK)
	cl.Get(ctx, client.ObjectKey{Name: c.Driver}, &svc)
	unstructured.SetNestedField(svc.Object, "elsewhere:1", "spec", "address")
	if err := cl.Update(ctx, &svc); err != nil {
		t.Fatal(err)
	}
	// New names, then a certificate near its end: issued again.
	c.DNSNames = append(c.DNSNames, "cairn-snapshot-metadata.cairn.svc.cluster.local")
	if err := Setup(ctx, c); err != nil {
		t.Fatal(err)
	}
	s2, _ := check("new names")
	if s2 == serial {
		t.Error("new names kept the old certificate")
	}
	now = now.Add(serverLifetime - 30*24*time.Hour)
	if err := Setup(ctx, c); err != nil {
		t.Fatal(err)
	}
	if s3, _ := check("near its end"); s3 == s2 {
		t.Error("a certificate 30 days from its end was kept")
	}
	// A Secret without its CA: a clear error, nothing overwritten.
	var sec corev1.Secret
	cl.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: c.Secret}, &sec)
	delete(sec.Data, "ca.key")
	if err := cl.Update(ctx, &sec); err != nil {
		t.Fatal(err)
	}
	if err := Setup(ctx, c); err == nil || !strings.Contains(err.Error(), c.Secret) || !strings.Contains(err.Error(), "ca.key") {
		t.Errorf("a Secret without ca.key: %v", err)
	}
	// Losing the race to create the Secret: the other replica's is used.
	var raced corev1.Secret
	if err := cl.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: c.Secret}, &raced); err != nil {
		t.Fatal(err)
	}
	lost := c
	lost.Secret = "raced-tls"
	lost.CertDir = filepath.Join(dir, "raced")
	lost.Client = &raceClient{Client: cl, ctx: ctx, ns: c.Namespace, name: lost.Secret}
	if err := Setup(ctx, lost); err != nil {
		t.Fatalf("setup that lost the race to create the Secret: %v", err)
	}
	var theirs corev1.Secret
	if err := cl.Get(ctx, client.ObjectKey{Namespace: c.Namespace, Name: lost.Secret}, &theirs); err != nil {
		t.Fatal(err)
	}
	if mine, _ := os.ReadFile(filepath.Join(lost.CertDir, "tls.crt")); string(mine) != string(theirs.Data["tls.crt"]) {
		t.Error("the losing replica wrote its own certificate, not the Secret's")
	}
	// Refused configurations.
	bad := c
	bad.Address = "no-port"
	if err := Setup(ctx, bad); err == nil || !strings.Contains(err.Error(), "address") {
		t.Errorf("address without port: %v", err)
	}
}

// raceClient answers the first Get of one Secret NotFound after another
// "replica" has created it, as a create race looks to the loser.
type raceClient struct {
	client.Client
	ctx      context.Context
	ns, name string
	done     bool
}

func (r *raceClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if key.Name == r.name && !r.done {
		r.done = true
		other := Config{Client: r.Client, Driver: "cairn.csi.dev", Namespace: r.ns, Secret: r.name, DNSNames: []string{"other"},
			Address: "x:1", Audience: "a", CertDir: "/nonexistent", Now: time.Now}
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: r.ns, Name: r.name}, Data: map[string][]byte{}}
		ca, key, err := newCA(time.Now())
		if err != nil {
			return err
		}
		sec.Data["ca.crt"], sec.Data["ca.key"] = ca, key
		if err := other.issue(sec); err != nil {
			return err
		}
		if err := r.Client.Create(r.ctx, sec); err != nil {
			return err
		}
		return apierrors.NewNotFound(corev1.Resource("secrets"), r.name)
	}
	return r.Client.Get(ctx, key, obj, opts...)
}
