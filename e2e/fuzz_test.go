package e2e

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// FuzzProxyStartup sends arbitrary bytes as the first thing on a connection
// to the running binary (client TLS required, so most of them meet the
// startup path: length checks, SSLRequest, GSSENCRequest, CancelRequest,
// StartupMessage decoding, direct TLS). Whatever arrives, the proxy must
// close that connection within its startup timeout, keep serving a session
// opened before, and accept new TLS connections.
//
// Without -fuzz only the seeds run; with it, e.g.
//
//	go test ./e2e/ -run '^$' -fuzz FuzzProxyStartup -fuzztime 60s
func FuzzProxyStartup(f *testing.F) {
	be32 := func(parts ...uint32) []byte {
		var b []byte
		for _, p := range parts {
			b = binary.BigEndian.AppendUint32(b, p)
		}
		return b
	}
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": pgtest.UserTrust, "database": pgtest.Database}}).Encode(nil)
	f.Add([]byte{})
	f.Add(be32(8, 80877103))                                                                       // SSLRequest, then nothing
	f.Add(append(be32(8, 80877103), 0x16, 3, 1, 0, 5, 1, 2))                                       // SSLRequest, then a broken ClientHello
	f.Add(be32(8, 80877104))                                                                       // GSSENCRequest
	f.Add(be32(16, 80877102, 12345, 67890))                                                        // CancelRequest for nobody
	f.Add(be32(12, 80877102, 1))                                                                   // CancelRequest, too short
	f.Add(startup)                                                                                 // plaintext StartupMessage: refused, TLS required
	f.Add(startup[:len(startup)-5])                                                                // truncated
	f.Add(be32(1<<30, pgproto3.ProtocolVersionNumber))                                             // claims 1 GB
	f.Add(be32(0xffffffff, 0))                                                                     // negative length
	f.Add(be32(4))                                                                                 // shorter than a header
	f.Add(append(be32(16, 2<<16), []byte("user\x00x\x00")...))                                     // protocol 2.0
	f.Add(append(be32(14, pgproto3.ProtocolVersionNumber), []byte("user\x00x")...))                // unterminated
	f.Add(append(be32(17, pgproto3.ProtocolVersionNumber), []byte("user\x00\x00\x00\x00\x00")...)) // empty user
	f.Add([]byte{0x16, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3})                                          // direct TLS, truncated ClientHello

	p := startProxy(f, func(c *proxyConfig) { c.Limits.StartupTimeout = "3s" })
	healthy := connect(f, p.DSN(pgtest.UserSCRAM, ""))

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatalf("proxy no longer accepts: %v", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if len(data) > 0 {
			_, _ = c.Write(data) // the proxy may already have closed
		}
		_ = c.(*net.TCPConn).CloseWrite()
		_, err = io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open 10s after input %q (startup_timeout is 3s)", data)
		}

		var n int
		if err := healthy.QueryRow(ctxFor(t, 10*time.Second), "SELECT $1::int", len(data)).Scan(&n); err != nil || n != len(data) {
			t.Fatalf("established session broken after input %q: %d %v", data, n, err)
		}
		probe, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatalf("proxy no longer accepts after input %q: %v", data, err)
		}
		defer probe.Close()
		_ = probe.SetDeadline(time.Now().Add(5 * time.Second))
		var answer [1]byte
		if _, err := probe.Write(be32(8, 80877103)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(probe, answer[:]); err != nil || answer[0] != 'S' {
			t.Fatalf("after input %q, SSLRequest answered %q, %v", data, answer[0], err)
		}
	})
}
