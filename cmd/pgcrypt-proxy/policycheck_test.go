package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

func TestPolicyCheck(t *testing.T) {
	c := pgtest.New(t, pgtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Exec(ctx, `CREATE SCHEMA app; CREATE TABLE app.users (id int, ssn bytea, email text); CREATE TABLE public.orders (id int, card bytea)`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := write("c.yaml", "upstream: {tls: {mode: disable}}\nclient_tls: {mode: disable}\nkms:\n  local: {type: local, keyring: k.json}\npolicy_file: "+filepath.Join(dir, "p.yaml")+"\n")
	dsn := c.DSN(pgtest.UserSCRAM, pgtest.Database)

	write("p.yaml", `version: 1
keys: {pii: {kms: local}, other: {kms: vault}}
tables:
  app.users:
    ssn:   {key: pii, type: text}
    email: {key: pii, type: text, mode: deterministic}
    phone: {key: pii, type: text}
  orders:
    card: {key: other, type: text}
  app.missing:
    x: {key: pii, type: text}
`)
	var out, errOut bytes.Buffer
	if code := run([]string{"policy", "check", "--config", cfg, "--dsn", dsn}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d, want 1\n%s%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{
		`kms "vault" is not defined`, "column app.users.email is text", "column app.users.phone does not exist", "table app.missing does not exist",
	} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("missing %q in:\n%s", want, errOut.String())
		}
	}
	if strings.Contains(errOut.String(), "orders.card") || strings.Contains(errOut.String(), "app.users.ssn") {
		t.Errorf("a valid column was reported:\n%s", errOut.String())
	}

	write("p.yaml", "version: 1\nkeys: {pii: {kms: local}}\ntables:\n  app.users:\n    ssn: {key: pii, type: text}\n  orders:\n    card: {key: pii, type: text}\n")
	out.Reset()
	errOut.Reset()
	if code := run([]string{"policy", "check", "--config", cfg, "--dsn", dsn}, &out, &errOut); code != 0 {
		t.Fatalf("valid policy: exit %d\n%s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "2 tables, 2 encrypted columns") {
		t.Fatalf("output: %s", out.String())
	}
}
