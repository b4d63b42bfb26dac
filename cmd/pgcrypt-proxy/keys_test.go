package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

type dekOut struct {
	Key        string `json:"key"`
	DEKVersion int    `json:"dek_version"`
	KEKVersion string `json:"kek_version"`
	State      string `json:"state"`
	ID         uint32 `json:"id"`
	KEKName    string `json:"kek_name"`
	KEKPrimary *bool  `json:"kek_primary"`
	CreatedAt  string `json:"created_at"`
}

func listDEKs(t *testing.T, cfgFile string) []dekOut {
	t.Helper()
	out, _ := mustRun(t, 0, "keys", "list", "--json", "--config", cfgFile)
	var ds []dekOut
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("keys list --json: %v\n%s", err, out)
	}
	return ds
}

func TestKeysList(t *testing.T) {
	ctx := t.Context()
	t.Setenv(kms.EnvMasterKey, "")
	t.Setenv("PGCRYPT_CONFIG", "")
	c := pgtest.New(t, pgtest.Options{})
	dir := t.TempDir()
	keyring := filepath.Join(dir, "keyring.json")
	mkFile := filepath.Join(dir, "master.key")
	if err := os.WriteFile(mkFile, []byte(testMasterKey(3)), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 0, "kms", "local", "init", "--keyring", keyring, "--master-key-file", mkFile, "--key-id", "app")
	dsn := c.DSN(pgtest.UserSCRAM, pgtest.Database)
	cfgFile := filepath.Join(dir, "pgcrypt-proxy.yaml")
	cfg := fmt.Sprintf(`listen: 127.0.0.1:6432
upstream: {address: %q, tls: {mode: disable}}
client_tls: {mode: disable}
keystore: {dsn: %q}
kms:
  local: {type: local, keyring: %q, master_key_file: %q}
`, c.Addr(), dsn, keyring, mkFile)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	// No keystore yet: an empty list, and nothing created.
	if ds := listDEKs(t, cfgFile); len(ds) != 0 {
		t.Fatalf("before any DEK: %+v", ds)
	}

	// The proxy creates DEKs.
	mk, err := kms.LoadMasterKey(mkFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := kms.OpenLocal(ctx, kms.LocalOptions{Path: keyring, MasterKey: mk})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store, err := keys.Open(ctx, pool, map[string]kms.KEK{"local": l}, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pii1, err := store.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Current(ctx, "contact", "local"); err != nil {
		t.Fatal(err)
	}
	// The KEK rotates; pii gets a second DEK version under the new KEK version.
	mustRun(t, 0, "kms", "local", "rotate", "--keyring", keyring, "--master-key-file", mkFile)
	if _, err := pool.Exec(ctx, "UPDATE pgcrypt.data_keys SET state = 'retired' WHERE id = $1", int32(pii1.ID())); err != nil {
		t.Fatal(err)
	}
	store.Invalidate("pii")
	pii2, err := store.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}

	ds := listDEKs(t, cfgFile)
	var got []string
	for _, d := range ds {
		p := "?"
		if d.KEKPrimary != nil {
			p = fmt.Sprint(*d.KEKPrimary)
		}
		got = append(got, fmt.Sprintf("%s v%d %s %s primary=%s", d.Key, d.DEKVersion, d.State, d.KEKVersion, p))
		if d.KEKName != "local:app" || d.ID == 0 || d.CreatedAt == "" {
			t.Errorf("entry %+v", d)
		}
	}
	want := []string{
		"contact v1 active local:app/cryptoKeyVersions/1 primary=false",
		"pii v1 retired local:app/cryptoKeyVersions/1 primary=false",
		"pii v2 active local:app/cryptoKeyVersions/2 primary=true",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("keys list --json:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if ds[2].ID != pii2.ID() || ds[1].ID != pii1.ID() {
		t.Fatalf("ids: %+v", ds)
	}

	out, _ := mustRun(t, 0, "keys", "list", "--config", cfgFile)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "KEY") || !strings.Contains(lines[1], "rewrap pending") {
		t.Fatalf("keys list:\n%s", out)
	}

	// kms local destroy refuses a KEK version that DEKs still need.
	_, stderr := mustRun(t, 1, "kms", "local", "destroy", "1", "--yes", "--keyring", keyring,
		"--master-key-file", mkFile, "--config", cfgFile)
	if !strings.Contains(stderr, "2 data key(s) in the keystore are still wrapped under it") {
		t.Fatalf("destroy of a needed KEK version: %q", stderr)
	}
	vs := listVersions(t, keyring, "--master-key-file", mkFile)
	if got := summary(vs); got != "1:ENABLED 2:ENABLED*" {
		t.Fatalf("keyring after a refused destroy: %s", got)
	}

	// Usage: no keystore configured.
	_, stderr = mustRun(t, 2, "keys", "list", "--config", cfgFile, "--keystore.dsn", "")
	if !strings.Contains(stderr, "keystore.dsn is not set") {
		t.Fatalf("no dsn: %q", stderr)
	}
	mustRun(t, 2, "keys", "list", "--config", cfgFile, "extra")
	mustRun(t, 2, "keys")
	mustRun(t, 2, "keys", "rotate")
}

func TestOpenKEKsReportsAll(t *testing.T) {
	t.Setenv(kms.EnvMasterKey, "")
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "c.yaml")
	cfg := fmt.Sprintf(`client_tls: {mode: disable}
upstream: {tls: {mode: disable}}
kms:
  a: {type: local, keyring: %q}
  b: {type: local, keyring: %q, master_key_file: %q}
`, filepath.Join(dir, "missing-a.json"), filepath.Join(dir, "missing-b.json"), filepath.Join(dir, "missing.key"))
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(cfgFile, true, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	keks, err := openKEKs(t.Context(), c)
	if err == nil || keks != nil {
		t.Fatalf("openKEKs: %v, %v", keks, err)
	}
	for _, want := range []string{"kms.a:", "kms.b:", "missing.key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
