package crypto

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	daead "github.com/tink-crypto/tink-go/v2/daead/subtle"
)

var modes = []Mode{ModeRandomized, ModeDeterministic}

func testKey(t testing.TB, id uint32, seed byte) *Key {
	t.Helper()
	k, err := NewKey(id, bytes.Repeat([]byte{seed}, DEKSize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func seal(t testing.TB, k *Key, m Mode, pt, aad []byte) []byte {
	t.Helper()
	env, err := k.Encrypt(nil, m, pt, aad, nil)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestIndependentReconstruction rebuilds a frozen vector from the recipe in
// doc.go using the primitives directly, so doc and code cannot drift apart.
func TestIndependentReconstruction(t *testing.T) {
	vs := loadVectors(t)
	for _, i := range []int{2, 9} { // "short text", both modes
		v := vs[i]
		dek, aad, pt := unhex(t, v.DEK), unhex(t, v.AAD), unhex(t, v.Plaintext)
		hdr := []byte{0xC1, 0xF5, 0x01, 0, byte(v.KeyID >> 24), byte(v.KeyID >> 16), byte(v.KeyID >> 8), byte(v.KeyID)}
		var env []byte
		switch v.Mode {
		case "randomized":
			hdr[3] = 0x01
			sub, _ := hkdf.Key(sha256.New, dek, nil, "pgcrypt-proxy/v1 randomized XAES-256-GCM", 32)
			x, _ := newXAES(sub) // checked against C2SP in TestXAESVectors
			nonce := unhex(t, v.Rand)
			env = x.seal(nil, append(append([]byte{}, hdr...), nonce...), nonce, pt, append(hdr, aad...))
		case "deterministic":
			hdr[3] = 0x02
			sub, _ := hkdf.Key(sha256.New, dek, nil, "pgcrypt-proxy/v1 deterministic AES-SIV", 64)
			s, _ := daead.NewAESSIV(sub)
			ct, _ := s.EncryptDeterministically(pt, append(append([]byte{}, hdr...), aad...))
			env = append(append([]byte{}, hdr...), ct...)
		}
		if got := fmt.Sprintf("%x", env); got != v.Envelope {
			t.Errorf("%s: reconstructed\n%s\nwant\n%s", v.Comment, got, v.Envelope)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	k := testKey(t, 42, 1)
	for _, m := range modes {
		for _, n := range []int{0, 1, 15, 16, 17, 255, 4096, 100_000} {
			pt := bytes.Repeat([]byte{0xAB}, n)
			prefix := []byte("prefix")
			env, err := k.Encrypt(prefix, m, pt, []byte("public.t.c"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(env, []byte("prefix")) || len(env) != len(prefix)+n+Overhead(m) {
				t.Fatalf("%v/%d: Encrypt did not append: len %d", m, n, len(env))
			}
			got, err := k.Decrypt([]byte("x"), env[len(prefix):], []byte("public.t.c"))
			if err != nil {
				t.Fatalf("%v/%d: %v", m, n, err)
			}
			if !bytes.Equal(got[1:], pt) || got[0] != 'x' {
				t.Fatalf("%v/%d: round trip mismatch", m, n)
			}
		}
	}
}

// TestFlipEveryBit: any single-bit change anywhere, header included, fails.
func TestFlipEveryBit(t *testing.T) {
	k := testKey(t, 0x01020304, 2)
	aad := []byte("public.users.ssn")
	for _, m := range modes {
		for _, n := range []int{0, 1, 33} {
			env := seal(t, k, m, bytes.Repeat([]byte{'p'}, n), aad)
			for i := range env {
				for bit := range 8 {
					bad := bytes.Clone(env)
					bad[i] ^= 1 << bit
					if pt, err := k.Decrypt(nil, bad, aad); err == nil {
						t.Fatalf("%v/%d: flipped byte %d bit %d decrypted to %q", m, n, i, bit, pt)
					} else if !isDecryptError(err) {
						t.Fatalf("%v/%d: error %T is not *DecryptError", m, n, err)
					}
				}
			}
		}
	}
}

// TestHeaderIsAuthenticated: a header change that still names a valid key
// (same DEK registered under the flipped id) fails authentication, so the
// header is bound, not just parsed.
func TestHeaderIsAuthenticated(t *testing.T) {
	dek := bytes.Repeat([]byte{3}, DEKSize)
	k, _ := NewKey(7, dek)
	for _, m := range modes {
		env := seal(t, k, m, []byte("v"), nil)
		for bit := range 32 {
			id := uint32(7) ^ 1<<bit
			other, _ := NewKey(id, dek)
			bad := bytes.Clone(env)
			putHeader(bad, m, id)
			if _, err := other.Decrypt(nil, bad, nil); !errors.Is(err, ErrAuth) {
				t.Fatalf("%v: key id bit %d: err = %v, want ErrAuth", m, bit, err)
			}
			if _, err := k.Decrypt(nil, bad, nil); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("%v: key id bit %d under original key: err = %v, want ErrWrongKey", m, bit, err)
			}
		}
	}
	// Mode swap with a length valid for both modes.
	env := seal(t, k, ModeRandomized, make([]byte, 8), nil)
	env[3] = byte(ModeDeterministic)
	if _, err := k.Decrypt(nil, env, nil); !errors.Is(err, ErrAuth) {
		t.Fatalf("mode swap: err = %v, want ErrAuth", err)
	}
}

func TestTruncateAndExtend(t *testing.T) {
	k := testKey(t, 9, 4)
	for _, m := range modes {
		env := seal(t, k, m, []byte("some plaintext value"), nil)
		for n := range len(env) {
			if _, err := k.Decrypt(nil, env[:n], nil); err == nil {
				t.Fatalf("%v: truncation to %d bytes decrypted", m, n)
			}
		}
		if _, err := k.Decrypt(nil, append(bytes.Clone(env), 0), nil); !errors.Is(err, ErrAuth) {
			t.Fatalf("%v: appended byte: %v", m, err)
		}
	}
}

func TestWrongContext(t *testing.T) {
	k := testKey(t, 5, 5)
	sameIDOtherDEK := testKey(t, 5, 6)
	otherID := testKey(t, 6, 5)
	for _, m := range modes {
		env := seal(t, k, m, []byte("123-45-6789"), []byte("public.users.ssn"))
		for _, tc := range []struct {
			name string
			key  *Key
			aad  string
			want error
		}{
			{"other column", k, "public.users.email", ErrAuth},
			{"no aad", k, "", ErrAuth},
			{"aad prefix", k, "public.users.ss", ErrAuth},
			{"other DEK same id", sameIDOtherDEK, "public.users.ssn", ErrAuth},
			{"other key id", otherID, "public.users.ssn", ErrWrongKey},
		} {
			_, err := tc.key.Decrypt(nil, env, []byte(tc.aad))
			if !errors.Is(err, tc.want) {
				t.Errorf("%v/%s: err = %v, want %v", m, tc.name, err, tc.want)
			}
			var de *DecryptError
			if !errors.As(err, &de) || de.KeyID != tc.key.ID() {
				t.Errorf("%v/%s: err %v lacks DecryptError with key id %d", m, tc.name, err, tc.key.ID())
			}
			if strings.Contains(err.Error(), "123-45-6789") {
				t.Errorf("error leaks plaintext: %v", err)
			}
		}
	}
}

func TestDeterminism(t *testing.T) {
	k := testKey(t, 1, 7)
	a := seal(t, k, ModeDeterministic, []byte("alice@example.com"), []byte("public.users.email"))
	b := seal(t, k, ModeDeterministic, []byte("alice@example.com"), []byte("public.users.email"))
	if !bytes.Equal(a, b) {
		t.Error("deterministic: equal plaintexts gave different envelopes")
	}
	if c := seal(t, k, ModeDeterministic, []byte("alice@example.com"), []byte("public.admins.email")); bytes.Equal(a, c) {
		t.Error("deterministic: different aad gave equal envelopes")
	}
	if c := seal(t, k, ModeDeterministic, []byte("alice@example.org"), []byte("public.users.email")); bytes.Equal(a, c) {
		t.Error("deterministic: different plaintexts gave equal envelopes")
	}
	if c := seal(t, testKey(t, 1, 8), ModeDeterministic, []byte("alice@example.com"), []byte("public.users.email")); bytes.Equal(a, c) {
		t.Error("deterministic: different DEKs gave equal envelopes")
	}
	r1 := seal(t, k, ModeRandomized, []byte("alice@example.com"), nil)
	r2 := seal(t, k, ModeRandomized, []byte("alice@example.com"), nil)
	if bytes.Equal(r1, r2) {
		t.Error("randomized: equal plaintexts gave equal envelopes")
	}
}

func TestParseHeaderErrors(t *testing.T) {
	k := testKey(t, 3, 9)
	good := seal(t, k, ModeRandomized, nil, nil)
	withByte := func(i int, b byte) []byte { e := bytes.Clone(good); e[i] = b; return e }
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"nil", nil, ErrNotEnvelope},
		{"text", []byte("hello world, this is a plain old text value"), ErrNotEnvelope},
		{"magic only", []byte{0xC1, 0xF5}, ErrNotEnvelope},
		{"bad magic", withByte(1, 0xF6), ErrNotEnvelope},
		{"version 0", withByte(2, 0), ErrUnsupportedVersion},
		{"version 2", withByte(2, 2), ErrUnsupportedVersion},
		{"mode 0", withByte(3, 0), ErrUnsupportedMode},
		{"mode 3", withByte(3, 3), ErrUnsupportedMode},
		{"randomized too short", good[:Overhead(ModeRandomized)-1], ErrNotEnvelope},
	} {
		_, err := ParseHeader(tc.in)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: ParseHeader err = %v, want %v", tc.name, err, tc.want)
		}
		if LooksLikeEnvelope(tc.in) {
			t.Errorf("%s: LooksLikeEnvelope = true", tc.name)
		}
		if _, err := k.Decrypt(nil, tc.in, nil); !errors.Is(err, tc.want) || !isDecryptError(err) {
			t.Errorf("%s: Decrypt err = %v, want DecryptError(%v)", tc.name, err, tc.want)
		}
	}
	if !LooksLikeEnvelope(good) {
		t.Error("LooksLikeEnvelope(envelope) = false")
	}
}

// TestTextNeverLooksLikeEnvelope: the magic bytes cannot occur in UTF-8, so
// a legacy text value is never mistaken for an envelope.
func TestTextNeverLooksLikeEnvelope(t *testing.T) {
	for _, b := range []byte{Magic0, Magic1} {
		for r := rune(0); r <= utf8.MaxRune; r++ {
			if bytes.IndexByte(utf8.AppendRune(nil, r), b) >= 0 && utf8.ValidRune(r) {
				t.Fatalf("rune %U encodes with magic byte %#x", r, b)
			}
		}
	}
	if utf8.Valid(seal(t, testKey(t, 1, 1), ModeDeterministic, []byte("x"), nil)[:2]) {
		t.Fatal("magic is valid UTF-8")
	}
}

func TestEncryptErrors(t *testing.T) {
	k := testKey(t, 1, 1)
	if _, err := k.Encrypt(nil, 0, nil, nil, nil); !errors.Is(err, ErrInvalidMode) {
		t.Errorf("mode 0: %v", err)
	}
	if _, err := k.Encrypt(nil, ModeRandomized, nil, nil, io.LimitReader(bytes.NewReader(make([]byte, 100)), 10)); err == nil {
		t.Error("short random reader: no error")
	}
	if _, err := NewKey(1, make([]byte, 16)); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("16-byte DEK: %v", err)
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeRandomized, "randomized": ModeRandomized, "deterministic": ModeDeterministic} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"Randomized", "det", "aes-siv"} {
		if _, err := ParseMode(in); !errors.Is(err, ErrInvalidMode) {
			t.Errorf("ParseMode(%q) err = %v", in, err)
		}
	}
	var m Mode
	if err := m.UnmarshalText([]byte("deterministic")); err != nil || m != ModeDeterministic {
		t.Errorf("UnmarshalText: %v %v", m, err)
	}
	if b, _ := ModeRandomized.MarshalText(); string(b) != "randomized" {
		t.Errorf("MarshalText = %q", b)
	}
}

func TestKeyNeverPrints(t *testing.T) {
	dek := bytes.Repeat([]byte{0x5A}, DEKSize)
	k, _ := NewKey(77, dek)
	wrapper := struct{ K *Key }{k}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "key", k)
	outs := []string{buf.String()}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
		outs = append(outs, fmt.Sprintf(verb, k), fmt.Sprintf(verb, wrapper), fmt.Sprintf(verb, *k), fmt.Sprintf(verb, struct{ K Key }{*k}))
	}
	outs = append(outs, k.String(), k.GoString(), fmt.Sprint((*Key)(nil)), fmt.Sprint(k.material))
	secrets := [][]byte{dek, k.randKey[:], k.sivKey[:], k.biKey[:]}
	for _, out := range outs {
		if !strings.Contains(out, "77") && !strings.Contains(out, "Key") && out != "<nil>" && out != "REDACTED" {
			t.Errorf("output %q does not show the key id", out)
		}
		for _, s := range secrets {
			for _, enc := range []string{string(s[:8]), fmt.Sprintf("%x", s[:8]), fmt.Sprintf("%X", s[:8]), fmt.Sprint(s[:4])[1:8], fmt.Sprintf("%#x", s[0])} {
				if strings.Contains(out, enc) {
					t.Errorf("output %q leaks key material (%q)", out, enc)
				}
			}
		}
	}
}

