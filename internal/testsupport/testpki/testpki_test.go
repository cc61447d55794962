package testpki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"path/filepath"
	"testing"
)

// A CA written and read back issues certificates that verify against the
// original.
func TestReadCAIssuesUnderTheSameCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("test-ca", x509.KeyUsageCertSign)
	if err != nil {
		t.Fatal(err)
	}
	crt, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := WriteCertKey(crt, key, ca.DER, ca.Key); err != nil {
		t.Fatal(err)
	}
	back, err := ReadCA(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	der, _, err := back.Issue(7, &x509.Certificate{Subject: pkix.Name{CommonName: "leaf"}, DNSNames: []string{"leaf"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, x509.KeyUsageDigitalSignature)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "leaf"}); err != nil {
		t.Fatalf("a certificate of the CA read back does not verify: %v", err)
	}
	if _, err := ReadCA(key, crt); err == nil {
		t.Fatal("ReadCA took a key for a certificate")
	}
}
