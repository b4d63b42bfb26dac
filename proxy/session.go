package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/metrics"
)

// connState is where a session is in its life. Transitions:
//
//	stateStartup → stateAuth      StartupMessage read, upstream dialled
//	stateAuth    → stateIdle      first ReadyForQuery relayed
//	stateIdle    ↔ stateBusy      client sends Query/Sync/FunctionCall ↔ last ReadyForQuery relayed
//	any          → stateClosed    either side closes, an error, or Shutdown
//
// Only the relay pumps move a session between idle and busy; Shutdown
// closes sessions that are idle outside a transaction.
type connState int32

const (
	stateStartup connState = iota
	stateAuth
	stateIdle
	stateBusy
	stateClosed
)

func (s connState) String() string {
	switch s {
	case stateStartup:
		return "startup"
	case stateAuth:
		return "auth"
	case stateIdle:
		return "idle"
	case stateBusy:
		return "busy"
	case stateClosed:
		return "closed"
	}
	return fmt.Sprintf("connState(%d)", int32(s))
}

// Startup packet codes (PostgreSQL src/include/libpq/pqcomm.h).
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	cancelRequestCode = 80877102
	// maxStartupPacketLen is PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
	maxStartupPacketLen = 10000
	// maxAuthMessageLen is PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH: no
	// password or SASL message is longer.
	maxAuthMessageLen = 65535
)

// session is one client connection and its upstream connection.
type session struct {
	srv     *Server
	id      uint64
	log     zerolog.Logger
	started time.Time

	client    net.Conn // *tls.Conn once TLS is negotiated
	clientTLS bool
	server    net.Conn
	serverTLS bool
	user      string
	// backendKey is the server's BackendKeyData, to cancel a query whose
	// client vanished.
	backendKey *pgproto3.CancelRequest
	database   string

	cr *msgReader // client → proxy
	sr *msgReader // server → proxy

	// toServer is owned by the client pump (and by startup before it).
	toServer []byte
	// toClient is owned by the server pump (and by startup before it);
	// writes to the client take clientWriteMu because Shutdown writes too.
	toClient      []byte
	clientWriteMu sync.Mutex

	// pendingRFQ counts ReadyForQuery messages the server still owes:
	// incremented by the client pump, decremented by the server pump.
	pendingRFQ atomic.Int64
	serverDone atomic.Bool   // the server pump has ended
	txStatus   atomic.Uint32 // last ReadyForQuery status byte: 'I', 'T' or 'E'
	lastActive atomic.Int64  // unix nanos of the last client message

	mu struct {
		sync.Mutex
		state connState
	}
	closeOnce sync.Once

	ctx context.Context // the session's context, for KMS and keystore calls

	// Encryption state, used when the policy has tables (encrypting).
	encrypting bool
	pol        *policyState // the client pump's policy snapshot
	es         encState     // client pump
	q          queue        // client pump → server pump
	cat        atomic.Pointer[catalog]
	tzName     atomic.Pointer[string] // the session's TimeZone, from ParameterStatus
	scsOff     atomic.Bool            // standard_conforming_strings is off
	nonUTF8    atomic.Bool            // client_encoding is not UTF8
	// serverNonUTF8 and serverMajor are server_encoding and
	// server_version, which decide whether COPY may go upstream in binary.
	serverNonUTF8 atomic.Bool
	serverMajor   atomic.Int32
	// needCatalog asks the client pump to reload the catalog at the next
	// point where nothing is in flight.
	needCatalog bool
	// catalogInjected: a catalog reload was sent ahead of the statement
	// being handled (client pump).
	catalogInjected bool
	// abortPending asks the client pump to abort the server's transaction
	// before the next statement (after a decryption failure).
	abortPending atomic.Bool
	// Server pump state.
	frontBuf       expect        // the expectation being answered (queue.front's copy)
	decKeys        []*crypto.Key // data keys looked up in the current batch (keyByID)
	decRows        uint64        // rows decrypted, for sampling their timing
	failing        bool          // swallow replies until ReadyForQuery
	statusOverride byte          // rewrite the next ReadyForQuery's status
	qplan          *rowPlan      // current simple-query result's plan
	qrd            *rowDescCache // the last simple-query RowDescription with policy columns
	dec            *codec
	decTZ          string
	auditKeys      []uint32 // client pump: data keys used since the last audit event
	readRows       int64    // server pump: rows decrypted in the current result
	readKeys       []uint32
	readPlan       *rowPlan
	copyIn         *copyStream // client pump: COPY FROM STDIN into a policy table
	copyOut        *copyStream // server pump: COPY TO STDOUT from a policy table
	// Scratch buffers, each owned by one pump.
	scratch, envBuf, candBuf []byte   // client pump
	bindParams               [][]byte // client pump: onBind's parameter values (cleared after use)
	encKeys                  []encKey
	encStmts                 uint64 // client pump: statements that encrypted, for sampling their timing
	encT                     encTiming
	stmtKind                 string // client pump: the kind of the statement being handled, for audit events
	scratchDec, plainDec     []byte // server pump
	copyBuf                  []byte // server pump
}

