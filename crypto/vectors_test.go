package crypto

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "regenerate testdata/vectors.json (only when deliberately defining a new format version)")

const vectorsFile = "testdata/vectors.json"

// vector is one known-answer test. All byte fields are hex. Rand is exactly
// the bytes Encrypt reads from its random reader (the 24-byte nonce in
// randomized mode, nothing in deterministic mode).
type vector struct {
	Comment   string `json:"comment"`
	DEK       string `json:"dek"`
	KeyID     uint32 `json:"key_id"`
	Mode      string `json:"mode"`
	AAD       string `json:"aad"`
	Plaintext string `json:"plaintext"`
	Rand      string `json:"rand"`
	Envelope  string `json:"envelope"`
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// generateVectors builds the vector inputs from a fixed ChaCha8 seed, so the
// file is reproducible byte for byte.
func generateVectors(t *testing.T) []vector {
	src := rand.NewChaCha8([32]byte([]byte("pgcrypt-proxy envelope vectors v1")[:32]))
	read := func(n int) []byte {
		b := make([]byte, n)
		src.Read(b)
		return b
	}
	multiKB := read(5000)
	type in struct {
		comment string
		id      uint32
		aad     string
		pt      []byte
	}
	inputs := []in{
		{"empty plaintext", 7, "public.users.ssn", nil},
		{"one byte", 7, "public.users.ssn", []byte{0x00}},
		{"short text", 7, "public.users.email", []byte("alice@example.com")},
		{"non-UTF-8 bytes, starting with the magic", 1, "public.users.ssn", []byte{0xC1, 0xF5, 0x01, 0x01, 0xFF, 0xFE, 0x80}},
		{"exactly one AES block", 0xFFFFFFFF, "s.t.c", []byte("0123456789abcdef")},
		{"empty aad, key id 0", 0, "", []byte("no column identity")},
		{"multi-KB random bytes", 0x01020304, "public.documents.body", multiKB},
	}
	var vs []vector
	for i, m := range []Mode{ModeRandomized, ModeDeterministic} {
		for j, x := range inputs {
			dek := read(DEKSize)
			k, err := NewKey(x.id, dek)
			if err != nil {
				t.Fatal(err)
			}
			var rnd []byte
			if m == ModeRandomized {
				rnd = read(NonceSize)
			}
			env, err := k.Encrypt(nil, m, x.pt, []byte(x.aad), bytes.NewReader(rnd))
			if err != nil {
				t.Fatalf("vector %d/%d: %v", i, j, err)
			}
			vs = append(vs, vector{
				Comment:   m.String() + ": " + x.comment,
				DEK:       hex.EncodeToString(dek),
				KeyID:     x.id,
				Mode:      m.String(),
				AAD:       hex.EncodeToString([]byte(x.aad)),
				Plaintext: hex.EncodeToString(x.pt),
				Rand:      hex.EncodeToString(rnd),
				Envelope:  hex.EncodeToString(env),
			})
		}
	}
	// Same plaintext and key as the "short text" deterministic vector but
	// another column: must give another envelope.
	d := vs[len(inputs)+2]
	k, _ := NewKey(d.KeyID, unhex(t, d.DEK))
	env, err := k.Encrypt(nil, ModeDeterministic, unhex(t, d.Plaintext), []byte("public.admins.email"), nil)
	if err != nil {
		t.Fatal(err)
	}
	d.Comment = "deterministic: same key and plaintext as \"short text\", other column"
	d.AAD = hex.EncodeToString([]byte("public.admins.email"))
	d.Envelope = hex.EncodeToString(env)
	return append(vs, d)
}

func loadVectors(t *testing.T) []vector {
	t.Helper()
	b, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) == 0 {
		t.Fatal("no vectors")
	}
	return vs
}

// TestVectors freezes the format: encrypting each vector's inputs with its
// recorded randomness must give exactly the recorded envelope, and
// decrypting the recorded envelope must give the plaintext back.
func TestVectors(t *testing.T) {
	if *update {
		b, err := json.MarshalIndent(generateVectors(t), "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(vectorsFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsFile, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range loadVectors(t) {
		t.Run(v.Comment, func(t *testing.T) {
			mode, err := ParseMode(v.Mode)
			if err != nil {
				t.Fatal(err)
			}
			k, err := NewKey(v.KeyID, unhex(t, v.DEK))
			if err != nil {
				t.Fatal(err)
			}
			pt, aad, want := unhex(t, v.Plaintext), unhex(t, v.AAD), unhex(t, v.Envelope)

			r := bytes.NewReader(unhex(t, v.Rand))
			got, err := k.Encrypt(nil, mode, pt, aad, r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Encrypt =\n%x\nwant\n%x", got, want)
			}
			if r.Len() != 0 {
				t.Errorf("Encrypt left %d of the recorded random bytes unread", r.Len())
			}
			if len(want) != len(pt)+Overhead(mode) {
				t.Errorf("envelope is %d bytes, want %d", len(want), len(pt)+Overhead(mode))
			}

			h, err := ParseHeader(want)
			if err != nil {
				t.Fatal(err)
			}
			if h != (Header{Version: Version1, Mode: mode, KeyID: v.KeyID}) {
				t.Errorf("ParseHeader = %+v", h)
			}
			dec, err := k.Decrypt(nil, want, aad)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(dec, pt) {
				t.Errorf("Decrypt = %x, want %x", dec, pt)
			}
		})
	}
}

// TestVectorHeaderBytes pins the header layout documented in doc.go
// independently of the code that writes it.
func TestVectorHeaderBytes(t *testing.T) {
	vs := loadVectors(t)
	for _, tc := range []struct {
		i    int
		want string
	}{
		{0, "c1f5" + "01" + "01" + "00000007"},
		{4, "c1f5" + "01" + "01" + "ffffffff"},
		{7, "c1f5" + "01" + "02" + "00000007"},
		{13, "c1f5" + "01" + "02" + "01020304"},
	} {
		if got := vs[tc.i].Envelope[:2*HeaderSize]; got != tc.want {
			t.Errorf("vector %d (%s): header %s, want %s", tc.i, vs[tc.i].Comment, got, tc.want)
		}
	}
	// Deterministic: nonce field is the SIV, so the envelope of the empty
	// plaintext is exactly header || SIV.
	if n := len(vs[7].Envelope) / 2; n != HeaderSize+SIVSize {
		t.Errorf("deterministic empty envelope is %d bytes, want %d", n, HeaderSize+SIVSize)
	}
}
