package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

var execModes = []struct {
	name string
	mode pgx.QueryExecMode
}{
	{"simple_protocol", pgx.QueryExecModeSimpleProtocol},
	{"cache_statement", pgx.QueryExecModeCacheStatement}, // pgx's default
	{"cache_describe", pgx.QueryExecModeCacheDescribe},
	{"describe_exec", pgx.QueryExecModeDescribeExec},
	{"exec", pgx.QueryExecModeExec},
}

// TestQueries runs simple and extended protocol queries through the proxy
// with pgx in every exec mode, database/sql and psql, and checks the values.
func TestQueries(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	table := uniqueName("e2e_queries")
	mustExec(t, "CREATE TABLE "+table+" (id int PRIMARY KEY, name text NOT NULL, at timestamptz)")

	when := time.Date(2024, 2, 29, 13, 14, 15, 123456000, time.UTC)
	for i, m := range execModes {
		t.Run("pgx/"+m.name, func(t *testing.T) {
			conn := connect(t, p.DSN(pgtest.UserSCRAM, ""), withExecMode(m.mode))
			ctx := ctxFor(t, 30*time.Second)

			var (
				n    int
				s    string
				f    float64
				b    []byte
				ts   time.Time
				null *string
			)
			err := conn.QueryRow(ctx, "SELECT $1::int + 1, $2::text || '!', $3::float8 * 2, $4::bytea, $5::timestamptz, NULL::text",
				41, "héllo 'quoted' \\ \"x\"", 1.25, []byte{0, 1, 2, 255}, when).Scan(&n, &s, &f, &b, &ts, &null)
			if err != nil {
				t.Fatal(err)
			}
			if n != 42 || s != "héllo 'quoted' \\ \"x\"!" || f != 2.5 || !bytes.Equal(b, []byte{0, 1, 2, 255}) ||
				!ts.Equal(when) || null != nil {
				t.Fatalf("got %d %q %v %x %v %v", n, s, f, b, ts, null)
			}

			base := (i + 1) * 1000
			for j := 0; j < 50; j++ {
				tag, err := conn.Exec(ctx, "INSERT INTO "+table+" (id, name, at) VALUES ($1, $2, $3)", base+j, fmt.Sprintf("row %d", j), when)
				if err != nil {
					t.Fatal(err)
				}
				if tag.String() != "INSERT 0 1" {
					t.Fatalf("command tag %q, want INSERT 0 1", tag)
				}
			}
			rows, err := conn.Query(ctx, "SELECT id, name FROM "+table+" WHERE id >= $1 AND id < $2 ORDER BY id", base, base+1000)
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			for rows.Next() {
				var id int
				var name string
				if err := rows.Scan(&id, &name); err != nil {
					t.Fatal(err)
				}
				if id != base+got || name != fmt.Sprintf("row %d", got) {
					t.Fatalf("row %d: got (%d, %q)", got, id, name)
				}
				got++
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if got != 50 {
				t.Fatalf("read back %d rows, want 50", got)
			}
			tag, err := conn.Exec(ctx, "UPDATE "+table+" SET name = name || '+' WHERE id >= $1 AND id < $2", base, base+10)
			if err != nil || tag.RowsAffected() != 10 {
				t.Fatalf("update: %v, %v", tag, err)
			}

			// A large result, spanning many reads and writes of the proxy.
			var sum, cnt int64
			var maxLen int
			if err := conn.QueryRow(ctx, "SELECT sum(g), count(*), max(length(repeat('x', g % 3000))) FROM generate_series(1, $1::int) g", 20000).
				Scan(&sum, &cnt, &maxLen); err != nil {
				t.Fatal(err)
			}
			if sum != 20000*20001/2 || cnt != 20000 || maxLen != 2999 {
				t.Fatalf("aggregate: sum %d count %d max %d", sum, cnt, maxLen)
			}
			rows, err = conn.Query(ctx, "SELECT g, repeat('y', g) FROM generate_series(1, 2000) g")
			if err != nil {
				t.Fatal(err)
			}
			got = 0
			for rows.Next() {
				var g int
				var y string
				if err := rows.Scan(&g, &y); err != nil {
					t.Fatal(err)
				}
				got++
				if g != got || len(y) != g {
					t.Fatalf("row %d: g=%d len=%d", got, g, len(y))
				}
			}
			if rows.Err() != nil || got != 2000 {
				t.Fatalf("large result: %d rows, %v", got, rows.Err())
			}
		})
	}

	t.Run("database_sql", func(t *testing.T) {
		db, err := sql.Open("pgx", p.DSN(pgtest.UserMD5, ""))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		db.SetMaxOpenConns(3)
		ctx := ctxFor(t, 30*time.Second)
		var s string
		if err := db.QueryRowContext(ctx, "SELECT current_user || ':' || $1::text", "ok").Scan(&s); err != nil {
			t.Fatal(err)
		}
		if s != pgtest.UserMD5+":ok" {
			t.Fatalf("got %q", s)
		}
		// Rolled back and committed transactions.
		for _, commit := range []bool{false, true} {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			id := 900000 + map[bool]int{false: 1, true: 2}[commit]
			if _, err := tx.ExecContext(ctx, "INSERT INTO "+table+" (id, name) VALUES ($1, $2)", id, "tx"); err != nil {
				t.Fatal(err)
			}
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
			var n int
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+table+" WHERE id = $1", id).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{false: 0, true: 1}[commit]; n != want {
				t.Fatalf("commit=%v: %d rows, want %d", commit, n, want)
			}
		}
		// Concurrent use of the pool: several proxied sessions at once.
		var wg sync.WaitGroup
		errs := make(chan error, 30)
		for i := 0; i < 30; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var n int
				if err := db.QueryRowContext(ctx, "SELECT $1::int * 3", i).Scan(&n); err != nil {
					errs <- err
				} else if n != i*3 {
					errs <- fmt.Errorf("got %d want %d", n, i*3)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("psql", func(t *testing.T) {
		ctx := ctxFor(t, 30*time.Second)
		out, err := psql(t, ctx, p.DSN(pgtest.UserSCRAM, ""), "-c", "SELECT 40 + 2")
		if err != nil || strings.TrimSpace(out) != "42" {
			t.Fatalf("psql -c: %v\n%s", err, out)
		}
		out, err = psql(t, ctx, p.DSN(pgtest.UserPassword, ""),
			"-c", "SELECT 'a' || 'b'; SELECT count(*) FROM "+table+" WHERE id = 900002",
			"-c", "SELECT current_user")
		if err != nil || strings.TrimSpace(out) != "ab\n1\n"+pgtest.UserPassword {
			t.Fatalf("psql multi -c: %v\n%s", err, out)
		}
		out, err = psql(t, ctx, p.DSN(pgtest.UserSCRAM, ""), "-c", "SELECT 1/0")
		if err == nil || !strings.Contains(out, "division by zero") {
			t.Fatalf("psql error: want division by zero, got %v\n%s", err, out)
		}
	})
}

// batchResults runs a pipelined batch and describes each result.
func batchResults(t *testing.T, conn *pgx.Conn, table string) []string {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	b := &pgx.Batch{}
	for i := 0; i < 10; i++ {
		b.Queue("SELECT $1::int * 10", i)
	}
	b.Queue("INSERT INTO "+table+" VALUES ($1) RETURNING id", 7)
	b.Queue("SELECT 1 / $1::int", 0) // error in the middle
	for i := 0; i < 5; i++ {
		b.Queue("SELECT $1::int + 100", i)
	}
	br := conn.SendBatch(ctx, b)
	var out []string
	for i := 0; i < b.Len(); i++ {
		var v int
		if err := br.QueryRow().Scan(&v); err != nil {
			out = append(out, fmt.Sprintf("%d: error %s %s", i, pgCode(err), err))
		} else {
			out = append(out, fmt.Sprintf("%d: %d", i, v))
		}
	}
	out = append(out, fmt.Sprintf("close: %v", br.Close()))
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatalf("connection unusable after batch: %v", err)
	}
	out = append(out, fmt.Sprintf("rows after: %d", n))
	return out
}

// TestPipelinedBatch sends pgx batches (one pipeline: every statement, then
// one Sync) with an error in the middle, directly and through the proxy, and
// requires the same outcome for every statement.
func TestPipelinedBatch(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	for _, m := range []struct {
		name string
		mode pgx.QueryExecMode
	}{{"simple_protocol", pgx.QueryExecModeSimpleProtocol}, {"cache_statement", pgx.QueryExecModeCacheStatement}, {"exec", pgx.QueryExecModeExec}} {
		t.Run(m.name, func(t *testing.T) {
			table := uniqueName("e2e_batch")
			mustExec(t, "CREATE TABLE "+table+" (id int)")
			direct := batchResults(t, connect(t, directDSN(pgtest.UserSCRAM), withExecMode(m.mode)), table)
			proxied := batchResults(t, connect(t, p.DSN(pgtest.UserSCRAM, ""), withExecMode(m.mode)), table)
			if !reflect.DeepEqual(direct, proxied) {
				t.Fatalf("batch differs:\ndirect:\n  %s\nproxy:\n  %s", strings.Join(direct, "\n  "), strings.Join(proxied, "\n  "))
			}
			// The outcome itself: values up to the error, 22012 there, and
			// the failed implicit transaction inserted nothing.
			if direct[3] != "3: 30" || !strings.Contains(direct[11], "error 22012") || direct[len(direct)-1] != "rows after: 0" {
				t.Fatalf("unexpected batch outcome:\n  %s", strings.Join(direct, "\n  "))
			}
		})
	}

	t.Run("large", func(t *testing.T) {
		// Hundreds of statements in one pipeline, larger than any socket
		// buffer, so both pumps must keep moving while the other is busy.
		table := uniqueName("e2e_batch_large")
		mustExec(t, "CREATE TABLE "+table+" (id int PRIMARY KEY, pad text)")
		conn := connect(t, p.DSN(pgtest.UserSCRAM, ""))
		ctx := ctxFor(t, 30*time.Second)
		b := &pgx.Batch{}
		const n = 2000
		pad := strings.Repeat("p", 500)
		for i := 0; i < n; i++ {
			b.Queue("INSERT INTO "+table+" VALUES ($1, $2)", i, pad)
		}
		b.Queue("SELECT count(*), sum(id) FROM " + table)
		br := conn.SendBatch(ctx, b)
		for i := 0; i < n; i++ {
			tag, err := br.Exec()
			if err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("statement %d: %v %v", i, tag, err)
			}
		}
		var cnt, sum int
		if err := br.QueryRow().Scan(&cnt, &sum); err != nil {
			t.Fatal(err)
		}
		if err := br.Close(); err != nil {
			t.Fatal(err)
		}
		if cnt != n || sum != n*(n-1)/2 {
			t.Fatalf("count %d sum %d", cnt, sum)
		}
	})
}

// TestPreparedStatementReuse prepares once and executes many times.
func TestPreparedStatementReuse(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	conn := connect(t, p.DSN(pgtest.UserSCRAM, ""))
	ctx := ctxFor(t, 60*time.Second)
	sd, err := conn.Prepare(ctx, "double_it", "SELECT $1::int * 2, $2::text")
	if err != nil {
		t.Fatal(err)
	}
	if len(sd.ParamOIDs) != 2 || len(sd.Fields) != 2 {
		t.Fatalf("statement description: %d params, %d fields", len(sd.ParamOIDs), len(sd.Fields))
	}
	for i := 0; i < 500; i++ {
		var n int
		var s string
		if err := conn.QueryRow(ctx, "double_it", i, strconv.Itoa(i)).Scan(&n, &s); err != nil {
			t.Fatalf("execution %d: %v", i, err)
		}
		if n != 2*i || s != strconv.Itoa(i) {
			t.Fatalf("execution %d: got %d %q", i, n, s)
		}
	}
	// pgx's statement cache: the same text many times is parsed once.
	for i := 0; i < 300; i++ {
		var n int
		if err := conn.QueryRow(ctx, "SELECT $1::int + 1", i).Scan(&n); err != nil || n != i+1 {
			t.Fatalf("cached statement %d: %d %v", i, n, err)
		}
	}
	var named, total int
	if err := conn.QueryRow(ctx, "SELECT count(*) FILTER (WHERE name = 'double_it'), count(*) FROM pg_prepared_statements").
		Scan(&named, &total); err != nil {
		t.Fatal(err)
	}
	if named != 1 || total > 4 {
		t.Fatalf("pg_prepared_statements: %d named double_it, %d in all (want 1, ≤4)", named, total)
	}
	if err := conn.Deallocate(ctx, "double_it"); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements WHERE name = 'double_it'").Scan(&named); err != nil || named != 0 {
		t.Fatalf("after Deallocate: %d, %v", named, err)
	}
}