func TestEqual(t *testing.T) {
	a, b := testKey(t, 1, 1), testKey(t, 1, 1)
	if !a.Equal(b) {
		t.Error("same id and DEK: not equal")
	}
	if a.Equal(testKey(t, 2, 1)) || a.Equal(testKey(t, 1, 2)) || a.Equal(nil) {
		t.Error("different keys equal")
	}
	if !(*Key)(nil).Equal(nil) {
		t.Error("nil != nil")
	}
}

func TestBlindIndex(t *testing.T) {
	k := testKey(t, 1, 1)
	a := k.BlindIndex(nil, []byte("alice"), []byte("public.users.email"))
	if len(a) != 32 || !bytes.Equal(a, k.BlindIndex(nil, []byte("alice"), []byte("public.users.email"))) {
		t.Fatal("blind index not a stable 32-byte value")
	}
	for _, other := range [][]byte{
		k.BlindIndex(nil, []byte("alicf"), []byte("public.users.email")),
		k.BlindIndex(nil, []byte("alice"), []byte("public.users.emai")),
		k.BlindIndex(nil, []byte("lalice"), []byte("public.users.emai")), // length prefix separates aad and value
		testKey(t, 1, 2).BlindIndex(nil, []byte("alice"), []byte("public.users.email")),
	} {
		if bytes.Equal(a, other) {
			t.Error("blind index collision between different inputs")
		}
	}
}

