package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"
)

var (
	testCertOnce sync.Once
	testCert     tls.Certificate
)

func selfSignedTLS(t testing.TB) *tls.Config {
	testCertOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"localhost"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		testCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	})
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{testCert}}
}

// closedUpstream returns an address where nothing listens.
func closedUpstream(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func packet(code uint32, body ...byte) []byte {
	b := make([]byte, 8, 8+len(body))
	binary.BigEndian.PutUint32(b, uint32(8+len(body)))
	binary.BigEndian.PutUint32(b[4:], code)
	return append(b, body...)
}

// FuzzStartup feeds arbitrary bytes to a session's startup phase: whatever
// arrives, the session must end (no hang, no panic) and the server must
// keep no session behind.
func FuzzStartup(f *testing.F) {
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u", "database": "d"}}).Encode(nil)
	cancel, _ := (&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	f.Add(startup)
	f.Add(packet(sslRequestCode))
	f.Add(append(packet(gssEncRequestCode), startup...))
	f.Add(cancel)
	f.Add([]byte{0x40, 0, 0, 0, 0, 3, 0, 0})           // claims 1 GiB
	f.Add([]byte{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0})     // a TLS record start
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) // wrong protocol
	f.Add(startup[:len(startup)-3])                    // truncated
	f.Add(packet(pgproto3.ProtocolVersion30, 'u', 's', 'e', 'r', 0))

	srv, err := New(Config{
		Upstream:            closedUpstream(f),
		UpstreamDialTimeout: time.Second,
		ClientTLS:           selfSignedTLS(f),
		StartupTimeout:      2 * time.Second,
		Logger:              zerolog.Nop(),
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		client, proxyEnd := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			newSession(srv, 1, &pipeAddrConn{proxyEnd}).run(context.Background())
		}()
		go io.Copy(io.Discard, client)
		_ = client.SetWriteDeadline(time.Now().Add(3 * time.Second))
		_, _ = client.Write(in)
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("session did not end")
		}
	})
}

// pipeAddrConn gives a net.Pipe end a TCP-looking remote address.
type pipeAddrConn struct{ net.Conn }

func (pipeAddrConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// TestStartupRefusals checks what a client sees for inputs the startup
// phase refuses, over a real TCP listener.
func TestStartupRefusals(t *testing.T) {
	srv, err := New(Config{
		Upstream:          closedUpstream(t),
		ClientTLS:         selfSignedTLS(t),
		ClientTLSRequired: true,
		StartupTimeout:    5 * time.Second,
		Logger:            zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(ctx, ln)
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}()

	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u"}}).Encode(nil)
	for _, tc := range []struct {
		name string
		in   []byte
		code string // SQLSTATE of the ErrorResponse; "" means closed without one
	}{
		{"plaintext when TLS is required", startup, "28000"},
		{"unknown protocol version", packet(0x00020000), "0A000"},
		{"no user", packet(pgproto3.ProtocolVersion30, 0), "28000"},
		{"1 GiB startup packet", []byte{0x40, 0, 0, 0, 0, 3, 0, 0}, ""},
		{"garbage", []byte("\x00\x00\x00\x09garbage!!"), "0A000"},
		{"random bytes", []byte("\xde\xad\xbe\xef\x01\x02"), ""},
		{"truncated", startup[:len(startup)-4], ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(tc.in); err != nil {
				t.Fatal(err)
			}
			if tc.name == "truncated" {
				c.(*net.TCPConn).CloseWrite()
			}
			fe := pgproto3.NewFrontend(c, c)
			msg, err := fe.Receive()
			if tc.code == "" {
				if err == nil {
					t.Fatalf("got %T, want the connection closed", msg)
				}
				return
			}
			er, ok := msg.(*pgproto3.ErrorResponse)
			if err != nil || !ok {
				t.Fatalf("got %T, %v; want ErrorResponse %s", msg, err, tc.code)
			}
			if er.Code != tc.code || er.Severity != "FATAL" {
				t.Fatalf("got %s %s %q, want FATAL %s", er.Severity, er.Code, er.Message, tc.code)
			}
			if _, err := fe.Receive(); err == nil {
				t.Fatal("connection still open after a FATAL error")
			}
		})
	}

	// TLS 1.2 is refused at the handshake.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(packet(sslRequestCode))
	var answer [1]byte
	if _, err := io.ReadFull(c, answer[:]); err != nil || answer[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v", answer[0], err)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12})
	if err := tc.Handshake(); err == nil {
		t.Fatal("TLS 1.2 handshake succeeded")
	}
	if n := srv.ActiveSessions(); n > 1 {
		t.Logf("%d sessions still active", n)
	}
}
