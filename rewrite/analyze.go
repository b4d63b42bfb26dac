package rewrite

import (
	"fmt"
	"sort"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// analysis is the state of one full analysis.
type analysis struct {
	a    *Analyzer
	sql  string
	toks *tokens
	sp   []string // current search path; nil once it is unknown

	edits    []edit
	lits     []litPlan
	params   []paramState
	cols     []*policy.Column
	colSeen  map[*policy.Column]bool
	touches  bool
	reusable bool
	res      Result
}

type paramState struct {
	col   *policy.Column
	use   Use
	plain bool
	// scalar: compared as col = $n (or <>), which has a single-candidate
	// form (Param.Scalar); array: also used where only the bytea[] form
	// works (an IN list).
	scalar, array bool
}

// stop unwinds the analysis after a refusal.
type stop struct{ r *Refusal }

func (an *analysis) refuse(code string, col *policy.Column, hint, format string, args ...any) {
	panic(stop{&Refusal{Code: code, Message: fmt.Sprintf(format, args...), Hint: hint, Column: col}})
}

func (an *analysis) addCol(c *policy.Column) {
	an.touches = true
	if !an.colSeen[c] {
		an.colSeen[c] = true
		an.cols = append(an.cols, c)
	}
}

// analyze runs the full analysis of a parsed statement list.
func (a *Analyzer) analyze(sql string, toks *tokens, tree *pg.ParseResult, sp []string) (res *Result, tp *template) {
	an := &analysis{a: a, sql: sql, toks: toks, sp: sp, colSeen: map[*policy.Column]bool{}, reusable: true}
	kind := "other"
	if len(tree.Stmts) > 0 {
		kind = stmtKind(tree.Stmts[0].Stmt)
	}
	refusal := func() (r *Refusal) {
		defer func() {
			if p := recover(); p != nil {
				s, ok := p.(stop)
				if !ok {
					panic(p)
				}
				r = s.r
			}
		}()
		for _, raw := range tree.Stmts {
			an.top(raw.Stmt)
		}
		an.countParams(tree)
		sort.Slice(an.edits, func(i, j int) bool { return an.edits[i].from < an.edits[j].from })
		for i := 1; i < len(an.edits); i++ {
			if an.edits[i].from < an.edits[i-1].to {
				an.refuse(CodeFeatureNotSupported, nil, "split the statement or use parameters",
					"the proxy cannot rewrite this statement: two encrypted values overlap")
			}
		}
		return nil
	}()
	if refusal != nil {
		return &Result{Touches: true, Refusal: refusal, SQL: sql, Kind: kind}, &template{sql: sql, toks: toks, reusable: an.reusable && !an.res.SearchPathChanged,
			base: Result{Touches: true, Refusal: refusal, Kind: kind}}
	}
	base := an.res
	base.Touches = an.touches || len(an.edits) > 0
	base.Kind = kind
	base.Columns = an.cols
	if len(an.params) > 0 {
		base.Params = make([]Param, len(an.params))
		for i, p := range an.params {
			base.Params[i] = Param{Column: p.col, Use: p.use, Scalar: p.use == UseCompare && p.scalar && !p.array}
		}
	}
	tp = &template{sql: sql, toks: toks, edits: an.edits, lits: an.lits, base: base,
		reusable: an.reusable && !base.SearchPathChanged}
	values := make([]string, len(an.lits))
	for i := range an.lits {
		l := &an.lits[i]
		values[i] = l.parsed
		if v, ok := l.value(sql, toks); !ok || v != l.parsed {
			if l.kind == litString && !ok {
				continue // the fast reader declines: instantiate falls back
			}
			tp.reusable = false
		}
	}
	out, lits, _ := tp.render(sql, toks, values)
	r := base
	r.SQL, r.Literals = out, lits
	r.ScalarSQL = tp.renderScalar(sql, toks)
	if !base.Touches && !base.SearchPathChanged {
		tp.base, tp.edits, tp.lits = Result{Kind: kind}, nil, nil
		return &Result{SQL: sql, Kind: kind}, tp
	}
	return &r, tp
}

func stmtKind(n *pg.Node) string {
	switch n.Node.(type) {
	case *pg.Node_SelectStmt:
		return "select"
	case *pg.Node_InsertStmt:
		return "insert"
	case *pg.Node_UpdateStmt:
		return "update"
	case *pg.Node_DeleteStmt:
		return "delete"
	case *pg.Node_MergeStmt:
		return "merge"
	case *pg.Node_CopyStmt:
		return "copy"
	case *pg.Node_ExplainStmt:
		return "explain"
	case *pg.Node_VariableSetStmt, *pg.Node_DiscardStmt:
		return "set"
	case *pg.Node_CreateStmt, *pg.Node_AlterTableStmt, *pg.Node_DropStmt, *pg.Node_RenameStmt,
		*pg.Node_IndexStmt, *pg.Node_AlterObjectSchemaStmt, *pg.Node_CreateTableAsStmt, *pg.Node_ViewStmt:
		return "ddl"
	}
	return "other"
}

// countParams sizes Params to the highest $n anywhere in the statements;
// a parameter no policy context claimed stays a plain one.
func (an *analysis) countParams(tree *pg.ParseResult) {
	max := int32(0)
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		if p, ok := m.Interface().(*pg.ParamRef); ok && p.Number > max {
			max = p.Number
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Message() == nil || fd.IsMap() {
				return true
			}
			if fd.IsList() {
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					walk(l.Get(i).Message())
				}
			} else {
				walk(v.Message())
			}
			return true
		})
	}
	walk(tree.ProtoReflect())
	for int32(len(an.params)) < max {
		an.params = append(an.params, paramState{})
	}
}

func (an *analysis) param(n int32) *paramState {
	if n <= 0 {
		an.refuse(CodeSyntaxError, nil, "", "parameter $0 does not exist")
	}
	if n > 65535 {
		an.refuse(CodeSyntaxError, nil, "", "parameter number out of range")
	}
	for int32(len(an.params)) < n {
		an.params = append(an.params, paramState{})
	}
	return &an.params[n-1]
}

