package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

var passwordUsers = []string{pgtest.UserSCRAM, pgtest.UserMD5, pgtest.UserPassword}

func withPassword(pw string) func(*pgx.ConnConfig) {
	return func(c *pgx.ConnConfig) { c.Password = pw }
}

// wrongPasswordDSN replaces the password in a DSN built by dsnFor.
func wrongPasswordDSN(dsn string) string {
	return strings.Replace(dsn, ":"+pgtest.Password+"@", ":not-the-password@", 1)
}

// checkLogins connects as every user with the right password (must work,
// as that user, with the upstream leg encrypted as wantUpstreamTLS says) and
// with a wrong one (must fail with PostgreSQL's own 28P01, as directly).
func checkLogins(t *testing.T, p *proxyProc, wantUpstreamTLS bool) {
	t.Helper()
	ctx := ctxFor(t, 60*time.Second)
	for _, user := range append(passwordUsers, pgtest.UserTrust) {
		conn := connect(t, p.DSN(user, ""))
		var who string
		var ssl bool
		if err := conn.QueryRow(ctx, "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&who, &ssl); err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		if who != user || ssl != wantUpstreamTLS {
			t.Fatalf("%s: connected as %q, upstream TLS %v (want %v)", user, who, ssl, wantUpstreamTLS)
		}
		if user == pgtest.UserTrust {
			continue
		}
		_, err := tryConnect(t, p.DSN(user, ""), withPassword("not-the-password"))
		var got *pgconn.PgError
		if !errors.As(err, &got) || got.Code != "28P01" {
			t.Fatalf("%s with a wrong password: got %v, want SQLSTATE 28P01", user, err)
		}
		_, err = tryConnect(t, directDSN(user), withPassword("not-the-password"))
		var want *pgconn.PgError
		if !errors.As(err, &want) {
			t.Fatalf("%s direct with a wrong password: %v", user, err)
		}
		if got.Severity != want.Severity || got.Message != want.Message {
			t.Fatalf("%s wrong password: proxy says %s %q, PostgreSQL says %s %q", user, got.Severity, got.Message, want.Severity, want.Message)
		}
	}
}

// TestPasswordAuth logs in as each kind of user through the proxy with pgx
// and psql, with the right and a wrong password.
func TestPasswordAuth(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	t.Run("pgx", func(t *testing.T) { checkLogins(t, p, true) })
	t.Run("psql", func(t *testing.T) {
		ctx := ctxFor(t, 60*time.Second)
		for _, user := range passwordUsers {
			out, err := psql(t, ctx, p.DSN(user, ""), "-c", "SELECT current_user")
			if err != nil || strings.TrimSpace(out) != user {
				t.Fatalf("%s: %v\n%s", user, err, out)
			}
			out, err = psql(t, ctx, wrongPasswordDSN(p.DSN(user, "")), "-c", "SELECT current_user")
			if err == nil || !strings.Contains(out, `password authentication failed for user "`+user+`"`) {
				t.Fatalf("%s with a wrong password: want psql to fail with password authentication failed, got %v\n%s", user, err, out)
			}
		}
	})
}

// TestUpstreamTLSModes runs the login matrix with the upstream leg in
// disable, require and verify-ca modes (verify-full is TestPasswordAuth).
// With a plaintext upstream SCRAM is relayed message for message.
func TestUpstreamTLSModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"disable", "require", "verify-ca"} {
		t.Run(mode, func(t *testing.T) {
			p := startProxy(t, withUpstreamTLS(mode))
			checkLogins(t, p, mode != "disable")
		})
	}
}

// TestChannelBinding connects with libpq's channel_binding settings: prefer
// and disable must work; require must be refused with a message about
// channel binding, since the client's TLS channel ends at the proxy.
func TestChannelBinding(t *testing.T) {
	t.Parallel()
	for _, upstream := range []string{"verify-full", "disable"} {
		t.Run("upstream_"+upstream, func(t *testing.T) {
			p := startProxy(t, withUpstreamTLS(upstream))
			ctx := ctxFor(t, 60*time.Second)
			for _, cb := range []string{"prefer", "disable"} {
				out, err := psql(t, ctx, p.DSN(pgtest.UserSCRAM, "", "channel_binding="+cb), "-c", "SELECT current_user")
				if err != nil || strings.TrimSpace(out) != pgtest.UserSCRAM {
					t.Fatalf("channel_binding=%s: %v\n%s", cb, err, out)
				}
			}
			out, err := psql(t, ctx, p.DSN(pgtest.UserSCRAM, "", "channel_binding=require"), "-c", "SELECT current_user")
			if err == nil || !strings.Contains(out, "channel binding") {
				t.Fatalf("channel_binding=require: want a refusal that mentions channel binding, got %v\n%s", err, out)
			}
		})
	}
}

