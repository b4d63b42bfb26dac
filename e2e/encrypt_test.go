package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// encSetup is an encrypting proxy in front of the shared cluster with its
// own keyring, keystore schema and policy over its own tables.
type encSetup struct {
	keyring    string // the local keyring file
	masterKey  string // PGCRYPT_MASTER_KEY=…
	cluster    *pgtest.Cluster
	p          *proxyProc
	policyFile string
	users      string // table names, unique per setup
	other      string
}

// policyFor is the test policy over the given users table.
func policyFor(users string, extra string) string {
	return `version: 1
keys:
  pii: {kms: local}
tables:
  public.` + users + `:
    ssn:   {key: pii, type: text}
    email: {key: pii, type: text, mode: deterministic}
    age:   {key: pii, type: int4}
    born:  {key: pii, type: date}
    score: {key: pii, type: numeric}
    seen:  {key: pii, type: timestamptz}
    prefs: {key: pii, type: jsonb}
` + extra
}

func startEncrypting(t *testing.T, muts ...cfgMutator) *encSetup {
	return startEncryptingOn(t, shared, muts...)
}

// startEncryptingOn is startEncrypting in front of cluster c.
func startEncryptingOn(t *testing.T, c *pgtest.Cluster, muts ...cfgMutator) *encSetup {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	e := &encSetup{cluster: c, users: uniqueName("users"), other: uniqueName("plain")}
	for _, sql := range []string{
		`CREATE TABLE ` + e.users + ` (id int PRIMARY KEY, name text, ssn bytea, email bytea, age bytea, born bytea, score bytea, seen bytea, prefs bytea, note bytea)`,
		`CREATE TABLE ` + e.other + ` (id int PRIMARY KEY, ssn text)`,
	} {
		if err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	mk := make([]byte, 32)
	if _, err := rand.Read(mk); err != nil {
		t.Fatal(err)
	}
	master, err := kms.NewMasterKey(mk)
	if err != nil {
		t.Fatal(err)
	}
	keyring := filepath.Join(dir, "keyring.json")
	kek, err := kms.InitLocal(ctx, kms.LocalOptions{Path: keyring, MasterKey: master})
	if err != nil {
		t.Fatal(err)
	}
	kek.Close()
	e.keyring = keyring
	e.masterKey = "PGCRYPT_MASTER_KEY=" + base64.StdEncoding.EncodeToString(mk)
	e.policyFile = filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(e.policyFile, []byte(policyFor(e.users, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	schema := uniqueName("pgcrypt")
	e.p = startProxy(t, append([]cfgMutator{withCluster(c), func(pc *proxyConfig) {
		pc.Keystore.DSN = c.DSN(pgtest.UserSCRAM, pgtest.Database)
		pc.Keystore.Schema = schema
		pc.KMS = map[string]map[string]any{"local": {"type": "local", "keyring": keyring}}
		pc.PolicyFile = e.policyFile
		pc.env = []string{"PGCRYPT_MASTER_KEY=" + base64.StdEncoding.EncodeToString(mk)}
	}}, muts...)...)
	return e
}

// direct reads a row of the users table straight from PostgreSQL.
func (e *encSetup) direct(t *testing.T, id int) map[string][]byte {
	t.Helper()
	conn := connect(t, e.cluster.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctxFor(t, 10*time.Second), `SELECT ssn, email, age, born, score, seen, prefs FROM `+e.users+` WHERE id = $1`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		vals := rows.RawValues()
		for i, f := range rows.FieldDescriptions() {
			if vals[i] != nil {
				out[f.Name] = append([]byte(nil), vals[i]...)
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// assertNoPlaintext fails if any stored column of the row contains one of
// the plaintexts, in any encoding PostgreSQL might have stored.
func (e *encSetup) assertNoPlaintext(t *testing.T, id int, plaintexts ...string) {
	t.Helper()
	row := e.direct(t, id)
	if len(row) == 0 {
		t.Fatalf("row %d not found directly", id)
	}
	for col, stored := range row {
		for _, p := range plaintexts {
			if p != "" && bytes.Contains(stored, []byte(p)) {
				t.Fatalf("column %s of row %d holds the plaintext %q: %q", col, id, p, stored)
			}
		}
		if !bytes.HasPrefix(stored, []byte("\\x")) && len(stored) > 0 && stored[0] != 0xC1 {
			// pgx reads bytea in binary: the envelope's magic comes first.
			t.Fatalf("column %s of row %d is not an envelope: %x", col, id, stored)
		}
	}
}

func TestEncryptRoundTrip(t *testing.T) {
	e := startEncrypting(t)
	modes := map[string]pgx.QueryExecMode{
		"cache_statement": pgx.QueryExecModeCacheStatement,
		"cache_describe":  pgx.QueryExecModeCacheDescribe,
		"describe_exec":   pgx.QueryExecModeDescribeExec,
		"exec":            pgx.QueryExecModeExec,
		"simple_protocol": pgx.QueryExecModeSimpleProtocol,
	}
	id := 0
	for name, mode := range modes {
		t.Run(name, func(t *testing.T) {
			id++
			myID := id
			ctx := ctxFor(t, 30*time.Second)
			conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database), withExecMode(mode))
			defer conn.Close(ctx)
			ssn := "123-45-" + name
			email := name + "@example.com"
			born := time.Date(1990, 5, 17, 0, 0, 0, 0, time.UTC)
			seen := time.Date(2024, 1, 2, 3, 4, 5, 123456000, time.UTC)
			if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, name, ssn, email, age, born, score, seen, prefs) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
				myID, "n"+name, ssn, email, int32(40+myID), born, "12.50", seen, `{"lang": "fr"}`); err != nil {
				t.Fatalf("insert: %v", err)
			}
			var gotSSN, gotEmail string
			var gotAge int32
			var gotBorn, gotSeen time.Time
			var gotScore pgtype.Numeric
			var gotPrefs map[string]any
			if err := conn.QueryRow(ctx, `SELECT ssn, email, age, born, score, seen, prefs FROM `+e.users+` WHERE id = $1`, myID).
				Scan(&gotSSN, &gotEmail, &gotAge, &gotBorn, &gotScore, &gotSeen, &gotPrefs); err != nil {
				t.Fatalf("select: %v", err)
			}
			if gotSSN != ssn || gotEmail != email || gotAge != int32(40+myID) || !gotBorn.Equal(born) || !gotSeen.Equal(seen) {
				t.Fatalf("read back %q %q %d %v %v", gotSSN, gotEmail, gotAge, gotBorn, gotSeen)
			}
			if score, _ := gotScore.Value(); score != "12.50" || gotPrefs["lang"] != "fr" {
				t.Fatalf("read back score %v prefs %v", score, gotPrefs)
			}
			// Equality on the deterministic column finds the row.
			var n int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+e.users+` WHERE email = $1`, email).Scan(&n); err != nil || n != 1 {
				t.Fatalf("lookup by email: %d, %v", n, err)
			}
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+e.users+` WHERE email IN ($1, 'nobody@example.com')`, email).Scan(&n); err != nil || n != 1 {
				t.Fatalf("lookup by email IN: %d, %v", n, err)
			}
			e.assertNoPlaintext(t, myID, ssn, email, "12.50", "lang")
		})
	}
}

func TestEncryptNullsUpdatesAndReturning(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn, email) VALUES ($1, $2, NULL)`, 1, nil); err != nil {
		t.Fatal(err)
	}
	var ssn, email *string
	if err := conn.QueryRow(ctx, `SELECT ssn, email FROM `+e.users+` WHERE id = 1`).Scan(&ssn, &email); err != nil || ssn != nil || email != nil {
		t.Fatalf("NULLs: %v %v %v", ssn, email, err)
	}
	var ret string
	if err := conn.QueryRow(ctx, `UPDATE `+e.users+` SET ssn = $1, email = $2 WHERE id = $3 RETURNING ssn`, "999-00-1111", "a@b.c", 1).Scan(&ret); err != nil || ret != "999-00-1111" {
		t.Fatalf("update returning: %q %v", ret, err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn, email) VALUES (1, 'conflict-ssn', 'x@y.z') ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn, email = EXCLUDED.email`); err != nil {
		t.Fatalf("upsert: %v", err)
	}
	if err := conn.QueryRow(ctx, `SELECT ssn FROM `+e.users+` WHERE email = 'x@y.z'`).Scan(&ret); err != nil || ret != "conflict-ssn" {
		t.Fatalf("after upsert: %q %v", ret, err)
	}
	e.assertNoPlaintext(t, 1, "conflict-ssn", "x@y.z")
	if _, err := conn.Exec(ctx, `DELETE FROM `+e.users+` WHERE email = $1`, "x@y.z"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+e.users).Scan(&n); err != nil || n != 0 {
		t.Fatalf("after delete: %d %v", n, err)
	}
}