// TestCopy moves rows in and out with COPY through the proxy: pgx CopyFrom,
// pgconn CopyTo, and psql's \copy in both directions.
func TestCopy(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	src := uniqueName("e2e_copy_src")
	dst := uniqueName("e2e_copy_dst")
	mustExec(t, "CREATE TABLE "+src+" (id int PRIMARY KEY, name text, payload bytea);"+
		"CREATE TABLE "+dst+" (id int PRIMARY KEY, name text, payload bytea)")
	conn := connect(t, p.DSN(pgtest.UserSCRAM, ""))
	direct := connect(t, directDSN(pgtest.UserSCRAM))
	ctx := ctxFor(t, 60*time.Second)

	const n = 10000
	rows := make([][]any, n)
	var wantNameLen int
	for i := range rows {
		name := fmt.Sprintf("name %d\twith tab\nnewline \\ backslash é", i)
		var nameV any = name
		if i%97 == 0 {
			nameV = nil
		} else {
			wantNameLen += len([]rune(name))
		}
		rows[i] = []any{i, nameV, bytes.Repeat([]byte{byte(i)}, i%50)}
	}
	copied, err := conn.CopyFrom(ctx, pgx.Identifier{src}, []string{"id", "name", "payload"}, pgx.CopyFromRows(rows))
	if err != nil {
		t.Fatal(err)
	}
	if copied != n {
		t.Fatalf("CopyFrom reported %d rows, want %d", copied, n)
	}
	var cnt, nulls, nameLen, payloadLen int
	if err := direct.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE name IS NULL), sum(length(name)), sum(length(payload)) FROM "+src).
		Scan(&cnt, &nulls, &nameLen, &payloadLen); err != nil {
		t.Fatal(err)
	}
	wantPayload := 0
	for i := 0; i < n; i++ {
		wantPayload += i % 50
	}
	if cnt != n || nulls != (n+96)/97 || nameLen != wantNameLen || payloadLen != wantPayload {
		t.Fatalf("table after CopyFrom: %d rows, %d nulls, name length %d (want %d), payload %d (want %d)",
			cnt, nulls, nameLen, wantNameLen, payloadLen, wantPayload)
	}

	for _, sql := range []string{
		"COPY " + src + " TO STDOUT",
		"COPY (SELECT * FROM " + src + " ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
		"COPY (SELECT * FROM " + src + " ORDER BY id) TO STDOUT WITH (FORMAT binary)",
	} {
		var viaProxy, viaDirect bytes.Buffer
		tag, err := conn.PgConn().CopyTo(ctx, &viaProxy, sql)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		if tag.RowsAffected() != n {
			t.Fatalf("%s: tag %q, want %d rows", sql, tag, n)
		}
		if _, err := direct.PgConn().CopyTo(ctx, &viaDirect, sql); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(viaProxy.Bytes(), viaDirect.Bytes()) {
			t.Fatalf("%s: %d bytes through the proxy differ from %d bytes direct", sql, viaProxy.Len(), viaDirect.Len())
		}
	}

	// A COPY that fails half-way reports PostgreSQL's error and leaves the
	// connection usable.
	dup := [][]any{{n + 1, "a", []byte{}}, {n + 1, "b", []byte{}}}
	_, err = conn.CopyFrom(ctx, pgx.Identifier{src}, []string{"id", "name", "payload"}, pgx.CopyFromRows(dup))
	if pgCode(err) != "23505" {
		t.Fatalf("duplicate key in COPY: got %v, want SQLSTATE 23505", err)
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("connection unusable after failed COPY: %v", err)
	}

	// psql \copy out and back in.
	file := filepath.Join(t.TempDir(), "rows.copy")
	out, err := psql(t, ctx, p.DSN(pgtest.UserSCRAM, ""), "-c", `\copy `+src+` TO '`+file+`'`)
	if err != nil || strings.TrimSpace(out) != "COPY "+strconv.Itoa(n) {
		t.Fatalf("psql \\copy to: %v\n%s", err, out)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if lines := bytes.Count(data, []byte("\n")); lines != n {
		t.Fatalf("\\copy wrote %d lines, want %d", lines, n)
	}
	out, err = psql(t, ctx, p.DSN(pgtest.UserSCRAM, ""), "-c", `\copy `+dst+` FROM '`+file+`'`)
	if err != nil || strings.TrimSpace(out) != "COPY "+strconv.Itoa(n) {
		t.Fatalf("psql \\copy from: %v\n%s", err, out)
	}
	var missing, dstCount int
	if err := direct.QueryRow(ctx, "SELECT (SELECT count(*) FROM (SELECT * FROM "+src+" EXCEPT SELECT * FROM "+dst+") d), (SELECT count(*) FROM "+dst+")").
		Scan(&missing, &dstCount); err != nil {
		t.Fatal(err)
	}
	if missing != 0 || dstCount != n {
		t.Fatalf("after \\copy round trip: %d rows differ, %d rows in copy (want 0, %d)", missing, dstCount, n)
	}
}