// TestConcurrent exercises one Key from many goroutines (run with -race).
func TestConcurrent(t *testing.T) {
	k := testKey(t, 1, 1)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			var buf, out []byte
			for i := range 200 {
				m := modes[(g+i)%2]
				pt := fmt.Appendf(nil, "value %d/%d", g, i)
				var err error
				if buf, err = k.Encrypt(buf[:0], m, pt, []byte("c"), nil); err != nil {
					t.Error(err)
					return
				}
				if out, err = k.Decrypt(out[:0], buf, []byte("c")); err != nil || !bytes.Equal(out, pt) {
					t.Errorf("round trip: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestRandomizedAllocations(t *testing.T) {
	if raceEnabled && os.Getenv("CI") != "true" {
		t.Skip("allocation counts are meaningless under the race detector (sync.Pool drops items at random); make test runs without it")
	}
	k := testKey(t, 1, 1)
	pt, aad := make([]byte, 256), []byte("public.users.ssn")
	buf := make([]byte, 0, 1024)
	env := seal(t, k, ModeRandomized, pt, aad)
	out := make([]byte, 0, 1024)
	enc := testing.AllocsPerRun(100, func() { k.Encrypt(buf[:0], ModeRandomized, pt, aad, zeroReader{}) })
	dec := testing.AllocsPerRun(100, func() { k.Decrypt(out[:0], env, aad) })
	t.Logf("randomized allocations per op: encrypt %.0f, decrypt %.0f", enc, dec)
	// Per message: the derived key's AES block and its GCM state (std-lib
	// API has no way to re-key those in place). Nothing else.
	if enc > 2 || dec > 2 {
		t.Errorf("allocations per op: encrypt %.0f, decrypt %.0f; want ≤ 2", enc, dec)
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func isDecryptError(err error) bool {
	var de *DecryptError
	return errors.As(err, &de)
}
