package crypto

import (
	"bytes"
	"crypto/rand"
	"testing"
)

// TestNoncePrefixReuse checks the default nonce generation: one prefix per
// key for a bounded number of messages, then a new one; every value
// decrypts, including values with other prefixes and more prefixes than
// the decryption cache holds.
func TestNoncePrefixReuse(t *testing.T) {
	dek := make([]byte, DEKSize)
	rand.Read(dek)
	k, err := NewKey(9, dek)
	if err != nil {
		t.Fatal(err)
	}
	aad := []byte("public.t.c")
	prefix := func(env []byte) []byte { return env[HeaderSize : HeaderSize+12] }
	suffix := func(env []byte) []byte { return env[HeaderSize+12 : HeaderSize+NonceSize] }
	a, _ := k.Encrypt(nil, ModeRandomized, []byte("one"), aad, nil)
	b, _ := k.Encrypt(nil, ModeRandomized, []byte("two"), aad, nil)
	if !bytes.Equal(prefix(a), prefix(b)) {
		t.Fatal("consecutive messages do not share the nonce prefix")
	}
	if bytes.Equal(suffix(a), suffix(b)) {
		t.Fatal("two messages got the same GCM nonce")
	}
	k.xaes.mu.Lock()
	k.xaes.used = prefixLimit
	k.xaes.mu.Unlock()
	c, _ := k.Encrypt(nil, ModeRandomized, []byte("three"), aad, nil)
	if bytes.Equal(prefix(a), prefix(c)) {
		t.Fatal("the prefix was not renewed after prefixLimit messages")
	}
	var envs [][]byte
	for i := 0; i < 2*cacheSize+3; i++ {
		e, err := k.Encrypt(nil, ModeRandomized, []byte{byte(i)}, aad, rand.Reader) // a fresh 24-byte nonce each
		if err != nil {
			t.Fatal(err)
		}
		envs = append(envs, e)
	}
	for i, e := range append(envs, a, b, c) {
		p, err := k.Decrypt(nil, e, aad)
		if err != nil {
			t.Fatalf("value %d: %v", i, err)
		}
		if i < len(envs) && !bytes.Equal(p, []byte{byte(i)}) {
			t.Fatalf("value %d decrypted to %q", i, p)
		}
	}
	// A cached AEAD must not make a tampered value or another column's
	// value decrypt.
	bad := append([]byte(nil), a...)
	bad[len(bad)-1] ^= 1
	if _, err := k.Decrypt(nil, bad, aad); err == nil {
		t.Fatal("tampered value decrypted from a cached key")
	}
	if _, err := k.Decrypt(nil, a, []byte("public.t.other")); err == nil {
		t.Fatal("value decrypted with another column's identity")
	}
}

// TestNonceBatch: the GCM nonces come from a pool of random bytes refilled
// nonceBatch nonces at a time; across several refills, and from
// concurrent writers, no nonce repeats, the used pool bytes are wiped and
// every value decrypts.
func TestNonceBatch(t *testing.T) {
	dek := make([]byte, DEKSize)
	rand.Read(dek)
	k, err := NewKey(10, dek)
	if err != nil {
		t.Fatal(err)
	}
	aad := []byte("public.t.c")
	const writers, each = 4, 3*nonceBatch/2 + 7
	envs := make([][][]byte, writers)
	done := make(chan struct{})
	for w := range writers {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range each {
				e, err := k.Encrypt(nil, ModeRandomized, []byte{byte(w), byte(i)}, aad, nil)
				if err != nil {
					t.Error(err)
					return
				}
				envs[w] = append(envs[w], e)
			}
		}()
	}
	for range writers {
		<-done
	}
	seen := map[string]bool{}
	for w, es := range envs {
		for i, e := range es {
			n := string(e[HeaderSize+12 : HeaderSize+NonceSize])
			if seen[n] {
				t.Fatalf("writer %d value %d reuses a GCM nonce", w, i)
			}
			seen[n] = true
			p, err := k.Decrypt(nil, e, aad)
			if err != nil || !bytes.Equal(p, []byte{byte(w), byte(i)}) {
				t.Fatalf("writer %d value %d: %q, %v", w, i, p, err)
			}
		}
	}
	if len(seen) != writers*each {
		t.Fatalf("%d nonces for %d values", len(seen), writers*each)
	}
	k.xaes.mu.Lock()
	defer k.xaes.mu.Unlock()
	used := len(k.xaes.rnd) - k.xaes.rndLeft
	if !bytes.Equal(k.xaes.rnd[:used], make([]byte, used)) {
		t.Fatal("pool bytes already used as nonces were not wiped")
	}
	if k.xaes.rndLeft > 0 && bytes.Equal(k.xaes.rnd[used:], make([]byte, k.xaes.rndLeft)) {
		t.Fatal("the pool's unused bytes are zero")
	}
}
