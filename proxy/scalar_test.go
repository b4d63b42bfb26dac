package proxy

import (
	"context"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// switchKeys is a keystore whose current key and live set the test
// changes while a session runs, as a DEK rotation seen by a long-lived
// connection does (the real keystore takes its cache TTL to notice).
type switchKeys struct {
	mu   sync.Mutex
	cur  *crypto.Key
	live []*crypto.Key
	byID map[uint32]*crypto.Key
}

func (k *switchKeys) Current(context.Context, string, string) (*crypto.Key, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur, nil
}

func (k *switchKeys) ByID(_ context.Context, id uint32) (*crypto.Key, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.byID[id], nil
}

func (k *switchKeys) Live(context.Context, string) ([]*crypto.Key, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.live, nil
}

func newTestKey(t *testing.T, id uint32) *crypto.Key {
	dek := make([]byte, 32)
	rand.Read(dek)
	k, err := crypto.NewKey(id, dek)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestScalarLookupAcrossRotation: a statement prepared while one data key
// is live compares with one candidate (col = $1::bytea). When a second key
// becomes live on the same connection, the next Bind goes to the array
// form, which the proxy prepares under a name of its own, and finds rows
// under both keys; closing the client's statement closes the proxy's.
func TestScalarLookupAcrossRotation(t *testing.T) {
	pg := pgtest.New(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, `CREATE TABLE scal (id int PRIMARY KEY, email bytea)`); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, `GRANT ALL ON scal TO PUBLIC`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pf := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pf, []byte("version: 1\nkeys: {pii: {kms: local}}\ntables:\n  public.scal:\n    email: {key: pii, type: text, mode: deterministic}\n"), 0o600)
	holder, err := policy.NewHolder(pf)
	if err != nil {
		t.Fatal(err)
	}
	k1, k2 := newTestKey(t, 1), newTestKey(t, 2)
	keys := &switchKeys{cur: k1, live: []*crypto.Key{k1}, byID: map[uint32]*crypto.Key{1: k1, 2: k2}}
	srv, err := New(Config{Upstream: pg.Addr(), Policy: holder, Keys: keys, StartupTimeout: 10 * time.Second, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ln) }()
	defer func() { stop(); <-served }()

	dsn := "postgres://" + pgtest.UserTrust + "@" + ln.Addr().String() + "/" + pgtest.Database + "?sslmode=disable"
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	const lookup = `SELECT count(*) FROM scal WHERE email = $1`
	if _, err := conn.Prepare(ctx, "lk", lookup); err != nil {
		t.Fatal(err)
	}
	count := func(email string) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(ctx, "lk", email).Scan(&n); err != nil {
			t.Fatalf("lookup %s: %v", email, err)
		}
		return n
	}
	prepared := func() []string {
		t.Helper()
		rows, err := conn.Query(ctx, `SELECT name || ': ' || statement FROM pg_prepared_statements ORDER BY name`, pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	exec(`INSERT INTO scal (id, email) VALUES ($1, $2)`, 1, "old@x")
	for i := 0; i < 7; i++ { // past PostgreSQL's five custom plans
		if n := count("old@x"); n != 1 {
			t.Fatalf("one live key: %d rows", n)
		}
	}
	if got := strings.Join(prepared(), "\n"); !strings.Contains(got, "WHERE email = $1::bytea") || strings.Contains(got, aliasPrefix) {
		t.Fatalf("with one live key, prepared:\n%s", got)
	}

	// A second key becomes live: new writes use it, lookups must find both.
	keys.mu.Lock()
	keys.cur, keys.live = k2, []*crypto.Key{k2, k1}
	keys.mu.Unlock()
	exec(`INSERT INTO scal (id, email) VALUES ($1, $2)`, 2, "new@x")
	for i := 0; i < 3; i++ {
		if n, m := count("old@x"), count("new@x"); n != 1 || m != 1 {
			t.Fatalf("two live keys: old %d, new %d rows", n, m)
		}
	}
	got := prepared()
	var alias string
	for _, s := range got {
		if strings.HasPrefix(s, aliasPrefix) {
			alias = s
		}
	}
	if !strings.Contains(alias, "WHERE email = ANY($1::bytea[])") {
		t.Fatalf("with two live keys, prepared:\n%s", strings.Join(got, "\n"))
	}
	// The client's Close closes the proxy's statement too.
	if err := conn.Deallocate(ctx, "lk"); err != nil {
		t.Fatal(err)
	}
	for _, s := range prepared() {
		if strings.Contains(s, "FROM scal WHERE email") {
			t.Fatalf("after Deallocate, still prepared: %s", s)
		}
	}
	if _, err := conn.Prepare(ctx, "lk", lookup); err != nil {
		t.Fatal(err)
	}
	if n := count("new@x"); n != 1 {
		t.Fatalf("prepared again with two live keys: %d rows", n)
	}
	if got := strings.Join(prepared(), "\n"); !strings.Contains(got, "WHERE email = ANY($1::bytea[])") || strings.Contains(got, aliasPrefix) {
		t.Fatalf("prepared with two live keys:\n%s", got)
	}
}