// plainParam records a use of $n that is not a policy value.
func (an *analysis) plainParam(n int32) {
	p := an.param(n)
	if p.col != nil {
		an.refuse(CodeDatatypeMismatch, p.col, "use a separate parameter for each use",
			"parameter $%d is used both for encrypted column %s and elsewhere", n, p.col)
	}
	p.plain = true
}

// policyParam records $n as a value of column c used as u.
func (an *analysis) policyParam(n int32, c *policy.Column, u Use) {
	p := an.param(n)
	switch {
	case p.plain:
		an.refuse(CodeDatatypeMismatch, c, "use a separate parameter for each use",
			"parameter $%d is used both for encrypted column %s and elsewhere", n, c)
	case p.col != nil && p.col != c:
		an.refuse(CodeDatatypeMismatch, c, "use a separate parameter for each column",
			"parameter $%d is used for two encrypted columns, %s and %s, whose ciphertexts differ", n, p.col, c)
	case p.col != nil && p.use != u:
		an.refuse(CodeDatatypeMismatch, c, "use one parameter for the stored value and another for the comparison",
			"parameter $%d is both stored into and compared with encrypted column %s, which need different encodings", n, c)
	}
	p.col, p.use = c, u
	an.addCol(c)
}

// --- statements ---

func (an *analysis) top(n *pg.Node) {
	sc := newScope(nil)
	switch s := n.Node.(type) {
	case *pg.Node_SelectStmt, *pg.Node_InsertStmt, *pg.Node_UpdateStmt, *pg.Node_DeleteStmt:
		an.query(n, sc)
	case *pg.Node_ExplainStmt:
		an.top(s.ExplainStmt.Query)
	case *pg.Node_DeclareCursorStmt:
		an.query(s.DeclareCursorStmt.Query, sc)
	case *pg.Node_MergeStmt:
		if t := an.mentionsPolicy(n); t != nil {
			an.refuse(CodeFeatureNotSupported, nil, "use INSERT … ON CONFLICT, UPDATE and DELETE",
				"MERGE involving table %s, which has encrypted columns, is not supported by the proxy", t.Name)
		}
	case *pg.Node_CopyStmt:
		c := s.CopyStmt
		var t *policy.Table
		if c.Relation != nil {
			t = an.table(c.Relation.Schemaname, c.Relation.Relname)
		}
		if t == nil && c.Query != nil {
			t = an.mentionsPolicy(c.Query)
		}
		if t != nil {
			an.touches = true
			an.refuse(CodeFeatureNotSupported, nil, "use INSERT and SELECT for this table for now",
				"COPY of table %s, which has encrypted columns, is not supported by the proxy yet", t.Name)
		}
	case *pg.Node_PrepareStmt:
		if t := an.mentionsPolicy(s.PrepareStmt.Query); t != nil {
			an.refuse(CodeFeatureNotSupported, nil, "use protocol-level prepared statements (Parse/Bind), which the proxy can encrypt",
				"PREPARE of a statement on table %s, which has encrypted columns, is not supported: EXECUTE's arguments would reach the server unencrypted", t.Name)
		}
	case *pg.Node_CreateTableAsStmt:
		c := s.CreateTableAsStmt
		if c.Into != nil && c.Into.Rel != nil {
			if t := an.table(c.Into.Rel.Schemaname, c.Into.Rel.Relname); t != nil {
				an.refuse(CodeFeatureNotSupported, nil, "create the table, then fill it with INSERT through the proxy",
					"CREATE TABLE AS into table %s, which has encrypted columns, is not supported", t.Name)
			}
		}
		if c.Objtype == pg.ObjectType_OBJECT_MATVIEW {
			an.refuseView(c.Query)
		}
		an.query(c.Query, sc)
	case *pg.Node_ViewStmt:
		an.refuseView(s.ViewStmt.Query)
		an.query(s.ViewStmt.Query, sc)
	case *pg.Node_RuleStmt:
		if t := an.mentionsPolicy(n); t != nil {
			an.refuse(CodeFeatureNotSupported, nil, "", "rules on or mentioning table %s, which has encrypted columns, are refused: they would move values the proxy cannot see", t.Name)
		}
	case *pg.Node_DoStmt:
		an.reusable = false // the body is a string constant
		for _, arg := range s.DoStmt.Args {
			if d := arg.GetDefElem(); d != nil && d.Defname == "as" {
				if an.a.mayTouch(d.Arg.GetString_().GetSval()) {
					an.touches = true
					an.refuse(CodeFeatureNotSupported, nil, "run the statements from the application through the proxy",
						"DO blocks that mention a table with encrypted columns are refused: the proxy cannot see the values inside")
				}
			}
		}
	case *pg.Node_CreateFunctionStmt:
		an.createFunction(s.CreateFunctionStmt)
	case *pg.Node_VariableSetStmt:
		an.setStmt(s.VariableSetStmt)
	case *pg.Node_DiscardStmt:
		if s.DiscardStmt.Target == pg.DiscardMode_DISCARD_ALL {
			an.pathChanged(nil, false)
		}
	case *pg.Node_CreateStmt:
		an.createTable(s.CreateStmt)
	case *pg.Node_AlterTableStmt:
		an.alterTable(s.AlterTableStmt)
	case *pg.Node_DropStmt, *pg.Node_RenameStmt, *pg.Node_AlterObjectSchemaStmt:
		if an.mentionsPolicyName(n) {
			an.touches = true
			an.res.Invalidates = true
		}
	case *pg.Node_IndexStmt:
		ix := s.IndexStmt
		if t := an.table(ix.Relation.GetSchemaname(), ix.Relation.GetRelname()); t != nil {
			an.touches = true
			for _, e := range ix.IndexParams {
				if el := e.GetIndexElem(); el != nil && el.Expr != nil {
					an.ddlExpr(el.Expr, t, "an index expression")
				}
			}
			if ix.WhereClause != nil {
				an.ddlExpr(ix.WhereClause, t, "a partial index predicate")
			}
		}
	case *pg.Node_CreatePolicyStmt:
		p := s.CreatePolicyStmt
		if t := an.table(p.Table.GetSchemaname(), p.Table.GetRelname()); t != nil {
			an.touches = true
			an.ddlExpr(p.Qual, t, "a row-level security policy")
			an.ddlExpr(p.WithCheck, t, "a row-level security policy")
		}
	case *pg.Node_AlterPolicyStmt:
		p := s.AlterPolicyStmt
		if t := an.table(p.Table.GetSchemaname(), p.Table.GetRelname()); t != nil {
			an.touches = true
			an.ddlExpr(p.Qual, t, "a row-level security policy")
			an.ddlExpr(p.WithCheck, t, "a row-level security policy")
		}
	case *pg.Node_TruncateStmt, *pg.Node_LockStmt, *pg.Node_VacuumStmt, *pg.Node_GrantStmt,
		*pg.Node_CommentStmt, *pg.Node_ClusterStmt, *pg.Node_ReindexStmt, *pg.Node_CreateTrigStmt,
		*pg.Node_SecLabelStmt, *pg.Node_AlterOwnerStmt, *pg.Node_TransactionStmt, *pg.Node_ExecuteStmt,
		*pg.Node_DeallocateStmt, *pg.Node_ClosePortalStmt, *pg.Node_FetchStmt, *pg.Node_NotifyStmt,
		*pg.Node_ListenStmt, *pg.Node_UnlistenStmt, *pg.Node_VariableShowStmt, *pg.Node_CheckPointStmt,
		*pg.Node_CreateSchemaStmt, *pg.Node_CreateSeqStmt, *pg.Node_AlterSeqStmt, *pg.Node_CreateStatsStmt:
		// No values reach a column.
		if an.mentionsPolicy(n) != nil {
			an.touches = true
		}
	default:
		if t := an.mentionsPolicy(n); t != nil {
			an.refuse(CodeFeatureNotSupported, nil, "run it directly against the database, not through the proxy",
				"this kind of statement on table %s, which has encrypted columns, is not supported by the proxy", t.Name)
		}
	}
}

