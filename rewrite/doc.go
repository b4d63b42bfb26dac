// Package rewrite decides, for each statement a client sends, which
// parameters and constants must be encrypted for which policy column, how
// the SQL must change so that comparisons work on ciphertext, and what
// must be refused. It is pure analysis with pg_query (the PostgreSQL 17
// parser): no I/O, no keys, no values leave it except in Result.
//
// # Using it
//
// One Analyzer per policy snapshot (NewAnalyzer); it is safe for
// concurrent use. Analyze(sql, searchPath) takes a Parse message's query
// or a Query message's text (several statements allowed) and the
// session's search_path, and returns a Result the proxy applies:
//
//  1. Touches false: forward the original message untouched.
//  2. Refusal non-nil: send nothing; answer the client with an
//     ErrorResponse carrying Refusal.Code, Message and Hint (and, inside a
//     transaction block, make the session's transaction aborted, as a
//     server error would).
//  3. Otherwise send Result.SQL instead of the original text:
//     - Extended protocol: in Parse, set the type OID of every $n whose
//     Params[n-1].Column is set: bytea (17) for UseStore, bytea[] (1001)
//     for UseCompare. In Bind, encrypt those parameters: one ciphertext
//     for UseStore; for UseCompare an array with one ciphertext per
//     data-key version the column may hold (deterministic encryption is
//     only equal under the same key). Params[i] with Column nil are
//     forwarded as the client sent them. len(Params) is the highest $n
//     referenced.
//     - Simple protocol: replace each Literals[i] span [Start, End) of
//     Result.SQL (byte offsets into Result.SQL, in increasing order; apply
//     them from last to first, or keep a running offset) by a ciphertext
//     literal: a bytea literal for UseStore ('\x…'::bytea), a bytea[]
//     literal for UseCompare ('{"\\x…","\\x…"}'::bytea[]); a UseCompare
//     literal with Quant set is written as Quant(bytea[] literal), or as a
//     plain bytea literal when there is a single candidate. The span holds
//     Placeholder ("$0"), a parameter no statement can have, so text that
//     escaped the replacement fails at the server instead of storing
//     anything. A Null literal's span already holds a NULL ("NULL", or
//     "NULL::bytea[]" for a comparison, "ANY(NULL::bytea[])" with Quant)
//     and may be left as it is. Value is
//     the constant as PostgreSQL would read it; the proxy encodes it in
//     the column's declared type. These forms assume
//     standard_conforming_strings = on (the default since 9.1 and what
//     pg_query assumes); the proxy must refuse simple-protocol statements
//     with policy literals when the server reports it off.
//     - SearchPathChanged: the statement sets search_path. SearchPath is
//     the new value when known; when nil (RESET, SET … TO DEFAULT,
//     DISCARD ALL, RESET ALL, set_config with a parameter) ask the server.
//     SearchPathLocal marks SET LOCAL / set_config(…, true), which ends
//     with the transaction. A ROLLBACK also undoes a SET made inside the
//     transaction; re-reading search_path at ReadyForQuery after any of
//     these is the robust choice. "$user" should be expanded by the proxy;
//     unexpanded, it is matched against any schema-qualified policy table
//     of the name.
//     - Invalidates: DDL on a policy table; refresh the catalog cache.
//  4. Results decrypt through RowDescription's table OID and attribute
//     number, so this package only refuses outputs that could not be
//     decrypted (expressions over policy columns).
//
// Results are shared through the caches: callers must not modify them.
//
// # Rewrites
//
// Encrypted columns are bytea in the database. Values for them are
// encrypted by the proxy, so only parameters and constants can go into
// them, optionally cast to the column's declared type (a text and varchar
// cast are interchangeable); the cast is removed (the value becomes bytea).
// Deterministic comparisons become array comparisons so that a value
// matches under any data-key version:
//
//	col = $1              → col = ANY($1::bytea[])
//	col = 'x'             → col = $0      (Literal.Quant "ANY")
//	col <> 'x'            → col <> $0     (Literal.Quant "ALL")
//	$1 = col              → col = ANY($1::bytea[])
//	col IN ($1, 'x')      → (col = ANY($1::bytea[] || $0))
//	col NOT IN ($1, $2)   → (col <> ALL($1::bytea[] || $2::bytea[]))
//
// (IN binds tighter than =, hence the parentheses.)
//
// The rest of the client's text, comments included, is kept byte for byte:
// edits are spliced at token boundaries from pg_query.Scan, not produced
// by deparsing.
//
// # Supported
//
//   - INSERT … VALUES (multi-row, DEFAULT, NULL, column lists in any
//     order), INSERT … DEFAULT VALUES; INSERT … SELECT whose policy targets
//     get parameters, constants or the same column (INSERT INTO users(ssn)
//     SELECT ssn FROM users …).
//   - INSERT … ON CONFLICT (…) DO UPDATE SET col = EXCLUDED.col | $n |
//     constant | the same column; DO NOTHING.
//   - UPDATE … SET col = …, SET (a, b) = ($1, $2), UPDATE … FROM copying the
//     same column.
//   - RETURNING and select lists with plain column references (also through
//     aliases, subqueries in FROM, CTEs, data-modifying CTEs, *).
//   - WHERE / ON / HAVING: = and <> against parameters or constants, IN and
//     NOT IN lists, col = (SELECT col …) and col IN (SELECT col …) on the
//     same deterministic column, equality between the same deterministic
//     column (self-joins), IS [NOT] NULL on any policy column.
//   - GROUP BY, DISTINCT, DISTINCT ON, COUNT(DISTINCT col) on deterministic
//     columns; COUNT(col) on any. (Equal values under two data-key versions
//     have different ciphertexts, so these group per key version until the
//     column is re-encrypted under one key.)
//   - Table aliases, schema-qualified names, unqualified names resolved with
//     the search path (policy.Policy.Table rules), EXPLAIN, DECLARE CURSOR,
//     multi-statement simple queries (a SET search_path applies to the
//     statements after it), DDL on policy tables (with Invalidates).
//
// # Refused, and why
//
// Fail closed (DESIGN.md invariant 1): whatever the proxy cannot prove
// safe is refused before it reaches the server. Messages name the column
// and say what works; they never contain values from the statement.
//
//	SQLSTATE  meaning                         examples
//	0A000     not possible on ciphertext,     upper(ssn), ssn || 'x', ssn::text, coalesce(ssn, …),
//	          or not supported yet            LIKE/ILIKE/SIMILAR/~, <, >, BETWEEN, ORDER BY, min/max,
//	                                          = or IN on a randomized column, comparing two different
//	                                          policy columns or a policy column with a plain column or
//	                                          expression, col = ANY($1) (arrays), INSERT … SELECT from
//	                                          another source, copying ciphertext into a plain column,
//	                                          INSERT without a column list, SET (…) = (SELECT …),
//	                                          scalar subqueries yielding a policy column, MERGE, COPY
//	                                          in the extended protocol (COPY … FROM STDIN / TO STDOUT in
//	                                          the simple protocol is supported: see AnalyzeCopy),
//	                                          PREPARE … AS, DO blocks and function bodies that mention
//	                                          a policy table, views and rules over policy tables,
//	                                          CREATE TABLE AS / SELECT INTO a policy table, defaults,
//	                                          generated columns and CHECKs on policy columns
//	42601     syntax error                    a statement pg_query cannot parse that may name a policy
//	                                          table (others pass through: the server reports them)
//	42804     type conflict                   a cast to another type than the declared one, a bit-string
//	                                          constant, $n used for two columns, for a column and
//	                                          something else, or both stored and compared
//	42702     ambiguous name                  an unqualified column that could be an outer query's
//	                                          policy column or another table's column; an unqualified
//	                                          table whose policy schema is not on the known search path
//	42P01     unknown qualifier               t.col where t is not in FROM and col is a policy column's name
//	XX000     internal failure                the analyser could not place a value (a bug: reported
//	                                          rather than risking plaintext)
//
// What no SQL analysis can see: writes through views, rules, triggers or
// functions created earlier, and inserts into a partition or inheritance
// child by its own name. `policy check` should flag such objects.
//
// # Cost and caching
//
// Most statements touch no policy table. Analyze first lower-cases the text
// into a stack buffer and, in one pass, looks for every policy table's bare
// name, U&"…" identifier escapes, and the words search_path, schema, reset
// and discard; when none occurs it returns at once without parsing (a few
// hundred nanoseconds for a 150-byte statement, one allocation for the
// Result: less than policy.MayTouch alone, which lower-cases into a heap
// copy). Benchmarks (go test -bench . ./rewrite) measure this path, an
// exact-cache hit, a fingerprint-cache hit with new constants and a full
// analysis side by side.
//
// Otherwise two bounded LRU caches (Options.CacheSize statements each,
// sharded, safe for concurrent use) avoid repeated parsing:
//
//   - exact: keyed by (search_path, SQL text). A prepared statement, or any
//     repeated text, costs one map lookup.
//   - shape (the "fingerprint" cache): keyed by (search_path, a hash of
//     the token sequence with constant values left out, shapeHash). A
//     simple-protocol statement whose constants change each time has the
//     same shape; hashing the tokens the cache needs anyway costs no second
//     parse, which pg_query's fingerprint did (7 µs instead of 12 µs per
//     hit). The cached analysis is a template in token indices:
//     which token ranges to replace, by what, and which constant token
//     feeds which column. On a hit the new text is scanned with
//     pg_query.Scan and its token sequence compared with the template's:
//     same length, same kinds, same text for every token except string and
//     numeric constants (comments are ignored). The grammar only sees
//     token kinds and the text of non-constant tokens, so an equal sequence
//     means an equal parse tree up to constant values. Any difference, or
//     a constant whose value needs escape processing (E'\n', adjacent
//     string continuation, U&”), falls back to a full analysis. Results
//     from fingerprint hits are not added to the exact cache, so changing
//     constants do not evict stable statements.
//   - per session (AnalyzeMemo with the session's Memo, used for Query
//     messages): the template of the session's last templated statement
//     and its text up to the first constant. A statement that starts with
//     that text and has the template's token shape is instantiated at
//     once, skipping the table-name scan and both shared lookups (about
//     half the cost of a fingerprint hit); anything else takes the path
//     above, which moves the Memo to the template it finds.
package rewrite
