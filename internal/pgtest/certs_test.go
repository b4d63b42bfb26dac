package pgtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestCA(t *testing.T) {
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	caCert := parseCert(t, ca.CertPEM)
	if !caCert.IsCA || caCert.Subject.CommonName != "test CA" || caCert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA=%v CN=%q usage=%v", caCert.IsCA, caCert.Subject.CommonName, caCert.KeyUsage)
	}
	if pub, ok := caCert.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", caCert.PublicKey)
	}

	certPEM, keyPEM, err := ca.Issue("localhost", "127.0.0.1", "::1", "db.internal")
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseCert(t, certPEM)
	if !slices.Equal(leaf.DNSNames, []string{"localhost", "db.internal"}) {
		t.Errorf("DNS SANs %v", leaf.DNSNames)
	}
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || !leaf.IPAddresses[1].Equal(net.IPv6loopback) {
		t.Errorf("IP SANs %v", leaf.IPAddresses)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	now := time.Now()
	if d := now.Sub(leaf.NotBefore); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("NotBefore %v is %v before now, want 1h", leaf.NotBefore, d)
	}
	if d := leaf.NotAfter.Sub(now); d < 9*365*24*time.Hour || d > 11*365*24*time.Hour {
		t.Errorf("NotAfter %v is %v after now, want about 10 years", leaf.NotAfter, d)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("certificate and key do not match: %v", err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("key PEM is not PKCS #8")
	}

	pool := ca.CertPool()
	for _, name := range []string{"localhost", "127.0.0.1", "::1", "db.internal"} {
		opts := x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if _, err := leaf.Verify(opts); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "example.com"}); err == nil {
		t.Error("leaf verified for a name it was not issued for")
	}
	other, err := NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: other.CertPool(), DNSName: "localhost"}); err == nil {
		t.Error("leaf verified under another CA")
	}
	if _, _, err := ca.Issue(); err == nil {
		t.Error("Issue with no names succeeded")
	}
}

// TestCAHandshake runs a TLS 1.3 handshake with an issued certificate, the
// way clients of the cluster and of the proxy verify it.
func TestCAHandshake(t *testing.T) {
	ca, err := NewCA("handshake CA")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, serverName := range []string{"localhost", "127.0.0.1"} {
		cConn, sConn := net.Pipe()
		// The pipe is unbuffered: no session tickets, and closing the raw
		// conns, not the TLS ones, so no write waits for a reader.
		server := tls.Server(sConn, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13,
			SessionTicketsDisabled: true})
		done := make(chan error, 1)
		go func() { done <- server.HandshakeContext(t.Context()); sConn.Close() }()
		client := tls.Client(cConn, &tls.Config{RootCAs: ca.CertPool(), ServerName: serverName})
		err := client.HandshakeContext(t.Context())
		cConn.Close()
		if err != nil {
			t.Errorf("%s: client handshake: %v", serverName, err)
		}
		if err := <-done; err != nil {
			t.Errorf("%s: server handshake: %v", serverName, err)
		}
	}
}

func TestCAWriteFiles(t *testing.T) {
	ca, err := NewCA("files CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// A stale world-readable key file must not keep its mode.
	if err := os.WriteFile(filepath.Join(dir, "srv.key"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.WriteLeaf(dir, "srv", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want string
		mode os.FileMode
	}{
		{certFile, filepath.Join(dir, "srv.crt"), 0o644},
		{keyFile, filepath.Join(dir, "srv.key"), 0o600},
		{caFile, filepath.Join(dir, "ca.pem"), 0o644},
	} {
		if tc.path != tc.want {
			t.Errorf("path %s, want %s", tc.path, tc.want)
		}
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.mode {
			t.Errorf("%s: mode %v, want %v", tc.path, fi.Mode().Perm(), tc.mode)
		}
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Error(err)
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(ca.CertPEM) {
		t.Error("ca.pem differs from CertPEM")
	}
}

func parseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", certPEM)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
