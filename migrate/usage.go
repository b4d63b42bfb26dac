package migrate

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// Usage is how many stored values of one column name a DEK id.
type Usage struct {
	Table  string `json:"table"`
	Column string `json:"column"`
	Values int64  `json:"values"`
}

// KeyUsage counts, in every policy column of keyName, the stored values
// whose envelope header names the DEK dekID (in either mode), with one
// sequential scan per table; see doc.go for the cost. A policy table
// without a schema is looked for in every schema. Tables and columns that
// do not exist, or are not bytea yet, hold no envelopes and are skipped.
// It returns one Usage per column scanned, including zero counts.
func KeyUsage(ctx context.Context, pool *pgxpool.Pool, pol *policy.Policy, keyName string, dekID uint32) ([]Usage, error) {
	headers := make([][]byte, 0, 2)
	for _, m := range []crypto.Mode{crypto.ModeRandomized, crypto.ModeDeterministic} {
		h := []byte{crypto.Magic0, crypto.Magic1, crypto.Version1, byte(m), 0, 0, 0, 0}
		binary.BigEndian.PutUint32(h[4:], dekID)
		headers = append(headers, h)
	}
	var out []Usage
	for _, pt := range pol.Tables() {
		var cols []string
		for name, c := range pt.Columns {
			if c.Key == keyName {
				cols = append(cols, name)
			}
		}
		if len(cols) == 0 {
			continue
		}
		slices.Sort(cols)
		// The relations the policy table matches, with those of its
		// columns that are bytea.
		q := `SELECT n.nspname, c.relname, coalesce(array_agg(a.attname ORDER BY a.attname) FILTER (WHERE a.attname IS NOT NULL), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'bytea'::regtype AND a.attname = ANY($3)
WHERE c.relname = $2 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND ($1 = '' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%' OR n.nspname = $1)
GROUP BY 1, 2 ORDER BY 1`
		rows, err := pool.Query(ctx, q, pt.Name.Schema, pt.Name.Name, cols)
		if err != nil {
			return nil, fmt.Errorf("find table %s: %w", pt.Name, err)
		}
		type rel struct {
			schema, name string
			cols         []string
		}
		var rels []rel
		for rows.Next() {
			var r rel
			if err := rows.Scan(&r.schema, &r.name, &r.cols); err != nil {
				rows.Close()
				return nil, fmt.Errorf("find table %s: %w", pt.Name, err)
			}
			rels = append(rels, r)
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("find table %s: %w", pt.Name, err)
		}
		for _, r := range rels {
			if len(r.cols) == 0 {
				continue
			}
			qt := pgx.Identifier{r.schema, r.name}.Sanitize()
			exprs := make([]string, len(r.cols))
			dest := make([]any, len(r.cols))
			counts := make([]int64, len(r.cols))
			for i, c := range r.cols {
				exprs[i] = "count(*) FILTER (WHERE substr(" + pgx.Identifier{c}.Sanitize() + ", 1, 8) = ANY($1))"
				dest[i] = &counts[i]
			}
			// The parent of a partitioned table scans every partition.
			if err := pool.QueryRow(ctx, "SELECT "+strings.Join(exprs, ", ")+" FROM "+qt, headers).Scan(dest...); err != nil {
				return nil, fmt.Errorf("scan %s: %w", qt, err)
			}
			for i, c := range r.cols {
				out = append(out, Usage{Table: quoteIdent(r.schema) + "." + quoteIdent(r.name), Column: c, Values: counts[i]})
			}
		}
	}
	return out, nil
}
