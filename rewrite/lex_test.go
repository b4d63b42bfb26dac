package rewrite

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// lexDiff returns "" when lex agrees with scan on sql (lex declined, or
// lex accepted and scan produced the identical tokens value), and a
// description of the divergence otherwise.
func lexDiff(sql string) string {
	got, ok := lex(sql)
	if !ok {
		if got != nil {
			return "lex declined but returned tokens"
		}
		return ""
	}
	want, err := scan(sql)
	if err != nil {
		return fmt.Sprintf("lex accepted text scan rejects (%v): %s", err, fmtToks(sql, got))
	}
	if !reflect.DeepEqual(got, want) {
		return fmt.Sprintf("lex: %s constants=%d\nscan: %s constants=%d",
			fmtToks(sql, got), got.constants, fmtToks(sql, want), want.constants)
	}
	return ""
}

func fmtToks(sql string, t *tokens) string {
	var b strings.Builder
	for _, x := range t.list {
		fmt.Fprintf(&b, " [%d,%d %v", x.start, x.end, x.kind)
		if x.start >= 0 && x.end <= int32(len(sql)) && x.start <= x.end {
			fmt.Fprintf(&b, " %q", sql[x.start:x.end])
		}
		b.WriteString("]")
	}
	return b.String()
}

// TestLexKeywords proves the keyword table: pg.Scan gives every entry,
// in lower, upper and mixed case, exactly the table's token kind, and so
// does lex.
func TestLexKeywords(t *testing.T) {
	if len(kwList) < 400 {
		t.Fatalf("only %d keywords", len(kwList))
	}
	seen := map[string]bool{}
	for _, kw := range kwList {
		if seen[kw.name] {
			t.Errorf("duplicate keyword %q", kw.name)
		}
		seen[kw.name] = true
		for _, s := range []string{kw.name, strings.ToUpper(kw.name), mixedCase(kw.name)} {
			r, err := pg.Scan(s)
			if err != nil {
				t.Errorf("pg.Scan(%q): %v", s, err)
				continue
			}
			if len(r.Tokens) != 1 || r.Tokens[0].Token != kw.kind || r.Tokens[0].End != int32(len(s)) {
				t.Errorf("pg.Scan(%q) = %v, table says %v", s, r.Tokens, kw.kind)
			}
			if k := keywordKind(s); k != kw.kind {
				t.Errorf("keywordKind(%q) = %v, want %v", s, k, kw.kind)
			}
			if d := lexDiff(s); d != "" {
				t.Errorf("%q: %s", s, d)
			}
		}
	}
	for _, s := range []string{"users", "bench_enc_ins", "a", "x", "selects", "selec", "sélect", "select_", "in1", "nul", "nulls_p", "abort_p", "ident", "sconst", "op", "uminus", "format_la", "mode_type_name", "ascii_40"} {
		if k := keywordKind(s); k != pg.Token_IDENT {
			t.Errorf("keywordKind(%q) = %v, want IDENT", s, k)
		}
		if d := lexDiff(s); d != "" {
			t.Errorf("%q: %s", s, d)
		}
	}
}

func mixedCase(s string) string {
	b := []byte(s)
	for i := range b {
		if i%2 == 0 && b[i] >= 'a' && b[i] <= 'z' {
			b[i] -= 'a' - 'A'
		}
	}
	return string(b)
}