// TestPlaintextClientRefused connects without TLS (pgx and psql with
// sslmode=disable): refused with 28000, and logged with the peer address.
func TestPlaintextClientRefused(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	const msg = "pgcrypt-proxy requires TLS: this connection is not encrypted"

	rd := &recordingDialer{}
	_, err := tryConnect(t, p.DSN(pgtest.UserSCRAM, "", "sslmode=disable"), rd.apply)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "28000" || pe.Severity != "FATAL" || pe.Message != msg {
		t.Fatalf("pgx sslmode=disable: got %v, want FATAL 28000 %q", err, msg)
	}
	peer := rd.first().LocalAddr().String()
	e := p.waitLog(t, 5*time.Second, "refusing "+peer, func(e logEntry) bool {
		return e.str("peer") == peer && strings.HasPrefix(e.str("message"), "connection refused: ") &&
			strings.Contains(e.str("message"), "requires TLS")
	})
	if e.str("sqlstate") != "28000" || e.str("conn_id") == "" {
		t.Errorf("refusal log line lacks sqlstate 28000 or conn_id: %s", e.raw())
	}

	ctx := ctxFor(t, 30*time.Second)
	out, err := psql(t, ctx, p.DSN(pgtest.UserSCRAM, "", "sslmode=disable"), "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, msg) {
		t.Fatalf("psql sslmode=disable: want failure with %q, got %v\n%s", msg, err, out)
	}
	refusals := 0
	eventually(5*time.Second, func() bool {
		refusals = 0
		for _, e := range p.logs.entries() {
			if strings.HasPrefix(e.str("message"), "connection refused: ") && strings.HasPrefix(e.str("peer"), "127.0.0.1:") {
				refusals++
			}
		}
		return refusals >= 2
	})
	if refusals < 2 {
		t.Fatalf("want a refusal log line with the peer for pgx and for psql, found %d", refusals)
	}
}

// dialTLS opens a TCP connection to the proxy, sends SSLRequest and
// handshakes with cfg. It returns the raw TCP connection too.
func dialTLS(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, net.Conn, error) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := raw.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil { // SSLRequest
		t.Fatal(err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(raw, answer[:]); err != nil || answer[0] != 'S' {
		t.Fatalf("SSLRequest answered %q, %v", answer[0], err)
	}
	tc := tls.Client(raw, cfg)
	err = tc.HandshakeContext(ctxFor(t, 10*time.Second))
	_ = raw.SetDeadline(time.Time{})
	return tc, raw, err
}

func proxyRoots(t *testing.T) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(proxyCAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in " + proxyCAFile)
	}
	return pool
}

// TestTLS12ClientRefused offers the proxy at most TLS 1.2 after SSLRequest:
// the handshake fails and the proxy logs it with the peer address. The same
// code with TLS 1.3 succeeds, so the failure is the version.
func TestTLS12ClientRefused(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	cfg := &tls.Config{RootCAs: proxyRoots(t), ServerName: "localhost"}

	tc, _, err := dialTLS(t, p.Addr, cfg.Clone())
	if err != nil {
		t.Fatalf("TLS 1.3 control handshake failed: %v", err)
	}
	if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Fatalf("negotiated %s, want TLS 1.3", tls.VersionName(v))
	}
	tc.Close()

	old := cfg.Clone()
	old.MaxVersion = tls.VersionTLS12
	_, raw, err := dialTLS(t, p.Addr, old)
	if err == nil {
		t.Fatal("TLS 1.2 handshake succeeded; the proxy must require TLS 1.3")
	}
	t.Logf("TLS 1.2 client: %v", err)
	peer := raw.LocalAddr().String()
	e := p.waitLog(t, 5*time.Second, "about the TLS 1.2 handshake of "+peer, func(e logEntry) bool {
		return e.str("peer") == peer && e.str("message") == "connection closed during startup"
	})
	if !strings.Contains(e.str("error"), "handshake") || e.str("level") != "warn" {
		t.Fatalf("log line should be a warning naming the handshake failure: %s", e.raw())
	}
}

// TestUpstreamVerifyFullWrongCA points upstream verify-full at a CA that did
// not sign the server's certificate (and at a wrong server name): the client
// gets a clear 08006 error and the log names the certificate problem.
func TestUpstreamVerifyFullWrongCA(t *testing.T) {
	t.Parallel()
	const msg = "pgcrypt-proxy could not establish a secure connection to the database server"
	for _, tc := range []struct {
		name      string
		mut       cfgMutator
		wantCause string
	}{
		{"unknown_ca", func(c *proxyConfig) { c.Upstream.TLS.CAFile = proxyCAFile }, "certificate signed by unknown authority"},
		{"wrong_server_name", func(c *proxyConfig) { c.Upstream.TLS.ServerName = "db.invalid" }, "not db.invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, tc.mut)
			rd := &recordingDialer{}
			_, err := tryConnect(t, p.DSN(pgtest.UserSCRAM, ""), rd.apply)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "08006" || pe.Message != msg {
				t.Fatalf("got %v, want 08006 %q", err, msg)
			}
			peer := rd.first().LocalAddr().String()
			e := p.waitLog(t, 5*time.Second, "refusing "+peer, func(e logEntry) bool {
				return e.str("peer") == peer && strings.HasPrefix(e.str("message"), "connection refused: ")
			})
			if !strings.Contains(e.raw(), "x509") || !strings.Contains(e.raw(), tc.wantCause) {
				t.Fatalf("log line should name the certificate problem (%q): %s", tc.wantCause, e.raw())
			}
			out, err := psql(t, ctxFor(t, 30*time.Second), p.DSN(pgtest.UserSCRAM, ""), "-c", "SELECT 1")
			if err == nil || !strings.Contains(out, msg) {
				t.Fatalf("psql: want failure with %q, got %v\n%s", msg, err, out)
			}
		})
	}
}
