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

// pki is the nodes' credentials, under Config.PKIDir (shared by the
// nodes of one cluster): a CA that signs each kubelet's serving
// certificate (for its node name and addresses) and the apiserver's
// client certificate for kubelets (user kube-apiserver-kubelet-client in
// group system:masters, so the kubelet's webhook authorizer lets it read
// logs and exec).
type pki struct {
	dir                   string
	caCert, caKey         string
	servingCert, servKey  string
	apiClientCert, apiKey string
	nodeName              string
	ips                   []net.IP
}

func pkiPaths(dir, nodeName string) *pki {
	return &pki{
		dir:           dir,
		caCert:        filepath.Join(dir, "kubelet-ca.crt"),
		caKey:         filepath.Join(dir, "kubelet-ca.key"),
		servingCert:   filepath.Join(dir, "kubelet-"+nodeName+".crt"),
		servKey:       filepath.Join(dir, "kubelet-"+nodeName+".key"),
		apiClientCert: filepath.Join(dir, "apiserver-kubelet-client.crt"),
		apiKey:        filepath.Join(dir, "apiserver-kubelet-client.key"),
		nodeName:      nodeName,
	}
}

// ensurePKI writes what is missing of the CA, the apiserver's client
// certificate and nodeName's serving certificate (for nodeName,
// localhost, 127.0.0.1 and ips).
func ensurePKI(dir, nodeName string, ips []net.IP) (*pki, error) {
	p := pkiPaths(dir, nodeName)
	p.ips = ips
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	if !p.caValid() {
		ca, err := testpki.NewCA("cairn-e2e-kubelet-ca", x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature)
		if err != nil {
			return nil, err
		}
		if err := testpki.WriteCertKey(p.caCert, p.caKey, ca.DER, ca.Key); err != nil {
			return nil, err
		}
		der, key, err := ca.Issue(2, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, x509.KeyUsageDigitalSignature)
		if err != nil {
			return nil, err
		}
		// The client certificate last: it marks a complete CA.
		if err := testpki.WriteCertKey(p.apiClientCert, p.apiKey, der, key); err != nil {
			return nil, err
		}
	}
	if p.servingValid() {
		return p, nil
	}
	ca, err := testpki.ReadCA(p.caCert, p.caKey)
	if err != nil {
		return nil, err
	}
	der, key, err := ca.Issue(time.Now().UnixNano(), &x509.Certificate{
		Subject:     pkix.Name{CommonName: nodeName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{nodeName, "localhost"},
		IPAddresses: append([]net.IP{net.ParseIP("127.0.0.1")}, ips...),
	}, x509.KeyUsageDigitalSignature)
	if err != nil {
		return nil, err
	}
	return p, testpki.WriteCertKey(p.servingCert, p.servKey, der, key)
}

// caValid reports whether the CA and the apiserver's client certificate
// are on disk and current.
func (p *pki) caValid() bool {
	if _, err := os.Stat(p.caKey); err != nil {
		return false
	}
	if _, err := os.Stat(p.apiKey); err != nil {
		return false
	}
	return p.signed(p.apiClientCert) != nil
}

// servingValid reports whether the node's serving certificate is on disk,
// current, and names the node and its addresses.
func (p *pki) servingValid() bool {
	if _, err := os.Stat(p.servKey); err != nil {
		return false
	}
	cert := p.signed(p.servingCert)
	if cert == nil || cert.VerifyHostname(p.nodeName) != nil {
		return false
	}
	for _, ip := range p.ips {
		if cert.VerifyHostname(ip.String()) != nil {
			return false
		}
	}
	return true
}

// signed returns the certificate at path if the CA signed it and it is
// current, else nil.
func (p *pki) signed(path string) *x509.Certificate {
	cert, err := readCert(path)
	if err != nil {
		return nil
	}
	ca, err := readCert(p.caCert)
	if err != nil || cert.CheckSignatureFrom(ca) != nil || !time.Now().Before(cert.NotAfter) {
		return nil
	}
	return cert
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

// apiServerArgs are the kube-apiserver flags that let it reach the
// kubelets: its client certificate, the CA of the kubelets' serving
// certificates, and which node address to dial (addressType).
func (p *pki) apiServerArgs(addressType string) []string {
	return []string{
		"--kubelet-client-certificate=" + p.apiClientCert,
		"--kubelet-client-key=" + p.apiKey,
		"--kubelet-certificate-authority=" + p.caCert,
		"--kubelet-preferred-address-types=" + addressType,
	}
}

func (p *pki) String() string { return fmt.Sprintf("pki(%s)", p.dir) }
