package proxy

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"golang.org/x/text/secure/precis"
)

// scramClient is the client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as
// PostgreSQL speaks it, with tls-server-end-point channel binding (RFC 5929)
// for SCRAM-SHA-256-PLUS. The proxy uses it only to authenticate to the
// upstream on a client's behalf (see session.authenticate).
type scramClient struct {
	password    []byte
	cbData      []byte // nil: no channel binding
	nonce       string
	firstBare   string
	authMessage string
	saltedPass  []byte
}

// maxSCRAMIterations refuses absurd iteration counts from a server.
const maxSCRAMIterations = 10_000_000

func newSCRAMClient(password string, cbData []byte, rnd io.Reader) (*scramClient, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	// PostgreSQL applies SASLprep to the password and uses it unchanged if
	// that fails; OpaqueString is SASLprep's successor profile.
	if p, err := precis.OpaqueString.String(password); err == nil {
		password = p
	}
	raw := make([]byte, 18)
	if _, err := io.ReadFull(rnd, raw); err != nil {
		return nil, err
	}
	c := &scramClient{password: []byte(password), cbData: cbData, nonce: base64.StdEncoding.EncodeToString(raw)}
	// PostgreSQL takes the user name from the startup packet and ignores
	// the SCRAM one, which libpq leaves empty too.
	c.firstBare = "n=,r=" + c.nonce
	return c, nil
}

func (c *scramClient) mechanism() string {
	if c.cbData != nil {
		return scramSHA256Plus
	}
	return scramSHA256
}

func (c *scramClient) gs2Header() string {
	if c.cbData != nil {
		return "p=tls-server-end-point,,"
	}
	return "n,,"
}

func (c *scramClient) clientFirst() []byte {
	return []byte(c.gs2Header() + c.firstBare)
}

// clientFinal answers the server-first-message.
func (c *scramClient) clientFinal(serverFirst []byte) ([]byte, error) {
	var nonce, salt string
	iters := 0
	for _, attr := range strings.Split(string(serverFirst), ",") {
		k, v, ok := strings.Cut(attr, "=")
		if !ok {
			return nil, errors.New("malformed server-first-message")
		}
		switch k {
		case "r":
			nonce = v
		case "s":
			salt = v
		case "i":
			n, err := strconv.Atoi(v)
			if err != nil {
				return nil, errors.New("malformed iteration count")
			}
			iters = n
		}
	}
	if !strings.HasPrefix(nonce, c.nonce) || len(nonce) == len(c.nonce) {
		return nil, errors.New("server nonce does not extend the client nonce")
	}
	if iters < 1 || iters > maxSCRAMIterations {
		return nil, fmt.Errorf("iteration count %d out of range", iters)
	}
	saltBytes, err := base64.StdEncoding.DecodeString(salt)
	if err != nil || len(saltBytes) == 0 {
		return nil, errors.New("malformed salt")
	}
	c.saltedPass, err = pbkdf2.Key(sha256.New, string(c.password), saltBytes, iters, sha256.Size)
	if err != nil {
		return nil, err
	}
	cbind := append([]byte(c.gs2Header()), c.cbData...)
	finalNoProof := "c=" + base64.StdEncoding.EncodeToString(cbind) + ",r=" + nonce
	c.authMessage = c.firstBare + "," + string(serverFirst) + "," + finalNoProof
	clientKey := hmacSHA256(c.saltedPass, []byte("Client Key"))
	storedKey := sha256.Sum256(clientKey)
	sig := hmacSHA256(storedKey[:], []byte(c.authMessage))
	proof := make([]byte, len(sig))
	for i := range sig {
		proof[i] = clientKey[i] ^ sig[i]
	}
	return []byte(finalNoProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// verifyServerFinal checks the server's signature, which proves the server
// knows the password's verifier.
func (c *scramClient) verifyServerFinal(serverFinal []byte) error {
	if !bytes.HasPrefix(serverFinal, []byte("v=")) {
		if bytes.HasPrefix(serverFinal, []byte("e=")) {
			return fmt.Errorf("server reported SCRAM error %q", serverFinal[2:])
		}
		return errors.New("malformed server-final-message")
	}
	got, err := base64.StdEncoding.DecodeString(string(serverFinal[2:]))
	if err != nil {
		return errors.New("malformed server signature")
	}
	serverKey := hmacSHA256(c.saltedPass, []byte("Server Key"))
	want := hmacSHA256(serverKey, []byte(c.authMessage))
	if !hmac.Equal(got, want) {
		return errors.New("server signature does not match")
	}
	return nil
}

func hmacSHA256(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

// tlsServerEndPoint returns the tls-server-end-point channel binding data
// of a TLS connection: the hash of the server's certificate, with SHA-256
// unless the certificate's signature uses a stronger hash (RFC 5929 §4.1).
func tlsServerEndPoint(conn net.Conn) ([]byte, error) {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return nil, errors.New("not a TLS connection")
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, errors.New("server sent no certificate")
	}
	cert := certs[0]
	var h crypto.Hash
	switch cert.SignatureAlgorithm {
	case x509.SHA384WithRSA, x509.ECDSAWithSHA384, x509.SHA384WithRSAPSS:
		h = crypto.SHA384
	case x509.SHA512WithRSA, x509.ECDSAWithSHA512, x509.SHA512WithRSAPSS:
		h = crypto.SHA512
	case x509.PureEd25519:
		return nil, errors.New("tls-server-end-point is undefined for Ed25519 certificates")
	default:
		h = crypto.SHA256
	}
	hh := h.New()
	hh.Write(cert.Raw)
	return hh.Sum(nil), nil
}
