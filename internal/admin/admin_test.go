package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
	"github.com/pgcrypt/pgcrypt-proxy/metrics"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func readyz(t *testing.T, url string) (int, Report) {
	t.Helper()
	code, body := get(t, url+"/readyz")
	var rep Report
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		t.Fatalf("/readyz body is not JSON: %v\n%s", err, body)
	}
	return code, rep
}

func TestHealthzAndMetrics(t *testing.T) {
	m := metrics.New(metrics.Options{Version: "test"})
	m.ConnAccepted()
	s := New(Config{Gatherer: m.Registry()})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()

	if code, body := get(t, ts.URL+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	code, body := get(t, ts.URL+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		`pgcrypt_build_info{goversion=`,
		`pgcrypt_connections_open 1`,
		`go_goroutines `,
		`process_open_fds `,
		`promhttp_metric_handler_requests_total`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if code, _ := get(t, ts.URL+"/nope"); code != http.StatusNotFound {
		t.Errorf("/nope = %d, want 404", code)
	}
	resp, err := http.Post(ts.URL+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz = %d, want 405", resp.StatusCode)
	}
}

func TestMetricsWithoutRegistry(t *testing.T) {
	// Metrics off: a nil *Metrics has a nil *Registry, which in the
	// Gatherer interface is not a nil interface. New must cope.
	var m *metrics.Metrics
	s := New(Config{Gatherer: m.Registry()})
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	if code, body := get(t, ts.URL+"/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d", code)
	}
}

func TestReadyzFlips(t *testing.T) {
	s := New(Config{})
	var up atomic.Bool
	s.Register("upstream", func(context.Context) error {
		if !up.Load() {
			return errors.New("upstream 127.0.0.1:1: connection refused")
		}
		return nil
	})
	s.Register("policy", func(context.Context) error { return nil })
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()

	code, rep := readyz(t, ts.URL)
	if code != http.StatusServiceUnavailable || rep.Status != "not ready" {
		t.Errorf("down: /readyz = %d %q, want 503 not ready", code, rep.Status)
	}
	if c := rep.Checks["upstream"]; c.OK || !strings.Contains(c.Error, "connection refused") {
		t.Errorf("upstream check = %+v", c)
	}
	if c := rep.Checks["policy"]; !c.OK || c.Error != "" {
		t.Errorf("policy check = %+v", c)
	}

	up.Store(true)
	code, rep = readyz(t, ts.URL)
	if code != http.StatusOK || rep.Status != "ready" || len(rep.Checks) != 2 {
		t.Errorf("up: /readyz = %d %+v, want 200 ready with 2 checks", code, rep)
	}

	s.SetDraining()
	code, rep = readyz(t, ts.URL)
	if code != http.StatusServiceUnavailable || rep.Status != "draining" {
		t.Errorf("draining: /readyz = %d %q", code, rep.Status)
	}
	if code, _ := get(t, ts.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("draining: /healthz = %d, want 200", code)
	}
}

func TestReadyzNoChecks(t *testing.T) {
	ts := httptest.NewServer(New(Config{}).Handler())
	defer ts.Close()
	if code, rep := readyz(t, ts.URL); code != http.StatusOK || rep.Status != "ready" {
		t.Errorf("/readyz = %d %+v", code, rep)
	}
}

func TestReadyzCheckTimeoutAndPanic(t *testing.T) {
	s := New(Config{CheckTimeout: 100 * time.Millisecond})
	release := make(chan struct{})
	defer close(release)
	s.Register("stuck", func(context.Context) error { <-release; return nil }) // ignores ctx
	s.Register("buggy", func(context.Context) error { panic("boom") })
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()

	start := time.Now()
	code, rep := readyz(t, ts.URL)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("/readyz took %s with a 100ms check timeout", d)
	}
	if code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d", code)
	}
	if c := rep.Checks["stuck"]; c.OK || !strings.Contains(c.Error, "timed out") {
		t.Errorf("stuck = %+v", c)
	}
	if c := rep.Checks["buggy"]; c.OK || !strings.Contains(c.Error, "panicked") {
		t.Errorf("buggy = %+v", c)
	}
}

func TestReadyzSharesEvaluation(t *testing.T) {
	s := New(Config{})
	var calls atomic.Int32
	gate := make(chan struct{})
	s.Register("slow", func(ctx context.Context) error {
		calls.Add(1)
		<-gate
		return nil
	})
	done := make(chan bool, 5)
	for range 5 {
		go func() { ok, _ := s.Ready(context.Background()); done <- ok }()
	}
	time.Sleep(100 * time.Millisecond)
	close(gate)
	for range 5 {
		if !<-done {
			t.Error("not ready")
		}
	}
	if n := calls.Load(); n > 2 {
		t.Errorf("5 concurrent /readyz ran the check %d times", n)
	}
}

func TestServeAndShutdown(t *testing.T) {
	s := New(Config{Logger: zerolog.Nop()})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(t.Context(), ln) }()
	if code, _ := get(t, "http://"+ln.Addr().String()+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve after Shutdown = %v, want nil", err)
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/healthz"); err == nil {
		t.Error("listener still answers after Shutdown")
	}

	var disabled *Server
	disabled.Register("x", func(context.Context) error { return nil })
	disabled.SetDraining()
	if err := disabled.Shutdown(ctx); err != nil {
		t.Error(err)
	}
}

