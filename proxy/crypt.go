package proxy

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/metrics"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
	"github.com/pgcrypt/pgcrypt-proxy/rewrite"
)

// Keys is the keystore as the proxy uses it; *keys.Store implements it.
type Keys interface {
	// Current is the data key for new writes of keyName, whose wrapping
	// key lives in the KMS backend kmsName.
	Current(ctx context.Context, keyName, kmsName string) (*crypto.Key, error)
	// ByID is any data key that is not destroyed, for decryption.
	ByID(ctx context.Context, id uint32) (*crypto.Key, error)
	// Live lists every data-key version of keyName that may still hold
	// values, for deterministic lookups.
	Live(ctx context.Context, keyName string) ([]*crypto.Key, error)
}

// policyState is a policy snapshot with its analyser. The server keeps the
// current one and rebuilds it when the policy holder swaps in a new policy.
type policyState struct {
	pol      *policy.Policy
	analyzer *rewrite.Analyzer
}

func (srv *Server) policyState() *policyState {
	if srv.cfg.Policy == nil {
		return nil
	}
	p := srv.cfg.Policy.Current()
	if st := srv.pstate.Load(); st != nil && st.pol == p {
		return st
	}
	st := &policyState{pol: p, analyzer: rewrite.NewAnalyzer(p, rewrite.Options{})}
	srv.pstate.Store(st)
	return st
}

type pstatePtr = atomic.Pointer[policyState]

// cryptoError is a failure to encrypt or decrypt a value. Its message is
// for the client and never holds values or key material; cause is for the
// log.
type cryptoError struct {
	code  string
	msg   string
	hint  string
	cause error
}

func (e *cryptoError) Error() string {
	if e.cause != nil {
		return e.msg + ": " + e.cause.Error()
	}
	return e.msg
}

func (e *cryptoError) Unwrap() error { return e.cause }

// encryptValue converts a client value to canonical plaintext and encrypts
// it for col under its current data key, appending the envelope to dst.
func (s *session) encryptValue(ctx context.Context, dst []byte, c *codec, col *policy.Column, format int16, val []byte) ([]byte, error) {
	key, err := s.currentKey(ctx, col)
	if err != nil {
		return nil, err
	}
	return s.encryptWith(dst, key, c, col, format, val)
}

// currentKey is the data key for new writes of col.
func (s *session) currentKey(ctx context.Context, col *policy.Column) (*crypto.Key, error) {
	for _, e := range s.encKeys {
		if e.name == col.Key {
			s.noteKeyID(e.key.ID())
			return e.key, nil
		}
	}
	key, err := s.srv.cfg.Keys.Current(ctx, col.Key, s.kmsFor(col))
	if err != nil {
		return nil, &cryptoError{code: "58000", msg: fmt.Sprintf("cannot encrypt column %s: its data key is unavailable", col), cause: err}
	}
	s.encKeys = append(s.encKeys, encKey{col.Key, key})
	s.noteKeyID(key.ID())
	return key, nil
}

// encKey is a current data key the client pump looked up while handling
// the messages of one read from the client (session.encKeys): a statement's
// values under one policy key take one keystore lookup, not one each. The
// memo is emptied before the pump reads again, so a key rotated meanwhile
// is picked up by the next batch, as the keystore's own cache would.
type encKey struct {
	name string
	key  *crypto.Key
}

// encTiming times the encryption of one statement's values.
type encTiming struct {
	m     *metrics.Metrics
	start time.Time
}

func (t *encTiming) done(n int) { t.m.Encrypted(n, time.Since(t.start)) }

// encTimer starts timing the encryption of one statement in 32 for the
// encryption-latency histogram and returns nil for the others (and when
// metrics are off), whose values are counted untimed: two clock reads per
// statement cost more than encrypting a small value. decryptRow samples
// rows the same way.
func (s *session) encTimer() *encTiming {
	m := s.srv.cfg.Metrics
	if m == nil {
		return nil
	}
	s.encStmts++
	if s.encStmts%32 != 1 {
		return nil
	}
	s.encT = encTiming{m: m, start: time.Now()}
	return &s.encT
}

// encryptWith is encryptValue under a key already looked up.
func (s *session) encryptWith(dst []byte, key *crypto.Key, c *codec, col *policy.Column, format int16, val []byte) ([]byte, error) {
	canon, err := c.toCanonical(s.scratch[:0], col.Type, format, val)
	if err != nil {
		return nil, err
	}
	s.scratch = canon
	out, err := key.Encrypt(dst, cryptoMode(col.Mode), canon, col.AAD(), s.srv.cfg.Rand)
	if err != nil {
		return nil, &cryptoError{code: "XX000", msg: fmt.Sprintf("cannot encrypt column %s", col), cause: err}
	}
	return out, nil
}

