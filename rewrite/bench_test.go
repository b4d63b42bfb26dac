package rewrite

import (
	"strconv"
	"testing"
)

// BenchmarkMayTouchFalse is the common path: a statement that cannot name
// a policy table is forwarded without parsing.
func BenchmarkMayTouchFalse(b *testing.B) {
	a := testAnalyzer(b)
	q := "SELECT o.id, o.total, o.created_at FROM orders o JOIN items i ON i.order_id = o.id WHERE o.customer_id = $1 AND o.status = $2 ORDER BY o.created_at DESC LIMIT 50"
	b.ReportAllocs()
	for b.Loop() {
		if a.Analyze(q, nil).Touches {
			b.Fatal("touches")
		}
	}
}

// BenchmarkExactHit: a prepared statement's text seen before.
func BenchmarkExactHit(b *testing.B) {
	a := testAnalyzer(b)
	q := "SELECT id, ssn, email FROM users WHERE email = $1 AND id > $2"
	a.Analyze(q, nil)
	b.ReportAllocs()
	for b.Loop() {
		if a.Analyze(q, nil).Refusal != nil {
			b.Fatal("refused")
		}
	}
}

// BenchmarkFingerprintHit: a simple-protocol statement whose literals
// change every time.
func BenchmarkFingerprintHit(b *testing.B) {
	a := testAnalyzer(b)
	a.Analyze(seedInsert, nil)
	qs := changingInserts()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r := a.Analyze(qs[i%len(qs)], nil)
		if len(r.Literals) != 3 {
			b.Fatal("literals", len(r.Literals), r.Refusal)
		}
		i++
	}
}

const seedInsert = "INSERT INTO users(id, ssn, email, age) VALUES (0, 'seed', 'seed@example.com', 1)"

// changingInserts is seedInsert's statement with 1024 sets of constants.
func changingInserts() []string {
	qs := make([]string, 1024)
	for i := range qs {
		n := strconv.Itoa(i + 1)
		qs[i] = "INSERT INTO users(id, ssn, email, age) VALUES (" + n + ", '123-45-" + n + "', 'u" + n + "@example.com', " + n + ")"
	}
	return qs
}

// BenchmarkFullAnalysis: a statement never seen before (no caches).
func BenchmarkFullAnalysis(b *testing.B) {
	a := NewAnalyzer(testAnalyzer(b).Policy(), Options{CacheSize: -1})
	q := "INSERT INTO users(id, ssn, email, age) VALUES (1, '123-45-6789', 'a@example.com', 42) ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email RETURNING id, ssn"
	b.ReportAllocs()
	for b.Loop() {
		if r := a.Analyze(q, nil); len(r.Literals) != 3 {
			b.Fatal("literals", r.Refusal)
		}
	}
}

// BenchmarkPolicyMayTouch is policy.MayTouch on the same statement, for
// comparison with BenchmarkMayTouchFalse (which also returns a Result).
func BenchmarkPolicyMayTouch(b *testing.B) {
	p := testAnalyzer(b).Policy()
	q := "SELECT o.id, o.total, o.created_at FROM orders o JOIN items i ON i.order_id = o.id WHERE o.customer_id = $1 AND o.status = $2 ORDER BY o.created_at DESC LIMIT 50"
	b.ReportAllocs()
	for b.Loop() {
		if p.MayTouch(q) {
			b.Fatal("touches")
		}
	}
}
