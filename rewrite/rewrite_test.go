package rewrite

import (
	"strings"
	"testing"
)

func TestAnalyzeRewrites(t *testing.T) {
	a := testAnalyzer(t)
	tests := []struct {
		name, sql string
		sp        []string
		want      string // spliced SQL
		params    string
		kind      string
	}{
		{"insert params", "INSERT INTO users(id, ssn, email) VALUES ($1, $2, $3)", nil,
			"INSERT INTO users(id, ssn, email) VALUES ($1, $2, $3)", "$1=- $2=ssn/store $3=email/store", "insert"},
		{"insert column order", "INSERT INTO users(email, id, ssn) VALUES ($1, $2, $3)", nil,
			"INSERT INTO users(email, id, ssn) VALUES ($1, $2, $3)", "$1=email/store $2=- $3=ssn/store", "insert"},
		{"insert multi-row literals", "INSERT INTO users(id, ssn, email) VALUES (1, '123', E'a@b'), (2, NULL, DEFAULT)", nil,
			"INSERT INTO users(id, ssn, email) VALUES (1, <ssn store \"123\">, <email store \"a@b\">), (2, <NULL ssn store>, DEFAULT)", "", "insert"},
		{"insert quoting", "INSERT INTO users(ssn, email, age) VALUES ('it''s', $$dollar$$, -0x10)", nil,
			"INSERT INTO users(ssn, email, age) VALUES (<ssn store \"it's\">, <email store \"dollar\">, <age store \"-16\">)", "", "insert"},
		{"insert cast stripped", "INSERT INTO users(ssn, dob, age) VALUES ($1::text, $2::date, CAST($3 AS integer))", nil,
			"INSERT INTO users(ssn, dob, age) VALUES ($1, $2, $3)", "$1=ssn/store $2=dob/store $3=age/store", "insert"},
		{"insert typed literal", "INSERT INTO users(dob, ssn) VALUES (date '2020-01-02', '1'::character varying(20))", nil,
			"INSERT INTO users(dob, ssn) VALUES (<dob store \"2020-01-02\">, <ssn store \"1\">)", "", "insert"},
		{"insert schema qualified alias", "INSERT INTO public.users AS u (ssn) VALUES ($1) RETURNING u.ssn, id", nil,
			"INSERT INTO public.users AS u (ssn) VALUES ($1) RETURNING u.ssn, id", "$1=ssn/store", "insert"},
		{"on conflict excluded", "INSERT INTO users(id, email) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email", nil,
			"INSERT INTO users(id, email) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email", "$1=- $2=email/store", "insert"},
		{"on conflict param", "INSERT INTO users(id, ssn) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET ssn = $2, n = users.n + 1", nil,
			"INSERT INTO users(id, ssn) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET ssn = $2, n = users.n + 1", "$1=- $2=ssn/store", "insert"},
		{"insert select same column", "INSERT INTO users(ssn) SELECT ssn FROM users WHERE id = $1", nil,
			"INSERT INTO users(ssn) SELECT ssn FROM users WHERE id = $1", "$1=-", "insert"},
		{"insert select params", "INSERT INTO users(id, ssn) SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM users WHERE id = $1)", nil,
			"INSERT INTO users(id, ssn) SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM users WHERE id = $1)", "$1=- $2=ssn/store", "insert"},
		{"default values", "INSERT INTO users DEFAULT VALUES", nil, "INSERT INTO users DEFAULT VALUES", "", "insert"},
		{"update single", "UPDATE users SET ssn = $1 WHERE id = $2", nil,
			"UPDATE users SET ssn = $1 WHERE id = $2", "$1=ssn/store $2=-", "update"},
		{"update multi", "UPDATE users SET (ssn, email) = ($1, 'x') WHERE email <> 'y' RETURNING ssn", nil,
			"UPDATE users SET (ssn, email) = ($1, <email store \"x\">) WHERE email <> <email compare ALL \"y\"> RETURNING ssn", "$1=ssn/store", "update"},
		{"update from same column", "UPDATE users u SET ssn = o.ssn FROM users o WHERE o.id = $1 AND u.id = $2", nil,
			"UPDATE users u SET ssn = o.ssn FROM users o WHERE o.id = $1 AND u.id = $2", "$1=- $2=-", "update"},
		{"select eq param", "SELECT id, ssn FROM users WHERE email = $1", nil,
			"SELECT id, ssn FROM users WHERE email = ANY($1::bytea[])", "$1=email/compare", "select"},
		{"select eq reversed parens", "SELECT id FROM users u WHERE ($1) = (u.email)", nil,
			"SELECT id FROM users u WHERE (u.email) = ANY($1::bytea[])", "$1=email/compare", "select"},
		{"select ne literal", "SELECT 1 FROM users WHERE email != 'a'", nil,
			"SELECT 1 FROM users WHERE email != <email compare ALL \"a\">", "", "select"},
		{"select eq cast", "SELECT id FROM users WHERE email = $1::text AND dob = '2001-02-03'::date", nil,
			"SELECT id FROM users WHERE email = ANY($1::bytea[]) AND dob = <dob compare ANY \"2001-02-03\">", "$1=email/compare", "select"},
		{"select in", "SELECT id FROM users WHERE age IN (1, -2, $1::int4)", nil,
			"SELECT id FROM users WHERE (age = ANY(<age compare \"1\"> || <age compare \"-2\"> || $1::bytea[]))", "$1=age/compare", "select"},
		{"select not in", "SELECT id FROM users WHERE email NOT IN ($1, $2)", nil,
			"SELECT id FROM users WHERE (email <> ALL($1::bytea[] || $2::bytea[]))", "$1=email/compare $2=email/compare", "select"},
		{"in precedence", "SELECT id FROM users WHERE true = (email) IN ('a')", nil,
			"SELECT id FROM users WHERE true = ((email) = ANY(<email compare \"a\">))", "", "select"},
		{"null literal compare", "SELECT id FROM users WHERE email = NULL", nil,
			"SELECT id FROM users WHERE email = <NULL email compare ANY>", "", "select"},
		{"is null any column", "SELECT id FROM users WHERE ssn IS NULL OR email IS NOT NULL", nil,
			"SELECT id FROM users WHERE ssn IS NULL OR email IS NOT NULL", "", "select"},
		{"param twice same column", "SELECT id FROM users WHERE email = $1 OR email = $1", nil,
			"SELECT id FROM users WHERE email = ANY($1::bytea[]) OR email = ANY($1::bytea[])", "$1=email/compare", "select"},
		{"delete", "DELETE FROM users WHERE email = $1 RETURNING ssn", nil,
			"DELETE FROM users WHERE email = ANY($1::bytea[]) RETURNING ssn", "$1=email/compare", "delete"},
		{"join read only", "SELECT u.ssn, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > $1", nil,
			"SELECT u.ssn, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > $1", "$1=-", "select"},
		{"subquery read", "SELECT s FROM (SELECT ssn AS s, email FROM users) x WHERE x.email = $1", nil,
			"SELECT s FROM (SELECT ssn AS s, email FROM users) x WHERE x.email = ANY($1::bytea[])", "$1=email/compare", "select"},
		{"in subquery same column", "SELECT id FROM users WHERE email IN (SELECT email FROM users WHERE id = 1)", nil,
			"SELECT id FROM users WHERE email IN (SELECT email FROM users WHERE id = 1)", "", "select"},
		{"group distinct count", "SELECT email, count(email), count(DISTINCT age) FROM users GROUP BY email", nil,
			"SELECT email, count(email), count(DISTINCT age) FROM users GROUP BY email", "", "select"},
		{"distinct deterministic", "SELECT DISTINCT email FROM users", nil, "SELECT DISTINCT email FROM users", "", "select"},
		{"data modifying cte", "WITH x AS (INSERT INTO users(ssn) VALUES ($1) RETURNING id, ssn) SELECT id, ssn FROM x", nil,
			"WITH x AS (INSERT INTO users(ssn) VALUES ($1) RETURNING id, ssn) SELECT id, ssn FROM x", "$1=ssn/store", "select"},
		{"cte compare", "WITH x AS (SELECT email FROM users) SELECT * FROM x WHERE email = 'e'", nil,
			"WITH x AS (SELECT email FROM users) SELECT * FROM x WHERE email = <email compare ANY \"e\">", "", "select"},
		{"unqualified policy table", "SELECT 1 FROM accounts WHERE iban = $1", []string{"tenant"},
			"SELECT 1 FROM accounts WHERE iban = ANY($1::bytea[])", "$1=iban/compare", "select"},
		{"search path resolves schema", "SELECT token FROM secrets WHERE token = $1", []string{"app", "public"},
			"SELECT token FROM secrets WHERE token = ANY($1::bytea[])", "$1=token/compare", "select"},
		{"multi statement spans", "INSERT INTO users(ssn) VALUES ('a'); SELECT 1; UPDATE users SET email = 'b' WHERE email = 'c'", nil,
			"INSERT INTO users(ssn) VALUES (<ssn store \"a\">); SELECT 1; UPDATE users SET email = <email store \"b\"> WHERE email = <email compare ANY \"c\">", "", "insert"},
		{"set search path then use", "SET search_path TO app; SELECT token FROM secrets WHERE token = 'abc'", nil,
			"SET search_path TO app; SELECT token FROM secrets WHERE token = <token compare ANY \"abc\">", "", "set"},
		{"comments kept", "/* trace=1 */ SELECT 1 FROM users WHERE email = -- c\n 'x'", nil,
			"/* trace=1 */ SELECT 1 FROM users WHERE email = -- c\n <email compare ANY \"x\">", "", "select"},
		{"non-lateral sibling is not an outer scope", "SELECT u.ssn FROM users u, (SELECT id FROM orders WHERE email = 'x') o", nil,
			"SELECT u.ssn FROM users u, (SELECT id FROM orders WHERE email = 'x') o", "", "select"},
		{"explain", "EXPLAIN SELECT 1 FROM users WHERE email = 'x'", nil,
			"EXPLAIN SELECT 1 FROM users WHERE email = <email compare ANY \"x\">", "", "explain"},
		{"ddl", "ALTER TABLE users ADD COLUMN phone bytea", nil, "ALTER TABLE users ADD COLUMN phone bytea", "", "ddl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := a.Analyze(tt.sql, tt.sp)
			if r.Refusal != nil {
				t.Fatalf("refused: %v", r.Refusal)
			}
			if got := spliced(r); got != tt.want {
				t.Errorf("SQL\n got: %s\nwant: %s", got, tt.want)
			}
			if got := paramString(r.Params); got != tt.params {
				t.Errorf("params got %q want %q", got, tt.params)
			}
			if r.Kind != tt.kind {
				t.Errorf("kind got %q want %q", r.Kind, tt.kind)
			}
			if !r.Touches {
				t.Errorf("Touches = false")
			}
			for _, l := range r.Literals {
				if got := r.SQL[l.Start:l.End]; got != l.placeholder() {
					t.Errorf("span %d-%d holds %q", l.Start, l.End, got)
				}
			}
			if len(r.Literals) == 0 && !strings.Contains(tt.sql, "::") && strings.Count(r.SQL, "ANY(")+strings.Count(r.SQL, "ALL(") == 0 && r.SQL != tt.sql {
				t.Errorf("SQL changed without a reason: %s", r.SQL)
			}
		})
	}
}

