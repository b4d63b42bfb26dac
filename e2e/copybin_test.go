package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// A text or CSV COPY FROM into a table whose columns the proxy can convert
// exactly goes on to the server in binary (proxy/copybin.go). These tests
// hold it to PostgreSQL's own text COPY: the same data copied directly
// into an unencrypted twin table must give the same rows, and every input
// the server refuses in text must be refused through the proxy too.

type copyMix struct {
	e           *encSetup
	mix, twin   string
	gen         string // a policy table with a generated column
	uu, uuTwin  string // a policy table with a uuid column, and its plain twin
	conn        *pgx.Conn
	columnsList string
}

const copyMixColumns = "id, i2, i4, b, t, v, c, j, jb, secret, tag"

func startCopyMix(t *testing.T) *copyMix {
	t.Helper()
	e := startEncrypting(t)
	m := &copyMix{e: e, mix: uniqueName("mix"), twin: uniqueName("mixplain"), gen: uniqueName("gen"), uu: uniqueName("uu"), uuTwin: uniqueName("uuplain"), columnsList: copyMixColumns}
	ctx := ctxFor(t, 30*time.Second)
	const cols = `id int8 PRIMARY KEY, i2 int2, i4 int4, b bool, t text, v varchar(5), c char(3), j json, jb jsonb`
	for _, sql := range []string{
		`CREATE TABLE ` + m.mix + ` (` + cols + `, secret bytea, tag bytea)`,
		`CREATE TABLE ` + m.twin + ` (` + cols + `, secret text, tag text)`,
		`CREATE TABLE ` + m.gen + ` (id int, twice int GENERATED ALWAYS AS (id * 2) STORED, secret bytea, at numeric)`,
		`CREATE TABLE ` + m.uu + ` (id int, u uuid, secret bytea)`,
		`CREATE TABLE ` + m.uuTwin + ` (id int, u uuid, secret text)`,
	} {
		if err := e.cluster.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	extra := "  public." + m.mix + ":\n    secret: {key: pii, type: text}\n    tag: {key: pii, type: text, mode: deterministic}\n" +
		"  public." + m.gen + ":\n    secret: {key: pii, type: text}\n" +
		"  public." + m.uu + ":\n    secret: {key: pii, type: text}\n"
	if err := os.WriteFile(e.policyFile, []byte(policyFor(e.users, extra)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.p.signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.p.waitLog(t, 10*time.Second, "policy reloaded", func(le logEntry) bool { return le.str("message") == "policy reloaded" })
	m.conn = connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	t.Cleanup(func() { m.conn.Close(context.Background()) })
	return m
}

// copyBoth copies data into the mix table through the proxy and into the
// twin directly, returning both errors.
func (m *copyMix) copyBoth(t *testing.T, opts, data string) (proxyErr, directErr error) {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	stmt := func(table string) string {
		return `COPY ` + table + ` (` + m.columnsList + `) FROM STDIN` + opts
	}
	_, proxyErr = m.conn.PgConn().CopyFrom(ctx, strings.NewReader(data), stmt(m.mix))
	direct := connect(t, directDSN(pgtest.UserSCRAM))
	defer direct.Close(ctx)
	_, directErr = direct.PgConn().CopyFrom(ctx, strings.NewReader(data), stmt(m.twin))
	return proxyErr, directErr
}

// rows reads the mix table through the proxy and the twin directly, each
// as text lines in id order.
func (m *copyMix) rows(t *testing.T) (proxied, direct []string) {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	read := func(conn *pgx.Conn, table string) []string {
		q := `SELECT id, i2, i4, b, t, v, c, j::text, jb::text, secret, tag FROM ` + table + ` ORDER BY id`
		rs, err := conn.Query(ctx, q, pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		var out []string
		for rs.Next() {
			vals := rs.RawValues()
			parts := make([]string, len(vals))
			for i, v := range vals {
				if v == nil {
					parts[i] = "NULL"
				} else {
					parts[i] = fmt.Sprintf("%q", v)
				}
			}
			out = append(out, strings.Join(parts, "|"))
		}
		if err := rs.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	direct2 := connect(t, directDSN(pgtest.UserSCRAM))
	defer direct2.Close(ctx)
	return read(m.conn, m.mix), read(direct2, m.twin)
}

func (m *copyMix) truncate(t *testing.T) {
	t.Helper()
	if err := m.e.cluster.Exec(ctxFor(t, 10*time.Second), `TRUNCATE `+m.mix+`, `+m.twin); err != nil {
		t.Fatal(err)
	}
}

func TestCopyTextGoesUpstreamBinary(t *testing.T) {
	m := startCopyMix(t)
	text := strings.Join([]string{
		"1\t 42 \t+7\tt\tplain\tabc\tab\t{\"a\": [1, 2]}\t{\"b\":1,\"a\":2}\tsecret one\ttag-1",
		"2\t-32768\t-2147483648\t TRUE \ttab\\there\\nnewline\tünïcø\tx\t[]\t[1, \"x\"]\t\\x41\\101\\\\\tünï",
		"3\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N",
		"4\t32767\t2147483647\t yes\t\tv\t\tnull\t{}\t\ttag-1",
		"5\t0\t-0\toff\tback\\\\slash\tfive5\tccc\t\"s\"\t\"s\"\tNULL-looking \\\\N\ttag-5",
		"6\t1\t1\t1\tx\\\\.y\ta\tb\t1\t1\ts\t t",
		"7\t2\t2\t0\t\\u00e9\tb\tc\t2\t2\tt\t\\t",
		"8\t3\t3\tn\t\\0101\tc\td\t3\t3\tu\tu",
		"9\t4\t4\tO\\N\td\t\te\t4\t4\tv\tv",
	}, "\n") + "\n"
	perr, derr := m.copyBoth(t, "", text)
	if perr != nil || derr != nil {
		t.Fatalf("text COPY: proxy %v, direct %v", perr, derr)
	}
	m.e.p.waitLog(t, 5*time.Second, "binary upstream", func(le logEntry) bool { return le.str("copy_upstream") == "binary" })
	p, d := m.rows(t)
	if strings.Join(p, "\n") != strings.Join(d, "\n") {
		t.Fatalf("text COPY through the proxy differs from PostgreSQL's:\nproxy:  %q\ndirect: %q", p, d)
	}
	if len(p) != 9 {
		t.Fatalf("%d rows", len(p))
	}
	// Only ciphertext in the policy columns.
	direct := connect(t, directDSN(pgtest.UserSCRAM))
	defer direct.Close(context.Background())
	var n int
	if err := direct.QueryRow(ctxFor(t, 10*time.Second),
		`SELECT count(*) FROM `+m.mix+` WHERE position('secret'::bytea in secret) > 0 OR position('tag-'::bytea in tag) > 0 OR get_byte(secret, 0) <> 193`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("plaintext in %d rows (%v)", n, err)
	}

	// \. ends the data wherever it stands on its line: the line's part
	// before it is the last row.
	m.truncate(t)
	perr, derr = m.copyBoth(t, "", "1\t1\t1\tt\tlast\tv\tc\t1\t1\ts\tt\\.\n2\t1\t1\tt\tignored\tv\tc\t1\t1\ts\tt\n")
	if perr != nil || derr != nil {
		t.Fatalf("end marker after a row: proxy %v, direct %v", perr, derr)
	}
	p, d = m.rows(t)
	if strings.Join(p, "\n") != strings.Join(d, "\n") || len(p) != 1 {
		t.Fatalf("end marker after a row:\nproxy:  %q\ndirect: %q", p, d)
	}

	m.truncate(t)
	csv := strings.Join([]string{
		`id,i2,i4,b,t,v,c,j,jb,secret,tag`,
		`1,1,1,true,"comma, inside","q""t",,"{""a"": 1}","{""a"": 1}","multi` + "\n" + `line",""`,
		`2,,,,,"",x,,,,`,
		`3, 5 ,6,false,"\N",\N,"  ",,,"a""b",c`,
		"4,7,8,yes,\"crlf\r\ninside\",v,w,9,9,s,t",
	}, "\n") + "\n"
	perr, derr = m.copyBoth(t, " WITH (FORMAT csv, HEADER true)", csv)
	if perr != nil || derr != nil {
		t.Fatalf("CSV COPY: proxy %v, direct %v", perr, derr)
	}
	p, d = m.rows(t)
	if strings.Join(p, "\n") != strings.Join(d, "\n") || len(p) != 4 {
		t.Fatalf("CSV COPY through the proxy differs from PostgreSQL's:\nproxy:  %q\ndirect: %q", p, d)
	}

	m.truncate(t)
	custom := "1|x|1|t|nul|v|c|1|1|s|NUL\n2|NUL|2|f|a\\|b|v|c|1|1|NUL|t\n"
	m.columnsList = "id, i2, i4, b, t, v, c, j, jb, secret, tag"
	perr, derr = m.copyBoth(t, " WITH (DELIMITER '|', NULL 'NUL')", custom)
	if perr == nil || derr == nil {
		t.Fatalf("'x' is no int2: proxy %v, direct %v", perr, derr)
	}
	custom = "1|3|1|t|nul|v|c|1|1|s|NUL\n2|NUL|2|f|a\\|b|v|c|1|1|NUL|t\n"
	perr, derr = m.copyBoth(t, " WITH (DELIMITER '|', NULL 'NUL')", custom)
	if perr != nil || derr != nil {
		t.Fatalf("custom delimiter and NULL: proxy %v, direct %v", perr, derr)
	}
	p, d = m.rows(t)
	if strings.Join(p, "\n") != strings.Join(d, "\n") || len(p) != 2 {
		t.Fatalf("custom COPY through the proxy differs:\nproxy:  %q\ndirect: %q", p, d)
	}
}

// TestCopyBinaryUpstreamRefusesWhatPostgresRefuses: each row is refused by
// PostgreSQL's text COPY; through the proxy the COPY must fail as well, and
// leave nothing behind.
func TestCopyBinaryUpstreamRefusesWhatPostgresRefuses(t *testing.T) {
	m := startCopyMix(t)
	good := "\t1\t1\tt\tx\tv\tc\t1\t1\ts\tt"
	bad := map[string]string{
		"int2 overflow":        "1\t32768\t1\tt\tx\tv\tc\t1\t1\ts\tt",
		"int4 overflow":        "1\t1\t2147483648\tt\tx\tv\tc\t1\t1\ts\tt",
		"int4 fraction":        "1\t1\t1.5\tt\tx\tv\tc\t1\t1\ts\tt",
		"int4 empty":           "1\t1\t\tt\tx\tv\tc\t1\t1\ts\tt",
		"int4 hex before 16":   "1\t1\t0x10\tt\tx\tv\tc\t1\t1\ts\tt",
		"int4 underscore":      "1\t1\t1_000\tt\tx\tv\tc\t1\t1\ts\tt",
		"int8 junk":            "1x\t1\t1\tt\tx\tv\tc\t1\t1\ts\tt",
		"bool maybe":           "1\t1\t1\tmaybe\tx\tv\tc\t1\t1\ts\tt",
		"bool o":               "1\t1\t1\to\tx\tv\tc\t1\t1\ts\tt",
		"bool empty":           "1\t1\t1\t\tx\tv\tc\t1\t1\ts\tt",
		"bool 10":              "1\t1\t1\t10\tx\tv\tc\t1\t1\ts\tt",
		"varchar too long":     "1\t1\t1\tt\tx\ttoolong\tc\t1\t1\ts\tt",
		"char too long":        "1\t1\t1\tt\tx\tv\tcccc\t1\t1\ts\tt",
		"json invalid":         "1\t1\t1\tt\tx\tv\tc\t{bad\t1\t1\ts\tt",
		"jsonb invalid":        "1\t1\t1\tt\tx\tv\tc\t1\t{bad\ts\tt",
		"NUL byte escaped":     "1\t1\t1\tt\ta\\000b\tv\tc\t1\t1\ts\tt",
		"invalid UTF-8":        "1\t1\t1\tt\ta\\377b\tv\tc\t1\t1\ts\tt",
		"stray carriage ret":   "1\t1\t1\tt\ta\rb\tv\tc\t1\t1\ts\tt",
		"marker mid-line":      "1\t1\t1\tt\tx\\.y\tv\tc\t1\t1\ts\tt",
		"too few fields":       "1\t1\t1\tt\tx\tv\tc\t1\t1\ts",
		"too many fields":      "1\t1\t1\tt\tx\tv\tc\t1\t1\ts\tt\textra",
		"mixed line endings":   "1" + good + "\r\n2" + good,
		"mixed line endings 2": "1" + good + "\n2" + good + "\r",
	}
	for name, row := range bad {
		t.Run(name, func(t *testing.T) {
			data := "0" + good + "\n" + row + "\n"
			if strings.HasPrefix(name, "mixed") {
				data = row + "\n"
			}
			perr, derr := m.copyBoth(t, "", data)
			if derr == nil {
				t.Fatalf("PostgreSQL accepted %q: the test is wrong", row)
			}
			if perr == nil {
				t.Fatalf("the proxy accepted what PostgreSQL refuses (%v)", derr)
			}
			p, d := m.rows(t)
			if len(p) != 0 || len(d) != 0 {
				t.Fatalf("a failed COPY left rows: %q %q", p, d)
			}
		})
	}
}

// TestCopyTextStaysTextForOtherTypes: a table with a column type the proxy
// does not convert keeps the text format upstream and still round-trips.
func TestCopyTextStaysTextForOtherTypes(t *testing.T) {
	e := startEncrypting(t)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(context.Background())
	ctx := ctxFor(t, 30*time.Second)
	// users has policy columns of several types plus "name text": all
	// convertible, so add a numeric column to force the text path.
	if err := e.cluster.Exec(ctx, `ALTER TABLE `+e.users+` ADD COLUMN extra numeric`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	conn = connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	if _, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tsecret-a\t1.50\n2\t\\N\t\\N\n"), `COPY `+e.users+` (id, ssn, extra) FROM STDIN`); err != nil {
		t.Fatal(err)
	}
	var ssn string
	var extra string
	if err := conn.QueryRow(ctx, `SELECT ssn, extra::text FROM `+e.users+` WHERE id = 1`).Scan(&ssn, &extra); err != nil || ssn != "secret-a" || extra != "1.50" {
		t.Fatalf("read back %q %q %v", ssn, extra, err)
	}
	for _, le := range e.p.logs.entries() {
		if le.str("copy_upstream") == "binary" {
			t.Fatal("a COPY with a numeric column went upstream in binary")
		}
	}
	direct := connect(t, directDSN(pgtest.UserSCRAM))
	defer direct.Close(ctx)
	var stored []byte
	if err := direct.QueryRow(ctx, `SELECT ssn FROM `+e.users+` WHERE id = 1`).Scan(&stored); err != nil || len(stored) == 0 || stored[0] != 0xC1 || strings.Contains(string(stored), "secret-a") {
		t.Fatalf("stored %x (%v)", stored, err)
	}
}

// TestCopyWithoutColumnListSkipsGenerated: COPY t FROM STDIN without a
// column list means every column but the generated ones, on both the
// binary and the text path.
func TestCopyWithoutColumnListSkipsGenerated(t *testing.T) {
	m := startCopyMix(t)
	ctx := ctxFor(t, 30*time.Second)
	// gen has a numeric column: the text path.
	if _, err := m.conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tsecret-x\t1.5\n"), `COPY `+m.gen+` FROM STDIN`); err != nil {
		t.Fatalf("text path: %v", err)
	}
	// Without the numeric column: the binary path.
	if err := m.e.cluster.Exec(ctx, `ALTER TABLE `+m.gen+` DROP COLUMN at`); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, m.e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	if _, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("2\tsecret-y\n"), `COPY `+m.gen+` FROM STDIN`); err != nil {
		t.Fatalf("binary path: %v", err)
	}
	m.e.p.waitLog(t, 5*time.Second, "binary upstream", func(le logEntry) bool { return le.str("copy_upstream") == "binary" })
	rows, err := conn.Query(ctx, `SELECT id, twice, secret FROM `+m.gen+` ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var id, twice int
		var secret string
		if err := rows.Scan(&id, &twice, &secret); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%d %d %s", id, twice, secret))
	}
	if strings.Join(got, ",") != "1 2 secret-x,2 4 secret-y" {
		t.Fatalf("got %q (%v)", got, rows.Err())
	}
}

// TestCopyCountsValuesInMetrics: values encrypted by COPY FROM and
// decrypted by COPY TO count in pgcrypt_values_{en,de}crypted_total.
func TestCopyCountsValuesInMetrics(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 30*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	before := scrape(t, e.p)
	if _, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("1\ta\ta@x\n2\t\\N\tb@x\n3\tc\tc@x\n"), `COPY `+e.users+` (id, ssn, email) FROM STDIN`); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if _, err := conn.PgConn().CopyTo(ctx, &out, `COPY `+e.users+` (id, ssn, email) TO STDOUT`); err != nil {
		t.Fatal(err)
	}
	if out.String() != "1\ta\ta@x\n2\t\\N\tb@x\n3\tc\tc@x\n" {
		t.Fatalf("COPY TO: %q", out.String())
	}
	after := scrape(t, e.p)
	for name, want := range map[string]float64{`pgcrypt_values_encrypted_total`: 5, `pgcrypt_values_decrypted_total`: 5,
		`pgcrypt_copy_from_total{upstream="binary"}`: 1, `pgcrypt_copy_from_total{upstream="text"}`: 0} {
		if got := after[name] - before[name]; got != want {
			t.Errorf("%s grew by %v, want %v", name, got, want)
		}
	}
}

// TestCopyUUIDParity: uuid columns go upstream in binary, read as uuid_in
// reads them, and what it refuses is refused.
func TestCopyUUIDParity(t *testing.T) {
	m := startCopyMix(t)
	ctx := ctxFor(t, 30*time.Second)
	direct := connect(t, directDSN(pgtest.UserSCRAM))
	defer direct.Close(ctx)
	both := func(data string) (error, error) {
		_, perr := m.conn.PgConn().CopyFrom(ctx, strings.NewReader(data), `COPY `+m.uu+` (id, u, secret) FROM STDIN`)
		_, derr := direct.PgConn().CopyFrom(ctx, strings.NewReader(data), `COPY `+m.uuTwin+` (id, u, secret) FROM STDIN`)
		return perr, derr
	}
	good := "1\ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\ts1\n" +
		"2\tA0EEBC999C0B4EF8BB6D6BB9BD380A11\ts2\n" +
		"3\t{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}\ts3\n" +
		"4\ta0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11\ts4\n" +
		"5\t\\N\t\\N\n"
	if perr, derr := both(good); perr != nil || derr != nil {
		t.Fatalf("proxy %v, direct %v", perr, derr)
	}
	m.e.p.waitLog(t, 5*time.Second, "binary upstream", func(le logEntry) bool { return le.str("copy_upstream") == "binary" })
	read := func(conn *pgx.Conn, table string) string {
		rows, err := conn.Query(ctx, `SELECT id, u::text, secret FROM `+table+` ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var id int
			var u, secret *string
			if err := rows.Scan(&id, &u, &secret); err != nil {
				t.Fatal(err)
			}
			str := func(p *string) string {
				if p == nil {
					return "NULL"
				}
				return *p
			}
			out = append(out, fmt.Sprintf("%d:%s:%s", id, str(u), str(secret)))
		}
		return strings.Join(out, ",")
	}
	p, d := read(m.conn, m.uu), read(direct, m.uuTwin)
	if p != d {
		t.Fatalf("proxy %q\ndirect %q", p, d)
	}
	for _, bad := range []string{
		"9\ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1\ts\n",   // 31 digits
		"9\ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111\ts\n", // 33 digits
		"9\ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-\ts\n", // trailing hyphen
		"9\ta0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11\ts\n", // hyphen after 3 digits
		"9\t{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\ts\n", // unclosed brace
		"9\ta0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11\ts\n", // double hyphen
		"9\t a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\ts\n", // leading space
		"9\tg0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\ts\n",  // not hex
		"9\t\ts\n", // empty
	} {
		perr, derr := both(bad)
		if derr == nil {
			t.Fatalf("PostgreSQL accepted %q: the test is wrong", bad)
		}
		if perr == nil {
			t.Fatalf("the proxy accepted %q, which PostgreSQL refuses (%v)", bad, derr)
		}
	}
}
