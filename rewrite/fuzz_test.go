package rewrite

import (
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// FuzzAnalyze feeds arbitrary SQL to the analyser. It must never panic,
// never fail internally, and never let a value reach a policy column
// unencrypted: checkOutput looks at the SQL the proxy would send with an
// independent, simpler rule.
func FuzzAnalyze(f *testing.F) {
	for _, s := range seedCorpus {
		f.Add(s)
	}
	a := testAnalyzer(f)
	f.Fuzz(func(t *testing.T, sql string) {
		r := a.Analyze(sql, nil)
		if r == nil {
			t.Fatal("nil result")
		}
		if r.Refusal != nil {
			if r.Refusal.Code == CodeInternalError {
				t.Fatalf("internal refusal for %q: %v", sql, r.Refusal)
			}
			return
		}
		// Served again from the cache, the answer is the same.
		if r2 := a.Analyze(sql, nil); r2.SQL != r.SQL || len(r2.Literals) != len(r.Literals) {
			t.Fatalf("cached analysis differs for %q", sql)
		}
		checkOutput(t, a, sql, r)
	})
}

// checkOutput re-parses Result.SQL (the text sent to the server) and
// applies a conservative rule: a constant or parameter directly in an
// INSERT VALUES position, a SET assignment or an = / <> / IN with a bare
// reference to a column of a policy table must be a reported slot (a
// literal placeholder or a parameter the Params mark as a policy value).
func checkOutput(t testing.TB, a *Analyzer, input string, r *Result) {
	for _, l := range r.Literals {
		if l.Start < 0 || l.End > len(r.SQL) || l.Start > l.End {
			t.Fatalf("bad span %d-%d in %q", l.Start, l.End, r.SQL)
		}
	}
	tree, err := pg.Parse(r.SQL)
	if err != nil {
		if r.SQL != input {
			t.Fatalf("rewritten SQL does not parse: %q -> %q: %v", input, r.SQL, err)
		}
		return
	}
	if !r.Touches {
		return
	}
	isPolicyCol := func(name string) bool {
		for _, tb := range a.pol.Tables() {
			if tb.Column(name) != nil {
				return true
			}
		}
		return false
	}
	bad := func(n *pg.Node, where string) {
		v := valueOf(n)
		if v == nil {
			return
		}
		if v.param > 0 {
			if int(v.param) > len(r.Params) || r.Params[v.param-1].Column == nil {
				t.Fatalf("%s: $%d flows into a policy column unreported\n in: %q\nout: %q", where, v.param, input, r.SQL)
			}
			return
		}
		if v.konst != nil && !v.konst.Isnull {
			t.Fatalf("%s: a plaintext constant flows into a policy column\n in: %q\nout: %q", where, input, r.SQL)
		}
	}
	isPolicyTable := func(rv *pg.RangeVar) bool {
		return rv != nil && len(a.byName[rv.Relname]) > 0
	}
	var checkWhere func(n *pg.Node)
	colName := func(n *pg.Node) string {
		cr := n.GetColumnRef()
		if cr == nil || len(cr.Fields) == 0 {
			return ""
		}
		return cr.Fields[len(cr.Fields)-1].GetString_().GetSval()
	}
	// checkWhere looks at the comparisons of one query level whose only
	// table is a policy table: a bare column of that name is its column.
	checkWhere = func(n *pg.Node) {
		if n == nil {
			return
		}
		switch x := n.Node.(type) {
		case *pg.Node_BoolExpr:
			for _, a := range x.BoolExpr.Args {
				checkWhere(a)
			}
		case *pg.Node_AExpr:
			e := x.AExpr
			if isPolicyCol(colName(e.Lexpr)) {
				bad(e.Rexpr, "comparison")
				for _, it := range e.Rexpr.GetList().GetItems() {
					bad(it, "IN")
				}
			}
			if isPolicyCol(colName(e.Rexpr)) {
				bad(e.Lexpr, "comparison")
			}
		}
	}
	walkMsgs(tree.ProtoReflect(), func(m protoreflect.Message) {
		switch x := m.Interface().(type) {
		case *pg.InsertStmt:
			if x.Relation == nil || len(a.byName[x.Relation.Relname]) == 0 {
				return
			}
			sel := x.SelectStmt.GetSelectStmt()
			if sel == nil {
				return
			}
			for _, row := range sel.ValuesLists {
				for i, it := range row.GetList().GetItems() {
					if i < len(x.Cols) && isPolicyCol(x.Cols[i].GetResTarget().GetName()) {
						bad(it, "INSERT")
					}
				}
			}
		case *pg.UpdateStmt:
			if x.Relation == nil || len(a.byName[x.Relation.Relname]) == 0 {
				return
			}
			for _, n := range x.TargetList {
				if rt := n.GetResTarget(); rt != nil && isPolicyCol(rt.Name) {
					bad(rt.Val, "UPDATE")
				}
			}
			if len(x.FromClause) == 0 {
				checkWhere(x.WhereClause)
			}
		case *pg.SelectStmt:
			if len(x.FromClause) == 1 && isPolicyTable(x.FromClause[0].GetRangeVar()) {
				checkWhere(x.WhereClause)
			}
		case *pg.DeleteStmt:
			if len(x.UsingClause) == 0 && isPolicyTable(x.Relation) {
				checkWhere(x.WhereClause)
			}
		}
	})
}

func walkMsgs(m protoreflect.Message, fn func(protoreflect.Message)) {
	fn(m)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil || fd.IsMap() {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walkMsgs(l.Get(i).Message(), fn)
			}
		} else {
			walkMsgs(v.Message(), fn)
		}
		return true
	})
}

var seedCorpus = []string{
	"INSERT INTO users(id, ssn, email) VALUES ($1, $2, $3)",
	"INSERT INTO users(id, ssn, email) VALUES (1, '123', E'a@b'), (2, NULL, DEFAULT)",
	"INSERT INTO users(ssn, dob, age) VALUES ($1::text, date '2020-01-01', CAST($3 AS integer))",
	"INSERT INTO users(id, email) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email",
	"UPDATE users SET (ssn, email) = ($1, 'x') WHERE email <> 'y' RETURNING ssn",
	"SELECT id FROM users u WHERE ($1) = (u.email) AND age IN (1, -2, $2::int4) AND dob NOT IN ('2020-01-01'::date)",
	"WITH x AS (INSERT INTO users(ssn) VALUES ($1) RETURNING id, ssn) SELECT id, ssn FROM x",
	"SET search_path TO app; SELECT token FROM secrets WHERE token = 'abc'",
	"SELECT s FROM (SELECT ssn AS s, email FROM users) x WHERE x.email = $1",
	"DELETE FROM users WHERE email = $1 RETURNING ssn",
	"SELECT upper(ssn) FROM users ORDER BY email",
	"COPY users FROM STDIN",
	"SELECT * FROM orders WHERE x = 'users'",
}

func TestCheckOutputCatchesLeaks(t *testing.T) {
	// The property checker must be able to fail: feed it a result that
	// forwards a plaintext constant.
	a := testAnalyzer(t)
	ft := &fakeT{}
	func() {
		defer func() { recover() }()
		checkOutput(ft, a, "x", &Result{Touches: true, SQL: "INSERT INTO users(ssn) VALUES ('secret')"})
	}()
	if !ft.failed {
		t.Fatal("checkOutput accepted a plaintext constant")
	}
}

type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Fatalf(format string, args ...any) { f.failed = true; panic("fatal") }
