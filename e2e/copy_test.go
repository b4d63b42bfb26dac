package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// copyRows are awkward values: NULLs, delimiters, quotes, backslashes,
// newlines and multi-byte UTF-8.
var copyRows = []struct {
	id    int
	ssn   *string
	email string
	age   *int32
}{
	{1, ptr("plain-1"), "one@x", ptr(int32(1))},
	{2, nil, "two@x", nil},
	{3, ptr("tab\there, comma \"quoted\" and back\\slash"), "three@x", ptr(int32(-3))},
	{4, ptr("line\nbreak\r\nand \\N not null"), "vier@x", ptr(int32(2147483647))},
	{5, ptr("ünïcødé ✓ 日本語"), "fünf@x", ptr(int32(0))},
	{6, ptr(""), "six@x", ptr(int32(6))},
}

func ptr[T any](v T) *T { return &v }

// checkCopied reads every row back through the proxy and directly.
func (e *encSetup) checkCopied(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	for _, r := range copyRows {
		var ssn *string
		var email string
		var age *int32
		if err := conn.QueryRow(ctx, `SELECT ssn, email, age FROM `+e.users+` WHERE id = $1`, r.id).Scan(&ssn, &email, &age); err != nil {
			t.Fatalf("row %d: %v", r.id, err)
		}
		if (ssn == nil) != (r.ssn == nil) || ssn != nil && *ssn != *r.ssn || email != r.email || (age == nil) != (r.age == nil) || age != nil && *age != *r.age {
			t.Fatalf("row %d read back %v %q %v", r.id, ssn, email, age)
		}
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+e.users+` WHERE email = $1`, r.email).Scan(&n); err != nil || n != 1 {
			t.Fatalf("lookup %q: %d %v", r.email, n, err)
		}
		plain := []string{r.email}
		if r.ssn != nil && *r.ssn != "" {
			plain = append(plain, *r.ssn)
		}
		e.assertNoPlaintext(t, r.id, plain...)
	}
}