func (l Literal) placeholder() string {
	if !l.Null {
		return Placeholder
	}
	if l.Use == UseCompare {
		if l.Quant != "" {
			return l.Quant + "(NULL::bytea[])"
		}
		return "NULL::bytea[]"
	}
	return "NULL"
}

func TestAnalyzeRefusals(t *testing.T) {
	a := testAnalyzer(t)
	tests := []struct {
		name, sql string
		code      string
		column    string // the column the message names, "" for none
	}{
		{"no column list", "INSERT INTO users VALUES ($1)", CodeFeatureNotSupported, ""},
		{"insert select plaintext source", "INSERT INTO users(ssn) SELECT name FROM people", CodeFeatureNotSupported, "ssn"},
		{"insert select other policy column", "INSERT INTO users(ssn) SELECT iban FROM accounts", CodeFeatureNotSupported, "ssn"},
		{"insert select other column same table", "INSERT INTO users(ssn) SELECT email FROM users", CodeFeatureNotSupported, "ssn"},
		{"insert select values", "INSERT INTO users(ssn) SELECT x FROM (VALUES ('1')) v(x)", CodeFeatureNotSupported, "ssn"},
		{"insert expression", "INSERT INTO users(ssn) VALUES (upper($1))", CodeFeatureNotSupported, "ssn"},
		{"insert concat", "INSERT INTO users(ssn) VALUES ('a' || 'b')", CodeFeatureNotSupported, "ssn"},
		{"insert wrong cast", "INSERT INTO users(age) VALUES ($1::int8)", CodeDatatypeMismatch, "age"},
		{"insert ciphertext into plain", "INSERT INTO audit(x) SELECT ssn FROM users", CodeFeatureNotSupported, "ssn"},
		{"update subselect", "UPDATE users SET (ssn, id) = (SELECT 'x', 1)", CodeFeatureNotSupported, "ssn"},
		{"update expression", "UPDATE users SET ssn = coalesce($1, ssn)", CodeFeatureNotSupported, "ssn"},
		{"update from plain column", "UPDATE users SET ssn = name", CodeFeatureNotSupported, "ssn"},
		{"upper in select", "SELECT upper(ssn) FROM users", CodeFeatureNotSupported, "ssn"},
		{"concat in select", "SELECT ssn || 'x' FROM users", CodeFeatureNotSupported, "ssn"},
		{"cast in select", "SELECT ssn::text FROM users", CodeFeatureNotSupported, "ssn"},
		{"cast in where", "SELECT 1 FROM users WHERE email::text = 'x'", CodeFeatureNotSupported, "email"},
		{"coalesce", "SELECT coalesce(ssn, 'none') FROM users", CodeFeatureNotSupported, "ssn"},
		{"like", "SELECT 1 FROM users WHERE email LIKE 'a%'", CodeFeatureNotSupported, "email"},
		{"ilike", "SELECT 1 FROM users WHERE email ILIKE $1", CodeFeatureNotSupported, "email"},
		{"similar", "SELECT 1 FROM users WHERE email SIMILAR TO 'a'", CodeFeatureNotSupported, "email"},
		{"regex", "SELECT 1 FROM users WHERE email ~ 'a'", CodeFeatureNotSupported, "email"},
		{"less than", "SELECT 1 FROM users WHERE age < 5", CodeFeatureNotSupported, "age"},
		{"between", "SELECT 1 FROM users WHERE age BETWEEN 1 AND 5", CodeFeatureNotSupported, "age"},
		{"order by", "SELECT 1 FROM users ORDER BY email", CodeFeatureNotSupported, "email"},
		{"order by alias", "SELECT email AS e FROM users ORDER BY e", CodeFeatureNotSupported, "email"},
		{"order by position", "SELECT id, email FROM users ORDER BY 2", CodeFeatureNotSupported, "email"},
		{"equality randomized", "SELECT 1 FROM users WHERE ssn = $1", CodeFeatureNotSupported, "ssn"},
		{"in randomized", "SELECT 1 FROM users WHERE ssn IN ('a')", CodeFeatureNotSupported, "ssn"},
		{"two policy columns", "SELECT 1 FROM users u JOIN accounts a ON a.iban = u.email", CodeFeatureNotSupported, "iban"},
		{"policy vs plaintext column", "SELECT 1 FROM users u JOIN orders o ON o.mail = u.email", CodeFeatureNotSupported, "email"},
		{"param two columns", "SELECT 1 FROM users WHERE email = $1 OR age = $1", CodeDatatypeMismatch, "age"},
		{"param policy and plain", "SELECT 1 FROM users WHERE email = $1 OR id = $1", CodeDatatypeMismatch, "email"},
		{"param store and compare", "UPDATE users SET email = $1 WHERE email = $1", CodeDatatypeMismatch, "email"},
		{"any array", "SELECT 1 FROM users WHERE email = ANY($1)", CodeFeatureNotSupported, "email"},
		{"group by randomized", "SELECT ssn FROM users GROUP BY ssn", CodeFeatureNotSupported, "ssn"},
		{"distinct randomized", "SELECT DISTINCT ssn FROM users", CodeFeatureNotSupported, "ssn"},
		{"min", "SELECT min(email) FROM users", CodeFeatureNotSupported, "email"},
		{"scalar subquery output", "SELECT (SELECT ssn FROM users LIMIT 1)", CodeFeatureNotSupported, "ssn"},
		{"merge", "MERGE INTO users u USING src s ON u.id = s.id WHEN MATCHED THEN UPDATE SET ssn = s.ssn", CodeFeatureNotSupported, ""},
		{"copy from", "COPY users (ssn) FROM STDIN", CodeFeatureNotSupported, ""},
		{"copy to query", "COPY (SELECT ssn FROM users) TO STDOUT", CodeFeatureNotSupported, ""},
		{"prepare", "PREPARE p AS INSERT INTO users(ssn) VALUES ($1)", CodeFeatureNotSupported, ""},
		{"do block", "DO $$ BEGIN INSERT INTO users(ssn) VALUES ('x'); END $$", CodeFeatureNotSupported, ""},
		{"create function", "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'INSERT INTO users(ssn) VALUES (''x'')'", CodeFeatureNotSupported, ""},
		{"view", "CREATE VIEW v AS SELECT ssn FROM users", CodeFeatureNotSupported, ""},
		{"syntax error", "SELECT * FROM users WHERE", CodeSyntaxError, ""},
		{"ambiguous outer", "SELECT 1 FROM users WHERE EXISTS (SELECT 1 FROM orders WHERE email = 'x')", CodeAmbiguousColumn, "email"},
		{"schema not on path", "SELECT 1 FROM secrets", CodeAmbiguousColumn, ""},
		{"default plaintext", "ALTER TABLE users ALTER COLUMN ssn SET DEFAULT 'x'", CodeFeatureNotSupported, "ssn"},
		{"natural join", "SELECT 1 FROM users NATURAL JOIN accounts", CodeFeatureNotSupported, ""},
		{"union mixes", "SELECT email FROM users UNION SELECT name FROM people", CodeFeatureNotSupported, "email"},
		{"select into policy", "CREATE TABLE users AS SELECT 'x' AS ssn", CodeFeatureNotSupported, ""},
		{"row compare", "SELECT 1 FROM users WHERE (email, id) = ($1, $2)", CodeFeatureNotSupported, "email"},
		{"case", "SELECT CASE email WHEN 'a' THEN 1 END FROM users", CodeFeatureNotSupported, "email"},
		{"distinct from", "SELECT 1 FROM users WHERE email IS DISTINCT FROM $1", CodeFeatureNotSupported, "email"},
		{"whole row", "SELECT row_to_json(u.*) FROM users u", CodeFeatureNotSupported, ""},
		{"multi statement refusal", "SELECT 1; SELECT upper(ssn) FROM users", CodeFeatureNotSupported, "ssn"},
		{"unknown qualifier", "SELECT 1 FROM accounts WHERE a.iban IN ('x')", CodeUndefinedTable, "iban"},
		{"bit string", "INSERT INTO users(ssn) VALUES (B'101')", CodeDatatypeMismatch, "ssn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := a.Analyze(tt.sql, nil)
			if r.Refusal == nil {
				t.Fatalf("not refused; SQL %s params %s", spliced(r), paramString(r.Params))
			}
			if r.Refusal.Code != tt.code {
				t.Errorf("code %s want %s (%v)", r.Refusal.Code, tt.code, r.Refusal)
			}
			if tt.column != "" && (r.Refusal.Column == nil || r.Refusal.Column.Name != tt.column) {
				t.Errorf("column %v want %s (%v)", r.Refusal.Column, tt.column, r.Refusal)
			}
			if tt.column != "" && !strings.Contains(r.Refusal.Message, tt.column) {
				t.Errorf("message does not name the column: %s", r.Refusal.Message)
			}
			if !r.Touches || r.SQL != tt.sql {
				t.Errorf("refusal must touch and keep the SQL")
			}
			for _, secret := range []string{"'x'", "'a%'", "'1'", "none", "101"} {
				if strings.Contains(r.Refusal.Message, secret) || strings.Contains(r.Refusal.Hint, secret) {
					t.Errorf("refusal echoes a value: %v", r.Refusal)
				}
			}
		})
	}
}

