package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// scrape serves m's registry through promhttp, as internal/admin does, and
// returns the exposition text.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// exercise calls every recording method once, with plausible values.
func exercise(m *Metrics) {
	m.ConnAccepted()
	m.ConnAccepted()
	m.ConnRefused(RefuseTooMany)
	m.ConnClosed()
	m.Statement(Passthrough)
	m.Statement(Encrypted)
	m.Statement(Refused)
	m.Refusal("0A000", RefusalStatement)
	m.ServerError("23505")
	m.ServerError("")
	m.Encrypted(4, 40*time.Microsecond)
	m.Decrypted(2, 10*time.Microsecond)
	m.ColumnEncrypted("public.users.ssn", 1)
	m.ColumnDecrypted("public.users.ssn", 1)
	m.DEKCacheHit()
	m.DEKCacheMiss()
	m.RotationPass(true, time.Unix(1700000000, 0), 2*time.Second, 3, 0, 0)
	m.SetDEKsByKEKVersion(map[string]int{"local:k1/cryptoKeyVersions/2": 5})
	m.SetPolicy("0123456789abcdef", 1, 3)
	m.PolicyReload(true)
	m.PolicyReload(false)
	m.UpstreamDialError(DialConnect)
	m.BytesRelayed(100, 2000)
	m.AuditWritten(1)
	m.AuditDropped()
	m.AuditWriteError()
}

