package rewrite

import (
	"strconv"
	"testing"
)

func TestMemo(t *testing.T) {
	a := testAnalyzer(t)
	cold := NewAnalyzer(a.Policy(), Options{CacheSize: -1})
	ins := func(n int) string {
		s := strconv.Itoa(n)
		return "INSERT INTO users (id, ssn, email) VALUES (" + s + ", '123-45-" + s + "', 'u" + s + "@x')"
	}
	var m Memo
	same := func(sql string, sp []string) {
		t.Helper()
		got, want := a.AnalyzeMemo(&m, sql, sp), cold.Analyze(sql, sp)
		if spliced(got) != spliced(want) || got.Touches != want.Touches || (got.Refusal == nil) != (want.Refusal == nil) {
			t.Fatalf("%q:\nmemo %s %v\nfull %s %v", sql, spliced(got), got.Refusal, spliced(want), want.Refusal)
		}
	}
	same(ins(1), nil) // full analysis: remembered
	if m.t == nil || m.prefix != "INSERT INTO users (id, ssn, email) VALUES (" || m.sp != "public" {
		t.Fatalf("memo after a full analysis: %+v", m)
	}
	first := m.t
	for n := 2; n < 50; n++ {
		same(ins(n), nil)
	}
	if m.t != first {
		t.Error("the memo moved although every statement had its shape")
	}
	// Same prefix, another shape: the full path, and the memo follows.
	other := "INSERT INTO users (id, ssn, email) VALUES (7, '1', 'a'), (8, '2', 'b')"
	same(other, nil)
	if m.t == first {
		t.Error("memo kept the old template after another shape")
	}
	same(ins(51), nil)
	// Another search path: the memo's template is not used for it.
	same(ins(52), []string{"other", "public"})
	if m.sp != "other\x00public" {
		t.Errorf("memo search path %q", m.sp)
	}
	same(ins(53), nil)
	// A new Analyzer (a policy reload) ignores a memo from the old one.
	b := NewAnalyzer(a.Policy(), Options{})
	r := b.AnalyzeMemo(&m, ins(54), nil)
	if spliced(r) != spliced(cold.Analyze(ins(54), nil)) || m.a != b {
		t.Errorf("after reload: %s, memo analyzer %p want %p", spliced(r), m.a, b)
	}
	// Statements that touch no policy table, and refused ones, leave
	// the memo alone and are answered as without it.
	before := m
	same("INSERT INTO orders (id, total) VALUES (1, 2)", nil)
	same("INSERT INTO users (id, ssn) SELECT id, name FROM orders", nil)
	if m != before {
		t.Errorf("memo changed by statements without a template: %+v", m)
	}
}

// BenchmarkMemoHit: BenchmarkFingerprintHit's statements through a
// session's Memo.
func BenchmarkMemoHit(b *testing.B) {
	a := testAnalyzer(b)
	var m Memo
	a.AnalyzeMemo(&m, seedInsert, nil)
	qs := changingInserts()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r := a.AnalyzeMemo(&m, qs[i%len(qs)], nil)
		if len(r.Literals) != 3 {
			b.Fatal("literals", len(r.Literals), r.Refusal)
		}
		i++
	}
}

func TestPathIs(t *testing.T) {
	for _, sp := range [][]string{nil, {}, {"public"}, {"a", "b"}, {"a", "", "b"}, {"$user", "public"}} {
		j := joinPath(sp)
		if !pathIs(sp, j) {
			t.Errorf("pathIs(%q, joinPath) = false", sp)
		}
		for _, other := range []string{"", "public", "a\x00b", "a\x00b\x00", "ab", "a\x00\x00b"} {
			if got := pathIs(sp, other); got != (j == other) {
				t.Errorf("pathIs(%q, %q) = %v, joinPath gives %q", sp, other, got, j)
			}
		}
	}
}
