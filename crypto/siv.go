package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
)

// sivKeySize is the deterministic subkey: AES-SIV with two AES-256 halves.
const sivKeySize = 64

// siv is AES-SIV (RFC 5297) with exactly one associated-data string, the
// way Key uses it (AD = header || aad):
//
//	D = dbl(CMAC(0^128)) ⊕ CMAC(AD)
//	T = P xorend D             if len(P) >= 16
//	T = dbl(D) ⊕ pad(P)        otherwise
//	V = CMAC(T)
//	C = AES-CTR_K2(Q, P), Q = V with bits 63 and 31 cleared (RFC 5297 §2.6)
//
// and the output is V || C. CMAC (RFC 4493) is under K1, the first half of
// the key; CTR under K2, the second half, as in RFC 5297 §2.6 and tink-go's
// daead/subtle.AESSIV, with which the output is byte-identical (siv_test.go
// checks it against the RFC's vectors, Wycheproof's and tink as an oracle).
//
// Everything key-dependent that does not depend on the message is computed
// once: the two AES key schedules, the CMAC subkeys and dbl(CMAC(0^128));
// the S2V state after the AD is cached for recent AD strings (adCache).
// seal and open then allocate nothing when dst has room, for inputs below
// ctrBulkMin; from there on CTR goes through cipher.NewCTR (one allocation,
// but several times faster per byte). Filling a cache entry for a new AD
// allocates once. A siv is safe for concurrent use: its fields are
// read-only after newSIV, and the cache is lock-free with immutable
// entries.
//
// Memory passed to cipher.Block.Encrypt escapes (it is an interface call),
// so every block the code encrypts lives in memory the caller already
// owns: the V field of seal's output, the output's own blocks, or open's
// work block w. Stack arrays hold only values that are XORed, never
// encrypted in place.
type siv struct {
	mac cipher.Block // AES under K1: CMAC
	ctr cipher.Block // AES under K2: CTR

	k1, k2 [aes.BlockSize]byte // CMAC subkeys (RFC 4493 §2.3)
	d0     [aes.BlockSize]byte // dbl(CMAC(0^128)), the first S2V step

	adCache
}

// adCache keeps the S2V state after the associated data,
// D = dbl(CMAC(0^128)) ⊕ CMAC(AD), for recently used AD strings. Key's AD
// is header || column identity, so a handful of values recur for every
// value of a column; a hit saves the CMAC of the AD (two of the four or
// five AES calls of a short value, about 40% of its cost; see
// BenchmarkSIV). It is a 2-way set-associative table indexed by a keyed
// hash of the AD: a lookup is one hash, two atomic loads and a comparison,
// lock-free, and readers share the immutable entries. A miss computes D and
// publishes a new entry (one 128-byte allocation), replacing an empty or a
// random way of its set; 32 sets keep dozens of hot ADs without thrashing.
// ADs longer than adCacheMaxAD bypass the cache. Only public data decides
// hit or miss (the AD), so its timing reveals nothing secret.
type adCache struct {
	seed  maphash.Seed
	slots [2 * adCacheSets]atomic.Pointer[adEntry]
}

const (
	adCacheSets  = 32
	adCacheMaxAD = 111 // so that an adEntry is 128 bytes
)

type adEntry struct {
	d  [aes.BlockSize]byte
	n  uint8
	ad [adCacheMaxAD]byte
}

// lookup returns the set index of ad and its cached entry, or nil.
func (c *adCache) lookup(ad []byte) (set int, e *adEntry) {
	set = int(maphash.Bytes(c.seed, ad)%adCacheSets) * 2
	for i := set; i < set+2; i++ {
		if e := c.slots[i].Load(); e != nil && string(e.ad[:e.n]) == string(ad) {
			return set, e
		}
	}
	return set, nil
}

