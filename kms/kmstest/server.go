// Package kmstest runs a fake Cloud KMS gRPC server for tests, so that code
// under test drives the real cloud.google.com/go/kms client against it, the
// way net/http/httptest serves real HTTP.
//
// The fake implements the symmetric ENCRYPT_DECRYPT subset of
// google.cloud.kms.v1.KeyManagementService: key rings, crypto keys, versions
// and their lifecycle (ENABLED, DISABLED, DESTROY_SCHEDULED → DESTROYED on a
// fake clock, restore), the primary version, and Encrypt/Decrypt with real
// AES-256-GCM under per-version random keys and every CRC32C field. Its
// ciphertext embeds the version id, as Cloud KMS's does, because Decrypt is
// not told the version. Error codes and messages follow Cloud KMS where the
// client depends on them (FAILED_PRECONDITION "… is not enabled, current state
// is: DISABLED.").
//
// Test hooks: AutoRotate (what rotation_period does), Advance (the clock that
// completes scheduled destruction), Inject/FailNext/CorruptNextCRC/SetLatency
// (faults), and Calls (per-method call counters, so tests can count KMS
// round trips and prove caching or rate limits).
package kmstest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// DefaultDestroyScheduledDuration is Cloud KMS's default time between
// DestroyCryptoKeyVersion and the actual destruction.
const DefaultDestroyScheduledDuration = 30 * 24 * time.Hour

// Fault is an injected failure or distortion of calls to the fake.
type Fault struct {
	// Method is the RPC's short name ("Encrypt", "GetCryptoKey"); "" matches
	// every method.
	Method string
	// Times is how many matching calls the fault affects; negative: all.
	// Zero is treated as 1.
	Times int
	// Code, if not codes.OK, makes the call fail with this status.
	Code codes.Code
	// Latency delays the call (before it runs); the call fails with
	// DEADLINE_EXCEEDED or CANCELLED if the caller's context ends first.
	Latency time.Duration
	// CorruptCRC corrupts the response's CRC32C (Encrypt: ciphertext_crc32c;
	// Decrypt: plaintext_crc32c), as a corruption in transit would.
	CorruptCRC bool
	// Unverified clears EncryptResponse.verified_*_crc32c, as Cloud KMS does
	// when the request arrived corrupted.
	Unverified bool
}

// Server is a fake Cloud KMS. All methods are safe for concurrent use.
type Server struct {
	lis  net.Listener
	gs   *grpc.Server
	done chan struct{}

	mu     sync.Mutex
	now    time.Time
	rings  map[string]time.Time
	keys   map[string]*fakeKey
	faults []*Fault
	calls  map[string]int
}

type fakeKey struct {
	name        string
	createTime  time.Time
	primary     int // version id; 0: none
	versions    []*fakeVersion
	destroyWait time.Duration
}

type fakeVersion struct {
	id               int
	state            kmspb.CryptoKeyVersion_CryptoKeyVersionState
	material         []byte
	createTime       time.Time
	destroyTime      time.Time
	destroyEventTime time.Time
}

// NewServer starts a fake Cloud KMS on 127.0.0.1 (random port).
func NewServer() (*Server, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{
		lis:   lis,
		done:  make(chan struct{}),
		now:   time.Now().UTC().Truncate(time.Microsecond),
		rings: map[string]time.Time{},
		keys:  map[string]*fakeKey{},
		calls: map[string]int{},
	}
	s.gs = grpc.NewServer(grpc.UnaryInterceptor(s.intercept))
	kmspb.RegisterKeyManagementServiceServer(s.gs, &service{s: s})
	go func() {
		defer close(s.done)
		_ = s.gs.Serve(lis)
	}()
	return s, nil
}