func newSession(srv *Server, id uint64, c net.Conn) *session {
	s := &session{srv: srv, id: id, client: c, started: time.Now()}
	s.log = srv.log.With().Uint64("conn_id", id).Str("peer", c.RemoteAddr().String()).Logger()
	s.mu.state = stateStartup
	return s
}

func (s *session) state() connState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.state
}

// setState moves the session to st unless it is already closed. It reports
// whether the session is still open.
func (s *session) setState(st connState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.state == stateClosed {
		return false
	}
	s.mu.state = st
	return true
}

// clientError is an error the proxy reports to the client as an
// ErrorResponse before closing the connection.
type clientError struct {
	code    string // SQLSTATE
	message string
	hint    string
	cause   error // for the log only
}

func (e *clientError) Error() string {
	if e.cause != nil {
		return e.message + ": " + e.cause.Error()
	}
	return e.message
}

func (e *clientError) Unwrap() error { return e.cause }

func (e *clientError) response() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                e.code,
		Message:             e.message,
		Hint:                e.hint,
	}
}

// run serves the connection until either side closes it.
func (s *session) run(ctx context.Context) {
	defer s.close()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error().Interface("panic", r).Stack().Msg("BUG: session panicked; connection closed")
		}
	}()

	_ = s.client.SetDeadline(time.Now().Add(s.srv.cfg.StartupTimeout))
	if err := s.startup(ctx); err != nil {
		s.failStartup(err)
		return
	}
	_ = s.client.SetDeadline(time.Time{})
	if s.server != nil {
		_ = s.server.SetDeadline(time.Time{})
	}
	if !s.setState(stateIdle) {
		return
	}
	if s.srv.cfg.IdleTimeout > 0 {
		_ = s.client.SetReadDeadline(time.Now().Add(s.srv.cfg.IdleTimeout))
	}
	s.log.Info().Str("database", s.database).Bool("client_tls", s.clientTLS).
		Bool("upstream_tls", s.serverTLS).Dur("startup", time.Since(s.started)).Msg("session ready")
	s.relay(ctx)
}

// errCancelHandled ends a connection that only carried a CancelRequest.
var errCancelHandled = errors.New("cancel request forwarded")

var errTLSHandshake = errors.New("client TLS handshake failed")

func (s *session) failStartup(err error) {
	if errors.Is(err, errCancelHandled) {
		return
	}
	s.srv.cfg.Metrics.ConnRefused(refuseReason(err))
	var ce *clientError
	if errors.As(err, &ce) {
		// Log before answering, so the line exists once the client has
		// its error.
		ev := s.log.Warn()
		if ce.cause != nil {
			ev = ev.AnErr("cause", ce.cause)
		}
		ev.Str("sqlstate", ce.code).Msg("connection refused: " + ce.message)
		s.sendClientError(ce)
		return
	}
	if errors.Is(err, errAuthFailed) {
		return // the server's error was relayed and logged
	}
	if errors.Is(err, io.EOF) {
		s.log.Debug().Msg("client closed the connection during startup")
		return
	}
	s.log.Warn().Err(err).Msg("connection closed during startup")
}

func (s *session) sendClientError(ce *clientError) {
	buf, err := ce.response().Encode(nil)
	if err != nil {
		return
	}
	s.clientWriteMu.Lock()
	defer s.clientWriteMu.Unlock()
	_ = s.client.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = s.client.Write(buf)
}

