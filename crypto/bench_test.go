package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"testing"
)

var benchSizes = []int{16, 256, 4096}

var benchAAD = []byte("public.users.ssn")

func BenchmarkEncrypt(b *testing.B) {
	k := testKey(b, 1, 1)
	for _, m := range modes {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%v/%d", m, n), func(b *testing.B) {
				pt := make([]byte, n)
				buf := make([]byte, 0, n+Overhead(m))
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					var err error
					if buf, err = k.Encrypt(buf[:0], m, pt, benchAAD, nil); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkDecrypt(b *testing.B) {
	k := testKey(b, 1, 1)
	for _, m := range modes {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%v/%d", m, n), func(b *testing.B) {
				env := seal(b, k, m, make([]byte, n), benchAAD)
				out := make([]byte, 0, n)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					var err error
					if out, err = k.Decrypt(out[:0], env, benchAAD); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkStdlibGCMSeal is the baseline: std-lib AES-256-GCM Seal with a
// fixed key and nonce, no per-message key, no header, no randomness.
func BenchmarkStdlibGCMSeal(b *testing.B) {
	blk, _ := aes.NewCipher(make([]byte, 32))
	g, _ := cipher.NewGCM(blk)
	nonce := make([]byte, g.NonceSize())
	for _, n := range benchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			pt := make([]byte, n)
			buf := make([]byte, 0, n+g.Overhead())
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				buf = g.Seal(buf[:0], nonce, pt, benchAAD)
			}
		})
	}
}

// BenchmarkPerMessageKey compares ways to get a per-message GCM key from the
// nonce: XAES's AES-CMAC-based KDF (what Encrypt uses) against HKDF-SHA256
// Expand from a cached PRK, and what both then pay for the derived key's
// AES key schedule plus GCM setup.
func BenchmarkPerMessageKey(b *testing.B) {
	x, _ := newXAES(make([]byte, 32))
	nonce := make([]byte, NonceSize)
	b.Run("derive/xaes-aes-cmac", func(b *testing.B) {
		b.ReportAllocs()
		var s scratch
		for b.Loop() {
			x.deriveKey(&s.kx, &s.m, nonce[:12])
		}
	})
	b.Run("derive/hkdf-sha256-expand", func(b *testing.B) {
		b.ReportAllocs()
		prk, _ := hkdf.Extract(sha256.New, make([]byte, 32), nil)
		info := string(nonce[:12])
		for b.Loop() {
			if _, err := hkdf.Expand(sha256.New, prk, info, 32); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("setup/aes-256-key-schedule+gcm", func(b *testing.B) {
		b.ReportAllocs()
		key := make([]byte, 32)
		for b.Loop() {
			blk, _ := aes.NewCipher(key)
			if _, err := cipher.NewGCM(blk); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("total/xaes", func(b *testing.B) {
		b.ReportAllocs()
		var s scratch
		for b.Loop() {
			x.aead(&s, nonce)
		}
	})
}
