package e2e

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// load is a proxied session running queries in a loop, checking every
// answer, until stop.
type load struct {
	ok     atomic.Int64
	cancel context.CancelFunc
	done   chan struct{}
	err    error // first failure; valid after done is closed
}

// healthyLoad starts a load on its own proxied session.
func healthyLoad(t *testing.T, dsn string) *load {
	t.Helper()
	conn := connect(t, dsn)
	ctx, cancel := context.WithCancel(t.Context())
	l := &load{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for i := 0; ctx.Err() == nil; i++ {
			var n int
			err := conn.QueryRow(context.WithoutCancel(ctx), "SELECT $1::int FROM pg_sleep(0.02)", i).Scan(&n)
			if err == nil && n != i {
				err = fmt.Errorf("query %d answered %d", i, n)
			}
			if err != nil {
				l.err = err
				return
			}
			l.ok.Add(1)
		}
	}()
	return l
}

// count returns how many queries succeeded so far.
func (l *load) count() int { return int(l.ok.Load()) }

// stop ends the loop and returns the number of queries and the first error.
func (l *load) stop() (int, error) {
	l.cancel()
	<-l.done
	return l.count(), l.err
}

// activeQueries counts active backends of application app running a query
// that contains like.
func activeQueries(t *testing.T, admin *pgx.Conn, app, like string) int {
	t.Helper()
	var n int
	err := admin.QueryRow(ctxFor(t, 10*time.Second),
		"SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE $2",
		app, "%"+like+"%").Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// eventually polls cond every 20ms for up to d.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClientDisconnectMidQuery kills a client's TCP connection while its
// query runs: other sessions are not disturbed, and the proxy cancels the
// orphaned query upstream (PostgreSQL would otherwise sleep on for 30s; it
// does not notice a dead client while it runs a query).
func TestClientDisconnectMidQuery(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	admin := connect(t, directDSN(pgtest.SuperUser))
	var loads []*load
	for i := 0; i < 3; i++ {
		loads = append(loads, healthyLoad(t, p.DSN(pgtest.UserSCRAM, "")))
	}

	// The victim is a raw protocol session: pgx would send a
	// CancelRequest itself when its socket breaks, hiding what the proxy
	// does.
	app := uniqueName("e2e_victim")
	tc, raw := startTLSSession(t, p, "application_name", app)
	write(t, tc, mustEncode(t, &pgproto3.Query{String: "SELECT pg_sleep(30)"}))
	if !eventually(10*time.Second, func() bool { return activeQueries(t, admin, app, "pg_sleep(30)") == 1 }) {
		t.Fatal("the victim's pg_sleep(30) never showed up in pg_stat_activity")
	}
	before := make([]int, len(loads))
	for i, l := range loads {
		before[i] = l.count()
	}
	killed := time.Now()
	raw.Close() // the TCP connection under TLS: the client vanishes
	if !eventually(5*time.Second, func() bool { return activeQueries(t, admin, app, "pg_sleep(30)") == 0 }) {
		t.Fatalf("pg_sleep(30) of the vanished client still runs %v later: the proxy did not cancel it", time.Since(killed))
	}
	t.Logf("orphaned query gone %v after the client vanished", time.Since(killed).Round(time.Millisecond))
	peer := raw.LocalAddr().String()
	p.waitLog(t, 5*time.Second, "cancel request forwarded by the session of "+peer, func(e logEntry) bool {
		return e.str("peer") == peer && e.str("message") == "cancel request forwarded"
	})
	// The other sessions go on: each completes more queries after the kill.
	if !eventually(10*time.Second, func() bool {
		for i, l := range loads {
			if l.count() < before[i]+10 {
				return false
			}
		}
		return true
	}) {
		t.Errorf("healthy sessions stalled after the kill")
	}

	for i, l := range loads {
		if n, err := l.stop(); err != nil {
			t.Errorf("healthy session %d failed after %d queries: %v", i, n, err)
		}
	}
}

func mustEncode(t *testing.T, msg pgproto3.FrontendMessage) []byte {
	t.Helper()
	b, err := msg.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// startTLSSession opens a raw TLS session through the proxy as the trust
// user (params: more startup parameters, name then value) and reads up to
// the first ReadyForQuery, for tests that then send
// bytes no client library would.
func startTLSSession(t *testing.T, p *proxyProc, params ...string) (*tls.Conn, net.Conn) {
	t.Helper()
	tc, raw, err := dialTLS(t, p.Addr, &tls.Config{RootCAs: proxyRoots(t), ServerName: "localhost", MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(tc, tc)
	sm := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": pgtest.UserTrust, "database": pgtest.Database}}
	for i := 0; i+1 < len(params); i += 2 {
		sm.Parameters[params[i]] = params[i+1]
	}
	fe.Send(sm)
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("startup: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			_ = tc.SetDeadline(time.Time{})
			return tc, raw
		case *pgproto3.ErrorResponse:
			t.Fatalf("startup: %s %s", m.Code, m.Message)
		}
	}
}

// expectClosed reads from c until the proxy closes it (EOF or reset); a
// connection still open after 5s fails the test. It returns what was read.
func expectClosed(t *testing.T, c net.Conn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	data, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open 5s later (read %q)", data)
	}
	if err != nil && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, net.ErrClosed) {
		t.Logf("connection ended with %v", err)
	}
	return data
}

// TestBadInput sends malformed input, each on its own connection, while a
// healthy session runs queries: each bad connection is closed with a logged
// reason, the healthy session is undisturbed and the proxy keeps accepting.
func TestBadInput(t *testing.T) {
	t.Parallel()
	p := startProxy(t, func(c *proxyConfig) { c.Limits.StartupTimeout = "5s" })
	healthy := healthyLoad(t, p.DSN(pgtest.UserSCRAM, ""))
	rnd := rand.New(rand.NewPCG(1, 2))
	garbage := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.IntN(256))
		}
		if b[0] == 0x16 { // keep it from looking like a TLS ClientHello
			b[0] = 0x17
		}
		return b
	}
	be32 := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	plain := func(t *testing.T) (net.Conn, net.Conn) {
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, c
	}
	closeWrite := func(t *testing.T, c net.Conn) {
		var err error
		switch c := c.(type) {
		case *tls.Conn:
			err = c.CloseWrite()
		case *net.TCPConn:
			err = c.CloseWrite()
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	cases := []struct {
		name string
		// open returns the connection to write to and the TCP connection
		// underneath (whose local address is the proxy's "peer").
		open func(t *testing.T) (net.Conn, net.Conn)
		send func(t *testing.T, c net.Conn)
		// wantLog must appear in the log lines with this peer.
		wantLog string
		// wantReply, when set, must be in what the proxy sent back.
		wantReply string
	}{
		{
			name:    "startup packet claiming 1 GB",
			open:    plain,
			send:    func(t *testing.T, c net.Conn) { write(t, c, be32(1<<30), be32(pgproto3.ProtocolVersionNumber)) },
			wantLog: "invalid startup packet length 1073741824",
		},
		{
			name: "garbage instead of a startup packet",
			open: plain,
			send: func(t *testing.T, c net.Conn) { write(t, c, garbage(64<<10)) },
			// The first four random bytes are a length far over the limit.
			wantLog: "invalid startup packet length",
		},
		{
			name: "plausible length then garbage",
			open: plain,
			send: func(t *testing.T, c net.Conn) { write(t, c, be32(64), garbage(60)) },
			// An unknown protocol code: PostgreSQL answers 0A000 too.
			wantLog:   "unsupported frontend protocol",
			wantReply: "unsupported frontend protocol",
		},
		{
			name: "truncated startup packet",
			open: plain,
			send: func(t *testing.T, c net.Conn) {
				write(t, c, be32(200), be32(pgproto3.ProtocolVersionNumber), []byte("user\x00trust_"))
				closeWrite(t, c)
			},
			wantLog: "truncated startup packet",
		},
		{
			name: "garbage after the TLS handshake",
			open: func(t *testing.T) (net.Conn, net.Conn) {
				tc, raw, err := dialTLS(t, p.Addr, &tls.Config{RootCAs: proxyRoots(t), ServerName: "localhost"})
				if err != nil {
					t.Fatal(err)
				}
				return tc, raw
			},
			send:    func(t *testing.T, c net.Conn) { write(t, c, garbage(4096)) },
			wantLog: "invalid startup packet length",
		},
		{
			name:    "message claiming 2 GB after authentication",
			open:    func(t *testing.T) (net.Conn, net.Conn) { return startTLSSession(t, p) },
			send:    func(t *testing.T, c net.Conn) { write(t, c, []byte{'Q'}, be32(0x7fffffff), []byte("SELECT 1")) },
			wantLog: "over the",
		},
		{
			name: "unknown message type after authentication",
			open: func(t *testing.T) (net.Conn, net.Conn) { return startTLSSession(t, p) },
			send: func(t *testing.T, c net.Conn) { write(t, c, []byte{'!'}, be32(8), garbage(4)) },
			// PostgreSQL's own FATAL error reaches the client, and the
			// server closes its end: so must the proxy (see
			// TestServerClosesSession).
			wantLog:   "session closed",
			wantReply: "invalid frontend message type 33",
		},
		{
			name: "truncated message after authentication",
			open: func(t *testing.T) (net.Conn, net.Conn) { return startTLSSession(t, p) },
			send: func(t *testing.T, c net.Conn) {
				write(t, c, []byte{'Q'}, be32(100), []byte("SELECT 1"))
				closeWrite(t, c)
			},
			// The client hung up inside a message: the log must say so,
			// not report an ordinary close (PostgreSQL logs "unexpected
			// EOF within message" for the same input).
			wantLog: "unexpected EOF",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, raw := tc.open(t)
			peer := raw.LocalAddr().String()
			tc.send(t, c)
			reply := expectClosed(t, c)
			if tc.wantReply != "" && !strings.Contains(string(reply), tc.wantReply) {
				t.Errorf("reply %q does not contain %q", reply, tc.wantReply)
			}
			// Wait for the session's last word, then check its lines.
			deadline := time.Now().Add(5 * time.Second)
			var all string
			for {
				var lines []string
				for _, e := range p.peerEntries(peer) {
					lines = append(lines, e.raw())
				}
				all = strings.Join(lines, "\n")
				if strings.Contains(all, tc.wantLog) || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if !strings.Contains(all, tc.wantLog) {
				t.Errorf("log lines of peer %s do not contain %q:\n%s", peer, tc.wantLog, all)
			}
		})
	}

	n, err := healthy.stop()
	if err != nil || n == 0 {
		t.Fatalf("healthy session during bad input: %d queries, %v", n, err)
	}
	// Still serving new connections.
	conn := connect(t, p.DSN(pgtest.UserSCRAM, ""))
	var v int
	if err := conn.QueryRow(ctxFor(t, 10*time.Second), "SELECT 5").Scan(&v); err != nil || v != 5 {
		t.Fatalf("new connection after bad input: %d %v", v, err)
	}
}

// TestServerClosesSession terminates the backend of an idle proxied session
// (pg_terminate_backend, as an administrator or idle_session_timeout would):
// the client gets PostgreSQL's FATAL 57P01 and then its connection must be
// closed, as PostgreSQL closes it, so that the client notices.
func TestServerClosesSession(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	admin := connect(t, directDSN(pgtest.SuperUser))
	terminate := func(t *testing.T, app string) {
		var ok bool
		if err := admin.QueryRow(ctxFor(t, 10*time.Second),
			"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app).Scan(&ok); err != nil || !ok {
			t.Fatalf("pg_terminate_backend: %v %v", ok, err)
		}
	}

	t.Run("idle raw session", func(t *testing.T) {
		app := uniqueName("e2e_terminated")
		tc, raw := startTLSSession(t, p, "application_name", app)
		terminate(t, app)
		reply := expectClosed(t, tc)
		if !strings.Contains(string(reply), "C57P01") {
			t.Errorf("client did not receive PostgreSQL's 57P01: %q", reply)
		}
		peer := raw.LocalAddr().String()
		p.waitLog(t, 5*time.Second, "closing the session of "+peer, func(e logEntry) bool {
			return e.str("peer") == peer && e.str("message") == "session closed"
		})
	})

	t.Run("psql mid-query", func(t *testing.T) {
		// libpq waits for ReadyForQuery or EOF after an error: if the proxy
		// keeps the client's socket open, psql hangs.
		app := uniqueName("e2e_terminated_psql")
		ctx := ctxFor(t, 30*time.Second)
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		qctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		go func() {
			out, err := psql(t, qctx, p.DSN(pgtest.UserSCRAM, "", "application_name="+app), "-c", "SELECT pg_sleep(30)")
			done <- result{out, err}
		}()
		if !eventually(10*time.Second, func() bool { return activeQueries(t, admin, app, "pg_sleep(30)") == 1 }) {
			t.Fatal("psql's query never became active")
		}
		terminate(t, app)
		began := time.Now()
		select {
		case r := <-done:
			if r.err == nil || !strings.Contains(r.out, "terminating connection due to administrator command") {
				t.Fatalf("psql: want the 57P01 error, got %v\n%s", r.err, r.out)
			}
			t.Logf("psql exited %v after its backend was terminated", time.Since(began).Round(time.Millisecond))
		case <-time.After(5 * time.Second):
			t.Fatal("psql still running 5s after its backend was terminated: the proxy kept the client connection open")
		}
	})
}

// TestUpstreamRestart stops the database server under the proxy: sessions
// end with an error instead of hanging, new connections get 08006 while it
// is down, and everything works again once it is back.
func TestUpstreamRestart(t *testing.T) {
	t.Parallel()
	c := pgtest.New(t, pgtest.Options{})
	p := startProxy(t, withCluster(c))
	conn := connect(t, p.DSN(pgtest.UserSCRAM, ""))
	ctx := ctxFor(t, 90*time.Second)
	var n int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := c.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	began := time.Now()
	if err := conn.QueryRow(qctx, "SELECT 1").Scan(&n); err == nil {
		t.Fatal("query succeeded with the server down")
	} else if time.Since(began) > 5*time.Second {
		t.Fatalf("query took %v to fail with the server down: %v", time.Since(began), err)
	}
	_, err := tryConnect(t, p.DSN(pgtest.UserSCRAM, ""))
	if pgCode(err) != "08006" || !strings.Contains(err.Error(), "could not connect to the database server") {
		t.Fatalf("connect with the server down: got %v, want 08006 could not connect", err)
	}
	p.waitLog(t, 5*time.Second, "naming the refused dial", func(e logEntry) bool {
		return strings.HasPrefix(e.str("message"), "connection refused: ") && strings.Contains(e.raw(), "connection refused")
	})
	if err := c.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	conn2 := connect(t, p.DSN(pgtest.UserMD5, ""))
	if err := conn2.QueryRow(ctx, "SELECT 2").Scan(&n); err != nil || n != 2 {
		t.Fatalf("after restart: %d %v", n, err)
	}
}

func write(t *testing.T, c net.Conn, parts ...[]byte) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	for _, b := range parts {
		if _, err := c.Write(b); err != nil {
			// The proxy may close as soon as it has seen enough.
			t.Logf("write: %v", err)
			return
		}
	}
}