// Start starts a server that is closed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := NewServer()
	if err != nil {
		t.Fatalf("kmstest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Close stops the server, failing calls in flight.
func (s *Server) Close() {
	s.gs.Stop()
	<-s.done
}

// ClientOptions are the options that point the real Cloud KMS client at this
// server: its endpoint, no authentication, and a plaintext connection.
func (s *Server) ClientOptions() []option.ClientOption {
	return []option.ClientOption{
		option.WithEndpoint(s.Addr()),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}
}

// CreateKey creates a symmetric ENCRYPT_DECRYPT CryptoKey named
// projects/P/locations/L/keyRings/R/cryptoKeys/K (and its key ring if
// missing) with version 1 as the primary, and returns that version's name.
func (s *Server) CreateKey(name string) (string, error) {
	parts := strings.Split(name, "/")
	if len(parts) != 8 || parts[0] != "projects" || parts[2] != "locations" || parts[4] != "keyRings" || parts[6] != "cryptoKeys" {
		return "", fmt.Errorf("kmstest: bad key name %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ring := strings.Join(parts[:6], "/")
	if _, ok := s.rings[ring]; !ok {
		s.rings[ring] = s.now
	}
	if _, ok := s.keys[name]; ok {
		return "", fmt.Errorf("kmstest: key %s exists", name)
	}
	k := &fakeKey{name: name, createTime: s.now, destroyWait: DefaultDestroyScheduledDuration}
	s.keys[name] = k
	v, err := s.addVersionLocked(k, kmspb.CryptoKeyVersion_ENABLED)
	if err != nil {
		return "", err
	}
	k.primary = v.id
	return k.versionName(v.id), nil
}

// AutoRotate does what Cloud KMS does when a key's rotation_period elapses:
// a new version is created and made the primary. It returns its name.
func (s *Server) AutoRotate(key string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[key]
	if !ok {
		return "", fmt.Errorf("kmstest: no key %s", key)
	}
	v, err := s.addVersionLocked(k, kmspb.CryptoKeyVersion_ENABLED)
	if err != nil {
		return "", err
	}
	k.primary = v.id
	return k.versionName(v.id), nil
}

// SetDestroyScheduledDuration sets how long after DestroyCryptoKeyVersion a
// key's versions are destroyed (default 30 days of the fake clock).
func (s *Server) SetDestroyScheduledDuration(key string, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[key]
	if !ok {
		return fmt.Errorf("kmstest: no key %s", key)
	}
	k.destroyWait = d
	return nil
}

// Now is the fake clock's time.
func (s *Server) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now
}

// Advance moves the fake clock forward; versions whose destroy_time passed
// become DESTROYED and lose their material.
func (s *Server) Advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = s.now.Add(d)
	for _, k := range s.keys {
		for _, v := range k.versions {
			if v.state == kmspb.CryptoKeyVersion_DESTROY_SCHEDULED && !s.now.Before(v.destroyTime) {
				v.state = kmspb.CryptoKeyVersion_DESTROYED
				clear(v.material)
				v.material = nil
				v.destroyEventTime = s.now
			}
		}
	}
}

// HasMaterial reports whether a version (full name) still has key material.
func (s *Server) HasMaterial(version string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, v, err := s.versionLocked(version)
	return err == nil && v.material != nil
}

// Inject adds a fault. Faults are consumed in the order they were added; one
// call is affected by at most one fault.
func (s *Server) Inject(f Fault) {
	if f.Times == 0 {
		f.Times = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// FailNext makes the next n calls of method ("" for any) fail with code.
func (s *Server) FailNext(method string, n int, code codes.Code) {
	s.Inject(Fault{Method: method, Times: n, Code: code})
}

// CorruptNextCRC corrupts the response CRC32C of the next n calls of method.
func (s *Server) CorruptNextCRC(method string, n int) {
	s.Inject(Fault{Method: method, Times: n, CorruptCRC: true})
}

// SetLatency delays every call of method ("" for any) by d until ClearFaults.
func (s *Server) SetLatency(method string, d time.Duration) {
	s.Inject(Fault{Method: method, Times: -1, Latency: d})
}

// ClearFaults removes every pending fault and latency.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Calls returns how many calls of method (short name, e.g. "Decrypt") the
// server received, including failed ones; "" counts all methods.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if method != "" {
		return s.calls[method]
	}
	n := 0
	for _, c := range s.calls {
		n += c
	}
	return n
}

// ResetCalls zeroes the call counters.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.calls)
}

func (s *Server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method := path.Base(info.FullMethod)
	var f Fault
	s.mu.Lock()
	s.calls[method]++
	for i, p := range s.faults {
		if p.Method != "" && p.Method != method {
			continue
		}
		f = *p
		if p.Times > 0 {
			p.Times--
			if p.Times == 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
		}
		break
	}
	s.mu.Unlock()
	if f.Latency > 0 {
		t := time.NewTimer(f.Latency)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-t.C:
		}
	}
	if f.Code != codes.OK {
		return nil, status.Errorf(f.Code, "kmstest: injected %s fault", f.Code)
	}
	resp, err := handler(ctx, req)
	if err != nil {
		return resp, err
	}
	switch r := resp.(type) {
	case *kmspb.EncryptResponse:
		if f.CorruptCRC {
			r.CiphertextCrc32C = wrapperspb.Int64(r.GetCiphertextCrc32C().GetValue() ^ 1)
		}
		if f.Unverified {
			r.VerifiedPlaintextCrc32C = false
			r.VerifiedAdditionalAuthenticatedDataCrc32C = false
		}
	case *kmspb.DecryptResponse:
		if f.CorruptCRC {
			r.PlaintextCrc32C = wrapperspb.Int64(r.GetPlaintextCrc32C().GetValue() ^ 1)
		}
	}
	return resp, nil
}

