package rewrite

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// value is a parameter or constant, possibly under casts: the only
// things the proxy can encrypt.
type value struct {
	param int32
	konst *pg.A_Const
	casts []*pg.TypeCast
}

func valueOf(n *pg.Node) *value {
	v := &value{}
	for n != nil {
		switch x := n.Node.(type) {
		case *pg.Node_TypeCast:
			v.casts = append(v.casts, x.TypeCast)
			n = x.TypeCast.Arg
		case *pg.Node_ParamRef:
			v.param = x.ParamRef.Number
			if v.param <= 0 {
				return nil
			}
			return v
		case *pg.Node_AConst:
			v.konst = x.AConst
			return v
		default:
			return nil
		}
	}
	return nil
}

// checkCasts refuses casts to anything but the column's declared type:
// the proxy encodes the value as the declared type, so another cast would
// change what the application meant.
func (an *analysis) checkCasts(c *policy.Column, v *value) {
	for _, tc := range v.casts {
		if !typeMatches(c, tc.TypeName) {
			an.refuse(CodeDatatypeMismatch, c, "cast to the column's declared type "+c.Type.Name+", or drop the cast",
				"a value for encrypted column %s is cast to %s, which is not the column's declared type %s", c, typeNameString(tc.TypeName), c.Type.Name)
		}
	}
	if k := v.konst; k != nil {
		if _, ok := k.Val.(*pg.A_Const_Bsval); ok {
			an.refuse(CodeDatatypeMismatch, c, "write the value as a string constant",
				"a bit-string constant cannot be a value of encrypted column %s", c)
		}
	}
}

func typeNameString(tn *pg.TypeName) string {
	var parts []string
	for _, n := range tn.GetNames() {
		parts = append(parts, n.GetString_().GetSval())
	}
	s := strings.Join(parts, ".")
	if len(tn.GetArrayBounds()) > 0 {
		s += "[]"
	}
	return s
}

func typeMatches(c *policy.Column, tn *pg.TypeName) bool {
	if tn == nil || tn.Setof || tn.PctType || len(tn.ArrayBounds) > 0 {
		return false
	}
	names := tn.Names
	switch len(names) {
	case 1:
	case 2:
		if names[0].GetString_().GetSval() != "pg_catalog" {
			return false
		}
	default:
		return false
	}
	t, ok := policy.LookupType(names[len(names)-1].GetString_().GetSval())
	if !ok {
		return false
	}
	if t.Name == c.Type.Name {
		return true
	}
	str := func(n string) bool { return n == "text" || n == "varchar" }
	return str(t.Name) && str(c.Type.Name)
}

// storeValue handles a parameter or constant written into column c.
func (an *analysis) storeValue(c *policy.Column, n *pg.Node, v *value) {
	an.checkCasts(c, v)
	if v.param > 0 {
		an.policyParam(v.param, c, UseStore)
		if len(v.casts) > 0 {
			s, e := an.valueSpan(n)
			an.edit(s, e, []part{{text: "$" + itoa(v.param), lit: -1}})
		}
		return
	}
	s, e := an.valueSpan(n)
	an.edit(s, e, []part{{lit: an.literal(c, v, UseStore)}})
}