func TestAnalyzeUntouched(t *testing.T) {
	a := testAnalyzer(t)
	for _, q := range []string{
		"SELECT 1",
		"INSERT INTO orders(a) VALUES ('x')",
		"SELECT * FROM pg_stat_user_tables WHERE relname = 'users'",
		"SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
		"SELECT * FROM public.usersx",
		"this is not sql about schemas",
	} {
		r := a.Analyze(q, nil)
		if r.Touches || r.Refusal != nil || r.SQL != q || r.Params != nil || r.Literals != nil || r.Kind != quickKind(q) {
			t.Errorf("%s: %+v", q, r)
		}
	}
}

func TestSearchPath(t *testing.T) {
	a := testAnalyzer(t)
	tests := []struct {
		sql     string
		changed bool
		path    []string
		local   bool
	}{
		{`SET search_path TO app, "My Schema", public`, true, []string{"app", "My Schema", "public"}, false},
		{`SET LOCAL search_path = 'a, b'`, true, []string{"a, b"}, true},
		{`SET SCHEMA 'app'`, true, []string{"app"}, false},
		{`SELECT set_config('search_path', 'app, "X", public', false)`, true, []string{"app", "X", "public"}, false},
		{`SELECT pg_catalog.set_config('search_path', $1, false)`, true, nil, false},
		{`RESET search_path`, true, nil, false},
		{`SET search_path TO DEFAULT`, true, nil, false},
		{`DISCARD ALL`, true, nil, false},
		{`SHOW search_path`, false, nil, false},
	}
	for _, tt := range tests {
		r := a.Analyze(tt.sql, nil)
		if r.SearchPathChanged != tt.changed || r.SearchPathLocal != tt.local || strings.Join(r.SearchPath, "|") != strings.Join(tt.path, "|") || (tt.path != nil) != (r.SearchPath != nil) {
			t.Errorf("%s: changed=%v path=%q local=%v", tt.sql, r.SearchPathChanged, r.SearchPath, r.SearchPathLocal)
		}
		if r.Refusal != nil {
			t.Errorf("%s refused: %v", tt.sql, r.Refusal)
		}
	}
}