func (k *fakeKey) versionName(id int) string {
	return k.name + "/cryptoKeyVersions/" + strconv.Itoa(id)
}

func (k *fakeKey) version(id int) *fakeVersion {
	if id < 1 || id > len(k.versions) {
		return nil
	}
	return k.versions[id-1]
}

func (s *Server) addVersionLocked(k *fakeKey, state kmspb.CryptoKeyVersion_CryptoKeyVersionState) (*fakeVersion, error) {
	m := make([]byte, 32)
	if _, err := rand.Read(m); err != nil {
		return nil, err
	}
	v := &fakeVersion{id: len(k.versions) + 1, state: state, material: m, createTime: s.now}
	k.versions = append(k.versions, v)
	return v, nil
}

func (s *Server) keyLocked(name string) (*fakeKey, error) {
	k, ok := s.keys[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s not found.", name)
	}
	return k, nil
}

func (s *Server) versionLocked(name string) (*fakeKey, *fakeVersion, error) {
	i := strings.LastIndex(name, "/cryptoKeyVersions/")
	if i < 0 {
		return nil, nil, status.Errorf(codes.InvalidArgument, "%s is not a CryptoKeyVersion name.", name)
	}
	k, err := s.keyLocked(name[:i])
	if err != nil {
		return nil, nil, status.Errorf(codes.NotFound, "%s not found.", name)
	}
	id, err := strconv.Atoi(name[i+len("/cryptoKeyVersions/"):])
	v := k.version(id)
	if err != nil || v == nil {
		return nil, nil, status.Errorf(codes.NotFound, "%s not found.", name)
	}
	return k, v, nil
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func (k *fakeKey) versionProto(v *fakeVersion) *kmspb.CryptoKeyVersion {
	return &kmspb.CryptoKeyVersion{
		Name:             k.versionName(v.id),
		State:            v.state,
		ProtectionLevel:  kmspb.ProtectionLevel_SOFTWARE,
		Algorithm:        kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION,
		CreateTime:       ts(v.createTime),
		GenerateTime:     ts(v.createTime),
		DestroyTime:      ts(v.destroyTime),
		DestroyEventTime: ts(v.destroyEventTime),
	}
}

func (k *fakeKey) proto() *kmspb.CryptoKey {
	ck := &kmspb.CryptoKey{
		Name:                     k.name,
		Purpose:                  kmspb.CryptoKey_ENCRYPT_DECRYPT,
		CreateTime:               ts(k.createTime),
		DestroyScheduledDuration: durationpb.New(k.destroyWait),
		VersionTemplate: &kmspb.CryptoKeyVersionTemplate{
			ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
			Algorithm:       kmspb.CryptoKeyVersion_GOOGLE_SYMMETRIC_ENCRYPTION,
		},
	}
	if v := k.version(k.primary); v != nil {
		ck.Primary = k.versionProto(v)
	}
	return ck
}

func notEnabled(name string, state kmspb.CryptoKeyVersion_CryptoKeyVersionState) error {
	return status.Errorf(codes.FailedPrecondition, "%s is not enabled, current state is: %s.", name, state)
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) int64 { return int64(crc32.Checksum(b, crcTable)) }

func checkCRC(field string, data []byte, sum *wrapperspb.Int64Value) error {
	if sum != nil && sum.GetValue() != crc(data) {
		return status.Errorf(codes.InvalidArgument, "The checksum in field %s did not match the data in field %s.",
			field+"_crc32c", field)
	}
	return nil
}

// Fake ciphertext: 0x01 | version id (uint32 BE) | nonce (12) | GCM ct+tag,
// with associated data key name | 0x00 | first 5 bytes | request AAD.
const ctHeader = 5

func sealAAD(key string, header, aad []byte) []byte {
	out := make([]byte, 0, len(key)+1+len(header)+len(aad))
	out = append(append(append(out, key...), 0), header...)
	return append(out, aad...)
}

func gcm(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic("BUG: kmstest: " + err.Error())
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		panic("BUG: kmstest: " + err.Error())
	}
	return a
}