// lexAccepted are common statements the fast path must take (lex ok).
var lexAccepted = []string{
	"INSERT INTO bench_enc_ins (a, b, c) VALUES ('Customer 0000000', 'x@example.com', '123')",
	"SELECT a, b, c FROM t WHERE c = '42'",
	"SELECT a, b, c FROM t WHERE c = '42';",
	"select * from users where id = 42",
	"SELECT * FROM users WHERE id = $1",
	"SELECT * FROM users WHERE id = $1 AND email = $2",
	"INSERT INTO users(id, ssn, email) VALUES ($1, $2, $3)",
	"INSERT INTO users(id, ssn, email) VALUES (1, '123', E'a@b'), (2, NULL, DEFAULT)",
	"INSERT INTO t (a, b, c, d) VALUES (1, 2.5, -3, 1e10)",
	"INSERT INTO t (a, b) VALUES (true, false)",
	"INSERT INTO t (a, b) VALUES (TRUE, FALSE)",
	"UPDATE users SET email = 'a@b.c', age = 30 WHERE id = 7",
	"UPDATE users SET ssn = NULL WHERE id = 7 RETURNING id",
	"DELETE FROM users WHERE email = 'x@y.z'",
	"DELETE FROM users WHERE id IN (1, 2, 3)",
	"SELECT id FROM users WHERE dob = '2020-01-01'::date",
	"SELECT id FROM users WHERE age::text = $1::text",
	"SELECT CAST('42' AS integer)",
	"SELECT now() - interval '1 day'",
	"SELECT data->>'name', data @> '{\"a\":1}', data #>> '{a,b}' FROM docs",
	"SELECT ARRAY[1, 2, 3], a[1], a[1:2] FROM t",
	"SELECT 'it''s', '', ''''",
	"SELECT $$dollar$$, $tag$with $ inside$tag$",
	"SELECT E'line\\nbreak', E'quote\\'s', E'back\\\\slash', E'\\x41\\101'",
	"SELECT B'1010', X'FF', b'0', x'0a'",
	"SELECT 2147483647, 2147483648, 0x1F, 0o17, 0b101, 1_000_000, 1.5e-3, .5",
	"SELECT 'a'\n'b'",
	"SELECT 1 -- trailing comment",
	"SELECT /* c */ 1 /* nested /* c */ */ + 2",
	"-- leading comment\nSELECT 1",
	"SELECT \"Quoted Ident\", \"with \"\"quote\"\"\" FROM \"T\"",
	"SELECT é, naïve_col FROM données",
	"BEGIN; INSERT INTO t VALUES (1); COMMIT;",
	"SELECT a FROM t WHERE a <> 1 AND b != 2 AND c <= 3 AND d >= 4",
	"SELECT f(a => 1, b := 2)",
	"SELECT 1 FROM t WHERE a BETWEEN 1 AND 10 OR b IS NOT NULL",
	"SELECT a || b, a ~~ b, a !~* b, a # b, @ a, |/ a, a & b, a | b, a << b",
	"SELECT a FROM t WHERE a LIKE 'x%' ESCAPE '\\'",
	"SELECT\tx\r\nFROM\ft\v",
}

// lexDeclined are constructs lex declines; each must make it return
// false (the report of what the fast path does not handle).
var lexDeclined = []string{
	"SELECT U&'d\\0061t\\+000061'",
	"SELECT U&\"d\\0061t\"",
	"SELECT u&x",
	"SELECT N'national'",
	"SELECT E'\\u0041'",
	"SELECT E'\\U00000041'",
	"SELECT E'\\0'",
	"SELECT E'\\xff'",
	"SELECT E'\\xc3\\xa9'",
	"SELECT E'\\400'",
	"SELECT 'a' -- comment\n'b'",
	"SELECT 'a'\n-- comment\n'b'",
	"SELECT $1abc",
	"SELECT $1$",
	"SELECT $",
	"SELECT $a",
	"SELECT 123abc",
	"SELECT 1.2e",
	"SELECT 1e+",
	"SELECT 0x",
	"SELECT 0b2",
	"SELECT 1_",
	"SELECT 1__2",
	"SELECT 0x1G",
	"SELECT \"\"",
	"SELECT 1 " + strings.Repeat("<", 64) + " 2",
	"SELECT a \\ b",
	"SELECT {1}",
	"SELECT 1\x01",
	"SELECT 1\x7f",
	"SELECT 'abc",
	"SELECT E'abc\\",
	"SELECT \"abc",
	"SELECT $$abc",
	"SELECT $q$abc$$",
	"SELECT /* abc",
	"SELECT /* /* */",
	"SELECT B'101",
	"SELECT 'a\x00b'",
	"SELECT '\xff'",
	"SELECT 1 -- \xc3",
}

