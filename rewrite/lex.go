package rewrite

import (
	"math"
	"strings"
	"sync"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// lex is a pure-Go fast path for scan: it tokenises sql the way pg.Scan
// (PostgreSQL 17's scan.l as patched by libpg_query, with
// standard_conforming_strings on) does, and returns the very same tokens
// value — same token list with comments dropped, same match, same
// constants. ok is false for any text lex is not certain to tokenise
// exactly like pg.Scan (including every text pg.Scan rejects); the caller
// then falls back to scan, so a false costs speed, never correctness.
//
// Constructs lex declines (ok=false):
//   - invalid UTF-8 or a NUL byte anywhere, or text of 2 GiB or more;
//   - U&'…', U&"…" and the identifier u directly followed by &; N'…';
//   - E'…' with a \u or \U escape, or an octal or hex escape giving byte 0
//     or a byte >= 0x80 (PostgreSQL then checks the encoding);
//   - a string constant followed by whitespace and "--" comments spanning
//     a newline and then another quote (libpg_query keeps two constants,
//     PostgreSQL joins them into one);
//   - a "$" that starts neither a parameter nor a dollar quote ($, $a, and
//     anything after $1 that could continue an identifier: $1abc, $1$);
//   - a number directly followed by an identifier character, "$" included
//     (123abc, 1_000$1, 1e5$), or with a malformed exponent or radix part
//     (1e, 1e+, 1.2e, 0x, 0b2, 1_, 1__2);
//   - a zero-length quoted identifier "";
//   - an operator of 64 bytes or more, or a run of more than 65 operator
//     characters with no comment start in its first 65;
//   - any byte scan.l only matches with its {other} rule: \ { } and other
//     punctuation outside the operator and "self" sets, control characters,
//     DEL;
//   - anything unterminated: strings, quoted identifiers, dollar quotes and
//     /* comments.
func lex(sql string) (*tokens, bool) {
	n := len(sql)
	if n >= math.MaxInt32 || strings.IndexByte(sql, 0) >= 0 || !utf8.ValidString(sql) {
		return nil, false
	}
	var buf [96]tok
	list := buf[:0]
	i := 0
	for i < n {
		c := sql[i]
		start := i
		var kind pg.Token
		switch lexClass[c] {
		case clSpace:
			i++
			continue
		case clIdent:
			if i+1 < n {
				switch d := sql[i+1]; {
				case d == '\'':
					switch c {
					case 'e', 'E':
						e, ok := lexQuoted(sql, i+2, qExtended)
						if !ok {
							return nil, false
						}
						list = append(list, tok{int32(start), int32(e), pg.Token_SCONST})
						i = e
						continue
					case 'b', 'B', 'x', 'X':
						e, ok := lexQuoted(sql, i+2, qBits)
						if !ok {
							return nil, false
						}
						k := pg.Token_BCONST
						if c == 'x' || c == 'X' {
							k = pg.Token_XCONST
						}
						list = append(list, tok{int32(start), int32(e), k})
						i = e
						continue
					case 'n', 'N':
						return nil, false // N'…': NCHAR and a string
					}
				case d == '&' && (c == 'u' || c == 'U'):
					return nil, false // U&'…', U&"…", or scan.l's {xufailed}
				}
			}
			j := i + 1
			for j < n && identCont[sql[j]] {
				j++
			}
			kind = keywordKind(sql[i:j])
			i = j
		case clDigit:
			e, k, ok := lexNumber(sql, i)
			if !ok {
				return nil, false
			}
			kind, i = k, e
		case clDot:
			switch {
			case i+1 < n && isDigit(sql[i+1]):
				e, k, ok := lexNumber(sql, i)
				if !ok {
					return nil, false
				}
				kind, i = k, e
			case i+1 < n && sql[i+1] == '.':
				kind, i = pg.Token_DOT_DOT, i+2
			default:
				kind, i = pg.Token_ASCII_46, i+1
			}
		case clColon:
			switch {
			case i+1 < n && sql[i+1] == ':':
				kind, i = pg.Token_TYPECAST, i+2
			case i+1 < n && sql[i+1] == '=':
				kind, i = pg.Token_COLON_EQUALS, i+2
			default:
				kind, i = pg.Token_ASCII_58, i+1
			}
		case clSelf:
			kind, i = pg.Token(c), i+1
		case clQuote:
			e, ok := lexQuoted(sql, i+1, qPlain)
			if !ok {
				return nil, false
			}
			kind, i = pg.Token_SCONST, e
		case clDQuote:
			e, ok := lexQuotedIdent(sql, i+1)
			if !ok {
				return nil, false
			}
			kind, i = pg.Token_IDENT, e
		case clDollar:
			e, k, ok := lexDollar(sql, i)
			if !ok {
				return nil, false
			}
			kind, i = k, e
		case clOp:
			if i+1 < n {
				if c == '-' && sql[i+1] == '-' {
					// {comment}: to the end of the line (the newline is
					// whitespace). Dropped, like SQL_COMMENT in scan.
					j := i + 2
					for j < n && sql[j] != '\n' && sql[j] != '\r' {
						j++
					}
					i = j
					continue
				}
				if c == '/' && sql[i+1] == '*' {
					e, ok := skipCComment(sql, i+2)
					if !ok {
						return nil, false
					}
					i = e
					continue
				}
			}
			e, k, ok := lexOperator(sql, i)
			if !ok {
				return nil, false
			}
			kind, i = k, e
		default: // scan.l's {other}, or a byte lex does not handle
			return nil, false
		}
		list = append(list, tok{int32(start), int32(i), kind})
	}
	t := tokensPool.Get().(*tokens)
	if t.list == nil {
		t.list = make([]tok, 0, len(list))
	}
	t.list = append(t.list[:0], list...)
	finish(t)
	return t, true
}

// tokensPool recycles the tokens of statements whose analysis came from a
// cached template (Analyze releases them); tokens kept by a new template
// are simply never returned.
var tokensPool = sync.Pool{New: func() any { return new(tokens) }}

// release returns t to tokensPool. Nothing may use t afterwards.
func (t *tokens) release() {
	if cap(t.list) > 1024 {
		return // let an unusually long statement's storage go
	}
	*t = tokens{list: t.list[:0], match: t.match[:0]}
	tokensPool.Put(t)
}

// Byte classes for the first byte of a token.
const (
	clOther  = iota
	clSpace  // [ \t\n\r\f\v]
	clIdent  // ident_start: [A-Za-z\200-\377_]
	clDigit  // [0-9]
	clDot    // .
	clColon  // :
	clSelf   // , ( ) [ ] ; — "self" characters that are not op_chars
	clQuote  // '
	clDQuote // "
	clDollar // $
	clOp     // op_chars: ~ ! @ # ^ & | ` ? + - * / % < > =
)

var lexClass [256]uint8

// identCont is scan.l's ident_cont: [A-Za-z\200-\377_0-9\$].
var identCont [256]bool

// opChar is scan.l's op_chars.
var opChar [256]bool

func init() {
	for c := 0; c < 256; c++ {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c >= 0x80:
			lexClass[c] = clIdent
			identCont[c] = true
		case c >= '0' && c <= '9':
			lexClass[c] = clDigit
			identCont[c] = true
		}
	}
	identCont['$'] = true
	for _, c := range []byte(" \t\n\r\f\v") {
		lexClass[c] = clSpace
	}
	for _, c := range []byte(",()[];") {
		lexClass[c] = clSelf
	}
	for _, c := range []byte("~!@#^&|`?+-*/%<>=") {
		lexClass[c] = clOp
		opChar[c] = true
	}
	lexClass['.'] = clDot
	lexClass[':'] = clColon
	lexClass['\''] = clQuote
	lexClass['"'] = clDQuote
	lexClass['$'] = clDollar
	initKeywords()
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// Quoted string flavours (scan.l's exclusive states xq, xe, xb/xh).
const (
	qPlain    = iota // '…' with '' (standard_conforming_strings on)
	qExtended        // E'…': backslash escapes and ''
	qBits            // B'…', X'…': no escapes at all, not even ''
)

// lexQuoted scans a quoted string whose body starts at p (just past the
// opening quote) and returns the offset just past its closing quote,
// following scan.l's quote continuation (a closing quote, whitespace
// containing a newline, and an opening quote continue the same constant,
// in the same flavour).
func lexQuoted(s string, p, mode int) (int, bool) {
	n := len(s)
	for {
		// Find the next quote that is not escaped.
		if mode == qExtended {
			for p < n && s[p] != '\'' {
				if s[p] != '\\' {
					p++
					continue
				}
				if p+1 >= n {
					return 0, false
				}
				switch e := s[p+1]; {
				case e == 'u' || e == 'U':
					return 0, false // Unicode escape (or invalid one)
				case e >= '0' && e <= '7':
					v, k := 0, p+1
					for k < n && k < p+4 && s[k] >= '0' && s[k] <= '7' {
						v = v*8 + int(s[k]-'0')
						k++
					}
					if b := byte(v); b == 0 || b >= 0x80 {
						return 0, false // PostgreSQL then verifies the encoding
					}
					p = k
				case e == 'x' && p+2 < n && hexVal(s[p+2]) >= 0:
					v, k := 0, p+2
					for k < n && k < p+4 && hexVal(s[k]) >= 0 {
						v = v*16 + hexVal(s[k])
						k++
					}
					if v == 0 || v >= 0x80 {
						return 0, false
					}
					p = k
				default:
					p += 2
				}
			}
		} else {
			j := strings.IndexByte(s[p:], '\'')
			if j < 0 {
				return 0, false
			}
			p += j
		}
		if p >= n {
			return 0, false // unterminated
		}
		// s[p] is a quote.
		if mode != qBits && p+1 < n && s[p+1] == '\'' {
			p += 2 // {xqdouble}
			continue
		}
		// {quotecontinue} as libpg_query has it: non-newline space, a
		// newline, any space, a quote. Comments never join strings in
		// libpg_query but do in PostgreSQL: decline that case.
		k := p + 1
		newline, comment := false, false
	gap:
		for k < n {
			switch s[k] {
			case ' ', '\t', '\f', '\v':
				k++
			case '\n', '\r':
				newline = true
				k++
			case '-':
				if k+1 < n && s[k+1] == '-' {
					comment = true
					for k < n && s[k] != '\n' && s[k] != '\r' {
						k++
					}
					continue
				}
				break gap
			default:
				break gap
			}
		}
		if k < n && s[k] == '\'' && newline {
			if comment {
				return 0, false
			}
			p = k + 1
			continue
		}
		return p + 1, true
	}
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// lexQuotedIdent scans a "…" identifier whose body starts at p and returns
// the offset past its closing quote.
func lexQuotedIdent(s string, p int) (int, bool) {
	start := p
	for {
		j := strings.IndexByte(s[p:], '"')
		if j < 0 {
			return 0, false
		}
		p += j
		if p+1 < len(s) && s[p+1] == '"' {
			p += 2
			continue
		}
		if p == start {
			return 0, false // zero-length delimited identifier
		}
		return p + 1, true
	}
}

// skipCComment skips a (nested) /* */ comment whose body starts at p and
// returns the offset past it.
func skipCComment(s string, p int) (int, bool) {
	n := len(s)
	depth := 0
	for p < n {
		switch s[p] {
		case '/':
			if p+1 < n && s[p+1] == '*' {
				depth++
				p += 2
				continue
			}
			p++
		case '*':
			q := p + 1
			for q < n && s[q] == '*' {
				q++
			}
			if q < n && s[q] == '/' {
				if depth == 0 {
					return q + 1, true
				}
				depth--
				q++
			}
			p = q
		default:
			p++
		}
	}
	return 0, false
}

// lexDollar handles a "$" at s[i]: a parameter $n or a dollar-quoted
// string.
func lexDollar(s string, i int) (int, pg.Token, bool) {
	n := len(s)
	j := i + 1
	if j < n && isDigit(s[j]) {
		for j < n && isDigit(s[j]) {
			j++
		}
		if j < n && identCont[s[j]] {
			return 0, 0, false // $1abc: PostgreSQL 18 rejects it, 17 splits it
		}
		return j, pg.Token_PARAM, true
	}
	// dolqdelim: \$({dolq_start}{dolq_cont}*)?\$
	if j < n && s[j] != '$' {
		if lexClass[s[j]] != clIdent {
			return 0, 0, false // a lone "$" ({other})
		}
		for j < n && (lexClass[s[j]] == clIdent || isDigit(s[j])) {
			j++
		}
		if j >= n || s[j] != '$' {
			return 0, 0, false // {dolqfailed}
		}
	}
	if j >= n {
		return 0, 0, false
	}
	delim := s[i : j+1]
	k := strings.Index(s[j+1:], delim)
	if k < 0 {
		return 0, 0, false // unterminated
	}
	return j + 1 + k + len(delim), pg.Token_SCONST, true
}

// lexNumber scans a numeric constant at s[i] (a digit, or a dot followed
// by a digit) and returns its end and kind: ICONST for an integer that
// fits int32, FCONST otherwise.
func lexNumber(s string, i int) (int, pg.Token, bool) {
	n := len(s)
	if s[i] == '0' && i+1 < n {
		base := 0
		switch s[i+1] {
		case 'x', 'X':
			base = 16
		case 'o', 'O':
			base = 8
		case 'b', 'B':
			base = 2
		}
		if base != 0 {
			// {hexinteger} etc.: 0x(_?{hexdigit})+
			j, v, digits := i+2, uint64(0), 0
			for {
				if j < n && digitVal(s[j], base) >= 0 {
					v = addDigit(v, base, digitVal(s[j], base))
					j++
					digits++
					continue
				}
				if j+1 < n && s[j] == '_' && digitVal(s[j+1], base) >= 0 {
					j++
					continue
				}
				break
			}
			if digits == 0 || (j < n && identCont[s[j]]) {
				return 0, 0, false // {hexfail} or {integer_junk}
			}
			return j, intKind(v), true
		}
	}
	j, v := i, uint64(0)
	if isDigit(s[j]) {
		j, v = scanDecinteger(s, j)
	}
	float := false
	if j < n && s[j] == '.' {
		if j+1 < n && s[j+1] == '.' && j > i {
			// {numericfail}: "1..10" is 1, DOT_DOT, 10.
			return j, intKind(v), true
		}
		float = true
		j++
		if j < n && isDigit(s[j]) {
			j, _ = scanDecinteger(s, j)
		}
	}
	if j < n && (s[j] == 'e' || s[j] == 'E') {
		k := j + 1
		if k < n && (s[k] == '+' || s[k] == '-') {
			k++
		}
		if k >= n || !isDigit(s[k]) {
			return 0, 0, false // {realfail} or junk
		}
		j, _ = scanDecinteger(s, k)
		float = true
	}
	// {integer_junk}, {numeric_junk}, {real_junk}: an identifier right
	// after the number, or starting inside it at an underscore or an
	// exponent and running past its end ("1_000$1" is 1 and "_000$1";
	// "1e5$" is 1 and "e5$"): decline any ident_cont byte after it.
	if j < n && identCont[s[j]] {
		return 0, 0, false
	}
	if float {
		return j, pg.Token_FCONST, true
	}
	return j, intKind(v), true
}

// scanDecinteger scans {decinteger}, {decdigit}(_?{decdigit})*, at s[i]
// (a digit) and returns its end and value (saturated).
func scanDecinteger(s string, i int) (int, uint64) {
	n := len(s)
	v := uint64(0)
	for {
		if i < n && isDigit(s[i]) {
			v = addDigit(v, 10, int(s[i]-'0'))
			i++
			continue
		}
		if i+1 < n && s[i] == '_' && isDigit(s[i+1]) {
			i++
			continue
		}
		return i, v
	}
}

func digitVal(c byte, base int) int {
	d := hexVal(c)
	if d >= base {
		return -1
	}
	return d
}

// addDigit appends a digit to v, saturating above the int32 range.
func addDigit(v uint64, base, d int) uint64 {
	if v > math.MaxInt32 {
		return v
	}
	return v*uint64(base) + uint64(d)
}

// intKind is process_integer_literal: an integer that does not fit int32
// is a float constant.
func intKind(v uint64) pg.Token {
	if v > math.MaxInt32 {
		return pg.Token_FCONST
	}
	return pg.Token_ICONST
}

// lexOperator scans scan.l's {operator} rule (and the one- and
// two-character tokens it overlaps) at s[i], an op char that does not
// start a comment.
func lexOperator(s string, i int) (int, pg.Token, bool) {
	// Look at no more than opWindow bytes of the run: the token ends at
	// the first comment start in the run, and without one within the
	// window it is either too long or made of a long tail of + and -;
	// declining then keeps lex linear ("+++…" would otherwise be
	// rescanned for every one-character token).
	const opWindow = 66
	n := len(s)
	j := i + 1
	for j < n && opChar[s[j]] && j-i < opWindow {
		j++
	}
	cut := false
	// An embedded comment start ends the operator.
	for k := i + 1; k+1 < j; k++ {
		if (s[k] == '/' && s[k+1] == '*') || (s[k] == '-' && s[k+1] == '-') {
			j, cut = k, true
			break
		}
	}
	if !cut && j < n && opChar[s[j]] {
		return 0, 0, false // a run longer than the window
	}
	// A multi-character operator may not end in + or - unless it contains
	// a character that SQL operators do not use.
	if j-i > 1 && (s[j-1] == '+' || s[j-1] == '-') {
		if strings.IndexAny(s[i:j-1], "~!@#^&|`?%") < 0 {
			for j-i > 1 && (s[j-1] == '+' || s[j-1] == '-') {
				j--
			}
		}
	}
	op := s[i:j]
	if len(op) >= 64 { // NAMEDATALEN: "operator too long"
		return 0, 0, false
	}
	switch len(op) {
	case 1:
		switch c := op[0]; c {
		case '+', '-', '*', '/', '%', '^', '<', '>', '=':
			return j, pg.Token(c), true
		}
	case 2:
		switch op {
		case "=>":
			return j, pg.Token_EQUALS_GREATER, true
		case "<=":
			return j, pg.Token_LESS_EQUALS, true
		case ">=":
			return j, pg.Token_GREATER_EQUALS, true
		case "<>", "!=":
			return j, pg.Token_NOT_EQUALS, true
		}
	}
	return j, pg.Token_Op, true
}

// The keyword table: every keyword token of pg_query's Token enum (the
// range ABORT_P..ZONE), named by its lower-case name without the "_P"
// suffix, in an open-addressing hash table. TestLexKeywords checks every
// entry against pg.Scan.
type kwEntry struct {
	name string
	kind pg.Token
}

const (
	kwTableBits = 11
	kwTableSize = 1 << kwTableBits // > 4 × the ~490 keywords
)

var (
	kwTable  [kwTableSize]kwEntry
	kwMaxLen int
	kwList   []kwEntry // for tests
)

func initKeywords() {
	for v, name := range pg.Token_name {
		if v < int32(pg.Token_ABORT_P) || v > int32(pg.Token_ZONE) || strings.HasSuffix(name, "_LA") {
			continue
		}
		kw := strings.ToLower(strings.TrimSuffix(name, "_P"))
		kwList = append(kwList, kwEntry{kw, pg.Token(v)})
		kwMaxLen = max(kwMaxLen, len(kw))
		h := kwHash(kw)
		for kwTable[h].name != "" {
			h = (h + 1) & (kwTableSize - 1)
		}
		kwTable[h] = kwEntry{kw, pg.Token(v)}
	}
}

// kwHash hashes s (two bytes or more) case-insensitively (ASCII) from its
// length and four of its bytes; the probe compares the whole name.
func kwHash(s string) uint32 {
	n := len(s)
	h := uint32(n) ^ uint32(s[0]|0x20)<<8 ^ uint32(s[1]|0x20)<<16 ^
		uint32(s[n-1]|0x20)<<24 ^ uint32(s[n/2]|0x20)<<4
	return (h * 0x9E3779B1) >> (32 - kwTableBits)
}

// keywordKind returns the keyword token of identifier id (ASCII letters
// matched case-insensitively, as ScanKeywordLookup does), or IDENT.
func keywordKind(id string) pg.Token {
	if len(id) > kwMaxLen || len(id) < 2 { // no keyword has one letter
		return pg.Token_IDENT
	}
	for h := kwHash(id); ; h = (h + 1) & (kwTableSize - 1) {
		e := &kwTable[h]
		if e.name == "" {
			return pg.Token_IDENT
		}
		if len(e.name) == len(id) && equalFoldASCII(e.name, id) {
			return e.kind
		}
	}
}

// equalFoldASCII reports whether id, folded to lower case in ASCII only,
// equals the lower-case keyword kw.
func equalFoldASCII(kw, id string) bool {
	for i := 0; i < len(kw); i++ {
		c := id[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != kw[i] {
			return false
		}
	}
	return true
}
