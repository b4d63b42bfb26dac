package kms

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// backend is one KEK implementation under the shared conformance tests.
type backend struct {
	kek KEK
	// destroyedState is the state right after Destroy (local: DESTROYED;
	// gcp: DESTROY_SCHEDULED).
	destroyedState VersionState
	// finishDestroy makes scheduled destructions complete (gcp: advance the
	// fake clock; local: nothing to do).
	finishDestroy func()
}

func wantKind(t *testing.T, err, kind error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", kind)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("got error %q, want kind %q", err, kind)
	}
	var ke *Error
	if !errors.As(err, &ke) {
		t.Fatalf("error %q is %T, want *kms.Error", err, err)
	}
}

func mustVersions(t *testing.T, k KEK) []Version {
	t.Helper()
	vs, err := k.Versions(context.Background())
	if err != nil {
		t.Fatalf("Versions: %v", err)
	}
	return vs
}

func findVersion(t *testing.T, vs []Version, name string) Version {
	t.Helper()
	for _, v := range vs {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("version %s not in %v", name, vs)
	return Version{}
}

// runConformance checks the KEK contract every backend must meet.
func runConformance(t *testing.T, newBackend func(t *testing.T) backend) {
	ctx := context.Background()
	dek := bytes.Repeat([]byte{0xd7}, 32)
	aad := []byte("pgcrypt.data_keys id=42 family=pii v=1")

	t.Run("Initial", func(t *testing.T) {
		b := newBackend(t)
		p, err := b.kek.Primary(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := b.kek.Name() + "/cryptoKeyVersions/1"; p != want {
			t.Fatalf("Primary = %q, want %q", p, want)
		}
		vs := mustVersions(t, b.kek)
		if len(vs) != 1 || vs[0].Name != p || !vs[0].Primary || vs[0].State != StateEnabled || vs[0].CreateTime.IsZero() {
			t.Fatalf("Versions = %+v, want one enabled primary %s", vs, p)
		}
		if vs[0].ID() != "1" {
			t.Fatalf("ID = %q", vs[0].ID())
		}
	})

	t.Run("WrapUnwrap", func(t *testing.T) {
		b := newBackend(t)
		blob, version, err := b.kek.Wrap(ctx, dek, aad)
		if err != nil {
			t.Fatal(err)
		}
		if p, _ := b.kek.Primary(ctx); version != p {
			t.Fatalf("Wrap version = %q, want primary %q", version, p)
		}
		if bytes.Contains(blob, dek) {
			t.Fatal("blob contains the plaintext")
		}
		got, usedPrimary, err := b.kek.Unwrap(ctx, blob, aad)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, dek) || !usedPrimary {
			t.Fatalf("Unwrap = %x, %v; want %x, true", got, usedPrimary, dek)
		}
		// Empty AAD round-trips too.
		blob2, _, err := b.kek.Wrap(ctx, dek, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, _, err := b.kek.Unwrap(ctx, blob2, nil); err != nil || !bytes.Equal(got, dek) {
			t.Fatalf("Unwrap without aad = %x, %v", got, err)
		}
		// Randomized: two wraps differ.
		blob3, _, _ := b.kek.Wrap(ctx, dek, aad)
		if bytes.Equal(blob, blob3) {
			t.Fatal("two wraps gave the same blob")
		}
	})

	t.Run("WrongAADOrTampered", func(t *testing.T) {
		b := newBackend(t)
		blob, _, err := b.kek.Wrap(ctx, dek, aad)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = b.kek.Unwrap(ctx, blob, []byte("pgcrypt.data_keys id=43 family=pii v=1"))
		wantKind(t, err, ErrInvalidCiphertext)
		_, _, err = b.kek.Unwrap(ctx, blob, nil)
		wantKind(t, err, ErrInvalidCiphertext)
		for _, i := range []int{len(blob) - 1, len(blob) / 2} {
			bad := bytes.Clone(blob)
			bad[i] ^= 0x01
			_, _, err = b.kek.Unwrap(ctx, bad, aad)
			wantKind(t, err, ErrInvalidCiphertext)
		}
		_, _, err = b.kek.Unwrap(ctx, blob[:len(blob)-1], aad)
		wantKind(t, err, ErrInvalidCiphertext)
		_, _, err = b.kek.Unwrap(ctx, nil, aad)
		if err == nil || IsRetryable(err) {
			t.Fatalf("Unwrap(nil) = %v, want a non-retryable error", err)
		}
	})

	t.Run("RotationKeepsOldBlobs", func(t *testing.T) {
		b := newBackend(t)
		blob1, v1, err := b.kek.Wrap(ctx, dek, aad)
		if err != nil {
			t.Fatal(err)
		}
		v2, err := b.kek.(Rotator).Rotate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v2 == v1 || !strings.HasPrefix(v2, b.kek.Name()+"/cryptoKeyVersions/") || VersionID(v2) != "2" {
			t.Fatalf("Rotate = %q (old %q)", v2, v1)
		}
		if p, _ := b.kek.Primary(ctx); p != v2 {
			t.Fatalf("Primary after rotate = %q, want %q", p, v2)
		}
		got, usedPrimary, err := b.kek.Unwrap(ctx, blob1, aad)
		if err != nil || !bytes.Equal(got, dek) || usedPrimary {
			t.Fatalf("Unwrap old blob = %x, usedPrimary=%v, %v; want dek, false, nil", got, usedPrimary, err)
		}
		blob2, vw, err := b.kek.Wrap(ctx, dek, aad)
		if err != nil || vw != v2 {
			t.Fatalf("Wrap after rotate = %q, %v; want %q", vw, err, v2)
		}
		if _, usedPrimary, err := b.kek.Unwrap(ctx, blob2, aad); err != nil || !usedPrimary {
			t.Fatalf("Unwrap new blob: usedPrimary=%v, %v", usedPrimary, err)
		}
		vs := mustVersions(t, b.kek)
		if len(vs) != 2 || vs[0].Name != v1 || vs[1].Name != v2 || vs[0].Primary || !vs[1].Primary {
			t.Fatalf("Versions = %+v", vs)
		}
	})

	t.Run("DisableEnable", func(t *testing.T) {
		b := newBackend(t)
		blob1, v1, _ := b.kek.Wrap(ctx, dek, aad)
		if _, err := b.kek.(Rotator).Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.kek.Disable(ctx, v1); err != nil {
			t.Fatal(err)
		}
		if err := b.kek.Disable(ctx, v1); err != nil {
			t.Fatalf("second Disable: %v", err)
		}
		if v := findVersion(t, mustVersions(t, b.kek), v1); v.State != StateDisabled {
			t.Fatalf("state = %s, want DISABLED", v.State)
		}
		_, _, err := b.kek.Unwrap(ctx, blob1, aad)
		wantKind(t, err, ErrVersionDisabled)
		if IsRetryable(err) {
			t.Fatal("disabled version reported retryable")
		}
		if err := b.kek.Enable(ctx, v1); err != nil {
			t.Fatal(err)
		}
		if err := b.kek.Enable(ctx, VersionID(v1)); err != nil {
			t.Fatalf("Enable by bare id: %v", err)
		}
		if got, _, err := b.kek.Unwrap(ctx, blob1, aad); err != nil || !bytes.Equal(got, dek) {
			t.Fatalf("Unwrap after Enable: %v", err)
		}
	})

	t.Run("RefusePrimary", func(t *testing.T) {
		b := newBackend(t)
		p, _ := b.kek.Primary(ctx)
		wantKind(t, b.kek.Disable(ctx, p), ErrPrimaryVersion)
		wantKind(t, b.kek.Destroy(ctx, p), ErrPrimaryVersion)
		if v := findVersion(t, mustVersions(t, b.kek), p); v.State != StateEnabled {
			t.Fatalf("primary state = %s after refused ops", v.State)
		}
		if _, _, err := b.kek.Wrap(ctx, dek, aad); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Destroy", func(t *testing.T) {
		b := newBackend(t)
		blob1, v1, _ := b.kek.Wrap(ctx, dek, aad)
		if _, err := b.kek.(Rotator).Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.kek.Disable(ctx, v1); err != nil {
			t.Fatal(err)
		}
		if err := b.kek.Destroy(ctx, v1); err != nil {
			t.Fatal(err)
		}
		v := findVersion(t, mustVersions(t, b.kek), v1)
		if v.State != b.destroyedState || v.DestroyTime.IsZero() {
			t.Fatalf("after Destroy: %+v, want state %s with a destroy time", v, b.destroyedState)
		}
		_, _, err := b.kek.Unwrap(ctx, blob1, aad)
		wantKind(t, err, ErrVersionDestroyed)
		wantKind(t, b.kek.Disable(ctx, v1), ErrVersionDestroyed)
		if err := b.kek.Destroy(ctx, v1); err != nil {
			t.Fatalf("second Destroy (idempotent): %v", err)
		}
		b.finishDestroy()
		if v := findVersion(t, mustVersions(t, b.kek), v1); v.State != StateDestroyed {
			t.Fatalf("after destruction: state %s", v.State)
		}
		wantKind(t, b.kek.Enable(ctx, v1), ErrVersionDestroyed)
		_, _, err = b.kek.Unwrap(ctx, blob1, aad)
		wantKind(t, err, ErrVersionDestroyed)
		if err := b.kek.Destroy(ctx, v1); err != nil {
			t.Fatalf("Destroy of destroyed version: %v", err)
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		b := newBackend(t)
		wantKind(t, b.kek.Disable(ctx, b.kek.Name()+"/cryptoKeyVersions/99"), ErrNotFound)
		wantKind(t, b.kek.Enable(ctx, "99"), ErrNotFound)
		wantKind(t, b.kek.Destroy(ctx, "projects/x/locations/l/keyRings/r/cryptoKeys/other/cryptoKeyVersions/1"), ErrNotFound)
	})

	t.Run("Closed", func(t *testing.T) {
		b := newBackend(t)
		if err := b.kek.Close(); err != nil {
			t.Fatal(err)
		}
		_, _, err := b.kek.Wrap(ctx, dek, aad)
		wantKind(t, err, ErrClosed)
	})
}