// service implements the gRPC interface on behalf of Server, so that the
// RPC methods do not crowd Server's own API.
type service struct {
	kmspb.UnimplementedKeyManagementServiceServer
	s *Server
}

func (x *service) CreateKeyRing(_ context.Context, req *kmspb.CreateKeyRingRequest) (*kmspb.KeyRing, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.GetKeyRingId() == "" || !strings.HasPrefix(req.GetParent(), "projects/") {
		return nil, status.Error(codes.InvalidArgument, "parent and key_ring_id are required")
	}
	name := req.GetParent() + "/keyRings/" + req.GetKeyRingId()
	if _, ok := s.rings[name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "KeyRing %s already exists.", name)
	}
	s.rings[name] = s.now
	return &kmspb.KeyRing{Name: name, CreateTime: ts(s.now)}, nil
}

func (x *service) GetKeyRing(_ context.Context, req *kmspb.GetKeyRingRequest) (*kmspb.KeyRing, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.rings[req.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s not found.", req.GetName())
	}
	return &kmspb.KeyRing{Name: req.GetName(), CreateTime: ts(t)}, nil
}

func (x *service) CreateCryptoKey(_ context.Context, req *kmspb.CreateCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.rings[req.GetParent()]; !ok {
		return nil, status.Errorf(codes.NotFound, "%s not found.", req.GetParent())
	}
	if req.GetCryptoKeyId() == "" {
		return nil, status.Error(codes.InvalidArgument, "crypto_key_id is required")
	}
	if p := req.GetCryptoKey().GetPurpose(); p != kmspb.CryptoKey_ENCRYPT_DECRYPT {
		return nil, status.Errorf(codes.InvalidArgument, "kmstest supports only ENCRYPT_DECRYPT keys, not %s", p)
	}
	name := req.GetParent() + "/cryptoKeys/" + req.GetCryptoKeyId()
	if _, ok := s.keys[name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "CryptoKey %s already exists.", name)
	}
	k := &fakeKey{name: name, createTime: s.now, destroyWait: DefaultDestroyScheduledDuration}
	if d := req.GetCryptoKey().GetDestroyScheduledDuration(); d != nil {
		k.destroyWait = d.AsDuration()
	}
	if !req.GetSkipInitialVersionCreation() {
		v, err := s.addVersionLocked(k, kmspb.CryptoKeyVersion_ENABLED)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		k.primary = v.id
	}
	s.keys[name] = k
	return k.proto(), nil
}

func (x *service) GetCryptoKey(_ context.Context, req *kmspb.GetCryptoKeyRequest) (*kmspb.CryptoKey, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.keyLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	return k.proto(), nil
}

func (x *service) CreateCryptoKeyVersion(_ context.Context, req *kmspb.CreateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.keyLocked(req.GetParent())
	if err != nil {
		return nil, err
	}
	state := kmspb.CryptoKeyVersion_ENABLED
	switch st := req.GetCryptoKeyVersion().GetState(); st {
	case kmspb.CryptoKeyVersion_CRYPTO_KEY_VERSION_STATE_UNSPECIFIED, kmspb.CryptoKeyVersion_ENABLED:
	case kmspb.CryptoKeyVersion_DISABLED:
		state = st
	default:
		return nil, status.Errorf(codes.InvalidArgument, "cannot create a version in state %s", st)
	}
	v, err := s.addVersionLocked(k, state)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return k.versionProto(v), nil
}