// lexStatements is the differential table: realistic statements with
// every literal form, comments, casts, operators, spacing and case.
var lexStatements = []string{
	// INSERT
	"INSERT INTO users (id, ssn, email) VALUES (1, '123-45-6789', 'a@example.com')",
	"insert into users (id, ssn, email) values (1, '123-45-6789', 'a@example.com')",
	"InSeRt InTo users (id, ssn) VaLuEs (1, 'x')",
	"INSERT INTO users VALUES (DEFAULT, NULL, NULL)",
	"INSERT INTO users (id, ssn) VALUES ($1, $2) RETURNING id",
	"INSERT INTO users (id, ssn) VALUES ($1::int8, $2::text)",
	"INSERT INTO users (id, ssn) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
	"INSERT INTO users (id, ssn) SELECT id, ssn FROM staging WHERE ok",
	"INSERT INTO users (id, email) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email",
	"INSERT INTO users (id, email) VALUES (1, 'x') ON CONFLICT DO NOTHING",
	"INSERT INTO users(id,ssn,email)VALUES(1,'a','b')",
	"INSERT INTO users (id, ssn)\n  VALUES\n    (1, 'multi\nline'),\n    (2, 'second')",
	"INSERT INTO t (n) VALUES (-1), (+2), (- 3), (-2147483648)",
	"INSERT INTO t (f) VALUES (1.0), (.5), (5.), (1e3), (1E-3), (1.5e+10), (0.000_001)",
	"INSERT INTO t (i) VALUES (2147483647), (2147483648), (9223372036854775807), (99999999999999999999999)",
	"INSERT INTO t (h) VALUES (0x10), (0X1F), (0o777), (0O7), (0b1010), (0B1), (0x_FF), (0x7FFFFFFF), (0x80000000), (0xFFFFFFFFFFFFFFFFFF)",
	"INSERT INTO t (u) VALUES (1_000), (1_000_000.000_1), (1_0e1_0)",
	"INSERT INTO t (b) VALUES (B'1010'), (b'0'), (X'DEADBEEF'), (x'0')",
	"INSERT INTO t (b) VALUES (B''), (X'')",
	"INSERT INTO t (s) VALUES (''), (' '), ('''')",
	"INSERT INTO t (s) VALUES ('it''s a test'), ('two '''' quotes')",
	"INSERT INTO t (s) VALUES (E'tab\\there'), (E'nl\\n'), (e'cr\\r'), (E'\\b\\f\\v')",
	"INSERT INTO t (s) VALUES (E'quote \\' inside'), (E'back \\\\ slash'), (E'\\\\')",
	"INSERT INTO t (s) VALUES (E'oct \\101\\7\\77'), (E'hex \\x41\\x7'), (E'\\xZZ'), (E'\\8\\9')",
	"INSERT INTO t (s) VALUES (E'doubled '' quote'), (E'mixed \\'''')",
	"INSERT INTO t (s) VALUES ($$dollar$$), ($$it's$$), ($$with\nnewline$$), ($$$$)",
	"INSERT INTO t (s) VALUES ($a$tagged$a$), ($ab_1$x$ab_2$y$ab_1$), ($é$unicode tag$é$)",
	"INSERT INTO t (s) VALUES ($x$ $$ inner $$ $x$)",
	"INSERT INTO t (s) VALUES ('unicode ✓ 日本語 émoji 😀')",
	"INSERT INTO t (s) VALUES (E'unicode ✓ \\t 日本語')",
	"INSERT INTO t (s) VALUES ('a'\n'b'), ('c'\r\n'd'), ('e' \n 'f'), ('g'\t\n\t'h')",
	"INSERT INTO t (s) VALUES ('a'\n\n\n'b'\n'c')",
	"INSERT INTO t (s) VALUES (E'a\\n'\n'b\\n')",
	"INSERT INTO t (s) VALUES (B'10'\n'01'), (X'AB'\n'CD')",
	"INSERT INTO t (s) VALUES ('a' 'b')",
	"INSERT INTO t (s) VALUES ('a'/* c */'b')",
	"INSERT INTO t (s) VALUES ('a'\n/* c */'b')",
	"INSERT INTO t (s) VALUES ('a' -- c\n)",
	"INSERT INTO t (j) VALUES ('{\"a\": [1, 2, {\"b\": null}]}'::jsonb)",
	"INSERT INTO t (a) VALUES (ARRAY['x', 'y']), ('{1,2,3}'::int[]), (ARRAY[[1,2],[3,4]])",
	"INSERT INTO t (d) VALUES (DATE '2020-01-01'), (timestamp '2020-01-01 00:00'), (interval '1 day')",
	"INSERT INTO t (d) VALUES (CURRENT_DATE), (CURRENT_TIMESTAMP), (now())",
	"INSERT INTO \"Users\" (\"Id\", \"SSN\") VALUES (1, 'x')",
	"INSERT INTO public.users (id) VALUES (1)",
	"INSERT INTO t (a) VALUES ($1), ($2), ($10), ($123)",
	"INSERT INTO t (a) VALUES (1) -- comment at end",
	"INSERT INTO t (a) VALUES (1) /* comment at end */",
	"/* leading */ INSERT /* mid */ INTO /**/ t (a) VALUES (/* in parens */ 1)",
	"INSERT INTO t (a) VALUES ('x') --",
	"INSERT INTO t (a) VALUES (1);INSERT INTO t (a) VALUES (2);",
	"WITH x AS (INSERT INTO users(ssn) VALUES ($1) RETURNING id, ssn) SELECT id, ssn FROM x",
	// SELECT
	"SELECT 1",
	"SELECT 1;",
	"select 1",
	"SELECT * FROM users",
	"SELECT id, ssn, email FROM users WHERE id = 1",
	"SELECT id FROM users WHERE email = 'a@example.com' AND age > 30",
	"SELECT id FROM users WHERE email IN ('a', 'b', 'c')",
	"SELECT id FROM users WHERE email NOT IN ('a', 'b') OR ssn IS NULL",
	"SELECT id FROM users WHERE email LIKE '%@example.com' ESCAPE '!'",
	"SELECT id FROM users WHERE email ILIKE $1",
	"SELECT id FROM users WHERE age BETWEEN 18 AND 65",
	"SELECT id FROM users WHERE (a, b) = (1, 2)",
	"SELECT id FROM users u JOIN accounts a ON a.user_id = u.id WHERE a.iban = 'DE00'",
	"SELECT id FROM users u LEFT OUTER JOIN accounts a USING (id)",
	"SELECT count(*), sum(age), avg(age)::numeric(10,2) FROM users GROUP BY 1 HAVING count(*) > 1 ORDER BY 2 DESC NULLS LAST LIMIT 10 OFFSET 5",
	"SELECT DISTINCT ON (email) email FROM users",
	"SELECT CASE WHEN age < 18 THEN 'minor' WHEN age >= 65 THEN 'senior' ELSE 'adult' END FROM users",
	"SELECT COALESCE(email, 'none'), NULLIF(ssn, ''), GREATEST(1, 2), LEAST(3, 4)",
	"SELECT CAST(age AS text), age::text, age::varchar(10), '1'::int4, '2020-01-01'::timestamptz",
	"SELECT x::double precision, y::timestamp with time zone, z::character varying(20)",
	"SELECT a->'b', a->>'c', a#>'{d,e}', a#>>'{f}', a @> '{\"g\":1}', a <@ b, a ? 'k', a ?| array['x'], a ?& array['y'], a - 'z', a #- '{p}'",
	"SELECT a || b, a ||/ b, |/ 4, ||/ 8, @ -5, ~ 1, 5 ! , !! 5",
	"SELECT a ~ 'x', a ~* 'x', a !~ 'x', a !~* 'x', a ~~ 'x', a !~~ 'x', a ~~* 'x'",
	"SELECT a << 1, a >> 1, a & 1, a | 1, a # 1, ~a",
	"SELECT a=-1, a<-1, a>-1, a*-1, a/-1, a%-1, a^-1, a+-1, a--1\n, a-+1",
	"SELECT a<=-1, a>=-1, a<>-1, a!=-1, a=>-1",
	"SELECT a @- b, a ~- b, a !- b, a ?+ b, a %+ b, a *+ b, a <+ b",
	"SELECT a+/*c*/b, a-/*c*/b, a*/*c*/b, a/ /*c*/b",
	"SELECT a+--c\nb",
	"SELECT 1+1, 1 + 1, 1+-1, 1-+1, 1*-1, -1, - 1, +1",
	"SELECT a FROM t WHERE a<>b AND a!=b AND a<=b AND a>=b AND a<b AND a>b AND a=b",
	"SELECT a FROM t WHERE a<=>b OR a<<=b OR a>>=b OR a&&b OR a-|-b OR a&<b OR a&>b",
	"SELECT f(a => 1), f(a := 2), f(VARIADIC ARRAY[1])",
	"SELECT arr[1], arr[1:2], arr[:2], arr[2:], arr[1][2]",
	"SELECT (SELECT 1), EXISTS (SELECT 1 FROM t), 1 IN (SELECT 1)",
	"SELECT * FROM generate_series(1, 10) AS g(i)",
	"SELECT 1..2",
	"SELECT a.b.c, a.*, t.\"Col\"",
	"SELECT $1, $2::text, $3::int[], ($4)",
	"SELECT TRUE, FALSE, NULL, true, false, null, True",
	"SELECT 'a' AS x, 'b' y, \"c\" FROM t AS \"T\"",
	"SELECT ROW(1, 'a'), (1, 'a')::mytype",
	"SELECT x FROM t WHERE x = ANY($1) AND y = ALL(ARRAY[1,2])",
	"SELECT x FROM t WHERE x IS DISTINCT FROM 1 AND y IS NOT DISTINCT FROM 2",
	"SELECT x FROM t WHERE x SIMILAR TO 'a%' AND y OVERLAPS z",
	"SELECT x FROM t FOR UPDATE SKIP LOCKED",
	"SELECT x FROM t TABLESAMPLE SYSTEM (10)",
	"SELECT x, row_number() OVER (PARTITION BY y ORDER BY z) FROM t",
	"SELECT x FROM t UNION ALL SELECT y FROM u EXCEPT SELECT z FROM v",
	"SELECT xmlelement(name foo), json_object('a': 1)",
	"SELECT 'a' COLLATE \"C\", lower('ÀÉÎ')",
	"SELECT $$a$$ || $b$b$b$ || 'c' || E'd' || B'1'::text",
	"SELECT E'\\''",
	"SELECT E'\\\\'",
	"SELECT E'a\\\nb'",
	"SELECT 'a\\b'",
	"SELECT 'back\\slash in standard string'",
	"SELECT 'a' \n 'b' \n 'c'",
	"SELECT 'a'\n\t'b'",
	"SELECT 'a'\r'b'",
	"SELECT 'a'\f\n'b'",
	"SELECT 'a'\v\n'b'",
	"SELECT 'a'\n\v'b'",
	"SELECT 'a' -'b'",
	"SELECT 'a'\n-'b'",
	"SELECT 'a'\n--'b'\n",
	"SELECT 'a'--x",
	"SELECT 'a'/*x*/",
	"SELECT B'1'\n'0'\n'1'",
	"SELECT 1 /* a /* b /* c */ d */ e */ + 1",
	"SELECT 1 /*/ odd */ + 1",
	"SELECT 1 /***/ + 1 /** x **/ + 1",
	"SELECT 1 /* -- not a line comment */ + 1",
	"SELECT 1 -- /* not a block comment\n+ 1",
	"SELECT 1 --\r+ 1",
	"SELECT \"a\"\"b\", \"\"\"\", \"a b c\", \"日本\"",
	"SELECT \"" + strings.Repeat("x", 70) + "\"",
	"SELECT " + strings.Repeat("y", 70),
	"SELECT " + strings.Repeat("é", 40),
	"SELECT \"select\", \"SELECT\", \"from\"",
	"SELECT abc$def, a$1, _x, _1, x_y_z",
	"SELECT 1 " + strings.Repeat("<", 63) + " 2",
	"SELECT 1 " + strings.Repeat("+", 70) + " 2",
	"SELECT 1 " + strings.Repeat("@", 62) + "- 2",
	"SELECT u, U, uu, u1&x",
	"SELECT e, b, x, n, E, B, X, N",
	"SELECT ne'x', be'y', xe'z'",
	"SELECT 1::int, 1 ::int, 1:: int, a:b, a::b::c, a:=b, a:::b",
	"SELECT a.b, a . b, a..b, a...b, .5, ..5, 1.5.5, 1..5, 1.e5, 1.5e5.5",
	"SELECT 1.5..2, 1...2, .5..2",
	"SELECT 0, 00, 007, 0.0, 0e0, 0.e0",
	"SELECT 1$$x$$, 1 $$x$$",
	"SELECT $1, $0, $01, $99999999999",
	"SELECT ?, $1?",
	"SELECT `a`",
	"SELECT 'x' FROM t WHERE a = 'it''s' -- trailing ' quote",
	"SELECT * FROM t WHERE a = 1;;; SELECT 2",
	"  \n\t SELECT   1   \n\n",
	"",
	"   ",
	"-- only a comment",
	"/* only a comment */",
	";",
	// UPDATE / DELETE
	"UPDATE users SET email = 'x' WHERE id = 1",
	"update users set email='x',ssn='y' where id=1",
	"UPDATE users SET (ssn, email) = ($1, 'x') WHERE email <> 'y' RETURNING ssn",
	"UPDATE users SET age = age + 1 WHERE dob < '2000-01-01'",
	"UPDATE users u SET email = a.email FROM accounts a WHERE a.id = u.id",
	"UPDATE users SET data = data || '{\"k\": \"v\"}'::jsonb WHERE id = $1",
	"UPDATE users SET tags = array_append(tags, 'new') WHERE id = 1",
	"UPDATE t SET a = DEFAULT, b = NULL, c = TRUE, d = -1.5e-3",
	"DELETE FROM users WHERE id = $1 RETURNING ssn",
	"DELETE FROM users WHERE email = 'x' AND ssn = 'y' OR id > 10",
	"delete from users where id in (select id from old)",
	"DELETE FROM users USING accounts WHERE accounts.id = users.id",
	// other statements
	"BEGIN",
	"COMMIT",
	"ROLLBACK",
	"SET search_path TO app, public",
	"SET search_path TO app; SELECT token FROM secrets WHERE token = 'abc'",
	"SET LOCAL statement_timeout = '5s'",
	"SHOW server_version",
	"PREPARE p (int) AS SELECT $1",
	"EXECUTE p(1)",
	"CREATE TABLE t (id serial PRIMARY KEY, ssn text NOT NULL DEFAULT '', amount numeric(10, 2) CHECK (amount >= 0))",
	"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $fn$ SELECT 1; $fn$",
	"CREATE FUNCTION f() RETURNS int AS $$\nBEGIN\n  RETURN 'a''b';\nEND\n$$ LANGUAGE plpgsql",
	"COPY users FROM STDIN",
	"COPY users (id, ssn) TO STDOUT WITH (FORMAT csv, HEADER true)",
	"EXPLAIN ANALYZE SELECT 1",
	"VACUUM ANALYZE users",
	"LISTEN chan; NOTIFY chan, 'payload'",
	"DO $$ BEGIN RAISE NOTICE 'x'; END $$",
	"COMMENT ON TABLE users IS 'the users'",
	"GRANT SELECT ON users TO reader",
	"ALTER TABLE users ADD COLUMN x int DEFAULT 0",
}