// refuseTooMany answers a connection over limits.max_connections the way
// PostgreSQL does when it is full: after TLS negotiation and the startup
// packet, with SQLSTATE 53300. A CancelRequest is still forwarded.
func (s *session) refuseTooMany(ctx context.Context) {
	defer s.srv.cfg.Metrics.ConnClosed()
	defer s.client.Close()
	s.srv.cfg.Metrics.ConnRefused(metrics.RefuseTooMany)
	_ = s.client.SetDeadline(time.Now().Add(min(5*time.Second, s.srv.cfg.StartupTimeout)))
	if _, _, err := s.readStartup(ctx); err != nil {
		return
	}
	s.sendClientError(&clientError{code: "53300", message: "sorry, too many clients already",
		hint: "pgcrypt-proxy limits.max_connections is reached; retry later or raise it"})
	s.log.Warn().Int("max_connections", s.srv.cfg.MaxConnections).Msg("connection refused: too many clients")
}

// readStartupPacket reads one length-prefixed startup packet, exactly and
// no further (so nothing sent after an SSLRequest is read in plaintext).
func readStartupPacket(r io.Reader) (code uint32, body []byte, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < 8 || n > maxStartupPacketLen {
		return 0, nil, fmt.Errorf("invalid startup packet length %d", n)
	}
	body = make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("truncated startup packet: %w", err)
	}
	return binary.BigEndian.Uint32(body), body, nil
}

// startup negotiates TLS with the client, reads its StartupMessage, dials
// upstream and relays authentication until the first ReadyForQuery.
func (s *session) startup(ctx context.Context) error {
	raw, startup, err := s.readStartup(ctx)
	if err != nil {
		return err
	}
	s.user = startup.Parameters["user"]
	s.database = startup.Parameters["database"]
	if s.database == "" {
		s.database = s.user
	}
	s.log = s.log.With().Str("user", s.user).Logger()
	if s.srv.cfg.ClientTLSRequired && !s.clientTLS {
		return &clientError{code: "28000", message: "pgcrypt-proxy requires TLS: this connection is not encrypted",
			hint: "connect with sslmode=require (or verify-full with the proxy's CA)"}
	}
	if !s.setState(stateAuth) {
		return errors.New("closed during startup")
	}
	if err := s.dialUpstream(ctx); err != nil {
		return err
	}
	_ = s.server.SetDeadline(time.Now().Add(s.srv.cfg.StartupTimeout))
	s.cr = newMsgReader(s.client, maxMessageLen)
	s.sr = newMsgReader(s.server, maxMessageLen)
	if _, err := s.server.Write(raw); err != nil {
		return &clientError{code: "08006", message: "pgcrypt-proxy lost the connection to the database server", cause: err}
	}
	return s.authenticate()
}

// readStartup handles SSLRequest and GSSENCRequest negotiation, forwards a
// CancelRequest, and returns the raw StartupMessage packet and its decoding.
func (s *session) readStartup(ctx context.Context) ([]byte, *pgproto3.StartupMessage, error) {
	conn := s.client
	// Direct TLS (PostgreSQL 17 sslnegotiation=direct): the client starts
	// with a TLS ClientHello instead of an SSLRequest.
	var first [1]byte
	if _, err := io.ReadFull(conn, first[:]); err != nil {
		return nil, nil, err
	}
	conn = &prefixConn{Conn: conn, prefix: first[:]}
	if first[0] == 0x16 {
		if s.srv.cfg.ClientTLS == nil {
			return nil, nil, errors.New("client started a direct TLS handshake but client TLS is disabled")
		}
		if err := s.handshakeClient(ctx, conn, true); err != nil {
			return nil, nil, err
		}
		conn = s.client
	}
	for {
		code, body, err := readStartupPacket(conn)
		if err != nil {
			return nil, nil, err
		}
		switch code {
		case sslRequestCode:
			if s.clientTLS {
				return nil, nil, &clientError{code: "08P01", message: "SSLRequest received on an encrypted connection"}
			}
			if s.srv.cfg.ClientTLS == nil {
				if _, err := conn.Write([]byte{'N'}); err != nil {
					return nil, nil, err
				}
				continue
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return nil, nil, err
			}
			if err := s.handshakeClient(ctx, conn, false); err != nil {
				return nil, nil, err
			}
			conn = s.client
		case gssEncRequestCode:
			// The proxy terminates TLS only; GSSAPI encryption is declined,
			// and libpq goes on with SSLRequest or plaintext.
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return nil, nil, err
			}
		case cancelRequestCode:
			var cr pgproto3.CancelRequest
			if err := cr.Decode(body); err != nil {
				return nil, nil, fmt.Errorf("malformed CancelRequest: %w", err)
			}
			s.srv.forwardCancel(ctx, &cr, s.log)
			return nil, nil, errCancelHandled
		case pgproto3.ProtocolVersion30, pgproto3.ProtocolVersion32:
			sm := pgproto3.StartupMessage{ProtocolVersion: code, Parameters: map[string]string{}}
			if len(body) == 5 && body[4] == 0 {
				// No parameters at all: valid framing, refused below for
				// want of a user, as PostgreSQL does.
			} else if err := sm.Decode(body); err != nil {
				return nil, nil, &clientError{code: "08P01", message: "invalid startup packet", cause: err}
			}
			if sm.Parameters["user"] == "" {
				return nil, nil, &clientError{code: "28000", message: "no PostgreSQL user name specified in startup packet"}
			}
			raw := make([]byte, 4+len(body))
			binary.BigEndian.PutUint32(raw, uint32(len(raw)))
			copy(raw[4:], body)
			return raw, &sm, nil
		default:
			return nil, nil, &clientError{code: "0A000",
				message: fmt.Sprintf("unsupported frontend protocol %d.%d", code>>16, code&0xffff)}
		}
	}
}

