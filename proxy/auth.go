package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Authentication request codes (PostgreSQL src/include/libpq/protocol.h).
const (
	authOK                = 0
	authKerberosV5        = 2
	authCleartextPassword = 3
	authMD5Password       = 5
	authGSS               = 7
	authGSSContinue       = 8
	authSSPI              = 9
	authSASL              = 10
	authSASLContinue      = 11
	authSASLFinal         = 12
)

const (
	scramSHA256     = "SCRAM-SHA-256"
	scramSHA256Plus = "SCRAM-SHA-256-PLUS"
)

// authenticate relays authentication between client and server until the
// server's first ReadyForQuery has been passed to the client.
//
// Trust, cleartext and MD5 are relayed message for message. SCRAM is
// relayed too, with SCRAM-SHA-256-PLUS withheld from the client, since a
// client's channel binding would bind to the proxy's TLS channel, not the
// server's. One case cannot be relayed: when both legs are TLS, a client
// that supports channel binding (libpq and pgx by default) tells the server
// so in its first SCRAM message ("y" flag), and PostgreSQL, which sees its
// own TLS channel, rejects that as a downgrade attack. So when both legs are
// TLS the proxy authenticates itself: it asks the client for the password
// over the client's TLS 1.3 channel and runs SCRAM-SHA-256-PLUS (bound to
// the upstream TLS channel) against the server with it. The password is held
// only for that exchange and never logged.
func (s *session) authenticate() error {
	for {
		typ, msg, err := s.sr.next()
		if err != nil {
			return &clientError{code: "08006", message: "pgcrypt-proxy lost the connection to the database server during authentication", cause: err}
		}
		switch typ {
		case 'R':
			if len(msg) < 9 {
				return &clientError{code: "08P01", message: "invalid authentication request from the database server"}
			}
			code := binary.BigEndian.Uint32(msg[5:9])
			switch code {
			case authOK, authSASLFinal:
				s.toClient = append(s.toClient, msg...)
			case authCleartextPassword, authMD5Password, authSASLContinue:
				s.toClient = append(s.toClient, msg...)
				if err := s.relayClientAuthResponse(); err != nil {
					return err
				}
			case authSASL:
				if err := s.saslStart(msg); err != nil {
					return err
				}
			case authGSS, authGSSContinue, authSSPI, authKerberosV5:
				return &clientError{code: "28000", message: "the database server asks for GSSAPI/SSPI authentication, which cannot pass through pgcrypt-proxy",
					hint: "use password, md5 or scram-sha-256 authentication for connections from the proxy"}
			default:
				return &clientError{code: "08P01", message: fmt.Sprintf("unsupported authentication request %d from the database server", code)}
			}
		case 'E':
			// Authentication failed (wrong password, no pg_hba entry…):
			// PostgreSQL's own error goes to the client untouched.
			s.toClient = append(s.toClient, msg...)
			if err := s.flushClient(); err != nil {
				return err
			}
			var er pgproto3.ErrorResponse
			if err := er.Decode(msg[5:]); err == nil {
				s.log.Info().Str("sqlstate", er.Code).Msg("database server refused the connection")
			}
			return errAuthFailed
		case 'K':
			var k pgproto3.BackendKeyData
			if err := k.Decode(msg[5:]); err == nil {
				s.log = s.log.With().Uint32("backend_pid", k.ProcessID).Logger()
				s.backendKey = &pgproto3.CancelRequest{ProcessID: k.ProcessID, SecretKey: k.SecretKey}
			}
			s.toClient = append(s.toClient, msg...)
		case 'S':
			s.noteParameterStatus(msg)
			s.toClient = append(s.toClient, msg...)
		case 'N', 'v':
			s.toClient = append(s.toClient, msg...)
		case 'Z':
			if len(msg) >= 6 {
				s.txStatus.Store(uint32(msg[5]))
			}
			rfq := append([]byte(nil), msg...)
			if err := s.startEncryption(); err != nil {
				return err
			}
			s.toClient = append(s.toClient, rfq...)
			return s.flushClient()
		default:
			return &clientError{code: "08P01", message: fmt.Sprintf("unexpected message %q from the database server during authentication", typ)}
		}
	}
}

var errAuthFailed = errors.New("authentication failed")

// relayClientAuthResponse flushes the pending request to the client and
// forwards its answer (a 'p' message) to the server.
func (s *session) relayClientAuthResponse() error {
	if err := s.flushClient(); err != nil {
		return err
	}
	msg, err := s.readClientAuth()
	if err != nil {
		return err
	}
	if _, err := s.server.Write(msg); err != nil {
		return &clientError{code: "08006", message: "pgcrypt-proxy lost the connection to the database server during authentication", cause: err}
	}
	return nil
}