// TestListenNotify delivers notifications between proxied sessions and from
// a direct one, with PostgreSQL's own backend PIDs.
func TestListenNotify(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	listener := connect(t, p.DSN(pgtest.UserSCRAM, ""))
	notifier := connect(t, p.DSN(pgtest.UserMD5, ""))
	direct := connect(t, directDSN(pgtest.UserSCRAM))
	ctx := ctxFor(t, 30*time.Second)
	channel := uniqueName("e2e_chan")

	var pid uint32
	if err := notifier.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if pid != notifier.PgConn().PID() {
		t.Fatalf("BackendKeyData pid %d is not the backend's pid %d", notifier.PgConn().PID(), pid)
	}
	if _, err := listener.Exec(ctx, "LISTEN "+channel); err != nil {
		t.Fatal(err)
	}
	wait := func(d time.Duration) (*pgconn.Notification, error) {
		wctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return listener.WaitForNotification(wctx)
	}

	if _, err := notifier.Exec(ctx, "SELECT pg_notify($1, $2)", channel, "hello through the proxy"); err != nil {
		t.Fatal(err)
	}
	n, err := wait(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if n.Channel != channel || n.Payload != "hello through the proxy" || n.PID != pid {
		t.Fatalf("got notification %+v, want channel %s from pid %d", n, channel, pid)
	}

	if _, err := direct.Exec(ctx, "NOTIFY "+channel+", 'from direct'"); err != nil {
		t.Fatal(err)
	}
	n, err = wait(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if n.Payload != "from direct" || n.PID != direct.PgConn().PID() {
		t.Fatalf("got notification %+v from pid %d", n, direct.PgConn().PID())
	}

	// Inside a transaction nothing is delivered before COMMIT.
	tx, err := notifier.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "NOTIFY "+channel+", 'after commit'"); err != nil {
		t.Fatal(err)
	}
	if n, err := wait(300 * time.Millisecond); err == nil {
		t.Fatalf("notification %+v delivered before COMMIT", n)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	n, err = wait(5 * time.Second)
	if err != nil || n.Payload != "after commit" {
		t.Fatalf("after commit: %+v %v", n, err)
	}
	// A notification that arrives while the listener runs a query.
	if _, err := notifier.Exec(ctx, "NOTIFY "+channel+", 'during query'"); err != nil {
		t.Fatal(err)
	}
	var one int
	if err := listener.QueryRow(ctx, "SELECT 1 FROM pg_sleep(0.2)").Scan(&one); err != nil {
		t.Fatal(err)
	}
	n, err = wait(5 * time.Second)
	if err != nil || n.Payload != "during query" {
		t.Fatalf("during query: %+v %v", n, err)
	}
}

// noticeAndErrorTranscript runs statements that raise NOTICEs, WARNINGs and
// errors, and describes every notice and error field.
func noticeAndErrorTranscript(t *testing.T, dsn string, mode pgx.QueryExecMode) []string {
	t.Helper()
	var mu sync.Mutex
	var out []string
	conn := connect(t, dsn, withExecMode(mode), func(c *pgx.ConnConfig) {
		c.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			mu.Lock()
			defer mu.Unlock()
			out = append(out, fmt.Sprintf("  notice %+v", *n))
		}
	})
	ctx := ctxFor(t, 30*time.Second)
	if _, err := conn.Exec(ctx, "CREATE TEMP TABLE e2e_uniq (id int PRIMARY KEY); INSERT INTO e2e_uniq VALUES (1)",
		pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		"DO $$BEGIN RAISE NOTICE 'notice %', 42; RAISE WARNING 'careful' USING DETAIL = 'd', HINT = 'h'; END$$",
		"INSERT INTO e2e_uniq VALUES (1)",
		"SELEC 1",
		"SELECT 1/0",
		"SELECT * FROM e2e_no_such_table",
		"DO $$BEGIN RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'custom', DETAIL = 'details', HINT = 'hint'; END$$",
		"SELECT 'not a number'::int",
		"DROP TABLE IF EXISTS e2e_never_existed",
	} {
		_, err := conn.Exec(ctx, stmt)
		mu.Lock()
		out = append(out, stmt)
		var pe *pgconn.PgError
		switch {
		case errors.As(err, &pe):
			e := *pe
			e.SchemaName = "" // the temp schema (pg_temp_N) differs per session
			out = append(out, fmt.Sprintf("  error %+v", e))
		case err != nil:
			out = append(out, "  client error "+err.Error())
		default:
			out = append(out, "  ok")
		}
		mu.Unlock()
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]string(nil), out...)
}

