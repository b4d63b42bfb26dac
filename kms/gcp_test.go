package kms

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/kms/kmstest"
	"google.golang.org/grpc/codes"
)

const testKey = "projects/p/locations/global/keyRings/r/cryptoKeys/kek"

// newGCPTest starts a fake Cloud KMS with one key and returns a GCP KEK
// driving it through the real client, with fast backoff.
func newGCPTest(t *testing.T, opts GCPOptions) (*GCP, *kmstest.Server) {
	t.Helper()
	srv := kmstest.Start(t)
	if _, err := srv.CreateKey(testKey); err != nil {
		t.Fatal(err)
	}
	if opts.Key == "" {
		opts.Key = testKey
	}
	opts.ClientOptions = append(opts.ClientOptions, srv.ClientOptions()...)
	if opts.BackoffInitial == 0 {
		opts.BackoffInitial = time.Millisecond
		opts.BackoffMax = 5 * time.Millisecond
	}
	if opts.RateLimit == 0 {
		opts.RateLimit = -1
	}
	g, err := NewGCP(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g, srv
}

func TestGCPConformance(t *testing.T) {
	runConformance(t, func(t *testing.T) backend {
		g, srv := newGCPTest(t, GCPOptions{})
		return backend{
			kek:            g,
			destroyedState: StateDestroyScheduled,
			finishDestroy:  func() { srv.Advance(kmstest.DefaultDestroyScheduledDuration) },
		}
	})
}

func TestGCPCallCounts(t *testing.T) {
	ctx := context.Background()
	g, srv := newGCPTest(t, GCPOptions{})
	blob, _, err := g.Wrap(ctx, []byte("dek"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := g.Unwrap(ctx, blob, []byte("aad")); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Primary(ctx); err != nil {
		t.Fatal(err)
	}
	for m, want := range map[string]int{"Encrypt": 1, "Decrypt": 1, "GetCryptoKey": 1, "": 3} {
		if got := srv.Calls(m); got != want {
			t.Errorf("Calls(%q) = %d, want %d", m, got, want)
		}
	}
}

func TestGCPRestoreScheduledDestruction(t *testing.T) {
	ctx := context.Background()
	g, srv := newGCPTest(t, GCPOptions{})
	blob, v1, _ := g.Wrap(ctx, []byte("dek"), nil)
	if _, err := g.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Destroy(ctx, v1); err != nil {
		t.Fatal(err)
	}
	srv.Advance(time.Hour)
	if !srv.HasMaterial(v1) {
		t.Fatal("material gone before destroy_time")
	}
	if err := g.Enable(ctx, v1); err != nil {
		t.Fatalf("Enable of a DESTROY_SCHEDULED version: %v", err)
	}
	if _, _, err := g.Unwrap(ctx, blob, nil); err != nil {
		t.Fatalf("Unwrap after restore: %v", err)
	}
	if err := g.Destroy(ctx, v1); err != nil {
		t.Fatal(err)
	}
	srv.Advance(kmstest.DefaultDestroyScheduledDuration)
	if srv.HasMaterial(v1) {
		t.Fatal("material still there after destroy_time")
	}
	v := findVersion(t, mustVersions(t, g), v1)
	if v.State != StateDestroyed || v.DestroyTime.IsZero() {
		t.Fatalf("version = %+v", v)
	}
}

func TestGCPRefusePrimaryMakesNoDestroyCall(t *testing.T) {
	ctx := context.Background()
	g, srv := newGCPTest(t, GCPOptions{})
	p, _ := g.Primary(ctx)
	wantKind(t, g.Destroy(ctx, p), ErrPrimaryVersion)
	wantKind(t, g.Disable(ctx, p), ErrPrimaryVersion)
	if n := srv.Calls("DestroyCryptoKeyVersion") + srv.Calls("UpdateCryptoKeyVersion"); n != 0 {
		t.Fatalf("%d mutating calls reached the KMS", n)
	}
}

func TestGCPAutoRotation(t *testing.T) {
	ctx := context.Background()
	g, srv := newGCPTest(t, GCPOptions{})
	old, v1, err := g.Wrap(ctx, []byte("dek"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	v2, err := srv.AutoRotate(testKey)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := g.Primary(ctx); p != v2 || p == v1 {
		t.Fatalf("Primary = %q, want %q", p, v2)
	}
	pt, usedPrimary, err := g.Unwrap(ctx, old, []byte("aad"))
	if err != nil || string(pt) != "dek" || usedPrimary {
		t.Fatalf("Unwrap old blob = %q, usedPrimary=%v, %v; want dek, false", pt, usedPrimary, err)
	}
	if _, v, _ := g.Wrap(ctx, []byte("dek"), []byte("aad")); v != v2 {
		t.Fatalf("Wrap after auto-rotation used %q, want %q", v, v2)
	}
}

func TestGCPRetriesTransient(t *testing.T) {
	ctx := context.Background()
	g, srv := newGCPTest(t, GCPOptions{})
	blob, _, _ := g.Wrap(ctx, []byte("dek"), nil)
	for _, code := range []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Internal} {
		srv.ResetCalls()
		srv.FailNext("Decrypt", 2, code)
		if pt, _, err := g.Unwrap(ctx, blob, nil); err != nil || string(pt) != "dek" {
			t.Fatalf("%s twice then success: %q, %v", code, pt, err)
		}
		if n := srv.Calls("Decrypt"); n != 3 {
			t.Fatalf("%s: %d Decrypt calls, want 3", code, n)
		}
	}
}

func TestGCPRetriesBounded(t *testing.T) {
	ctx := context.Background()
	g, srv := newGCPTest(t, GCPOptions{MaxAttempts: 3})
	srv.FailNext("Encrypt", 10, codes.Unavailable)
	_, _, err := g.Wrap(ctx, []byte("dek"), nil)
	wantKind(t, err, ErrTransient)
	if !IsRetryable(err) || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Fatalf("error %q", err)
	}
	if n := srv.Calls("Encrypt"); n != 3 {
		t.Fatalf("%d Encrypt calls, want 3", n)
	}
}

func TestGCPNoRetryOnPermanent(t *testing.T) {
	ctx := context.Background()
	g, srv := newGCPTest(t, GCPOptions{})
	srv.FailNext("Encrypt", 1, codes.PermissionDenied)
	_, _, err := g.Wrap(ctx, []byte("dek"), nil)
	wantKind(t, err, ErrPermission)
	if IsRetryable(err) || srv.Calls("Encrypt") != 1 {
		t.Fatalf("retryable=%v calls=%d", IsRetryable(err), srv.Calls("Encrypt"))
	}
	srv.FailNext("GetCryptoKey", 1, codes.Unauthenticated)
	_, err = g.Primary(ctx)
	wantKind(t, err, ErrPermission)
}

func TestGCPChecksum(t *testing.T) {
	ctx := context.Background()
	g, srv := newGCPTest(t, GCPOptions{MaxAttempts: 3})

	// A corrupted response is discarded and the call retried.
	srv.CorruptNextCRC("Encrypt", 1)
	blob, _, err := g.Wrap(ctx, []byte("dek"), []byte("aad"))
	if err != nil {
		t.Fatalf("Wrap with one corrupted response: %v", err)
	}
	if n := srv.Calls("Encrypt"); n != 2 {
		t.Fatalf("%d Encrypt calls, want 2", n)
	}
	srv.Inject(kmstest.Fault{Method: "Encrypt", Unverified: true})
	if _, _, err := g.Wrap(ctx, []byte("dek"), []byte("aad")); err != nil {
		t.Fatalf("Wrap with one unverified request: %v", err)
	}
	if n := srv.Calls("Encrypt"); n != 4 {
		t.Fatalf("%d Encrypt calls, want 4", n)
	}

	// Persistent corruption is reported, never returned as data.
	srv.CorruptNextCRC("Decrypt", 100)
	pt, _, err := g.Unwrap(ctx, blob, []byte("aad"))
	wantKind(t, err, ErrChecksum)
	if pt != nil || !IsRetryable(err) || srv.Calls("Decrypt") != 3 {
		t.Fatalf("pt=%q retryable=%v calls=%d", pt, IsRetryable(err), srv.Calls("Decrypt"))
	}
	srv.ClearFaults()
	srv.Inject(kmstest.Fault{Method: "Encrypt", Times: -1, Unverified: true})
	_, _, err = g.Wrap(ctx, []byte("dek"), []byte("aad"))
	wantKind(t, err, ErrChecksum)
}

func TestGCPCallTimeout(t *testing.T) {
	g, srv := newGCPTest(t, GCPOptions{CallTimeout: 50 * time.Millisecond, MaxAttempts: 2})
	srv.SetLatency("GetCryptoKey", time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := g.Primary(ctx)
	wantKind(t, err, ErrTransient)
	if ctx.Err() != nil {
		t.Fatal("per-call timeout not honored: the outer deadline expired first")
	}
	if n := srv.Calls("GetCryptoKey"); n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
}

func TestGCPContextEndsRetries(t *testing.T) {
	g, srv := newGCPTest(t, GCPOptions{BackoffInitial: time.Hour, BackoffMax: time.Hour})
	srv.FailNext("GetCryptoKey", 100, codes.Unavailable)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := g.Primary(ctx)
	wantKind(t, err, ErrTransient)
	if n := srv.Calls("GetCryptoKey"); n != 1 {
		t.Fatalf("%d attempts, want 1 (backoff outlives the context)", n)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	_, err = g.Primary(ctx2)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled context: %v", err)
	}
}

func TestGCPRateLimit(t *testing.T) {
	// A bucket of 3 that refills once every 1000 s: exactly 3 calls get
	// through, the 4th waits and gives up when its context ends.
	g, srv := newGCPTest(t, GCPOptions{RateLimit: 0.001, Burst: 3})
	for i := 0; i < 3; i++ {
		if _, err := g.Primary(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := g.Primary(ctx)
	wantKind(t, err, ErrTransient)
	if n := srv.Calls(""); n != 3 {
		t.Fatalf("server saw %d calls, want 3", n)
	}
}

func TestGCPErrors(t *testing.T) {
	ctx := context.Background()
	_, err := NewGCP(ctx, GCPOptions{Key: "projects/p/keyRings/r"})
	wantKind(t, err, ErrInvalidArgument)

	srv := kmstest.Start(t)
	g, err := NewGCP(ctx, GCPOptions{Key: testKey, ClientOptions: srv.ClientOptions(), MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	_, err = g.Primary(ctx)
	wantKind(t, err, ErrNotFound)
	_, _, err = g.Wrap(ctx, []byte("x"), nil)
	wantKind(t, err, ErrNotFound)
	if !strings.Contains(err.Error(), testKey) {
		t.Fatalf("error %q does not name the key", err)
	}

	// Blobs of another key do not decrypt.
	other := "projects/p/locations/global/keyRings/r/cryptoKeys/other"
	if _, err := srv.CreateKey(testKey); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.CreateKey(other); err != nil {
		t.Fatal(err)
	}
	g2, err := NewGCP(ctx, GCPOptions{Key: other, ClientOptions: srv.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	blob, _, err := g2.Wrap(ctx, []byte("dek"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = g.Unwrap(ctx, blob, nil)
	wantKind(t, err, ErrInvalidCiphertext)
	if bytes.Contains([]byte(err.Error()), []byte("dek")) {
		t.Fatal("error contains plaintext")
	}
}
