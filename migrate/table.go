package migrate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// UserError is a refusal that the operator fixes (a table without a
// primary key, a column that is not bytea yet, a table not in the policy,
// another run in progress), as opposed to an internal fault.
type UserError struct {
	Msg  string
	Hint string // what to do, when there is something to say
	Err  error  // cause, may be nil
}

func (e *UserError) Error() string {
	s := e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *UserError) Unwrap() error { return e.Err }

// IsUserError reports whether err is a UserError.
func IsUserError(err error) bool {
	var ue *UserError
	return errors.As(err, &ue)
}

// pkColumn is one primary-key column: its quoted name and its type as
// format_type spells it (for the casts from text).
type pkColumn struct {
	name  string
	quote string
	typ   string
}

// column is one policy column of the table being migrated.
type column struct {
	pol   *policy.Column
	name  string // attname
	quote string
	aad   []byte
	mode  crypto.Mode
	kms   string
}

// table is the table being migrated, as the catalog and the policy see it.
type table struct {
	oid       uint32
	schema    string
	name      string
	qualified string // schema.name quoted for SQL
	display   string // schema.name quoted only where needed: reports, logs, checkpoint
	pk        []pkColumn
	cols      []*column
	// the SQL of the run
	selectFirst, selectAfter, update, reread string
}

// displayName is the checkpoint's table name and the report's.
func (t *table) displayName() string { return t.display }