// store publishes d as the D of ad in set.
func (c *adCache) store(set int, ad []byte, d *[aes.BlockSize]byte) {
	e := &adEntry{d: *d, n: uint8(len(ad))}
	copy(e.ad[:], ad)
	i := set
	switch {
	case c.slots[i].Load() == nil:
	case c.slots[i+1].Load() == nil:
		i++
	default:
		i += int(rand.Uint32() & 1)
	}
	c.slots[i].Store(e)
}

// ctrBulkMin is the plaintext length from which CTR uses cipher.NewCTR
// instead of one Block.Encrypt call per 16 bytes. Measured on AES-NI
// (BenchmarkSIVCTR): the block calls cost ≈20 ns + 6 ns per block, NewCTR
// ≈100 ns + 0.15 ns per byte and one 512-byte allocation (a copy of the
// key schedule). They break even near 160 bytes; the switch is at 512 so
// that values up to a few hundred bytes stay allocation-free (garbage costs
// GC work a microbenchmark does not show), while the difference below 512
// bytes (< 150 ns) is small next to the serial CMAC over the same bytes
// (≈20 ns per block, ≥ 600 ns at 500 bytes).
const ctrBulkMin = 512

var errSIVOpen = errors.New("crypto: AES-SIV authentication failed")

// newSIV returns AES-SIV under key: 32, 48 or 64 bytes, two AES keys of
// half that size (K1 for CMAC, K2 for CTR). The ciphers copy what they
// need; key may be wiped afterwards.
func newSIV(key []byte) (*siv, error) {
	switch len(key) {
	case 32, 48, 64:
	default:
		return nil, errors.New("crypto: AES-SIV key must be 32, 48 or 64 bytes, got " + strconv.Itoa(len(key)))
	}
	h := len(key) / 2
	mac, err := aes.NewCipher(key[:h])
	if err != nil {
		return nil, err
	}
	ctr, err := aes.NewCipher(key[h:])
	if err != nil {
		return nil, err
	}
	s := &siv{mac: mac, ctr: ctr}
	s.seed = maphash.MakeSeed()
	// L = AES_K1(0^128); K1' = dbl(L); K2' = dbl(K1'). The buffer escapes
	// (see the type comment): it is wiped after use.
	l := make([]byte, aes.BlockSize)
	mac.Encrypt(l, l)
	copy(s.k1[:], l)
	clear(l)
	dbl(&s.k1)
	s.k2 = s.k1
	dbl(&s.k2)
	// dbl(CMAC(0^128)): the zero block is one complete block.
	xor16(l, zeroBlock[:], s.k1[:])
	mac.Encrypt(l, l)
	copy(s.d0[:], l)
	clear(l)
	dbl(&s.d0)
	return s, nil
}

var zeroBlock [aes.BlockSize]byte

// dbl multiplies b by x in GF(2^128) (RFC 5297 §2.3, RFC 4493 §2.3), in
// constant time.
func dbl(b *[aes.BlockSize]byte) {
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	mask := -(hi >> 63) // all ones iff the top bit is set
	hi = hi<<1 | lo>>63
	lo = lo<<1 ^ (mask & 0x87)
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
}

// xor16 sets dst[:16] = a[:16] ⊕ b[:16]. The slices may alias exactly.
func xor16(dst, a, b []byte) {
	_, _, _ = dst[15], a[15], b[15]
	x0 := binary.LittleEndian.Uint64(a[:8]) ^ binary.LittleEndian.Uint64(b[:8])
	x1 := binary.LittleEndian.Uint64(a[8:16]) ^ binary.LittleEndian.Uint64(b[8:16])
	binary.LittleEndian.PutUint64(dst[:8], x0)
	binary.LittleEndian.PutUint64(dst[8:16], x1)
}

// cmacBlocks runs the CBC-MAC chain over whole blocks: x = E(x ⊕ m_i) for
// each 16-byte block of m (len(m) a multiple of 16). x is the chaining
// value and must be caller-owned memory (see the type comment).
func (s *siv) cmacBlocks(x, m []byte) {
	for len(m) >= aes.BlockSize {
		xor16(x, x, m)
		s.mac.Encrypt(x, x)
		m = m[aes.BlockSize:]
	}
}

