package rewrite

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// rte is one entry of a FROM list (or a statement's target, EXCLUDED,
// a CTE): what a column reference qualified by its name can reach.
type rte struct {
	name    string // the name references use: alias, or relation name
	relname string // for schema.table.column references (unaliased base tables)
	schema  string
	table   *policy.Table // a policy table; nil for any other relation
	// derived entries (subqueries, CTEs, VALUES) list their output columns;
	// stars are the entries a "*" in their select list expanded.
	derived bool
	outs    []outCol
	stars   []*rte
	// open: may have columns the proxy does not know (base tables,
	// functions): an unknown name may live here.
	open bool
}

type outCol struct {
	name string
	col  *policy.Column // nil: not a policy column's value
}

// relOut is what a query produces, for a subquery or CTE around it.
type relOut struct {
	outs  []outCol
	stars []*rte
}

type scope struct {
	parent *scope
	rtes   []*rte
	ctes   map[string]*rte
}

func newScope(parent *scope) *scope { return &scope{parent: parent} }

// hasPolicy reports whether a "*" over r would expose policy columns.
func (r *rte) hasPolicy() bool {
	if r.table != nil {
		return true
	}
	for _, o := range r.outs {
		if o.col != nil {
			return true
		}
	}
	for _, s := range r.stars {
		if s.hasPolicy() {
			return true
		}
	}
	return false
}

// starCols lists the policy columns a "*" over r exposes.
func (r *rte) starCols(out []*policy.Column) []*policy.Column {
	if r.table != nil {
		for _, c := range sortedCols(r.table) {
			out = append(out, c)
		}
	}
	for _, o := range r.outs {
		if o.col != nil {
			out = append(out, o.col)
		}
	}
	for _, s := range r.stars {
		out = s.starCols(out)
	}
	return out
}

// lookup finds column name in r: found says r certainly has it (col is
// then its policy column or nil), maybe that r might have it.
func (r *rte) lookup(name string) (col *policy.Column, found, maybe bool) {
	if !r.derived {
		if c := r.table.Column(name); c != nil {
			return c, true, false
		}
		return nil, false, true
	}
	for _, o := range r.outs {
		if o.name == name {
			return o.col, true, false
		}
	}
	for _, s := range r.stars {
		c, f, m := s.lookup(name)
		if f {
			return c, true, false
		}
		maybe = maybe || m
	}
	return nil, false, maybe || r.open
}

func (sc *scope) cte(name string) *rte {
	for s := sc; s != nil; s = s.parent {
		if r := s.ctes[name]; r != nil {
			return r
		}
	}
	return nil
}

func (sc *scope) find(name string) *rte {
	for s := sc; s != nil; s = s.parent {
		for i := len(s.rtes) - 1; i >= 0; i-- {
			if s.rtes[i].name == name {
				return s.rtes[i]
			}
		}
	}
	return nil
}

func (sc *scope) findQualified(schema, rel string) *rte {
	for s := sc; s != nil; s = s.parent {
		for _, r := range s.rtes {
			if r.relname == rel && (r.schema == schema || (r.table != nil && r.table.Name.Schema == schema) || (r.schema == "" && r.table == nil)) {
				return r
			}
		}
	}
	return nil
}

// resolve finds the policy column a column reference denotes (nil: not a
// policy column). An unqualified name that could be either a column of a
// relation whose columns the proxy does not know or an outer query's
// policy column is refused: the proxy cannot tell which one PostgreSQL
// will pick.
func (an *analysis) resolve(cr *pg.ColumnRef, sc *scope) *policy.Column {
	names := make([]string, 0, len(cr.Fields))
	for _, f := range cr.Fields {
		s := f.GetString_()
		if s == nil {
			return nil // a star; callers handle them
		}
		names = append(names, s.Sval)
	}
	var c *policy.Column
	switch len(names) {
	case 1:
		c = an.resolveUnqualified(names[0], sc)
	case 2:
		if r := sc.find(names[0]); r != nil {
			c, _, _ = r.lookup(names[1])
		} else {
			an.unknownQualifier(names)
		}
	default:
		n := len(names)
		if r := sc.findQualified(names[n-3], names[n-2]); r != nil {
			c, _, _ = r.lookup(names[n-1])
		} else {
			an.unknownQualifier(names)
		}
	}
	if c != nil {
		an.addCol(c)
	}
	return c
}