// quoteIdent quotes an identifier only when PostgreSQL would need it for
// its case or characters (as the policy prints names), for messages.
func quoteIdent(s string) string {
	plain := s != ""
	for i, r := range s {
		if !(r == '_' || (r >= 'a' && r <= 'z') || (i > 0 && (r >= '0' && r <= '9' || r == '$'))) {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// columnSet is the checkpoint's column key: sorted column names.
func (t *table) columnSet() string {
	names := make([]string, len(t.cols))
	for i, c := range t.cols {
		names[i] = c.name
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

// sendFunction is the expression that converts a column of the declared
// type to its canonical plaintext, for the ALTER TABLE advice.
func sendFunction(typ policy.Type, col string) string {
	switch typ.Name {
	case "text", "varchar":
		return "convert_to(" + col + ", 'UTF8')"
	case "int2", "int4", "int8", "float8":
		return typ.Name + "send(" + col + ")"
	case "bool":
		return "boolsend(" + col + ")"
	case "bytea":
		return col
	}
	return typ.Name + "_send(" + col + ")"
}

// resolveTable finds name (as SQL would spell it, resolved with the
// session's search_path) in the catalog and in the policy, and checks
// that it can be migrated.
func resolveTable(ctx context.Context, pool *pgxpool.Pool, pol *policy.Policy, name string, batch int) (*table, error) {
	t := &table{}
	var kind string
	err := pool.QueryRow(ctx, `SELECT c.oid, n.nspname, c.relname, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)`, name).Scan(&t.oid, &t.schema, &t.name, &kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, &UserError{Msg: fmt.Sprintf("table %s does not exist", name),
			Hint: "name it as SQL would, e.g. users or public.users; unqualified names follow the search_path of the connection"}
	}
	if err != nil {
		var pe interface{ SQLState() string }
		if errors.As(err, &pe) && pe.SQLState() == "42602" { // invalid_name
			return nil, &UserError{Msg: fmt.Sprintf("%q is not a table name", name), Err: err}
		}
		return nil, fmt.Errorf("look up table %s: %w", name, err)
	}
	t.qualified = pgx.Identifier{t.schema, t.name}.Sanitize()
	t.display = quoteIdent(t.schema) + "." + quoteIdent(t.name)
	if kind != "r" && kind != "p" {
		return nil, &UserError{Msg: fmt.Sprintf("%s is not a table (relkind %s)", t.display, kind)}
	}
	pt := pol.Table(t.schema, t.name, nil)
	if pt == nil || len(pt.Columns) == 0 {
		return nil, &UserError{Msg: fmt.Sprintf("table %s has no columns in the policy %s", t.display, pol.Source),
			Hint: "list its encrypted columns under tables: in the policy"}
	}

	// Attributes of the table.
	type attr struct {
		typ    uint32
		format string
	}
	attrs := map[string]attr{}
	rows, err := pool.Query(ctx, `SELECT attname, atttypid, format_type(atttypid, atttypmod)
FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped`, t.oid)
	if err != nil {
		return nil, fmt.Errorf("read the columns of %s: %w", t.display, err)
	}
	for rows.Next() {
		var n string
		var a attr
		if err := rows.Scan(&n, &a.typ, &a.format); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read the columns of %s: %w", t.display, err)
		}
		attrs[n] = a
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the columns of %s: %w", t.display, err)
	}

	// The primary key, in index order.
	rows, err = pool.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1 AND i.indisprimary
ORDER BY k.ord`, t.oid)
	if err != nil {
		return nil, fmt.Errorf("read the primary key of %s: %w", t.display, err)
	}
	for rows.Next() {
		var c pkColumn
		if err := rows.Scan(&c.name, &c.typ); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read the primary key of %s: %w", t.display, err)
		}
		c.quote = pgx.Identifier{c.name}.Sanitize()
		t.pk = append(t.pk, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the primary key of %s: %w", t.display, err)
	}
	if len(t.pk) == 0 {
		return nil, &UserError{Msg: fmt.Sprintf("table %s has no primary key", t.display),
			Hint: "encrypt-existing walks a table in primary-key order and updates rows by primary key; add one (ALTER TABLE … ADD PRIMARY KEY …)"}
	}

	var probs []error
	names := make([]string, 0, len(pt.Columns))
	for n := range pt.Columns {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		pc := pt.Columns[n]
		a, ok := attrs[pc.Name]
		switch {
		case !ok:
			probs = append(probs, &UserError{Msg: fmt.Sprintf("policy column %s: %s has no column %s", pc, t.display, quoteIdent(pc.Name))})
			continue
		case slices.ContainsFunc(t.pk, func(k pkColumn) bool { return k.name == pc.Name }):
			probs = append(probs, &UserError{Msg: fmt.Sprintf("policy column %s is part of the primary key of %s", pc, t.display),
				Hint: "a primary key cannot be encrypted in place; encrypt a copy of it instead"})
			continue
		case a.typ != 17: // bytea
			q := quoteIdent(pc.Name)
			probs = append(probs, &UserError{Msg: fmt.Sprintf("policy column %s is %s in the database, not bytea", pc, a.format),
				Hint: fmt.Sprintf("convert it first: ALTER TABLE %s ALTER COLUMN %s TYPE bytea USING %s; see the migration steps in `pgcrypt-proxy encrypt-existing --help`",
					t.display, q, sendFunction(pc.Type, q))})
			continue
		}
		mode := crypto.ModeRandomized
		if pc.Mode == policy.Deterministic {
			mode = crypto.ModeDeterministic
		}
		t.cols = append(t.cols, &column{pol: pc, name: pc.Name, quote: pgx.Identifier{pc.Name}.Sanitize(),
			aad: []byte(pc.Identity()), mode: mode, kms: pol.Keys[pc.Key].KMS})
	}
	if len(probs) > 0 {
		return nil, errors.Join(probs...)
	}
	t.buildSQL(batch)
	return t, nil
}

// tpk lists the qualified key columns.
func tpk(pk []pkColumn) []string {
	out := make([]string, len(pk))
	for i, k := range pk {
		out[i] = "pgcrypt_t." + k.quote
	}
	return out
}

// rangeParams returns the placeholders of a low and a high key, numbered
// after the statement's first n parameters, cast to the key's types.
func rangeParams(pk []pkColumn, n int) (lo, hi []string) {
	for i, k := range pk {
		lo = append(lo, "$"+strconv.Itoa(n+1+i)+"::"+k.typ)
		hi = append(hi, "$"+strconv.Itoa(n+1+len(pk)+i)+"::"+k.typ)
	}
	return lo, hi
}

// buildSQL prepares the statements of a run (see doc.go).
func (t *table) buildSQL(batch int) {
	// Every column is qualified: an unqualified ORDER BY "id" would sort by
	// the output column "id"::text, not by the key.
	var pkText, pkList, pkParams, cols []string
	for i, k := range t.pk {
		pkText = append(pkText, "pgcrypt_t."+k.quote+"::text AS pgcrypt_k"+strconv.Itoa(i))
		pkList = append(pkList, "pgcrypt_t."+k.quote)
		pkParams = append(pkParams, "$"+strconv.Itoa(i+1)+"::"+k.typ)
	}
	for _, c := range t.cols {
		cols = append(cols, "pgcrypt_t."+c.quote)
	}
	sel := "SELECT " + strings.Join(pkText, ", ") + ", " + strings.Join(cols, ", ") + " FROM " + t.qualified + " AS pgcrypt_t"
	order := " ORDER BY " + strings.Join(pkList, ", ") + " LIMIT " + strconv.Itoa(batch)
	t.selectFirst = sel + order
	t.selectAfter = sel + " WHERE (" + strings.Join(pkList, ", ") + ") > (" + strings.Join(pkParams, ", ") + ")" + order

	// unnest($1::text[], …, $k::bytea[] (new), $k+1::bytea[] (old), …)
	var params, aliases, join, set, cas, ret []string
	n := 0
	param := func(typ string) string { n++; return "$" + strconv.Itoa(n) + "::" + typ }
	for i, k := range t.pk {
		a := "k" + strconv.Itoa(i)
		params = append(params, param("text[]"))
		aliases = append(aliases, a)
		join = append(join, "pgcrypt_t."+k.quote+" = pgcrypt_v."+a+"::"+k.typ)
		ret = append(ret, "pgcrypt_t."+k.quote+"::text")
	}
	rereadParams := slices.Clone(params)
	rereadAliases := slices.Clone(aliases)
	for i, c := range t.cols {
		nw, old := "n"+strconv.Itoa(i), "o"+strconv.Itoa(i)
		params = append(params, param("bytea[]"), param("bytea[]"))
		aliases = append(aliases, nw, old)
		set = append(set, c.quote+" = COALESCE(pgcrypt_v."+nw+", pgcrypt_t."+c.quote+")")
		cas = append(cas, "(pgcrypt_v."+nw+" IS NULL OR pgcrypt_t."+c.quote+" IS NOT DISTINCT FROM pgcrypt_v."+old+")")
	}
	// The batch's key range bounds the join: without it the planner
	// hashes the whole table for every batch (a sequential scan each
	// time, quadratic over a run); with it, an index range scan.
	lo, hi := rangeParams(t.pk, n)
	rng := " AND (" + strings.Join(tpk(t.pk), ", ") + ") >= (" + strings.Join(lo, ", ") + ")" +
		" AND (" + strings.Join(tpk(t.pk), ", ") + ") <= (" + strings.Join(hi, ", ") + ")"
	t.update = "UPDATE " + t.qualified + " AS pgcrypt_t SET " + strings.Join(set, ", ") +
		" FROM unnest(" + strings.Join(params, ", ") + ") AS pgcrypt_v(" + strings.Join(aliases, ", ") + ")" +
		" WHERE " + strings.Join(join, " AND ") + " AND " + strings.Join(cas, " AND ") + rng +
		" RETURNING " + strings.Join(ret, ", ")

	var tcols []string
	for _, c := range t.cols {
		tcols = append(tcols, "pgcrypt_t."+c.quote)
	}
	lo, hi = rangeParams(t.pk, len(t.pk))
	rng = " AND (" + strings.Join(tpk(t.pk), ", ") + ") >= (" + strings.Join(lo, ", ") + ")" +
		" AND (" + strings.Join(tpk(t.pk), ", ") + ") <= (" + strings.Join(hi, ", ") + ")"
	t.reread = "SELECT " + strings.Join(ret, ", ") + ", " + strings.Join(tcols, ", ") + " FROM " + t.qualified + " AS pgcrypt_t" +
		" JOIN unnest(" + strings.Join(rereadParams, ", ") + ") AS pgcrypt_v(" + strings.Join(rereadAliases, ", ") + ")" +
		" ON " + strings.Join(join, " AND ") + " WHERE true" + rng + " ORDER BY " + strings.Join(tpk(t.pk), ", ")
}