// TestPgbench runs pgbench (libpq) through the proxy: select-only and
// TPC-B-like, simple and prepared protocol, 4 clients on 2 threads.
func TestPgbench(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	db := uniqueName("e2e_bench")
	mustExec(t, "CREATE DATABASE "+db+" OWNER "+pgtest.UserSCRAM)
	ctx := ctxFor(t, 120*time.Second)
	env := func(port int, ca string) []string {
		return []string{"PGHOST=127.0.0.1", "PGPORT=" + strconv.Itoa(port), "PGUSER=" + pgtest.UserSCRAM,
			"PGPASSWORD=" + pgtest.Password, "PGDATABASE=" + db, "PGSSLMODE=verify-full", "PGSSLROOTCERT=" + ca}
	}
	if out, err := tool(t, ctx, "pgbench", env(shared.Port, shared.CAFile), "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i (direct): %v\n%s", err, out)
	}
	const clients, perClient = 4, 200
	tpcbRuns := 0
	for _, mode := range []string{"simple", "prepared"} {
		for _, script := range []string{"select-only", "tpcb-like"} {
			args := []string{"-n", "-c", strconv.Itoa(clients), "-j", "2", "-t", strconv.Itoa(perClient), "-M", mode}
			if script == "select-only" {
				args = append(args, "-S")
			} else {
				tpcbRuns++
			}
			began := time.Now()
			out, err := tool(t, ctx, "pgbench", env(p.Port, proxyCAFile), args...)
			if err != nil {
				t.Fatalf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			want := fmt.Sprintf("number of transactions actually processed: %d/%d", clients*perClient, clients*perClient)
			if !strings.Contains(out, want) || !strings.Contains(out, "number of failed transactions: 0 ") {
				t.Fatalf("pgbench %s: want %q and no failed transactions:\n%s", strings.Join(args, " "), want, out)
			}
			tps := ""
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "tps = ") {
					tps = l
				}
			}
			t.Logf("-M %s %s: %v, %s", mode, script, time.Since(began).Round(time.Millisecond), tps)
		}
	}
	// Every TPC-B transaction inserted one history row.
	conn := connect(t, shared.DSN(pgtest.UserSCRAM, db))
	var history int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgbench_history").Scan(&history); err != nil {
		t.Fatal(err)
	}
	if want := tpcbRuns * clients * perClient; history != want {
		t.Fatalf("pgbench_history has %d rows, want %d", history, want)
	}
}

