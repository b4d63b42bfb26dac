package kms

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	kmsapi "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"golang.org/x/time/rate"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// GCP defaults.
const (
	DefaultCallTimeout    = 10 * time.Second
	DefaultRateLimit      = 100 // calls per second
	DefaultBurst          = 10
	DefaultMaxAttempts    = 5
	DefaultBackoffInitial = 100 * time.Millisecond
	DefaultBackoffMax     = 5 * time.Second
)

// GCPOptions configure the Cloud KMS backend.
type GCPOptions struct {
	// Key is the CryptoKey resource name
	// projects/P/locations/L/keyRings/R/cryptoKeys/K (purpose ENCRYPT_DECRYPT).
	Key string
	// Endpoint overrides the API endpoint (host:port), e.g. an emulator.
	Endpoint string
	// ClientOptions are appended to the client's options (credentials,
	// option.WithoutAuthentication and an insecure dial option for tests).
	ClientOptions []option.ClientOption
	// Client, if set, is used instead of dialing one; Close leaves it open.
	Client *kmsapi.KeyManagementClient

	// CallTimeout bounds each attempt of each RPC (default 10s).
	CallTimeout time.Duration
	// RateLimit is the sustained rate of RPC attempts per second across all
	// callers of this KEK (default 100; negative: unlimited). Burst is the
	// token bucket's depth (default 10).
	RateLimit float64
	Burst     int
	// MaxAttempts bounds the attempts of a retryable RPC (default 5; 1
	// disables retries). BackoffInitial and BackoffMax shape the exponential
	// backoff (doubling, full jitter) between attempts (defaults 100ms, 5s).
	MaxAttempts    int
	BackoffInitial time.Duration
	BackoffMax     time.Duration
}

// GCP is the Cloud KMS KEK backend. The key material never leaves Cloud KMS;
// Wrap and Unwrap are Encrypt and Decrypt RPCs with every CRC32C field checked.
type GCP struct {
	key        string
	client     *kmsapi.KeyManagementClient
	ownsClient bool
	limiter    *rate.Limiter
	timeout    time.Duration
	attempts   int
	backoff0   time.Duration
	backoffMax time.Duration
	closed     atomic.Bool
}

var (
	_ KEK     = (*GCP)(nil)
	_ Rotator = (*GCP)(nil)
)

