// Package policy loads the policy file, which lists the encrypted columns,
// into an immutable Policy, and reloads it safely.
//
// The file (DESIGN.md, "Contracts"):
//
//	version: 1
//	keys:
//	  pii: {kms: gcp}               # a data-key family and the KMS that wraps its keys
//	tables:
//	  public.users:                 # schema.table, or table alone for any schema
//	    ssn:   {key: pii, type: text}                       # randomized (default)
//	    email: {key: pii, type: text, mode: deterministic}  # equality search
//	    '"Birth Date"': {key: pii, type: date, migrating: true}  # quoted identifier, inside YAML quotes
//
// Names follow SQL identifier rules: unquoted names fold to lower case and
// "Quoted" names keep their case. A table named without a schema matches it
// in whatever schema a statement resolves it to; a schema-qualified one
// matches only there. Types are the plaintext types clients see: text,
// varchar, int2, int4, int8, numeric, float8, bool, date, timestamp,
// timestamptz, uuid, jsonb, bytea (SQL spellings such as integer and
// timestamp with time zone are accepted). Deterministic mode is refused for
// numeric, float8 and jsonb, whose equal values have several encodings, so
// equality on ciphertext would silently miss rows.
//
// Every problem is reported at once, each with its line. Holder keeps the
// policy in force: Reload (on SIGHUP, and by polling the file) validates
// the new content and swaps it in atomically, or keeps the old policy and
// reports why. Each statement reads the policy once, so a reload never
// changes a statement half-way.
package policy
