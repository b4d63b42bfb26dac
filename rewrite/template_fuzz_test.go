package rewrite

import (
	"strings"
	"testing"
)

// templateShapes are statements whose constants FuzzTemplate replaces; @
// marks where a constant goes.
var templateShapes = []string{
	"INSERT INTO users (id, ssn, email, age) VALUES (@, @, @, @)",
	"SELECT id, ssn FROM users WHERE email = @ AND id > @",
	"UPDATE users SET ssn = @, email = @ WHERE id = @",
	"DELETE FROM accounts WHERE iban IN (@, @) OR note IS NULL",
	"INSERT INTO accounts (iban, note) VALUES (@, @), (@, @) ON CONFLICT (iban) DO UPDATE SET note = EXCLUDED.note",
	"SELECT * FROM users u WHERE u.age = @ /* c */ AND u.email <> @ -- t\n",
}

// FuzzTemplate holds the cached template path to the full analysis: the
// same statement with fuzzed constants (any text at all in a constant's
// place) analysed by a warm cache and by an analyser without caches must
// give the same SQL, literals and refusal. This is what a wrong token
// boundary in the lexer or a wrong template would break.
func FuzzTemplate(f *testing.F) {
	f.Add(0, "'123-45-6789'", "'a@x'")
	f.Add(1, "E'it''s'", "42")
	f.Add(2, "$$x$$", "$q$y'z$q$")
	f.Add(3, "'a'\n'b'", "-7")
	f.Add(4, "'x' || 'y'", "0x1F")
	f.Add(5, "1_000", "'\\'")
	f.Add(0, "U&'\\0041'", "B'101'")
	f.Add(2, "'unterminated", "1e5")
	f.Add(1, "'a''b'", "E'\\x41\\n'")
	warm := testAnalyzer(f)
	cold := NewAnalyzer(warm.Policy(), Options{CacheSize: -1})
	memos := make([]Memo, len(templateShapes))
	for i, s := range templateShapes {
		// Warm the template cache (and each shape's Memo) with ordinary
		// constants.
		for _, v := range []string{"'seed'", "1"} {
			warm.AnalyzeMemo(&memos[i], strings.ReplaceAll(s, "@", v), nil)
		}
	}
	f.Fuzz(func(t *testing.T, shape int, a, b string) {
		if shape < 0 {
			shape = -shape
		}
		s := templateShapes[shape%len(templateShapes)]
		n := 0
		sql := s
		var out strings.Builder
		for _, part := range strings.Split(sql, "@") {
			if n > 0 {
				if n%2 == 1 {
					out.WriteString(a)
				} else {
					out.WriteString(b)
				}
			}
			out.WriteString(part)
			n++
		}
		sql = out.String()
		w, c := warm.Analyze(sql, nil), cold.Analyze(sql, nil)
		if (w.Refusal == nil) != (c.Refusal == nil) || w.Refusal != nil && w.Refusal.Code != c.Refusal.Code {
			t.Fatalf("%q: refusal differs: cached %v, full %v", sql, w.Refusal, c.Refusal)
		}
		if w.Refusal != nil {
			return
		}
		if spliced(w) != spliced(c) || w.Touches != c.Touches || w.Kind != c.Kind {
			t.Fatalf("%q:\ncached %s\nfull   %s", sql, spliced(w), spliced(c))
		}
		// The Memo's template, tried first, must agree too. A copy: the
		// Memo then moves to whatever this input matched.
		m := memos[shape%len(templateShapes)]
		mr := warm.AnalyzeMemo(&m, sql, nil)
		if mr.Refusal != nil || spliced(mr) != spliced(c) || mr.Touches != c.Touches || mr.Kind != c.Kind {
			t.Fatalf("%q:\nmemo %s (%v)\nfull %s", sql, spliced(mr), mr.Refusal, spliced(c))
		}
	})
}
