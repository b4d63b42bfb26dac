package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

type migColumnOut struct {
	Column        string           `json:"column"`
	Plaintext     int64            `json:"plaintext"`
	OldKey        int64            `json:"old_key"`
	Current       int64            `json:"current"`
	Null          int64            `json:"null"`
	Undecryptable int64            `json:"undecryptable"`
	Encrypted     int64            `json:"encrypted"`
	Reencrypted   int64            `json:"reencrypted"`
	CurrentKeyID  uint32           `json:"current_dek_id"`
	Reasons       map[string]int64 `json:"reasons"`
}

type migReportOut struct {
	Table         string         `json:"table"`
	DryRun        bool           `json:"dry_run"`
	Complete      bool           `json:"complete"`
	RowsScanned   int64          `json:"rows_scanned"`
	RowsUpdated   int64          `json:"rows_updated"`
	RowsPerSecond float64        `json:"rows_per_second"`
	Columns       []migColumnOut `json:"columns"`
}

func encryptExistingJSON(t *testing.T, want int, args ...string) migReportOut {
	t.Helper()
	out, _ := mustRun(t, want, append([]string{"encrypt-existing", "--json"}, args...)...)
	var r migReportOut
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("encrypt-existing --json: %v\n%s", err, out)
	}
	return r
}

