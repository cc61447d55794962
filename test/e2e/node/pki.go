package node

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
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
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "cairn-e2e-kubelet-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	issue := func(serial int64, tmpl *x509.Certificate, certPath, keyPath string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(365*24*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		if err != nil {
			return err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
			return err
		}
		return os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
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
	return p, os.WriteFile(p.caCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
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