func textCopyData(format string) string {
	var b strings.Builder
	for _, r := range copyRows {
		ssn, age := `\N`, `\N`
		if format == "csv" {
			ssn, age = "", ""
		}
		if r.ssn != nil {
			if format == "csv" {
				// Quoted only where needed, as PostgreSQL writes CSV.
				ssn = *r.ssn
				if ssn == "" || strings.ContainsAny(ssn, ",\"\r\n") {
					ssn = `"` + strings.ReplaceAll(ssn, `"`, `""`) + `"`
				}
			} else {
				ssn = strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`).Replace(*r.ssn)
			}
		}
		if r.age != nil {
			age = fmt.Sprint(*r.age)
		}
		sep := "\t"
		if format == "csv" {
			sep = ","
		}
		// Columns in another order than the table's.
		b.WriteString(strings.Join([]string{r.email, age, fmt.Sprint(r.id), ssn}, sep) + "\n")
	}
	return b.String()
}

func TestCopyFromAndTo(t *testing.T) {
	e := startEncrypting(t)
	for _, format := range []string{"text", "csv"} {
		for _, chunk := range []int{1, 7, 64 << 10} {
			t.Run(fmt.Sprintf("%s/chunk%d", format, chunk), func(t *testing.T) {
				mustExec(t, `TRUNCATE `+e.users)
				w := e.wire(t)
				data := []byte(textCopyData(format))
				msgs := []pgproto3.FrontendMessage{}
				for len(data) > 0 {
					n := min(chunk, len(data))
					msgs = append(msgs, &pgproto3.CopyData{Data: data[:n]})
					data = data[n:]
				}
				msgs = append(msgs, &pgproto3.CopyDone{})
				w.fe.Send(&pgproto3.Query{String: `COPY ` + e.users + ` (email, age, id, ssn) FROM STDIN WITH (FORMAT ` + format + `)`})
				if err := w.fe.Flush(); err != nil {
					t.Fatal(err)
				}
				if m, err := w.fe.Receive(); err != nil {
					t.Fatal(err)
				} else if _, ok := m.(*pgproto3.CopyInResponse); !ok {
					t.Fatalf("got %T", m)
				}
				got := w.send(1, msgs...)
				expectSeq(t, "copy in", got, fmt.Sprintf("C COPY %d", len(copyRows)), "Z I")
				conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
				defer conn.Close(context.Background())
				e.checkCopied(t, conn)

				// COPY TO STDOUT through the proxy gives back exactly what went in.
				var out bytes.Buffer
				if _, err := conn.PgConn().CopyTo(ctxFor(t, 10*time.Second), &out,
					`COPY `+e.users+` (email, age, id, ssn) TO STDOUT WITH (FORMAT `+format+`)`); err != nil {
					t.Fatal(err)
				}
				if want := textCopyData(format); out.String() != want {
					t.Fatalf("COPY TO:\n got %q\nwant %q", out.String(), want)
				}
			})
		}
	}
}

func TestCopyBinaryAndPgx(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 60*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	var src [][]any
	for _, r := range copyRows {
		src = append(src, []any{r.id, r.ssn, r.email, r.age})
	}
	// pgx's CopyFrom uses the binary format.
	n, err := conn.CopyFrom(ctx, pgx.Identifier{e.users}, []string{"id", "ssn", "email", "age"}, pgx.CopyFromRows(src))
	if err != nil || n != int64(len(copyRows)) {
		t.Fatalf("CopyFrom: %d %v", n, err)
	}
	e.checkCopied(t, conn)
	var out bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &out, `COPY `+e.users+` (id, ssn) TO STDOUT WITH (FORMAT binary)`); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out.Bytes(), []byte("ünïcødé ✓ 日本語")) || !bytes.HasPrefix(out.Bytes(), []byte("PGCOPY\n\xff\r\n\x00")) {
		t.Fatalf("binary COPY TO not decrypted: %q", out.Bytes())
	}
	var all bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &all, `COPY `+e.users+` TO STDOUT`); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(all.String(), "plain-1") || !strings.Contains(all.String(), "vier@x") {
		t.Fatalf("COPY table TO without a column list not decrypted: %q", all.String())
	}
	var sel bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &sel, `COPY (SELECT id, email FROM `+e.users+`) TO STDOUT`); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sel.String(), "1\tone@x\n") {
		t.Fatalf("COPY (SELECT) TO not decrypted: %q", sel.String())
	}
	// Many rows, to cross chunk boundaries in both directions.
	mustExec(t, `TRUNCATE `+e.users)
	var many [][]any
	for i := 0; i < 20000; i++ {
		many = append(many, []any{i, fmt.Sprintf("ssn-%06d", i), fmt.Sprintf("u%d@x", i), int32(i)})
	}
	if n, err := conn.CopyFrom(ctx, pgx.Identifier{e.users}, []string{"id", "ssn", "email", "age"}, pgx.CopyFromRows(many)); err != nil || n != 20000 {
		t.Fatalf("CopyFrom 20000: %d %v", n, err)
	}
	var text bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &text, `COPY `+e.users+` (id, ssn) TO STDOUT`); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(text.String(), "\n"); lines != 20000 || !strings.Contains(text.String(), "19999\tssn-019999\n") {
		t.Fatalf("COPY TO of 20000 rows: %d lines", lines)
	}
	e.assertNoPlaintext(t, 19999, "ssn-019999", "u19999@x")
}

func TestCopyRefusals(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	// A malformed row fails the whole COPY with its row number.
	_, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tok\n2\tbad\textra\n"), `COPY `+e.users+` (id, ssn) FROM STDIN`)
	if err == nil || !strings.Contains(err.Error(), "row 2") {
		t.Fatalf("malformed row: %v", err)
	}
	_, err = conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tnot-a-number\n"), `COPY `+e.users+` (id, age) FROM STDIN`)
	if err == nil || !strings.Contains(err.Error(), "row 1") || strings.Contains(err.Error(), "not-a-number") {
		t.Fatalf("invalid value: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+e.users).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a failed COPY left %d rows (%v)", n, err)
	}
	// Server-side files would bypass the proxy.
	if _, err := conn.Exec(ctx, `COPY `+e.users+` FROM '/tmp/x'`); pgCode(err) != "0A000" {
		t.Fatalf("COPY FROM file: %v", err)
	}
}

func TestCopyPsql(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	dir := t.TempDir()
	in := filepath.Join(dir, "in.csv")
	if err := os.WriteFile(in, []byte(textCopyData("csv")), 0o600); err != nil {
		t.Fatal(err)
	}
	outFile := filepath.Join(dir, "out.csv")
	dsn := e.p.DSN(pgtest.UserSCRAM, pgtest.Database)
	if out, err := psql(t, ctx, dsn, "-c", `\copy `+e.users+` (email, age, id, ssn) FROM '`+in+`' WITH (FORMAT csv)`,
		"-c", `\copy `+e.users+` (email, age, id, ssn) TO '`+outFile+`' WITH (FORMAT csv)`); err != nil {
		t.Fatalf("psql \\copy: %v\n%s", err, out)
	}
	got, err := os.ReadFile(outFile)
	if err != nil || string(got) != textCopyData("csv") {
		t.Fatalf("\\copy round trip:\n got %q\nwant %q (%v)", got, textCopyData("csv"), err)
	}
	conn := connect(t, dsn)
	defer conn.Close(ctx)
	e.checkCopied(t, conn)
}

func TestPgDumpThroughProxy(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 60*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn, email, age) VALUES (1, 'dump-ssn-1', 'dump1@x', 7), (2, NULL, 'dump2@x', NULL)`); err != nil {
		t.Fatal(err)
	}
	dump := func(dsn string) string {
		out, err := tool(t, ctx, "pg_dump", nil, "--dbname", dsn, "--table", e.users, "--no-owner", "--no-privileges")
		if err != nil {
			t.Fatalf("pg_dump: %v\n%s", err, out)
		}
		return out
	}
	through := dump(e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	if !strings.Contains(through, "dump-ssn-1") || !strings.Contains(through, "dump1@x") {
		t.Fatalf("pg_dump through the proxy is not plaintext:\n%s", through)
	}
	direct := dump(directDSN(pgtest.UserSCRAM))
	if strings.Contains(direct, "dump-ssn-1") || strings.Contains(direct, "dump1@x") {
		t.Fatalf("pg_dump directly shows plaintext:\n%s", direct)
	}
	// Restore the plaintext dump into a plain database.
	db := uniqueName("restored")
	mustExec(t, `CREATE DATABASE `+db+` OWNER `+pgtest.UserSCRAM)
	t.Cleanup(func() { _ = shared.Exec(context.Background(), `DROP DATABASE IF EXISTS `+db+` WITH (FORCE)`) })
	file := filepath.Join(t.TempDir(), "dump.sql")
	if err := os.WriteFile(file, []byte(through), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := psql(t, ctx, shared.DSN(pgtest.UserSCRAM, db), "-v", "ON_ERROR_STOP=1", "-q", "-f", file); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	rc := connect(t, shared.DSN(pgtest.UserSCRAM, db))
	defer rc.Close(ctx)
	var ssn, email string
	if err := rc.QueryRow(ctx, `SELECT convert_from(ssn, 'UTF8'), convert_from(email, 'UTF8') FROM `+e.users+` WHERE id = 1`).Scan(&ssn, &email); err != nil || ssn != "dump-ssn-1" || email != "dump1@x" {
		t.Fatalf("restored %q %q %v", ssn, email, err)
	}
}