func TestScrape(t *testing.T) {
	m := New(Options{Version: "v1.2.3", PerColumn: true})
	exercise(m)
	k := InstrumentKEK(m, "local", &fakeKEK{})
	if _, _, err := k.Unwrap(context.Background(), nil, nil); err != nil {
		t.Fatal(err)
	}
	out := scrape(t, m)

	for _, want := range []string{
		`pgcrypt_build_info{goversion="go`,
		`pgcrypt_build_info{goversion=`,
		`version="v1.2.3"} 1`,
		`pgcrypt_connections_open 1`,
		`pgcrypt_connections_accepted_total 2`,
		`pgcrypt_connections_closed_total 1`,
		`pgcrypt_connections_refused_total{reason="too_many"} 1`,
		`pgcrypt_connections_refused_total{reason="tls_required"} 0`,
		`pgcrypt_statements_total{outcome="encrypted"} 1`,
		`pgcrypt_refusals_total{reason="statement",sqlstate="0A000"} 1`,
		`pgcrypt_server_errors_total{class="23"} 1`,
		`pgcrypt_server_errors_total{class="other"} 1`,
		`pgcrypt_values_encrypted_total 4`,
		`pgcrypt_values_decrypted_total 2`,
		`pgcrypt_encrypt_value_duration_seconds_bucket{le="1e-05"} 1`,
		`pgcrypt_encrypt_value_duration_seconds_count 1`,
		`pgcrypt_column_values_total{column="public.users.ssn",op="encrypt"} 1`,
		`pgcrypt_kms_requests_total{backend="local",op="unwrap",result="ok"} 1`,
		`pgcrypt_kms_request_duration_seconds_count{backend="local",op="unwrap"} 1`,
		`pgcrypt_kms_unwrap_not_primary_total{backend="local"} 1`,
		`pgcrypt_dek_cache_hits_total 1`,
		`pgcrypt_dek_cache_misses_total 1`,
		`pgcrypt_rotation_passes_total{result="ok"} 1`,
		`pgcrypt_rotation_last_success_timestamp_seconds 1.7e+09`,
		`pgcrypt_rotation_deks_rewrapped_total 3`,
		`pgcrypt_rotation_deks{kek="local:k1",version="2"} 5`,
		`pgcrypt_policy_info{digest="0123456789abcdef"} 1`,
		`pgcrypt_policy_columns 3`,
		`pgcrypt_policy_reloads_total{result="error"} 1`,
		`pgcrypt_upstream_dial_errors_total{stage="connect"} 1`,
		`pgcrypt_relayed_bytes_total{direction="server_to_client"} 2000`,
		`pgcrypt_audit_events_dropped_total 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if t.Failed() {
		t.Log(out)
	}
}

// TestDocListsEveryMetric keeps doc.go and the registry in step, both ways.
func TestDocListsEveryMetric(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`pgcrypt_[a-z_]+[a-z]`)
	documented := map[string]bool{}
	for _, n := range name.FindAllString(string(doc), -1) {
		documented[n] = true
	}

	m := New(Options{PerColumn: true})
	exercise(m)
	InstrumentKEK(m, "local", &fakeKEK{}).Primary(context.Background())
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for _, f := range fams {
		registered[f.GetName()] = true
		if !documented[f.GetName()] {
			t.Errorf("%s is registered but not documented in doc.go", f.GetName())
		}
		if !strings.HasPrefix(f.GetName(), Namespace+"_") {
			t.Errorf("%s lacks the %s_ prefix", f.GetName(), Namespace)
		}
	}
	for n := range documented {
		if !registered[n] {
			t.Errorf("doc.go documents %s, which is not registered", n)
		}
	}
}

// TestNilSafe calls every method on a nil *Metrics: none may panic.
func TestNilSafe(t *testing.T) {
	var m *Metrics
	exercise(m)
	if m.Registry() != nil {
		t.Error("nil Metrics has a registry")
	}
	inner := &fakeKEK{}
	if k := InstrumentKEK(m, "local", inner); k != kms.KEK(inner) {
		t.Error("InstrumentKEK(nil, …) did not return the KEK as it is")
	}
}

func TestLabelGuards(t *testing.T) {
	m := New(Options{PerColumn: true})
	// Not SQLSTATEs: each counts as "other", never as a label of its own.
	for _, bad := range []string{"", "4200", "42P01x", "42p01", "secret value", "'; DROP"} {
		m.Refusal(bad, RefusalInternal)
	}
	for i := range maxRefusalCodes + 10 {
		m.Refusal(strings.ToUpper(strings.Repeat("0", 5-len(itoa36(i)))+itoa36(i)), RefusalStatement)
	}
	m.Refusal("42P01", RefusalStatement) // a 75th code: other
	for i := range maxColumns + 5 {
		m.ColumnEncrypted("s.t.c"+itoa36(i), 1)
	}
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		switch f.GetName() {
		case "pgcrypt_refusals_total":
			codes := map[string]float64{}
			for _, s := range f.GetMetric() {
				for _, l := range s.GetLabel() {
					if l.GetName() == "sqlstate" {
						codes[l.GetValue()] += s.GetCounter().GetValue()
					}
				}
			}
			if len(codes) != maxRefusalCodes+1 {
				t.Errorf("refusals has %d sqlstate values, want %d + other", len(codes), maxRefusalCodes)
			}
			if got, want := codes["other"], float64(6+10+1); got != want {
				t.Errorf("other = %v, want %v", got, want)
			}
		case "pgcrypt_column_values_total":
			if n := len(f.GetMetric()); n != maxColumns+1 {
				t.Errorf("column_values has %d series, want %d + other", n, maxColumns)
			}
		}
	}
	// Out-of-range enum values are ignored, not panics.
	m.ConnRefused(RefuseReason(200))
	m.Statement(Outcome(200))
	m.UpstreamDialError(DialStage(200))
	if RefusalReason(200).String() != "other" {
		t.Error("unknown refusal reason not labelled other")
	}
}

func itoa36(i int) string {
	const digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 36 {
		b = append([]byte{digits[i%36]}, b...)
	}
	return string(b)
}

func TestPerColumnOff(t *testing.T) {
	m := New(Options{})
	m.ColumnEncrypted("public.users.ssn", 1)
	if strings.Contains(scrape(t, m), "pgcrypt_column_values_total") {
		t.Error("per-column series without Options.PerColumn")
	}
}

func TestResetSeries(t *testing.T) {
	m := New(Options{})
	m.SetPolicy("aaaa", 1, 1)
	m.SetPolicy("bbbb", 2, 2)
	m.SetDEKsByKEKVersion(map[string]int{"k/cryptoKeyVersions/1": 1})
	m.SetDEKsByKEKVersion(map[string]int{"k/cryptoKeyVersions/2": 1})
	out := scrape(t, m)
	for _, stale := range []string{`digest="aaaa"`, `version="1"`} {
		if strings.Contains(out, stale) {
			t.Errorf("stale series %s still exported", stale)
		}
	}
	for _, want := range []string{`pgcrypt_policy_info{digest="bbbb"} 1`, `pgcrypt_rotation_deks{kek="k",version="2"} 1`} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %s", want)
		}
	}
}

func TestInstrumentKEK(t *testing.T) {
	ctx := context.Background()
	m := New(Options{})
	plain := InstrumentKEK(m, "gcp", &fakeKEK{err: errors.New("unavailable")})
	if _, ok := plain.(kms.Rotator); ok {
		t.Error("wrapper of a KEK without Rotate implements kms.Rotator")
	}
	if _, _, err := plain.Wrap(ctx, []byte("k"), nil); err == nil {
		t.Error("error not passed through")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, _ = InstrumentKEK(m, "gcp", &fakeKEK{err: context.Canceled}).Primary(cctx)

	rot := InstrumentKEK(m, "local", &fakeRotator{})
	r, ok := rot.(kms.Rotator)
	if !ok {
		t.Fatal("wrapper of a Rotator does not implement kms.Rotator")
	}
	if v, err := r.Rotate(ctx); err != nil || v != "k/cryptoKeyVersions/2" {
		t.Errorf("Rotate = %q, %v", v, err)
	}
	if rot.Name() != "k" {
		t.Errorf("Name = %q", rot.Name())
	}
	for _, call := range []func() error{
		func() error { _, err := rot.Versions(ctx); return err },
		func() error { return rot.Disable(ctx, "1") },
		func() error { return rot.Enable(ctx, "1") },
		func() error { return rot.Destroy(ctx, "1") },
		rot.Close,
	} {
		if err := call(); err != nil {
			t.Error(err)
		}
	}
	out := scrape(t, m)
	for _, want := range []string{
		`pgcrypt_kms_requests_total{backend="gcp",op="wrap",result="error"} 1`,
		`pgcrypt_kms_requests_total{backend="gcp",op="primary",result="canceled"} 1`,
		`pgcrypt_kms_requests_total{backend="local",op="rotate",result="ok"} 1`,
		`pgcrypt_kms_requests_total{backend="local",op="destroy",result="ok"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %s", want)
		}
	}
}

