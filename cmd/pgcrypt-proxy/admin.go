package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/audit"
	"github.com/pgcrypt/pgcrypt-proxy/internal/admin"
	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
	"github.com/pgcrypt/pgcrypt-proxy/metrics"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// Readiness budgets: the upstream must answer an SSLRequest (and complete
// the TLS handshake when upstream TLS is on) within upstreamCheckTimeout; a
// KMS's answer is reused for kmsCheckTTL, since Cloud KMS reads are metered.
const (
	upstreamCheckTimeout = 2 * time.Second
	kmsCheckTTL          = 30 * time.Second
)

// newMetrics returns the process's metrics (one registry, never the global
// one).
func newMetrics() *metrics.Metrics {
	return metrics.New(metrics.Options{Version: version})
}

// startAdmin serves /metrics, /healthz and /readyz on admin.listen, with
// checks as /readyz's checks, until the returned server's Shutdown. When
// admin.listen is empty it returns a nil *admin.Server, on which
// Register, SetDraining and Shutdown are no-ops, so callers need no
// branch.
//
// Call it once the proxy's own listener is up, so that /readyz does not
// say ready before the proxy can serve.
func startAdmin(ctx context.Context, cfg *config.Config, log zerolog.Logger, m *metrics.Metrics, checks map[string]admin.Check) (*admin.Server, error) {
	if cfg.Admin.Listen == "" {
		log.Info().Msg("admin listener disabled (admin.listen is empty): no /metrics, /healthz or /readyz")
		return nil, nil
	}
	alog := log.With().Str("component", "admin").Logger()
	srv := admin.New(admin.Config{Gatherer: m.Registry(), Logger: alog})
	for name, c := range checks {
		srv.Register(name, c)
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin.listen: %w", err)
	}
	go func() {
		if err := srv.Serve(ctx, ln); err != nil {
			alog.Error().Err(err).Msg("admin listener failed; /metrics, /healthz and /readyz are gone")
		}
	}()
	log.Info().Str("admin", ln.Addr().String()).Msg("admin listener: /metrics /healthz /readyz")
	return srv, nil
}

// readinessChecks are the checks serve registers on /readyz:
//
//   - "upstream": TCP connect to upstream.address and an answer to an
//     SSLRequest within 2s; with upstream TLS (upstreamTLS non-nil, the
//     proxy's own proxy.Config.UpstreamTLS) the TLS handshake must succeed
//     and verify as the proxy's sessions would.
//   - "kms:NAME" per KEK backend: its primary version can be read (the
//     answer reused for 30s).
//   - "policy": a policy is loaded (when policy_file is set).
//
// keks may be the instrumented ones, so probe calls show in the KMS
// metrics.
func readinessChecks(cfg *config.Config, upstreamTLS *tls.Config, keks map[string]kms.KEK, pol *policy.Holder) map[string]admin.Check {
	checks := map[string]admin.Check{}
	up := admin.UpstreamCheck(cfg.Upstream.Address, upstreamTLS)
	checks["upstream"] = func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, upstreamCheckTimeout)
		defer cancel()
		return up(ctx)
	}
	for name, k := range keks {
		checks["kms:"+name] = admin.KMSCheck(k, kmsCheckTTL)
	}
	if pol != nil {
		checks["policy"] = func(context.Context) error {
			if pol.Current() == nil {
				return errors.New("no policy loaded")
			}
			return nil
		}
	}
	return checks
}

// instrumentKEKs wraps every KEK backend so its calls are counted and
// timed under its config name. Call it before keys.Open and
// keys.NewRotator; closing a wrapper closes the backend.
func instrumentKEKs(m *metrics.Metrics, keks map[string]kms.KEK) map[string]kms.KEK {
	if m == nil {
		return keks
	}
	out := make(map[string]kms.KEK, len(keks))
	for name, k := range keks {
		out[name] = metrics.InstrumentKEK(m, name, k)
	}
	return out
}

// recordPolicy exports the policy in force (digest, tables, columns): call
// it at startup with the loaded policy.
func recordPolicy(m *metrics.Metrics, p *policy.Policy) {
	if p == nil {
		return
	}
	m.SetPolicy(p.Digest, len(p.Tables()), len(p.Columns()))
}

// policyReloaded records a reload reported by policy.Holder.Watch: pass
// its arguments through from the Watch callback.
func policyReloaded(m *metrics.Metrics, p *policy.Policy, err error) {
	m.PolicyReload(err == nil)
	if err == nil {
		recordPolicy(m, p)
	}
}

// openAudit opens the audit log at path ("" disables it and returns a nil
// *audit.Log, on which Record and Close are no-ops; "-" is stderr) with a
// queue of buffer events (0: audit.DefaultBuffer), and reopens it on every
// SIGHUP until ctx is done, for logrotate. The caller closes it after the
// proxy has stopped, so the last sessions' events are written.
func openAudit(ctx context.Context, path string, buffer int, log zerolog.Logger, m *metrics.Metrics) (*audit.Log, error) {
	if path == "" {
		return nil, nil
	}
	alog := log.With().Str("component", "audit").Logger()
	a, err := audit.Open(path, audit.Options{Buffer: buffer, Metrics: m, Logger: alog})
	if err != nil {
		return nil, err
	}
	if path != "-" {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP) // beside the policy reload's own channel: each gets the signal
		go func() {
			defer signal.Stop(hup)
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					if err := a.Reopen(); err == nil {
						alog.Info().Str("audit_file", path).Msg("audit log reopened")
					}
				}
			}
		}()
	}
	log.Info().Str("audit_file", path).Msg("audit log enabled")
	return a, nil
}
