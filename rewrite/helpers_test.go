package rewrite

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

const testPolicy = `version: 1
keys:
  pii: {kms: local}
tables:
  public.users:
    ssn:   {key: pii, type: text}
    email: {key: pii, type: text, mode: deterministic}
    dob:   {key: pii, type: date, mode: deterministic}
    age:   {key: pii, type: int4, mode: deterministic}
  accounts:
    iban:  {key: pii, type: text, mode: deterministic}
    note:  {key: pii, type: text}
  app.secrets:
    token: {key: pii, type: text, mode: deterministic}
`

func testAnalyzer(t testing.TB) *Analyzer {
	t.Helper()
	p, err := policy.Parse([]byte(testPolicy), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return NewAnalyzer(p, Options{})
}

// spliced replaces every literal span of r.SQL by a marker naming the
// literal's value, column and use, so tests can compare one string.
func spliced(r *Result) string {
	var b strings.Builder
	cur := 0
	for _, l := range r.Literals {
		b.WriteString(r.SQL[cur:l.Start])
		use := l.Use.String()
		if l.Quant != "" {
			use += " " + l.Quant
		}
		if l.Null {
			fmt.Fprintf(&b, "<NULL %s %s>", l.Column.Name, use)
		} else {
			fmt.Fprintf(&b, "<%s %s %q>", l.Column.Name, use, l.Value)
		}
		cur = l.End
	}
	b.WriteString(r.SQL[cur:])
	return b.String()
}

// paramString summarises Params as "$1=ssn/store $2=- …".
func paramString(ps []Param) string {
	var parts []string
	for i, p := range ps {
		if p.Column == nil {
			parts = append(parts, fmt.Sprintf("$%d=-", i+1))
		} else {
			parts = append(parts, fmt.Sprintf("$%d=%s/%s", i+1, p.Column.Name, p.Use))
		}
	}
	return strings.Join(parts, " ")
}