// TestGracefulShutdown sends SIGTERM while one session runs pg_sleep(1) and
// another is idle: the idle one gets 57P01 at once, the busy one's query
// completes, new connections are refused, and the process exits 0.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	p := startProxy(t, func(c *proxyConfig) { c.ShutdownGrace = "20s" })
	admin := connect(t, directDSN(pgtest.SuperUser))
	idle := connect(t, p.DSN(pgtest.UserSCRAM, ""))
	app := uniqueName("e2e_busy")
	busy := connect(t, p.DSN(pgtest.UserMD5, "", "application_name="+app))

	type answer struct {
		s   string
		err error
		at  time.Time
	}
	busyDone := make(chan answer, 1)
	go func() {
		var s string
		err := busy.QueryRow(context.WithoutCancel(t.Context()), "SELECT 'done' FROM pg_sleep(1)").Scan(&s)
		busyDone <- answer{s, err, time.Now()}
	}()
	if !eventually(10*time.Second, func() bool { return activeQueries(t, admin, app, "pg_sleep(1)") == 1 }) {
		t.Fatal("busy session's query never became active")
	}
	idleDone := make(chan answer, 1)
	go func() {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 15*time.Second)
		defer cancel()
		err := idle.PgConn().WaitForNotification(wctx)
		idleDone <- answer{err: err, at: time.Now()}
	}()

	sent := time.Now()
	if err := p.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var idleAns answer
	select {
	case idleAns = <-idleDone:
	case <-time.After(5 * time.Second):
		t.Fatal("idle session not closed 5s after SIGTERM")
	}
	if pgCode(idleAns.err) != "57P01" {
		t.Fatalf("idle session: got %v, want FATAL 57P01", idleAns.err)
	}
	// Draining: the listener is closed.
	if c, err := net.DialTimeout("tcp", p.Addr, time.Second); err == nil {
		c.Close()
		t.Error("proxy accepted a new connection after SIGTERM")
	}
	var busyAns answer
	select {
	case busyAns = <-busyDone:
	case <-time.After(10 * time.Second):
		t.Fatal("busy session's query did not complete after SIGTERM")
	}
	if busyAns.err != nil || busyAns.s != "done" {
		t.Fatalf("busy session: got %q, %v; want its query to complete", busyAns.s, busyAns.err)
	}
	if !idleAns.at.Before(busyAns.at) {
		t.Errorf("idle session was closed only after the busy query finished")
	}
	code, err := p.wait(10 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("proxy exit: code %d, %v", code, err)
	}
	t.Logf("idle closed %v after SIGTERM, busy query done after %v, process exited after %v",
		idleAns.at.Sub(sent).Round(time.Millisecond), busyAns.at.Sub(sent).Round(time.Millisecond), time.Since(sent).Round(time.Millisecond))
	if !p.logs.contains("pgcrypt-proxy stopped") {
		t.Error("no \"pgcrypt-proxy stopped\" log line")
	}
	// The busy session was closed with 57P01 once idle.
	if err := busy.Ping(ctxFor(t, 5*time.Second)); err == nil {
		t.Error("busy session still usable after the proxy exited")
	}
}
