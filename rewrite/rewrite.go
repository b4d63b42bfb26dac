package rewrite

import (
	"fmt"
	"strings"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// Use says how a value meets its policy column.
type Use uint8

const (
	// UseStore: the value is written into the column. The proxy encrypts it
	// under the column's current data key and sends bytea (OID 17).
	UseStore Use = iota + 1
	// UseCompare: the value is compared with a deterministic column. The
	// proxy encrypts it under every data-key version the column may hold and
	// sends the candidates as bytea[] (OID 1001).
	UseCompare
)

func (u Use) String() string {
	switch u {
	case UseStore:
		return "store"
	case UseCompare:
		return "compare"
	}
	return fmt.Sprintf("Use(%d)", uint8(u))
}

// Placeholder is the text Result.SQL holds at every non-NULL Literal span.
// It is a parameter reference no statement can satisfy, so SQL sent
// without the proxy's replacement fails at the server ("there is no
// parameter $0") instead of storing or comparing anything.
const Placeholder = "$0"

// Options tunes an Analyzer.
type Options struct {
	// CacheSize bounds each of the two caches (exact text, fingerprint),
	// in statements. Zero means 4096; negative disables caching.
	CacheSize int
}

// Result is the analysis of one Parse or Query message. Results may be
// shared between callers through the cache: treat them as read-only.
type Result struct {
	// Touches is false when no policy table is involved: forward the
	// original SQL untouched.
	Touches bool
	// Refusal, when non-nil, refuses the whole message; nothing of it may be
	// sent to the server.
	Refusal *Refusal
	// SQL is the text to send: the input when nothing changed, otherwise
	// the input with comparisons rewritten to array form, casts around
	// policy values removed and each non-NULL policy literal replaced by
	// Placeholder.
	SQL string
	// Params describes $1…$n: Params[i] is $(i+1). Its length is the
	// highest parameter number referenced. Column nil: not a policy value,
	// forward as the client sent it.
	Params []Param
	// ScalarSQL, when not empty, is SQL with each comparison of a policy
	// column with a parameter whose Params[i].Scalar is set written as
	// col = $n::bytea (or <>) instead of col = ANY($n::bytea[]) (ALL for
	// <>). It is valid while each such parameter has a single candidate,
	// that is while its column has one live data key and no migration,
	// and PostgreSQL runs it faster: the array form is padded to keep the
	// generic plan (see proxy's session.candidates). Empty when there is
	// no such comparison or the statement has Literals.
	ScalarSQL string
	// Literals are the simple-protocol constants bound for policy columns,
	// in order of their position in SQL. Start/End are byte offsets into
	// SQL (not into the input).
	Literals []Literal
	// SearchPathChanged reports a statement that sets or resets
	// search_path. SearchPath is the new value when the analyser knows it
	// (SET search_path / SET SCHEMA / set_config with constants); when it
	// is nil, the proxy must ask the server (SHOW search_path) before
	// analysing later statements. SearchPathLocal marks SET LOCAL (or
	// set_config(…, true)), which lasts only until the transaction ends.
	SearchPathChanged bool
	SearchPath        []string
	SearchPathLocal   bool
	// Invalidates reports DDL on a policy table: refresh the catalog cache.
	Invalidates bool
	// Kind is the first statement's kind: select, insert, update, delete,
	// merge, copy, explain, set, ddl, other.
	Kind string
	// Columns are the policy columns read or written, for the audit log.
	Columns []*policy.Column
}

// Param describes one parameter of an extended-protocol statement.
type Param struct {
	Column *policy.Column // nil: not a policy value
	Use    Use
	// Scalar, on a UseCompare parameter, means every use is a plain
	// comparison col = $n or col <> $n, which ScalarSQL writes with a
	// bytea parameter: bind one candidate there.
	Scalar bool
}

// Literal is a simple-protocol constant bound for a policy column.
type Literal struct {
	// Start and End delimit the placeholder in Result.SQL that the proxy
	// replaces by the ciphertext literal: a bytea literal for UseStore, a
	// bytea[] literal for UseCompare (for instance '\x…'::bytea and
	// '{"\\x…","\\x…"}'::bytea[]).
	Start, End int
	// Value is the constant as PostgreSQL reads it: string contents with
	// quoting and escapes removed, numbers as written (hexadecimal, octal,
	// binary and underscores normalised to decimal), true/false.
	Value string
	// Null is a NULL constant. Its span already holds a valid NULL
	// ("NULL" for UseStore, "NULL::bytea[]" for UseCompare); the proxy
	// may leave it as it is.
	Null   bool
	Column *policy.Column
	Use    Use
	// Quant, on a UseCompare literal of col = 'x' or col <> 'x', is the
	// quantifier the proxy writes around the candidates: "ANY" (for =) or
	// "ALL" (for <>). The statement holds "col = <placeholder>", so the
	// proxy writes ANY(ARRAY[…]::bytea[]) for several candidates and a
	// plain bytea literal for one, which PostgreSQL plans and runs faster
	// (about 8% of a simple-protocol lookup). A NULL's span holds
	// "ANY(NULL::bytea[])" already. Empty for the elements of an IN list,
	// which stay bytea[] operands of ||.
	Quant string
}

// Refusal is a statement the proxy must refuse. Messages never contain
// values from the statement.
type Refusal struct {
	Code    string // SQLSTATE
	Message string
	Hint    string
	Column  *policy.Column // the column concerned, when there is one
}

func (r *Refusal) Error() string {
	if r.Hint == "" {
		return r.Message + " (SQLSTATE " + r.Code + ")"
	}
	return r.Message + " (SQLSTATE " + r.Code + "; hint: " + r.Hint + ")"
}

// SQLSTATEs used in refusals.
const (
	CodeFeatureNotSupported = "0A000" // the operation cannot work on ciphertext, or is not supported yet
	CodeSyntaxError         = "42601" // unparseable statement that may reference a policy table
	CodeDatatypeMismatch    = "42804" // a parameter or cast whose type conflicts with the column
	CodeAmbiguousColumn     = "42702" // a name the proxy cannot resolve with certainty
	CodeUndefinedTable      = "42P01" // a qualifier that names no table of the statement
	CodeInternalError       = "XX000" // the analyser failed; the statement is refused to stay safe
)

// Analyzer analyses statements against one policy snapshot. It is safe for
// concurrent use.
type Analyzer struct {
	pol    *policy.Policy
	byName map[string][]*policy.Table
	// names are the lower-cased bare table names for the fast path; slow
	// is set when one of them needs policy.MayTouch's Unicode folding.
	names []string
	first [256][]needle // fast-path needles by first byte
	slow  bool
	exact *lru[exactKey, *Result]
	fps   *lru[fpKey, *template]
}

type exactKey struct{ sp, sql string }
type fpKey struct {
	sp string
	fp uint64
}

// NewAnalyzer returns an Analyzer for the policy p.
func NewAnalyzer(p *policy.Policy, opts Options) *Analyzer {
	if p == nil {
		p = policy.Empty()
	}
	size := opts.CacheSize
	if size == 0 {
		size = 4096
	}
	a := &Analyzer{pol: p, byName: map[string][]*policy.Table{}}
	for _, t := range p.Tables() {
		a.byName[t.Name.Name] = append(a.byName[t.Name.Name], t)
	}
	for n := range a.byName {
		l := strings.ToLower(n)
		if !isASCII(l) {
			a.slow = true
		}
		a.names = append(a.names, l)
		if strings.Contains(n, `"`) {
			// A quoted identifier doubles its quotes in SQL text.
			a.names = append(a.names, strings.ReplaceAll(l, `"`, `""`))
		}
	}
	a.buildNeedles()
	if size > 0 {
		a.exact = newLRU[exactKey, *Result](size)
		a.fps = newLRU[fpKey, *template](size)
	}
	return a
}

// Policy returns the policy snapshot the Analyzer was built for.
func (a *Analyzer) Policy() *policy.Policy { return a.pol }

// Analyze analyses sql (one Parse query, or a Query message's text that
// may hold several statements) as the session would run it with
// searchPath (nil means ["public"]). It never panics: trouble inside the
// analyser becomes a Refusal when the statement may touch a policy table.
func (a *Analyzer) Analyze(sql string, searchPath []string) (res *Result) {
	return a.AnalyzeMemo(nil, sql, searchPath)
}

// A Memo holds, for one caller (a session; a Memo is not safe for
// concurrent use), the template of the last statement that Analyze
// answered from a template, and the statement's text up to its first
// constant. A simple-protocol client sends the same statements with other
// constants over and over: when the next text starts with that prefix and
// has the template's token shape, AnalyzeMemo instantiates the template at
// once, without the table-name scan and the shared caches' lookups. The
// shape check is the one the shared template cache makes, so the answer is
// the same. The zero Memo is empty.
type Memo struct {
	a      *Analyzer
	sp     string // the search path the template was made for
	prefix string
	t      *template
}

// AnalyzeMemo is Analyze, trying m's template first and remembering the
// template it uses in m. m may be nil.
func (a *Analyzer) AnalyzeMemo(m *Memo, sql string, searchPath []string) (res *Result) {
	if m != nil && m.t != nil && m.a == a && len(m.prefix) > 0 && strings.HasPrefix(sql, m.prefix) {
		sp := defaultSearchPath
		if searchPath != nil {
			sp = searchPath
		}
		if pathIs(sp, m.sp) {
			if toks, lexed := lex(sql); lexed {
				r := m.t.instantiate(sql, toks)
				toks.release()
				if r != nil {
					return r
				}
			}
		}
	}
	touch, path := a.needsAnalysis(sql)
	if !touch && !path {
		return &Result{SQL: sql, Kind: quickKind(sql)}
	}
	if searchPath == nil {
		searchPath = defaultSearchPath
	}
	key := exactKey{sp: joinPath(searchPath), sql: sql}
	if a.exact != nil {
		if r, ok := a.exact.get(key); ok {
			return r
		}
	}
	defer func() {
		if p := recover(); p != nil {
			res = &Result{SQL: sql, Kind: "other"}
			if touch {
				res.Touches = true
				res.Refusal = &Refusal{Code: CodeInternalError,
					Message: "the proxy could not analyse this statement, so it refuses it to protect encrypted columns",
					Hint:    "simplify the statement or report it to the proxy's operators"}
			}
		}
	}()
	// The pure-Go lexer gives pg_query's tokens for ordinary statements in
	// a fraction of the time; what it is unsure of goes to pg_query.
	toks, lexed := lex(sql)
	if !lexed {
		var err error
		if toks, err = scan(sql); err != nil {
			return a.unparseable(sql, touch)
		}
	}
	var fp uint64
	fpOK := false
	// pg_query cannot parse invalid UTF-8 (its tree is protobuf), so such
	// text must take the full path and its refusal, never a cached
	// template.
	if a.fps != nil && toks.constants > 0 && utf8.ValidString(sql) {
		// Keyed by the token shape (what instantiate checks), which costs
		// no second parse, rather than by pg_query's fingerprint.
		fp, fpOK = shapeHash(sql, toks), true
		if t, ok := a.fps.get(fpKey{key.sp, fp}); ok {
			if r := t.instantiate(sql, toks); r != nil {
				m.remember(a, key.sp, sql, toks, t)
				if lexed {
					toks.release() // r keeps no reference to them
				}
				return r
			}
		}
	}
	if lexed {
		// The analysis works on pg_query's own tokens. A template is
		// cached under the lexer's shape only when the two agree (they
		// always should: FuzzLex holds them to it).
		st, err := scan(sql)
		if err != nil {
			return a.unparseable(sql, touch)
		}
		if !sameTokens(toks, st) {
			fpOK = false
		}
		toks.release()
		toks = st
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		return a.unparseable(sql, touch)
	}
	r, t := a.analyze(sql, toks, tree, searchPath)
	if a.exact != nil {
		a.exact.put(key, r)
	}
	if fpOK && t != nil && t.reusable {
		a.fps.put(fpKey{key.sp, fp}, t)
		m.remember(a, key.sp, sql, toks, t)
	}
	return r
}

// remember keeps t, a template sql instantiates (toks are sql's tokens),
// with sql's text up to its first constant.
func (m *Memo) remember(a *Analyzer, sp, sql string, toks *tokens, t *template) {
	if m == nil || m.t == t && m.a == a && m.sp == sp && strings.HasPrefix(sql, m.prefix) {
		return
	}
	for _, k := range toks.list {
		if isVarConst(k.kind) {
			*m = Memo{a: a, sp: sp, prefix: strings.Clone(sql[:k.start]), t: t}
			return
		}
	}
}

var defaultSearchPath = []string{"public"}

func (a *Analyzer) unparseable(sql string, touch bool) *Result {
	if !touch {
		// Only "search_path" or "schema" matched: the server reports the
		// syntax error itself, exactly as without the proxy.
		return &Result{SQL: sql, Kind: quickKind(sql)}
	}
	return &Result{SQL: sql, Kind: "other", Touches: true, Refusal: &Refusal{
		Code:    CodeSyntaxError,
		Message: "syntax error in a statement that may reference a table with encrypted columns; the proxy refuses statements it cannot parse",
		Hint:    "check the statement's syntax (the proxy parses with the PostgreSQL 17 grammar)",
	}}
}

// pathIs reports whether joinPath(sp) == joined, without joining.
func pathIs(sp []string, joined string) bool {
	for i, p := range sp {
		if i > 0 {
			if !strings.HasPrefix(joined, "\x00") {
				return false
			}
			joined = joined[1:]
		}
		if !strings.HasPrefix(joined, p) {
			return false
		}
		joined = joined[len(p):]
	}
	return joined == ""
}

func joinPath(sp []string) string {
	switch len(sp) {
	case 0:
		return ""
	case 1:
		return sp[0]
	}
	return strings.Join(sp, "\x00")
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