func (s *session) handshakeClient(ctx context.Context, conn net.Conn, direct bool) error {
	cfg := s.srv.cfg.ClientTLS
	if direct {
		cfg = cfg.Clone()
		cfg.NextProtos = []string{"postgresql"}
	}
	tc := tls.Server(conn, cfg)
	hctx, cancel := context.WithTimeout(ctx, s.srv.cfg.StartupTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return fmt.Errorf("%w (TLS 1.3 is the minimum): %w", errTLSHandshake, err)
	}
	if direct && tc.ConnectionState().NegotiatedProtocol != "postgresql" {
		return errors.New("direct TLS connection without ALPN \"postgresql\"")
	}
	s.client = tc
	s.clientTLS = true
	return nil
}

// prefixConn replays bytes already read before reading from the connection.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// dialUpstream connects to PostgreSQL and negotiates TLS if configured.
func (s *session) dialUpstream(ctx context.Context) error {
	conn, err := s.srv.dialUpstream(ctx)
	if err != nil {
		var ue *upstreamError
		if errors.As(err, &ue) && ue.tls {
			return &clientError{code: "08006", message: "pgcrypt-proxy could not establish a secure connection to the database server",
				hint: "the proxy's upstream TLS settings do not match the server; see the proxy log", cause: err}
		}
		return &clientError{code: "08006", message: "pgcrypt-proxy could not connect to the database server", cause: err}
	}
	s.server = conn
	_, s.serverTLS = conn.(*tls.Conn)
	return nil
}

type upstreamError struct {
	tls bool
	err error
}

