package crypto

import (
	"errors"
	"strconv"
)

// Errors are deliberately vague about cryptographic reasons (as in tink):
// every authentication failure is ErrAuth, whether the tag, the associated
// data, the header or the key was wrong. Test for them with errors.Is.
var (
	// ErrNotEnvelope: the bytes lack the magic or are too short to be an
	// envelope. During a migration such a value is legacy plaintext.
	ErrNotEnvelope = errors.New("crypto: not a field envelope")
	// ErrUnsupportedVersion: magic present, format version unknown to this
	// build (written by a newer proxy, or not an envelope).
	ErrUnsupportedVersion = errors.New("crypto: unsupported envelope version")
	// ErrUnsupportedMode: magic and version present, mode byte unknown.
	ErrUnsupportedMode = errors.New("crypto: unsupported envelope mode")
	// ErrWrongKey: the envelope names another DEK id than the Key's.
	ErrWrongKey = errors.New("crypto: envelope belongs to a different key")
	// ErrAuth: authentication failed (tampered bytes, wrong column, wrong
	// key material). Never return the value as plaintext after this error.
	ErrAuth = errors.New("crypto: message authentication failed")
	// ErrInvalidMode: a caller passed a Mode or policy string that is not
	// a mode.
	ErrInvalidMode = errors.New("crypto: invalid mode")
	// ErrInvalidKey: NewKey was given a DEK that is not 32 bytes.
	ErrInvalidKey = errors.New("crypto: invalid data encryption key")
	// ErrTooLarge: plaintext longer than MaxPlaintextLen.
	ErrTooLarge = errors.New("crypto: plaintext too large")
)

// DecryptError is the error of every failed Key.Decrypt. It carries the id
// of the key that attempted the decryption, never plaintext, ciphertext or
// key bytes, so it is safe to log. Err is one of the sentinel errors above.
type DecryptError struct {
	KeyID uint32
	Err   error
}

func (e *DecryptError) Error() string {
	return e.Err.Error() + " (key id " + strconv.FormatUint(uint64(e.KeyID), 10) + ")"
}

func (e *DecryptError) Unwrap() error { return e.Err }
