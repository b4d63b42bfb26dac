package migrate

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// CheckpointTable is the name of the checkpoint table in the keystore
// schema.
const CheckpointTable = "encrypt_checkpoints"

// checkpointDDL creates the checkpoint table; %s is the quoted schema.
const checkpointDDL = `CREATE TABLE IF NOT EXISTS %[1]s.encrypt_checkpoints (
	table_name   text        NOT NULL,
	column_set   text        NOT NULL,
	last_pk      text[],
	rows_done    bigint      NOT NULL DEFAULT 0,
	started_at   timestamptz,
	updated_at   timestamptz NOT NULL DEFAULT now(),
	completed_at timestamptz,
	PRIMARY KEY (table_name, column_set)
);
COMMENT ON TABLE %[1]s.encrypt_checkpoints IS 'pgcrypt-proxy encrypt-existing: where a pass over a table stopped; see migrate/doc.go. Safe to delete a row (the next run starts over).'`

// lockKey maps a lock name to a bigint for PostgreSQL advisory locks:
// FNV-1a 64 of "pgcrypt-proxy/migrate" and the parts joined by NUL (a prefix
// of its own, apart from the keys package's locks).
func lockKey(parts ...string) int64 {
	h := fnv.New64a()
	h.Write([]byte("pgcrypt-proxy/migrate"))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return int64(h.Sum64())
}

// checkpoint is the state of a pass over one table and column set.
type checkpoint struct {
	pool    *pgxpool.Pool
	table   string // quoted <schema>.encrypt_checkpoints
	tname   string // the migrated table
	columns string // its column set
}

// ensureCheckpointTable creates the checkpoint table unless it exists: no
// DDL at all when it does, so later runs need no CREATE privilege.
func ensureCheckpointTable(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	qt := pgx.Identifier{schema, CheckpointTable}.Sanitize()
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", qt).Scan(&exists); err != nil {
		return fmt.Errorf("checkpoint table %s: %w", qt, err)
	}
	if exists {
		return nil
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("checkpoint-table", schema)); err != nil {
			return err
		}
		var haveSchema bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&haveSchema); err != nil {
			return err
		}
		qs := pgx.Identifier{schema}.Sanitize()
		if !haveSchema {
			if _, err := tx.Exec(ctx, "CREATE SCHEMA "+qs); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, fmt.Sprintf(checkpointDDL, qs))
		return err
	})
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42501" {
			return &UserError{Msg: fmt.Sprintf("cannot create the checkpoint table %s", qt), Err: err,
				Hint: "the first run needs CREATE on the keystore schema (or on the database when the schema does not exist yet); later runs need SELECT, INSERT, UPDATE on it"}
		}
		return fmt.Errorf("create checkpoint table %s: %w", qt, err)
	}
	return nil
}

// load returns where a pass in progress stopped (nil when none is) and how
// many rows it had done.
func (c *checkpoint) load(ctx context.Context) (lastPK []string, done int64, err error) {
	err = c.pool.QueryRow(ctx, "SELECT last_pk, rows_done FROM "+c.table+" WHERE table_name = $1 AND column_set = $2",
		c.tname, c.columns).Scan(&lastPK, &done)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read checkpoint: %w", err)
	}
	if lastPK == nil {
		done = 0
	}
	return lastPK, done, nil
}

// start records the start of a new pass.
func (c *checkpoint) start(ctx context.Context) error {
	_, err := c.pool.Exec(ctx, "INSERT INTO "+c.table+" AS cp (table_name, column_set, last_pk, rows_done, started_at) "+
		"VALUES ($1, $2, NULL, 0, now()) ON CONFLICT (table_name, column_set) DO UPDATE "+
		"SET last_pk = NULL, rows_done = 0, started_at = now(), updated_at = now()", c.tname, c.columns)
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

// queueAdvance adds the update of the checkpoint to a batch's transaction.
func (c *checkpoint) queueAdvance(b *pgx.Batch, lastPK []string, done int64) {
	b.Queue("UPDATE "+c.table+" SET last_pk = $3, rows_done = $4, updated_at = now() WHERE table_name = $1 AND column_set = $2",
		c.tname, c.columns, lastPK, done)
}

// complete records the end of a pass: the next run starts over.
func (c *checkpoint) complete(ctx context.Context, done int64) error {
	_, err := c.pool.Exec(ctx, "UPDATE "+c.table+" SET last_pk = NULL, rows_done = $3, completed_at = now(), updated_at = now() "+
		"WHERE table_name = $1 AND column_set = $2", c.tname, c.columns, done)
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

// CheckpointInfo is a checkpoint row, for tools and tests.
type CheckpointInfo struct {
	Table       string
	Columns     string
	LastPK      []string // nil: no pass in progress
	RowsDone    int64
	StartedAt   *time.Time
	CompletedAt *time.Time
}

// Checkpoints lists the checkpoint rows of the keystore schema (none when
// the table does not exist).
func Checkpoints(ctx context.Context, pool *pgxpool.Pool, schema string) ([]CheckpointInfo, error) {
	qt := pgx.Identifier{schema, CheckpointTable}.Sanitize()
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", qt).Scan(&exists); err != nil || !exists {
		return nil, err
	}
	rows, err := pool.Query(ctx, "SELECT table_name, column_set, last_pk, rows_done, started_at, completed_at FROM "+qt+" ORDER BY 1, 2")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (CheckpointInfo, error) {
		var c CheckpointInfo
		err := r.Scan(&c.Table, &c.Columns, &c.LastPK, &c.RowsDone, &c.StartedAt, &c.CompletedAt)
		return c, err
	})
}
