package migrate

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// verdict is what a stored value is; see doc.go.
type verdict uint8

const (
	verdictNull verdict = iota
	verdictCurrent
	verdictOldKey
	verdictPlaintext
	verdictUndecryptable
	verdictInvalid
)

// Reasons for undecryptable and invalid values, as reported.
const (
	ReasonDestroyedKey   = "destroyed_key"         // the DEK was crypto-shredded
	ReasonUnknownKey     = "unknown_key"           // no DEK has the id in the header
	ReasonKeyUnavailable = "key_unavailable"       // the KMS refuses the DEK's KEK (disabled, not configured, not authentic)
	ReasonAuth           = "authentication_failed" // tampered, or copied from another column
	ReasonWrongLength    = "wrong_length"          // not the fixed size of the declared type
	ReasonInvalidUTF8    = "invalid_utf8"          // text that is not UTF-8
	ReasonInvalidNumeric = "invalid_numeric"       // not numeric_send output
	ReasonInvalidJSONB   = "invalid_jsonb"         // not jsonb_send output
	ReasonInvalidBool    = "invalid_bool"          // not 0 or 1
)

// outcome is the classification of one value and, when it must change,
// its new bytes.
type outcome struct {
	verdict verdict
	reason  string // undecryptable and invalid values
	keyID   uint32 // the DEK id an envelope names
	newVal  []byte // old key and plaintext values, unless dry run
}

// classifier classifies values; one per worker goroutine (it owns its
// scratch buffer).
type classifier struct {
	keys Keys
	rand io.Reader
	dry  bool
	pt   []byte // decrypted plaintext scratch; wiped by wipe
}

// classify decides what v (a stored value of col, nil for NULL) is, and
// encrypts it under cur when it must move. cur is nil in a dry run where
// the key has no active DEK yet. An error is a failure that may pass (KMS
// outage, keystore down, cancelled): the run stops.
func (c *classifier) classify(ctx context.Context, col *column, cur *crypto.Key, v []byte) (outcome, error) {
	if v == nil {
		return outcome{verdict: verdictNull}, nil
	}
	if crypto.LooksLikeEnvelope(v) {
		h, _ := crypto.ParseHeader(v) // cannot fail after LooksLikeEnvelope
		k, err := c.keys.ByID(ctx, h.KeyID)
		if err != nil {
			reason, lasting := keyFailure(ctx, err)
			if !lasting {
				return outcome{}, fmt.Errorf("data key %d: %w", h.KeyID, err)
			}
			return outcome{verdict: verdictUndecryptable, reason: reason, keyID: h.KeyID}, nil
		}
		pt, err := k.Decrypt(c.pt[:0], v, col.aad)
		if err != nil {
			return outcome{verdict: verdictUndecryptable, reason: ReasonAuth, keyID: h.KeyID}, nil
		}
		c.pt = pt
		if cur != nil && h.KeyID == cur.ID() && h.Mode == col.mode {
			return outcome{verdict: verdictCurrent, keyID: h.KeyID}, nil
		}
		out := outcome{verdict: verdictOldKey, keyID: h.KeyID}
		if !c.dry && cur != nil {
			if out.newVal, err = cur.Encrypt(nil, col.mode, pt, col.aad, c.rand); err != nil {
				return outcome{}, fmt.Errorf("re-encrypt under data key %d: %w", cur.ID(), err)
			}
		}
		return out, nil
	}
	// Not an envelope header: legacy plaintext, exactly as the proxy's
	// migrating reads take it, so encrypting it changes nothing a client
	// sees.
	if reason := checkCanonical(col.pol.Type, v); reason != "" {
		return outcome{verdict: verdictInvalid, reason: reason}, nil
	}
	out := outcome{verdict: verdictPlaintext}
	if !c.dry && cur != nil {
		var err error
		if out.newVal, err = cur.Encrypt(nil, col.mode, v, col.aad, c.rand); err != nil {
			return outcome{}, fmt.Errorf("encrypt under data key %d: %w", cur.ID(), err)
		}
	}
	return out, nil
}

// wipe clears the plaintext scratch.
func (c *classifier) wipe() { clear(c.pt[:cap(c.pt)]) }

// keyFailure says whether a failure to get a DEK by id is lasting (the
// value is undecryptable, and why) or may pass (the run must stop, not
// misreport).
func keyFailure(ctx context.Context, err error) (reason string, lasting bool) {
	switch {
	case ctx.Err() != nil, errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "", false
	case errors.Is(err, keys.ErrDestroyed):
		return ReasonDestroyedKey, true
	case errors.Is(err, keys.ErrNotFound):
		return ReasonUnknownKey, true
	case errors.Is(err, keys.ErrUnwrap), errors.Is(err, keys.ErrCorrupt), errors.Is(err, keys.ErrNoKEK):
		return ReasonKeyUnavailable, true
	case errors.Is(err, keys.ErrKMS) && !keys.IsRetryable(err):
		return ReasonKeyUnavailable, true
	}
	return "", false
}

// checkCanonical returns "" when v is a valid canonical plaintext of t
// (what the type's send function produces), else the reason it is not.
func checkCanonical(t policy.Type, v []byte) string {
	switch t.Name {
	case "text", "varchar":
		if !utf8.Valid(v) {
			return ReasonInvalidUTF8
		}
	case "bytea":
	case "bool":
		if len(v) != 1 {
			return ReasonWrongLength
		}
		if v[0] > 1 {
			return ReasonInvalidBool
		}
	case "int2":
		return wantLen(v, 2)
	case "int4", "date":
		return wantLen(v, 4)
	case "int8", "float8", "timestamp", "timestamptz":
		return wantLen(v, 8)
	case "uuid":
		return wantLen(v, 16)
	case "numeric":
		// ndigits, weight, sign, dscale (int16 each), then ndigits int16
		// base-10000 digits.
		if len(v) < 8 {
			return ReasonInvalidNumeric
		}
		nd := int(int16(binary.BigEndian.Uint16(v[0:2])))
		sign := binary.BigEndian.Uint16(v[4:6])
		if nd < 0 || len(v) != 8+2*nd {
			return ReasonInvalidNumeric
		}
		switch sign {
		case 0x0000, 0x4000, 0xC000, 0xD000, 0xF000: // +, -, NaN, +Inf, -Inf
		default:
			return ReasonInvalidNumeric
		}
	case "jsonb":
		if len(v) < 1 || v[0] != 1 || !json.Valid(v[1:]) {
			return ReasonInvalidJSONB
		}
	}
	return ""
}

func wantLen(v []byte, n int) string {
	if len(v) != n {
		return ReasonWrongLength
	}
	return ""
}
