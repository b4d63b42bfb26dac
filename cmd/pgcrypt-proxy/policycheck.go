package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

const policyUsage = `Usage: pgcrypt-proxy policy check [--config FILE] [--dsn DSN]

Validates the policy file (policy_file) on its own and against the live
schema: every policy table exists, every policy column exists and is bytea,
and every key names a KMS backend of the config. It connects with --dsn, or
else keystore.dsn. Exit status 0 when all is well, 1 listing every problem.
`

func policyCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, policyUsage)
		return 0
	}
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprint(stderr, policyUsage)
		return 2
	}
	fs := flag.NewFlagSet("policy check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, policyUsage) }
	dsn := fs.String("dsn", "", "database to check against (default keystore.dsn)")
	load := configFlags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg, err := load()
	if err != nil {
		fmt.Fprintf(stderr, "pgcrypt-proxy: invalid configuration:\n%v\n", indent(err))
		return 2
	}
	if cfg.PolicyFile == "" {
		fmt.Fprintln(stderr, "pgcrypt-proxy policy check: no policy_file in the configuration")
		return 2
	}
	pol, err := policy.Load(cfg.PolicyFile)
	if err != nil {
		fmt.Fprintf(stderr, "policy %s is invalid:\n%v\n", cfg.PolicyFile, indent(err))
		return 1
	}
	var problems []string
	for _, k := range pol.Keys {
		if _, ok := cfg.KMS[k.KMS]; !ok {
			problems = append(problems, fmt.Sprintf("key %q: kms %q is not defined in the configuration", k.Name, k.KMS))
		}
	}
	target := *dsn
	if target == "" {
		target = cfg.Keystore.DSN.Value()
	}
	if target == "" {
		fmt.Fprintln(stderr, "pgcrypt-proxy policy check: give --dsn or set keystore.dsn to check against the database")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, target)
	if err != nil {
		fmt.Fprintf(stderr, "pgcrypt-proxy policy check: connect: %v\n", err)
		return 1
	}
	defer conn.Close(ctx)
	schemaProblems, err := checkSchema(ctx, conn, pol)
	if err != nil {
		fmt.Fprintf(stderr, "pgcrypt-proxy policy check: %v\n", err)
		return 1
	}
	problems = append(problems, schemaProblems...)
	if len(problems) > 0 {
		fmt.Fprintf(stderr, "policy %s does not match the database (%d problems):\n", cfg.PolicyFile, len(problems))
		for _, p := range problems {
			fmt.Fprintf(stderr, "  - %s\n", p)
		}
		return 1
	}
	fmt.Fprintf(stdout, "policy %s is valid: %d tables, %d encrypted columns, all present and bytea\n",
		cfg.PolicyFile, len(pol.Tables()), len(pol.Columns()))
	return 0
}

// checkSchema compares the policy with the catalog.
func checkSchema(ctx context.Context, conn *pgx.Conn, pol *policy.Policy) ([]string, error) {
	var problems []string
	for _, t := range pol.Tables() {
		// Resolve the table as a statement would: qualified, or through
		// the search path for an unqualified policy table.
		var oid uint32
		var where string
		name := t.Name.String()
		// The catalog itself, not to_regclass: the checking role may lack
		// USAGE on the schema and should still get an answer.
		err := conn.QueryRow(ctx, `SELECT c.oid, n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE c.relname = $1 AND c.relkind IN ('r', 'p', 'f')
			  AND (n.nspname = $2 OR $2 = '' AND n.nspname = ANY (pg_catalog.current_schemas(false)))
			ORDER BY pg_catalog.array_position(pg_catalog.current_schemas(false), n.nspname::text) LIMIT 1`,
			t.Name.Name, t.Name.Schema).Scan(&oid, &where)
		if errors.Is(err, pgx.ErrNoRows) {
			problems = append(problems, fmt.Sprintf("table %s does not exist", name))
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, col := range pol.Columns() {
			if col.Table != t.Name {
				continue
			}
			var typ string
			err := conn.QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute
				WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped`, oid, col.Name).Scan(&typ)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				problems = append(problems, fmt.Sprintf("column %s does not exist", col))
			case err != nil:
				return nil, err
			case typ != "bytea":
				problems = append(problems, fmt.Sprintf("column %s is %s; encrypted columns must be bytea (ALTER TABLE … ALTER COLUMN … TYPE bytea USING …, see docs/migrating.md)", col, typ))
			}
		}
	}
	return problems, nil
}
