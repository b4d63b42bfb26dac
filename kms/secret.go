package kms

import (
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"os"
)

// MasterKeySize is the size of the local keyring's master key.
const MasterKeySize = 32

// EnvMasterKey is the environment variable holding the base64 master key.
const EnvMasterKey = "PGCRYPT_MASTER_KEY"

// MasterKey holds the 32-byte master key of a local keyring. It never prints
// (every fmt verb, JSON and text marshalling give "[REDACTED]") and compares in
// constant time. The zero value means "no master key".
type MasterKey struct {
	b []byte
}

const redacted = "[REDACTED]"

// NewMasterKey copies b, which must be exactly 32 bytes.
func NewMasterKey(b []byte) (MasterKey, error) {
	if len(b) != MasterKeySize {
		return MasterKey{}, &Error{Op: "master key", Kind: ErrInvalidArgument,
			Err: fmt.Errorf("master key must be %d bytes, got %d", MasterKeySize, len(b))}
	}
	return MasterKey{b: bytes.Clone(b)}, nil
}

// ParseMasterKey decodes base64 (standard or URL alphabet, padded or not,
// surrounding whitespace ignored) of exactly 32 bytes.
func ParseMasterKey(s string) (MasterKey, error) {
	s = string(bytes.TrimSpace([]byte(s)))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.Strict().DecodeString(s); err == nil {
			if len(b) != MasterKeySize {
				return MasterKey{}, &Error{Op: "master key", Kind: ErrInvalidArgument,
					Err: fmt.Errorf("master key must decode to %d bytes, got %d", MasterKeySize, len(b))}
			}
			return MasterKey{b: b}, nil
		}
	}
	return MasterKey{}, &Error{Op: "master key", Kind: ErrInvalidArgument,
		Err: fmt.Errorf("master key is not valid base64 (expected base64 of %d random bytes, e.g. `head -c32 /dev/urandom | base64`)", MasterKeySize)}
}

// MasterKeyFromEnv reads PGCRYPT_MASTER_KEY. It returns the zero MasterKey and
// no error when the variable is unset or empty.
func MasterKeyFromEnv() (MasterKey, error) {
	v := os.Getenv(EnvMasterKey)
	if v == "" {
		return MasterKey{}, nil
	}
	k, err := ParseMasterKey(v)
	if err != nil {
		err.(*Error).Op = "master key from $" + EnvMasterKey
	}
	return k, err
}

// MasterKeyFromFile reads a master key file. A file of exactly 32 bytes is the
// raw key; anything else must be the base64 of 32 bytes (trailing newline and
// surrounding whitespace allowed).
func MasterKeyFromFile(path string) (MasterKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return MasterKey{}, &Error{Op: "master key file " + path, Kind: ErrInvalidArgument, Err: err}
	}
	defer clear(b)
	if len(b) == MasterKeySize {
		return NewMasterKey(b)
	}
	k, err := ParseMasterKey(string(b))
	if err != nil {
		err.(*Error).Op = "master key file " + path
	}
	return k, err
}

// LoadMasterKey returns the master key from file if file is not empty, else
// from PGCRYPT_MASTER_KEY. Setting both is an error (ambiguous). Neither set
// gives the zero MasterKey and no error (dev mode may not need one).
func LoadMasterKey(file string) (MasterKey, error) {
	if file != "" {
		if os.Getenv(EnvMasterKey) != "" {
			return MasterKey{}, &Error{Op: "master key", Kind: ErrInvalidArgument,
				Err: fmt.Errorf("both $%s and master_key_file %s are set; set only one", EnvMasterKey, file)}
		}
		return MasterKeyFromFile(file)
	}
	return MasterKeyFromEnv()
}

// IsZero reports whether no key is set.
func (k MasterKey) IsZero() bool { return len(k.b) == 0 }

// Equal compares two keys in constant time.
func (k MasterKey) Equal(o MasterKey) bool {
	return len(k.b) == len(o.b) && subtle.ConstantTimeCompare(k.b, o.b) == 1
}

// String returns a redaction.
func (k MasterKey) String() string { return redacted }

// GoString returns a redaction.
func (k MasterKey) GoString() string { return redacted }

// Format prints a redaction for every verb.
func (k MasterKey) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// MarshalText returns a redaction, so a config dumped as JSON/YAML leaks nothing.
func (k MasterKey) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// bytes exposes the key to this package's crypto only.
func (k MasterKey) bytes() []byte { return k.b }