// TestDEKLifecycleCLI: encrypt-existing, rotate-dek, encrypt-existing
// again, destroy-dek refusals and --force, through the CLI.
func TestDEKLifecycleCLI(t *testing.T) {
	ctx := t.Context()
	t.Setenv(kms.EnvMasterKey, "")
	t.Setenv("PGCRYPT_CONFIG", "")
	c := pgtest.New(t, pgtest.Options{})
	dir := t.TempDir()
	keyring := filepath.Join(dir, "keyring.json")
	mkFile := filepath.Join(dir, "master.key")
	if err := os.WriteFile(mkFile, []byte(testMasterKey(5)), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 0, "kms", "local", "init", "--keyring", keyring, "--master-key-file", mkFile)
	dsn := c.DSN(pgtest.UserSCRAM, pgtest.Database)
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(`version: 1
keys:
  pii: {kms: local}
tables:
  public.users:
    ssn:   {key: pii, type: text, migrating: true}
    email: {key: pii, type: text, mode: deterministic, migrating: true}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "pgcrypt-proxy.yaml")
	if err := os.WriteFile(cfgFile, []byte(fmt.Sprintf(`upstream: {address: %q, tls: {mode: disable}}
client_tls: {mode: disable}
keystore: {dsn: %q}
kms:
  local: {type: local, keyring: %q, master_key_file: %q}
policy_file: %q
log: {level: warn}
`, c.Addr(), dsn, keyring, mkFile, policyFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`CREATE TABLE users (id int PRIMARY KEY, ssn text, email text)`)
	exec(`INSERT INTO users SELECT i, 'ssn-' || i, CASE WHEN i % 10 = 0 THEN NULL ELSE 'u' || i || '@example.com' END FROM generate_series(1, 500) i`)
	exec(`ALTER TABLE users ALTER COLUMN ssn TYPE bytea USING convert_to(ssn, 'UTF8'), ALTER COLUMN email TYPE bytea USING convert_to(email, 'UTF8')`)

	// Usage errors.
	_, stderr := mustRun(t, 2, "encrypt-existing", "--config", cfgFile)
	if !strings.Contains(stderr, "--table is required") {
		t.Fatalf("no --table: %q", stderr)
	}
	mustRun(t, 2, "encrypt-existing", "--config", cfgFile, "--table", "users", "--batch", "0")
	mustRun(t, 2, "keys", "destroy-dek", "pii", "x", "--config", cfgFile)
	mustRun(t, 2, "keys", "rotate-dek", "--config", cfgFile)

	// A dry run before the keystore even exists counts and creates nothing.
	// (Columns are reported in name order: email, ssn; every 10th email is NULL.)
	r := encryptExistingJSON(t, 0, "--config", cfgFile, "--table", "users", "--dry-run")
	if !r.DryRun || !r.Complete || r.RowsScanned != 500 || r.RowsUpdated != 0 || r.Columns[0].Plaintext != 450 || r.Columns[1].Plaintext != 500 {
		t.Fatalf("dry run %+v", r)
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('pgcrypt.data_keys') IS NOT NULL").Scan(&exists); err != nil || exists {
		t.Fatalf("the dry run created the keystore: %v %v", exists, err)
	}
	_, stderr = mustRun(t, 1, "encrypt-existing", "--config", cfgFile, "--table", "nosuch")
	if !strings.Contains(stderr, "does not exist") {
		t.Fatalf("unknown table: %q", stderr)
	}

	r = encryptExistingJSON(t, 0, "--config", cfgFile, "--table", "users", "--batch", "64")
	if r.RowsUpdated != 500 || r.Columns[0].Encrypted != 450 || r.Columns[1].Encrypted != 500 || r.RowsPerSecond <= 0 {
		t.Fatalf("run %+v", r)
	}
	v1 := r.Columns[0].CurrentKeyID
	r = encryptExistingJSON(t, 0, "--config", cfgFile, "--table", "users")
	if r.RowsUpdated != 0 || r.Columns[0].Current != 450 {
		t.Fatalf("second run %+v", r)
	}
	out, _ := mustRun(t, 0, "encrypt-existing", "--config", cfgFile, "--table", "public.users")
	if !strings.Contains(out, "public.users: 500 rows scanned") || !strings.Contains(out, "pass complete") {
		t.Fatalf("report:\n%s", out)
	}

	// Rotate (no wait: no proxy runs), then move the values forward.
	out, stderr = mustRun(t, 0, "keys", "rotate-dek", "pii", "--wait", "0s", "--config", cfgFile)
	if !strings.Contains(out, "pii: version 2") || !strings.Contains(out, "encrypt-existing --table public.users") ||
		!strings.Contains(stderr, "version 2") {
		t.Fatalf("rotate-dek:\n%s\n%s", out, stderr)
	}
	ds := listDEKs(t, cfgFile)
	if len(ds) != 2 || ds[0].State != "retired" || ds[1].State != "active" || ds[0].ID != v1 {
		t.Fatalf("after rotate-dek: %+v", ds)
	}
	v2 := ds[1].ID

	// The retired version still holds values: refused, listing them.
	_, stderr = mustRun(t, 1, "keys", "destroy-dek", "pii", "1", "--config", cfgFile)
	if !strings.Contains(stderr, "public.users.ssn: 500 value(s)") || !strings.Contains(stderr, "public.users.email: 450 value(s)") {
		t.Fatalf("destroy-dek while in use: %q", stderr)
	}
	_, stderr = mustRun(t, 1, "keys", "destroy-dek", "pii", "2", "--config", cfgFile)
	if !strings.Contains(stderr, "is the active version") {
		t.Fatalf("destroy-dek of the active version: %q", stderr)
	}

	r = encryptExistingJSON(t, 0, "--config", cfgFile, "--table", "users")
	if r.RowsUpdated != 500 || r.Columns[0].Reencrypted != 450 || r.Columns[0].CurrentKeyID != v2 {
		t.Fatalf("run after rotation %+v", r)
	}
	// No values left under v1, but it was retired a moment ago.
	_, stderr = mustRun(t, 1, "keys", "destroy-dek", "pii", "1", "--config", cfgFile)
	if !strings.Contains(stderr, "retired too recently") || !strings.Contains(stderr, "--force") {
		t.Fatalf("destroy-dek right after rotation: %q", stderr)
	}
	out, _ = mustRun(t, 0, "keys", "destroy-dek", "pii", "1", "--min-retired-age", "0s", "--config", cfgFile)
	if !strings.Contains(out, "pii version 1 (id") || !strings.Contains(out, "destroyed") {
		t.Fatalf("destroy-dek: %q", out)
	}
	mustRun(t, 0, "keys", "destroy-dek", "pii", "1", "--config", cfgFile) // already destroyed

	// Rotate again and shred v2 with its values: --force.
	mustRun(t, 0, "keys", "rotate-dek", "pii", "--wait", "0", "--config", cfgFile)
	mustRun(t, 1, "keys", "destroy-dek", "pii", "2", "--config", cfgFile)
	mustRun(t, 0, "keys", "destroy-dek", "pii", "2", "--force", "--config", cfgFile)
	ds = listDEKs(t, cfgFile)
	if len(ds) != 3 || ds[0].State != "destroyed" || ds[1].State != "destroyed" || ds[2].State != "active" {
		t.Fatalf("after destroy-dek: %+v", ds)
	}
	// The shredded values are left alone and reported: exit 3.
	var before []byte
	if err := conn.QueryRow(ctx, "SELECT ssn FROM users WHERE id = 1").Scan(&before); err != nil {
		t.Fatal(err)
	}
	r = encryptExistingJSON(t, 3, "--config", cfgFile, "--table", "users")
	if r.RowsUpdated != 0 || r.Columns[0].Undecryptable != 450 || r.Columns[0].Reasons["destroyed_key"] != 450 {
		t.Fatalf("run over shredded values %+v", r)
	}
	var after []byte
	if err := conn.QueryRow(ctx, "SELECT ssn FROM users WHERE id = 1").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if h, err := crypto.ParseHeader(after); err != nil || h.KeyID != v2 || string(before) != string(after) {
		t.Fatalf("a shredded value was touched: %v %v", h, err)
	}
}