func TestLexDifferential(t *testing.T) {
	if n := len(lexStatements); n < 150 {
		t.Fatalf("only %d statements", n)
	}
	accepted := 0
	for _, list := range [][]string{lexStatements, lexAccepted, lexDeclined, seedCorpus} {
		for _, s := range list {
			if d := lexDiff(s); d != "" {
				t.Errorf("%q:\n%s", s, d)
			}
			if _, ok := lex(s); ok {
				accepted++
			}
		}
	}
	t.Logf("lex accepted %d of %d statements", accepted, len(lexStatements)+len(lexAccepted)+len(lexDeclined)+len(seedCorpus))
}

func TestLexAccepts(t *testing.T) {
	for _, s := range lexAccepted {
		if _, ok := lex(s); !ok {
			t.Errorf("lex declined %q", s)
		}
	}
}

func TestLexDeclines(t *testing.T) {
	for _, s := range lexDeclined {
		if _, ok := lex(s); ok {
			t.Errorf("lex accepted %q", s)
		}
	}
}

// TestLexLinear: lex stays linear on long runs (flex rescans an operator
// run after each token it cuts from it; lex declines such runs instead).
func TestLexLinear(t *testing.T) {
	const n = 1 << 20
	for _, c := range []struct {
		sql string
		ok  bool
	}{
		{strings.Repeat("+", n), false},
		{"SELECT 1 " + strings.Repeat("=", n), false},
		{"SELECT 1 =" + strings.Repeat("+", n), false},
		{"SELECT 1 =" + strings.Repeat("-", n), true}, // "=" and a comment
		{"SELECT " + strings.Repeat("'a'\n", n/4), true},
		{"SELECT " + strings.Repeat("'a'  ", n/5), true},
		{"SELECT " + strings.Repeat("a", n), true},
		{"SELECT " + strings.Repeat("1 + ", n/4) + "1", true},
		{"SELECT /*" + strings.Repeat("/*", n/4) + strings.Repeat("*/", n/4) + "*/ 1", true},
		{"SELECT $a$" + strings.Repeat("$", n) + "$a$", true},
		{"SELECT E'" + strings.Repeat("\\'", n/3) + "'", true},
	} {
		if _, ok := lex(c.sql); ok != c.ok {
			t.Errorf("lex(%.20q…) ok = %v, want %v", c.sql, ok, c.ok)
		}
	}
}

