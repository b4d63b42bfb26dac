package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Issue 5's COPY target: COPY FROM STDIN of copyRows rows with two policy
// columns through the proxy, against COPY of the same rows into the plain
// twin directly: at least copyGoal of direct throughput.
const copyGoal = 0.5

// copyTables are bench_copy_enc (in the bench policy: a randomized and a
// deterministic column) and its plain twin.
var copyTables = []string{
	"DROP TABLE IF EXISTS bench_copy_enc, bench_copy_plain",
	"CREATE TABLE bench_copy_enc (id int, a bytea, b bytea)",
	"CREATE TABLE bench_copy_plain (id int, a text, b text)",
}

// copyResult is the COPY measurement.
type copyResult struct {
	Rows         int     `json:"rows"`
	DirectRowsPS float64 `json:"direct_rows_per_s"`
	ProxyRowsPS  float64 `json:"proxy_rows_per_s"`
	Ratio        float64 `json:"ratio"`
	Check        check   `json:"check"`
}

// copyData is n rows of text-format COPY data: id, a 16-byte and a 27-byte
// value, as the select workloads' rows.
func copyData(n int) []byte {
	var b bytes.Buffer
	b.Grow(n * 56)
	for i := 1; i <= n; i++ {
		a, c, _ := prefillValues(i)
		b.WriteString(strconv.Itoa(i))
		b.WriteByte('\t')
		b.WriteString(a)
		b.WriteByte('\t')
		b.WriteString(c)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// copyBench runs the COPY of rows rows directly into bench_copy_plain and
// through the proxy into bench_copy_enc, back to back.
func (b *bench) copyBench(ctx context.Context, direct, proxy endpoint, rows int) (*copyResult, error) {
	if err := b.execAll(ctx, copyTables[1:]); err != nil {
		return nil, err
	}
	data := copyData(rows)
	run := func(ep endpoint, table string) (time.Duration, error) {
		if err := b.execAll(ctx, []string{"TRUNCATE " + table}); err != nil {
			return 0, err
		}
		dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=%s application_name=pgcrypt-bench-copy",
			ep.host, ep.port, ep.user, ep.db, ep.sslmode())
		conn, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			return 0, err
		}
		defer conn.Close(ctx)
		began := time.Now()
		tag, err := conn.CopyFrom(ctx, io.Reader(bytes.NewReader(data)), "COPY "+table+" (id, a, b) FROM STDIN")
		took := time.Since(began)
		if err != nil {
			return 0, fmt.Errorf("COPY into %s: %w", table, err)
		}
		if tag.RowsAffected() != int64(rows) {
			return 0, fmt.Errorf("COPY into %s: %d rows, want %d", table, tag.RowsAffected(), rows)
		}
		return took, nil
	}
	b.logf("bench: COPY %d rows directly and through the proxy …", rows)
	d, err := run(direct, "bench_copy_plain")
	if err != nil {
		return nil, err
	}
	p, err := run(proxy, "bench_copy_enc")
	if err != nil {
		return nil, err
	}
	r := &copyResult{Rows: rows, DirectRowsPS: float64(rows) / d.Seconds(), ProxyRowsPS: float64(rows) / p.Seconds()}
	r.Ratio = r.ProxyRowsPS / r.DirectRowsPS
	r.Check = check{Issue: 5, Name: fmt.Sprintf("COPY FROM STDIN of %d rows, 2 policy columns, through the proxy >= %.1fx direct", rows, copyGoal),
		Result: verdict(r.Ratio >= copyGoal),
		Detail: fmt.Sprintf("proxy %.0f vs direct %.0f rows/s = %.2fx", r.ProxyRowsPS, r.DirectRowsPS, r.Ratio)}
	// Nothing of it may be plaintext.
	var n int
	if err := b.admin.QueryRow(ctx, "SELECT count(*) FROM bench_copy_enc WHERE position('Customer'::bytea in a) > 0").Scan(&n); err != nil {
		return nil, err
	}
	if n != 0 {
		return nil, fmt.Errorf("COPY through the proxy stored %d plaintext rows", n)
	}
	return r, nil
}

// printCopy prints the COPY measurement.
func printCopy(w io.Writer, r *copyResult) {
	if r == nil {
		return
	}
	fmt.Fprintf(w, "\nCOPY FROM STDIN, %d rows (id, 2 policy columns), interleaved:\n", r.Rows)
	fmt.Fprintf(w, "  direct (plain table)      %10.0f rows/s\n", r.DirectRowsPS)
	fmt.Fprintf(w, "  proxy (encrypted table)   %10.0f rows/s   %.2fx direct\n", r.ProxyRowsPS, r.Ratio)
	fmt.Fprintf(w, "Targets (issue 5):\n  %-4s  %s: %s\n", r.Check.Result, r.Check.Name, r.Check.Detail)
}