func TestEncryptRefusals(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	mustExec(t, `INSERT INTO `+e.other+` VALUES (1, 'plain-ssn-123')`)
	for _, tc := range []struct {
		name, sql string
		args      []any
		code      string
	}{
		{"equality on randomized", `SELECT id FROM ` + e.users + ` WHERE ssn = $1`, []any{"x"}, "0A000"},
		{"function around a policy column", `SELECT upper(ssn) FROM ` + e.users, nil, "0A000"},
		{"LIKE", `SELECT id FROM ` + e.users + ` WHERE email LIKE 'a%'`, nil, "0A000"},
		{"ORDER BY", `SELECT id FROM ` + e.users + ` ORDER BY ssn`, nil, "0A000"},
		{"INSERT SELECT from plaintext", `INSERT INTO ` + e.users + ` (id, ssn) SELECT id, ssn FROM ` + e.other, nil, "0A000"},
		{"expression into a policy column", `INSERT INTO ` + e.users + ` (id, ssn) VALUES (7, 'a' || $1)`, []any{"b"}, "0A000"},
		{"bad value for the declared type", `INSERT INTO ` + e.users + ` (id, age) VALUES (8, $1)`, []any{"forty"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := conn.Exec(ctx, tc.sql, tc.args...)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want a refusal", err)
			}
			if tc.code != "" && pe.Code != tc.code {
				t.Fatalf("got %s %q, want %s", pe.Code, pe.Message, tc.code)
			}
			if strings.Contains(pe.Message, "plain-ssn") || strings.Contains(pe.Where, "PL/pgSQL") {
				t.Fatalf("refusal leaks internals: %+v", pe)
			}
		})
	}
	// Nothing of the refused statements reached the table.
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+e.users).Scan(&n); err != nil || n != 0 {
		t.Fatalf("refused statements wrote %d rows (%v)", n, err)
	}

	// A refusal inside a transaction block aborts it, as a server error
	// would: the next statement fails and COMMIT rolls back.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn) VALUES ($1, $2)`, 20, "in-tx"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT id FROM `+e.users+` WHERE ssn = $1`, "in-tx"); pgCode(err) != "0A000" {
		t.Fatalf("refusal in tx: %v", err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1`); pgCode(err) != "25P02" {
		t.Fatalf("statement after the refusal: %v, want 25P02", err)
	}
	if err := tx.Commit(ctx); err == nil || !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Fatalf("commit after refusal: %v, want rollback", err)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+e.users+` WHERE id = 20`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the aborted transaction's insert is visible: %d %v", n, err)
	}
}

func TestEncryptTamperedCiphertext(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn, email) VALUES ($1, $2, $3), ($4, $5, $6)`, 1, "ssn-one", "one@x", 2, "ssn-two", "two@x"); err != nil {
		t.Fatal(err)
	}
	// Copy row 1's email ciphertext into row 2's ssn column: the value is
	// authentic, but bound to another column, so it must not decrypt.
	mustExec(t, `UPDATE `+e.users+` SET ssn = (SELECT email FROM `+e.users+` WHERE id = 1) WHERE id = 2`)
	var s string
	err := conn.QueryRow(ctx, `SELECT ssn FROM `+e.users+` WHERE id = 2`).Scan(&s)
	if pgCode(err) != "XX001" {
		t.Fatalf("moved ciphertext: got %q, %v; want XX001", s, err)
	}
	// Flip one byte of row 1's ssn.
	mustExec(t, `UPDATE `+e.users+` SET ssn = set_byte(ssn, 40, get_byte(ssn, 40) # 1) WHERE id = 1`)
	if err := conn.QueryRow(ctx, `SELECT ssn FROM `+e.users+` WHERE id = 1`).Scan(&s); pgCode(err) != "XX001" {
		t.Fatalf("tampered ciphertext: got %q, %v; want XX001", s, err)
	}
	// The connection stays usable.
	if err := conn.QueryRow(ctx, `SELECT email FROM `+e.users+` WHERE id = 1`).Scan(&s); err != nil || s != "one@x" {
		t.Fatalf("after the failures: %q %v", s, err)
	}
}