var cryptoKeyPattern = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$`)

// NewGCP returns a Cloud KMS KEK. It dials the API (lazily, as the client
// library does) but makes no RPC; the first call reveals a missing key or
// permission.
func NewGCP(ctx context.Context, opts GCPOptions) (*GCP, error) {
	if !cryptoKeyPattern.MatchString(opts.Key) {
		return nil, &Error{Op: "new gcp kek", Key: opts.Key, Kind: ErrInvalidArgument,
			Err: errors.New("key must be projects/P/locations/L/keyRings/R/cryptoKeys/K")}
	}
	g := &GCP{
		key:        opts.Key,
		client:     opts.Client,
		timeout:    opts.CallTimeout,
		attempts:   opts.MaxAttempts,
		backoff0:   opts.BackoffInitial,
		backoffMax: opts.BackoffMax,
	}
	if g.timeout <= 0 {
		g.timeout = DefaultCallTimeout
	}
	if g.attempts <= 0 {
		g.attempts = DefaultMaxAttempts
	}
	if g.backoff0 <= 0 {
		g.backoff0 = DefaultBackoffInitial
	}
	if g.backoffMax <= 0 {
		g.backoffMax = DefaultBackoffMax
	}
	limit, burst := rate.Limit(opts.RateLimit), opts.Burst
	switch {
	case opts.RateLimit < 0:
		limit = rate.Inf
	case opts.RateLimit == 0:
		limit = DefaultRateLimit
	}
	if burst <= 0 {
		burst = DefaultBurst
	}
	g.limiter = rate.NewLimiter(limit, burst)
	if g.client == nil {
		var copts []option.ClientOption
		if opts.Endpoint != "" {
			copts = append(copts, option.WithEndpoint(opts.Endpoint))
		}
		copts = append(copts, opts.ClientOptions...)
		c, err := kmsapi.NewKeyManagementClient(ctx, copts...)
		if err != nil {
			return nil, &Error{Op: "new gcp kek", Key: opts.Key, Kind: ErrBackend, Err: err}
		}
		g.client, g.ownsClient = c, true
	}
	return g, nil
}

// Name returns the CryptoKey resource name.
func (g *GCP) Name() string { return g.key }

// Close closes the client if NewGCP created it.
func (g *GCP) Close() error {
	if g.closed.Swap(true) || !g.ownsClient {
		return nil
	}
	return g.client.Close()
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func crc32c(b []byte) int64 { return int64(crc32.Checksum(b, crcTable)) }

// noGaxRetry turns off the client library's own retries: this package
// retries itself, so that attempts are rate-limited, counted and bounded.
var noGaxRetry = gax.WithRetry(func() gax.Retryer { return nil })

// call runs fn with the rate limit, a per-attempt timeout and, when retry is
// set, bounded exponential backoff with full jitter on transient errors and
// checksum mismatches.
func (g *GCP) call(ctx context.Context, op, version string, retry bool, fn func(ctx context.Context) error) error {
	if g.closed.Load() {
		return &Error{Op: op, Key: g.key, Version: version, Kind: ErrClosed}
	}
	for attempt := 1; ; attempt++ {
		if err := g.limiter.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return &Error{Op: op, Key: g.key, Version: version, Kind: ErrTransient, Err: fmt.Errorf("rate limit: %w", err)}
		}
		actx, cancel := context.WithTimeout(ctx, g.timeout)
		err := fn(actx)
		cancel()
		if err == nil {
			return nil
		}
		kerr := g.classify(op, version, err)
		if !retry || !kerr.Retryable() || attempt >= g.attempts || ctx.Err() != nil {
			if attempt > 1 {
				kerr.Err = fmt.Errorf("after %d attempts: %w", attempt, kerr.Err)
			}
			return kerr
		}
		d := min(g.backoffMax, g.backoff0<<min(attempt-1, 30))
		d = rand.N(d) + 1
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return kerr
		case <-t.C:
		}
	}
}

var stateInMessage = regexp.MustCompile(`current state is:? ([A-Z_]+)`)

// classify maps an RPC error to an *Error of the right kind.
func (g *GCP) classify(op, version string, err error) *Error {
	var ke *Error
	if errors.As(err, &ke) {
		return ke
	}
	e := &Error{Op: op, Key: g.key, Version: version, Err: err}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		e.Kind = ErrTransient
		return e
	}
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.NotFound:
		e.Kind = ErrNotFound
	case codes.PermissionDenied, codes.Unauthenticated:
		e.Kind = ErrPermission
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Internal, codes.Aborted, codes.Canceled:
		e.Kind = ErrTransient
	case codes.InvalidArgument:
		msg := strings.ToLower(st.Message())
		switch {
		case strings.Contains(msg, "checksum") || strings.Contains(msg, "crc32c"):
			e.Kind = ErrChecksum
		case op == "unwrap":
			e.Kind = ErrInvalidCiphertext
		default:
			e.Kind = ErrInvalidArgument
		}
	case codes.FailedPrecondition:
		e.Kind = ErrFailedPrecondition
		if m := stateInMessage.FindStringSubmatch(st.Message()); m != nil {
			switch m[1] {
			case "DISABLED":
				e.Kind = ErrVersionDisabled
			case "DESTROYED", "DESTROY_SCHEDULED":
				e.Kind = ErrVersionDestroyed
			}
		}
	default:
		e.Kind = ErrBackend
	}
	return e
}

func (g *GCP) checksumErr(op, version, what string) *Error {
	return &Error{Op: op, Key: g.key, Version: version, Kind: ErrChecksum, Err: errors.New(what)}
}

// Wrap calls Encrypt on the CryptoKey (Cloud KMS uses its primary) and returns
// the ciphertext and EncryptResponse.name, the version actually used.
func (g *GCP) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, string, error) {
	req := &kmspb.EncryptRequest{
		Name:            g.key,
		Plaintext:       plaintext,
		PlaintextCrc32C: wrapperspb.Int64(crc32c(plaintext)),
	}
	if len(aad) > 0 {
		req.AdditionalAuthenticatedData = aad
		req.AdditionalAuthenticatedDataCrc32C = wrapperspb.Int64(crc32c(aad))
	}
	var resp *kmspb.EncryptResponse
	err := g.call(ctx, "wrap", "", true, func(ctx context.Context) error {
		r, err := g.client.Encrypt(ctx, req, noGaxRetry)
		if err != nil {
			return err
		}
		switch {
		case !r.GetVerifiedPlaintextCrc32C():
			return g.checksumErr("wrap", "", "Cloud KMS did not verify plaintext_crc32c (request corrupted in transit)")
		case req.AdditionalAuthenticatedDataCrc32C != nil && !r.GetVerifiedAdditionalAuthenticatedDataCrc32C():
			return g.checksumErr("wrap", "", "Cloud KMS did not verify additional_authenticated_data_crc32c (request corrupted in transit)")
		case r.GetCiphertextCrc32C() == nil || r.GetCiphertextCrc32C().GetValue() != crc32c(r.GetCiphertext()):
			return g.checksumErr("wrap", "", "ciphertext_crc32c does not match the ciphertext (response corrupted in transit)")
		case !strings.HasPrefix(r.GetName(), g.key+versionSep):
			return &Error{Op: "wrap", Key: g.key, Kind: ErrBackend,
				Err: fmt.Errorf("EncryptResponse names version %q of another key", r.GetName())}
		}
		resp = r
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return resp.GetCiphertext(), resp.GetName(), nil
}

// Unwrap calls Decrypt on the CryptoKey. Cloud KMS finds the version from the
// ciphertext and does not name it; usedPrimary is DecryptResponse.used_primary.
func (g *GCP) Unwrap(ctx context.Context, blob, aad []byte) ([]byte, bool, error) {
	req := &kmspb.DecryptRequest{
		Name:             g.key,
		Ciphertext:       blob,
		CiphertextCrc32C: wrapperspb.Int64(crc32c(blob)),
	}
	if len(aad) > 0 {
		req.AdditionalAuthenticatedData = aad
		req.AdditionalAuthenticatedDataCrc32C = wrapperspb.Int64(crc32c(aad))
	}
	var resp *kmspb.DecryptResponse
	err := g.call(ctx, "unwrap", "", true, func(ctx context.Context) error {
		r, err := g.client.Decrypt(ctx, req, noGaxRetry)
		if err != nil {
			return err
		}
		if r.GetPlaintextCrc32C() == nil || r.GetPlaintextCrc32C().GetValue() != crc32c(r.GetPlaintext()) {
			clear(r.GetPlaintext())
			return g.checksumErr("unwrap", "", "plaintext_crc32c does not match the plaintext (response corrupted in transit)")
		}
		resp = r
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return resp.GetPlaintext(), resp.GetUsedPrimary(), nil
}

func (g *GCP) getKey(ctx context.Context, op string) (*kmspb.CryptoKey, error) {
	var ck *kmspb.CryptoKey
	err := g.call(ctx, op, "", true, func(ctx context.Context) (err error) {
		ck, err = g.client.GetCryptoKey(ctx, &kmspb.GetCryptoKeyRequest{Name: g.key}, noGaxRetry)
		return err
	})
	return ck, err
}

func (g *GCP) getVersion(ctx context.Context, op, version string) (*kmspb.CryptoKeyVersion, error) {
	var v *kmspb.CryptoKeyVersion
	err := g.call(ctx, op, version, true, func(ctx context.Context) (err error) {
		v, err = g.client.GetCryptoKeyVersion(ctx, &kmspb.GetCryptoKeyVersionRequest{Name: version}, noGaxRetry)
		return err
	})
	return v, err
}

// Primary returns the CryptoKey's primary version (GetCryptoKey).
func (g *GCP) Primary(ctx context.Context) (string, error) {
	ck, err := g.getKey(ctx, "primary")
	if err != nil {
		return "", err
	}
	if ck.GetPrimary().GetName() == "" {
		return "", &Error{Op: "primary", Key: g.key, Kind: ErrFailedPrecondition,
			Err: fmt.Errorf("key has no primary version (purpose %s; need ENCRYPT_DECRYPT)", ck.GetPurpose())}
	}
	return ck.GetPrimary().GetName(), nil
}

func convertState(s kmspb.CryptoKeyVersion_CryptoKeyVersionState) VersionState {
	switch s {
	case kmspb.CryptoKeyVersion_ENABLED:
		return StateEnabled
	case kmspb.CryptoKeyVersion_DISABLED:
		return StateDisabled
	case kmspb.CryptoKeyVersion_DESTROY_SCHEDULED:
		return StateDestroyScheduled
	case kmspb.CryptoKeyVersion_DESTROYED:
		return StateDestroyed
	}
	return StateUnknown
}

func convertVersion(v *kmspb.CryptoKeyVersion, primary string) Version {
	out := Version{Name: v.GetName(), State: convertState(v.GetState()), Primary: v.GetName() == primary}
	if v.GetCreateTime() != nil {
		out.CreateTime = v.GetCreateTime().AsTime()
	}
	switch {
	case v.GetState() == kmspb.CryptoKeyVersion_DESTROYED && v.GetDestroyEventTime() != nil:
		out.DestroyTime = v.GetDestroyEventTime().AsTime()
	case v.GetDestroyTime() != nil:
		out.DestroyTime = v.GetDestroyTime().AsTime()
	}
	return out
}

// Versions lists the versions (ListCryptoKeyVersions, FULL view not needed)
// and marks the primary (GetCryptoKey). A retried listing restarts from the
// first page.
func (g *GCP) Versions(ctx context.Context) ([]Version, error) {
	ck, err := g.getKey(ctx, "versions")
	if err != nil {
		return nil, err
	}
	var out []Version
	err = g.call(ctx, "versions", "", true, func(ctx context.Context) error {
		out = out[:0]
		it := g.client.ListCryptoKeyVersions(ctx, &kmspb.ListCryptoKeyVersionsRequest{Parent: g.key, PageSize: 1000}, noGaxRetry)
		for {
			v, err := it.Next()
			if errors.Is(err, iterator.Done) {
				return nil
			}
			if err != nil {
				return err
			}
			out = append(out, convertVersion(v, ck.GetPrimary().GetName()))
		}
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return versionLess(out[i].Name, out[j].Name) })
	return out, nil
}

func versionLess(a, b string) bool {
	ia, erra := strconv.ParseUint(VersionID(a), 10, 64)
	ib, errb := strconv.ParseUint(VersionID(b), 10, 64)
	if erra == nil && errb == nil {
		return ia < ib
	}
	return a < b
}

func (g *GCP) fullVersion(op, version string) (string, error) {
	id, err := resolveVersion(g.key, version)
	if err != nil {
		return "", &Error{Op: op, Key: g.key, Version: version, Kind: ErrNotFound, Err: err}
	}
	return VersionName(g.key, id), nil
}

func (g *GCP) setState(ctx context.Context, op, version string, s kmspb.CryptoKeyVersion_CryptoKeyVersionState) error {
	return g.call(ctx, op, version, true, func(ctx context.Context) error {
		_, err := g.client.UpdateCryptoKeyVersion(ctx, &kmspb.UpdateCryptoKeyVersionRequest{
			CryptoKeyVersion: &kmspb.CryptoKeyVersion{Name: version, State: s},
			UpdateMask:       &fieldmaskpb.FieldMask{Paths: []string{"state"}},
		}, noGaxRetry)
		return err
	})
}

// refusePrimary fails with ErrPrimaryVersion if version is the primary.
func (g *GCP) refusePrimary(ctx context.Context, op, version string) error {
	ck, err := g.getKey(ctx, op)
	if err != nil {
		return err
	}
	if ck.GetPrimary().GetName() == version {
		return &Error{Op: op, Key: g.key, Version: version, Kind: ErrPrimaryVersion}
	}
	return nil
}

// Disable sets a non-primary version DISABLED (UpdateCryptoKeyVersion).
func (g *GCP) Disable(ctx context.Context, version string) error {
	version, err := g.fullVersion("disable", version)
	if err != nil {
		return err
	}
	v, err := g.getVersion(ctx, "disable", version)
	if err != nil {
		return err
	}
	switch v.GetState() {
	case kmspb.CryptoKeyVersion_DISABLED:
		return nil
	case kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, kmspb.CryptoKeyVersion_DESTROYED:
		return &Error{Op: "disable", Key: g.key, Version: version, Kind: ErrVersionDestroyed}
	}
	if err := g.refusePrimary(ctx, "disable", version); err != nil {
		return err
	}
	return g.setState(ctx, "disable", version, kmspb.CryptoKeyVersion_DISABLED)
}

// Enable sets a version ENABLED, restoring it first if it is scheduled for
// destruction (RestoreCryptoKeyVersion).
func (g *GCP) Enable(ctx context.Context, version string) error {
	version, err := g.fullVersion("enable", version)
	if err != nil {
		return err
	}
	v, err := g.getVersion(ctx, "enable", version)
	if err != nil {
		return err
	}
	switch v.GetState() {
	case kmspb.CryptoKeyVersion_ENABLED:
		return nil
	case kmspb.CryptoKeyVersion_DESTROYED:
		return &Error{Op: "enable", Key: g.key, Version: version, Kind: ErrVersionDestroyed}
	case kmspb.CryptoKeyVersion_DESTROY_SCHEDULED:
		err := g.call(ctx, "enable", version, true, func(ctx context.Context) error {
			_, err := g.client.RestoreCryptoKeyVersion(ctx, &kmspb.RestoreCryptoKeyVersionRequest{Name: version}, noGaxRetry)
			return err
		})
		if err != nil {
			return err
		}
	}
	return g.setState(ctx, "enable", version, kmspb.CryptoKeyVersion_ENABLED)
}

// Destroy schedules destruction of a non-primary version
// (DestroyCryptoKeyVersion); Cloud KMS destroys the material after the key's
// destroy_scheduled_duration. Already scheduled or destroyed: no-op.
func (g *GCP) Destroy(ctx context.Context, version string) error {
	version, err := g.fullVersion("destroy", version)
	if err != nil {
		return err
	}
	if err := g.refusePrimary(ctx, "destroy", version); err != nil {
		return err
	}
	err = g.call(ctx, "destroy", version, true, func(ctx context.Context) error {
		_, err := g.client.DestroyCryptoKeyVersion(ctx, &kmspb.DestroyCryptoKeyVersionRequest{Name: version}, noGaxRetry)
		return err
	})
	if err == nil || !errors.Is(err, ErrFailedPrecondition) && !errors.Is(err, ErrVersionDestroyed) {
		return err
	}
	// Perhaps an earlier attempt (or another replica) already did it.
	v, gerr := g.getVersion(ctx, "destroy", version)
	if gerr == nil {
		switch v.GetState() {
		case kmspb.CryptoKeyVersion_DESTROY_SCHEDULED, kmspb.CryptoKeyVersion_DESTROYED:
			return nil
		}
	}
	return err
}

// Rotate creates a new version (CreateCryptoKeyVersion, not retried: a retry
// could create two) and makes it primary (UpdateCryptoKeyPrimaryVersion).
func (g *GCP) Rotate(ctx context.Context) (string, error) {
	var v *kmspb.CryptoKeyVersion
	err := g.call(ctx, "rotate", "", false, func(ctx context.Context) (err error) {
		v, err = g.client.CreateCryptoKeyVersion(ctx, &kmspb.CreateCryptoKeyVersionRequest{
			Parent: g.key, CryptoKeyVersion: &kmspb.CryptoKeyVersion{}}, noGaxRetry)
		return err
	})
	if err != nil {
		return "", err
	}
	id := VersionID(v.GetName())
	err = g.call(ctx, "rotate", v.GetName(), true, func(ctx context.Context) error {
		_, err := g.client.UpdateCryptoKeyPrimaryVersion(ctx, &kmspb.UpdateCryptoKeyPrimaryVersionRequest{
			Name: g.key, CryptoKeyVersionId: id}, noGaxRetry)
		return err
	})
	if err != nil {
		return "", err
	}
	return v.GetName(), nil
}
