package proxy

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/metrics"
)

var errConnReset = syscall.ECONNRESET

// flushThreshold is how much a pump buffers before writing even though more
// input is already buffered (large COPY streams and result sets).
const flushThreshold = 64 << 10

// relay runs the two pumps until either side closes.
//
// Each pump reads whatever its peer has sent in one read, handles every
// whole message in the buffer, and writes what it produced in one write
// before it blocks on the next read. So a pipelined batch costs one read and
// one write per direction, however many messages it holds.
func (s *session) relay(ctx context.Context) {
	s.ctx = ctx
	stop := context.AfterFunc(ctx, func() { s.forceClose("server context cancelled") })
	defer stop()

	done := make(chan error, 1)
	go func() {
		var err error
		defer func() {
			if r := recover(); r != nil {
				s.log.Error().Interface("panic", r).Stack().Msg("BUG: server pump panicked; connection closed")
				err = errors.New("panic")
			}
			// The server ended the session (or failed): whatever it said
			// last has been flushed to the client; now the client must see
			// the connection close, as it would directly.
			s.serverDone.Store(true)
			s.close()
			done <- err
		}()
		err = s.serverPump()
	}()
	clientErr := s.clientPump()
	// Which side ended the session decides the reason logged: closing the
	// other side below makes that one fail too.
	serverFirst := s.serverDone.Load()
	if clientErr != nil && !errors.Is(clientErr, errClientTerminated) && !errors.Is(clientErr, errIdleTimeout) &&
		!s.serverDone.Load() && s.pendingRFQ.Load() > 0 && s.state() != stateClosed {
		// The client vanished mid-query: cancel the query so the server
		// does not keep running it for nobody.
		s.cancelUpstream(ctx)
	}
	s.close()
	serverErr := <-done

	ev := s.log.Info()
	switch {
	case errors.Is(clientErr, errIdleTimeout):
		ev = ev.Str("reason", "idle timeout")
	case errors.Is(clientErr, errClientTerminated):
		ev = ev.Str("reason", "client terminated")
	case serverFirst && serverErr != nil && !isClosedErr(serverErr):
		ev = s.log.Warn().Str("reason", "server connection error").AnErr("server_error", serverErr)
	case serverFirst:
		ev = ev.Str("reason", "server closed the connection")
	case clientErr != nil && !isClosedErr(clientErr):
		ev = s.log.Warn().Str("reason", "client connection error").AnErr("client_error", clientErr)
	default:
		ev = ev.Str("reason", "client closed the connection")
	}
	ev.Dur("duration", time.Since(s.started)).Int64("bytes_from_client", s.cr.read).
		Int64("bytes_from_server", s.sr.read).Msg("session closed")
}

var (
	errClientTerminated = errors.New("client sent Terminate")
	errIdleTimeout      = errors.New("idle timeout")
)

// idleOutsideTx reports whether the session owes the client nothing and is
// not inside a transaction block.
func (s *session) idleOutsideTx() bool {
	return s.state() == stateIdle && s.pendingRFQ.Load() == 0 && byte(s.txStatus.Load()) == 'I'
}

// clientPump relays client → server.
func (s *session) clientPump() error {
	for {
		if !s.cr.buffered() {
			if err := s.flushServer(); err != nil {
				return err
			}
			s.encKeys = s.encKeys[:0]
		}
		typ, msg, err := s.cr.next()
		if err != nil {
			if s.srv.cfg.IdleTimeout > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				if s.idleOutsideTx() {
					s.log.Info().Dur("idle_timeout", s.srv.cfg.IdleTimeout).Msg("closing idle session")
					s.terminate("57P05", "terminating connection due to idle-session timeout")
					return errIdleTimeout
				}
				// The deadline was set for an earlier idle moment; the
				// session is busy now.
				_ = s.client.SetReadDeadline(time.Time{})
				continue
			}
			return err
		}
		if s.srv.cfg.IdleTimeout > 0 {
			_ = s.client.SetReadDeadline(time.Time{})
		}
		switch typ {
		case 'Q', 'S', 'F':
			// Each of these is answered by exactly one ReadyForQuery.
			if s.pendingRFQ.Add(1) == 1 {
				s.setBusy()
			}
		case 'X':
			s.toServer = append(s.toServer, msg...)
			_ = s.flushServer()
			return errClientTerminated
		}
		if s.encrypting {
			if err := s.clientMessage(s.ctx, typ, msg); err != nil {
				return err
			}
		} else {
			if typ == 'Q' || typ == 'E' {
				s.srv.cfg.Metrics.Statement(metrics.Passthrough)
			}
			s.toServer = append(s.toServer, msg...)
		}
		if len(s.toServer) >= flushThreshold {
			if err := s.flushServer(); err != nil {
				return err
			}
		}
	}
}

