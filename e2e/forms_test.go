package e2e

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// TestEncryptStatementForms runs each supported statement form through the
// proxy in the extended and the simple protocol and checks what it leaves.
func TestEncryptStatementForms(t *testing.T) {
	e := startEncrypting(t)
	for name, mode := range map[string]pgx.QueryExecMode{"extended": pgx.QueryExecModeCacheStatement, "simple": pgx.QueryExecModeSimpleProtocol} {
		t.Run(name, func(t *testing.T) {
			mustExec(t, `TRUNCATE `+e.users)
			ctx := ctxFor(t, 30*time.Second)
			conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database), withExecMode(mode))
			defer conn.Close(ctx)
			exec := func(sql string, args ...any) {
				t.Helper()
				if _, err := conn.Exec(ctx, sql, args...); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			one := func(sql string, args ...any) string {
				t.Helper()
				var s string
				if err := conn.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
				return s
			}
			u := e.users
			// Multi-row VALUES with DEFAULT and NULL, columns out of order.
			exec(`INSERT INTO `+u+` (email, id, ssn, age) VALUES ($1, 1, $2, DEFAULT), ('b@x', 2, NULL, $3), ($4, 3, 'ssn-3', 33)`, "a@x", "ssn-1", int32(22), "c@x")
			if got := one(`SELECT ssn FROM ` + u + ` WHERE email = 'a@x'`); got != "ssn-1" {
				t.Fatalf("multi-row: %q", got)
			}
			// Multi-column SET, table alias, schema-qualified name.
			exec(`UPDATE public.`+u+` AS x SET (ssn, email) = ($1, $2) WHERE x.id = 2`, "ssn-2", "b2@x")
			if got := one(`SELECT x.ssn FROM `+u+` x WHERE x.email = $1`, "b2@x"); got != "ssn-2" {
				t.Fatalf("multi-column SET: %q", got)
			}
			// Data-modifying CTE with RETURNING.
			if got := one(`WITH ins AS (INSERT INTO `+u+` (id, ssn, email) VALUES (4, $1, $2) RETURNING ssn, email) SELECT ssn FROM ins`, "ssn-4", "d@x"); got != "ssn-4" {
				t.Fatalf("CTE: %q", got)
			}
			// <> and NOT IN on the deterministic column; IS NULL on any.
			var n int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+u+` WHERE email <> $1 AND email NOT IN ('c@x', 'zzz@x')`, "a@x").Scan(&n); err != nil || n != 2 {
				t.Fatalf("<> / NOT IN: %d %v", n, err)
			}
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+u+` WHERE age IS NULL AND ssn IS NOT NULL`).Scan(&n); err != nil || n != 2 {
				t.Fatalf("IS NULL: %d %v", n, err)
			}
			// GROUP BY and DISTINCT on the deterministic column.
			exec(`INSERT INTO ` + u + ` (id, email) VALUES (5, 'a@x')`)
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM (SELECT email FROM `+u+` GROUP BY email) g`).Scan(&n); err != nil || n != 4 {
				t.Fatalf("GROUP BY: %d %v", n, err)
			}
			// INSERT … SELECT within the same column, and ON CONFLICT.
			exec(`INSERT INTO ` + u + ` (id, ssn) SELECT id + 100, ssn FROM ` + u + ` WHERE id = 1`)
			if got := one(`SELECT ssn FROM ` + u + ` WHERE id = 101`); got != "ssn-1" {
				t.Fatalf("INSERT SELECT same column: %q", got)
			}
			exec(`INSERT INTO `+u+` (id, ssn) VALUES (101, $1) ON CONFLICT (id) DO UPDATE SET ssn = $1`, "ssn-101")
			if got := one(`SELECT ssn FROM ` + u + ` WHERE id = 101`); got != "ssn-101" {
				t.Fatalf("ON CONFLICT SET $1: %q", got)
			}
			// A join reading policy columns of one side.
			if got := one(`SELECT a.ssn FROM ` + u + ` a JOIN ` + u + ` b ON a.id = b.id - 100 WHERE b.id = 101`); got != "ssn-1" {
				t.Fatalf("join: %q", got)
			}
			// DELETE by the deterministic column.
			exec(`DELETE FROM `+u+` WHERE email IN ($1, 'b2@x')`, "a@x")
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+u).Scan(&n); err != nil || n != 3 {
				t.Fatalf("after DELETE: %d %v", n, err)
			}
			e.assertNoPlaintext(t, 3, "ssn-3", "c@x")
			e.assertNoPlaintext(t, 4, "ssn-4", "d@x")
		})
	}
}
