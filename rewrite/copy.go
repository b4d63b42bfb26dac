package rewrite

import (
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// Copy is a COPY … FROM STDIN or COPY … TO STDOUT statement on a policy
// table, as the proxy needs it to encrypt or decrypt the data stream.
type Copy struct {
	Table *policy.Table
	// Schema and Name are the table as the statement names it (Schema ""
	// when unqualified).
	Schema, Name string
	// Columns is the statement's column list; nil means every column of the
	// table in order, which the proxy takes from the catalog. For
	// COPY (SELECT …) TO, the select list's columns.
	Columns []string
	From    bool // FROM STDIN; false: TO STDOUT
	// Format is text, csv or binary.
	Format    string
	Delimiter byte
	Null      string
	Header    bool
	Quote     byte
	Escape    byte
	// Basic is set when the statement uses no option beyond FORMAT,
	// DELIMITER, NULL, HEADER (true or false), QUOTE and ESCAPE: then the
	// proxy may send a COPY FROM on to the server in binary format.
	Basic bool
}

// IsCopy reports cheaply whether sql starts with COPY, so the proxy asks
// AnalyzeCopy only for those.
func IsCopy(sql string) bool {
	t := strings.TrimLeft(sql, " \t\r\n")
	return len(t) >= 4 && strings.EqualFold(t[:4], "copy")
}

// AnalyzeCopy analyses a single COPY statement. It returns (nil, nil)
// when the statement does not involve a policy table (forward it as it
// is) and a Refusal for what the proxy cannot encrypt or decrypt: COPY to
// or from a file or program (the data would bypass the proxy), WHERE on
// COPY FROM, and COPY (query) TO unless the query is a plain column list
// from one policy table.
func (a *Analyzer) AnalyzeCopy(sql string, searchPath []string) (*Copy, *Refusal) {
	if searchPath == nil {
		searchPath = []string{"public"}
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		return nil, nil // Analyze reports unparseable statements
	}
	if len(tree.Stmts) != 1 {
		return nil, nil
	}
	cs := tree.Stmts[0].Stmt.GetCopyStmt()
	if cs == nil {
		return nil, nil
	}
	c := &Copy{From: cs.IsFrom, Format: "text", Delimiter: '\t', Null: `\N`, Quote: '"', Escape: 0}
	var rel *pg.RangeVar
	if cs.Relation != nil {
		rel = cs.Relation
		for _, n := range cs.Attlist {
			c.Columns = append(c.Columns, n.GetString_().GetSval())
		}
	} else if q := cs.Query; q != nil {
		sel := q.GetSelectStmt()
		var ok bool
		rel, c.Columns, ok = plainSelect(sel)
		if !ok {
			if a.mentionsPolicyTable(q) {
				return nil, &Refusal{Code: CodeFeatureNotSupported,
					Message: "COPY (query) TO STDOUT on encrypted tables supports only a plain column list from one table",
					Hint:    "use COPY table (columns) TO STDOUT, or SELECT"}
			}
			return nil, nil
		}
	}
	if rel == nil {
		return nil, nil
	}
	c.Schema, c.Name = rel.Schemaname, rel.Relname
	c.Table = a.pol.Table(c.Schema, c.Name, searchPath)
	if c.Table == nil {
		return nil, nil
	}
	if cs.Filename != "" || cs.IsProgram {
		return nil, &Refusal{Code: CodeFeatureNotSupported,
			Message: fmt.Sprintf("COPY of encrypted table %s to or from a server file or program would bypass the proxy", c.Table.Name),
			Hint:    "use COPY … FROM STDIN / TO STDOUT (psql: \\copy)"}
	}
	if cs.WhereClause != nil {
		return nil, &Refusal{Code: CodeFeatureNotSupported,
			Message: fmt.Sprintf("COPY FROM … WHERE on encrypted table %s is not supported", c.Table.Name)}
	}
	csvSet := false
	c.Basic = true
	for _, o := range cs.Options {
		d := o.GetDefElem()
		if d == nil {
			continue
		}
		val := defString(d)
		switch d.Defname {
		case "format":
			c.Format = strings.ToLower(val)
			if c.Format == "csv" {
				csvSet = true
			}
		case "delimiter":
			if len(val) != 1 {
				return nil, &Refusal{Code: CodeFeatureNotSupported, Message: "COPY delimiter must be a single one-byte character"}
			}
			c.Delimiter = val[0]
		case "null":
			c.Null = val
		case "header":
			match := strings.EqualFold(val, "match")
			c.Header = val == "" || val == "true" || val == "on" || val == "1" || match
			if match {
				c.Basic = false
			}
		case "quote":
			if len(val) == 1 {
				c.Quote = val[0]
			}
		case "escape":
			if len(val) == 1 {
				c.Escape = val[0]
			}
		case "freeze", "encoding", "force_not_null", "force_null", "force_quote":
			// Server-side behaviour; the proxy's parsing is unaffected
			// (FORCE_QUOTE only changes quoting on output, which the proxy
			// re-encodes anyway).
			c.Basic = false
		default:
			return nil, &Refusal{Code: CodeFeatureNotSupported, Message: fmt.Sprintf("COPY option %s is not supported on encrypted tables", d.Defname)}
		}
	}
	if csvSet {
		hasDelim := false
		for _, o := range cs.Options {
			if d := o.GetDefElem(); d != nil && d.Defname == "delimiter" {
				hasDelim = true
			}
		}
		if !hasDelim {
			c.Delimiter = ','
		}
		nullSet := false
		for _, o := range cs.Options {
			if d := o.GetDefElem(); d != nil && d.Defname == "null" {
				nullSet = true
			}
		}
		if !nullSet {
			c.Null = ""
		}
		if c.Escape == 0 {
			c.Escape = c.Quote
		}
	}
	switch c.Format {
	case "text", "csv", "binary":
	default:
		return nil, &Refusal{Code: CodeFeatureNotSupported, Message: fmt.Sprintf("COPY format %s is not supported", c.Format)}
	}
	return c, nil
}

func defString(d *pg.DefElem) string {
	if d.Arg == nil {
		return ""
	}
	switch {
	case d.Arg.GetString_() != nil:
		return d.Arg.GetString_().GetSval()
	case d.Arg.GetBoolean() != nil:
		if d.Arg.GetBoolean().GetBoolval() {
			return "true"
		}
		return "false"
	case d.Arg.GetInteger() != nil:
		return fmt.Sprint(d.Arg.GetInteger().GetIval())
	case d.Arg.GetAConst() != nil:
		ac := d.Arg.GetAConst()
		if s := ac.GetSval(); s != nil {
			return s.GetSval()
		}
		if b := ac.GetBoolval(); b != nil {
			if b.GetBoolval() {
				return "true"
			}
			return "false"
		}
		if i := ac.GetIval(); i != nil {
			return fmt.Sprint(i.GetIval())
		}
	}
	return ""
}

// plainSelect recognises SELECT col, col, … FROM one_table (or SELECT *),
// with no other clauses.
func plainSelect(sel *pg.SelectStmt) (*pg.RangeVar, []string, bool) {
	if sel == nil || len(sel.FromClause) != 1 || sel.WhereClause != nil {
		return nil, nil, false
	}
	if len(sel.GroupClause) > 0 || sel.HavingClause != nil || len(sel.SortClause) > 0 || sel.LimitCount != nil ||
		sel.LimitOffset != nil || len(sel.DistinctClause) > 0 || sel.Op != pg.SetOperation_SETOP_NONE || len(sel.WindowClause) > 0 || sel.WithClause != nil {
		return nil, nil, false
	}
	rv := sel.FromClause[0].GetRangeVar()
	if rv == nil {
		return nil, nil, false
	}
	var cols []string
	for _, t := range sel.TargetList {
		rt := t.GetResTarget()
		if rt == nil || rt.Name != "" {
			return nil, nil, false
		}
		cr := rt.Val.GetColumnRef()
		if cr == nil {
			return nil, nil, false
		}
		f := cr.Fields
		last := f[len(f)-1]
		if last.GetAStar() != nil {
			if len(sel.TargetList) != 1 {
				return nil, nil, false
			}
			return rv, nil, true
		}
		if len(f) > 1 {
			q := f[len(f)-2].GetString_().GetSval()
			alias := rv.Relname
			if rv.Alias != nil {
				alias = rv.Alias.Aliasname
			}
			if q != alias {
				return nil, nil, false
			}
		}
		cols = append(cols, last.GetString_().GetSval())
	}
	return rv, cols, true
}

// mentionsPolicyTable reports whether the query may name a policy table
// (by bare name, conservatively: an error counts as yes).
func (a *Analyzer) mentionsPolicyTable(n *pg.Node) bool {
	s, err := pg.Deparse(&pg.ParseResult{Stmts: []*pg.RawStmt{{Stmt: n}}})
	if err != nil {
		return true
	}
	return a.pol.MayTouch(s)
}
