package crypto

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
)

// DEKSize is the size of a data encryption key: 256 bits.
const DEKSize = 32

// HKDF-SHA256 info labels of the per-purpose subkeys (salt empty, IKM the
// DEK). They are part of the format: changing one is a new version.
const (
	labelRandomized    = "pgcrypt-proxy/v1 randomized XAES-256-GCM"
	labelDeterministic = "pgcrypt-proxy/v1 deterministic AES-SIV"
	labelBlindIndex    = "pgcrypt-proxy/v1 blind-index HMAC-SHA256"
)

// Key is one DEK version: its keystore id and the subkeys derived from it.
// It is immutable after NewKey and safe for concurrent use. It never prints
// its material: String, GoString, Format and LogValue redact.
type Key struct {
	id uint32
	*material
}

// material is the secret part of a Key, behind a pointer and redacting
// itself too, so that printing a Key value or a struct that embeds one by
// any means that honors fmt.Formatter shows no key bytes.
type material struct {
	// Derived subkeys, kept for Equal and BlindIndex; the primitives below
	// hold their own expanded forms.
	randKey [32]byte
	sivKey  [sivKeySize]byte
	biKey   [32]byte

	xaes *xaes
	siv  *siv
}

func (material) String() string             { return "REDACTED" }
func (material) GoString() string           { return "REDACTED" }
func (material) Format(f fmt.State, _ rune) { io.WriteString(f, "REDACTED") }

// NewKey derives the subkeys of dek (DEKSize bytes) once and returns the Key
// with the given keystore id. dek is copied; the caller may wipe it.
func NewKey(id uint32, dek []byte) (*Key, error) {
	if len(dek) != DEKSize {
		return nil, fmt.Errorf("%w: got %d bytes, want %d", ErrInvalidKey, len(dek), DEKSize)
	}
	k := &Key{id: id, material: new(material)}
	for _, s := range []struct {
		label string
		out   []byte
	}{
		{labelRandomized, k.randKey[:]},
		{labelDeterministic, k.sivKey[:]},
		{labelBlindIndex, k.biKey[:]},
	} {
		b, err := hkdf.Key(sha256.New, dek, nil, s.label, len(s.out))
		if err != nil {
			return nil, fmt.Errorf("crypto: derive subkey: %w", err)
		}
		copy(s.out, b)
		clear(b)
	}
	var err error
	if k.xaes, err = newXAES(k.randKey[:]); err != nil {
		return nil, fmt.Errorf("crypto: randomized subkey: %w", err)
	}
	// newSIV copies what it needs into its AES key schedules.
	if k.siv, err = newSIV(k.sivKey[:]); err != nil {
		return nil, fmt.Errorf("crypto: deterministic subkey: %w", err)
	}
	return k, nil
}

// ID returns the keystore id of the DEK; it is written into every envelope.
func (k *Key) ID() uint32 { return k.id }

// Equal reports in constant time whether k and o are the same DEK with the
// same id. Two nil keys are equal.
func (k *Key) Equal(o *Key) bool {
	if k == nil || o == nil {
		return k == o
	}
	eq := subtle.ConstantTimeEq(int32(k.id^o.id), 0)
	eq &= subtle.ConstantTimeCompare(k.randKey[:], o.randKey[:])
	eq &= subtle.ConstantTimeCompare(k.sivKey[:], o.sivKey[:])
	eq &= subtle.ConstantTimeCompare(k.biKey[:], o.biKey[:])
	return eq == 1
}

// The printing methods have value receivers so that both Key and *Key
// redact; fmt prints "<nil>" for a nil *Key.

// String returns a redaction that shows only the key id.
func (k Key) String() string {
	return "crypto.Key{id: " + strconv.FormatUint(uint64(k.id), 10) + ", material: REDACTED}"
}

// GoString returns the same redaction for %#v.
func (k Key) GoString() string { return k.String() }

// Format makes every fmt verb (%v, %+v, %x, %s, %q, %d…) print the redaction.
func (k Key) Format(f fmt.State, _ rune) { io.WriteString(f, k.String()) }

// LogValue implements slog.LogValuer: only the key id is logged.
func (k Key) LogValue() slog.Value {
	return slog.GroupValue(slog.Uint64("key_id", uint64(k.id)))
}

var _ slog.LogValuer = (*Key)(nil)

