package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"sync"
)

// xaes is XAES-256-GCM as specified at https://c2sp.org/XAES-256-GCM:
// AES-256-GCM with a 192-bit nonce N, where the GCM key is derived per
// message from the first 96 bits of N with an AES-based KDF (NIST SP
// 800-108r1 counter mode with AES-CMAC, using only two AES block
// encryptions because the input is one block), and GCM runs under that key
// with the last 96 bits of N. It is checked against the C2SP vectors in
// xaes_test.go.
//
// The root block cipher and the CMAC subkey K1 are computed once per Key;
// per message the cost is two AES block calls plus the AES-256 key schedule
// and GHASH key of the derived key (see BenchmarkPerMessageKey).
type xaes struct {
	block cipher.Block // AES-256 under the randomized subkey; read-only
	k1    [aes.BlockSize]byte

	// Derived-key cache. XAES-256-GCM derives a key from the nonce's first
	// 12 bytes; messages sharing that prefix share the derived key (C2SP
	// XAES-256-GCM allows caching it). Encryption with the default
	// randomness reuses one random prefix per Key for prefixLimit
	// messages, with a fresh random 96-bit GCM nonce each time, so it
	// derives a key once per prefix instead of once per message; and
	// decryption keeps the AEADs of recently seen prefixes, so reading the
	// values one process wrote costs one derivation. Nothing about the
	// format changes: every nonce is still 24 bytes, and values with any
	// prefix decrypt. See doc.go for the bound.
	mu     sync.Mutex
	prefix [12]byte
	used   uint64      // messages sealed under prefix
	cur    cipher.AEAD // the AEAD of prefix, once derived
	cache  map[[12]byte]cipher.AEAD
	// rnd holds random bytes from crypto/rand, the last rndLeft unused:
	// the 12-byte GCM nonces are taken from it, so that one read of the
	// system's generator serves hundreds of messages (a read costs more
	// than the AES-GCM seal of a small value). Each byte is used once;
	// nonces are public, so holding the next ones in memory reveals
	// nothing an attacker could use.
	rnd     [nonceBatch * 12]byte
	rndLeft int
}

// nonceBatch is how many GCM nonces one read of crypto/rand provides.
const nonceBatch = 256

// prefixLimit bounds the messages encrypted under one derived key. With
// random 96-bit GCM nonces, q messages collide with probability at most
// q²/2^97: 2^-41 at 2^28.
const prefixLimit = 1 << 28

// cacheSize bounds the decryption cache (entries of a few hundred bytes).
const cacheSize = 256

func newXAES(key []byte) (*xaes, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	x := &xaes{block: b}
	// K1 = dbl(AES-256_K(0^128)), the CMAC subkey.
	var l [aes.BlockSize]byte
	b.Encrypt(l[:], l[:])
	msb := l[0] >> 7
	for i := 0; i < aes.BlockSize-1; i++ {
		x.k1[i] = l[i]<<1 | l[i+1]>>7
	}
	x.k1[aes.BlockSize-1] = l[aes.BlockSize-1]<<1 ^ byte(subtle.ConstantTimeSelect(int(msb), 0x87, 0))
	return x, nil
}

// deriveKey writes the per-message key K_x for nonce prefix n12 (12 bytes):
//
//	M_i = 0x00 || i || 'X' || 0x00 || n12     (i = 0x01, 0x02)
//	K_x = AES-256_K(M_1 ⊕ K1) || AES-256_K(M_2 ⊕ K1)
//
// m is scratch space. It and kx are caller-provided because the interface
// call to Block.Encrypt would otherwise move them to the heap.
func (x *xaes) deriveKey(kx *[32]byte, m *[aes.BlockSize]byte, n12 []byte) {
	m[0], m[1], m[2], m[3] = 0x00, 0x01, 'X', 0x00
	copy(m[4:], n12[:12])
	subtle.XORBytes(m[:], m[:], x.k1[:])
	x.block.Encrypt(kx[:16], m[:])
	m[1] ^= 0x01 ^ 0x02 // M_2 differs from M_1 in byte 1 only
	x.block.Encrypt(kx[16:], m[:])
}

// aead returns AES-256-GCM under the key derived from nonce[:12]; the caller
// passes nonce[12:] to Seal/Open. s may be nil (one more allocation).
func (x *xaes) aead(s *scratch, nonce []byte) cipher.AEAD {
	if s == nil {
		s = new(scratch)
	}
	x.deriveKey(&s.kx, &s.m, nonce[:12])
	b, err := aes.NewCipher(s.kx[:])
	clear(s.kx[:])
	clear(s.m[:])
	if err != nil {
		panic("BUG: crypto: AES-256 rejected a 32-byte key: " + err.Error())
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic("BUG: crypto: GCM rejected AES: " + err.Error())
	}
	return g
}

// seal appends GCM(K_x, nonce[12:], plaintext, ad) ciphertext||tag to dst.
func (x *xaes) seal(s *scratch, dst, nonce, plaintext, ad []byte) []byte {
	return x.aead(s, nonce).Seal(dst, nonce[12:], plaintext, ad)
}

// sealCached fills nonce with the current prefix and 12 random bytes and
// seals under the prefix's cached derived key.
func (x *xaes) sealCached(s *scratch, dst, nonce, plaintext, ad []byte) ([]byte, error) {
	x.mu.Lock()
	if x.rndLeft == 0 {
		if _, err := rand.Read(x.rnd[:]); err != nil {
			x.mu.Unlock()
			return nil, err
		}
		x.rndLeft = len(x.rnd)
	}
	off := len(x.rnd) - x.rndLeft
	copy(nonce[12:], x.rnd[off:off+12])
	clear(x.rnd[off : off+12])
	x.rndLeft -= 12
	if x.used == 0 || x.used >= prefixLimit {
		if _, err := rand.Read(x.prefix[:]); err != nil {
			x.mu.Unlock()
			return nil, err
		}
		x.used = 0
		x.cur = nil
	}
	x.used++
	copy(nonce[:12], x.prefix[:])
	a := x.cur
	x.mu.Unlock()
	if a == nil {
		a = x.cached(s, nonce)
		x.mu.Lock()
		if x.prefix == [12]byte(nonce[:12]) {
			x.cur = a
		}
		x.mu.Unlock()
	}
	return a.Seal(dst, nonce[12:], plaintext, ad), nil
}

// open appends the plaintext of ciphertext||tag to dst.
func (x *xaes) open(s *scratch, dst, nonce, ciphertext, ad []byte) ([]byte, error) {
	return x.cached(s, nonce).Open(dst, nonce[12:], ciphertext, ad)
}

// cached returns the AEAD of the nonce's prefix, deriving and keeping it
// on a miss. A GCM AEAD is safe for concurrent use.
func (x *xaes) cached(s *scratch, nonce []byte) cipher.AEAD {
	var p [12]byte
	copy(p[:], nonce[:12])
	x.mu.Lock()
	a, ok := x.cache[p]
	x.mu.Unlock()
	if ok {
		return a
	}
	a = x.aead(s, nonce)
	x.mu.Lock()
	if x.cache == nil || len(x.cache) >= cacheSize {
		// Start over rather than track recency: a full cache means values
		// from many writers, and the current prefix is re-added at once.
		x.cache = make(map[[12]byte]cipher.AEAD, 16)
	}
	x.cache[p] = a
	x.mu.Unlock()
	return a
}