func (an *analysis) resolveUnqualified(name string, sc *scope) *policy.Column {
	for s := sc; s != nil; s = s.parent {
		var col *policy.Column
		found, maybe := false, false
		for _, r := range s.rtes {
			c, f, m := r.lookup(name)
			if f {
				if found && c != col && (c != nil || col != nil) {
					an.refuse(CodeAmbiguousColumn, pickCol(c, col), "qualify the column with its table name or alias",
						"column reference %s is ambiguous and may denote encrypted column %s", quoteIdent(name), pickCol(c, col))
				}
				col, found = c, true
			}
			maybe = maybe || m
		}
		if found {
			return col
		}
		if maybe {
			if outer := outerPolicy(name, s.parent); outer != nil {
				an.refuse(CodeAmbiguousColumn, outer, "qualify the column with its table name or alias",
					"column reference %s may denote encrypted column %s of an outer query or a column of another table; the proxy cannot tell which", quoteIdent(name), outer)
			}
			return nil
		}
	}
	return nil
}

func outerPolicy(name string, sc *scope) *policy.Column {
	for s := sc; s != nil; s = s.parent {
		for _, r := range s.rtes {
			if c, f, _ := r.lookup(name); f && c != nil {
				return c
			}
		}
	}
	return nil
}

func pickCol(a, b *policy.Column) *policy.Column {
	if a != nil {
		return a
	}
	return b
}

// table resolves a relation name to a policy table, or nil.
func (an *analysis) table(schema, name string) *policy.Table {
	cands := an.a.byName[name]
	if len(cands) == 0 {
		return nil
	}
	if schema != "" {
		return an.a.pol.Table(schema, name, nil)
	}
	var unqualified *policy.Table
	for _, t := range cands {
		if t.Name.Schema == "" {
			unqualified = t
		}
	}
	if an.sp == nil {
		// The search path is unknown (reset earlier in this message).
		return an.onlyCandidate(name, cands)
	}
	for _, s := range an.sp {
		if s == "$user" {
			// The proxy did not expand $user: any schema could be the
			// user's. Assume the one policy table of that name.
			var q []*policy.Table
			for _, t := range cands {
				if t.Name.Schema != "" {
					q = append(q, t)
				}
			}
			if len(q) > 0 {
				return an.onlyCandidate(name, q)
			}
			continue
		}
		for _, t := range cands {
			if t.Name.Schema == s {
				return t
			}
		}
	}
	if unqualified != nil {
		return unqualified
	}
	// The name is a policy table in a schema that is not on the search
	// path as the proxy knows it. If the proxy's idea of the search path
	// is stale the statement would reach that table unencrypted.
	an.refuse(CodeAmbiguousColumn, nil, "qualify the table name with its schema",
		"table %s is not qualified and the encrypted table %s is not on the search path the proxy knows", quoteIdent(name), cands[0].Name)
	return nil
}

func (an *analysis) onlyCandidate(name string, cands []*policy.Table) *policy.Table {
	if len(cands) == 1 {
		return cands[0]
	}
	an.refuse(CodeAmbiguousColumn, nil, "qualify the table name with its schema",
		"table %s is not qualified and several encrypted tables have that name", quoteIdent(name))
	return nil
}

// unknownQualifier refuses a qualified reference to a name missing from
// the FROM list when its column name is a policy column's: the server
// would reject it, but only after the statement's values reached its logs.
func (an *analysis) unknownQualifier(names []string) {
	col := names[len(names)-1]
	for _, t := range an.a.pol.Tables() {
		if c := t.Column(col); c != nil {
			an.refuse(CodeUndefinedTable, c, "add the table to FROM or fix the qualifier",
				"column reference %s names no table of the statement and may mean encrypted column %s", quoteIdent(strings.Join(names[:len(names)-1], "."))+"."+quoteIdent(col), c)
		}
	}
}