// readClientAuth reads the client's next authentication message, which
// must be a 'p' message of bounded length.
func (s *session) readClientAuth() ([]byte, error) {
	s.cr.max = maxAuthMessageLen
	defer func() { s.cr.max = maxMessageLen }()
	typ, msg, err := s.cr.next()
	if err != nil {
		return nil, fmt.Errorf("reading client authentication response: %w", err)
	}
	if typ != 'p' {
		return nil, &clientError{code: "08P01", message: fmt.Sprintf("expected password response, got message type %q", typ)}
	}
	return msg, nil
}

// saslStart handles AuthenticationSASL from the server.
func (s *session) saslStart(msg []byte) error {
	var req pgproto3.AuthenticationSASL
	if err := req.Decode(msg[5:]); err != nil {
		return &clientError{code: "08P01", message: "invalid SASL request from the database server", cause: err}
	}
	if s.clientTLS && s.serverTLS && slices.Contains(req.AuthMechanisms, scramSHA256) {
		return s.scramOnBehalf(slices.Contains(req.AuthMechanisms, scramSHA256Plus))
	}
	mechs := slices.DeleteFunc(slices.Clone(req.AuthMechanisms), func(m string) bool { return m == scramSHA256Plus })
	if len(mechs) == 0 {
		return &clientError{code: "28000", message: "the database server offers only SCRAM-SHA-256-PLUS, which cannot pass through pgcrypt-proxy",
			hint: "allow scram-sha-256 without channel binding for connections from the proxy"}
	}
	out, err := (&pgproto3.AuthenticationSASL{AuthMechanisms: mechs}).Encode(s.toClient)
	if err != nil {
		return err
	}
	s.toClient = out
	return s.relayClientAuthResponse()
}

// scramOnBehalf asks the client for its password and authenticates to the
// server with SCRAM itself (see authenticate).
func (s *session) scramOnBehalf(plus bool) error {
	out, _ := (&pgproto3.AuthenticationCleartextPassword{}).Encode(s.toClient)
	s.toClient = out
	if err := s.flushClient(); err != nil {
		return err
	}
	msg, err := s.readClientAuth()
	if err != nil {
		return err
	}
	var pw pgproto3.PasswordMessage
	if err := pw.Decode(msg[5:]); err != nil {
		return &clientError{code: "08P01", message: "invalid password message", cause: err}
	}
	var cb []byte
	if plus {
		cb, err = tlsServerEndPoint(s.server)
		if err != nil {
			s.log.Warn().Err(err).Msg("cannot compute upstream channel binding; using SCRAM-SHA-256 without it")
			cb = nil
		}
	}
	c, err := newSCRAMClient(pw.Password, cb, nil)
	if err != nil {
		return err
	}
	first, _ := (&pgproto3.SASLInitialResponse{AuthMechanism: c.mechanism(), Data: c.clientFirst()}).Encode(nil)
	if _, err := s.server.Write(first); err != nil {
		return &clientError{code: "08006", message: "pgcrypt-proxy lost the connection to the database server during authentication", cause: err}
	}
	for {
		typ, m, err := s.sr.next()
		if err != nil {
			return &clientError{code: "08006", message: "pgcrypt-proxy lost the connection to the database server during authentication", cause: err}
		}
		if typ == 'E' {
			s.toClient = append(s.toClient, m...)
			_ = s.flushClient()
			s.log.Info().Msg("database server refused the password")
			return errAuthFailed
		}
		if typ != 'R' || len(m) < 9 {
			return &clientError{code: "08P01", message: fmt.Sprintf("unexpected message %q from the database server during SCRAM", typ)}
		}
		switch binary.BigEndian.Uint32(m[5:9]) {
		case authSASLContinue:
			final, err := c.clientFinal(m[9:])
			if err != nil {
				return &clientError{code: "08P01", message: "SCRAM exchange with the database server failed", cause: err}
			}
			resp, _ := (&pgproto3.SASLResponse{Data: final}).Encode(nil)
			if _, err := s.server.Write(resp); err != nil {
				return &clientError{code: "08006", message: "pgcrypt-proxy lost the connection to the database server during authentication", cause: err}
			}
		case authSASLFinal:
			if err := c.verifyServerFinal(m[9:]); err != nil {
				return &clientError{code: "28000", message: "the database server failed SCRAM server authentication",
					hint: "the proxy may be talking to an impostor server", cause: err}
			}
			s.log.Debug().Str("mechanism", c.mechanism()).Msg("authenticated to the database server on behalf of the client")
			return nil // AuthenticationOk and the rest follow in authenticate
		default:
			return &clientError{code: "08P01", message: "unexpected authentication request during SCRAM"}
		}
	}
}
