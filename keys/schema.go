package keys

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations[i] upgrades the keystore from version i to i+1. %[1]s is the
// quoted schema. Each runs in the one migration transaction; append only,
// never edit a released one.
var migrations = []string{
	// 0 → 1: the data_keys table (see doc.go).
	`CREATE TABLE %[1]s.data_keys (
	id          integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	key_name    text        NOT NULL,
	dek_version integer     NOT NULL,
	wrapped     bytea,
	kek_name    text        NOT NULL,
	kek_version text        NOT NULL,
	state       text        NOT NULL DEFAULT 'active',
	created_at  timestamptz NOT NULL DEFAULT now(),
	updated_at  timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT data_keys_key_name_dek_version_key UNIQUE (key_name, dek_version),
	CONSTRAINT data_keys_key_name_check CHECK (key_name <> ''),
	CONSTRAINT data_keys_dek_version_check CHECK (dek_version >= 1),
	CONSTRAINT data_keys_state_check CHECK (state IN ('active', 'retired', 'destroyed')),
	CONSTRAINT data_keys_wrapped_check CHECK ((state = 'destroyed') = (wrapped IS NULL))
);
COMMENT ON TABLE %[1]s.data_keys IS 'pgcrypt-proxy wrapped data encryption keys; see keys/doc.go. Never delete rows: destroy a key by setting state = ''destroyed''.';
CREATE UNIQUE INDEX data_keys_one_active ON %[1]s.data_keys (key_name) WHERE state = 'active';
CREATE FUNCTION %[1]s.data_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP = 'DELETE' THEN
		RAISE EXCEPTION 'pgcrypt-proxy keystore: data key % version % must not be deleted; set state = ''destroyed'' instead', OLD.key_name, OLD.dek_version
			USING ERRCODE = 'integrity_constraint_violation';
	END IF;
	IF NEW.id <> OLD.id OR NEW.key_name <> OLD.key_name OR NEW.dek_version <> OLD.dek_version THEN
		RAISE EXCEPTION 'pgcrypt-proxy keystore: the identity of data key % version % (id, key_name, dek_version) never changes', OLD.key_name, OLD.dek_version
			USING ERRCODE = 'integrity_constraint_violation';
	END IF;
	IF OLD.state = 'destroyed' AND NEW.state <> 'destroyed' THEN
		RAISE EXCEPTION 'pgcrypt-proxy keystore: data key % version % is destroyed and cannot come back', OLD.key_name, OLD.dek_version
			USING ERRCODE = 'integrity_constraint_violation';
	END IF;
	NEW.updated_at := now();
	RETURN NEW;
END
$$;
CREATE TRIGGER data_keys_guard BEFORE UPDATE OR DELETE ON %[1]s.data_keys
	FOR EACH ROW EXECUTE FUNCTION %[1]s.data_keys_guard();`,
}

// SchemaVersion is the keystore schema version this package migrates to.
var SchemaVersion = len(migrations)

// lockKey maps a lock name to a bigint for pg_advisory_xact_lock: FNV-1a 64
// of "pgcrypt-proxy\x00" and the parts joined by NUL. Other packages'
// advisory locks on the keystore database must not use this prefix.
func lockKey(parts ...string) int64 {
	h := fnv.New64a()
	h.Write([]byte("pgcrypt-proxy"))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return int64(h.Sum64())
}

// schemaVersion returns the keystore's schema version, 0 when the
// migrations table does not exist.
func schemaVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, schema string) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL",
		pgx.Identifier{schema, "schema_migrations"}.Sanitize()).Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return 0, nil
	}
	var v int
	err := q.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+
		pgx.Identifier{schema, "schema_migrations"}.Sanitize()).Scan(&v)
	return v, err
}

// migrate brings the keystore to SchemaVersion. When it is already there it
// runs two reads and no DDL, so a role without CREATE can start the proxy
// once the keystore exists. Otherwise it migrates in one transaction under
// an advisory lock: replicas starting at once queue up, and the later ones
// find the work done.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string) (applied int, err error) {
	v, err := schemaVersion(ctx, pool, schema)
	if err != nil {
		return 0, migrateErr(schema, err)
	}
	if v > SchemaVersion {
		return 0, &Error{Op: "open", Kind: ErrSchemaVersion,
			Err: fmt.Errorf("schema %s is at version %d, this binary knows up to %d", schema, v, SchemaVersion)}
	}
	if v == SchemaVersion {
		return 0, nil
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, migrateErr(schema, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("migrate", schema)); err != nil {
		return 0, migrateErr(schema, err)
	}
	qs := pgx.Identifier{schema}.Sanitize()
	// CREATE SCHEMA IF NOT EXISTS checks the CREATE privilege on the
	// database even when the schema exists, so a schema made by a DBA must
	// not be created again.
	var haveSchema bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&haveSchema); err != nil {
		return 0, migrateErr(schema, err)
	}
	if !haveSchema {
		if _, err := tx.Exec(ctx, "CREATE SCHEMA "+qs); err != nil {
			return 0, migrateErr(schema, err)
		}
	}
	if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+qs+`.schema_migrations (
	version    integer     PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT now()
)`); err != nil {
		return 0, migrateErr(schema, err)
	}
	if v, err = schemaVersion(ctx, tx, schema); err != nil { // again, under the lock
		return 0, migrateErr(schema, err)
	}
	if v > SchemaVersion {
		return 0, &Error{Op: "open", Kind: ErrSchemaVersion,
			Err: fmt.Errorf("schema %s is at version %d, this binary knows up to %d", schema, v, SchemaVersion)}
	}
	for ; v < SchemaVersion; v++ {
		if _, err := tx.Exec(ctx, fmt.Sprintf(migrations[v], qs)); err != nil {
			return 0, migrateErr(schema, fmt.Errorf("migration %d: %w", v+1, err))
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+qs+".schema_migrations (version) VALUES ($1)", v+1); err != nil {
			return 0, migrateErr(schema, err)
		}
		applied++
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, migrateErr(schema, err)
	}
	return applied, nil
}

func migrateErr(schema string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42501" { // insufficient_privilege
		err = fmt.Errorf("%w (the proxy's database role needs CREATE on the database, or on an existing schema %s, "+
			"the first time it starts; afterwards USAGE on the schema and SELECT, INSERT, UPDATE on its tables suffice)", err, schema)
	}
	return &Error{Op: "open", Kind: ErrKeystore, Err: fmt.Errorf("create or migrate keystore schema %s: %w", schema, err)}
}

// isIdent reports whether s is a plain lower-case SQL identifier, the only
// schema names accepted (as in the config).
func isIdent(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_' || (r >= 'a' && r <= 'z'):
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return !strings.HasPrefix(s, "pg_")
}
