package keys

import (
	"errors"
	"strconv"
	"strings"

	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// Error kinds. Every error returned by this package is an *Error whose Kind is
// one of these (test with errors.Is); it also unwraps to its cause, so
// errors.Is(err, kms.ErrVersionDisabled) or errors.Is(err, context.Canceled)
// work too. No error carries key material, wrapped or not.
var (
	// ErrNotFound: no data key has this id (or this key name has no DEK).
	ErrNotFound = errors.New("no such data key in the keystore")
	// ErrDestroyed: the DEK was crypto-shredded (state 'destroyed', wrapped
	// DEK deleted); values encrypted under it can never be decrypted again.
	ErrDestroyed = errors.New("data key is destroyed; values encrypted under it cannot be decrypted")
	// ErrUnwrap: the KMS refused the wrapped DEK as not authentic: the
	// keystore row was altered, or its wrapped DEK was copied from another
	// row (the wrap binds the DEK's identity).
	ErrUnwrap = errors.New("wrapped data key does not authenticate: the keystore row was altered or its wrapped key belongs to another row")
	// ErrNoKEK: the DEK is wrapped by a KEK that no configured kms backend
	// provides (kek_name unknown).
	ErrNoKEK = errors.New("no configured kms backend holds the key-encryption key that wrapped this data key")
	// ErrUnknownKMS: the kms backend named by the policy is not configured.
	ErrUnknownKMS = errors.New("no kms backend of this name is configured")
	// ErrKMS: a KMS call failed (timeout, outage, checksum, permission,
	// disabled version…); the cause says which. kms.IsRetryable tells
	// whether a later call may succeed.
	ErrKMS = errors.New("KMS call failed")
	// ErrKeystore: the keystore database failed or refused a statement.
	ErrKeystore = errors.New("keystore database error")
	// ErrSchemaVersion: the keystore was migrated by a newer pgcrypt-proxy.
	ErrSchemaVersion = errors.New("keystore schema is newer than this pgcrypt-proxy supports; upgrade pgcrypt-proxy")
	// ErrNoKeystore: Options.ReadOnly and the keystore tables do not exist.
	ErrNoKeystore = errors.New("keystore does not exist yet (the proxy creates it when it first starts)")
	// ErrReadOnly: the Store was opened ReadOnly and cannot create a DEK.
	ErrReadOnly = errors.New("keystore opened read-only; cannot create a data key")
	// ErrInvalidArgument: a caller's mistake (bad key name, bad schema name).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrCorrupt: the keystore holds something impossible (an unwrapped DEK
	// of the wrong size, an id out of range).
	ErrCorrupt = errors.New("keystore row is corrupt")
	// ErrInternal: any other fault (the random source failed).
	ErrInternal = errors.New("internal error")
)

// Error is the error type of this package.
type Error struct {
	Op         string // "current", "by id", "live", "list", "open", "create"
	Key        string // policy key name, when known
	DEKVersion int    // DEK version, when known (0: unknown)
	ID         uint32 // DEK id, when known (0: unknown)
	Kind       error  // one of the Err* kinds above
	Err        error  // cause; may be nil
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("keys: ")
	b.WriteString(e.Op)
	switch {
	case e.Key != "":
		b.WriteString(" data key ")
		b.WriteString(strconv.Quote(e.Key))
		if e.DEKVersion > 0 {
			b.WriteString(" version ")
			b.WriteString(strconv.Itoa(e.DEKVersion))
		}
		if e.ID != 0 {
			b.WriteString(" (id ")
			b.WriteString(strconv.FormatUint(uint64(e.ID), 10))
			b.WriteString(")")
		}
	case e.ID != 0:
		b.WriteString(" data key id ")
		b.WriteString(strconv.FormatUint(uint64(e.ID), 10))
	}
	if e.Kind != nil {
		b.WriteString(": ")
		b.WriteString(e.Kind.Error())
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the kind and the cause.
func (e *Error) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// IsUserError reports whether err is the operator's doing and fixed by
// configuration or an operator action (unknown kms backend, a KEK not
// configured, a destroyed DEK, a disabled KEK version, a denied permission,
// a too-old binary), as opposed to an internal fault (KMS outage, database
// error, tampered keystore) that the operator must investigate. It mirrors
// Vault's UserError / InternalError split.
func IsUserError(err error) bool {
	for _, k := range []error{ErrUnknownKMS, ErrNoKEK, ErrDestroyed, ErrSchemaVersion, ErrNoKeystore,
		ErrReadOnly, ErrInvalidArgument} {
		if errors.Is(err, k) {
			return true
		}
	}
	return errors.Is(err, ErrKMS) && kms.IsUserError(err)
}

// IsRetryable reports whether a later call may succeed without anyone
// acting: a transient KMS failure (kms.IsRetryable).
func IsRetryable(err error) bool { return errors.Is(err, ErrKMS) && kms.IsRetryable(err) }
