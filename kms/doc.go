// Package kms holds key-encryption keys (KEKs) behind one small interface,
// [KEK], with two backends: [Local], the embedded default (a keyring file
// sealed under a master key), and [GCP], Cloud KMS through the official
// client. The package imports nothing of the project; keys/ builds the DEK
// lifecycle and the rotation worker on top of it. kms/kmstest is a fake Cloud
// KMS gRPC server that tests drive through the real client.
//
// # Versions and names
//
// A KEK has a stable Name, stored in the keystore's kek_name column:
//
//	gcp:   projects/P/locations/L/keyRings/R/cryptoKeys/K
//	local: local:<key_id>          (key_id is chosen at init, recorded in the file)
//
// A version's full name is always Name()+"/cryptoKeyVersions/"+id, ids being
// decimal numbers from 1 (Cloud KMS's own syntax, reused for local so the
// keystore treats both alike; see [VersionName], [SplitVersionName]). Wrap
// returns the full name of the version it used; callers store it beside the
// wrapped DEK, since Cloud KMS ciphertext is opaque and Decrypt does not name
// the version. Methods taking a version accept the full name or a bare id.
//
// The local key name does not contain the file path: moving the keyring file
// does not orphan wrapped DEKs, while re-initializing a lost keyring yields a
// new key_id, so the keystore notices instead of failing one row at a time.
//
// # Lifecycle
//
// ENABLED ⇄ DISABLED (Disable, Enable; both idempotent). Destroy on gcp
// schedules destruction (DESTROY_SCHEDULED until the key's
// destroy_scheduled_duration passes, then DESTROYED; Enable restores a
// scheduled version); on local it deletes the material at once and keeps a
// DESTROYED tombstone with its destroy time. Destroy is idempotent. The
// primary can be neither disabled nor destroyed ([ErrPrimaryVersion]);
// rotate first. Unwrap of a blob whose version is disabled fails with
// [ErrVersionDisabled], destroyed or scheduled with [ErrVersionDestroyed].
// Both backends implement [Rotator] (new version, made primary); Cloud KMS
// normally rotates by itself on rotation_period, which the rotation worker
// detects through Primary and through Unwrap's usedPrimary=false.
//
// Nothing here decides when a version may be destroyed: the caller must know
// that no wrapped DEK (including those in backups) still needs it. Cloud KMS
// does not record when a version was disabled, so destroy_grace must be
// measured by the caller (e.g. in the keystore).
//
// # Errors
//
// Every error is an [*Error] whose Kind is one of the Err* sentinels (test
// with errors.Is) and which also unwraps to its cause (a gRPC status, a
// context error). [IsRetryable] is true for [ErrTransient] and [ErrChecksum];
// [IsUserError] for configuration and refused operations. No error carries
// key material, plaintext or a master key; keyring errors name the file.
//
// # Local keyring file (format_version 1)
//
// One JSON object, written by this package only, in canonical form (any byte
// altered in the cleartext part is detected), mode 0600:
//
//	{
//	  "format": "pgcrypt-keyring",
//	  "format_version": 1,
//	  "key_id": "3f9c1a7e2b4d5c6f",
//	  "dev": false,
//	  "cipher": "AES-256-GCM",
//	  "master_key_check": "<base64, 16 bytes>",
//	  "nonce": "<base64, 12 bytes>",
//	  "sealed": "<base64 AES-256-GCM ciphertext+tag of the payload>"
//	}
//
// The payload is JSON: {"key_id", "primary", "update_time", "versions":
// [{"version", "state", "create_time", "destroy_time"?, "key"?}]} where key is
// the base64 of the version's 32-byte AES key, absent once destroyed. All
// metadata (states, primary) is inside the sealed payload, so it can neither
// be read nor changed without the master key. Sealing: HKDF-SHA256 over the
// master key with salt key_id gives the sealing key (info "pgcrypt-keyring v1
// seal") and the master key check (info "pgcrypt-keyring v1 master key check",
// 16 bytes); the GCM associated data is the header — the six fields from
// "format" to "master_key_check" — re-encoded as compact JSON in that order. A
// fresh random nonce is drawn at each write. The check value tells a wrong
// master key ([ErrWrongMasterKey]: "keyring FILE: master key does not decrypt
// it (wrong PGCRYPT_MASTER_KEY?)") from a damaged file ([ErrCorruptKeyring]);
// a damaged key_id reads as a wrong master key, which the message hedges.
//
// Dev mode (LocalOptions.Dev, no master key) writes "dev": true, "cipher":
// "none" and the payload in clear under "keyring" instead of nonce/sealed. It
// has no confidentiality and no integrity beyond validation; a non-dev open
// refuses it ([ErrDevKeyring]).
//
// Master key: env PGCRYPT_MASTER_KEY, the base64 (standard or URL alphabet,
// padding optional) of exactly 32 random bytes, or a master_key_file holding
// either exactly 32 raw bytes or that base64 text (whitespace and a trailing
// newline allowed); setting both is an error ([LoadMasterKey]). Generate one
// with `head -c32 /dev/urandom | base64`. LOSING THE MASTER KEY LOSES EVERY
// KEY IN THE KEYRING AND SO ALL ENCRYPTED DATA; keep it apart from the
// keyring file and from database backups.
//
// Writes are atomic: a temp file in the same directory (0600), fsync, rename
// over the keyring (link when creating, so Init never overwrites), fsync of
// the directory. Read-modify-write runs under an exclusive flock(2) on
// FILE.lock (readers take it shared), after re-reading the file, so
// concurrent processes (proxy replicas, the CLI) never lose an update. A
// [Local] caches the keyring and reloads it when the file's inode, size or
// mtime changes, so a rotation by another process is seen at the next call.
// On any read or validation error nothing is written.
//
// Local blob (Wrap output), 36 bytes of overhead:
//
//	"PGKW" | 0x01 | version (uint32 big-endian) | nonce (12) | AES-256-GCM ciphertext+tag
//
// with the 9-byte header followed by the caller's aad as GCM associated data,
// so the version number cannot be changed. Random 96-bit nonces are fine
// here: a KEK version wraps one DEK per DEK version, far below 2^32.
//
// # Cloud KMS
//
// Wrap is Encrypt on the CryptoKey (Cloud KMS picks the primary), sending
// plaintext_crc32c and (when aad is not empty)
// additional_authenticated_data_crc32c, and checking
// verified_plaintext_crc32c, verified_additional_authenticated_data_crc32c,
// ciphertext_crc32c and that the response name is a version of this key.
// Unwrap is Decrypt with ciphertext_crc32c and the aad checksum, checking
// plaintext_crc32c; usedPrimary is DecryptResponse.used_primary. A checksum
// mismatch discards the response and counts as a retryable failure, as
// Google recommends; after the last attempt it is returned as [ErrChecksum].
//
// Every attempt waits on a token bucket (default 100/s, burst 10, shared by
// all callers of the KEK), runs under its own timeout (default 10s), and
// UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL and ABORTED are
// retried with exponential backoff and full jitter (default 5 attempts,
// 100ms doubling to 5s), never past the caller's context. The client
// library's own retries are switched off so attempts are counted once.
// CreateCryptoKeyVersion (Rotate) is not retried, lest a retry create two
// versions. Primary is one GetCryptoKey; Versions is GetCryptoKey plus
// ListCryptoKeyVersions; Disable/Enable/Destroy read the version (and the key,
// to refuse the primary) before changing it.
package kms
