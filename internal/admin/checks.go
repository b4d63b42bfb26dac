package admin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// UpstreamCheck reports whether PostgreSQL at addr answers: a TCP connect
// and an SSLRequest whose one-byte answer must come back before ctx ends
// (the server registers it with a 2s budget). Anything but 'S' or 'N' is
// not a PostgreSQL server.
//
// With tlsConfig (the proxy's own upstream TLS settings), the server must
// accept TLS and the handshake must succeed and verify exactly as the
// proxy's sessions would, so a certificate that expired or a CA that was
// rotated makes the proxy unready instead of failing every client. Without
// it, a server that answers 'S' still gets a completed handshake (not
// verified: nothing is sent over it): PostgreSQL logs "could not accept SSL
// connection: EOF detected" for every client that drops the connection
// right after its 'S', and a probe every few seconds would fill its log.
// Closing after the handshake, or after an 'N', is silent on the server.
func UpstreamCheck(addr string, tlsConfig *tls.Config) Check {
	return func(ctx context.Context) error {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("upstream %s: %w", addr, err)
		}
		defer conn.Close()
		stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
		defer stop()

		req, err := (&pgproto3.SSLRequest{}).Encode(nil)
		if err != nil {
			return err
		}
		if _, err := conn.Write(req); err != nil {
			return fmt.Errorf("upstream %s: send SSLRequest: %w", addr, ctxErr(ctx, err))
		}
		var answer [1]byte
		if _, err := io.ReadFull(conn, answer[:]); err != nil {
			return fmt.Errorf("upstream %s: no answer to SSLRequest: %w", addr, ctxErr(ctx, err))
		}
		switch answer[0] {
		case 'S':
			cfg := tlsConfig
			if cfg == nil {
				// Only to end the exchange the way PostgreSQL expects; no
				// data is sent, so there is nothing to authenticate.
				cfg = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // see above
			}
			tc := tls.Client(conn, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				if tlsConfig == nil {
					return nil // it answered as PostgreSQL does; TLS is not ours to judge
				}
				return fmt.Errorf("upstream %s: TLS handshake: %w", addr, ctxErr(ctx, err))
			}
			_ = tc.Close()
			return nil
		case 'N':
			if tlsConfig != nil {
				return fmt.Errorf("upstream %s does not accept TLS (answered 'N' to SSLRequest) and upstream.tls.mode requires it", addr)
			}
			return nil
		default:
			return fmt.Errorf("upstream %s answered %q to SSLRequest: not a PostgreSQL server", addr, answer[0])
		}
	}
}

// ctxErr prefers the context's error (a timeout) to the I/O error that the
// deadline it set caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// KMSCheck reports whether kek's KMS answers: its primary version can be
// read. The result is cached (see Cached) so that probes do not spend the
// KMS's read quota: Cloud KMS GetCryptoKey is a metered read.
func KMSCheck(kek kms.KEK, ttl time.Duration) Check {
	return Cached(func(ctx context.Context) error {
		if _, err := kek.Primary(ctx); err != nil {
			return fmt.Errorf("kms %s: %w", kek.Name(), err)
		}
		return nil
	}, ttl)
}

// FailureTTL is the longest a failed result is reused by Cached, so a
// dependency that comes back is noticed quickly.
const FailureTTL = 5 * time.Second

// Cached reuses c's result for ttl after a success and for
// min(ttl, FailureTTL) after a failure. Concurrent callers wait for one
// call instead of each making their own; a caller whose context ends while
// waiting gets its context's error, which is not cached.
func Cached(c Check, ttl time.Duration) Check {
	sem := make(chan struct{}, 1)
	var (
		have bool
		at   time.Time
		last error
	)
	return func(ctx context.Context) error {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		defer func() { <-sem }()
		keep := ttl
		if last != nil {
			keep = min(ttl, FailureTTL)
		}
		if have && time.Since(at) < keep {
			return last
		}
		err := c(ctx)
		if err != nil && errors.Is(ctx.Err(), context.Canceled) {
			return err // the caller gave up; says nothing about the dependency
		}
		have, at, last = true, time.Now(), err
		return err
	}
}
