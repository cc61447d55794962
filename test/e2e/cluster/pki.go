package cluster

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"

	"github.com/cairn-csi/cairn/internal/testsupport/testpki"
)

// pki holds the files of the cluster's credentials, all under one folder.
type pki struct {
	caCert, caKey             string // CA for serving and client certificates
	servingCert, servKey      string // kube-apiserver's serving certificate
	saKey                     string // RSA key signing service account tokens
	caPEM                     []byte
	adminCertPEM, adminKeyPEM []byte // client certificate of user admin (system:masters)
}

// genPKI writes a CA, a serving certificate for the apiserver (127.0.0.1,
// localhost, the in-cluster names and extraIPs), an admin client certificate in
// group system:masters, and the service account signing key into dir.
func genPKI(dir string, extraIPs []net.IP) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{
		caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key"),
		servingCert: filepath.Join(dir, "apiserver.crt"), servKey: filepath.Join(dir, "apiserver.key"),
		saKey: filepath.Join(dir, "sa.key"),
	}
	ca, err := testpki.NewCA("cairn-e2e-ca", x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment)
	if err != nil {
		return nil, err
	}
	p.caPEM = testpki.PEMCert(ca.DER)
	if err := testpki.WriteCertKey(p.caCert, p.caKey, ca.DER, ca.Key); err != nil {
		return nil, err
	}

	const leafUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	servDER, servKey, err := ca.Issue(2, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")}, extraIPs...),
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
	}, leafUsage)
	if err != nil {
		return nil, err
	}
	if err := testpki.WriteCertKey(p.servingCert, p.servKey, servDER, servKey); err != nil {
		return nil, err
	}

	adminDER, adminKey, err := ca.Issue(3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, leafUsage)
	if err != nil {
		return nil, err
	}
	p.adminCertPEM = testpki.PEMCert(adminDER)
	if p.adminKeyPEM, err = testpki.PEMKey(adminKey); err != nil {
		return nil, err
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	saPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)})
	if err := os.WriteFile(p.saKey, saPEM, 0o600); err != nil {
		return nil, err
	}
	return p, nil
}
