package kube

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Transfer endpoints (docs/FORMAT.md#cross-node-copies): an agent serves
// over TLS with a self-signed certificate made at start-up and published
// as a pin (the certificate's SHA-256) in its StorageNode status; every
// client presents a certificate of its own.

// Identity is a self-signed certificate and its pin.
type Identity struct {
	Cert tls.Certificate
	Pin  string
}

// NewIdentity makes a fresh P-256 self-signed certificate named name,
// usable as server and client.
func NewIdentity(name string) (*Identity, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &Identity{Cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, Pin: PinOf(der)}, nil
}

// PinOf is the pin of a DER certificate: its SHA-256 in hex.
func PinOf(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// PeerPin is the pin of the certificate the other side presented ("" for
// none).
func PeerPin(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return ""
	}
	return PinOf(cs.PeerCertificates[0].Raw)
}

// PinnedClientTLS is the client configuration for node's transfer
// endpoint: it presents id's certificate and accepts only a server
// certificate whose pin is want (not a CA's certificate: the pin decides).
func PinnedClientTLS(id *Identity, node, want string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{id.Cert},
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if got := PeerPin(&cs); got != want {
				return fmt.Errorf("node %s's certificate has SHA-256 %s, its StorageNode publishes %s", node, got, want)
			}
			return nil
		},
	}
}

// IdleConn fails a read that waits longer than Timeout, so that a stream
// whose sender hangs fails instead of waiting forever.
type IdleConn struct {
	net.Conn
	Timeout time.Duration
}

func (c *IdleConn) Read(p []byte) (int, error) {
	c.SetReadDeadline(time.Now().Add(c.Timeout))
	return c.Conn.Read(p)
}