func itoa(n int32) string {
	var b [12]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// literal plans a policy constant and returns its index.
func (an *analysis) literal(c *policy.Column, v *value, u Use) int {
	k := v.konst
	i := an.toks.at(k.Location)
	if i < 0 {
		an.internal()
	}
	l := litPlan{tok: i, col: c, use: u}
	switch x := k.Val.(type) {
	case nil:
		if !k.Isnull {
			an.internal()
		}
		l.kind = litNull
	case *pg.A_Const_Sval:
		l.kind, l.parsed = litString, x.Sval.GetSval()
		if kk := an.toks.kind(i); kk != pg.Token_SCONST && kk != pg.Token_USCONST {
			an.internal()
		}
	case *pg.A_Const_Ival, *pg.A_Const_Fval:
		l.kind = litNumber
		if an.toks.kind(i) == pg.Token_ASCII_45 { // folded unary minus
			l.neg = true
			i++
			l.tok = i
		}
		if kk := an.toks.kind(i); kk != pg.Token_ICONST && kk != pg.Token_FCONST {
			an.internal()
		}
		l.parsed, _ = l.value(an.sql, an.toks)
	case *pg.A_Const_Boolval:
		l.kind = litBool
		l.parsed = "false"
		if x.Boolval.GetBoolval() {
			l.parsed = "true"
		}
	default:
		an.refuse(CodeDatatypeMismatch, c, "write the value as a string constant",
			"this kind of constant cannot be a value of encrypted column %s", c)
	}
	if k.Isnull {
		l.kind = litNull
	}
	an.addCol(c)
	an.lits = append(an.lits, l)
	return len(an.lits) - 1
}

func (an *analysis) internal() {
	an.refuse(CodeInternalError, nil, "rewrite the statement with parameters",
		"the proxy could not locate a value in this statement, so it refuses it to protect encrypted columns")
}

func (an *analysis) edit(from, to int, parts []part) {
	if from < 0 || to <= from || to > len(an.toks.list) {
		an.internal()
	}
	an.edits = append(an.edits, edit{from: from, to: to, parts: parts})
}

// valueSpan returns the tokens [s, e) of a value expression.
func (an *analysis) valueSpan(n *pg.Node) (int, int) {
	t := an.toks
	switch x := n.Node.(type) {
	case *pg.Node_ParamRef:
		i := t.at(x.ParamRef.Location)
		if i < 0 || t.kind(i) != pg.Token_PARAM {
			an.internal()
		}
		return i, i + 1
	case *pg.Node_AConst:
		i := t.at(x.AConst.Location)
		if i < 0 {
			an.internal()
		}
		if t.kind(i) == pg.Token_ASCII_45 {
			i++
			return i - 1, i + 1
		}
		if t.kind(i) == pg.Token_USCONST && t.kind(i+1) == pg.Token_UESCAPE {
			return i, i + 3
		}
		return i, i + 1
	case *pg.Node_TypeCast:
		tc := x.TypeCast
		i := -1
		if tc.Location >= 0 {
			i = t.at(tc.Location)
		}
		if i >= 0 && t.kind(i) == pg.Token_CAST {
			if t.kind(i+1) != pg.Token_ASCII_40 || t.match[i+1] < 0 {
				an.internal()
			}
			return i, int(t.match[i+1]) + 1
		}
		as, ae := an.valueSpan(tc.Arg)
		if tc.TypeName != nil && tc.TypeName.Location >= 0 && tc.TypeName.Location < t.list[as].start {
			// type 'literal'
			j := t.at(tc.TypeName.Location)
			if j < 0 {
				an.internal()
			}
			return j, ae
		}
		if i < 0 || t.kind(i) != pg.Token_TYPECAST {
			an.internal()
		}
		for ae < i && t.kind(as-1) == pg.Token_ASCII_40 && int(t.match[as-1]) == ae {
			as, ae = as-1, ae+1
		}
		if ae != i {
			an.internal()
		}
		return as, an.typeEnd(i + 1)
	case *pg.Node_ColumnRef:
		i := t.at(x.ColumnRef.Location)
		if i < 0 {
			an.internal()
		}
		return i, i + 2*len(x.ColumnRef.Fields) - 1
	}
	an.internal()
	return 0, 0
}

// operandSpan is valueSpan widened over the parentheses that wrap an
// operand of the operator at token op.
func (an *analysis) operandSpan(n *pg.Node, op int) (int, int) {
	t := an.toks
	s, e := an.valueSpan(n)
	for s > 0 && t.kind(s-1) == pg.Token_ASCII_40 && int(t.match[s-1]) == e {
		// The parentheses must lie on this operand's side of the operator.
		if s > op {
			if s-1 <= op {
				break
			}
		} else if e >= op {
			break
		}
		s, e = s-1, e+1
	}
	return s, e
}

// typeEnd returns the end of the type name starting at token j, for the
// type names a policy value may be cast to.
func (an *analysis) typeEnd(j int) int {
	t := an.toks
	parens := func(j int) int {
		if t.kind(j) == pg.Token_ASCII_40 && t.match[j] > int32(j) {
			return int(t.match[j]) + 1
		}
		return j
	}
	switch t.kind(j) {
	case pg.Token_DOUBLE_P:
		if t.kind(j+1) != pg.Token_PRECISION {
			an.internal()
		}
		j += 2
	case pg.Token_CHARACTER, pg.Token_CHAR_P, pg.Token_NATIONAL, pg.Token_NCHAR:
		j++
		for t.kind(j) == pg.Token_CHARACTER || t.kind(j) == pg.Token_CHAR_P {
			j++
		}
		if t.kind(j) == pg.Token_VARYING {
			j++
		}
		j = parens(j)
	case pg.Token_TIMESTAMP, pg.Token_TIME:
		j = parens(j + 1)
		switch t.kind(j) {
		case pg.Token_WITH, pg.Token_WITH_LA, pg.Token_WITHOUT:
			if t.kind(j+1) == pg.Token_TIME && t.kind(j+2) == pg.Token_ZONE {
				j += 3
			}
		}
	default:
		k := t.kind(j)
		if k != pg.Token_IDENT && k != pg.Token_UIDENT && k < pg.Token_ABORT_P {
			an.internal()
		}
		j++
		for t.kind(j) == pg.Token_ASCII_46 { // .
			j += 2
		}
		j = parens(j)
	}
	if j > len(t.list) {
		an.internal()
	}
	return j
}