// candidates encrypts a value compared with a deterministic column under
// every live data-key version and appends a binary bytea[] of them.
//
// pad, when non-zero, repeats the first candidate up to that many
// elements. A prepared statement's generic plan assumes a parameter array
// holds 10 elements (PostgreSQL's estimate_array_length), so for a shorter
// array every custom plan looks cheaper and PostgreSQL re-plans the
// statement at every execution (measured: 138 µs against 102 µs per
// lookup). Padded to that length, the generic plan is chosen after five
// executions; duplicates do not change what "= ANY" matches.
func (s *session) candidates(ctx context.Context, dst []byte, c *codec, col *policy.Column, format int16, val []byte, pad int) ([]byte, error) {
	canon, err := c.toCanonical(s.scratch[:0], col.Type, format, val)
	if err != nil {
		return nil, err
	}
	s.scratch = canon
	if col.Mode != policy.Deterministic {
		return nil, fmt.Errorf("BUG: comparison with randomized column %s reached the proxy", col)
	}
	live, err := s.srv.cfg.Keys.Live(ctx, col.Key)
	if err == nil && len(live) == 0 {
		// No data key yet: nothing was ever written, so nothing can match;
		// the current key (created now) gives one harmless candidate.
		var k *crypto.Key
		if k, err = s.srv.cfg.Keys.Current(ctx, col.Key, s.kmsFor(col)); err == nil {
			live = []*crypto.Key{k}
		}
	}
	if err != nil {
		return nil, &cryptoError{code: "58000", msg: fmt.Sprintf("cannot search column %s: its data keys are unavailable", col), cause: err}
	}
	n := len(live)
	extra := 0
	if col.Migrating {
		// Rows not yet encrypted hold the canonical plaintext: during a
		// migration an equality lookup must find them too (the searched
		// value then reaches the server, as the legacy rows already are).
		n++
	}
	if n < pad {
		extra = pad - n
		n = pad
	}
	// One-dimensional array header: ndim, has-nulls, element type, then
	// dimension length and lower bound.
	dst = binary.BigEndian.AppendUint32(dst, 1)
	dst = binary.BigEndian.AppendUint32(dst, 0)
	dst = binary.BigEndian.AppendUint32(dst, byteaOID)
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = binary.BigEndian.AppendUint32(dst, 1)
	aad := col.AAD()
	first := -1
	for _, k := range live {
		lenAt := len(dst)
		dst = append(dst, 0, 0, 0, 0)
		dst, err = k.Encrypt(dst, crypto.ModeDeterministic, canon, aad, nil)
		if err != nil {
			return nil, &cryptoError{code: "XX000", msg: fmt.Sprintf("cannot search column %s", col), cause: err}
		}
		binary.BigEndian.PutUint32(dst[lenAt:], uint32(len(dst)-lenAt-4))
		if first < 0 {
			first = lenAt
		}
	}
	if extra > 0 && first >= 0 {
		elem := append([]byte(nil), dst[first:first+4+int(binary.BigEndian.Uint32(dst[first:]))]...)
		for i := 0; i < extra; i++ {
			dst = append(dst, elem...)
		}
	}
	if col.Migrating {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(canon)))
		dst = append(dst, canon...)
	}
	return dst, nil
}

// scalarForm reports whether every Scalar parameter of params has a
// single candidate now (rewrite.Result.ScalarSQL): its column is not being
// migrated and has at most one live data key. With resolve it also records
// the key for each such parameter in s.es.scalarKeys (the current key when
// none is live yet, as candidates would), for onBind. A keystore error
// gives false: the array form's candidates then reports it.
func (s *session) scalarForm(ctx context.Context, params []rewrite.Param, resolve bool) bool {
	keys := s.es.scalarKeys[:0]
	for _, prm := range params {
		var k *crypto.Key
		if prm.Scalar && prm.Column != nil {
			col := prm.Column
			if col.Migrating {
				return false
			}
			live, err := s.srv.cfg.Keys.Live(ctx, col.Key)
			if err != nil || len(live) > 1 {
				return false
			}
			if len(live) == 1 {
				k = live[0]
			} else if resolve {
				if k, err = s.srv.cfg.Keys.Current(ctx, col.Key, s.kmsFor(col)); err != nil {
					return false
				}
			}
		}
		keys = append(keys, k)
	}
	s.es.scalarKeys = keys
	return true
}