func (x *service) UpdateCryptoKeyPrimaryVersion(_ context.Context, req *kmspb.UpdateCryptoKeyPrimaryVersionRequest) (*kmspb.CryptoKey, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.keyLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	id, err := strconv.Atoi(req.GetCryptoKeyVersionId())
	v := k.version(id)
	if err != nil || v == nil {
		return nil, status.Errorf(codes.NotFound, "%s not found.", k.versionName(id))
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, notEnabled(k.versionName(id), v.state)
	}
	k.primary = id
	return k.proto(), nil
}

func (x *service) GetCryptoKeyVersion(_ context.Context, req *kmspb.GetCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	k, v, err := s.versionLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	return k.versionProto(v), nil
}

func (x *service) ListCryptoKeyVersions(_ context.Context, req *kmspb.ListCryptoKeyVersionsRequest) (*kmspb.ListCryptoKeyVersionsResponse, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	k, err := s.keyLocked(req.GetParent())
	if err != nil {
		return nil, err
	}
	start := 0
	if t := req.GetPageToken(); t != "" {
		if start, err = strconv.Atoi(t); err != nil || start < 0 || start > len(k.versions) {
			return nil, status.Error(codes.InvalidArgument, "invalid page_token")
		}
	}
	size := int(req.GetPageSize())
	if size <= 0 || size > 1000 {
		size = 1000
	}
	end := min(start+size, len(k.versions))
	resp := &kmspb.ListCryptoKeyVersionsResponse{TotalSize: int32(len(k.versions))}
	for _, v := range k.versions[start:end] {
		resp.CryptoKeyVersions = append(resp.CryptoKeyVersions, k.versionProto(v))
	}
	if end < len(k.versions) {
		resp.NextPageToken = strconv.Itoa(end)
	}
	return resp, nil
}