func TestLabelValuesAreFixed(t *testing.T) {
	for _, set := range [][]string{refuseNames[:], outcomeNames[:], refusalNames[:], dialNames[:], opNames[:]} {
		for _, n := range set {
			if !regexp.MustCompile(`^[a-z_]+$`).MatchString(n) {
				t.Errorf("label value %q is not a short lowercase word", n)
			}
		}
		if slices.Contains(set, "") {
			t.Error("empty label value")
		}
	}
}

type fakeKEK struct{ err error }

func (f *fakeKEK) Name() string { return "k" }
func (f *fakeKEK) Wrap(context.Context, []byte, []byte) ([]byte, string, error) {
	return []byte("blob"), "k/cryptoKeyVersions/1", f.err
}
func (f *fakeKEK) Unwrap(context.Context, []byte, []byte) ([]byte, bool, error) {
	return []byte("dek"), false, f.err
}
func (f *fakeKEK) Primary(context.Context) (string, error) { return "k/cryptoKeyVersions/1", f.err }
func (f *fakeKEK) Versions(context.Context) ([]kms.Version, error) {
	return []kms.Version{{Name: "k/cryptoKeyVersions/1", State: kms.StateEnabled, Primary: true}}, f.err
}
func (f *fakeKEK) Disable(context.Context, string) error { return f.err }
func (f *fakeKEK) Enable(context.Context, string) error  { return f.err }
func (f *fakeKEK) Destroy(context.Context, string) error { return f.err }
func (f *fakeKEK) Close() error                          { return nil }

type fakeRotator struct{ fakeKEK }

func (f *fakeRotator) Rotate(context.Context) (string, error) { return "k/cryptoKeyVersions/2", nil }

func BenchmarkEncrypted(b *testing.B) {
	m := New(Options{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Encrypted(3, 3*time.Microsecond)
			m.BytesRelayed(120, 0)
		}
	})
}

func BenchmarkEncryptedNil(b *testing.B) {
	var m *Metrics
	b.ReportAllocs()
	for b.Loop() {
		m.Encrypted(3, 3*time.Microsecond)
		m.BytesRelayed(120, 0)
	}
}
