package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

func TestMaxConnections(t *testing.T) {
	p := startProxy(t, func(pc *proxyConfig) { pc.Limits.MaxConnections = 2 })
	dsn := p.DSN(pgtest.UserSCRAM, pgtest.Database)
	a := connect(t, dsn)
	b := connect(t, dsn)
	_, err := tryConnect(t, dsn)
	if pgCode(err) != "53300" {
		t.Fatalf("third connection: %v, want 53300 too many clients", err)
	}
	p.waitLog(t, 5*time.Second, "too many clients", func(e logEntry) bool {
		return strings.Contains(e.str("message"), "too many clients")
	})
	// A slot frees when a client leaves.
	a.Close(ctxFor(t, 5*time.Second))
	if !eventually(5*time.Second, func() bool {
		c, err := tryConnect(t, dsn)
		if err == nil {
			c.Close(ctxFor(t, 5*time.Second))
		}
		return err == nil
	}) {
		t.Fatal("no connection accepted after one closed")
	}
	b.Close(ctxFor(t, 5*time.Second))
}

func TestIdleAndStartupTimeouts(t *testing.T) {
	p := startProxy(t, func(pc *proxyConfig) {
		pc.Limits.StartupTimeout = "500ms"
		pc.Limits.IdleTimeout = "400ms"
	})
	// A client that connects and sends nothing is closed.
	raw, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	start := time.Now()
	expectClosed(t, raw)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("silent client closed after %v", d)
	}
	// An idle session outside a transaction is closed with 57P05; one
	// inside a transaction block is not.
	ctx := ctxFor(t, 20*time.Second)
	idle := connect(t, p.DSN(pgtest.UserSCRAM, pgtest.Database))
	inTx := connect(t, p.DSN(pgtest.UserSCRAM, pgtest.Database))
	tx, err := inTx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond)
	if _, err := idle.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("an idle session survived limits.idle_timeout")
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("a session idle inside a transaction was closed: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	p.waitLog(t, 5*time.Second, "closing idle session", func(e logEntry) bool { return e.str("message") == "closing idle session" })
}
