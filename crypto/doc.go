// Package crypto is the field envelope of pgcrypt-proxy: the bytes stored
// in a policy column's bytea instead of the plaintext. It encrypts and
// decrypts one value under one data encryption key (DEK), in one of two
// modes, and binds the value to its column. It imports nothing of the
// project; keys/ finds the DEK, policy/ names the mode and the column.
//
// # Use
//
//	k, err := crypto.NewKey(dekID, dek)                 // once per DEK version; cache k
//	env, err := k.Encrypt(buf[:0], crypto.ModeRandomized, plaintext, []byte("public.users.ssn"), nil)
//	h, err := crypto.ParseHeader(env)                   // h.KeyID → find the DEK
//	pt, err := k.Decrypt(out[:0], env, []byte("public.users.ssn"))
//
// A *Key is immutable and safe for concurrent use; it derives its subkeys
// once in NewKey. It never prints its material (String, GoString, Format
// and slog's LogValue show only the id) and compares in constant time with
// Equal. The zero Key is not usable; always use NewKey.
//
// # Byte layout (format version 1)
//
// All integers are big-endian. Offsets are in bytes.
//
//	offset  size  field
//	0       2     magic            0xC1 0xF5
//	2       1     format version   0x01
//	3       1     mode             0x01 randomized, 0x02 deterministic (others reserved)
//	4       4     DEK id           uint32 from the keystore
//	8       …     mode-specific body:
//
//	randomized (XAES-256-GCM), overhead 48 bytes:
//	8       24    nonce            192 bits from the random reader
//	32      n     ciphertext       n = len(plaintext)
//	32+n    16    tag              GCM tag
//
//	deterministic (AES-SIV, RFC 5297), overhead 24 bytes:
//	8       16    SIV              synthetic IV: the nonce field and also the tag
//	24      n     ciphertext       AES-CTR under the SIV
//	(no separate tag field: the SIV is the tag)
//
// So an envelope is len(plaintext)+Overhead(mode) bytes. Bytes 0–7 are the
// header; ParseHeader decodes it. An unknown version or mode byte is
// rejected (ErrUnsupportedVersion, ErrUnsupportedMode): a new construction
// gets a new version or mode byte, never a reinterpretation of old bytes.
// testdata/vectors.json freezes all of this with known-answer vectors
// (TestVectors) and TestIndependentReconstruction rebuilds two of them from
// this description with the primitives alone.
//
// # Subkeys
//
// The 256-bit DEK is never used directly. NewKey derives, with HKDF-SHA256
// (RFC 5869; IKM = DEK, empty salt), one subkey per purpose:
//
//	info label                                   length  used by
//	"pgcrypt-proxy/v1 randomized XAES-256-GCM"   32      randomized mode
//	"pgcrypt-proxy/v1 deterministic AES-SIV"     64      deterministic mode (AES-SIV: bytes 0–31 K1 for CMAC, 32–63 K2 for CTR)
//	"pgcrypt-proxy/v1 blind-index HMAC-SHA256"   32      Key.BlindIndex
//
// The labels are part of the format. The DEK id is not an input to the
// derivation; it is bound through the associated data instead.
//
// # Associated data
//
// Both modes authenticate
//
//	AD = header (bytes 0–7 of the envelope) || aad
//
// where aad is the caller's column identity, for example the bytes of
// "public.users.ssn". The header has a fixed length, so the concatenation
// is unambiguous. Consequences: flipping any header bit (magic, version,
// mode, DEK id) makes authentication fail, so an envelope cannot be
// relabelled to another key id or mode; and an envelope copied into another
// column fails with ErrAuth. The aad must therefore be stable for the life
// of the data: renaming a column or table makes its values undecryptable
// unless the caller keeps passing the original identity. Callers should
// derive aad from the policy's canonical column name, not from whatever the
// query spelled.
//
// # Randomized mode and the nonce budget
//
// Randomized mode is XAES-256-GCM (https://c2sp.org/XAES-256-GCM), checked
// against the C2SP vectors in TestXAESVectors. With K the randomized subkey
// and N the 24-byte random nonce:
//
//	L   = AES-256_K(0^128);  K1 = dbl(L)            (CMAC subkey; cached in the Key)
//	M_i = 0x00 || i || 0x58 'X' || 0x00 || N[0:12]   (i = 0x01, 0x02)
//	K_N = AES-256_K(M_1 ⊕ K1) || AES-256_K(M_2 ⊕ K1)  (per-message key)
//	ciphertext || tag = AES-256-GCM(K_N, nonce N[12:24], plaintext, AD)
//
// Why: AES-256-GCM with random 96-bit nonces must stay below about 2^32
// messages per key (collision probability q²/2^97: 2^-33 at q = 2^32, 2^-17
// at 2^40, ~1/2 at 2^48), and a single collision reveals the XOR of two
// plaintexts and lets an attacker forge. The proxy encrypts every value of
// every write, so a busy table can pass 2^32 values per DEK. With 192-bit
// random nonces:
//
//   - full nonce collision among q messages: ≤ q²/2^193, i.e. 2^-65 at
//     q = 2^64 and 2^-33 at q = 2^80;
//   - the per-message key depends on N[0:12] only; two messages share a GCM
//     key with probability ~q²/2^97, and even then their GCM nonces N[12:24]
//     are independent 96-bit values, so each derived key sees a handful of
//     messages at most, nowhere near GCM's per-key limits;
//   - the root key K only encrypts KDF blocks, 2 per message, on distinct
//     inputs. The generic PRP/PRF switching term (2q)²/2^129 is the most
//     conservative bound on treating those blocks as random keys: 2^-35 at
//     q = 2^42 (100 000 writes/s for a year under one DEK is ≈ 2^41.5),
//     2^-31 at q = 2^48. It is a loose, generic term (it only counts that
//     AES outputs never repeat, which nobody can observe through secret
//     derived keys); the nonce terms above are the real ones.
//
// Nonce generation and the derived-key cache. With the default randomness
// (Encrypt's rnd nil) a Key draws a random 12-byte prefix N[0:12] and reuses
// it for up to 2^28 messages, each with fresh random N[12:24], then draws a
// new prefix. So a derived key K_N is computed once per prefix, not per
// message, and Decrypt keeps the AEADs of up to 256 recent prefixes, so
// reading what one process wrote costs one derivation (C2SP XAES-256-GCM
// allows caching K_N when the prefix repeats). The format is unchanged and
// any 24-byte nonce decrypts. The bound per derived key becomes plain GCM's
// with random 96-bit nonces over at most 2^28 messages: q²/2^97 = 2^-41;
// across prefixes the terms above still hold (prefixes are random 96-bit
// values, so two processes share one with probability ~p²/2^97 for p
// prefixes). The random N[12:24] come from crypto/rand in batches of 256
// (one 3 KiB read per 256 messages, each byte used once and wiped when
// used): they are public once written, so drawing them ahead changes
// nothing above. Encrypt with an explicit rnd draws all 24 bytes from it,
// as the known-answer vectors do.
//
// So one DEK is safe for at least 2^48 values even by the conservative
// bound, 65 536 times the plain-GCM budget, and DEK rotation never has to be
// forced by usage counts. The tag is GCM's full 128 bits (forgery odds per
// attempt ≈ ℓ/2^128 for an ℓ-block message).
//
// Cost: the KDF is two AES block calls (≈50 ns, vs ≈570 ns and 10
// allocations for an HKDF-SHA256 Expand per message, see
// BenchmarkPerMessageKey); the dominant per-message cost is the std-lib
// AES-256 key schedule and GCM setup for K_N (≈400 ns, 2 allocations that
// the std-lib API offers no way to avoid). Nothing is cached per message;
// Encrypt and Decrypt otherwise allocate nothing when dst has capacity
// (pooled scratch for AD and the KDF). A future optimization that keeps
// the format: reuse one random N[0:12] for a bounded batch of messages and
// cache K_N (K_N is a pure function of N[0:12], so readers need no change;
// decryptors could cache by prefix too), trading some of the margin above
// for speed. Not done: measure first.
//
// # Deterministic mode: what it leaks
//
// Deterministic mode is AES-SIV (RFC 5297, 512-bit key: K1 for S2V's
// AES-256-CMAC, K2 for AES-256-CTR) with the single associated-data string
// AD = header || aad. The implementation is ours, RFC 5297 over crypto/aes
// (siv.go: no allocation per value below 512 bytes, the AES schedules,
// CMAC subkeys and CMAC(0^128) precomputed per Key, and the S2V state after
// the AD cached for recent aad values). It is checked against the RFC's
// examples, Wycheproof's AES-SIV-CMAC vectors and other published ones, and
// against tink-go's daead/subtle.AESSIV as a test oracle (byte-identical
// output in differential and fuzz tests); the frozen vectors predate it,
// since earlier versions called tink directly.
//
// The SIV is a PRF of (AD, plaintext), so the envelope is a function of
// (DEK, column, plaintext): equal plaintexts in the same column under the
// same DEK give byte-identical envelopes, which is what lets
// `WHERE email = $1` run on ciphertext. Different plaintexts, or
// the same plaintext in another column (another aad) or under another DEK,
// give unrelated envelopes. What leaks is therefore exactly the equality
// pattern within one column and DEK (and, with it, frequencies: a
// low-entropy column such as a boolean or a country code is effectively
// readable by frequency analysis, so policy authors should use deterministic
// mode only where equality search is needed). There is no nonce to repeat,
// so no nonce budget; SIV collisions between distinct plaintexts stay below
// q²/2^129. After a DEK rotation, equal values under old and new DEKs no
// longer compare equal: equality search must try every live DEK version of
// the column, or the data must be re-encrypted.
//
// Both modes reveal the plaintext length exactly (no padding).
//
// Key.BlindIndex (HMAC-SHA256 over uint32be(len(aad)) || aad || value)
// gives a randomized column a separate equality token with the same leakage
// as deterministic mode.
//
// # Telling ciphertext from legacy plaintext ("migrating reads")
//
// While a column is being migrated, it holds both envelopes and legacy
// plaintext. The magic makes the distinction cheap and authentication makes
// it sound:
//
//  1. LooksLikeEnvelope / ParseHeader: magic, version, mode and minimum
//     length. 0xC1 and 0xF5 never occur in valid UTF-8, so no legacy text
//     value (PostgreSQL text in a UTF8 database is always valid UTF-8) can
//     pass this check; neither can any value shorter than 24 bytes (all
//     fixed-width binary types: int4, int8, uuid, date, timestamptz…).
//     A uniformly random byte string passes it with probability about 2^-31.
//  2. Only a successful Decrypt (authentication under the DEK named by the
//     header and the column's aad) makes a value ciphertext.
//
// Reads therefore rely on this rule: a value is an envelope if and only if
// it passes step 1 and decrypts. While the column is marked as migrating,
// a value that fails step 1 is legacy plaintext. A value that passes step 1
// but fails step 2 (unknown key id, ErrAuth) is either tampering or a
// legacy bytea value that happens to start with the magic; the proxy must
// never guess. It should fail closed (report "cannot decrypt column", log
// the key id) unless the migration of that column explicitly allows legacy
// binary values, and encrypt-existing must treat such a row as plaintext to
// encrypt, not as done. Once a column is fully migrated, anything that does
// not decrypt is an error.
//
// # Errors
//
// Decrypt returns a *DecryptError carrying the key id and one sentinel
// (ErrNotEnvelope, ErrUnsupportedVersion, ErrUnsupportedMode, ErrWrongKey,
// ErrAuth), tested with errors.Is. Every authentication failure is the same
// ErrAuth, whatever the cause. Errors never contain plaintext, ciphertext or
// key bytes, so they may be logged; clients should see only "cannot decrypt
// column …".
package crypto
