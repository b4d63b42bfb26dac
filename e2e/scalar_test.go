package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// TestPreparedLookupScalarForm: with one live data key, a prepared
// equality lookup on a deterministic column goes to the server as
// col = $1::bytea (one candidate), not as the padded = ANY($1::bytea[]),
// and finds the same rows, for =, <> and NULL; an IN list keeps the array
// form; a client cannot take the proxy's own statement names.
func TestPreparedLookupScalarForm(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database), withExecMode(pgx.QueryExecModeCacheStatement))
	defer conn.Close(ctx)
	for i, email := range []string{"a@x", "b@x", "c@x"} {
		if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, email) VALUES ($1, $2)`, i+1, email); err != nil {
			t.Fatal(err)
		}
	}
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	for k := 0; k < 7; k++ { // past PostgreSQL's five custom plans
		if n := count(`SELECT count(*) FROM `+e.users+` WHERE email = $1`, "b@x"); n != 1 {
			t.Fatalf("= : %d", n)
		}
		if n := count(`SELECT count(*) FROM `+e.users+` WHERE $1 <> email`, "b@x"); n != 2 {
			t.Fatalf("<> : %d", n)
		}
		if n := count(`SELECT count(*) FROM `+e.users+` WHERE email = $1`, nil); n != 0 {
			t.Fatalf("= NULL: %d", n)
		}
		if n := count(`SELECT count(*) FROM `+e.users+` WHERE email IN ($1, $2)`, "a@x", "c@x"); n != 2 {
			t.Fatalf("IN: %d", n)
		}
	}
	prepared := map[string]bool{}
	rows, err := conn.Query(ctx, `SELECT statement FROM pg_prepared_statements`, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		prepared[s] = true
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	for _, want := range []string{
		`SELECT count(*) FROM ` + e.users + ` WHERE email = $1::bytea`,
		`SELECT count(*) FROM ` + e.users + ` WHERE email <> $1::bytea`,
		`SELECT count(*) FROM ` + e.users + ` WHERE (email = ANY($1::bytea[] || $2::bytea[]))`,
	} {
		if !prepared[want] {
			t.Errorf("not prepared: %s\nprepared: %v", want, prepared)
		}
	}

	w := e.wire(t)
	got := w.send(1,
		&pgproto3.Parse{Name: "pgcrypt-proxy:1", Query: `SELECT 1`},
		&pgproto3.Sync{})
	expectSeq(t, "reserved name", got, "E 42939", "Z I")
	if s := strings.Join(got, " "); !strings.Contains(s, "42939") {
		t.Fatal(s)
	}
}