// TestLexTokens pins a few token lists down independently of pg.Scan.
func TestLexTokens(t *testing.T) {
	for _, c := range []struct {
		sql  string
		want string
	}{
		{"SELECT 1", "SELECT:SELECT ICONST:1"},
		{"a<=-1", "IDENT:a LESS_EQUALS:<= ASCII_45:- ICONST:1"},
		{"a!=-1", "IDENT:a Op:!=- ICONST:1"},
		{"1..5", "ICONST:1 DOT_DOT:.. ICONST:5"},
		{"2147483648 2147483647 0x80000000", "FCONST:2147483648 ICONST:2147483647 FCONST:0x80000000"},
		{"'a'\n'b' 'c'", "SCONST:'a'\n'b' SCONST:'c'"},
		{"x/*a/*b*/c*/y", "IDENT:x IDENT:y"},
		{"a+/*c*/b", "IDENT:a ASCII_43:+ IDENT:b"},
		{"$q$a$b$q$::text", "SCONST:$q$a$b$q$ TYPECAST::: TEXT_P:text"},
		{"B'1'X'2'E'\\''", "BCONST:B'1' XCONST:X'2' SCONST:E'\\''"},
	} {
		toks, ok := lex(c.sql)
		if !ok {
			t.Errorf("lex(%q) declined", c.sql)
			continue
		}
		var parts []string
		for _, x := range toks.list {
			parts = append(parts, x.kind.String()+":"+c.sql[x.start:x.end])
		}
		if got := strings.Join(parts, " "); got != c.want {
			t.Errorf("lex(%q) = %s, want %s", c.sql, got, c.want)
		}
	}
	toks, _ := lex("SELECT (a[1], (b)) FROM t WHERE c = 'x' AND d = 1.5 AND e = $1")
	if toks.constants != 3 {
		t.Errorf("constants = %d, want 3", toks.constants)
	}
	if m := toks.match; m[1] != 10 || m[10] != 1 || m[3] != 5 || m[7] != 9 {
		t.Errorf("match = %v", m)
	}
}

