package admin

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"golang.org/x/sync/singleflight"
)

// Check reports whether one dependency of the proxy is usable: nil when it
// is, an error saying what is wrong when not. It must return when ctx is
// done.
type Check func(ctx context.Context) error

// DefaultCheckTimeout bounds each check of one /readyz evaluation.
const DefaultCheckTimeout = 5 * time.Second

// Config configures New.
type Config struct {
	// Gatherer is the application's registry (metrics.Metrics.Registry());
	// nil serves the runtime metrics only.
	Gatherer prometheus.Gatherer
	// CheckTimeout bounds each readiness check (default DefaultCheckTimeout).
	CheckTimeout time.Duration
	// Logger receives listener errors and readiness transitions.
	Logger zerolog.Logger
}

// Server is the admin HTTP server. Its methods are safe for concurrent use,
// and a nil *Server is a disabled one: Register, SetDraining and Shutdown do
// nothing.
type Server struct {
	cfg     Config
	handler http.Handler
	flight  singleflight.Group // one readiness evaluation at a time, shared

	mu struct {
		sync.Mutex
		checks    map[string]Check
		draining  bool
		lastReady *bool // readiness at the previous evaluation, for transition logs
		srv       *http.Server
		shutdown  bool
	}
}

// New returns a Server; Serve starts it.
func New(cfg Config) *Server {
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = DefaultCheckTimeout
	}
	s := &Server{cfg: cfg}
	s.mu.checks = map[string]Check{}

	// Runtime collectors live in a registry of their own, so the
	// application's registry stays free of them (and of process state) in
	// tests.
	runtime := prometheus.NewRegistry()
	runtime.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	gatherers := prometheus.Gatherers{runtime}
	if r, ok := cfg.Gatherer.(*prometheus.Registry); ok && r == nil {
		cfg.Gatherer = nil // a nil *metrics.Metrics's registry
	}
	if cfg.Gatherer != nil {
		gatherers = append(gatherers, cfg.Gatherer)
	}
	metrics := promhttp.InstrumentMetricHandler(runtime, promhttp.HandlerFor(gatherers, promhttp.HandlerOpts{
		ErrorLog:            promLogger{cfg.Logger},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             20 * time.Second,
	}))

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /{$}", index)
	s.handler = mux
	return s
}

// Handler returns the server's routes, for tests and for mounting elsewhere.
func (s *Server) Handler() http.Handler { return s.handler }

// Register adds or replaces the readiness check called name. Names appear
// in /readyz's body; use short words ("upstream", "kms:gcp", "policy").
func (s *Server) Register(name string, c Check) {
	if s == nil || c == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.checks[name] = c
}

// SetDraining makes /readyz answer 503 from now on, whatever the checks
// say: call it when shutdown starts so load balancers stop sending
// clients while /metrics and /healthz keep answering.
func (s *Server) SetDraining() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.draining = true
}

// Serve serves HTTP on ln until Shutdown, with ctx as every request's base
// context. It returns nil after Shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second, // a scrape, or checks bounded by CheckTimeout
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          log.New(s.cfg.Logger, "admin: ", 0),
	}
	s.mu.Lock()
	if s.mu.shutdown {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.mu.srv = srv
	s.mu.Unlock()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the listener and waits for requests in flight until ctx
// is done (http.Server.Shutdown).
func (s *Server) Shutdown(ctx context.Context) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	s.mu.shutdown = true
	srv := s.mu.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}

func index(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("pgcrypt-proxy admin\n/metrics  Prometheus metrics\n/healthz  200 while the process runs\n/readyz   200 when upstream, KMS and policy are usable (JSON body)\n"))
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte("ok\n"))
}

// Report is /readyz's JSON body.
type Report struct {
	// Status is "ready", "not ready" or "draining".
	Status string                 `json:"status"`
	Checks map[string]CheckResult `json:"checks"`
}

// CheckResult is one check's outcome.
type CheckResult struct {
	OK       bool    `json:"ok"`
	Error    string  `json:"error,omitempty"`
	Duration float64 `json:"duration_seconds"`
}

// Ready runs every registered check concurrently, each bounded by
// Config.CheckTimeout, and reports whether all passed. Concurrent callers
// share one evaluation.
func (s *Server) Ready(ctx context.Context) (bool, Report) {
	ch := s.flight.DoChan("ready", func() (any, error) {
		// Detached from the first caller's context so that one client
		// hanging up does not fail the evaluation others wait for; bounded
		// by CheckTimeout all the same.
		return s.evaluate(context.WithoutCancel(ctx)), nil
	})
	var rep Report
	select {
	case r := <-ch:
		rep = r.Val.(Report)
	case <-ctx.Done():
		return false, Report{Status: "not ready", Checks: map[string]CheckResult{
			"readyz": {Error: ctx.Err().Error()},
		}}
	}
	s.mu.Lock()
	draining := s.mu.draining
	s.mu.Unlock()
	if draining {
		rep.Status = "draining"
	}
	return rep.Status == "ready", rep
}

func (s *Server) evaluate(ctx context.Context) Report {
	s.mu.Lock()
	names := make([]string, 0, len(s.mu.checks))
	checks := make([]Check, 0, len(s.mu.checks))
	for n := range s.mu.checks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		checks = append(checks, s.mu.checks[n])
	}
	s.mu.Unlock()

	results := make([]CheckResult, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			results[i] = s.run(ctx, c)
		})
	}
	wg.Wait()

	rep := Report{Status: "ready", Checks: make(map[string]CheckResult, len(names))}
	for i, n := range names {
		rep.Checks[n] = results[i]
		if !results[i].OK {
			rep.Status = "not ready"
		}
	}
	s.logTransition(rep)
	return rep
}

// run calls one check under CheckTimeout. A check that ignores its context
// is abandoned at the timeout (its goroutine finishes on its own).
func (s *Server) run(ctx context.Context, c Check) (res CheckResult) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CheckTimeout)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- errors.New("BUG: readiness check panicked")
			}
		}()
		done <- c(ctx)
	}()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = errors.New("check timed out after " + s.cfg.CheckTimeout.String())
	}
	res.Duration = time.Since(start).Seconds()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.OK = true
	return res
}

func (s *Server) logTransition(rep Report) {
	ready := rep.Status == "ready"
	s.mu.Lock()
	changed := s.mu.lastReady == nil || *s.mu.lastReady != ready
	s.mu.lastReady = &ready
	s.mu.Unlock()
	if !changed {
		return
	}
	if ready {
		s.cfg.Logger.Info().Msg("ready: every readiness check passes")
		return
	}
	ev := s.cfg.Logger.Warn()
	for n, r := range rep.Checks {
		if !r.OK {
			ev = ev.Str("check_"+n, r.Error)
		}
	}
	ev.Msg("not ready")
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ready, rep := s.Ready(r.Context())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(rep)
}

// promLogger adapts zerolog to promhttp.Logger.
type promLogger struct{ log zerolog.Logger }

func (l promLogger) Println(v ...any) {
	l.log.Error().Interface("error", v).Msg("serving /metrics")
}