func (an *analysis) refuseView(q *pg.Node) {
	if t := an.mentionsPolicy(q); t != nil {
		an.refuse(CodeFeatureNotSupported, nil, "query the table through the proxy instead of through a view",
			"views over table %s, which has encrypted columns, are refused: writes and reads through them would bypass the proxy's encryption", t.Name)
	}
}

func (an *analysis) createFunction(f *pg.CreateFunctionStmt) {
	an.reusable = false // the body is a string constant
	bad := false
	for _, o := range f.Options {
		d := o.GetDefElem()
		if d == nil || d.Defname != "as" {
			continue
		}
		for _, item := range d.Arg.GetList().GetItems() {
			if an.a.mayTouch(item.GetString_().GetSval()) {
				bad = true
			}
		}
	}
	if f.SqlBody != nil && an.mentionsPolicy(f.SqlBody) != nil {
		bad = true
	}
	if bad {
		an.touches = true
		an.refuse(CodeFeatureNotSupported, nil, "run the statements from the application through the proxy",
			"functions and procedures whose body mentions a table with encrypted columns are refused: the proxy cannot see the values inside")
	}
}

// query analyses a statement that produces rows (or may, with RETURNING).
func (an *analysis) query(n *pg.Node, sc *scope) relOut {
	switch s := n.GetNode().(type) {
	case *pg.Node_SelectStmt:
		return an.selectStmt(s.SelectStmt, sc, nil)
	case *pg.Node_InsertStmt:
		return an.insertStmt(s.InsertStmt, sc)
	case *pg.Node_UpdateStmt:
		return an.updateStmt(s.UpdateStmt, sc)
	case *pg.Node_DeleteStmt:
		return an.deleteStmt(s.DeleteStmt, sc)
	}
	if t := an.mentionsPolicy(n); t != nil {
		an.refuse(CodeFeatureNotSupported, nil, "", "this statement on table %s, which has encrypted columns, is not supported by the proxy", t.Name)
	}
	return relOut{}
}

// with adds a WITH clause's CTEs to a new scope.
func (an *analysis) with(w *pg.WithClause, parent *scope) *scope {
	if w == nil {
		return parent
	}
	sc := newScope(parent)
	sc.ctes = map[string]*rte{}
	for _, c := range w.Ctes {
		cte := c.GetCommonTableExpr()
		if cte == nil {
			continue
		}
		if w.Recursive {
			// A recursive CTE may read itself: give it an open entry
			// while its own query is analysed.
			sc.ctes[cte.Ctename] = &rte{name: cte.Ctename, derived: true, open: true}
		}
		out := an.query(cte.Ctequery, sc)
		if w.Recursive && out.hasPolicy() {
			an.refuse(CodeFeatureNotSupported, out.firstPolicy(), "", "recursive queries over encrypted column %s are not supported by the proxy", out.firstPolicy())
		}
		r := &rte{name: cte.Ctename, derived: true, outs: out.outs, stars: out.stars}
		an.renameOuts(r, cte.Aliascolnames)
		sc.ctes[cte.Ctename] = r
	}
	return sc
}

func (o relOut) hasPolicy() bool {
	return o.firstPolicy() != nil
}

func (o relOut) firstPolicy() *policy.Column {
	for _, c := range o.outs {
		if c.col != nil {
			return c.col
		}
	}
	for _, s := range o.stars {
		if cs := s.starCols(nil); len(cs) > 0 {
			return cs[0]
		}
	}
	return nil
}

// renameOuts applies an alias column list to a derived entry.
func (an *analysis) renameOuts(r *rte, names []*pg.Node) {
	if len(names) == 0 {
		return
	}
	if len(r.stars) > 0 {
		for _, s := range r.stars {
			if cs := s.starCols(nil); len(cs) > 0 {
				an.refuse(CodeFeatureNotSupported, cs[0], "list the columns instead of *",
					"renaming the columns of a * that includes encrypted column %s is not supported by the proxy", cs[0])
			}
		}
		r.open = true
		r.stars = nil
	}
	outs := make([]outCol, len(r.outs))
	copy(outs, r.outs)
	for i, n := range names {
		if i < len(outs) {
			outs[i].name = n.GetString_().GetSval()
		}
	}
	r.outs = outs
}

// targetTable resolves an INSERT/UPDATE/DELETE target.
func (an *analysis) targetTable(rv *pg.RangeVar) *rte {
	r := &rte{name: rv.Relname, relname: rv.Relname, schema: rv.Schemaname, open: true}
	r.table = an.table(rv.Schemaname, rv.Relname)
	if r.table != nil {
		an.touches = true
	}
	if rv.Alias != nil {
		r.name, r.relname = rv.Alias.Aliasname, ""
	}
	return r
}

