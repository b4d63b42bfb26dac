package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/audit"
	"github.com/pgcrypt/pgcrypt-proxy/metrics"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// Config is what a Server needs; cmd/pgcrypt-proxy builds it from the
// config file.
type Config struct {
	// Upstream is the PostgreSQL server's host:port.
	Upstream string
	// UpstreamTLS is the TLS configuration of the proxy→PostgreSQL leg; nil
	// means no TLS (upstream.tls.mode: disable).
	UpstreamTLS *tls.Config
	// UpstreamDialTimeout bounds connecting and negotiating TLS upstream.
	UpstreamDialTimeout time.Duration

	// ClientTLS is the TLS configuration offered to clients; nil means
	// SSLRequest is answered 'N' (client_tls.mode: disable).
	ClientTLS *tls.Config
	// ClientTLSRequired refuses clients that did not negotiate TLS
	// (client_tls.mode: require).
	ClientTLSRequired bool

	// MaxConnections bounds concurrent client connections; 0 means no limit.
	MaxConnections int
	// StartupTimeout bounds the time from accept to ReadyForQuery.
	StartupTimeout time.Duration
	// IdleTimeout closes a client that sends nothing for this long while
	// its session is idle outside a transaction; 0 means never.
	IdleTimeout time.Duration

	// Policy holds the encryption policy; nil or an empty policy makes the
	// proxy a pure pass-through.
	Policy *policy.Holder
	// Keys is the keystore of data keys; required when Policy has tables.
	Keys Keys
	// Rand is the source of nonces; nil means crypto/rand.
	Rand io.Reader

	// CatalogTTL is how old a session's catalog of policy tables may get
	// before a statement on a policy table re-reads it (so a policy table
	// another session drops and creates again is found under its new OID).
	// Zero means 30s.
	CatalogTTL time.Duration

	// Metrics and Audit are optional (nil: off).
	Metrics *metrics.Metrics
	Audit   *audit.Log

	Logger zerolog.Logger
}

// Server accepts client connections and relays each to its own upstream
// connection. The zero value is not usable; call New.
type Server struct {
	cfg    Config
	log    zerolog.Logger
	nextID atomic.Uint64

	mu struct {
		sync.Mutex
		listeners map[net.Listener]struct{}
		sessions  map[*session]struct{}
		draining  bool
	}
	sessionsDone sync.WaitGroup
	pstate       pstatePtr
}

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Upstream == "" {
		return nil, errors.New("proxy: no upstream address")
	}
	if cfg.ClientTLSRequired && cfg.ClientTLS == nil {
		return nil, errors.New("proxy: client TLS is required but no certificate is configured")
	}
	if cfg.UpstreamDialTimeout <= 0 {
		cfg.UpstreamDialTimeout = 10 * time.Second
	}
	if cfg.StartupTimeout <= 0 {
		cfg.StartupTimeout = 30 * time.Second
	}
	if cfg.CatalogTTL <= 0 {
		cfg.CatalogTTL = 30 * time.Second
	}
	if cfg.Policy != nil && cfg.Keys == nil && len(cfg.Policy.Current().TableNames()) > 0 {
		return nil, errors.New("proxy: the policy lists tables but no keystore is configured")
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	s.mu.listeners = map[net.Listener]struct{}{}
	s.mu.sessions = map[*session]struct{}{}
	return s, nil
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts connections on ln until ctx is done or Shutdown is called.
// Each connection runs in its own goroutine with a context derived from ctx.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.mu.draining {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.mu.listeners[ln] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		delete(s.mu.listeners, ln)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isDraining() || ctx.Err() != nil {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors or similar: back off, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn().Err(err).Dur("retry_in", backoff).Msg("accept failed")
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("proxy: accept: %w", err)
		}
		backoff = 0
		s.startSession(ctx, c)
	}
}

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.draining
}

func (s *Server) startSession(ctx context.Context, c net.Conn) {
	s.cfg.Metrics.ConnAccepted()
	id := s.nextID.Add(1)
	sess := newSession(s, id, c)
	s.mu.Lock()
	if s.mu.draining {
		s.mu.Unlock()
		c.Close()
		s.cfg.Metrics.ConnClosed()
		return
	}
	over := s.cfg.MaxConnections > 0 && len(s.mu.sessions) >= s.cfg.MaxConnections
	if !over {
		s.mu.sessions[sess] = struct{}{}
		s.sessionsDone.Add(1)
	}
	s.mu.Unlock()
	if over {
		go sess.refuseTooMany(ctx)
		return
	}
	go func() {
		defer s.sessionsDone.Done()
		defer func() {
			s.mu.Lock()
			delete(s.mu.sessions, sess)
			s.mu.Unlock()
		}()
		sess.run(ctx)
	}()
}

// ActiveSessions returns the number of client connections being served.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.sessions)
}

// Shutdown stops accepting connections, closes each session as soon as it
// is idle (at ReadyForQuery, outside a transaction), and once ctx is done
// closes whatever is left. It returns ctx.Err() if it had to force-close
// sessions, else nil.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.mu.draining = true
	for ln := range s.mu.listeners {
		ln.Close()
	}
	s.mu.Unlock()

	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		left := make([]*session, 0, len(s.mu.sessions))
		for sess := range s.mu.sessions {
			left = append(left, sess)
		}
		s.mu.Unlock()
		if len(left) == 0 {
			s.sessionsDone.Wait()
			return nil
		}
		for _, sess := range left {
			sess.closeIfIdle()
		}
		select {
		case <-ctx.Done():
			for _, sess := range left {
				sess.forceClose("server shutting down")
			}
			s.sessionsDone.Wait()
			return ctx.Err()
		case <-tick.C:
		}
	}
}
