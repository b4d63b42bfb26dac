package rewrite

import (
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// bare returns the policy column n denotes when n is a plain column
// reference to one, else nil.
func (an *analysis) bare(n *pg.Node, sc *scope) *policy.Column {
	cr := n.GetColumnRef()
	if cr == nil || isStar(cr) {
		return nil
	}
	return an.resolve(cr, sc)
}

// expr walks an expression in which a policy column may appear only where
// the proxy understands it: compared for equality with values it can
// encrypt, tested with IS [NOT] NULL, counted. Elsewhere it is refused;
// why names the place for the message.
func (an *analysis) expr(n *pg.Node, sc *scope, why string) {
	if n == nil || n.Node == nil {
		return
	}
	switch x := n.Node.(type) {
	case *pg.Node_ColumnRef:
		cr := x.ColumnRef
		if isStar(cr) {
			for _, r := range an.star(cr, sc) {
				if c := firstStarCol(r); c != nil {
					an.refuse(CodeFeatureNotSupported, c, "list the columns you need",
						"a whole-row reference including encrypted column %s is not supported in %s", c, why)
				}
			}
			return
		}
		if c := an.resolve(cr, sc); c != nil {
			an.refuseInExpr(c, why)
		}
	case *pg.Node_ParamRef:
		an.plainParam(x.ParamRef.Number)
	case *pg.Node_AConst, *pg.Node_SetToDefault:
	case *pg.Node_AExpr:
		an.aexpr(x.AExpr, sc, why)
	case *pg.Node_BoolExpr:
		for _, a := range x.BoolExpr.Args {
			an.expr(a, sc, why)
		}
	case *pg.Node_NullTest:
		if an.bare(x.NullTest.Arg, sc) != nil {
			return // IS [NOT] NULL works on ciphertext
		}
		an.expr(x.NullTest.Arg, sc, why)
	case *pg.Node_SubLink:
		an.subLink(x.SubLink, sc, why)
	case *pg.Node_FuncCall:
		an.funcCall(x.FuncCall, sc, why)
	case *pg.Node_TypeCast:
		an.expr(x.TypeCast.Arg, sc, "a cast")
	case *pg.Node_SelectStmt, *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt:
		an.query(n, sc)
	case *pg.Node_RangeVar:
		an.rangeVar(x.RangeVar, sc)
	default:
		an.generic(n.ProtoReflect(), sc, why)
	}
}

func (an *analysis) refuseInExpr(c *policy.Column, why string) {
	hint := "read the column as it is and compute in the application"
	if c.Mode == policy.Deterministic {
		hint = "compare the column itself with = or IN against parameters or constants, or read it as it is"
	}
	an.refuse(CodeFeatureNotSupported, c, hint,
		"encrypted column %s cannot be used in %s: the server only sees its ciphertext", c, why)
}

// generic walks every child node of an expression the walker has no
// special case for.
func (an *analysis) generic(m protoreflect.Message, sc *scope, why string) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil || fd.IsMap() {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				an.genericMsg(l.Get(i).Message(), sc, why)
			}
		} else {
			an.genericMsg(v.Message(), sc, why)
		}
		return true
	})
}

func (an *analysis) genericMsg(m protoreflect.Message, sc *scope, why string) {
	switch x := m.Interface().(type) {
	case *pg.Node:
		an.expr(x, sc, why)
	case *pg.SelectStmt:
		an.selectStmt(x, sc, nil)
	case *pg.RangeVar:
		an.rangeVar(x, sc)
	default:
		an.generic(m, sc, why)
	}
}

func opName(names []*pg.Node) string {
	parts := make([]string, 0, len(names))
	for _, n := range names {
		parts = append(parts, n.GetString_().GetSval())
	}
	return strings.Join(parts, ".")
}