func (e *upstreamError) Error() string { return e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// dialUpstream opens a connection to PostgreSQL: TCP, then SSLRequest and a
// TLS handshake when upstream TLS is configured. A server that declines TLS
// is an error: the proxy never falls back to plaintext.
func (srv *Server) dialUpstream(ctx context.Context) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, srv.cfg.UpstreamDialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", srv.cfg.Upstream)
	if err != nil {
		srv.cfg.Metrics.UpstreamDialError(metrics.DialConnect)
		return nil, &upstreamError{err: fmt.Errorf("dial upstream %s: %w", srv.cfg.Upstream, err)}
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if srv.cfg.UpstreamTLS == nil {
		return conn, nil
	}
	if dl, ok := dctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := conn.Write(req); err != nil {
		conn.Close()
		return nil, &upstreamError{tls: true, err: fmt.Errorf("upstream %s: send SSLRequest: %w", srv.cfg.Upstream, err)}
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		conn.Close()
		return nil, &upstreamError{tls: true, err: fmt.Errorf("upstream %s: read SSLRequest answer: %w", srv.cfg.Upstream, err)}
	}
	if answer[0] != 'S' {
		conn.Close()
		srv.cfg.Metrics.UpstreamDialError(metrics.DialTLS)
		return nil, &upstreamError{tls: true, err: fmt.Errorf("upstream %s does not accept TLS (answered %q to SSLRequest); set ssl=on on the server or upstream.tls.mode: disable", srv.cfg.Upstream, answer[0])}
	}
	tc := tls.Client(conn, srv.cfg.UpstreamTLS)
	if err := tc.HandshakeContext(dctx); err != nil {
		srv.cfg.Metrics.UpstreamDialError(metrics.DialTLS)
		conn.Close()
		return nil, &upstreamError{tls: true, err: fmt.Errorf("upstream %s: TLS handshake: %w", srv.cfg.Upstream, err)}
	}
	_ = conn.SetDeadline(time.Time{})
	return tc, nil
}

// forwardCancel sends a client's CancelRequest to the upstream. The proxy
// passes PostgreSQL's own BackendKeyData through to clients, so the request
// names an upstream backend directly and any proxy replica in front of the
// same server can forward it; the proxy does not learn whether it matched.
func (srv *Server) forwardCancel(ctx context.Context, cr *pgproto3.CancelRequest, log zerolog.Logger) {
	cctx, cancel := context.WithTimeout(ctx, srv.cfg.UpstreamDialTimeout)
	defer cancel()
	conn, err := srv.dialUpstream(cctx)
	if err != nil {
		log.Warn().Err(err).Msg("could not forward cancel request")
		return
	}
	defer conn.Close()
	buf, err := cr.Encode(nil)
	if err != nil {
		log.Warn().Err(err).Msg("could not encode cancel request")
		return
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(buf); err != nil {
		log.Warn().Err(err).Msg("could not forward cancel request")
		return
	}
	// PostgreSQL closes the connection once it has processed the request;
	// waiting for that makes the cancel take effect before we return.
	_, _ = io.Copy(io.Discard, conn)
	log.Info().Uint32("cancel_pid", cr.ProcessID).Msg("cancel request forwarded")
}

// close closes both connections once.
func (s *session) close() {
	s.closeOnce.Do(func() {
		s.srv.cfg.Metrics.ConnClosed()
		s.mu.Lock()
		s.mu.state = stateClosed
		s.mu.Unlock()
		s.client.Close()
		if s.server != nil {
			s.server.Close()
		}
	})
}

// closeIfIdle closes the session politely if it is idle outside a
// transaction: the client gets PostgreSQL's own "terminating connection
// due to administrator command" and the server a Terminate.
func (s *session) closeIfIdle() {
	idle := s.idleOutsideTx()
	startup := s.state() == stateStartup
	switch {
	case idle:
		s.terminate("57P01", "terminating connection due to administrator command")
	case startup:
		// Nothing is in flight yet; the client can connect elsewhere.
		s.close()
	}
}

// forceClose ends the session whatever it is doing.
func (s *session) forceClose(reason string) {
	if s.state() == stateClosed {
		return
	}
	s.log.Warn().Str("state", s.state().String()).Msg("closing session: " + reason)
	s.terminate("57P01", "terminating connection due to administrator command")
}

func (s *session) terminate(code, msg string) {
	s.sendClientError(&clientError{code: code, message: msg})
	if s.server != nil {
		_ = s.server.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = s.server.Write([]byte{'X', 0, 0, 0, 4})
	}
	s.close()
}

// refuseReason classifies why a connection ended before ReadyForQuery.
func refuseReason(err error) metrics.RefuseReason {
	var ce *clientError
	var ue *upstreamError
	switch {
	case errors.Is(err, errAuthFailed):
		return metrics.RefuseAuthFailed
	case errors.Is(err, errTLSHandshake):
		return metrics.RefuseTLSHandshake
	case errors.As(err, &ue):
		return metrics.RefuseUpstreamUnreachable
	case errors.As(err, &ce) && ce.code == "28000" && strings.Contains(ce.message, "requires TLS"):
		return metrics.RefuseTLSRequired
	case errors.As(err, &ce) && ce.code == "08006":
		return metrics.RefuseUpstreamUnreachable
	case errors.Is(err, os.ErrDeadlineExceeded):
		return metrics.RefuseStartupTimeout
	}
	return metrics.RefuseBadStartup
}

// isClosedErr reports errors that mean "the other side went away".
func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, errConnReset)
}