// TestNoticeAndErrorPassthrough compares NOTICEs and errors through the
// proxy with the same statements run directly, field for field.
func TestNoticeAndErrorPassthrough(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	for _, m := range []struct {
		name string
		mode pgx.QueryExecMode
	}{{"simple_protocol", pgx.QueryExecModeSimpleProtocol}, {"extended", pgx.QueryExecModeCacheStatement}} {
		t.Run(m.name, func(t *testing.T) {
			direct := noticeAndErrorTranscript(t, directDSN(pgtest.UserSCRAM), m.mode)
			proxied := noticeAndErrorTranscript(t, p.DSN(pgtest.UserSCRAM, ""), m.mode)
			if !reflect.DeepEqual(direct, proxied) {
				t.Fatalf("notices and errors differ\ndirect:\n%s\nproxy:\n%s", strings.Join(direct, "\n"), strings.Join(proxied, "\n"))
			}
			all := strings.Join(direct, "\n")
			for _, want := range []string{"Code:23505", "Code:42601", "Code:22012", "Code:42P01", "Code:P0001", "Code:22P02",
				"Message:notice 42", "Message:careful", `Message:table "e2e_never_existed" does not exist, skipping`} {
				if !strings.Contains(all, want) {
					t.Errorf("transcript lacks %q:\n%s", want, all)
				}
			}
		})
	}
}

