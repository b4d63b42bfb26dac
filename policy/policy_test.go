package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const good = `version: 1
keys:
  pii: {kms: local}
  fin: {kms: gcp}
tables:
  public.users:
    ssn:   {key: pii, type: text}
    email: {key: pii, type: text, mode: deterministic}
    age:   {key: fin, type: integer}
  '"Audit"."Log Entries"':
    '"Payload"': {key: pii, type: jsonb, migrating: true}
  orders:
    card: {key: fin, type: text, mode: deterministic}
`

func TestParseGood(t *testing.T) {
	p, err := Parse([]byte(good), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	u := p.Table("public", "users", nil)
	if u == nil {
		t.Fatal("public.users not found")
	}
	if c := u.Column("email"); c == nil || c.Mode != Deterministic || c.Type.Name != "text" || c.Key != "pii" {
		t.Fatalf("email: %+v", c)
	}
	if c := u.Column("age"); c == nil || c.Type.Name != "int4" || c.Type.OID != 23 || c.Mode != Randomized {
		t.Fatalf("age: %+v", c)
	}
	if p.Table("", "users", []string{"app", "public"}) != u {
		t.Fatal("unqualified users not resolved through the search path")
	}
	if p.Table("other", "users", nil) != nil {
		t.Fatal("other.users matched public.users")
	}
	if p.Table("anything", "orders", nil) == nil || p.Table("", "orders", []string{"public"}) == nil {
		t.Fatal("unqualified policy table must match in any schema")
	}
	l := p.Table("Audit", "Log Entries", nil)
	if l == nil || l.Column("Payload") == nil || !l.Column("Payload").Migrating {
		t.Fatalf("quoted identifiers: %+v", l)
	}
	if p.Table("audit", "log entries", nil) != nil {
		t.Fatal("quoted identifiers must keep their case")
	}
	if got := u.Column("ssn").Identity(); got != "public.users.ssn" {
		t.Fatalf("identity %q", got)
	}
	if len(p.Columns()) != 5 {
		t.Fatalf("%d columns", len(p.Columns()))
	}
	for _, sql := range []string{"select * from USERS", "insert into public.orders values (1)", `select "Payload" from "Audit"."Log Entries"`} {
		if !p.MayTouch(sql) {
			t.Errorf("MayTouch(%q) = false", sql)
		}
	}
	if p.MayTouch("select 1") {
		t.Error("MayTouch(select 1) = true")
	}
}

func TestParseReportsEveryProblemWithItsLine(t *testing.T) {
	bad := `version: 1
keys:
  pii: {kms: local}
tables:
  public.users:
    ssn:   {key: nope, type: text}
    email: {key: pii, type: string}
    email: {key: pii, type: text}
    amount: {key: pii, type: numeric, mode: deterministic}
    note: {key: pii, type: text, mode: scrambled}
  a.b.c:
    x: {key: pii, type: text}
`
	_, err := Parse([]byte(bad), "p.yaml")
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		`p.yaml:6: column public.users.ssn: key "nope" is not defined`,
		`p.yaml:7: column public.users.email: unknown type "string"`,
		`p.yaml:8: column public.users.email is listed twice`,
		`p.yaml:9: column public.users.amount: deterministic mode needs`,
		`p.yaml:10: column public.users.note: unknown mode "scrambled"`,
		`p.yaml:11: table "a.b.c"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
}

func TestParseRefusesUnknownFieldsAndVersions(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown top-level":    "version: 1\nkeyz: {}\n",
		"unknown column field": "version: 1\nkeys: {k: {kms: l}}\ntables:\n  t:\n    c: {key: k, type: text, colour: red}\n",
		"version 2":            "version: 2\n",
		"no version":           "keys: {}\n",
		"table listed twice":   "version: 1\nkeys: {k: {kms: l}}\ntables:\n  t:\n    c: {key: k, type: text}\n  T:\n    d: {key: k, type: text}\n",
	} {
		if _, err := Parse([]byte(doc), "p.yaml"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestHolderReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(good)
	h, err := NewHolder(path)
	if err != nil {
		t.Fatal(err)
	}
	first := h.Current()
	if changed, err := h.Reload(); changed || err != nil {
		t.Fatalf("unchanged file: changed=%v err=%v", changed, err)
	}
	write("version: 1\nkeys: {pii: {kms: local}}\ntables:\n  t:\n    c: {key: pii, type: bogus}\n")
	if changed, err := h.Reload(); changed || err == nil {
		t.Fatalf("bad policy: changed=%v err=%v", changed, err)
	}
	if h.Current() != first {
		t.Fatal("a bad policy replaced the good one")
	}
	write("version: 1\nkeys: {pii: {kms: local}}\ntables:\n  t:\n    c: {key: pii, type: text}\n")
	if changed, err := h.Reload(); !changed || err != nil {
		t.Fatalf("good policy: changed=%v err=%v", changed, err)
	}
	if h.Current().Table("", "t", nil) == nil || h.Current().Table("public", "users", nil) != nil {
		t.Fatal("new policy not in force")
	}
	if first.Table("public", "users", nil) == nil {
		t.Fatal("the old policy value was modified")
	}
}