func (an *analysis) aexpr(e *pg.A_Expr, sc *scope, why string) {
	op := opName(e.Name)
	switch e.Kind {
	case pg.A_Expr_Kind_AEXPR_OP:
		if (op == "=" || op == "<>") && e.Lexpr != nil && e.Rexpr != nil {
			an.compare(e, op, sc, why)
			return
		}
		an.expr(e.Lexpr, sc, "operator "+op)
		an.expr(e.Rexpr, sc, "operator "+op)
	case pg.A_Expr_Kind_AEXPR_IN:
		an.in(e, op, sc, why)
	case pg.A_Expr_Kind_AEXPR_LIKE, pg.A_Expr_Kind_AEXPR_ILIKE, pg.A_Expr_Kind_AEXPR_SIMILAR:
		an.expr(e.Lexpr, sc, "LIKE, ILIKE or SIMILAR TO")
		an.expr(e.Rexpr, sc, "LIKE, ILIKE or SIMILAR TO")
	case pg.A_Expr_Kind_AEXPR_BETWEEN, pg.A_Expr_Kind_AEXPR_NOT_BETWEEN,
		pg.A_Expr_Kind_AEXPR_BETWEEN_SYM, pg.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM:
		an.expr(e.Lexpr, sc, "BETWEEN")
		an.expr(e.Rexpr, sc, "BETWEEN")
	case pg.A_Expr_Kind_AEXPR_OP_ANY, pg.A_Expr_Kind_AEXPR_OP_ALL:
		if c := an.bare(e.Lexpr, sc); c != nil {
			an.refuse(CodeFeatureNotSupported, c, "use col = $1 or col IN ($1, $2, …)",
				"encrypted column %s cannot be compared with ANY/ALL of an array: the proxy cannot encrypt the array's elements", c)
		}
		an.expr(e.Lexpr, sc, "operator "+op+" ANY/ALL")
		an.expr(e.Rexpr, sc, "operator "+op+" ANY/ALL")
	case pg.A_Expr_Kind_AEXPR_DISTINCT, pg.A_Expr_Kind_AEXPR_NOT_DISTINCT:
		an.expr(e.Lexpr, sc, "IS [NOT] DISTINCT FROM")
		an.expr(e.Rexpr, sc, "IS [NOT] DISTINCT FROM")
	default:
		an.expr(e.Lexpr, sc, "operator "+op)
		an.expr(e.Rexpr, sc, "operator "+op)
	}
}

// compare handles a = b and a <> b.
func (an *analysis) compare(e *pg.A_Expr, op string, sc *scope, why string) {
	lc, rc := an.bare(e.Lexpr, sc), an.bare(e.Rexpr, sc)
	if lc == nil && rc == nil {
		an.expr(e.Lexpr, sc, "operator "+op)
		an.expr(e.Rexpr, sc, "operator "+op)
		return
	}
	if lc != nil && rc != nil {
		if lc != rc {
			an.refuse(CodeFeatureNotSupported, lc, "compare an encrypted column only with itself or with parameters and constants",
				"encrypted columns %s and %s cannot be compared: each ciphertext is bound to its column", lc, rc)
		}
		an.needDeterministic(lc, "equality")
		return
	}
	col, colSide, other := lc, e.Lexpr, e.Rexpr
	if col == nil {
		col, colSide, other = rc, e.Rexpr, e.Lexpr
	}
	an.needDeterministic(col, "equality")
	v := valueOf(other)
	if v == nil {
		if sl := other.GetSubLink(); sl != nil && sl.SubLinkType == pg.SubLinkType_EXPR_SUBLINK {
			if out := an.query(sl.Subselect, sc); out.single() == col {
				return // col = (SELECT col …): same column, same ciphertexts
			}
		} else {
			an.expr(other, sc, "a comparison")
		}
		an.refuseCompare(col, other)
	}
	an.checkCasts(col, v)
	quant := "ANY"
	if op == "<>" {
		quant = "ALL"
	}
	opIdx := an.toks.at(e.Location)
	vs, ve := an.operandSpan(other, opIdx)
	var parts []part
	if v.param > 0 {
		an.policyParam(v.param, col, UseCompare)
		an.param(v.param).scalar = true
		// The bytea[] form takes every candidate; the scalar one, for a
		// statement prepared while one data key is live, is cheaper for
		// PostgreSQL (Result.ScalarSQL).
		parts = []part{{text: fmt.Sprintf("%s($%d::bytea[])", quant, v.param), lit: -1,
			scalar: fmt.Sprintf("$%d::bytea", v.param), param: v.param}}
	} else {
		// A constant: the proxy writes the quantifier (Literal.Quant).
		i := an.literal(col, v, UseCompare)
		an.lits[i].quant = quant
		parts = []part{{lit: i}}
	}
	if colSide == e.Lexpr {
		an.edit(vs, ve, parts)
		return
	}
	cs, ce := an.operandSpan(colSide, opIdx)
	colText := an.toks.text(an.sql, cs, ce)
	parts = append([]part{{text: colText + " " + op + " ", lit: -1}}, parts...)
	an.edit(vs, ce, parts)
}