// lexFragments are the pieces TestLexRandom glues together, often with
// nothing in between, so that operator runs, comment starts inside
// operators, numbers followed by letters, string continuations and so on
// come up far more often than random bytes would produce them.
var lexFragments = []string{
	// identifiers and keywords
	"a", "users", "select", "FROM", "Where", "é", "x1$", "_", "u", "U", "e", "E", "b", "B", "x", "X", "n", "N", "in", "null", "TRUE", "int", "nulls",
	// numbers
	"0", "1", "42", "2147483647", "2147483648", "1_000", "0x1F", "0X_f", "0o7", "0b1", "0x", "0b", "1.5", ".5", "5.", "1e5", "1e+5", "1E-5", "1e", "1_", "00", "09", "1.",
	// strings
	"'a'", "''", "'it''s'", "E'\\n'", "E'\\''", "e'\\x41'", "E'\\101'", "E'\\0'", "E'\\'", "B'1'", "X'F'", "b''", "$$x$$", "$a$y$a$", "$a$", "$$", "'", "\"", "U&'x'", "N'x'", "'\\'",
	// quoted identifiers, parameters, dollars
	"\"a\"", "\"a\"\"b\"", "\"\"", "$1", "$12", "$", "$a",
	// operator and self characters
	"~", "!", "@", "#", "^", "&", "|", "`", "?", "+", "-", "*", "/", "%", "<", ">", "=", ",", "(", ")", "[", "]", ".", ";", ":",
	"::", ":=", "..", "=>", "<=", ">=", "<>", "!=", "->>", "@>", "#>>", "||",
	// comments and odd bytes
	"--c\n", "/*c*/", "/* /* */ */", "--", "/*", "*/", "\\", "{", "\x01",
}