func TestEncryptBatchAndPreparedReuse(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 60*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	b := &pgx.Batch{}
	for i := 1; i <= 200; i++ {
		b.Queue(`INSERT INTO `+e.users+` (id, ssn, email, age) VALUES ($1, $2, $3, $4)`, i, "ssn-"+itoa(i), "u"+itoa(i)+"@x", int32(i))
	}
	b.Queue(`SELECT count(*) FROM `+e.users+` WHERE email = $1`, "u7@x")
	br := conn.SendBatch(ctx, b)
	for i := 1; i <= 200; i++ {
		if _, err := br.Exec(); err != nil {
			t.Fatalf("batch insert %d: %v", i, err)
		}
	}
	var n int
	if err := br.QueryRow().Scan(&n); err != nil || n != 1 {
		t.Fatalf("batch lookup: %d %v", n, err)
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 200; i++ {
		var ssn string
		var age int32
		if err := conn.QueryRow(ctx, `SELECT ssn, age FROM `+e.users+` WHERE email = $1`, "u"+itoa(i)+"@x").Scan(&ssn, &age); err != nil || ssn != "ssn-"+itoa(i) || age != int32(i) {
			t.Fatalf("row %d: %q %d %v", i, ssn, age, err)
		}
	}
	rows, err := conn.Query(ctx, `SELECT id, ssn FROM `+e.users)
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for rows.Next() {
		var id int
		var ssn string
		if err := rows.Scan(&id, &ssn); err != nil || ssn != "ssn-"+itoa(id) {
			t.Fatalf("scan: %d %q %v", id, ssn, err)
		}
		count++
	}
	if rows.Err() != nil || count != 200 {
		t.Fatalf("read %d rows: %v", count, rows.Err())
	}
	e.assertNoPlaintext(t, 7, "ssn-7", "u7@x")
}

func TestEncryptDatabaseSQLAndPsql(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	db, err := sql.Open("pgx", e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `INSERT INTO `+e.users+` (id, ssn, email) VALUES ($1, $2, $3)`, 1, "dbsql-ssn", "dbsql@x"); err != nil {
		t.Fatal(err)
	}
	var ssn string
	if err := db.QueryRowContext(ctx, `SELECT ssn FROM `+e.users+` WHERE email = $1`, "dbsql@x").Scan(&ssn); err != nil || ssn != "dbsql-ssn" {
		t.Fatalf("database/sql: %q %v", ssn, err)
	}
	out, err := psql(t, ctx, e.p.DSN(pgtest.UserSCRAM, pgtest.Database), "-Atc",
		`INSERT INTO `+e.users+` (id, ssn, email, age) VALUES (2, 'psql-ssn', 'psql@x', 33)`,
		"-c", `SELECT ssn, age FROM `+e.users+` WHERE email = 'psql@x'`)
	if err != nil || !strings.Contains(out, "psql-ssn|33") {
		t.Fatalf("psql: %q %v", out, err)
	}
	e.assertNoPlaintext(t, 2, "psql-ssn", "psql@x")
}

func TestEncryptPolicyReload(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, note) VALUES (1, $1)`, []byte("before-reload")); err != nil {
		t.Fatal(err)
	}
	if row := e.direct(t, 1); len(row) != 0 {
		t.Fatalf("unexpected policy columns set: %v", row)
	}
	extra := "    note:  {key: pii, type: text}\n"
	if err := os.WriteFile(e.policyFile, []byte(policyFor(e.users, extra)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.p.signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.p.waitLog(t, 10*time.Second, "policy reloaded", func(le logEntry) bool { return le.str("message") == "policy reloaded" })
	// The same connection now encrypts the new column.
	if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, note) VALUES (2, $1)`, "after-reload"); err != nil {
		t.Fatal(err)
	}
	var note string
	if err := conn.QueryRow(ctx, `SELECT note FROM `+e.users+` WHERE id = 2`).Scan(&note); err != nil || note != "after-reload" {
		t.Fatalf("after reload: %q %v", note, err)
	}
	direct := connect(t, directDSN(pgtest.UserSCRAM))
	defer direct.Close(ctx)
	var stored []byte
	if err := direct.QueryRow(ctx, `SELECT note FROM `+e.users+` WHERE id = 2`).Scan(&stored); err != nil || bytes.Contains(stored, []byte("after-reload")) {
		t.Fatalf("note stored as %q (%v)", stored, err)
	}
	// A broken policy is refused and the old one keeps serving.
	if err := os.WriteFile(e.policyFile, []byte("version: 1\ntables: {t: {c: {key: nope}}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = e.p.signal(syscall.SIGHUP)
	e.p.waitLog(t, 10*time.Second, "policy reload failed", func(le logEntry) bool {
		return le.str("message") == "policy reload failed; the previous policy stays in force"
	})
	if err := conn.QueryRow(ctx, `SELECT note FROM `+e.users+` WHERE id = 2`).Scan(&note); err != nil || note != "after-reload" {
		t.Fatalf("after a failed reload: %q %v", note, err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestMigratingReads(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	// Legacy rows hold the canonical plaintext, as ALTER … TYPE bytea
	// USING convert_to(note, 'UTF8') leaves them.
	mustExec(t, `INSERT INTO `+e.users+` (id, note) VALUES (1, convert_to('legacy-note', 'UTF8'))`)
	extra := "    note:  {key: pii, type: text, mode: deterministic, migrating: true}\n"
	if err := os.WriteFile(e.policyFile, []byte(policyFor(e.users, extra)), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = e.p.signal(syscall.SIGHUP)
	e.p.waitLog(t, 10*time.Second, "policy reloaded", func(le logEntry) bool { return le.str("message") == "policy reloaded" })
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, note) VALUES (2, $1)`, "new-note"); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[int]string{1: "legacy-note", 2: "new-note"} {
		var got string
		if err := conn.QueryRow(ctx, `SELECT note FROM `+e.users+` WHERE id = $1`, id).Scan(&got); err != nil || got != want {
			t.Fatalf("row %d: %q %v", id, got, err)
		}
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+e.users+` WHERE note = $1`, want).Scan(&n); err != nil || n != 1 {
			t.Fatalf("lookup %q during migration: %d %v", want, n, err)
		}
	}
	direct := connect(t, directDSN(pgtest.UserSCRAM))
	defer direct.Close(ctx)
	var stored []byte
	if err := direct.QueryRow(ctx, `SELECT note FROM `+e.users+` WHERE id = 2`).Scan(&stored); err != nil || bytes.Contains(stored, []byte("new-note")) {
		t.Fatalf("a new write to a migrating column is not encrypted: %q %v", stored, err)
	}
	// A value that looks like an envelope but does not authenticate is an
	// error, never taken for plaintext.
	mustExec(t, `UPDATE `+e.users+` SET note = set_byte(note, 30, get_byte(note, 30) # 1) WHERE id = 2`)
	var got string
	if err := conn.QueryRow(ctx, `SELECT note FROM `+e.users+` WHERE id = 2`).Scan(&got); pgCode(err) != "XX001" {
		t.Fatalf("tampered envelope in a migrating column: %q %v", got, err)
	}
}

// TestDecryptFailureAbortsTransaction: a value that does not decrypt fails
// its statement, and inside a transaction block the transaction is
// aborted on the server too, in both protocols.
func TestDecryptFailureAbortsTransaction(t *testing.T) {
	e := startEncrypting(t)
	for name, mode := range map[string]pgx.QueryExecMode{"extended": pgx.QueryExecModeCacheStatement, "simple": pgx.QueryExecModeSimpleProtocol} {
		t.Run(name, func(t *testing.T) {
			mustExec(t, `TRUNCATE `+e.users)
			ctx := ctxFor(t, 30*time.Second)
			conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database), withExecMode(mode))
			defer conn.Close(ctx)
			if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn) VALUES (1, 'good'), (2, 'bad')`); err != nil {
				t.Fatal(err)
			}
			mustExec(t, `UPDATE `+e.users+` SET ssn = set_byte(ssn, 40, get_byte(ssn, 40) # 1) WHERE id = 2`)
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn) VALUES (3, 'in-tx')`); err != nil {
				t.Fatal(err)
			}
			var s string
			if err := tx.QueryRow(ctx, `SELECT ssn FROM `+e.users+` WHERE id = 2`).Scan(&s); pgCode(err) != "XX001" {
				t.Fatalf("tampered value: %q %v", s, err)
			}
			if err := tx.Commit(ctx); err == nil || !errors.Is(err, pgx.ErrTxCommitRollback) {
				t.Fatalf("commit after a decryption failure: %v, want rollback", err)
			}
			var n int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+e.users+` WHERE id = 3`).Scan(&n); err != nil || n != 0 {
				t.Fatalf("the transaction's insert survived: %d %v", n, err)
			}
		})
	}
}

// TestTableCreatedByAnotherSession: a session that started before a policy
// table existed still encrypts and decrypts it once another session
// creates it, in both protocols, and COPY works too.
func TestTableCreatedByAnotherSession(t *testing.T) {
	e := startEncrypting(t, func(pc *proxyConfig) { pc.CatalogRefresh = "500ms" })
	ctx := ctxFor(t, 30*time.Second)
	simple := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database), withExecMode(pgx.QueryExecModeSimpleProtocol))
	defer simple.Close(ctx)
	ext := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer ext.Close(ctx)
	// Re-create the policy table behind both sessions' backs; after
	// catalog_refresh they find it under its new OID.
	mustExec(t, `DROP TABLE `+e.users+`; CREATE TABLE `+e.users+` (id int PRIMARY KEY, name text, ssn bytea, email bytea, age bytea, born bytea, score bytea, seen bytea, prefs bytea, note bytea)`)
	time.Sleep(600 * time.Millisecond)
	for i, conn := range []*pgx.Conn{simple, ext} {
		if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn) VALUES ($1, $2)`, i+1, "late-"+itoa(i)); err != nil {
			t.Fatal(err)
		}
		var s string
		if err := conn.QueryRow(ctx, `SELECT ssn FROM `+e.users+` WHERE id = $1`, i+1).Scan(&s); err != nil || s != "late-"+itoa(i) {
			t.Fatalf("session %d after the table was re-created: %q %v", i, s, err)
		}
	}
	mustExec(t, `DROP TABLE `+e.users+`; CREATE TABLE `+e.users+` (id int PRIMARY KEY, name text, ssn bytea, email bytea, age bytea, born bytea, score bytea, seen bytea, prefs bytea, note bytea)`)
	var err error
	for try := 0; try < 2; try++ {
		if _, err = simple.PgConn().CopyFrom(ctx, strings.NewReader("9\tn\tcopied"+strings.Repeat("\t\\N", 7)+"\n"), `COPY `+e.users+` FROM STDIN`); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("COPY after a retry: %v", err)
	}
	e.assertNoPlaintext(t, 9, "copied")
}

// TestVarcharParameterIntoTextColumn: drivers that declare string
// parameters as varchar (pgjdbc) work with text policy columns.
func TestVarcharParameterIntoTextColumn(t *testing.T) {
	e := startEncrypting(t)
	w := e.wire(t)
	got := w.send(1,
		&pgproto3.Parse{Query: `INSERT INTO ` + e.users + ` (id, ssn, email) VALUES ($1, $2, $3)`, ParameterOIDs: []uint32{23, 1043, 1043}},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("1"), []byte("vc-ssn"), []byte("vc@x")}},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "varchar parameters", got, "1", "2", "C INSERT 0 1", "Z I")
	e.assertNoPlaintext(t, 1, "vc-ssn", "vc@x")
}

// TestConstantsInPreparedStatementsEncryptAtBind: a policy constant in the
// text of an extended-protocol statement becomes a parameter of the
// proxy's own, encrypted at every Bind under the keys current then (not
// once at Parse, which would keep a rotated-out key in use). The client
// sees only its own parameters.
func TestConstantsInPreparedStatementsEncryptAtBind(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database), withExecMode(pgx.QueryExecModeCacheStatement))
	defer conn.Close(ctx)
	for i := 1; i <= 3; i++ {
		if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn, email, age) VALUES ($1, 'const-ssn', 'const@x', 42)`, i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn, email) VALUES (4, $1, 'other@x')`, "param-ssn"); err != nil {
		t.Fatal(err)
	}
	for q, want := range map[string]int{
		`SELECT count(*) FROM ` + e.users + ` WHERE email = 'const@x'`:               3,
		`SELECT count(*) FROM ` + e.users + ` WHERE email <> 'const@x'`:              1,
		`SELECT count(*) FROM ` + e.users + ` WHERE email IN ('const@x', 'other@x')`: 4,
		`SELECT count(*) FROM ` + e.users + ` WHERE id <= 3 AND ssn IS NOT NULL`:     3,
		`SELECT count(*) FROM ` + e.users + ` WHERE email = NULL`:                    0,
		`SELECT count(*) FROM ` + e.users + ` WHERE email = 'nobody@x' OR id = 4`:    1,
	} {
		var n int
		// Twice: the second run reuses the prepared statement.
		for k := 0; k < 2; k++ {
			if err := conn.QueryRow(ctx, q).Scan(&n); err != nil || n != want {
				t.Fatalf("%s: %d %v, want %d", q, n, err, want)
			}
		}
	}
	var ssn, email string
	if err := conn.QueryRow(ctx, `SELECT ssn, email FROM `+e.users+` WHERE id = $1 AND email = 'const@x'`, 2).Scan(&ssn, &email); err != nil || ssn != "const-ssn" || email != "const@x" {
		t.Fatalf("read back %q %q %v", ssn, email, err)
	}
	// What the server prepared holds parameters, never a ciphertext.
	rows, err := conn.Query(ctx, `SELECT statement FROM pg_prepared_statements WHERE statement LIKE '%const@x%' OR statement LIKE '%$%::bytea%'`, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	var stmts []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		stmts = append(stmts, s)
	}
	if rows.Err() != nil || len(stmts) < 5 {
		t.Fatalf("prepared statements: %q %v", stmts, rows.Err())
	}
	for _, s := range stmts {
		if strings.Contains(s, `\x`) || strings.Contains(s, "const") || strings.Contains(s, "other@x") {
			t.Fatalf("a prepared statement holds a value: %s", s)
		}
	}
	for i := 1; i <= 4; i++ {
		e.assertNoPlaintext(t, i, "const-ssn", "const@x", "other@x", "param-ssn")
	}

	// A Bind with another parameter count is refused as the server would.
	w := e.wire(t)
	got := w.send(1,
		&pgproto3.Parse{Name: "s1", Query: `SELECT id FROM ` + e.users + ` WHERE email = 'const@x' AND id > $1`},
		&pgproto3.Bind{PreparedStatement: "s1"},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "wrong count", got, "1", "E 08P01", "Z I")
	// A constant that is no value of its column is refused at Parse.
	got = w.send(1,
		&pgproto3.Parse{Name: "s2", Query: `INSERT INTO ` + e.users + ` (id, age) VALUES (9, 'not-a-number')`},
		&pgproto3.Sync{})
	expectSeq(t, "invalid constant", got, "E 22P02", "Z I")
}