func TestInvalidates(t *testing.T) {
	a := testAnalyzer(t)
	for q, want := range map[string]bool{
		"ALTER TABLE users ADD COLUMN x int":       true,
		"DROP TABLE users":                         true,
		"ALTER TABLE users RENAME COLUMN ssn TO s": true,
		"CREATE TABLE users (id int, ssn bytea)":   true,
		"DROP TABLE orders":                        false,
		"TRUNCATE users":                           false,
	} {
		r := a.Analyze(q, nil)
		if r.Refusal != nil || r.Invalidates != want {
			t.Errorf("%s: invalidates=%v refusal=%v", q, r.Invalidates, r.Refusal)
		}
	}
}

// TestFingerprintCache checks that a statement served from the
// fingerprint cache gets exactly what a full analysis gives it.
func TestFingerprintCache(t *testing.T) {
	pairs := [][2]string{
		{"INSERT INTO users(id, ssn, email) VALUES (1, 'a', 'b')", "INSERT INTO users(id, ssn, email) VALUES (22, 'it''s', 'ccc')"},
		{"SELECT id FROM users WHERE email = 'x' AND age IN (1, 2)", "select id from users where email = 'yy' and age in (-3, 40)"},
		{"SELECT id FROM users WHERE email = 'x' AND age IN (1, 2)", "SELECT id FROM users WHERE email = 'yy' AND age IN (-3, 40)"},
		{"UPDATE users SET ssn = 'a' WHERE email = $$b$$ /* t=1 */", "UPDATE users SET ssn = 'zz' WHERE email = $$q$$ /* t=2 */"},
		{"INSERT INTO users(ssn) VALUES ('a')", "INSERT INTO users(ssn) VALUES (NULL)"},
		{"INSERT INTO users(ssn) VALUES ('a')", "INSERT INTO users(ssn) VALUES (E'a\\nb')"},
		{"INSERT INTO users(age) VALUES (1)", "INSERT INTO users(age) VALUES (1.5)"},
		{"SELECT 1 FROM users u WHERE email = 'a'", "SELECT 1 FROM users v WHERE email = 'a'"},
		{"SELECT 1 FROM users WHERE email = 'a'", "SELECT 1 FROM users WHERE ssn = 'a'"},
		{"UPDATE users SET (ssn, a) = (0, 'x')", "UPDATE users SET (ssn, a) = (0, '\xb4')"}, // invalid UTF-8: found by FuzzAnalyze
	}
	for _, p := range pairs {
		warm := testAnalyzer(t)
		warm.Analyze(p[0], nil)
		got := warm.Analyze(p[1], nil)
		want := testAnalyzer(t).Analyze(p[1], nil)
		if spliced(got) != spliced(want) || paramString(got.Params) != paramString(want.Params) ||
			(got.Refusal == nil) != (want.Refusal == nil) || got.SQL != want.SQL || len(got.Literals) != len(want.Literals) {
			t.Errorf("%s after %s:\n got %s %v\nwant %s %v", p[1], p[0], spliced(got), got.Refusal, spliced(want), want.Refusal)
		}
	}
	// The hit really comes from the fingerprint cache.
	a := testAnalyzer(t)
	a.Analyze(pairs[0][0], nil)
	if a.fps.len() != 1 {
		t.Fatalf("fingerprint cache has %d entries", a.fps.len())
	}
	r := a.Analyze(pairs[0][1], nil)
	if a.exact.len() != 1 {
		t.Errorf("a fingerprint hit should not fill the exact cache (%d)", a.exact.len())
	}
	if spliced(r) != `INSERT INTO users(id, ssn, email) VALUES (22, <ssn store "it's">, <email store "ccc">)` {
		t.Errorf("got %s", spliced(r))
	}
}