func (an *analysis) insertStmt(s *pg.InsertStmt, parent *scope) relOut {
	sc := an.with(s.WithClause, parent)
	target := an.targetTable(s.Relation)
	tbl := target.table
	var targets []*policy.Column
	if tbl != nil && len(s.Cols) == 0 && s.SelectStmt != nil {
		an.refuse(CodeFeatureNotSupported, nil, "name the columns: INSERT INTO t (a, b, …) VALUES …",
			"INSERT without a column list into table %s, which has encrypted columns: the proxy cannot tell which values go to encrypted columns", tbl.Name)
	}
	for _, c := range s.Cols {
		rt := c.GetResTarget()
		col := tbl.Column(rt.GetName())
		if col != nil {
			an.addCol(col)
			if len(rt.Indirection) > 0 {
				an.refuse(CodeFeatureNotSupported, col, "assign the whole column",
					"assigning to a part of encrypted column %s is not supported", col)
			}
		}
		targets = append(targets, col)
	}
	if s.SelectStmt != nil {
		an.selectStmt(s.SelectStmt.GetSelectStmt(), sc, &sink{targets: targets})
	}
	if oc := s.OnConflictClause; oc != nil {
		ocs := newScope(sc)
		ocs.rtes = []*rte{target, {name: "excluded", table: tbl, open: true}}
		if oc.Infer != nil {
			for _, e := range oc.Infer.IndexElems {
				if el := e.GetIndexElem(); el != nil && el.Expr != nil {
					an.expr(el.Expr, ocs, "an ON CONFLICT index expression")
				}
			}
			if oc.Infer.WhereClause != nil {
				an.expr(oc.Infer.WhereClause, ocs, "an ON CONFLICT predicate")
			}
		}
		an.assign(oc.TargetList, tbl, ocs)
		if oc.WhereClause != nil {
			an.expr(oc.WhereClause, ocs, "an ON CONFLICT condition")
		}
	}
	rs := newScope(sc)
	rs.rtes = []*rte{target}
	return an.targetList(s.ReturningList, rs)
}

func (an *analysis) updateStmt(s *pg.UpdateStmt, parent *scope) relOut {
	sc := newScope(an.with(s.WithClause, parent))
	target := an.targetTable(s.Relation)
	sc.rtes = append(sc.rtes, target)
	for _, f := range s.FromClause {
		an.from(f, sc)
	}
	an.assign(s.TargetList, target.table, sc)
	if s.WhereClause != nil {
		an.expr(s.WhereClause, sc, "WHERE")
	}
	return an.targetList(s.ReturningList, sc)
}

func (an *analysis) deleteStmt(s *pg.DeleteStmt, parent *scope) relOut {
	sc := newScope(an.with(s.WithClause, parent))
	sc.rtes = append(sc.rtes, an.targetTable(s.Relation))
	for _, f := range s.UsingClause {
		an.from(f, sc)
	}
	if s.WhereClause != nil {
		an.expr(s.WhereClause, sc, "WHERE")
	}
	return an.targetList(s.ReturningList, sc)
}

// assign analyses SET lists (UPDATE, ON CONFLICT DO UPDATE).
func (an *analysis) assign(list []*pg.Node, tbl *policy.Table, sc *scope) {
	for _, n := range list {
		rt := n.GetResTarget()
		if rt == nil {
			continue
		}
		col := tbl.Column(rt.Name)
		if col != nil {
			an.addCol(col)
			if len(rt.Indirection) > 0 {
				an.refuse(CodeFeatureNotSupported, col, "assign the whole column",
					"assigning to a part of encrypted column %s is not supported", col)
			}
		}
		if mar := rt.Val.GetMultiAssignRef(); mar != nil {
			if row := mar.Source.GetRowExpr(); row != nil {
				if int(mar.Colno) <= len(row.Args) && mar.Colno > 0 {
					an.store(col, row.Args[mar.Colno-1], sc)
				}
				continue
			}
			if col != nil {
				an.refuse(CodeFeatureNotSupported, col, "assign encrypted columns from parameters or constants: SET (a, b) = ($1, $2)",
					"SET (…) = (SELECT …) into encrypted column %s is not supported", col)
			}
			if mar.Colno == 1 {
				an.expr(mar.Source, sc, "a multiple-column assignment")
			}
			continue
		}
		an.store(col, rt.Val, sc)
	}
}

// store analyses a value bound for target column t (nil: a plain column).
func (an *analysis) store(t *policy.Column, n *pg.Node, sc *scope) {
	if t == nil {
		if c := an.bare(n, sc); c != nil {
			an.refuse(CodeFeatureNotSupported, c, "copy encrypted values only within the same column",
				"copying encrypted column %s into a column without encryption would store ciphertext there", c)
		}
		an.expr(n, sc, "an expression")
		return
	}
	if n.GetSetToDefault() != nil {
		return
	}
	if v := valueOf(n); v != nil {
		an.storeValue(t, n, v)
		return
	}
	if cr := n.GetColumnRef(); cr != nil && !isStar(cr) {
		c := an.resolve(cr, sc)
		switch {
		case c == t:
			return
		case c != nil:
			an.refuse(CodeFeatureNotSupported, t, "copy values only within the same column",
				"copying encrypted column %s into encrypted column %s is not possible: each ciphertext is bound to its column", c, t)
		default:
			an.refuse(CodeFeatureNotSupported, t, "send the value as a parameter or constant so the proxy can encrypt it",
				"the value for encrypted column %s comes from a column without encryption; the proxy cannot encrypt it", t)
		}
	}
	an.refuse(CodeFeatureNotSupported, t, "compute the value in the application and send it as a parameter or constant",
		"the value for encrypted column %s is an expression; the proxy can only encrypt a parameter or a constant", t)
}

// sink receives the rows of INSERT … VALUES / SELECT.
type sink struct{ targets []*policy.Column }

func (s *sink) target(i int) *policy.Column {
	if s == nil || i >= len(s.targets) {
		return nil
	}
	return s.targets[i]
}

func (s *sink) any() *policy.Column {
	if s == nil {
		return nil
	}
	for _, t := range s.targets {
		if t != nil {
			return t
		}
	}
	return nil
}

