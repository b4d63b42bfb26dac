// Package keys manages data encryption keys (DEKs): the keystore table of
// wrapped DEKs in the upstream database, their creation, and a bounded
// in-memory cache of unwrapped DEKs in front of the KMS. It sits between the
// proxy (which asks for a key) and kms (which holds the key-encryption keys,
// KEKs); crypto does the field encryption with the *crypto.Key it returns.
//
//	store, err := keys.Open(ctx, pool, keks, keys.Options{Schema: cfg.Keystore.Schema, Logger: log})
//	k, err := store.Current(ctx, "pii", "gcp")     // encrypt new values under k
//	k, err := store.ByID(ctx, header.KeyID)        // decrypt: the envelope names its DEK
//	ks, err := store.Live(ctx, "pii")              // deterministic lookups try each
//
// # The keystore table
//
// <schema>.data_keys (schema from keystore.schema, default pgcrypt):
//
//	column       type         meaning
//	id           integer      identity (GENERATED ALWAYS): the uint32 DEK id written into
//	                          every envelope. Assigned by a sequence, never reused.
//	key_name     text         the policy's key name (keys: in the policy)
//	dek_version  integer      1, 2, … per key_name; UNIQUE (key_name, dek_version)
//	wrapped      bytea        the DEK wrapped by the KEK; NULL once destroyed
//	kek_name     text         KEK.Name(): a Cloud KMS CryptoKey name, or local:<key_id>
//	kek_version  text         the full KEK version name that Wrap returned
//	state        text         active | retired | destroyed
//	created_at   timestamptz
//	updated_at   timestamptz  set by a trigger on every update
//
// States: 'active' is the DEK for new writes, at most one per key_name (a
// partial unique index, data_keys_one_active); 'retired' decrypts but does
// not encrypt; 'destroyed' is crypto-shredding: wrapped is set to NULL (a
// CHECK ties wrapped IS NULL to state = 'destroyed') and values encrypted
// under the DEK are gone for good. A BEFORE UPDATE OR DELETE trigger
// (data_keys_guard) refuses to delete a row (the tombstone is what lets
// ByID say "destroyed" rather than "not found", and keeps ids unique), to
// change id, key_name or dek_version, or to bring a destroyed DEK back.
//
// <schema>.schema_migrations (version integer, applied_at) records the
// migrations applied; the current schema version is SchemaVersion.
//
// # Creating and migrating the keystore
//
// Open creates the schema and tables itself. When the keystore is already
// at SchemaVersion, Open does two reads and no DDL. Otherwise it migrates in
// one transaction under pg_advisory_xact_lock (a key derived from the
// schema name), re-reading the version under the lock, so replicas starting
// at once queue up and the later ones find the work done. A keystore at a
// newer version than this binary knows is refused (ErrSchemaVersion) rather
// than misread.
//
// Privileges: the first start needs a role with CREATE on the database (to
// create the schema), or a schema created by a DBA on which the role has
// CREATE. Afterwards USAGE on the schema and SELECT, INSERT, UPDATE on its
// tables suffice (the identity column needs no sequence grant). A missing
// privilege is reported with this advice.
//
// # The wrapped DEK's identity
//
// Every Wrap and Unwrap of a DEK passes as the KMS's associated data
//
//	"pgcrypt-proxy/dek/v1" NUL <schema> NUL <key_name> NUL <dek_version in decimal>
//
// (Identity). So a wrapped DEK copied to another row, another key name or
// version, or another keystore schema fails to unwrap, and is reported as
// ErrUnwrap naming the row's key name and version (never bytes); nothing is
// written. The id is not part of it, because the INSERT assigns it; since
// (key_name, dek_version) is unique and never changes, it is as strong.
// Renaming the keystore schema therefore needs every DEK rewrapped.
//
// # Creating a DEK
//
// Current creates the first DEK of a key name when none is active (or the
// next version, if older versions exist but none is active, e.g. after a
// destroy). In one transaction: take pg_advisory_xact_lock on (schema,
// key_name); look again for an active DEK (another replica may have just
// made it: use it); draw 32 bytes from Options.Rand; Wrap under the KEK
// of the policy's kms backend; Unwrap the result and compare in constant
// time (a wrap that cannot be undone would lose every value written under
// the DEK); INSERT … ON CONFLICT DO NOTHING (belt and braces against a
// writer that does not take the lock: then its row wins and is used);
// commit. So exactly one DEK v1 per key name ever exists, and a KMS failure
// at any step leaves the keystore untouched. One creation costs one Wrap and
// one Unwrap, once per key name ever.
//
// # Cache
//
// Unwrapped DEKs are kept as *crypto.Key (which never prints its material)
// in a cache of at most CacheSize DEKs (default 1024), each for CacheTTL
// (default 5m) from when it was unwrapped; then the next use unwraps it
// again through the KMS. Expiry is hard: the TTL is also the bound on how
// long a DEK stays usable in a process after its KEK version is disabled or
// the DEK destroyed. Beyond CacheSize the least recently used DEK (use time
// kept to the second) is evicted.
//
// Beside the DEKs, the cache remembers which DEK is active per key name and
// the live list per key name, each for at most CacheTTL and never longer
// than the DEKs they point to. So a new active version made by another
// process is seen within CacheTTL, and at once in the process that made it
// (or after Invalidate). An empty live list is not cached.
//
// Failures that will not pass by themselves are cached briefly (10s, or
// CacheTTL if shorter) per DEK id: unknown id, wrapped DEK not authentic, KEK
// not configured, KEK version disabled; a destroyed DEK for CacheTTL. So
// envelopes naming a bad id cost one keystore read or KMS call per
// interval, not one per value. They live in a cache of their own (also
// CacheSize entries), so made-up ids cannot evict real DEKs. Transient KMS failures (timeouts,
// unavailability, checksum mismatches; see kms.IsRetryable) are not cached:
// the next call tries again.
//
// Misses are filled once for all concurrent callers (singleflight per DEK
// id, per key name for Current and Live), on a context detached from any
// one caller (bounded at one minute), so a caller that gives up does not
// fail the others; each caller stops waiting when its own context ends.
// Measured in TestKMSCalls: 10,000 values encrypted and decrypted by 32
// goroutines under two key names cost exactly 2 Wrap and 2 Unwrap (the
// creations); a second, cold Store decrypting them all costs one Unwrap per
// DEK; after the TTL, exactly one more Unwrap per DEK.
//
// Hot path: a hit in Current, ByID or Live loads an immutable map through an
// atomic pointer, compares an expiry with the clock and returns; it takes no
// lock and allocates nothing (TestHotPathAllocs). Writers (misses) copy the
// map under a mutex, dropping dead entries, and publish the copy.
//
// # For DEK and KEK rotation
//
//   - An existing DEK is unwrapped by the configured backend whose KEK.Name()
//     equals its kek_name, whatever kms backend the policy names now; the
//     policy's backend only wraps new DEKs. Moving a key name to another KMS
//     is a rewrap.
//   - Rewrap must pass Identity(schema, key_name, dek_version) to both Unwrap
//     and Wrap, and compare-and-swap (… WHERE id = $1 AND wrapped = $old).
//     The cached *crypto.Key stays valid across a rewrap (same DEK).
//   - A new DEK version must become visible to every replica's Live before
//     any replica writes under it, or deterministic lookups on other
//     replicas miss the new rows for up to CacheTTL. So rotate a DEK in two
//     steps: insert the new version as 'retired' (live, decrypt-only), wait
//     at least CacheTTL, then in one transaction retire the active one and
//     activate the new one. Take the same per-key advisory lock as creation
//     (lockKey("dek", schema, key_name)) and call Invalidate.
//   - Destroy: UPDATE … SET state = 'destroyed', wrapped = NULL. Replicas
//     holding the DEK in cache keep it up to CacheTTL.
//   - KEKVersionRefs counts the non-destroyed DEKs wrapped under a KEK
//     version; a KEK version with references must not be destroyed.
//
// # Errors
//
// Every error is an *Error: Op, the key name, DEK version and id when known,
// a Kind (ErrNotFound, ErrDestroyed, ErrUnwrap, ErrNoKEK, ErrUnknownKMS,
// ErrKMS, ErrKeystore, …) and the cause (a kms.Error, a pgx error).
// IsUserError separates what configuration or an operator action fixes
// (unknown kms backend, KEK not configured, destroyed DEK, disabled KEK
// version, permission) from internal faults (tampered keystore, KMS outage,
// database error); IsRetryable marks transient KMS failures. Errors never
// contain key material, wrapped or unwrapped; they may be logged. Clients of
// the proxy should see only "cannot decrypt column …".
package keys