// scalarCandidate appends the one candidate of a value compared with
// deterministic column col under key: a binary bytea, where candidates
// appends a bytea[].
func (s *session) scalarCandidate(dst []byte, key *crypto.Key, c *codec, col *policy.Column, format int16, val []byte) ([]byte, error) {
	if col.Mode != policy.Deterministic || key == nil {
		return nil, fmt.Errorf("BUG: scalar comparison with column %s without its single deterministic key", col)
	}
	s.noteKeyID(key.ID())
	return s.encryptWith(dst, key, c, col, format, val)
}

// decryptValue decrypts a stored value of col (as the server sent it, in
// serverFormat) and appends it in the client's format.
func (s *session) decryptValue(ctx context.Context, dst []byte, c *codec, col *policy.Column, serverFormat, clientFormat int16, stored []byte) ([]byte, error) {
	env := stored
	if serverFormat == textFormat {
		var err error
		env, err = decodeByteaText(s.scratchDec[:0], stored)
		if err != nil {
			return nil, &cryptoError{code: "XX001", msg: fmt.Sprintf("cannot decrypt column %s: the stored value is not bytea", col), cause: err}
		}
		s.scratchDec = env
	}
	if !crypto.LooksLikeEnvelope(env) {
		if col.Migrating {
			// Legacy plaintext during a migration: the stored bytes are the
			// value's canonical form.
			return c.fromCanonical(dst, col.Type, clientFormat, env)
		}
		return nil, &cryptoError{code: "XX001", msg: fmt.Sprintf("cannot decrypt column %s: the stored value is not ciphertext", col),
			hint: "if the column still holds plaintext, mark it migrating: true in the policy and run encrypt-existing", cause: crypto.ErrNotEnvelope}
	}
	h, err := crypto.ParseHeader(env)
	if err != nil {
		return nil, &cryptoError{code: "XX001", msg: fmt.Sprintf("cannot decrypt column %s", col), cause: err}
	}
	key, err := s.keyByID(ctx, h.KeyID)
	if err != nil {
		return nil, &cryptoError{code: "58000", msg: fmt.Sprintf("cannot decrypt column %s: data key %d is unavailable", col, h.KeyID), cause: err}
	}
	s.noteReadKey(h.KeyID)
	plain, err := key.Decrypt(s.plainDec[:0], env, col.AAD())
	if err != nil {
		return nil, &cryptoError{code: "XX001", msg: fmt.Sprintf("cannot decrypt column %s", col), cause: err}
	}
	s.plainDec = plain
	out, err := c.fromCanonical(dst, col.Type, clientFormat, plain)
	if err != nil {
		return nil, &cryptoError{code: "XX001", msg: fmt.Sprintf("cannot decrypt column %s: the plaintext is not a valid %s", col, col.Type.Name), cause: err}
	}
	return out, nil
}

// keyByID is Keys.ByID remembered for the server pump's current batch of
// messages (decKeys is emptied before every read from the server), so a
// result set of many rows asks the keystore once per key and batch rather
// than once per value; a key destroyed meanwhile is seen at the next batch.
func (s *session) keyByID(ctx context.Context, id uint32) (*crypto.Key, error) {
	for _, k := range s.decKeys {
		if k.ID() == id {
			return k, nil
		}
	}
	k, err := s.srv.cfg.Keys.ByID(ctx, id)
	if err == nil && len(s.decKeys) < 8 {
		s.decKeys = append(s.decKeys, k)
	}
	return k, err
}

func (s *session) kmsFor(col *policy.Column) string {
	return s.pol.pol.Keys[col.Key].KMS
}

func cryptoMode(m policy.Mode) crypto.Mode {
	if m == policy.Deterministic {
		return crypto.ModeDeterministic
	}
	return crypto.ModeRandomized
}

const (
	byteaOID      = 17
	byteaArrayOID = 1001
)

// appendByteaLiteral appends a SQL literal of a bytea value that reads the
// same whatever standard_conforming_strings is.
func appendByteaLiteral(dst, b []byte) []byte {
	dst = append(dst, `E'\\x`...)
	dst = hex.AppendEncode(dst, b)
	return append(dst, `'::bytea`...)
}

// randReader is where nonces come from (crypto/rand unless a test says).
func (srv *Server) randReader() io.Reader { return srv.cfg.Rand }

var errNoKeys = errors.New("encryption is configured without a keystore")
