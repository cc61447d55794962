// Package metadatasvc prepares what the upstream csi-snapshot-metadata
// sidecar needs to serve Cairn's changed-block metadata (docs/CBT.md): a
// TLS server certificate for its Service, issued by a CA kept in a Secret,
// and the cluster-scoped SnapshotMetadataService object that tells backup
// applications where the service is, which CA to trust and which token
// audience to use. `cairn snapshot-metadata-setup` runs it as the
// controller pod's init container; every replica converges on the same
// Secret and object.
package metadatasvc

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ServiceGVK is the SnapshotMetadataService kind (cbt.storage.k8s.io,
// from external-snapshot-metadata v1.0.0's client module).
var ServiceGVK = schema.GroupVersionKind{Group: "cbt.storage.k8s.io", Version: "v1beta1", Kind: "SnapshotMetadataService"}

const (
	// Secret keys: the CA (certificate and key) and the server's.
	keyCACert = "ca.crt"
	keyCAKey  = "ca.key"
	keyCert   = corev1.TLSCertKey
	keyKey    = corev1.TLSPrivateKeyKey

	caLifetime     = 10 * 365 * 24 * time.Hour
	serverLifetime = 2 * 365 * 24 * time.Hour
	// renewBefore: a server certificate closer than this to its end is
	// issued again (from the same CA, so clients keep trusting it).
	renewBefore = 90 * 24 * time.Hour
)

// Config says what to prepare.
type Config struct {
	Client client.Client
	// Driver names the SnapshotMetadataService object (the CSI driver's name).
	Driver string
	// Namespace holds the Secret (and the Service).
	Namespace string
	// Secret is the name of the TLS Secret.
	Secret string
	// DNSNames are the names the server certificate is valid for; IP
	// addresses among them go into its IP SANs.
	DNSNames []string
	// Address is host:port where clients reach the sidecar (spec.address).
	Address string
	// Audience is the token audience clients must use (spec.audience).
	Audience string
	// CertDir receives tls.crt and tls.key for the sidecar.
	CertDir string
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Setup makes the Secret if it is missing (or its server certificate no
// longer fits DNSNames or ends within 90 days), writes the server key pair
// into CertDir, and creates or updates the SnapshotMetadataService.
func Setup(ctx context.Context, c Config) error {
	if c.Now == nil {
		c.Now = time.Now
	}
	switch {
	case c.Driver == "" || c.Namespace == "" || c.Secret == "" || c.Address == "" || c.Audience == "" || c.CertDir == "":
		return errors.New("snapshot metadata setup: driver, namespace, secret, address, audience and cert dir are required")
	case len(c.DNSNames) == 0:
		return errors.New("snapshot metadata setup: the server certificate needs at least one name")
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		return fmt.Errorf("address %q: want host:port: %w", c.Address, err)
	}
	sec, err := c.ensureSecret(ctx)
	if err != nil {
		return err
	}
	if err := writeFiles(c.CertDir, map[string][]byte{keyCert: sec.Data[keyCert], keyKey: sec.Data[keyKey]}); err != nil {
		return fmt.Errorf("write the sidecar's key pair: %w", err)
	}
	return c.ensureService(ctx, sec.Data[keyCACert])
}

// ensureSecret returns a Secret holding a usable CA and server key pair.
func (c Config) ensureSecret(ctx context.Context) (*corev1.Secret, error) {
	var sec corev1.Secret
	key := client.ObjectKey{Namespace: c.Namespace, Name: c.Secret}
	err := c.Client.Get(ctx, key, &sec)
	if apierrors.IsNotFound(err) {
		ca, caKey, cerr := newCA(c.Now())
		if cerr != nil {
			return nil, cerr
		}
		sec = corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: c.Namespace, Name: c.Secret}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{keyCACert: ca, keyCAKey: caKey}}
		if ierr := c.issue(&sec); ierr != nil {
			return nil, ierr
		}
		err = c.Client.Create(ctx, &sec)
		if err == nil {
			klog.InfoS("Created the snapshot metadata TLS Secret", "secret", klog.KObj(&sec), "names", c.DNSNames)
			return &sec, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create Secret %s: %w", key, err)
		}
		// Another replica was first: use its.
		sec = corev1.Secret{}
		err = c.Client.Get(ctx, key, &sec)
	}
	if err != nil {
		return nil, fmt.Errorf("read Secret %s: %w", key, err)
	}
	if why := c.unfit(&sec); why != "" {
		if _, err := parseCA(sec.Data); err != nil {
			return nil, fmt.Errorf("Secret %s: %v; delete it to start over (clients then need the new CA from the SnapshotMetadataService)", key, err)
		}
		if err := c.issue(&sec); err != nil {
			return nil, err
		}
		if err := c.Client.Update(ctx, &sec); err != nil {
			return nil, fmt.Errorf("renew the server certificate in Secret %s: %w", key, err)
		}
		klog.InfoS("Issued a new snapshot metadata server certificate", "secret", klog.KObj(&sec), "why", why)
	}
	return &sec, nil
}

// unfit says why the Secret's server certificate must be issued again
// ("" if it need not).
func (c Config) unfit(sec *corev1.Secret) string {
	ca, err := parseCA(sec.Data)
	if err != nil {
		return err.Error()
	}
	block, _ := pem.Decode(sec.Data[keyCert])
	if block == nil {
		return "no server certificate"
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "server certificate: " + err.Error()
	}
	if _, err := tls.X509KeyPair(sec.Data[keyCert], sec.Data[keyKey]); err != nil {
		return "server key pair: " + err.Error()
	}
	if err := cert.CheckSignatureFrom(ca.cert); err != nil {
		return "server certificate not issued by the Secret's CA"
	}
	if c.Now().Add(renewBefore).After(cert.NotAfter) {
		return fmt.Sprintf("server certificate ends %s", cert.NotAfter.Format(time.RFC3339))
	}
	dns, ips := splitNames(c.DNSNames)
	if !slices.Equal(cert.DNSNames, dns) || !slices.EqualFunc(cert.IPAddresses, ips, net.IP.Equal) {
		return fmt.Sprintf("server certificate names %v %v, want %v", cert.DNSNames, cert.IPAddresses, c.DNSNames)
	}
	return ""
}

// issue puts a fresh server key pair, signed by the Secret's CA, into sec.
func (c Config) issue(sec *corev1.Secret) error {
	ca, err := parseCA(sec.Data)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := c.Now()
	dns, ips := splitNames(c.DNSNames)
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: c.DNSNames[0]},
		DNSNames: dns, IPAddresses: ips,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(serverLifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	sec.Data[keyCert] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	sec.Data[keyKey] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	return nil
}

// ensureService creates or updates the SnapshotMetadataService object.
func (c Config) ensureService(ctx context.Context, caPEM []byte) error {
	spec := map[string]any{
		"address":  c.Address,
		"audience": c.Audience,
		"caCert":   base64.StdEncoding.EncodeToString(caPEM),
	}
	obj := &unstructured.Unstructured{}
	obj.SetGroupVersionKind(ServiceGVK)
	err := c.Client.Get(ctx, client.ObjectKey{Name: c.Driver}, obj)
	switch {
	case apierrors.IsNotFound(err):
		obj = &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
		obj.SetGroupVersionKind(ServiceGVK)
		obj.SetName(c.Driver)
		obj.SetLabels(map[string]string{"app.kubernetes.io/managed-by": "cairn"})
		if err := c.Client.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create SnapshotMetadataService %s: %w", c.Driver, err)
		}
		klog.InfoS("Created the SnapshotMetadataService", "name", c.Driver, "address", c.Address, "audience", c.Audience)
		return nil
	case err != nil:
		return fmt.Errorf("read SnapshotMetadataService %s (is the cbt.storage.k8s.io CRD installed?): %w", c.Driver, err)
	}
	if reflect.DeepEqual(obj.Object["spec"], spec) {
		return nil
	}
	obj.Object["spec"] = spec
	if err := c.Client.Update(ctx, obj); err != nil {
		return fmt.Errorf("update SnapshotMetadataService %s: %w", c.Driver, err)
	}
	klog.InfoS("Updated the SnapshotMetadataService", "name", c.Driver, "address", c.Address, "audience", c.Audience)
	return nil
}

type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "cairn snapshot metadata CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(caLifetime),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

func parseCA(data map[string][]byte) (*authority, error) {
	cb, _ := pem.Decode(data[keyCACert])
	kb, _ := pem.Decode(data[keyCAKey])
	if cb == nil || kb == nil {
		return nil, errors.New("no CA certificate and key (ca.crt, ca.key)")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !cert.IsCA || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("ca.crt is not a CA certificate for ca.key")
	}
	return &authority{cert: cert, key: key}, nil
}

func splitNames(names []string) (dns []string, ips []net.IP) {
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	return dns, ips
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

// writeFiles replaces each file of dir atomically (mode 0600); unchanged
// files are left alone, so the sidecar's certificate watcher sees only
// real changes.
func writeFiles(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, b := range files {
		p := filepath.Join(dir, name)
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, b) {
			continue
		}
		tmp, err := os.CreateTemp(dir, "."+name+".*")
		if err != nil {
			return err
		}
		_, err = tmp.Write(b)
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), p)
		}
		if err != nil {
			os.Remove(tmp.Name())
			return err
		}
	}
	return nil
}