func (an *analysis) selectStmt(s *pg.SelectStmt, parent *scope, into *sink) relOut {
	if s == nil {
		return relOut{}
	}
	sc := an.with(s.WithClause, parent)
	if s.Op != pg.SetOperation_SETOP_NONE && s.Op != pg.SetOperation_SET_OPERATION_UNDEFINED {
		l := an.selectStmt(s.Larg, sc, nil)
		r := an.selectStmt(s.Rarg, sc, nil)
		out := an.setOp(l, r)
		if into != nil {
			an.checkSink(out, into)
		}
		an.sortLimit(s, newScope(sc), out)
		return out
	}
	if len(s.ValuesLists) > 0 {
		width := 0
		for _, row := range s.ValuesLists {
			items := row.GetList().GetItems()
			if len(items) > width {
				width = len(items)
			}
			for i, it := range items {
				if t := into.target(i); t != nil {
					an.store(t, it, sc)
				} else {
					an.store(nil, it, sc)
				}
			}
		}
		out := relOut{}
		for i := 0; i < width; i++ {
			out.outs = append(out.outs, outCol{name: fmt.Sprintf("column%d", i+1)})
		}
		an.sortLimit(s, newScope(sc), out)
		return out
	}
	ls := newScope(sc)
	for _, f := range s.FromClause {
		an.from(f, ls)
	}
	if s.WhereClause != nil {
		an.expr(s.WhereClause, ls, "WHERE")
	}
	var out relOut
	if into != nil {
		out = an.sinkTargets(s.TargetList, ls, into)
	} else {
		out = an.targetList(s.TargetList, ls)
	}
	for _, g := range s.GroupClause {
		an.groupItem(g, ls, out, "GROUP BY")
	}
	if s.HavingClause != nil {
		an.expr(s.HavingClause, ls, "HAVING")
	}
	if len(s.DistinctClause) == 1 && s.DistinctClause[0].GetNode() == nil {
		for _, c := range out.allPolicy() {
			if c.Mode != policy.Deterministic {
				an.refuse(CodeFeatureNotSupported, c, "declare the column mode: deterministic, or drop DISTINCT",
					"DISTINCT on randomized encrypted column %s cannot work: equal values have different ciphertexts", c)
			}
		}
	} else {
		for _, d := range s.DistinctClause {
			an.groupItem(d, ls, out, "DISTINCT ON")
		}
	}
	for _, w := range s.WindowClause {
		an.expr(w, ls, "a window definition")
	}
	an.sortLimit(s, ls, out)
	if s.IntoClause != nil && s.IntoClause.Rel != nil {
		if t := an.table(s.IntoClause.Rel.Schemaname, s.IntoClause.Rel.Relname); t != nil {
			an.refuse(CodeFeatureNotSupported, nil, "create the table, then fill it with INSERT through the proxy",
				"SELECT INTO table %s, which has encrypted columns, is not supported", t.Name)
		}
	}
	return out
}

func (o relOut) allPolicy() []*policy.Column {
	var cs []*policy.Column
	for _, c := range o.outs {
		if c.col != nil {
			cs = append(cs, c.col)
		}
	}
	for _, s := range o.stars {
		cs = s.starCols(cs)
	}
	return cs
}

func (an *analysis) sortLimit(s *pg.SelectStmt, sc *scope, out relOut) {
	for _, n := range s.SortClause {
		sb := n.GetSortBy()
		if sb == nil {
			an.expr(n, sc, "ORDER BY")
			continue
		}
		if c := an.outputRef(sb.Node, sc, out); c != nil {
			an.refuse(CodeFeatureNotSupported, c, "sort in the application after reading, or order by another column",
				"ORDER BY encrypted column %s cannot work: ciphertext order is not the values' order", c)
		}
		an.expr(sb.Node, sc, "ORDER BY")
	}
	if s.LimitCount != nil {
		an.expr(s.LimitCount, sc, "LIMIT")
	}
	if s.LimitOffset != nil {
		an.expr(s.LimitOffset, sc, "OFFSET")
	}
}

// outputRef returns the policy column an ORDER BY / GROUP BY item names
// when it refers to an output column by position or by alias.
func (an *analysis) outputRef(n *pg.Node, sc *scope, out relOut) *policy.Column {
	if k := n.GetAConst(); k != nil {
		an.reusable = false // the position is a constant the template would not check
		if iv, ok := k.Val.(*pg.A_Const_Ival); ok {
			i := int(iv.Ival.GetIval())
			if len(out.stars) > 0 && out.hasPolicy() {
				return out.firstPolicy() // positions behind a * are unknown
			}
			if i >= 1 && i <= len(out.outs) {
				return out.outs[i-1].col
			}
		}
		return nil
	}
	if cr := n.GetColumnRef(); cr != nil && len(cr.Fields) == 1 {
		name := cr.Fields[0].GetString_().GetSval()
		for _, o := range out.outs {
			if o.name == name && o.col != nil {
				return o.col
			}
		}
	}
	return nil
}

func (an *analysis) groupItem(n *pg.Node, sc *scope, out relOut, what string) {
	if gs := n.GetGroupingSet(); gs != nil {
		for _, c := range gs.Content {
			an.groupItem(c, sc, out, what)
		}
		return
	}
	c := an.outputRef(n, sc, out)
	if c == nil {
		c = an.bare(n, sc)
		if c == nil {
			an.expr(n, sc, what)
			return
		}
	}
	if c.Mode != policy.Deterministic {
		an.refuse(CodeFeatureNotSupported, c, "declare the column mode: deterministic",
			"%s on randomized encrypted column %s cannot work: equal values have different ciphertexts", what, c)
	}
}

func (an *analysis) setOp(l, r relOut) relOut {
	if len(l.stars)+len(r.stars) > 0 && (l.hasPolicy() || r.hasPolicy()) {
		c := pickCol(l.firstPolicy(), r.firstPolicy())
		an.refuse(CodeFeatureNotSupported, c, "list the columns instead of *",
			"UNION/INTERSECT/EXCEPT over * including encrypted column %s is not supported by the proxy", c)
	}
	for i := 0; i < len(l.outs) || i < len(r.outs); i++ {
		var a, b *policy.Column
		if i < len(l.outs) {
			a = l.outs[i].col
		}
		if i < len(r.outs) {
			b = r.outs[i].col
		}
		if a != b {
			c := pickCol(a, b)
			an.refuse(CodeFeatureNotSupported, c, "combine only the same encrypted column in each position",
				"UNION/INTERSECT/EXCEPT combines encrypted column %s with something else; the result could not be decrypted", c)
		}
	}
	return l
}