var lexSeparators = []string{"", "", "", "", " ", " ", "\n", "\t", "\r\n", "\f", "\v", " \n ", "--c\n", "/**/"}

// TestLexRandom compares lex with scan on many random fragment sequences.
func TestLexRandom(t *testing.T) {
	n := 30000
	if testing.Short() {
		n = 3000
	}
	rng := rand.New(rand.NewPCG(1, 2))
	accepted := 0
	var b strings.Builder
	for range n {
		b.Reset()
		for k := 1 + rng.IntN(10); k > 0; k-- {
			b.WriteString(lexFragments[rng.IntN(len(lexFragments))])
			b.WriteString(lexSeparators[rng.IntN(len(lexSeparators))])
		}
		s := b.String()
		if d := lexDiff(s); d != "" {
			t.Fatalf("%q:\n%s", s, d)
		}
		if _, ok := lex(s); ok {
			accepted++
		}
	}
	t.Logf("lex accepted %d of %d random texts", accepted, n)
}

// FuzzLex: lex never panics, and whenever it accepts a text, pg.Scan
// accepts it too and gives the identical tokens value.
func FuzzLex(f *testing.F) {
	for _, list := range [][]string{lexStatements, lexAccepted, lexDeclined, seedCorpus} {
		for _, s := range list {
			f.Add(s)
		}
	}
	for _, s := range []string{
		"'a'\n'b'", "E'\\x41'\n'\\101'", "$a$$b$$a$", "1..2", "0x1_F", "a=>-b", "/*/**/*/", "'x' -- c\n'y'",
		"SELECT 1e5x", "\"a\"\"\"", "-- \r\n'a'", "$1 $2abc", ".5e-3", "<>!=<=>=", "U&'x'",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		if d := lexDiff(sql); d != "" {
			t.Fatalf("%q:\n%s", sql, d)
		}
	})
}

