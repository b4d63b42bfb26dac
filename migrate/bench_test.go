package migrate

import (
	"testing"
)

// BenchmarkRun measures encrypt-existing on 100,000 rows with three policy
// columns (text randomized, text deterministic, int4), plaintext to
// ciphertext:
// go test ./migrate -run '^$' -bench Run -benchtime 1x
// It reports rows/s (the target: at least 20,000 on a 2-core
// machine). pgtest clusters run with fsync off; the engine itself sets
// synchronous_commit off, so that costs little.
func BenchmarkRun(b *testing.B) {
	const n = 100_000
	f := newFixture(b)
	pol := func(table string) string {
		return `version: 1
keys: {pii: {kms: local}}
tables:
  ` + table + `:
    ssn:   {key: pii, type: text, migrating: true}
    email: {key: pii, type: text, mode: deterministic, migrating: true}
    age:   {key: pii, type: int4, migrating: true}
`
	}
	var rows, secs float64
	for b.Loop() {
		b.StopTimer()
		table := unique("bench")
		f.exec(b, `CREATE TABLE `+table+` (id bigint PRIMARY KEY, name text, ssn bytea, email bytea, age bytea, created timestamptz DEFAULT now())`)
		f.exec(b, `INSERT INTO `+table+` (id, name, ssn, email, age) SELECT i, 'name ' || i, convert_to(lpad(i::text, 9, '0'), 'UTF8'),
			convert_to('user' || i || '@example.com', 'UTF8'), int4send(i % 90) FROM generate_series(1, $1) i`, n)
		f.exec(b, "VACUUM ANALYZE "+table)
		p := parsePolicy(b, pol(table))
		b.StartTimer()
		rep, err := Run(b.Context(), f.pool, p, f.store, Options{Table: table, Schema: f.schema})
		if err != nil {
			b.Fatal(err)
		}
		if rep.RowsUpdated != n {
			b.Fatalf("updated %d rows", rep.RowsUpdated)
		}
		rows += float64(rep.RowsScanned)
		secs += rep.Elapsed.Seconds()
	}
	b.ReportMetric(rows/secs, "rows/s")
}
