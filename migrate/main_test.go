package migrate

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// cluster is one throwaway PostgreSQL for the package; each test works on
// tables and a keystore schema of its own.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, pgtest.Options{}, &cluster)) }

var (
	seqMu sync.Mutex
	seq   int
)

// unique returns prefix_N, a fresh identifier.
func unique(prefix string) string {
	seqMu.Lock()
	defer seqMu.Unlock()
	seq++
	return fmt.Sprintf("%s_%d", prefix, seq)
}

// fixture is a keystore (own schema, local KEK) and a pool on the app
// database.
type fixture struct {
	pool   *pgxpool.Pool
	store  *keys.Store
	kek    kms.KEK
	schema string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	ctx := t.Context()
	p, err := pgxpool.New(ctx, cluster.DSN(pgtest.UserSCRAM, pgtest.Database))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	mk, err := kms.NewMasterKey(bytes.Repeat([]byte{9}, kms.MasterKeySize))
	if err != nil {
		t.Fatal(err)
	}
	l, err := kms.InitLocal(ctx, kms.LocalOptions{Path: filepath.Join(t.TempDir(), "keyring.json"), MasterKey: mk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f := &fixture{pool: p, kek: l, schema: unique("ks")}
	f.store = f.open(t, keys.Options{})
	return f
}

// open opens another Store on the fixture's keystore (another process).
func (f *fixture) open(t testing.TB, o keys.Options) *keys.Store {
	t.Helper()
	o.Schema = f.schema
	s, err := keys.Open(t.Context(), f.pool, map[string]kms.KEK{"local": f.kek}, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fixture) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := f.pool.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (f *fixture) run(t testing.TB, pol *policy.Policy, o Options) *Report {
	t.Helper()
	if o.Schema == "" {
		o.Schema = f.schema
	}
	r, err := Run(t.Context(), f.pool, pol, f.store, o)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return r
}

func parsePolicy(t testing.TB, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(src), "policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// usersPolicy covers every column of a table made by makeUsers.
func usersPolicy(t testing.TB, table string) *policy.Policy {
	return parsePolicy(t, `version: 1
keys:
  pii: {kms: local}
tables:
  public.`+table+`:
    ssn:   {key: pii, type: text, migrating: true}
    email: {key: pii, type: text, mode: deterministic, migrating: true}
    age:   {key: pii, type: int4, migrating: true}
    born:  {key: pii, type: date, migrating: true}
    score: {key: pii, type: numeric, migrating: true}
    seen:  {key: pii, type: timestamptz, migrating: true}
    prefs: {key: pii, type: jsonb, migrating: true}
    photo: {key: pii, type: bytea, migrating: true}
`)
}

// makeUsers creates a plaintext table of n rows (every 7th value NULL),
// keeps a copy of it as <table>_orig, and converts the policy columns to
// bytea holding canonical plaintext, as doc.go tells operators to.
func (f *fixture) makeUsers(t testing.TB, n int) string {
	t.Helper()
	table := unique("users")
	f.exec(t, `CREATE TABLE `+table+` (id int PRIMARY KEY, name text, ssn text, email varchar(200), age int4, born date,
		score numeric, seen timestamptz, prefs jsonb, photo bytea)`)
	f.exec(t, `INSERT INTO `+table+`
SELECT i, 'name ' || i,
	CASE WHEN i % 7 = 1 THEN NULL ELSE lpad(i::text, 3, '0') || '-45-6789 ✓' END,
	'user' || i || '@example.com',
	CASE WHEN i % 7 = 2 THEN NULL ELSE i % 100 - 50 END,
	date '1970-01-01' + i,
	CASE WHEN i % 7 = 3 THEN NULL ELSE (i * 1.25)::numeric END,
	timestamptz '2024-01-02 03:04:05.123456Z' + i * interval '1 second',
	CASE WHEN i % 7 = 4 THEN NULL ELSE jsonb_build_object('lang', 'fr', 'n', i) END,
	CASE WHEN i % 7 = 5 THEN NULL ELSE decode(md5(i::text), 'hex') END
FROM generate_series(1, $1) i`, n)
	f.exec(t, `CREATE TABLE `+table+`_orig AS SELECT * FROM `+table)
	f.exec(t, `ALTER TABLE `+table+`
	ALTER COLUMN ssn   TYPE bytea USING convert_to(ssn, 'UTF8'),
	ALTER COLUMN email TYPE bytea USING convert_to(email, 'UTF8'),
	ALTER COLUMN age   TYPE bytea USING int4send(age),
	ALTER COLUMN born  TYPE bytea USING date_send(born),
	ALTER COLUMN score TYPE bytea USING numeric_send(score),
	ALTER COLUMN seen  TYPE bytea USING timestamptz_send(seen),
	ALTER COLUMN prefs TYPE bytea USING jsonb_send(prefs)`)
	f.exec(t, "ANALYZE "+table)
	return table
}

var userColumns = []string{"ssn", "email", "age", "born", "score", "seen", "prefs", "photo"}

// canonicalOrig is the canonical plaintext of every policy value of the
// original table, by id, computed by PostgreSQL's send functions.
func (f *fixture) canonicalOrig(t testing.TB, table string) map[int][][]byte {
	t.Helper()
	return f.byID(t, `SELECT id, convert_to(ssn, 'UTF8'), convert_to(email, 'UTF8'), int4send(age), date_send(born),
		numeric_send(score), timestamptz_send(seen), jsonb_send(prefs), photo FROM `+table+`_orig`)
}

// stored reads the policy columns as stored, by id.
func (f *fixture) stored(t testing.TB, table string) map[int][][]byte {
	t.Helper()
	return f.byID(t, `SELECT id, `+strings.Join(userColumns, ", ")+` FROM `+table)
}

// byID runs q (id, then one bytea per userColumns) and returns the values
// by id.
func (f *fixture) byID(t testing.TB, q string) map[int][][]byte {
	t.Helper()
	rows, err := f.pool.Query(t.Context(), q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int][][]byte{}
	for rows.Next() {
		var id int
		vals := make([][]byte, len(userColumns))
		dest := []any{&id}
		for i := range vals {
			dest = append(dest, &vals[i])
		}
		if err := rows.Scan(dest...); err != nil {
			t.Fatal(err)
		}
		out[id] = vals
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// xmins returns every row's xmin: a row rewritten has a new one.
func (f *fixture) xmins(t testing.TB, table string) map[int]string {
	t.Helper()
	rows, err := f.pool.Query(t.Context(), `SELECT id, xmin::text FROM `+table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int]string{}
	for rows.Next() {
		var id int
		var x string
		if err := rows.Scan(&id, &x); err != nil {
			t.Fatal(err)
		}
		out[id] = x
	}
	return out
}

// checkEncrypted requires every non-NULL policy value of table to be an
// envelope under the active DEK of pii that decrypts to the original's
// canonical plaintext, and NULLs to stay NULL.
func (f *fixture) checkEncrypted(t testing.TB, pol *policy.Policy, table string) {
	t.Helper()
	ctx := t.Context()
	cur, err := f.store.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	want := f.canonicalOrig(t, table)
	got := f.stored(t, table)
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	pt := pol.Table("public", table, nil)
	for id, vals := range got {
		for i, v := range vals {
			col := pt.Column(userColumns[i])
			w := want[id][i]
			if (v == nil) != (w == nil) {
				t.Fatalf("row %d %s: NULL changed (stored %x, original %x)", id, col.Name, v, w)
			}
			if v == nil {
				continue
			}
			h, err := crypto.ParseHeader(v)
			if err != nil {
				t.Fatalf("row %d %s is not an envelope: %v", id, col.Name, err)
			}
			if h.KeyID != cur.ID() {
				t.Fatalf("row %d %s is under DEK %d, want the active %d", id, col.Name, h.KeyID, cur.ID())
			}
			wantMode := crypto.ModeRandomized
			if col.Mode == policy.Deterministic {
				wantMode = crypto.ModeDeterministic
			}
			if h.Mode != wantMode {
				t.Fatalf("row %d %s: mode %v, want %v", id, col.Name, h.Mode, wantMode)
			}
			plain, err := cur.Decrypt(nil, v, []byte(col.Identity()))
			if err != nil {
				t.Fatalf("row %d %s: %v", id, col.Name, err)
			}
			if !bytes.Equal(plain, w) {
				t.Fatalf("row %d %s decrypts to %x, want %x", id, col.Name, plain, w)
			}
		}
	}
}
