package kmstest

import (
	"context"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/iterator"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var noRetry = gax.WithRetry(func() gax.Retryer { return nil })

func client(t *testing.T, s *Server) *kms.KeyManagementClient {
	t.Helper()
	c, err := kms.NewKeyManagementClient(context.Background(), s.ClientOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
}

func c32(b []byte) int64 { return int64(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))) }

func TestLifecycleThroughRealClient(t *testing.T) {
	ctx := context.Background()
	s := Start(t)
	c := client(t, s)

	ring, err := c.CreateKeyRing(ctx, &kmspb.CreateKeyRingRequest{Parent: "projects/p/locations/l", KeyRingId: "r"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateKeyRing(ctx, &kmspb.CreateKeyRingRequest{Parent: "projects/p/locations/l", KeyRingId: "r"})
	wantCode(t, err, codes.AlreadyExists)
	ck, err := c.CreateCryptoKey(ctx, &kmspb.CreateCryptoKeyRequest{Parent: ring.Name, CryptoKeyId: "k",
		CryptoKey: &kmspb.CryptoKey{Purpose: kmspb.CryptoKey_ENCRYPT_DECRYPT}})
	if err != nil {
		t.Fatal(err)
	}
	key := ck.Name
	if key != "projects/p/locations/l/keyRings/r/cryptoKeys/k" || ck.Primary.GetName() != key+"/cryptoKeyVersions/1" {
		t.Fatalf("CreateCryptoKey = %v", ck)
	}

	// Encrypt: every CRC32C field.
	pt, aad := []byte("secret dek"), []byte("aad")
	enc, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: pt, AdditionalAuthenticatedData: aad,
		PlaintextCrc32C: wrapperspb.Int64(c32(pt)), AdditionalAuthenticatedDataCrc32C: wrapperspb.Int64(c32(aad))})
	if err != nil {
		t.Fatal(err)
	}
	if !enc.VerifiedPlaintextCrc32C || !enc.VerifiedAdditionalAuthenticatedDataCrc32C ||
		enc.CiphertextCrc32C.GetValue() != c32(enc.Ciphertext) || enc.Name != key+"/cryptoKeyVersions/1" {
		t.Fatalf("EncryptResponse = %v", enc)
	}
	_, err = c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: pt, PlaintextCrc32C: wrapperspb.Int64(c32(pt) ^ 1)})
	wantCode(t, err, codes.InvalidArgument)

	// Rotation by hand: new version, then primary.
	v2, err := c.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{Parent: key, CryptoKeyVersion: &kmspb.CryptoKeyVersion{}})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := c.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: key}); got.Primary.GetName() == v2.Name {
		t.Fatal("CreateCryptoKeyVersion made the new version primary")
	}
	if _, err := c.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{Name: key, CryptoKeyVersionId: "2"}); err != nil {
		t.Fatal(err)
	}

	dec, err := c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key, Ciphertext: enc.Ciphertext, AdditionalAuthenticatedData: aad,
		CiphertextCrc32C: wrapperspb.Int64(c32(enc.Ciphertext))})
	if err != nil {
		t.Fatal(err)
	}
	if string(dec.Plaintext) != string(pt) || dec.PlaintextCrc32C.GetValue() != c32(pt) || dec.UsedPrimary {
		t.Fatalf("DecryptResponse = %v", dec)
	}
	_, err = c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key, Ciphertext: enc.Ciphertext, AdditionalAuthenticatedData: []byte("other")})
	wantCode(t, err, codes.InvalidArgument)
	_, err = c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key, Ciphertext: enc.Ciphertext, CiphertextCrc32C: wrapperspb.Int64(1)})
	wantCode(t, err, codes.InvalidArgument)

	// Disable → FAILED_PRECONDITION naming the state.
	v1 := key + "/cryptoKeyVersions/1"
	if _, err := c.UpdateCryptoKeyVersion(ctx, &kmspb.UpdateCryptoKeyVersionRequest{
		CryptoKeyVersion: &kmspb.CryptoKeyVersion{Name: v1, State: kmspb.CryptoKeyVersion_DISABLED},
		UpdateMask:       &fieldmaskpb.FieldMask{Paths: []string{"state"}}}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Decrypt(ctx, &kmspb.DecryptRequest{Name: key, Ciphertext: enc.Ciphertext, AdditionalAuthenticatedData: aad})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "current state is: DISABLED") {
		t.Fatalf("message %q", err)
	}

	// Destroy → scheduled → restore → destroy → clock → destroyed.
	if _, err := c.DestroyCryptoKeyVersion(ctx, &kmspb.DestroyCryptoKeyVersionRequest{Name: key + "/cryptoKeyVersions/2"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("destroying the primary: %v", err)
	}
	dv, err := c.DestroyCryptoKeyVersion(ctx, &kmspb.DestroyCryptoKeyVersionRequest{Name: v1})
	if err != nil {
		t.Fatal(err)
	}
	if dv.State != kmspb.CryptoKeyVersion_DESTROY_SCHEDULED || !dv.DestroyTime.AsTime().Equal(s.Now().Add(DefaultDestroyScheduledDuration)) {
		t.Fatalf("destroyed version = %v", dv)
	}
	if rv, err := c.RestoreCryptoKeyVersion(ctx, &kmspb.RestoreCryptoKeyVersionRequest{Name: v1}); err != nil || rv.State != kmspb.CryptoKeyVersion_DISABLED {
		t.Fatalf("restore = %v, %v", rv, err)
	}
	if _, err := c.DestroyCryptoKeyVersion(ctx, &kmspb.DestroyCryptoKeyVersionRequest{Name: v1}); err != nil {
		t.Fatal(err)
	}
	s.Advance(DefaultDestroyScheduledDuration - time.Second)
	if !s.HasMaterial(v1) {
		t.Fatal("destroyed early")
	}
	s.Advance(time.Second)
	if s.HasMaterial(v1) {
		t.Fatal("not destroyed at destroy_time")
	}
	gv, _ := c.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: v1})
	if gv.State != kmspb.CryptoKeyVersion_DESTROYED || gv.DestroyEventTime == nil {
		t.Fatalf("version = %v", gv)
	}
	_, err = c.RestoreCryptoKeyVersion(ctx, &kmspb.RestoreCryptoKeyVersionRequest{Name: v1})
	wantCode(t, err, codes.FailedPrecondition)
}

