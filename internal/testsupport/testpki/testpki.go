// Package testpki makes the throwaway certificate authorities and
// certificates of the e2e test harnesses (test/e2e/cluster and
// test/e2e/node): ECDSA P-256 keys, valid from an hour ago for a year.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"time"
)

// CA is a self-signed certificate authority.
type CA struct {
	Cert *x509.Certificate
	DER  []byte // Cert, DER-encoded
	Key  crypto.Signer
	now  time.Time
}

// NewCA makes a CA named commonName (serial number 1) with key usage
// usage.
func NewCA(commonName string, usage x509.KeyUsage) (*CA, error) {
	now := time.Now()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              usage,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, DER: der, Key: key, now: now}, nil
}

// Issue makes a key and a certificate for it signed by ca, from tmpl with
// its serial number, validity (that of ca) and key usage set.
func (ca *CA) Issue(serial int64, tmpl *x509.Certificate, usage x509.KeyUsage) (der []byte, key crypto.Signer, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore, tmpl.NotAfter = ca.now.Add(-time.Hour), ca.now.Add(365*24*time.Hour)
	tmpl.KeyUsage = usage
	der, err = x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, k.Public(), ca.Key)
	return der, k, err
}

// PEMCert PEM-encodes a DER certificate.
func PEMCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// PEMKey PEM-encodes key as PKCS #8.
func PEMKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteCertKey writes a certificate (mode 0644) and its key (0600) as PEM.
func WriteCertKey(certPath, keyPath string, der []byte, key crypto.Signer) error {
	keyPEM, err := PEMKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certPath, PEMCert(der), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyPath, keyPEM, 0o600)
}

// ReadCA loads a CA written with WriteCertKey (certificate and PKCS #8
// key), to issue more certificates with it.
func ReadCA(certPath, keyPath string) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("testpki: %s or %s holds no PEM block", certPath, keyPath)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("testpki: %s: not a signing key", keyPath)
	}
	return &CA{Cert: cert, DER: cb.Bytes, Key: signer, now: time.Now()}, nil
}
