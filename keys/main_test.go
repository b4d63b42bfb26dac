package keys

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
	"github.com/pgcrypt/pgcrypt-proxy/kms/kmstest"
)

// cluster is one throwaway PostgreSQL for the package; each test works in
// a schema of its own.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, pgtest.Options{}, &cluster)) }

// pool connects as the database owner (CREATE on the database), the role a
// proxy uses the first time.
func pool(t testing.TB, user string) *pgxpool.Pool {
	t.Helper()
	if user == "" {
		user = pgtest.UserSCRAM
	}
	p, err := pgxpool.New(t.Context(), cluster.DSN(user, ""))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

var (
	nonIdent  = regexp.MustCompile(`[^a-z0-9_]+`)
	schemasMu sync.Mutex
	schemas   = map[string]string{} // test name → schema, fresh per test run (-count)
	schemaSeq int
)

// schemaFor names a fresh schema after the test; the same test gets the same
// schema until it ends.
func schemaFor(t testing.TB) string {
	schemasMu.Lock()
	defer schemasMu.Unlock()
	if s, ok := schemas[t.Name()]; ok {
		return s
	}
	schemaSeq++
	s := fmt.Sprintf("t%d_%s", schemaSeq, nonIdent.ReplaceAllString(strings.ToLower(t.Name()), "_"))
	if len(s) > 63 {
		s = s[:63]
	}
	schemas[t.Name()] = s
	name := t.Name()
	t.Cleanup(func() {
		schemasMu.Lock()
		defer schemasMu.Unlock()
		delete(schemas, name)
	})
	return s
}

// clock is a settable clock for cache expiry.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// countingKEK counts the Wrap and Unwrap calls that reach a KEK.
type countingKEK struct {
	kms.KEK
	wraps, unwraps atomic.Int64
}

func (c *countingKEK) Wrap(ctx context.Context, pt, aad []byte) ([]byte, string, error) {
	c.wraps.Add(1)
	return c.KEK.Wrap(ctx, pt, aad)
}

func (c *countingKEK) Unwrap(ctx context.Context, blob, aad []byte) ([]byte, bool, error) {
	c.unwraps.Add(1)
	return c.KEK.Unwrap(ctx, blob, aad)
}

// backend is a KEK under test, with its call counters.
type backend struct {
	name string // config name of the kms backend
	kek  *countingKEK
	srv  *kmstest.Server // gcp only
}

func (b *backend) keks() map[string]kms.KEK { return map[string]kms.KEK{b.name: b.kek} }

const gcpKey = "projects/p/locations/global/keyRings/r/cryptoKeys/kek"

func newLocal(t testing.TB) *backend {
	t.Helper()
	mk, err := kms.NewMasterKey(bytes.Repeat([]byte{7}, kms.MasterKeySize))
	if err != nil {
		t.Fatal(err)
	}
	l, err := kms.InitLocal(t.Context(), kms.LocalOptions{Path: filepath.Join(t.TempDir(), "keyring.json"), MasterKey: mk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &backend{name: "local", kek: &countingKEK{KEK: l}}
}

func newGCP(t testing.TB, opts kms.GCPOptions) *backend {
	t.Helper()
	srv := kmstest.Start(t)
	if _, err := srv.CreateKey(gcpKey); err != nil {
		t.Fatal(err)
	}
	opts.Key = gcpKey
	opts.ClientOptions = srv.ClientOptions()
	opts.RateLimit = -1
	if opts.BackoffInitial == 0 {
		opts.BackoffInitial, opts.BackoffMax = time.Millisecond, 5*time.Millisecond
	}
	g, err := kms.NewGCP(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return &backend{name: "gcp", kek: &countingKEK{KEK: g}, srv: srv}
}

// eachBackend runs f once with the local keyring and once with Cloud KMS
// (the fake, through the real client).
func eachBackend(t *testing.T, f func(t *testing.T, b *backend)) {
	t.Run("local", func(t *testing.T) { f(t, newLocal(t)) })
	t.Run("gcp", func(t *testing.T) { f(t, newGCP(t, kms.GCPOptions{})) })
}

func open(t testing.TB, p *pgxpool.Pool, keks map[string]kms.KEK, o Options) *Store {
	t.Helper()
	if o.Schema == "" {
		o.Schema = schemaFor(t)
	}
	s, err := Open(t.Context(), p, keks, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dbRow is a data_keys row as stored, to prove nothing was overwritten.
type dbRow struct {
	ID                         int32
	Key                        string
	Version                    int
	Wrapped                    []byte
	KEKName, KEKVersion, State string
	CreatedAt, UpdatedAt       time.Time
}

func dump(t testing.TB, p *pgxpool.Pool, schema string) []dbRow {
	t.Helper()
	rows, err := p.Query(t.Context(), "SELECT id, key_name, dek_version, wrapped, kek_name, kek_version, state, created_at, updated_at FROM "+
		schema+".data_keys ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []dbRow
	for rows.Next() {
		var r dbRow
		if err := rows.Scan(&r.ID, &r.Key, &r.Version, &r.Wrapped, &r.KEKName, &r.KEKVersion, &r.State, &r.CreatedAt, &r.UpdatedAt); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func exec(t testing.TB, p *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := p.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