func (an *analysis) refuseCompare(c *policy.Column, other *pg.Node) {
	an.refuse(CodeFeatureNotSupported, c, "compare an encrypted column only with parameters, constants or the same column",
		"encrypted column %s is compared with a value the proxy cannot encrypt (a column without encryption, an expression or a subquery)", c)
}

func (an *analysis) needDeterministic(c *policy.Column, what string) {
	if c.Mode != policy.Deterministic {
		an.refuse(CodeFeatureNotSupported, c, "test it with IS [NOT] NULL only, or declare the column mode: deterministic",
			"%s on randomized encrypted column %s cannot work: equal values have different ciphertexts", what, c)
	}
}

// in handles col IN (…) and col NOT IN (…).
func (an *analysis) in(e *pg.A_Expr, op string, sc *scope, why string) {
	items := e.Rexpr.GetList().GetItems()
	col := an.bare(e.Lexpr, sc)
	if col == nil {
		an.expr(e.Lexpr, sc, "IN")
		for _, it := range items {
			if c := an.bare(it, sc); c != nil {
				an.refuseCompare(c, e.Lexpr)
			}
			an.expr(it, sc, "IN")
		}
		return
	}
	an.needDeterministic(col, "IN")
	// IN binds tighter than =, so the rewrite is parenthesised: a = b IN
	// (…) must become a = (b = ANY(…)).
	from := an.toks.at(e.Location) // IN, or NOT of NOT IN
	cs, ce := an.operandSpan(e.Lexpr, from)
	quant := " = ANY("
	if op == "<>" {
		quant = " <> ALL("
	}
	parts := []part{{text: "(" + an.toks.text(an.sql, cs, ce) + quant, lit: -1}}
	for i, it := range items {
		v := valueOf(it)
		if v == nil {
			if c := an.bare(it, sc); c == col {
				an.refuse(CodeFeatureNotSupported, col, "compare with parameters or constants",
					"IN lists mixing encrypted column %s with columns are not supported by the proxy", col)
			}
			an.expr(it, sc, "IN")
			an.refuseCompare(col, it)
		}
		an.checkCasts(col, v)
		if i > 0 {
			parts = append(parts, part{text: " || ", lit: -1})
		}
		parts = append(parts, an.compareParts(col, v)...)
	}
	parts = append(parts, part{text: "))", lit: -1})
	open := from + 1
	if an.toks.kind(from) == pg.Token_NOT {
		open++
	}
	if an.toks.kind(open) != pg.Token_ASCII_40 || an.toks.match[open] < 0 {
		an.refuse(CodeFeatureNotSupported, col, "write col IN (…) with parameters or constants",
			"the proxy cannot rewrite this IN list on encrypted column %s", col)
	}
	an.edit(cs, int(an.toks.match[open])+1, parts)
}

