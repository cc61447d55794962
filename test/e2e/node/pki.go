package node

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/cairn-csi/cairn/internal/testsupport/testpki"
)

// pki is the node's own credentials, under <WorkDir>/pki: a CA that
// signs the kubelet's serving certificate (for the node name) and the
// apiserver's client certificate for kubelets (user
// kube-apiserver-kubelet-client in group system:masters, so the kubelet's
// webhook authorizer lets it read logs and exec).
type pki struct {
	dir                   string
	caCert                string
	servingCert, servKey  string
	apiClientCert, apiKey string
	nodeName              string
}

func pkiPaths(workDir string) *pki {
	dir := filepath.Join(workDir, "pki")
	return &pki{
		dir:           dir,
		caCert:        filepath.Join(dir, "kubelet-ca.crt"),
		servingCert:   filepath.Join(dir, "kubelet.crt"),
		servKey:       filepath.Join(dir, "kubelet.key"),
		apiClientCert: filepath.Join(dir, "apiserver-kubelet-client.crt"),
		apiKey:        filepath.Join(dir, "apiserver-kubelet-client.key"),
	}
}

// ensurePKI writes the node's credentials unless they are there already
// for nodeName.
func ensurePKI(workDir, nodeName string) (*pki, error) {
	p := pkiPaths(workDir)
	p.nodeName = nodeName
	if p.valid() {
		return p, nil
	}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := testpki.NewCA("cairn-e2e-kubelet-ca", x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature)
	if err != nil {
		return nil, err
	}
	issue := func(serial int64, tmpl *x509.Certificate, certPath, keyPath string) error {
		der, key, err := ca.Issue(serial, tmpl, x509.KeyUsageDigitalSignature)
		if err != nil {
			return err
		}
		return testpki.WriteCertKey(certPath, keyPath, der, key)
	}
	if err := issue(2, &x509.Certificate{
		Subject:     pkix.Name{CommonName: nodeName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{nodeName, "localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}, p.servingCert, p.servKey); err != nil {
		return nil, err
	}
	if err := issue(3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, p.apiClientCert, p.apiKey); err != nil {
		return nil, err
	}
	// The CA last: its presence marks a complete set.
	return p, os.WriteFile(p.caCert, testpki.PEMCert(ca.DER), 0o644)
}

// valid reports whether a complete set for p.nodeName is on disk.
func (p *pki) valid() bool {
	for _, f := range []string{p.servKey, p.apiClientCert, p.apiKey} {
		if _, err := os.Stat(f); err != nil {
			return false
		}
	}
	cert, err := readCert(p.servingCert)
	if err != nil {
		return false
	}
	ca, err := readCert(p.caCert)
	if err != nil {
		return false
	}
	if cert.CheckSignatureFrom(ca) != nil || cert.VerifyHostname(p.nodeName) != nil {
		return false
	}
	return time.Now().Before(cert.NotAfter)
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// apiServerArgs are the kube-apiserver flags that let it reach this
// kubelet: its client certificate, the CA of the kubelet's serving
// certificate, and dialing the node by its name.
func (p *pki) apiServerArgs() []string {
	return []string{
		"--kubelet-client-certificate=" + p.apiClientCert,
		"--kubelet-client-key=" + p.apiKey,
		"--kubelet-certificate-authority=" + p.caCert,
		"--kubelet-preferred-address-types=Hostname",
	}
}

func (p *pki) String() string { return fmt.Sprintf("pki(%s)", p.dir) }