// Encrypt appends the envelope of plaintext to dst and returns the extended
// slice. aad is the column identity (for example "public.users.ssn"); the
// same aad must be given to Decrypt. rnd supplies the 24-byte nonce of
// ModeRandomized (nil means crypto/rand.Reader) and is not read in
// ModeDeterministic. dst and plaintext must not overlap. On error Encrypt
// returns nil.
//
// The envelope is len(plaintext)+Overhead(mode) bytes. With enough spare
// capacity in dst, ModeRandomized allocates only the per-message AES-GCM
// state (see doc.go), and ModeDeterministic nothing for plaintexts under
// 512 bytes (one CTR stream from there on; the first use of an aad also
// fills a cache entry, see siv.go).
func (k *Key) Encrypt(dst []byte, mode Mode, plaintext, aad []byte, rnd io.Reader) ([]byte, error) {
	if !mode.Valid() {
		return nil, fmt.Errorf("%w %d", ErrInvalidMode, uint8(mode))
	}
	if len(plaintext) > MaxPlaintextLen {
		return nil, ErrTooLarge
	}
	ret, out := grow(dst, len(plaintext)+Overhead(mode))
	putHeader(out, mode, k.id)
	s := getScratch(out[:HeaderSize], aad)
	defer putScratch(s)

	switch mode {
	case ModeRandomized:
		nonce := out[HeaderSize : HeaderSize+NonceSize]
		if rnd == nil {
			// The default: a per-key random prefix reused for a bounded
			// number of messages, so the derived key is cached.
			if _, err := k.xaes.sealCached(s, out[HeaderSize+NonceSize:HeaderSize+NonceSize], nonce, plaintext, s.ad); err != nil {
				return nil, fmt.Errorf("crypto: read nonce: %w", err)
			}
			break
		}
		if _, err := io.ReadFull(rnd, nonce); err != nil {
			return nil, fmt.Errorf("crypto: read nonce: %w", err)
		}
		k.xaes.seal(s, out[HeaderSize+NonceSize:HeaderSize+NonceSize], nonce, plaintext, s.ad)
	case ModeDeterministic:
		k.siv.seal(out[HeaderSize:HeaderSize], plaintext, s.ad) // SIV || CTR ciphertext
	}
	return ret, nil
}

// Decrypt authenticates envelope under k and aad and appends the plaintext
// to dst. Every failure is a *DecryptError wrapping ErrNotEnvelope,
// ErrUnsupportedVersion, ErrUnsupportedMode, ErrWrongKey or ErrAuth; on
// failure Decrypt returns nil and leaves no unauthenticated plaintext in
// dst's spare capacity. dst and envelope must not overlap.
func (k *Key) Decrypt(dst []byte, envelope, aad []byte) ([]byte, error) {
	h, err := ParseHeader(envelope)
	if err != nil {
		return nil, &DecryptError{KeyID: k.id, Err: err}
	}
	if h.KeyID != k.id {
		return nil, &DecryptError{KeyID: k.id, Err: ErrWrongKey}
	}
	s := getScratch(envelope[:HeaderSize], aad)
	defer putScratch(s)

	switch h.Mode {
	case ModeRandomized:
		nonce := envelope[HeaderSize : HeaderSize+NonceSize]
		out, err := k.xaes.open(s, dst, nonce, envelope[HeaderSize+NonceSize:], s.ad)
		if err != nil {
			return nil, &DecryptError{KeyID: k.id, Err: ErrAuth}
		}
		return out, nil
	case ModeDeterministic:
		// s.m is SIV's work block here (pooled, so nothing allocates);
		// openWith wipes it.
		out, err := k.siv.openWith(s.m[:], dst, envelope[HeaderSize:], s.ad)
		if err != nil {
			return nil, &DecryptError{KeyID: k.id, Err: ErrAuth}
		}
		return out, nil
	}
	panic("BUG: crypto: ParseHeader accepted mode " + h.Mode.String())
}

// BlindIndex appends a 32-byte blind index of value to dst:
// HMAC-SHA256(blind-index subkey, uint32be(len(aad)) || aad || value). It
// lets a randomized column carry a searchable equality token in a separate
// column; like deterministic mode, it reveals which values are equal (and
// nothing else) to whoever sees the tokens.
func (k *Key) BlindIndex(dst, value, aad []byte) []byte {
	m := hmac.New(sha256.New, k.biKey[:])
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(aad)))
	m.Write(n[:])
	m.Write(aad)
	m.Write(value)
	return m.Sum(dst)
}

// grow extends dst by n bytes, returning the whole slice and the new tail.
func grow(dst []byte, n int) (whole, tail []byte) {
	whole = slices.Grow(dst, n)[:len(dst)+n]
	return whole, whole[len(dst):]
}

// scratch is per-operation working memory, pooled so that the steady state
// of Encrypt and Decrypt does not allocate it: ad holds header || aad, the
// associated data given to the AEADs; m and kx are XAES key-derivation
// buffers (m is also AES-SIV's work block in Decrypt), wiped after each use.
type scratch struct {
	ad []byte
	m  [16]byte
	kx [32]byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// maxPooledAD keeps an unusually long aad from pinning memory in the pool.
const maxPooledAD = 4096

func getScratch(header, aad []byte) *scratch {
	s := scratchPool.Get().(*scratch)
	s.ad = append(append(s.ad[:0], header...), aad...)
	return s
}

func putScratch(s *scratch) {
	if cap(s.ad) > maxPooledAD {
		return
	}
	s.ad = s.ad[:0]
	scratchPool.Put(s)
}