// checkSink checks the outputs of a set operation bound for INSERT targets.
func (an *analysis) checkSink(out relOut, into *sink) {
	if len(out.stars) > 0 && (out.hasPolicy() || into.any() != nil) {
		c := pickCol(into.any(), out.firstPolicy())
		an.refuse(CodeFeatureNotSupported, c, "list the columns instead of *",
			"INSERT … SELECT * involving encrypted column %s is not supported by the proxy", c)
	}
	for i, o := range out.outs {
		t := into.target(i)
		if t != o.col {
			c := pickCol(t, o.col)
			an.refuse(CodeFeatureNotSupported, c, "insert parameters or constants with INSERT … VALUES, or copy within the same column",
				"INSERT … SELECT into encrypted column %s from a source the proxy cannot encrypt", c)
		}
	}
}

// sinkTargets analyses the select list of INSERT … SELECT.
func (an *analysis) sinkTargets(list []*pg.Node, sc *scope, into *sink) relOut {
	var out relOut
	for i, n := range list {
		rt := n.GetResTarget()
		if rt == nil {
			continue
		}
		if cr := rt.Val.GetColumnRef(); cr != nil && isStar(cr) {
			an.refuse(CodeFeatureNotSupported, into.any(), "list the columns instead of *",
				"INSERT … SELECT * into a table with encrypted columns, or from one, is not supported by the proxy")
		}
		t := into.target(i)
		if t != nil {
			an.store(t, rt.Val, sc)
		} else {
			an.store(nil, rt.Val, sc)
		}
		out.outs = append(out.outs, outCol{name: resName(rt), col: t})
	}
	return out
}

// targetList analyses a select or RETURNING list whose bare policy
// columns the proxy decrypts in the result.
func (an *analysis) targetList(list []*pg.Node, sc *scope) relOut {
	var out relOut
	for _, n := range list {
		rt := n.GetResTarget()
		if rt == nil {
			continue
		}
		if cr := rt.Val.GetColumnRef(); cr != nil && isStar(cr) {
			out.stars = append(out.stars, an.star(cr, sc)...)
			continue
		}
		if c := an.bare(rt.Val, sc); c != nil {
			out.outs = append(out.outs, outCol{name: resName(rt), col: c})
			continue
		}
		an.expr(rt.Val, sc, "an expression")
		out.outs = append(out.outs, outCol{name: resName(rt)})
	}
	return out
}

// star returns the entries a * or t.* expands.
func (an *analysis) star(cr *pg.ColumnRef, sc *scope) []*rte {
	var rs []*rte
	if len(cr.Fields) == 1 {
		rs = append(rs, sc.rtes...)
	} else {
		q := cr.Fields[len(cr.Fields)-2].GetString_().GetSval()
		if r := sc.find(q); r != nil {
			rs = append(rs, r)
		}
	}
	for _, r := range rs {
		for _, c := range r.starCols(nil) {
			an.addCol(c)
		}
	}
	return rs
}

func isStar(cr *pg.ColumnRef) bool {
	return len(cr.Fields) > 0 && cr.Fields[len(cr.Fields)-1].GetAStar() != nil
}

func resName(rt *pg.ResTarget) string {
	if rt.Name != "" {
		return rt.Name
	}
	n := rt.Val
	for {
		if tc := n.GetTypeCast(); tc != nil {
			n = tc.Arg
			continue
		}
		break
	}
	if cr := n.GetColumnRef(); cr != nil && len(cr.Fields) > 0 {
		return cr.Fields[len(cr.Fields)-1].GetString_().GetSval()
	}
	if fc := n.GetFuncCall(); fc != nil && len(fc.Funcname) > 0 {
		return fc.Funcname[len(fc.Funcname)-1].GetString_().GetSval()
	}
	return "?column?"
}

// from adds a FROM item to sc.
func (an *analysis) from(n *pg.Node, sc *scope) {
	switch f := n.GetNode().(type) {
	case *pg.Node_RangeVar:
		sc.rtes = append(sc.rtes, an.rangeVar(f.RangeVar, sc))
	case *pg.Node_JoinExpr:
		j := f.JoinExpr
		before := len(sc.rtes)
		an.from(j.Larg, sc)
		mid := len(sc.rtes)
		an.from(j.Rarg, sc)
		left, right := sc.rtes[before:mid], sc.rtes[mid:]
		if j.IsNatural {
			for _, r := range sc.rtes[before:] {
				if r.hasPolicy() {
					c := pickCol(firstStarCol(r), nil)
					an.refuse(CodeFeatureNotSupported, c, "join with ON and name the columns",
						"NATURAL JOIN with a table that has encrypted columns is not supported by the proxy")
				}
			}
		}
		for _, u := range j.UsingClause {
			an.usingCol(u.GetString_().GetSval(), left, right)
		}
		if j.Quals != nil {
			an.expr(j.Quals, sc, "a join condition")
		}
		if j.Alias != nil {
			inner := append([]*rte(nil), sc.rtes[before:]...)
			sc.rtes = append(sc.rtes[:before], &rte{name: j.Alias.Aliasname, derived: true, stars: inner})
		}
	case *pg.Node_RangeSubselect:
		rs := f.RangeSubselect
		outer := sc
		if !rs.Lateral {
			outer = sc.parent // siblings are not visible without LATERAL
		}
		out := an.query(rs.Subquery, outer)
		r := &rte{derived: true, outs: out.outs, stars: out.stars}
		if rs.Alias != nil {
			r.name = rs.Alias.Aliasname
			an.renameOuts(r, rs.Alias.Colnames)
		}
		sc.rtes = append(sc.rtes, r)
	case *pg.Node_RangeFunction:
		rf := f.RangeFunction
		an.expr(&pg.Node{Node: &pg.Node_List{List: &pg.List{Items: rf.Functions}}}, sc, "a function in FROM")
		r := &rte{open: true}
		if rf.Alias != nil {
			r.name = rf.Alias.Aliasname
		} else if len(rf.Functions) > 0 {
			if fc := rf.Functions[0].GetList().GetItems(); len(fc) > 0 {
				if call := fc[0].GetFuncCall(); call != nil && len(call.Funcname) > 0 {
					r.name = call.Funcname[len(call.Funcname)-1].GetString_().GetSval()
				}
			}
		}
		sc.rtes = append(sc.rtes, r)
	case *pg.Node_RangeTableSample:
		ts := f.RangeTableSample
		an.from(ts.Relation, sc)
		for _, a := range ts.Args {
			an.expr(a, sc, "TABLESAMPLE")
		}
		an.expr(ts.Repeatable, sc, "TABLESAMPLE")
	default:
		// XMLTABLE, JSON_TABLE, …: their expressions may not touch
		// policy columns; their columns are unknown.
		an.expr(n, sc, "a table function")
		sc.rtes = append(sc.rtes, &rte{open: true, name: aliasOf(n)})
	}
}

