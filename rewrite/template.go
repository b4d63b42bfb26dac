package rewrite

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// A template is an analysis expressed in token indices instead of byte
// offsets, so that it applies to any statement with the same token shape
// (sameShape): the same statement with other constants. The full analysis
// builds one and renders it for its own input; a fingerprint-cache hit
// renders the cached one for the new input.
type template struct {
	sql   string // the statement the template was built from
	toks  *tokens
	edits []edit // sorted, not overlapping
	lits  []litPlan
	base  Result // everything but SQL and Literals
	// reusable is false when the result depends on more than the token
	// shape (a changed search path, a constant the fast value decoder
	// would read differently from the parser).
	reusable bool
}

// edit replaces tokens [from, to) by parts.
type edit struct {
	from, to int
	parts    []part
}

// part is replacement text, or (lit >= 0) the placeholder of lits[lit].
// A comparison with parameter $param also has a scalar text, which
// renderScalar writes instead when Params[param-1].Scalar.
type part struct {
	text   string
	lit    int
	scalar string
	param  int32
}

type litKind uint8

const (
	litString litKind = iota + 1
	litNumber
	litBool
	litNull
)

// litPlan says where a policy constant is and how to read its value.
type litPlan struct {
	tok    int  // the constant's token
	neg    bool // preceded by a folded unary minus
	kind   litKind
	col    *policy.Column
	use    Use
	parsed string // the parser's value, for the statement the template came from
	quant  string // Literal.Quant
}

func (l *litPlan) placeholder() string {
	if l.kind != litNull {
		return Placeholder
	}
	if l.use == UseCompare {
		if l.quant != "" {
			return l.quant + "(NULL::bytea[])"
		}
		return "NULL::bytea[]"
	}
	return "NULL"
}

// value reads the constant from token i of sql. ok is false when only the
// full parser can read it.
func (l *litPlan) value(sql string, t *tokens) (string, bool) {
	k := t.list[l.tok]
	text := sql[k.start:k.end]
	switch l.kind {
	case litNull:
		return "", true
	case litBool:
		switch k.kind {
		case pg.Token_TRUE_P:
			return "true", true
		case pg.Token_FALSE_P:
			return "false", true
		}
		return "", false
	case litNumber:
		v := numberValue(text)
		if l.neg {
			v = "-" + v
		}
		return v, true
	case litString:
		return stringValue(text)
	}
	return "", false
}

// render applies the template to sql (whose tokens are t). values holds
// each literal's value; nil reads them from the tokens, and then ok is
// false if one cannot be read that way.
func (tp *template) render(sql string, t *tokens, values []string) (out string, lits []Literal, ok bool) {
	if len(tp.edits) == 0 {
		return sql, nil, true
	}
	var b strings.Builder
	b.Grow(len(sql) + 16*len(tp.edits))
	if len(tp.lits) > 0 {
		lits = make([]Literal, 0, len(tp.lits))
	}
	cur := 0
	for _, e := range tp.edits {
		b.WriteString(sql[cur:t.list[e.from].start])
		for _, p := range e.parts {
			if p.lit < 0 {
				b.WriteString(p.text)
				continue
			}
			l := &tp.lits[p.lit]
			var v string
			if values != nil {
				v = values[p.lit]
			} else if v, ok = l.value(sql, t); !ok {
				return "", nil, false
			}
			start := b.Len()
			b.WriteString(l.placeholder())
			lits = append(lits, Literal{Start: start, End: b.Len(), Value: v, Null: l.kind == litNull, Column: l.col, Use: l.use, Quant: l.quant})
		}
		cur = int(t.list[e.to-1].end)
	}
	b.WriteString(sql[cur:])
	return b.String(), lits, true
}

// renderScalar renders the template's ScalarSQL for sql (see
// Result.ScalarSQL): "" when no part has a scalar form for a Scalar
// parameter, or when the statement has policy constants, whose Literal
// offsets refer to SQL.
func (tp *template) renderScalar(sql string, t *tokens) string {
	if len(tp.lits) > 0 {
		return ""
	}
	found := false
	for _, e := range tp.edits {
		for _, p := range e.parts {
			if p.scalar != "" && tp.base.Params[p.param-1].Scalar {
				found = true
			}
		}
	}
	if !found {
		return ""
	}
	var b strings.Builder
	b.Grow(len(sql))
	cur := 0
	for _, e := range tp.edits {
		b.WriteString(sql[cur:t.list[e.from].start])
		for _, p := range e.parts {
			if p.scalar != "" && tp.base.Params[p.param-1].Scalar {
				b.WriteString(p.scalar)
			} else {
				b.WriteString(p.text)
			}
		}
		cur = int(t.list[e.to-1].end)
	}
	b.WriteString(sql[cur:])
	return b.String()
}

// instantiate renders a cached template for a statement with the same
// token shape, or returns nil when the statement needs a full analysis.
func (tp *template) instantiate(sql string, t *tokens) *Result {
	if !sameShape(tp.sql, tp.toks, sql, t) {
		return nil
	}
	out, lits, ok := tp.render(sql, t, nil)
	if !ok {
		return nil
	}
	r := tp.base
	r.SQL = out
	r.Literals = lits
	r.ScalarSQL = tp.renderScalar(sql, t)
	return &r
}
