package rewrite

import (
	"bytes"
	"strings"
)

// The fast path decides, without parsing and without allocating, whether a
// statement needs analysis at all. It is policy.MayTouch's test (a
// case-insensitive substring search for every policy table's bare name,
// and any U&"…" identifier escape) done in place instead of on a
// lower-cased copy, plus a search for "search_path" and "schema", which
// statements that change the search path must contain.

// mayTouch reports whether sql could name a policy table. False positives
// cost a parse; false negatives would let plaintext through.
func (a *Analyzer) mayTouch(sql string) bool {
	if len(a.names) == 0 {
		return false
	}
	if a.slow {
		return a.pol.MayTouch(sql)
	}
	var buf [2048]byte
	return a.containsName(lowerASCII(buf[:0], sql))
}

// mentionsSearchPath reports whether sql might change the search path:
// SET search_path, SET SCHEMA, set_config('search_path', …), RESET [ALL],
// DISCARD ALL.
func mentionsSearchPath(sql string) bool {
	return containsFold(sql, "search_path") || containsFold(sql, "schema") ||
		containsFold(sql, "reset") || containsFold(sql, "discard")
}

// needsAnalysis is mayTouch and mentionsSearchPath in one pass over a
// lower-cased copy held on the stack: at each byte, only the needles that
// start with that byte are tried.
func (a *Analyzer) needsAnalysis(sql string) (touch, path bool) {
	if a.slow {
		return a.pol.MayTouch(sql), mentionsSearchPath(sql)
	}
	var buf [1024]byte
	lower := lowerASCII(buf[:0], sql)
	for i, c := range lower {
		for _, n := range a.first[c] {
			if len(lower)-i >= len(n.word) && string(lower[i:i+len(n.word)]) == n.word {
				if n.path {
					path = true
				} else {
					touch = true
				}
				if touch && path {
					return
				}
			}
		}
	}
	return
}

// needle is one word the fast path looks for.
type needle struct {
	word string
	path bool // a search-path word rather than a table name
}

func (a *Analyzer) buildNeedles() {
	add := func(w string, path bool) {
		a.first[w[0]] = append(a.first[w[0]], needle{w, path})
	}
	for _, w := range pathWords {
		add(w, true)
	}
	if len(a.names) > 0 {
		add(`u&"`, false)
	}
	for _, n := range a.names {
		if n != "" {
			add(n, false)
		}
	}
}

var pathWords = []string{"search_path", "schema", "reset", "discard"}

func (a *Analyzer) containsName(lower []byte) bool {
	if len(a.names) == 0 {
		return false
	}
	if bytes.Contains(lower, []byte(`u&"`)) {
		return true
	}
	for _, n := range a.names {
		if bytes.Contains(lower, []byte(n)) {
			return true
		}
	}
	return false
}

// lowerASCII appends s to dst with ASCII letters lower-cased; dst's array
// lives on the caller's stack for ordinary statement sizes.
func lowerASCII(dst []byte, s string) []byte {
	dst = append(dst, s...)
	for i, c := range dst {
		if 'A' <= c && c <= 'Z' {
			dst[i] = c + 'a' - 'A'
		}
	}
	return dst
}

// containsFold reports whether s contains the lower-case ASCII string sub,
// ignoring ASCII case in s. Non-ASCII bytes must match exactly, which is
// what strings.ToLower would leave of them for ASCII needles.
func containsFold(s, sub string) bool {
	n := len(sub)
	if n == 0 {
		return true
	}
	c0 := sub[0]
	u0 := c0
	if 'a' <= c0 && c0 <= 'z' {
		u0 = c0 - 'a' + 'A'
	}
	for i := 0; i+n <= len(s); i++ {
		c := s[i]
		if c != c0 && c != u0 {
			continue
		}
		j := 1
		for ; j < n; j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != sub[j] {
				break
			}
		}
		if j == n {
			return true
		}
	}
	return false
}

// quickKind classifies a statement by its first word, without parsing,
// for statements the fast path lets through.
func quickKind(sql string) string {
	i := 0
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '(':
			i++
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			for i < len(sql) && sql[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			j := strings.Index(sql[i+2:], "*/")
			if j < 0 {
				return "other"
			}
			i += j + 4
		default:
			j := i
			for j < len(sql) && (sql[j]|0x20 >= 'a' && sql[j]|0x20 <= 'z') {
				j++
			}
			return kindWord(sql[i:j])
		}
	}
	return "other"
}

func kindWord(w string) string {
	for _, k := range [...]struct{ word, kind string }{
		{"select", "select"}, {"values", "select"}, {"table", "select"}, {"insert", "insert"},
		{"update", "update"}, {"delete", "delete"}, {"merge", "merge"}, {"copy", "copy"},
		{"explain", "explain"}, {"set", "set"}, {"reset", "set"}, {"create", "ddl"},
		{"alter", "ddl"}, {"drop", "ddl"},
	} {
		if len(w) == len(k.word) && containsFold(w, k.word) {
			return k.kind
		}
	}
	return "other"
}
