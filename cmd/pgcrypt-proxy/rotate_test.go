package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

type rotateOut struct {
	OK               bool           `json:"ok"`
	Rewrapped        int            `json:"rewrapped"`
	Failed           int            `json:"failed"`
	Disabled         []string       `json:"disabled"`
	Destroyed        []string       `json:"destroyed"`
	Retiring         []any          `json:"retiring"`
	AtRisk           []any          `json:"at_risk"`
	DEKsByKEKVersion map[string]int `json:"deks_by_kek_version"`
	Errors           []string       `json:"errors"`
}

func rotateJSONRun(t *testing.T, want int, cfgFile string) rotateOut {
	t.Helper()
	out, _ := mustRun(t, want, "rotate", "--json", "--config", cfgFile)
	var r rotateOut
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("rotate --json: %v\n%s", err, out)
	}
	return r
}

// setRotateClock moves the rotation's clock by d from now on.
func setRotateClock(t *testing.T, d time.Duration) {
	prev := rotateClock
	rotateClock = func() time.Time { return time.Now().Add(d) }
	t.Cleanup(func() { rotateClock = prev })
}

func TestRotateCommand(t *testing.T) {
	ctx := t.Context()
	t.Setenv(kms.EnvMasterKey, "")
	t.Setenv("PGCRYPT_CONFIG", "")
	c := pgtest.New(t, pgtest.Options{})
	dir := t.TempDir()
	keyring := filepath.Join(dir, "keyring.json")
	mkFile := filepath.Join(dir, "master.key")
	if err := os.WriteFile(mkFile, []byte(testMasterKey(4)), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 0, "kms", "local", "init", "--keyring", keyring, "--master-key-file", mkFile, "--key-id", "app")
	dsn := c.DSN(pgtest.UserSCRAM, pgtest.Database)
	cfgFile := filepath.Join(dir, "pgcrypt-proxy.yaml")
	if err := os.WriteFile(cfgFile, fmt.Appendf(nil, `listen: 127.0.0.1:6432
upstream: {address: %q, tls: {mode: disable}}
client_tls: {mode: disable}
keystore: {dsn: %q}
kms:
  local: {type: local, keyring: %q, master_key_file: %q}
rotation: {interval: 1h, destroy_retired_versions: true, destroy_grace: 720h}
`, c.Addr(), dsn, keyring, mkFile), 0o600); err != nil {
		t.Fatal(err)
	}

	// No keystore yet: nothing to do, nothing created.
	if r := rotateJSONRun(t, 0, cfgFile); !r.OK || r.Rewrapped != 0 || len(r.DEKsByKEKVersion) != 0 {
		t.Fatalf("rotate without a keystore: %+v", r)
	}

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
	keks := map[string]kms.KEK{"local": l}
	store, err := keys.Open(ctx, pool, keks, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	aad := []byte("public.users.ssn")
	type sealed struct {
		id  uint32
		env []byte
	}
	var vals []sealed
	for _, name := range []string{"pii", "contact"} {
		k, err := store.Current(ctx, name, "local")
		if err != nil {
			t.Fatal(err)
		}
		env, err := k.Encrypt(nil, crypto.ModeRandomized, []byte(name+" value"), aad, nil)
		if err != nil {
			t.Fatal(err)
		}
		vals = append(vals, sealed{k.ID(), env})
	}
	checkValues := func() {
		t.Helper()
		s, err := keys.Open(ctx, pool, keks, keys.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			k, err := s.ByID(ctx, v.id)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := k.Decrypt(nil, v.env, aad); err != nil {
				t.Fatal(err)
			}
		}
	}

	mustRun(t, 0, "kms", "local", "rotate", "--keyring", keyring, "--master-key-file", mkFile)
	r := rotateJSONRun(t, 0, cfgFile)
	if !r.OK || r.Rewrapped != 2 || len(r.Retiring) != 1 || r.DEKsByKEKVersion["local:app/cryptoKeyVersions/2"] != 2 {
		t.Fatalf("rotate after the KEK rotated: %+v", r)
	}
	for _, d := range listDEKs(t, cfgFile) {
		if d.KEKPrimary == nil || !*d.KEKPrimary {
			t.Fatalf("keys list after rotate: %+v", d)
		}
	}
	checkValues()

	// The unreferenced version is disabled by a pass 15 minutes later, and
	// destroyed by one after destroy_grace.
	setRotateClock(t, 16*time.Minute)
	out, _ := mustRun(t, 0, "rotate", "--config", cfgFile)
	t.Logf("rotate:\n%s", out)
	if !strings.Contains(out, "disabled    local:app/cryptoKeyVersions/1") || !strings.Contains(out, "to be destroyed by a pass after") {
		t.Fatalf("rotate:\n%s", out)
	}
	if got := summary(listVersions(t, keyring, "--master-key-file", mkFile)); got != "1:DISABLED 2:ENABLED*" {
		t.Fatalf("keyring: %s", got)
	}
	checkValues()
	setRotateClock(t, 16*time.Minute+721*time.Hour)
	if r := rotateJSONRun(t, 0, cfgFile); len(r.Destroyed) != 1 || r.Destroyed[0] != "local:app/cryptoKeyVersions/1" {
		t.Fatalf("rotate after the grace: %+v", r)
	}
	if got := summary(listVersions(t, keyring, "--master-key-file", mkFile)); got != "1:DESTROYED 2:ENABLED*" {
		t.Fatalf("keyring: %s", got)
	}
	checkValues()

	// Another process holds the lock: exit 3, clearly.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", keys.RotationLockKey("pgcrypt")); err != nil {
		t.Fatal(err)
	}
	_, stderr := mustRun(t, exitRotationBusy, "rotate", "--config", cfgFile)
	if !strings.Contains(stderr, "another pgcrypt-proxy process is running a KEK rotation pass") || !strings.Contains(stderr, "--wait") {
		t.Fatalf("busy: %q", stderr)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", keys.RotationLockKey("pgcrypt")); err != nil {
		t.Fatal(err)
	}
	conn.Release()

	// A KMS that lost a version data keys need: reported, with exit 1.
	mustRun(t, 0, "kms", "local", "rotate", "--keyring", keyring, "--master-key-file", mkFile)
	mustRun(t, 0, "kms", "local", "destroy", "2", "--yes", "--keyring", keyring, "--master-key-file", mkFile)
	r = rotateJSONRun(t, 1, cfgFile)
	if r.OK || len(r.AtRisk) != 1 || len(r.Errors) != 1 || !strings.Contains(r.Errors[0], `"pii" v1 (id 1)`) {
		t.Fatalf("rotate with a lost version: %+v", r)
	}
	out, stderr = mustRun(t, 1, "rotate", "--config", cfgFile)
	t.Logf("rotate:\n%s%s", out, stderr)
	if !strings.Contains(stderr, "local:app/cryptoKeyVersions/2 is DESTROYED") {
		t.Fatalf("rotate with a lost version: %s", stderr)
	}

	// Usage.
	mustRun(t, 2, "rotate", "--config", cfgFile, "extra")
	_, stderr = mustRun(t, 2, "rotate", "--config", cfgFile, "--keystore.dsn", "")
	if !strings.Contains(stderr, "keystore.dsn is not set") {
		t.Fatalf("no dsn: %q", stderr)
	}
	out, _ = mustRun(t, 0, "help")
	if !strings.Contains(out, "pgcrypt-proxy rotate") {
		t.Fatal("usage does not list rotate")
	}
}