// serverPump relays server → client.
func (s *session) serverPump() error {
	for {
		if !s.sr.buffered() {
			if err := s.flushClient(); err != nil {
				return err
			}
			s.decKeys = s.decKeys[:0]
		}
		typ, msg, err := s.sr.next()
		if err != nil {
			return err
		}
		before := len(s.toClient)
		if s.encrypting {
			if err := s.serverMessage(s.ctx, typ, msg); err != nil {
				return err
			}
		} else {
			if typ == 'E' {
				s.srv.cfg.Metrics.ServerError(sqlstateOf(msg))
			}
			s.toClient = append(s.toClient, msg...)
		}
		if typ == 'Z' && len(s.toClient) > before {
			msg = s.toClient[before:]
			s.txStatus.Store(uint32(msg[5]))
			if s.pendingRFQ.Add(-1) <= 0 {
				s.pendingRFQ.Store(0)
				s.setIdle()
				if s.srv.cfg.IdleTimeout > 0 && msg[5] == 'I' {
					_ = s.client.SetReadDeadline(time.Now().Add(s.srv.cfg.IdleTimeout))
				}
			}
		}
		if len(s.toClient) >= flushThreshold {
			if err := s.flushClient(); err != nil {
				return err
			}
		}
	}
}

func (s *session) setBusy() {
	s.mu.Lock()
	if s.mu.state == stateIdle {
		s.mu.state = stateBusy
	}
	s.mu.Unlock()
}

func (s *session) setIdle() {
	s.mu.Lock()
	if s.mu.state == stateBusy {
		s.mu.state = stateIdle
	}
	s.mu.Unlock()
}

func (s *session) flushServer() error {
	if len(s.toServer) == 0 {
		return nil
	}
	_, err := s.server.Write(s.toServer)
	s.srv.cfg.Metrics.BytesRelayed(len(s.toServer), 0)
	s.toServer = shrink(s.toServer)
	return err
}

func (s *session) flushClient() error {
	if len(s.toClient) == 0 {
		return nil
	}
	s.clientWriteMu.Lock()
	_, err := s.client.Write(s.toClient)
	s.clientWriteMu.Unlock()
	s.srv.cfg.Metrics.BytesRelayed(0, len(s.toClient))
	s.toClient = shrink(s.toClient)
	return err
}

// sqlstateOf finds the SQLSTATE field of an ErrorResponse without decoding
// the rest.
func sqlstateOf(msg []byte) string {
	for p := msg[min(5, len(msg)):]; len(p) > 1 && p[0] != 0; {
		end := 1
		for end < len(p) && p[end] != 0 {
			end++
		}
		if p[0] == 'C' {
			return string(p[1:end])
		}
		if end >= len(p) {
			break
		}
		p = p[end+1:]
	}
	return ""
}

// shrink empties a write buffer, giving back memory after a large burst.
func shrink(b []byte) []byte {
	if cap(b) > 4*flushThreshold {
		return make([]byte, 0, initialBufSize)
	}
	return b[:0]
}

// cancelUpstream asks the server to cancel the session's running query.
func (s *session) cancelUpstream(ctx context.Context) {
	if s.backendKey == nil {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	s.srv.forwardCancel(cctx, s.backendKey, s.log)
}
