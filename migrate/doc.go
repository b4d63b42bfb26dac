// Package migrate encrypts the values already stored in a table's policy
// columns, in place and online: legacy plaintext becomes ciphertext, and
// ciphertext under a data key (DEK) version that is no longer the active
// one is re-encrypted under the active one. It is the engine of
// `pgcrypt-proxy encrypt-existing --table T`. KeyUsage is the scan behind
// `pgcrypt-proxy keys destroy-dek`, which refuses to shred a DEK version
// that stored values still need.
//
//	rep, err := migrate.Run(ctx, pool, pol, store, migrate.Options{Table: "public.users"})
//
// # Migrating a plaintext column, step by step
//
// Policy columns are bytea in the database and hold, encrypted, the
// canonical plaintext of their declared type: PostgreSQL's binary
// encoding of it, the bytes its send function makes (for text and
// varchar, the UTF-8 bytes). A column that holds plaintext today moves
// over like this, with the application running throughout:
//
//  1. Convert the column to bytea holding the canonical plaintext, with
//     the type's send function (a table rewrite under an ACCESS EXCLUSIVE
//     lock; do it in a maintenance window or with your usual online
//     schema-change tooling):
//
//     ALTER TABLE users ALTER COLUMN ssn  TYPE bytea USING convert_to(ssn, 'UTF8');  -- text, varchar
//     ALTER TABLE users ALTER COLUMN age  TYPE bytea USING int4send(age);            -- int4 (int2send, int8send)
//     ALTER TABLE users ALTER COLUMN born TYPE bytea USING date_send(born);          -- date
//     ALTER TABLE users ALTER COLUMN seen TYPE bytea USING timestamptz_send(seen);   -- timestamptz (timestamp_send)
//     ALTER TABLE users ALTER COLUMN amt  TYPE bytea USING numeric_send(amt);        -- numeric
//     ALTER TABLE users ALTER COLUMN uid  TYPE bytea USING uuid_send(uid);           -- uuid
//     ALTER TABLE users ALTER COLUMN doc  TYPE bytea USING jsonb_send(doc);          -- jsonb
//     -- float8send, boolsend likewise; a bytea column stays as it is.
//
//  2. List the column in the policy with migrating: true and reload the
//     proxy (SIGHUP). Reads now accept both ciphertext and legacy
//     plaintext; every new write through the proxy is encrypted.
//
//  3. Run `pgcrypt-proxy encrypt-existing --table users` (first with
//     --dry-run to see the counts). It can be stopped and rerun at any
//     time; it resumes where it stopped.
//
//  4. When it reports no plaintext left (rerun it: a complete pass that
//     changes nothing proves it), remove migrating: true and reload. From
//     then on anything that does not decrypt is an error.
//
// # Telling plaintext from ciphertext: never by guessing
//
// A stored value is ciphertext if and only if it has the envelope's magic,
// version, mode and length (crypto.LooksLikeEnvelope) and it decrypts
// (authenticates) under the DEK its header names and the column's
// identity (policy.Column.Identity, the associated data). So each value is
// classified as one of:
//
//	null           left alone
//	current        an envelope that authenticates, under the active DEK of the
//	               column's key, in the column's mode: nothing to do
//	old key        an envelope that authenticates under another DEK version (or
//	               in the other mode): re-encrypted under the active DEK
//	plaintext      no envelope header: legacy plaintext, checked to be a valid
//	               canonical value of the declared type, then encrypted
//	undecryptable  an envelope header that does not authenticate, or names a
//	               destroyed or unknown DEK, or one whose KEK the KMS refuses.
//	               Reported (count, reason, and the first rows' primary keys in
//	               the log) and LEFT ALONE: never encrypted as if it were
//	               plaintext, which would bury tampered data under a layer that
//	               reads back as garbage. The proxy's reads fail on it as before.
//	invalid        no envelope header, but not a valid value of the declared
//	               type (wrong length, invalid UTF-8, bad jsonb version): the
//	               conversion in step 1 was wrong. Reported and left alone.
//
// Without the envelope header a value is legacy plaintext, exactly as the
// proxy's migrating reads take it, so a run never changes what a client
// reads. (A legacy bytea value may start with the two magic bytes, 1 in
// 65,536 random values do; only the full header — magic, version, mode,
// length: about 2^-31 for random bytes — makes a value a candidate
// envelope, which then must authenticate.)
//
// A transient failure to get a key (KMS outage, keystore error) is not a
// classification: the run stops with an error and can be resumed.
//
// crypto/doc.go suggests treating a value that passes the header check but
// does not authenticate as plaintext to encrypt when a column explicitly
// allows legacy binary values. This package does not: such a value is
// reported and left alone, the fail-closed choice; an operator who knows a
// bytea column holds such legacy values can re-store them through the proxy.
//
// # How a run works
//
// The table must have a primary key (found in pg_index; a table without
// one is refused), and no primary-key column may be a policy column. The
// run walks the table in primary-key order with keyset pagination, in
// batches (Options.BatchSize, default 1000):
//
//   - read: SELECT pk::text…, columns… WHERE (pk…) > (last…) ORDER BY pk…
//     LIMIT n, on its own connection, one batch ahead of the writer;
//
//   - classify and encrypt: in parallel (Options.Workers, default
//     GOMAXPROCS), since AEAD work is the CPU cost of a run;
//
//   - write: one transaction per batch holding one statement,
//
//     UPDATE t SET c = COALESCE(v.new_c, t.c), …
//     FROM unnest($pk::text[]…, $new_c::bytea[], $old_c::bytea[], …) v
//     WHERE t.pk = v.pk::<type> AND (v.new_c IS NULL OR t.c IS NOT DISTINCT FROM v.old_c) AND …
//     AND (t.pk…) >= (first…) AND (t.pk…) <= (last…)
//     RETURNING t.pk::text…
//
//     and the checkpoint update. The key range of the batch is there for
//     the planner: without it, it hashes the whole table for every batch
//     (a sequential scan each time, quadratic over a run; 81 ms per batch
//     on 100,000 rows, against 1.4 ms with the range's index scan). The
//     WHERE clause is a compare-and-swap:
//     a row that a client changed (through the proxy) since it was read
//     is not touched, because PostgreSQL re-checks the condition against
//     the newest row version after waiting for the concurrent writer.
//     Only the columns the batch changes are compared, and the others are
//     written back as they are (COALESCE), so a concurrent write to
//     another column is never overwritten either. Rows that lost the race
//     are read again and retried (Options.MaxAttempts times in all, default
//     3); after that they are counted as skipped, and the next run handles
//     them. A lock wait longer than Options.LockTimeout (default 5s), a
//     deadlock or a serialization failure rolls the batch back and retries
//     it.
//
// The engine's sessions use synchronous_commit = off: a crash can lose
// the last few batches, which are then done again (the checkpoint is in
// the same transaction, so it is lost with them), and nothing can be lost
// that was written by anybody else. They also pin DateStyle, TimeZone and
// extra_float_digits so that primary-key text round-trips exactly.
//
// # Checkpoint
//
// <schema>.encrypt_checkpoints (the keystore schema; created with IF NOT
// EXISTS under an advisory lock the first time, so later runs need no
// CREATE privilege) has one row per table and set of policy columns:
// the last primary key done (text[]), rows done in the pass, when the pass
// started, and when the last complete pass ended. It is updated in each
// batch's transaction, so it never claims work that was rolled back; when
// rows of a batch lost their swap, it stays before the batch until their
// retries are done, so a run killed meanwhile does the batch again. A run
// that finds a pass in progress resumes after its last primary key; a run
// that completes a pass clears last_pk, so the next run starts over (and,
// when nothing changed, changes nothing). A session-level advisory lock
// per table keeps two runs from working on one table at once; it goes
// away with the connection of a killed run.
//
// Rows inserted behind the cursor during a pass were written through the
// proxy and are therefore already encrypted under the active DEK, or under
// the DEK a replica still held as active within its cache TTL; a later run
// moves those forward.
//
// # Rate, progress, report
//
// Options.Rate bounds the rows read per second (averaged over the run; a
// batch is the burst, so batches shrink to the rate when it is lower).
// Options.Progress is called after every batch with the rows done (of the
// whole pass, counting what a resumed run found done) and an estimate of
// the total (pg_class.reltuples, or count(*) when the table was never
// analyzed). The Report counts each value class per column as the scan
// found it, the values written, rows skipped, and rows per second.
//
// Logs carry table and column names, key ids, counts and durations. The
// only row data they carry are the primary keys of the first rows whose
// values are undecryptable or invalid, so an operator can find them;
// primary keys are not policy columns. Values are never logged.
//
// # Destroying a DEK: KeyUsage
//
// KeyUsage counts, for every policy column of a key, the stored values
// whose envelope header names a given DEK id, with one sequential scan per
// table (count(*) FILTER (WHERE substr(col, 1, 8) = ANY(headers)) for all
// its columns at once). substr reads only the first bytes of a TOASTed
// value (ciphertext does not compress, so it is stored uncompressed and
// PostgreSQL fetches the first chunk only), but every row is visited.
// Cost: a full sequential read of each such table, i.e. its main fork's
// size in I/O, and about 30 ms per 100,000 rows of three columns when the
// table is in memory (measured on the 2-core machine); run it off peak on
// large tables. It sees the policy's columns only: a column that was
// removed from the policy, and backups, are not scanned.
//
// # Speed
//
// Measured on the 2-core development machine with the binary
// (e2e TestEncryptExistingThroughput: 100,000 rows, three policy columns —
// randomized text, deterministic text, int4 — plaintext to ciphertext):
// 42,000–105,000 rows/s (126,000–315,000 values/s) across runs, and
// 26,000 at worst while other test suites loaded the machine (load average
// up to 14 on 2 cores); the target is 20,000 rows/s. BenchmarkRun
// (the engine alone, same table shape): 74,000–76,000 rows/s. PostgreSQL's
// UPDATE is most of the cost (new row versions and index entries); the
// cryptography takes about a seventh of the run's wall time on one core.
// With a client writing through the proxy at the same time on the same two
// cores (TestEncryptExistingOnline): 17,000–65,000 rows/s. The test
// clusters run with fsync off; the engine's commits do not wait for a
// flush anyway (synchronous_commit off), but on real disks the WAL and
// checkpoint writes of a big run cost more.
//
// Side effects to know: the engine's UPDATEs fire the table's UPDATE
// triggers, appear in logical replication and in the WAL like any update,
// and leave one dead row version per row (autovacuum reclaims them; a big
// table may want a manual VACUUM afterwards).
package migrate
