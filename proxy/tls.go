package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// ClientTLSConfig loads the proxy's certificate for the client leg. TLS 1.3
// is the minimum: older clients fail the handshake.
func ClientTLSConfig(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("client_tls: load certificate %s / key %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
	}, nil
}

// UpstreamTLSConfig builds the TLS configuration of the proxy→PostgreSQL
// leg for a libpq-style mode: "disable" (nil), "require" (encrypt, do not
// verify), "verify-ca" (chain to caFile) or "verify-full" (chain and host
// name). TLS 1.3 is the minimum in every mode.
func UpstreamTLSConfig(mode, caFile, serverName, host, certFile, keyFile string) (*tls.Config, error) {
	if mode == "disable" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.tls: load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	var pool *x509.CertPool
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("upstream.tls.ca_file: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream.tls.ca_file %s: no PEM certificates in it", caFile)
		}
	}
	if serverName == "" {
		serverName = host
	}
	switch mode {
	case "require":
		cfg.InsecureSkipVerify = true
	case "verify-full":
		cfg.RootCAs = pool
		cfg.ServerName = serverName
	case "verify-ca":
		// Verify the chain but not the host name, as libpq's verify-ca.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("upstream sent no certificate")
			}
			opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		}
	default:
		return nil, fmt.Errorf("upstream.tls.mode %q is not one of disable, require, verify-ca, verify-full", mode)
	}
	return cfg, nil
}