func (x *service) UpdateCryptoKeyVersion(_ context.Context, req *kmspb.UpdateCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := req.GetUpdateMask().GetPaths(); len(p) != 1 || p[0] != "state" {
		return nil, status.Error(codes.InvalidArgument, "kmstest supports update_mask [state] only")
	}
	k, v, err := s.versionLocked(req.GetCryptoKeyVersion().GetName())
	if err != nil {
		return nil, err
	}
	want := req.GetCryptoKeyVersion().GetState()
	if want != kmspb.CryptoKeyVersion_ENABLED && want != kmspb.CryptoKeyVersion_DISABLED {
		return nil, status.Errorf(codes.InvalidArgument, "state can only be set to ENABLED or DISABLED, not %s", want)
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED && v.state != kmspb.CryptoKeyVersion_DISABLED {
		return nil, status.Errorf(codes.FailedPrecondition,
			"%s cannot be updated, current state is: %s.", k.versionName(v.id), v.state)
	}
	v.state = want
	return k.versionProto(v), nil
}

func (x *service) DestroyCryptoKeyVersion(_ context.Context, req *kmspb.DestroyCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	k, v, err := s.versionLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED && v.state != kmspb.CryptoKeyVersion_DISABLED {
		return nil, status.Errorf(codes.FailedPrecondition,
			"%s cannot be destroyed, current state is: %s.", k.versionName(v.id), v.state)
	}
	if v.id == k.primary {
		return nil, status.Errorf(codes.FailedPrecondition, "%s is the primary version and cannot be destroyed.", k.versionName(v.id))
	}
	v.state = kmspb.CryptoKeyVersion_DESTROY_SCHEDULED
	v.destroyTime = s.now.Add(k.destroyWait)
	return k.versionProto(v), nil
}

func (x *service) RestoreCryptoKeyVersion(_ context.Context, req *kmspb.RestoreCryptoKeyVersionRequest) (*kmspb.CryptoKeyVersion, error) {
	s := x.s
	s.mu.Lock()
	defer s.mu.Unlock()
	k, v, err := s.versionLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	if v.state != kmspb.CryptoKeyVersion_DESTROY_SCHEDULED {
		return nil, status.Errorf(codes.FailedPrecondition,
			"%s cannot be restored, current state is: %s.", k.versionName(v.id), v.state)
	}
	v.state = kmspb.CryptoKeyVersion_DISABLED
	v.destroyTime = time.Time{}
	return k.versionProto(v), nil
}

const maxData = 64 << 10

func (x *service) Encrypt(_ context.Context, req *kmspb.EncryptRequest) (*kmspb.EncryptResponse, error) {
	s := x.s
	if len(req.GetPlaintext()) > maxData || len(req.GetAdditionalAuthenticatedData()) > maxData {
		return nil, status.Error(codes.InvalidArgument, "plaintext and additional_authenticated_data are limited to 64 KiB")
	}
	if err := checkCRC("plaintext", req.GetPlaintext(), req.GetPlaintextCrc32C()); err != nil {
		return nil, err
	}
	if err := checkCRC("additional_authenticated_data", req.GetAdditionalAuthenticatedData(), req.GetAdditionalAuthenticatedDataCrc32C()); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var k *fakeKey
	var v *fakeVersion
	var err error
	if strings.Contains(req.GetName(), "/cryptoKeyVersions/") {
		k, v, err = s.versionLocked(req.GetName())
	} else if k, err = s.keyLocked(req.GetName()); err == nil {
		if v = k.version(k.primary); v == nil {
			err = status.Errorf(codes.FailedPrecondition, "%s has no primary version.", k.name)
		}
	}
	if err != nil {
		return nil, err
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, notEnabled(k.versionName(v.id), v.state)
	}
	ct := make([]byte, ctHeader+12, ctHeader+12+len(req.GetPlaintext())+16)
	ct[0] = 1
	binary.BigEndian.PutUint32(ct[1:5], uint32(v.id))
	if _, err := rand.Read(ct[ctHeader:]); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	ct = gcm(v.material).Seal(ct, ct[ctHeader:], req.GetPlaintext(), sealAAD(k.name, ct[:ctHeader], req.GetAdditionalAuthenticatedData()))
	return &kmspb.EncryptResponse{
		Name:                    k.versionName(v.id),
		Ciphertext:              ct,
		CiphertextCrc32C:        wrapperspb.Int64(crc(ct)),
		VerifiedPlaintextCrc32C: req.GetPlaintextCrc32C() != nil,
		VerifiedAdditionalAuthenticatedDataCrc32C: req.GetAdditionalAuthenticatedDataCrc32C() != nil,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}, nil
}

func (x *service) Decrypt(_ context.Context, req *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	s := x.s
	if err := checkCRC("ciphertext", req.GetCiphertext(), req.GetCiphertextCrc32C()); err != nil {
		return nil, err
	}
	if err := checkCRC("additional_authenticated_data", req.GetAdditionalAuthenticatedData(), req.GetAdditionalAuthenticatedDataCrc32C()); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if strings.Contains(req.GetName(), "/cryptoKeyVersions/") {
		return nil, status.Error(codes.InvalidArgument, "Decrypt takes a CryptoKey name, not a CryptoKeyVersion name.")
	}
	k, err := s.keyLocked(req.GetName())
	if err != nil {
		return nil, err
	}
	invalid := status.Error(codes.InvalidArgument, "Decryption failed: the ciphertext is invalid.")
	ct := req.GetCiphertext()
	if len(ct) < ctHeader+12+16 || ct[0] != 1 {
		return nil, invalid
	}
	v := k.version(int(binary.BigEndian.Uint32(ct[1:5])))
	if v == nil {
		return nil, invalid
	}
	if v.state != kmspb.CryptoKeyVersion_ENABLED {
		return nil, notEnabled(k.versionName(v.id), v.state)
	}
	pt, err := gcm(v.material).Open(nil, ct[ctHeader:ctHeader+12], ct[ctHeader+12:], sealAAD(k.name, ct[:ctHeader], req.GetAdditionalAuthenticatedData()))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "Decryption failed: verify that 'name' refers to the correct CryptoKey.")
	}
	return &kmspb.DecryptResponse{
		Plaintext:       pt,
		PlaintextCrc32C: wrapperspb.Int64(crc(pt)),
		UsedPrimary:     v.id == k.primary,
		ProtectionLevel: kmspb.ProtectionLevel_SOFTWARE,
	}, nil
}

// Keys lists the names of the keys (sorted), for debugging tests.
func (s *Server) Keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.keys))
	for n := range s.keys {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