// TestCancel cancels a long query through the proxy with pgx's context
// cancellation (a CancelRequest on a new, plaintext connection).
func TestCancel(t *testing.T) {
	t.Parallel()
	p := startProxy(t)
	for _, m := range []struct {
		name string
		mode pgx.QueryExecMode
	}{{"simple_protocol", pgx.QueryExecModeSimpleProtocol}, {"extended", pgx.QueryExecModeCacheStatement}} {
		t.Run(m.name, func(t *testing.T) {
			conn := connect(t, p.DSN(pgtest.UserSCRAM, ""), withExecMode(m.mode), withCancelRequest)
			qctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			began := time.Now()
			_, err := conn.Exec(qctx, "SELECT pg_sleep(30)")
			took := time.Since(began)
			if pgCode(err) != "57014" {
				t.Fatalf("got %v, want SQLSTATE 57014 (query_canceled)", err)
			}
			if took > 5*time.Second {
				t.Fatalf("cancel took %v", took)
			}
			ctx := ctxFor(t, 10*time.Second)
			var n int
			if err := conn.QueryRow(ctx, "SELECT $1::int", 7).Scan(&n); err != nil || n != 7 {
				t.Fatalf("connection unusable after cancel: %d %v", n, err)
			}
			pid := strconv.FormatUint(uint64(conn.PgConn().PID()), 10)
			p.waitLog(t, 5*time.Second, "cancel request forwarded for backend "+pid, func(e logEntry) bool {
				return e.str("message") == "cancel request forwarded" && e.str("cancel_pid") == pid
			})
		})
	}
}