// lexBenchStatements: the same statements for BenchmarkLex and
// BenchmarkScan. insert300 is a ~300-byte INSERT with three string
// literals.
var lexBenchStatements = []struct{ name, sql string }{
	{"insert300", "INSERT INTO customer_accounts (account_holder_name, account_email_address, account_phone_number, created_at, account_status, loyalty_points) " +
		"VALUES ('Customer 0000000 of the northern region', 'customer.0000000@example.com', '+1-555-0100-0000', now(), 1, 250) RETURNING account_id, created_at"},
	{"insert", "INSERT INTO bench_enc_ins (a, b, c) VALUES ('Customer 0000000', 'x@example.com', '123')"},
	{"select", "SELECT a, b, c FROM t WHERE c = '42'"},
	{"update", "UPDATE users SET email = $1, age = 42, active = true WHERE id = 17 AND ssn IS NOT NULL"},
}

func BenchmarkLex(b *testing.B) {
	for _, s := range lexBenchStatements {
		if _, ok := lex(s.sql); !ok {
			b.Fatalf("lex declined %q", s.sql)
		}
		b.Run(s.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				lex(s.sql)
			}
		})
	}
}

func BenchmarkScan(b *testing.B) {
	for _, s := range lexBenchStatements {
		b.Run(s.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := scan(s.sql); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
