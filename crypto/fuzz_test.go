package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	daead "github.com/tink-crypto/tink-go/v2/daead/subtle"
)

// FuzzDecrypt feeds arbitrary bytes to ParseHeader, LooksLikeEnvelope and
// Decrypt. Seeds live in testdata/fuzz/FuzzDecrypt (valid envelopes of both
// modes under the key below, so the fuzzer starts on the authenticated
// path). Properties: nothing panics; ParseHeader and LooksLikeEnvelope
// agree; every failure is a *DecryptError naming the key, matching
// ParseHeader's verdict; and whatever decrypts re-encrypts to the same bytes
// (the encoding is canonical: no two envelopes carry the same message).
func FuzzDecrypt(f *testing.F) {
	k := testKey(f, 7, 0x42)
	for _, m := range modes {
		for _, pt := range []string{"", "x", "123-45-6789", "a somewhat longer value spanning blocks"} {
			env, err := k.Encrypt(nil, m, []byte(pt), []byte("public.users.ssn"), nil)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(env, []byte("public.users.ssn"))
		}
	}
	f.Add([]byte{}, []byte{})
	f.Add([]byte{0xC1, 0xF5, 0x01, 0x01, 0, 0, 0, 7}, []byte("a"))

	f.Fuzz(func(t *testing.T, env, aad []byte) {
		h, perr := ParseHeader(env)
		if (perr == nil) != LooksLikeEnvelope(env) {
			t.Fatalf("ParseHeader err %v but LooksLikeEnvelope %v", perr, LooksLikeEnvelope(env))
		}
		if perr == nil {
			if len(env) < Overhead(h.Mode) || h.Version != env[2] || byte(h.Mode) != env[3] ||
				h.KeyID != binary.BigEndian.Uint32(env[4:8]) {
				t.Fatalf("inconsistent header %+v for %x", h, env)
			}
		}

		pt, err := k.Decrypt(nil, env, aad)
		if err != nil {
			var de *DecryptError
			if !errors.As(err, &de) || de.KeyID != k.ID() || pt != nil {
				t.Fatalf("Decrypt returned %v, %v", pt, err)
			}
			if perr != nil && !errors.Is(err, perr) {
				t.Fatalf("Decrypt err %v, ParseHeader err %v", err, perr)
			}
			return
		}
		if perr != nil || h.KeyID != k.ID() || len(pt) != len(env)-Overhead(h.Mode) {
			t.Fatalf("Decrypt accepted %x (header %+v, %v)", env, h, perr)
		}
		var nonce []byte
		if h.Mode == ModeRandomized {
			nonce = env[HeaderSize : HeaderSize+NonceSize]
		}
		again, err := k.Encrypt(nil, h.Mode, pt, aad, bytes.NewReader(nonce))
		if err != nil || !bytes.Equal(again, env) {
			t.Fatalf("re-encryption differs:\n%x\n%x (%v)", again, env, err)
		}
	})
}

// fuzzSIVKey stretches the fuzzer's key bytes to a 64-byte AES-SIV key (the
// bytes repeated, each copy offset so that short keys give distinct halves).
func fuzzSIVKey(b []byte) []byte {
	k := make([]byte, sivKeySize)
	if len(b) == 0 {
		return k
	}
	for i := range k {
		k[i] = b[i%len(b)] + byte(i/len(b))
	}
	return k
}

// FuzzSIV compares siv with tink-go's daead/subtle.AESSIV as an oracle.
// Seeds live in testdata/fuzz/FuzzSIV. Per input: a fresh siv under the
// stretched key (cold AD cache) and a long-lived one shared by all inputs
// (a cache that fills and evicts) must both seal to exactly tink's bytes
// after an arbitrary prefix, open their output, refuse it with one bit
// flipped, and agree with tink on ct taken as an arbitrary V || C (accept
// with the same plaintext, or both refuse; a refusal leaves nothing in dst).
func FuzzSIV(f *testing.F) {
	sharedKey := bytes.Repeat([]byte{0x5A}, sivKeySize)
	shared, err := newSIV(sharedKey)
	if err != nil {
		f.Fatal(err)
	}
	sharedTink, err := daead.NewAESSIV(sharedKey)
	if err != nil {
		f.Fatal(err)
	}
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 100, ctrBulkMin - 1, ctrBulkMin} {
		pt := bytes.Repeat([]byte{'v'}, n)
		ad := []byte("\xc1\xf5\x01\x02\x00\x00\x00\x07public.users.ssn")
		ct, _ := sharedTink.EncryptDeterministically(pt, ad)
		f.Add(sharedKey[:1], ad, pt, ct, uint16(n))
	}
	f.Add([]byte{}, []byte{}, []byte{}, []byte{}, uint16(0))

	f.Fuzz(func(t *testing.T, key, ad, pt, ct []byte, flip uint16) {
		k := fuzzSIVKey(key)
		s, err := newSIV(k)
		if err != nil {
			t.Fatal(err)
		}
		tk, err := daead.NewAESSIV(k)
		if err != nil {
			t.Fatal(err)
		}
		prefix := pt[:len(pt)%5]
		for _, c := range []struct {
			s  *siv
			tk *daead.AESSIV
		}{{s, tk}, {shared, sharedTink}} {
			want, err := c.tk.EncryptDeterministically(pt, ad)
			if err != nil {
				t.Fatal(err)
			}
			got := c.s.seal(bytes.Clone(prefix), pt, ad)
			if !bytes.HasPrefix(got, prefix) || !bytes.Equal(got[len(prefix):], want) {
				t.Fatalf("seal =\n%x\ntink\n%x", got[len(prefix):], want)
			}
			dec, err := c.s.open(bytes.Clone(prefix), want, ad)
			if err != nil || !bytes.Equal(dec, append(bytes.Clone(prefix), pt...)) {
				t.Fatalf("open(seal) = %x, %v", dec, err)
			}
			bad := bytes.Clone(want)
			bit := int(flip) % (8 * len(bad))
			bad[bit/8] ^= 1 << (bit % 8)
			if p, err := c.s.open(nil, bad, ad); err == nil || p != nil {
				t.Fatalf("bit %d flipped: open = %x, %v", bit, p, err)
			}

			// ct as an arbitrary input: same verdict as tink.
			tp, terr := c.tk.DecryptDeterministically(ct, ad)
			buf := make([]byte, 1, 1+len(ct))
			p, err := c.s.open(buf, ct, ad)
			if (err == nil) != (terr == nil) {
				t.Fatalf("open(%x): ours %v, tink %v", ct, err, terr)
			}
			if err == nil && (len(p) != 1+len(tp) || !bytes.Equal(p[1:], tp)) {
				t.Fatalf("open(%x) = %x, tink %x", ct, p[1:], tp)
			}
			if err != nil && (p != nil || !bytes.Equal(buf[:cap(buf)], make([]byte, cap(buf)))) {
				t.Fatalf("failed open left %x / %x", p, buf[:cap(buf)])
			}
		}
	})
}