// cmac sets x[:16] to CMAC_K1(m) (RFC 4493).
func (s *siv) cmac(x, m []byte) {
	x = x[:aes.BlockSize]
	clear(x)
	// All blocks but the last are chained as they are; the last one is
	// complete (⊕ K1') or padded with 10* (⊕ K2').
	n := 0
	if len(m) > aes.BlockSize {
		n = (len(m) - 1) &^ (aes.BlockSize - 1)
	}
	s.cmacBlocks(x, m[:n])
	var last [aes.BlockSize]byte
	if r := m[n:]; len(r) == aes.BlockSize {
		xor16(last[:], r, s.k1[:])
	} else {
		copy(last[:], r)
		last[len(r)] = 0x80
		xor16(last[:], last[:], s.k2[:])
	}
	xor16(x, x, last[:])
	s.mac.Encrypt(x, x)
}

// cmacXorend sets x[:16] to CMAC_K1(m xorend d) for len(m) >= 16, where
// xorend XORs d into the last 16 bytes of m (RFC 5297 §2.1). m is not
// copied: the blocks before the xorend region are chained directly and the
// one or two blocks it touches are assembled on the stack.
func (s *siv) cmacXorend(x, m []byte, d *[aes.BlockSize]byte) {
	x = x[:aes.BlockSize]
	clear(x)
	r := len(m) % aes.BlockSize
	if r == 0 {
		// The xorend region is exactly the last block, which is complete.
		n := len(m) - aes.BlockSize
		s.cmacBlocks(x, m[:n])
		var last [aes.BlockSize]byte
		xor16(last[:], m[n:], d[:])
		xor16(last[:], last[:], s.k1[:])
		xor16(x, x, last[:])
		s.mac.Encrypt(x, x)
		return
	}
	// The region starts r bytes into the second-to-last block and covers
	// the partial last block of r bytes.
	n := len(m) - aes.BlockSize - r
	s.cmacBlocks(x, m[:n])
	var t [2 * aes.BlockSize]byte
	copy(t[:], m[n:])
	xor16(t[r:], t[r:], d[:])
	t[aes.BlockSize+r] = 0x80
	xor16(t[aes.BlockSize:], t[aes.BlockSize:], s.k2[:])
	xor16(x, x, t[:aes.BlockSize])
	s.mac.Encrypt(x, x)
	xor16(x, x, t[aes.BlockSize:])
	s.mac.Encrypt(x, x)
}

// s2v sets v[:16] to S2V_K1(ad, p) (RFC 5297 §2.4 with one AD string).
func (s *siv) s2v(v, p, ad []byte) {
	var d [aes.BlockSize]byte
	var e *adEntry
	set := -1
	if len(ad) <= adCacheMaxAD {
		set, e = s.lookup(ad)
	}
	if e != nil {
		d = e.d
	} else {
		s.cmac(v, ad)
		xor16(d[:], v, s.d0[:])
		if set >= 0 {
			s.store(set, ad, &d)
		}
	}
	if len(p) >= aes.BlockSize {
		s.cmacXorend(v, p, &d)
		return
	}
	// T = dbl(D) ⊕ pad(P): one complete block, so CMAC(T) = E(T ⊕ K1').
	dbl(&d)
	subtle.XORBytes(d[:], d[:len(p)], p)
	d[len(p)] ^= 0x80
	xor16(v, d[:], s.k1[:])
	s.mac.Encrypt(v, v)
}

// xorKeyStream sets dst[:len(src)] = src ⊕ AES-CTR_K2(Q), Q being v with
// the top bits of its last two 32-bit words cleared, the counter a 128-bit
// big-endian integer. w is a caller-owned 16-byte block that it may
// overwrite (with keystream: the caller wipes or overwrites it). dst and
// src must not overlap.
func (s *siv) xorKeyStream(dst, src []byte, v [aes.BlockSize]byte, w []byte) {
	v[8] &= 0x7f
	v[12] &= 0x7f
	if len(src) >= ctrBulkMin {
		copy(w, v[:]) // NewCTR copies the IV; w keeps v off the heap
		cipher.NewCTR(s.ctr, w[:aes.BlockSize]).XORKeyStream(dst[:len(src)], src)
		return
	}
	s.ctrBlocks(dst, src, v, w)
}