// TestStartRotation: serve's worker runs a pass at startup and stops.
func TestStartRotation(t *testing.T) {
	ctx := t.Context()
	t.Setenv(kms.EnvMasterKey, testMasterKey(5))
	c := pgtest.New(t, pgtest.Options{})
	keyring := filepath.Join(t.TempDir(), "keyring.json")
	mustRun(t, 0, "kms", "local", "init", "--keyring", keyring)
	cfgFile := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfgFile, fmt.Appendf(nil, `client_tls: {mode: disable}
upstream: {tls: {mode: disable}}
keystore: {dsn: %q}
kms:
  local: {type: local, keyring: %q}
`, c.DSN(pgtest.UserSCRAM, pgtest.Database), keyring), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile, true, os.Environ(), nil)
	if err != nil {
		t.Fatal(err)
	}
	keks, err := openKEKs(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, cfg.Keystore.DSN.Value())
	if err != nil {
		t.Fatal(err)
	}
	enc := &encryption{pool: pool, keks: keks}
	defer enc.close()
	store, err := keys.Open(ctx, pool, keks, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Current(ctx, "pii", "local"); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 0, "kms", "local", "rotate", "--keyring", keyring)
	passes := make(chan *keys.PassResult, 4)
	var logs bytes.Buffer
	r, stop := startRotation(ctx, cfg, enc, zerolog.New(&logs), func(res *keys.PassResult) { passes <- res })
	if r == nil {
		t.Fatalf("not started: %s", logs.String())
	}
	select {
	case res := <-passes:
		if !res.OK() || res.Rewrapped != 1 {
			t.Fatalf("startup pass: %+v", res)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no pass at startup")
	}
	stop()
	if !strings.Contains(logs.String(), `"message":"KEK rotation pass"`) || !strings.Contains(logs.String(), `"rewrapped":1`) {
		t.Fatalf("log: %s", logs.String())
	}
}
