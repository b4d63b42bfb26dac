package crypto

import (
	"bytes"
	"encoding/hex"
	"testing"
)

// TestXAESVectors checks xaes against the C2SP XAES-256-GCM test vectors
// (https://c2sp.org/XAES-256-GCM), so the randomized mode is the published
// construction and not a look-alike.
func TestXAESVectors(t *testing.T) {
	for _, tc := range []struct {
		key  byte
		aad  string
		want string // ciphertext || tag
	}{
		{0x01, "", "ce546ef63c9cc60765923609" + "b33a9a1974e96e52daf2fcf7075e2271"},
		{0x03, "c2sp.org/XAES-256-GCM", "986ec1832593df5443a17943" + "7fd083bf3fdb41abd740a21f71eb769d"},
	} {
		x, err := newXAES(bytes.Repeat([]byte{tc.key}, 32))
		if err != nil {
			t.Fatal(err)
		}
		nonce := []byte("ABCDEFGHIJKLMNOPQRSTUVWX")
		got := x.seal(nil, nil, nonce, []byte("XAES-256-GCM"), []byte(tc.aad))
		if h := hex.EncodeToString(got); h != tc.want {
			t.Errorf("key %#x: seal = %s, want %s", tc.key, h, tc.want)
		}
		pt, err := x.open(nil, nil, nonce, got, []byte(tc.aad))
		if err != nil || string(pt) != "XAES-256-GCM" {
			t.Errorf("key %#x: open = %q, %v", tc.key, pt, err)
		}
	}
}
