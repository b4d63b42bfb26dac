package rewrite

import (
	"encoding/binary"
	"hash/maphash"
	"math/big"
	"slices"
	"sort"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// tok is one lexical token of a statement (comments are dropped: they do
// not change what the statement means, and skipping them lets a
// fingerprint-cached analysis survive changing trace comments).
type tok struct {
	start, end int32
	kind       pg.Token
}

type tokens struct {
	list []tok
	// match[i] is the index of the parenthesis or bracket matching token i,
	// or -1.
	match []int32
	// constants counts the tokens whose value may change between
	// executions of "the same" statement (see isVarConst).
	constants int
}

func scan(sql string) (*tokens, error) {
	r, err := pg.Scan(sql)
	if err != nil {
		return nil, err
	}
	t := &tokens{list: make([]tok, 0, len(r.Tokens))}
	for _, st := range r.Tokens {
		if st.Token == pg.Token_SQL_COMMENT || st.Token == pg.Token_C_COMMENT {
			continue
		}
		t.list = append(t.list, tok{st.Start, st.End, st.Token})
	}
	finish(t)
	return t, nil
}

// finish computes t.match and t.constants from t.list (shared by scan and
// lex, so both derive them the same way).
func finish(t *tokens) {
	if t.match == nil {
		t.match = make([]int32, len(t.list))
	}
	t.match = slices.Grow(t.match[:0], len(t.list))[:len(t.list)]
	t.constants = 0
	var buf [32]int32 // nesting depth of most statements: no allocation
	stack := buf[:0]
	for i, k := range t.list {
		if isVarConst(k.kind) {
			t.constants++
		}
		t.match[i] = -1
		switch k.kind {
		case pg.Token_ASCII_40, pg.Token_ASCII_91: // ( [
			stack = append(stack, int32(i))
		case pg.Token_ASCII_41, pg.Token_ASCII_93: // ) ]
			if n := len(stack); n > 0 {
				o := stack[n-1]
				stack = stack[:n-1]
				t.match[o], t.match[i] = int32(i), o
			}
		}
	}
}

// isVarConst reports the constant tokens whose text may differ between two
// statements that share a cached analysis: the token kind must still
// match, only the text may change. Other constants (bit strings,
// Unicode-escaped strings) must match exactly.
func isVarConst(k pg.Token) bool {
	switch k {
	case pg.Token_SCONST, pg.Token_ICONST, pg.Token_FCONST:
		return true
	}
	return false
}

// at returns the index of the token that starts at byte offset off, or -1.
func (t *tokens) at(off int32) int {
	i := sort.Search(len(t.list), func(i int) bool { return t.list[i].start >= off })
	if i < len(t.list) && t.list[i].start == off {
		return i
	}
	return -1
}

func (t *tokens) kind(i int) pg.Token {
	if i < 0 || i >= len(t.list) {
		return pg.Token_NUL
	}
	return t.list[i].kind
}

// text returns the source text of tokens [from, to).
func (t *tokens) text(sql string, from, to int) string {
	return sql[t.list[from].start:t.list[to-1].end]
}

// shapeSeed keys shapeHash for this process.
var shapeSeed = maphash.MakeSeed()

// shapeHash hashes what sameShape compares: every token's kind, and the
// text of every token but the variable constants. Statements that differ
// only in those constants (or in whitespace and comments, which are not
// tokens) hash alike, so the template cache can be keyed by it without
// asking the parser for a fingerprint; a collision is harmless, as
// instantiate checks sameShape before using a template. The shape is laid
// out in one buffer and hashed once: a hash call per token cost more than
// the lexing.
func shapeHash(sql string, t *tokens) uint64 {
	var stack [512]byte
	b := stack[:0]
	for _, x := range t.list {
		b = binary.LittleEndian.AppendUint32(b, uint32(x.kind))
		if !isVarConst(x.kind) {
			b = append(b, sql[x.start:x.end]...)
		}
		b = append(b, 0)
	}
	return maphash.Bytes(shapeSeed, b)
}

// sameShape reports whether b (the tokens of sql) has the same token
// sequence as a (of orig), allowing only the text of variable constants
// to differ. Two such statements have the same parse tree up to constant
// values, because the grammar only sees token kinds and the text of
// non-constant tokens.
func sameShape(orig string, a *tokens, sql string, b *tokens) bool {
	if len(a.list) != len(b.list) {
		return false
	}
	for i, x := range a.list {
		y := b.list[i]
		if x.kind != y.kind {
			return false
		}
		if isVarConst(x.kind) {
			continue
		}
		if orig[x.start:x.end] != sql[y.start:y.end] {
			return false
		}
	}
	return true
}

// stringValue returns the value of a string constant token as PostgreSQL
// reads it (standard_conforming_strings on), for the forms that need no
// escape processing: '…' with doubled quotes, E'…' without backslashes,
// and dollar quoting. ok is false for anything else (adjacent string
// continuation, backslash escapes, U&'…'), which then takes the full parse.
func stringValue(s string) (v string, ok bool) {
	if len(s) >= 2 && (s[0] == 'E' || s[0] == 'e') && s[1] == '\'' {
		if strings.IndexByte(s, '\\') >= 0 {
			return "", false
		}
		s = s[1:]
	}
	if len(s) >= 2 && s[0] == '$' {
		j := strings.IndexByte(s[1:], '$')
		if j < 0 {
			return "", false
		}
		tag := s[:j+2]
		if len(s) < 2*len(tag) || !strings.HasSuffix(s, tag) {
			return "", false
		}
		return s[len(tag) : len(s)-len(tag)], true
	}
	if len(s) < 2 || s[0] != '\'' || s[len(s)-1] != '\'' {
		return "", false
	}
	body := s[1 : len(s)-1]
	if strings.IndexByte(body, '\'') < 0 {
		return body, true
	}
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		if body[i] == '\'' {
			if i+1 < len(body) && body[i+1] == '\'' {
				b.WriteByte('\'')
				i++
				continue
			}
			return "", false // a quote that ends one segment: continuation
		}
		b.WriteByte(body[i])
	}
	return b.String(), true
}

// numberValue returns a numeric constant's text in the decimal form every
// input function reads: PostgreSQL 16's hexadecimal, octal and binary
// integers and digit-separating underscores are normalised; anything
// else stays as written.
func numberValue(s string) string {
	if len(s) > 2 && s[0] == '0' && strings.ContainsRune("xXoObB", rune(s[1])) {
		var n big.Int
		if _, ok := n.SetString(s, 0); ok {
			return n.String()
		}
	}
	return strings.ReplaceAll(s, "_", "")
}

// sameTokens reports whether two token lists are identical.
func sameTokens(a, b *tokens) bool {
	if len(a.list) != len(b.list) {
		return false
	}
	for i := range a.list {
		if a.list[i] != b.list[i] {
			return false
		}
	}
	return true
}
