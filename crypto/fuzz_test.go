package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
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