// compareParts is the bytea[] operand for comparing col with v.
func (an *analysis) compareParts(col *policy.Column, v *value) []part {
	if v.param > 0 {
		an.policyParam(v.param, col, UseCompare)
		an.param(v.param).array = true
		return []part{{text: fmt.Sprintf("$%d::bytea[]", v.param), lit: -1}}
	}
	return []part{{lit: an.literal(col, v, UseCompare)}}
}

func (an *analysis) subLink(sl *pg.SubLink, sc *scope, why string) {
	switch sl.SubLinkType {
	case pg.SubLinkType_EXISTS_SUBLINK:
		an.query(sl.Subselect, sc)
	case pg.SubLinkType_ANY_SUBLINK, pg.SubLinkType_ALL_SUBLINK:
		out := an.query(sl.Subselect, sc)
		op := opName(sl.OperName)
		if op == "" {
			op = "="
		}
		s := out.single()
		t := an.bare(sl.Testexpr, sc)
		if t == nil {
			an.expr(sl.Testexpr, sc, "IN (SELECT …)")
			if s != nil || out.hasPolicy() {
				an.refuseCompare(pickCol(s, out.firstPolicy()), sl.Testexpr)
			}
			return
		}
		eq := (sl.SubLinkType == pg.SubLinkType_ANY_SUBLINK && op == "=") || (sl.SubLinkType == pg.SubLinkType_ALL_SUBLINK && op == "<>")
		if !eq || s != t || len(out.outs) != 1 {
			an.refuseCompare(t, nil)
		}
		an.needDeterministic(t, "IN (SELECT …)")
	default:
		an.expr(sl.Testexpr, sc, why)
		out := an.query(sl.Subselect, sc)
		if c := out.firstPolicy(); c != nil {
			an.refuseInExpr(c, why)
		}
	}
}

func (an *analysis) funcCall(fc *pg.FuncCall, sc *scope, why string) {
	name := ""
	if n := len(fc.Funcname); n > 0 {
		name = fc.Funcname[n-1].GetString_().GetSval()
		if n == 2 && fc.Funcname[0].GetString_().GetSval() != "pg_catalog" {
			name = "" // a user function that happens to share the name
		}
	}
	switch {
	case name == "count" && len(fc.Args) == 1 && !fc.AggStar:
		if c := an.bare(fc.Args[0], sc); c != nil {
			if fc.AggDistinct {
				an.needDeterministic(c, "COUNT(DISTINCT …)")
			}
			for _, o := range fc.AggOrder {
				an.expr(o, sc, "an aggregate's ORDER BY")
			}
			an.expr(fc.AggFilter, sc, "FILTER")
			if fc.Over != nil {
				an.generic(fc.Over.ProtoReflect(), sc, "a window definition")
			}
			return
		}
	case name == "set_config":
		// Its constants decide what it sets: never reuse this analysis
		// for other constants.
		an.reusable = false
		if len(fc.Args) != 3 {
			break
		}
		if k := fc.Args[0].GetAConst(); k == nil || k.GetSval().GetSval() == "search_path" {
			local := false
			if b := fc.Args[2].GetAConst(); b != nil {
				local = b.GetBoolval().GetBoolval()
			} else {
				local = true // unknown: assume it lasts only this transaction
			}
			if v := fc.Args[1].GetAConst(); v != nil && v.GetSval() != nil {
				if path, ok := splitPath(v.GetSval().Sval); ok {
					if path == nil {
						path = []string{}
					}
					an.pathChanged(path, local)
					break
				}
			}
			an.pathChanged(nil, local)
		}
	}
	what := "function " + quoteIdent(name)
	if name == "" {
		what = "a function"
	}
	for _, a := range fc.Args {
		an.expr(a, sc, what)
	}
	for _, o := range fc.AggOrder {
		an.expr(o, sc, "an aggregate's ORDER BY")
	}
	an.expr(fc.AggFilter, sc, "FILTER")
	if fc.Over != nil {
		an.generic(fc.Over.ProtoReflect(), sc, "a window definition")
	}
}