func TestCacheBounded(t *testing.T) {
	p := testAnalyzer(t).Policy()
	a := NewAnalyzer(p, Options{CacheSize: 8})
	for i := 0; i < 100; i++ {
		a.Analyze("SELECT ssn FROM users WHERE id = "+itoa(int32(i))+" AND email = $1", nil)
	}
	if n := a.exact.len(); n > 8 {
		t.Errorf("exact cache holds %d > 8", n)
	}
	off := NewAnalyzer(p, Options{CacheSize: -1})
	if r := off.Analyze("SELECT ssn FROM users", nil); r.Refusal != nil || !r.Touches {
		t.Errorf("uncached analysis: %+v", r)
	}
}

func TestEmptyPolicyPassThrough(t *testing.T) {
	a := NewAnalyzer(nil, Options{})
	r := a.Analyze("INSERT INTO users(ssn) VALUES ('x')", nil)
	if r.Touches || r.SQL != "INSERT INTO users(ssn) VALUES ('x')" {
		t.Errorf("%+v", r)
	}
}

// TestFingerprintValueDependent: analyses that depend on a constant's
// value are never reused for other constants.
func TestFingerprintValueDependent(t *testing.T) {
	pairs := [][2]string{
		{"SELECT id, email FROM users ORDER BY 1", "SELECT id, email FROM users ORDER BY 2"},
		{"SELECT set_config('work_mem', '1MB', false), ssn FROM users", "SELECT set_config('search_path', 'app', false), ssn FROM users"},
		{"DO $$ BEGIN PERFORM 1; END $$; SELECT ssn FROM users", "DO $$ BEGIN DELETE FROM users; END $$; SELECT ssn FROM users"},
	}
	for _, p := range pairs {
		a := testAnalyzer(t)
		a.Analyze(p[0], nil)
		got := a.Analyze(p[1], nil)
		want := testAnalyzer(t).Analyze(p[1], nil)
		if (got.Refusal == nil) != (want.Refusal == nil) || got.SearchPathChanged != want.SearchPathChanged {
			t.Errorf("%s after %s: got refusal=%v path=%v, want refusal=%v path=%v", p[1], p[0], got.Refusal, got.SearchPathChanged, want.Refusal, want.SearchPathChanged)
		}
	}
}

func TestConcurrent(t *testing.T) {
	a := NewAnalyzer(testAnalyzer(t).Policy(), Options{CacheSize: 64})
	done := make(chan bool)
	for g := 0; g < 8; g++ {
		go func(g int) {
			defer func() { done <- true }()
			for i := 0; i < 300; i++ {
				q := "INSERT INTO users(id, ssn) VALUES (" + itoa(int32(i%50)) + ", 'v" + itoa(int32(g)) + "')"
				r := a.Analyze(q, nil)
				if len(r.Literals) != 1 || r.Literals[0].Value != "v"+itoa(int32(g)) {
					t.Errorf("%s: %s", q, spliced(r))
					return
				}
			}
		}(g)
	}
	for g := 0; g < 8; g++ {
		<-done
	}
}