func TestListPaging(t *testing.T) {
	ctx := context.Background()
	s := Start(t)
	key := "projects/p/locations/l/keyRings/r/cryptoKeys/k"
	if _, err := s.CreateKey(key); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if _, err := s.AutoRotate(key); err != nil {
			t.Fatal(err)
		}
	}
	c := client(t, s)
	it := c.ListCryptoKeyVersions(ctx, &kmspb.ListCryptoKeyVersionsRequest{Parent: key, PageSize: 2})
	var names []string
	for {
		v, err := it.Next()
		if err == iterator.Done {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, v.Name[strings.LastIndex(v.Name, "/")+1:])
	}
	if strings.Join(names, ",") != "1,2,3,4,5" || s.Calls("ListCryptoKeyVersions") != 3 {
		t.Fatalf("listed %v in %d calls", names, s.Calls("ListCryptoKeyVersions"))
	}
	ck, _ := c.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: key})
	if ck.Primary.GetName() != key+"/cryptoKeyVersions/5" {
		t.Fatalf("primary %s", ck.Primary.GetName())
	}
}

func TestFaults(t *testing.T) {
	ctx := context.Background()
	s := Start(t)
	key := "projects/p/locations/l/keyRings/r/cryptoKeys/k"
	s.CreateKey(key)
	c := client(t, s)
	get := func(ctx context.Context) error {
		_, err := c.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: key}, noRetry)
		return err
	}
	s.FailNext("GetCryptoKey", 2, codes.Unavailable)
	s.FailNext("Encrypt", 1, codes.Internal) // does not affect GetCryptoKey
	wantCode(t, get(ctx), codes.Unavailable)
	wantCode(t, get(ctx), codes.Unavailable)
	if err := get(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: []byte("x")}, noRetry)
	wantCode(t, err, codes.Internal)

	s.SetLatency("GetCryptoKey", time.Minute)
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	wantCode(t, get(tctx), codes.DeadlineExceeded)
	s.ClearFaults()
	if err := get(ctx); err != nil {
		t.Fatal(err)
	}

	s.CorruptNextCRC("Encrypt", 1)
	enc, err := c.Encrypt(ctx, &kmspb.EncryptRequest{Name: key, Plaintext: []byte("x")}, noRetry)
	if err != nil || enc.CiphertextCrc32C.GetValue() == c32(enc.Ciphertext) {
		t.Fatalf("CRC not corrupted: %v", err)
	}
	if got := s.Calls("GetCryptoKey"); got != 5 {
		t.Fatalf("GetCryptoKey calls = %d, want 5", got)
	}
	s.ResetCalls()
	if s.Calls("") != 0 {
		t.Fatal("ResetCalls")
	}
}

func TestNewServerClose(t *testing.T) {
	s, err := NewServer()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr = %s", s.Addr())
	}
	s.Close()
}