func aliasOf(n *pg.Node) string {
	var name string
	n.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil || fd.IsList() {
			return true
		}
		v.Message().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if a, ok := v.Interface().(protoreflect.Message); ok && !fd.IsList() {
				if al, ok := a.Interface().(*pg.Alias); ok {
					name = al.Aliasname
				}
			}
			return true
		})
		return true
	})
	return name
}

func firstStarCol(r *rte) *policy.Column {
	if cs := r.starCols(nil); len(cs) > 0 {
		return cs[0]
	}
	return nil
}

func (an *analysis) usingCol(name string, left, right []*rte) {
	side := func(rs []*rte) (c *policy.Column, found, maybe bool) {
		for _, r := range rs {
			x, f, m := r.lookup(name)
			if f {
				return x, true, false
			}
			maybe = maybe || m
		}
		return nil, false, maybe
	}
	a, fa, _ := side(left)
	b, fb, _ := side(right)
	if a == nil && b == nil {
		return
	}
	c := pickCol(a, b)
	an.addCol(c)
	if !fa || !fb || a != b {
		an.refuse(CodeFeatureNotSupported, c, "join only on the same deterministic column",
			"JOIN USING compares encrypted column %s with a different column; ciphertexts of different columns never match", c)
	}
	if c.Mode != policy.Deterministic {
		an.refuse(CodeFeatureNotSupported, c, "declare the column mode: deterministic",
			"JOIN USING on randomized encrypted column %s cannot work: equal values have different ciphertexts", c)
	}
}

func (an *analysis) rangeVar(rv *pg.RangeVar, sc *scope) *rte {
	var r *rte
	if rv.Schemaname == "" {
		if c := sc.cte(rv.Relname); c != nil {
			cp := *c
			r = &cp
		}
	}
	if r == nil {
		r = &rte{name: rv.Relname, relname: rv.Relname, schema: rv.Schemaname, open: true}
		r.table = an.table(rv.Schemaname, rv.Relname)
		if r.table != nil {
			an.touches = true
		}
	}
	r.name = rv.Relname
	if rv.Alias != nil {
		r.name, r.relname = rv.Alias.Aliasname, ""
		if len(rv.Alias.Colnames) > 0 {
			if r.table != nil {
				an.refuse(CodeFeatureNotSupported, firstStarCol(r), "use the table's column names",
					"renaming the columns of table %s, which has encrypted columns, is not supported by the proxy", r.table.Name)
			}
			an.renameOuts(r, rv.Alias.Colnames)
		}
	}
	return r
}

// mentionsPolicy returns a policy table any RangeVar under n names.
func (an *analysis) mentionsPolicy(n protoreflect.ProtoMessage) *policy.Table {
	var found *policy.Table
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		if found != nil {
			return
		}
		if rv, ok := m.Interface().(*pg.RangeVar); ok {
			if t := an.table(rv.Schemaname, rv.Relname); t != nil {
				found = t
				an.touches = true
				return
			}
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Message() == nil || fd.IsMap() {
				return true
			}
			if fd.IsList() {
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					walk(l.Get(i).Message())
				}
			} else {
				walk(v.Message())
			}
			return found == nil
		})
	}
	if n != nil {
		walk(n.ProtoReflect())
	}
	return found
}

// mentionsPolicyName reports whether a DROP/RENAME/ALTER … SET SCHEMA
// names a policy table (as a RangeVar or as a list of names).
func (an *analysis) mentionsPolicyName(n *pg.Node) bool {
	if an.mentionsPolicy(n) != nil {
		return true
	}
	hit := false
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		if l, ok := m.Interface().(*pg.List); ok {
			var names []string
			for _, it := range l.Items {
				if s := it.GetString_(); s != nil {
					names = append(names, s.Sval)
				}
			}
			if len(names) > 0 && len(an.a.byName[names[len(names)-1]]) > 0 {
				hit = true
			}
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Message() == nil || fd.IsMap() {
				return true
			}
			if fd.IsList() {
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					walk(l.Get(i).Message())
				}
			} else {
				walk(v.Message())
			}
			return true
		})
	}
	walk(n.ProtoReflect())
	return hit
}

// --- DDL ---

func (an *analysis) createTable(s *pg.CreateStmt) {
	t := an.table(s.Relation.GetSchemaname(), s.Relation.GetRelname())
	if t == nil {
		return
	}
	an.touches = true
	an.res.Invalidates = true
	for _, e := range s.TableElts {
		if cd := e.GetColumnDef(); cd != nil {
			an.columnDef(cd, t)
		}
		if c := e.GetConstraint(); c != nil {
			an.constraint(c, t, nil)
		}
	}
	for _, c := range s.Constraints {
		an.constraint(c.GetConstraint(), t, nil)
	}
}

