package crypto

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"testing"

	daead "github.com/tink-crypto/tink-go/v2/daead/subtle"
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

// detBenchSizes are the value sizes of the deterministic-mode benchmarks:
// typical short column values, one mid-size and one multi-KB value.
var detBenchSizes = []int{16, 32, 256, 4096}

// BenchmarkDeterministic is Key.Encrypt and Key.Decrypt in
// ModeDeterministic with spare capacity in dst (the COPY path's shape).
func BenchmarkDeterministic(b *testing.B) {
	k := testKey(b, 1, 1)
	for _, n := range detBenchSizes {
		pt := make([]byte, n)
		b.Run(fmt.Sprintf("Encrypt/%d", n), func(b *testing.B) {
			buf := make([]byte, 0, n+Overhead(ModeDeterministic))
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if buf, err = k.Encrypt(buf[:0], ModeDeterministic, pt, benchAAD, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("Decrypt/%d", n), func(b *testing.B) {
			env := seal(b, k, ModeDeterministic, pt, benchAAD)
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

// BenchmarkSIV compares the AES-SIV primitive, siv.seal and siv.open, with
// tink-go's daead/subtle.AESSIV that deterministic mode used before, on a
// 64-byte key and an AD shaped like Key's (8-byte header || column
// identity). The ours-miss runs rotate over 4096 distinct ADs, so every
// call misses the AD cache and refills it: the worst case, with one
// allocation for the new entry.
func BenchmarkSIV(b *testing.B) {
	key := bytes.Repeat([]byte{1}, sivKeySize)
	s, err := newSIV(key)
	if err != nil {
		b.Fatal(err)
	}
	tk, err := daead.NewAESSIV(key)
	if err != nil {
		b.Fatal(err)
	}
	ad := append([]byte{Magic0, Magic1, Version1, byte(ModeDeterministic), 0, 0, 0, 1}, benchAAD...)
	ads := make([][]byte, 4096)
	for i := range ads {
		ads[i] = fmt.Appendf(bytes.Clone(ad), ".%d", i)
	}
	for _, n := range detBenchSizes {
		pt := make([]byte, n)
		ct := s.seal(nil, pt, ad)
		buf := make([]byte, 0, len(ct))
		bench := func(name string, f func(i int)) {
			b.Run(fmt.Sprintf("%s/%d", name, n), func(b *testing.B) {
				b.SetBytes(int64(n))
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					f(i)
					i++
				}
			})
		}
		bench("seal/ours", func(int) { buf = s.seal(buf[:0], pt, ad) })
		bench("seal/ours-miss", func(i int) { buf = s.seal(buf[:0], pt, ads[i%len(ads)]) })
		bench("seal/tink", func(int) {
			if _, err := tk.EncryptDeterministically(pt, ad); err != nil {
				b.Fatal(err)
			}
		})
		bench("open/ours", func(int) {
			if buf, err = s.open(buf[:0], ct, ad); err != nil {
				b.Fatal(err)
			}
		})
		bench("open/tink", func(int) {
			if _, err := tk.DecryptDeterministically(ct, ad); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkSIVCTR measures the two CTR routes of siv.xorKeyStream, to place
// ctrBulkMin: one Block.Encrypt call per block (allocation-free) against
// cipher.NewCTR (one allocation, bulk assembly).
func BenchmarkSIVCTR(b *testing.B) {
	s, err := newSIV(make([]byte, sivKeySize))
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{16, 32, 64, 128, 192, 256, 384, 512, 1024, 4096} {
		src, dst, w := make([]byte, n), make([]byte, n), make([]byte, aes.BlockSize)
		var q [aes.BlockSize]byte
		b.Run(fmt.Sprintf("blocks/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				s.ctrBlocks(dst, src, q, w)
			}
		})
		b.Run(fmt.Sprintf("NewCTR/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				copy(w, q[:])
				cipher.NewCTR(s.ctr, w).XORKeyStream(dst, src)
			}
		})
	}
}