// ctrBlocks is xorKeyStream with the counter block q as is, one
// Block.Encrypt call per block.
func (s *siv) ctrBlocks(dst, src []byte, q [aes.BlockSize]byte, w []byte) {
	hi := binary.BigEndian.Uint64(q[:8])
	lo := binary.BigEndian.Uint64(q[8:])
	// Whole blocks: write the counters into dst, encrypt them in place, then
	// XOR the plaintext in. Keeping the Encrypt calls back to back, with no
	// loads of their results in between, lets the CPU overlap them (about
	// twice as fast as XORing block by block).
	// The partial last block, if any, is encrypted in w along with them.
	n := len(src) &^ (aes.BlockSize - 1)
	dst = dst[:len(src)]
	for i := 0; i < n; i += aes.BlockSize {
		binary.BigEndian.PutUint64(dst[i:], hi)
		binary.BigEndian.PutUint64(dst[i+8:], lo)
		lo++
		if lo == 0 {
			hi++
		}
	}
	if n < len(src) {
		w = w[:aes.BlockSize]
		binary.BigEndian.PutUint64(w[:8], hi)
		binary.BigEndian.PutUint64(w[8:], lo)
	}
	for i := 0; i < n; i += aes.BlockSize {
		c := dst[i : i+aes.BlockSize]
		s.ctr.Encrypt(c, c)
	}
	if n < len(src) {
		s.ctr.Encrypt(w, w)
		subtle.XORBytes(dst[n:], src[n:], w)
	}
	subtle.XORBytes(dst[:n], dst[:n], src[:n])
}

// seal appends V || C, the AES-SIV encryption of plaintext under ad, to dst
// and returns the extended slice. It allocates nothing when dst has
// capacity for len(plaintext)+16 more bytes, len(plaintext) < ctrBulkMin
// and ad is in the AD cache (or too long for it). dst and plaintext must
// not overlap.
func (s *siv) seal(dst, plaintext, ad []byte) []byte {
	ret, out := grow(dst, aes.BlockSize+len(plaintext))
	v := out[:aes.BlockSize]
	s.s2v(v, plaintext, ad)
	iv := [aes.BlockSize]byte(v)
	// The V field is the work block of the CTR tail; it is restored below.
	s.xorKeyStream(out[aes.BlockSize:], plaintext, iv, v)
	copy(v, iv[:])
	return ret
}

// sivWork is the pool of open's work block when the caller has none.
var sivWork = sync.Pool{New: func() any { return new([aes.BlockSize]byte) }}

// open authenticates in = V || C under ad and appends the plaintext to dst.
// On failure it returns nil and an error and leaves no plaintext in dst's
// spare capacity. dst and in must not overlap.
func (s *siv) open(dst, in, ad []byte) ([]byte, error) {
	w := sivWork.Get().(*[aes.BlockSize]byte)
	defer sivWork.Put(w)
	return s.openWith(w[:], dst, in, ad)
}

// openWith is open with a caller-owned 16-byte work block w (for example
// pooled scratch), so that it allocates nothing under the same conditions
// as seal. w is wiped before it returns.
func (s *siv) openWith(w, dst, in, ad []byte) ([]byte, error) {
	if len(in) < aes.BlockSize {
		return nil, errSIVOpen
	}
	iv := [aes.BlockSize]byte(in)
	ct := in[aes.BlockSize:]
	ret, out := grow(dst, len(ct))
	s.xorKeyStream(out, ct, iv, w)
	s.s2v(w, out, ad)
	ok := subtle.ConstantTimeCompare(w[:aes.BlockSize], iv[:])
	clear(w[:aes.BlockSize])
	if ok != 1 {
		clear(out)
		return nil, errSIVOpen
	}
	return ret, nil
}