func (an *analysis) alterTable(s *pg.AlterTableStmt) {
	t := an.table(s.Relation.GetSchemaname(), s.Relation.GetRelname())
	if t == nil {
		return
	}
	an.touches = true
	an.res.Invalidates = true
	for _, c := range s.Cmds {
		cmd := c.GetAlterTableCmd()
		if cmd == nil {
			continue
		}
		col := t.Column(cmd.Name)
		switch cmd.Subtype {
		case pg.AlterTableType_AT_AddColumn:
			if cd := cmd.Def.GetColumnDef(); cd != nil {
				an.columnDef(cd, t)
			}
		case pg.AlterTableType_AT_ColumnDefault:
			if col != nil && cmd.Def != nil && !isNullConst(cmd.Def) {
				an.refuseDefault(col)
			}
		case pg.AlterTableType_AT_AddConstraint:
			an.constraint(cmd.Def.GetConstraint(), t, nil)
		case pg.AlterTableType_AT_AlterColumnType:
			if col != nil {
				if cd := cmd.Def.GetColumnDef(); cd != nil && cd.RawDefault != nil {
					an.refuse(CodeFeatureNotSupported, col, "", "changing the type of encrypted column %s with USING is refused: the expression would run on ciphertext", col)
				}
			}
		}
	}
}

func (an *analysis) columnDef(cd *pg.ColumnDef, t *policy.Table) {
	col := t.Column(cd.Colname)
	if col == nil {
		for _, c := range cd.Constraints {
			an.constraint(c.GetConstraint(), t, nil)
		}
		return
	}
	if cd.RawDefault != nil && !isNullConst(cd.RawDefault) {
		an.refuseDefault(col)
	}
	for _, c := range cd.Constraints {
		an.constraint(c.GetConstraint(), t, col)
	}
}

func (an *analysis) constraint(c *pg.Constraint, t *policy.Table, col *policy.Column) {
	if c == nil {
		return
	}
	switch c.Contype {
	case pg.ConstrType_CONSTR_DEFAULT:
		if col != nil && c.RawExpr != nil && !isNullConst(c.RawExpr) {
			an.refuseDefault(col)
		}
	case pg.ConstrType_CONSTR_GENERATED:
		if col != nil {
			an.refuse(CodeFeatureNotSupported, col, "", "encrypted column %s cannot be a generated column: the server would store plaintext", col)
		}
	case pg.ConstrType_CONSTR_CHECK:
		if col != nil {
			an.refuse(CodeFeatureNotSupported, col, "check the values in the application",
				"a CHECK constraint on encrypted column %s would run on ciphertext", col)
		}
		an.ddlExpr(c.RawExpr, t, "a CHECK constraint")
	case pg.ConstrType_CONSTR_EXCLUSION:
		for _, e := range c.Exclusions {
			an.ddlExpr(e, t, "an exclusion constraint")
		}
	}
}

func (an *analysis) refuseDefault(col *policy.Column) {
	an.refuse(CodeFeatureNotSupported, col, "let the application supply the value through the proxy",
		"a default for encrypted column %s would be stored unencrypted", col)
}

// ddlExpr refuses DDL expressions (CHECK, index expressions, RLS
// policies) that mention a policy column of t: they run on ciphertext and
// their constants would sit in the catalog in plaintext.
func (an *analysis) ddlExpr(n *pg.Node, t *policy.Table, what string) {
	if n == nil {
		return
	}
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		if cr, ok := m.Interface().(*pg.ColumnRef); ok && len(cr.Fields) > 0 {
			if c := t.Column(cr.Fields[len(cr.Fields)-1].GetString_().GetSval()); c != nil {
				an.refuse(CodeFeatureNotSupported, c, "", "encrypted column %s in %s would be evaluated on ciphertext", c, what)
			}
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Message() == nil || fd.IsMap() {
				return true
			}
			if fd.IsList() {
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					walk(l.Get(i).Message())
				}
			} else {
				walk(v.Message())
			}
			return true
		})
	}
	walk(n.ProtoReflect())
}

func isNullConst(n *pg.Node) bool {
	for {
		if tc := n.GetTypeCast(); tc != nil {
			n = tc.Arg
			continue
		}
		break
	}
	k := n.GetAConst()
	return k != nil && k.Isnull
}

// --- search_path ---

func (an *analysis) setStmt(s *pg.VariableSetStmt) {
	if s.Name != "search_path" {
		if s.Kind == pg.VariableSetKind_VAR_RESET_ALL {
			an.pathChanged(nil, false)
		}
		return
	}
	switch s.Kind {
	case pg.VariableSetKind_VAR_SET_VALUE:
		var path []string
		for _, a := range s.Args {
			k := a.GetAConst()
			if k == nil || k.GetSval() == nil {
				an.pathChanged(nil, s.IsLocal)
				return
			}
			path = append(path, k.GetSval().Sval)
		}
		an.pathChanged(path, s.IsLocal)
	default:
		an.pathChanged(nil, s.IsLocal)
	}
}

func (an *analysis) pathChanged(path []string, local bool) {
	if path == nil {
		path = nil
	}
	an.res.SearchPathChanged = true
	an.res.SearchPath = path
	an.res.SearchPathLocal = local
	an.sp = path
	an.reusable = false
}

// splitPath splits a search_path string as PostgreSQL's
// SplitIdentifierString does: commas, optional double quotes, unquoted
// names folded to lower case.
func splitPath(s string) ([]string, bool) {
	var out []string
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			return out, len(out) == 0
		}
		var name string
		if s[i] == '"' {
			var b strings.Builder
			i++
			for {
				if i >= len(s) {
					return nil, false
				}
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					i++
					break
				}
				b.WriteByte(s[i])
				i++
			}
			name = b.String()
		} else {
			j := i
			for j < len(s) && s[j] != ',' && !isSpace(s[j]) {
				j++
			}
			name = strings.ToLower(s[i:j])
			i = j
		}
		out = append(out, name)
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			return out, true
		}
		if s[i] != ',' {
			return nil, false
		}
		i++
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func quoteIdent(s string) string {
	plain := s != ""
	for i, r := range s {
		if !(r == '_' || (r >= 'a' && r <= 'z') || (i > 0 && r >= '0' && r <= '9')) {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func sortedCols(t *policy.Table) []*policy.Column {
	names := make([]string, 0, len(t.Columns))
	for n := range t.Columns {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*policy.Column, len(names))
	for i, n := range names {
		out[i] = t.Columns[n]
	}
	return out
}

// single is the policy column of a one-column query result.
func (o relOut) single() *policy.Column {
	if len(o.outs) == 1 && len(o.stars) == 0 {
		return o.outs[0].col
	}
	return nil
}