func TestCached(t *testing.T) {
	var calls atomic.Int32
	var fail atomic.Bool
	c := Cached(func(context.Context) error {
		calls.Add(1)
		if fail.Load() {
			return errors.New("down")
		}
		return nil
	}, 200*time.Millisecond)
	ctx := context.Background()
	for range 3 {
		if err := c(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("3 calls within the TTL reached the check %d times", n)
	}
	fail.Store(true)
	if err := c(ctx); err != nil {
		t.Error("cached success not reused")
	}
	time.Sleep(250 * time.Millisecond)
	if err := c(ctx); err == nil {
		t.Error("TTL passed but the failure was not seen")
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	blocked := Cached(func(ctx context.Context) error { return ctx.Err() }, time.Hour)
	if err := blocked(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller got %v", err)
	}
	if err := blocked(ctx); err != nil {
		t.Errorf("a caller's cancellation was cached: %v", err)
	}
}

func TestKMSCheck(t *testing.T) {
	k := &fakeKEK{}
	c := KMSCheck(k, time.Hour)
	for range 3 {
		if err := c(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := k.calls.Load(); n != 1 {
		t.Errorf("KMS Primary called %d times within the cache TTL", n)
	}
	k2 := &fakeKEK{err: errors.New("PermissionDenied")}
	if err := KMSCheck(k2, time.Hour)(context.Background()); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Errorf("KMSCheck = %v", err)
	}
}

// TestUpstreamCheckNotPostgres: a listener that is not PostgreSQL, and no
// listener at all.
func TestUpstreamCheckNotPostgres(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := UpstreamCheck(ln.Addr().String(), nil)(ctx); err == nil || !strings.Contains(err.Error(), "not a PostgreSQL server") {
		t.Errorf("HTTP server: %v", err)
	}

	// A port nobody listens on (the listener above, closed).
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	dead.Close()
	if err := UpstreamCheck(addr, nil)(ctx); err == nil {
		t.Error("closed port: no error")
	}

	// A server that accepts and never answers: bounded by ctx.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	sctx, scancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer scancel()
	start := time.Now()
	if err := UpstreamCheck(silent.Addr().String(), nil)(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent server: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("silent server check took %s", d)
	}
}

// TestUpstreamReadinessPostgres runs the check against a real PostgreSQL:
// ready, unready while it is stopped, ready again when it returns, and
// PostgreSQL's log stays free of the probes.
func TestUpstreamReadinessPostgres(t *testing.T) {
	pg := pgtest.New(t, pgtest.Options{})
	s := New(Config{CheckTimeout: 2 * time.Second})
	s.Register("upstream", UpstreamCheck(pg.Addr(), pg.TLSConfig()))
	s.Register("upstream_plain", UpstreamCheck(pg.Addr(), nil))
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()

	// Probes that succeed leave nothing in PostgreSQL's log. (A bare
	// SSLRequest followed by a close would log "could not accept SSL
	// connection: EOF detected" each time.)
	quiet := func(probe func()) {
		t.Helper()
		before := readLog(t, pg.LogFile())
		probe()
		time.Sleep(200 * time.Millisecond) // let the backends exit and log
		after := readLog(t, pg.LogFile())
		if !strings.HasPrefix(after, before) {
			t.Fatal("server log was rewritten")
		}
		if added := after[len(before):]; added != "" {
			t.Errorf("readiness probes made PostgreSQL log:\n%s", added)
		}
	}
	quiet(func() {
		for range 5 {
			if code, rep := readyz(t, ts.URL); code != http.StatusOK {
				t.Fatalf("/readyz = %d %+v", code, rep)
			}
		}
	})

	// verify-full against the wrong name fails: readiness checks TLS as
	// the proxy's sessions do.
	bad := pg.TLSConfig()
	bad.ServerName = "db.invalid"
	if err := UpstreamCheck(pg.Addr(), bad)(t.Context()); err == nil || !strings.Contains(err.Error(), "TLS handshake") {
		t.Errorf("wrong server name: %v", err)
	}

	if err := pg.StopServer(t.Context()); err != nil {
		t.Fatal(err)
	}
	code, rep := readyz(t, ts.URL)
	if code != http.StatusServiceUnavailable || rep.Checks["upstream"].OK || rep.Checks["upstream_plain"].OK {
		t.Errorf("stopped: /readyz = %d %+v", code, rep)
	}
	if err := pg.StartServer(t.Context()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // startup lines
	quiet(func() {
		if code, rep := readyz(t, ts.URL); code != http.StatusOK {
			t.Errorf("restarted: /readyz = %d %+v", code, rep)
		}
	})
}

func readLog(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type fakeKEK struct {
	kms.KEK // unused methods panic
	err     error
	calls   atomic.Int32
}

func (f *fakeKEK) Name() string { return "local:k" }
func (f *fakeKEK) Primary(context.Context) (string, error) {
	f.calls.Add(1)
	return "local:k/cryptoKeyVersions/1", f.err
}
