package metrics

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// KMS operations (label op of pgcrypt_kms_requests_total).
const (
	opWrap = iota
	opUnwrap
	opPrimary
	opVersions
	opDisable
	opEnable
	opDestroy
	opRotate
	numOps
)

var opNames = [numOps]string{"wrap", "unwrap", "primary", "versions", "disable", "enable", "destroy", "rotate"}

// Results of a KMS request (label result): ok, error, or canceled when the
// caller's context was cancelled (not the KMS's fault).
const resultCanceled = "canceled"

type opMetrics struct {
	ok, failed, canceled prometheus.Counter
	seconds              prometheus.Observer
}

func (o *opMetrics) observe(start time.Time, err error) {
	o.seconds.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		o.ok.Inc()
	case errors.Is(err, context.Canceled):
		o.canceled.Inc()
	default:
		o.failed.Inc()
	}
}

// InstrumentKEK wraps k so that every KMS call is counted and timed under
// backend (the config's kms name, e.g. "local" or "gcp"). The result
// implements kms.Rotator exactly when k does. With a nil m, k is returned
// as it is.
func InstrumentKEK(m *Metrics, backend string, k kms.KEK) kms.KEK {
	if m == nil || k == nil {
		return k
	}
	ik := &instrumentedKEK{inner: k, notPrimary: m.kmsNotPrimary.WithLabelValues(backend)}
	for op := range numOps {
		ik.ops[op] = opMetrics{
			ok:       m.kmsRequests.WithLabelValues(backend, opNames[op], resultOK),
			failed:   m.kmsRequests.WithLabelValues(backend, opNames[op], resultError),
			canceled: m.kmsRequests.WithLabelValues(backend, opNames[op], resultCanceled),
			seconds:  m.kmsSeconds.WithLabelValues(backend, opNames[op]),
		}
	}
	if r, ok := k.(kms.Rotator); ok {
		return &instrumentedRotator{instrumentedKEK: ik, rotator: r}
	}
	return ik
}

type instrumentedKEK struct {
	inner      kms.KEK
	ops        [numOps]opMetrics
	notPrimary prometheus.Counter
}

var _ kms.KEK = (*instrumentedKEK)(nil)

func (k *instrumentedKEK) Name() string { return k.inner.Name() }

func (k *instrumentedKEK) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, string, error) {
	start := time.Now()
	blob, version, err := k.inner.Wrap(ctx, plaintext, aad)
	k.ops[opWrap].observe(start, err)
	return blob, version, err
}

func (k *instrumentedKEK) Unwrap(ctx context.Context, blob, aad []byte) ([]byte, bool, error) {
	start := time.Now()
	pt, usedPrimary, err := k.inner.Unwrap(ctx, blob, aad)
	k.ops[opUnwrap].observe(start, err)
	if err == nil && !usedPrimary {
		k.notPrimary.Inc()
	}
	return pt, usedPrimary, err
}

func (k *instrumentedKEK) Primary(ctx context.Context) (string, error) {
	start := time.Now()
	v, err := k.inner.Primary(ctx)
	k.ops[opPrimary].observe(start, err)
	return v, err
}

func (k *instrumentedKEK) Versions(ctx context.Context) ([]kms.Version, error) {
	start := time.Now()
	vs, err := k.inner.Versions(ctx)
	k.ops[opVersions].observe(start, err)
	return vs, err
}

func (k *instrumentedKEK) Disable(ctx context.Context, version string) error {
	start := time.Now()
	err := k.inner.Disable(ctx, version)
	k.ops[opDisable].observe(start, err)
	return err
}

func (k *instrumentedKEK) Enable(ctx context.Context, version string) error {
	start := time.Now()
	err := k.inner.Enable(ctx, version)
	k.ops[opEnable].observe(start, err)
	return err
}

func (k *instrumentedKEK) Destroy(ctx context.Context, version string) error {
	start := time.Now()
	err := k.inner.Destroy(ctx, version)
	k.ops[opDestroy].observe(start, err)
	return err
}

func (k *instrumentedKEK) Close() error { return k.inner.Close() }

// Inner returns the instrumented KEK, for code that needs the concrete
// backend.
func (k *instrumentedKEK) Inner() kms.KEK { return k.inner }

type instrumentedRotator struct {
	*instrumentedKEK
	rotator kms.Rotator
}

var (
	_ kms.KEK     = (*instrumentedRotator)(nil)
	_ kms.Rotator = (*instrumentedRotator)(nil)
)

func (k *instrumentedRotator) Rotate(ctx context.Context) (string, error) {
	start := time.Now()
	v, err := k.rotator.Rotate(ctx)
	k.ops[opRotate].observe(start, err)
	return v, err
}
