package kms

import (
	"errors"
	"strings"
)

// Error kinds. Every error returned by this package is an *Error whose Kind is
// one of these, so callers test with errors.Is(err, kms.ErrVersionDisabled).
// The *Error also unwraps to its cause (a gRPC status, context.DeadlineExceeded,
// an fs error), so errors.Is(err, context.Canceled) works too. No error ever
// contains key material, plaintext or master keys.
var (
	// ErrNotFound: the key or version does not exist (or belongs to another key).
	ErrNotFound = errors.New("not found")
	// ErrVersionDisabled: the version exists but is disabled; Enable restores it.
	ErrVersionDisabled = errors.New("key version is disabled")
	// ErrVersionDestroyed: the version is destroyed or scheduled for
	// destruction; its material is (or will be) gone.
	ErrVersionDestroyed = errors.New("key version is destroyed or scheduled for destruction")
	// ErrPrimaryVersion: the operation is refused on the primary version
	// (Disable, Destroy). Rotate first.
	ErrPrimaryVersion = errors.New("refused on the primary key version; rotate first")
	// ErrPermission: the KMS denied access (IAM) or the caller is not
	// authenticated.
	ErrPermission = errors.New("permission denied by the KMS")
	// ErrChecksum: a CRC32C integrity check failed (data corrupted in
	// transit). Retried internally; returned once retries are exhausted.
	ErrChecksum = errors.New("CRC32C checksum mismatch: data corrupted in transit")
	// ErrTransient: the KMS was unavailable, overloaded or too slow; the call
	// may succeed later. Retried internally; returned once retries are
	// exhausted or the context ended.
	ErrTransient = errors.New("KMS temporarily unavailable")
	// ErrInvalidCiphertext: the blob is malformed or does not authenticate
	// (wrong AAD, other key, corrupted).
	ErrInvalidCiphertext = errors.New("ciphertext is malformed or does not authenticate (wrong AAD, key or data)")
	// ErrInvalidArgument: a caller error (bad version name, oversized input,
	// bad option).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrFailedPrecondition: the KMS refused the operation in the key's
	// current state, for a reason not covered by a more specific kind.
	ErrFailedPrecondition = errors.New("operation refused in the key's current state")
	// ErrWrongMasterKey: the master key does not decrypt the local keyring.
	ErrWrongMasterKey = errors.New("master key does not decrypt it (wrong PGCRYPT_MASTER_KEY?)")
	// ErrNoMasterKey: a sealed keyring needs a master key and none was given.
	ErrNoMasterKey = errors.New("no master key given (set PGCRYPT_MASTER_KEY or master_key_file)")
	// ErrCorruptKeyring: the keyring file is truncated, not valid, or was
	// modified.
	ErrCorruptKeyring = errors.New("corrupt or truncated")
	// ErrKeyringExists: Init refuses to overwrite an existing keyring.
	ErrKeyringExists = errors.New("already exists; refusing to overwrite it")
	// ErrDevKeyring: a cleartext (dev-mode) keyring is refused outside dev mode.
	ErrDevKeyring = errors.New("is a cleartext dev-mode keyring; refusing to open it without dev mode")
	// ErrClosed: the KEK was closed.
	ErrClosed = errors.New("KEK is closed")
	// ErrBackend: any other KMS failure.
	ErrBackend = errors.New("KMS error")
)

// Error is the error type of this package.
type Error struct {
	Op      string // "wrap", "unwrap", "rotate", "open", …
	File    string // local keyring path, for keyring file errors
	Key     string // key name, when known
	Version string // full version name, when known
	Kind    error  // one of the Err* kinds above
	Err     error  // underlying cause; may be nil
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("kms: ")
	b.WriteString(e.Op)
	switch {
	case e.File != "":
		b.WriteString(": keyring ")
		b.WriteString(e.File)
	case e.Version != "":
		b.WriteString(" ")
		b.WriteString(e.Version)
	case e.Key != "":
		b.WriteString(" ")
		b.WriteString(e.Key)
	}
	if e.Kind != nil {
		if e.File != "" && (e.Kind == ErrKeyringExists || e.Kind == ErrDevKeyring) {
			b.WriteString(" ")
		} else {
			b.WriteString(": ")
		}
		b.WriteString(e.Kind.Error())
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns both the kind and the cause, for errors.Is / errors.As.
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

// Retryable reports whether the same call may succeed if tried again later.
func (e *Error) Retryable() bool { return e.Kind == ErrTransient || e.Kind == ErrChecksum }

// IsRetryable reports whether err is a transient KMS failure (ErrTransient or
// ErrChecksum) that a later retry may clear.
func IsRetryable(err error) bool {
	return errors.Is(err, ErrTransient) || errors.Is(err, ErrChecksum)
}

// IsUserError reports whether err is the operator's or caller's mistake
// (configuration, wrong key, refused operation) rather than a fault of the
// KMS or of the data.
func IsUserError(err error) bool {
	for _, k := range []error{ErrNotFound, ErrPrimaryVersion, ErrPermission, ErrInvalidArgument,
		ErrWrongMasterKey, ErrNoMasterKey, ErrKeyringExists, ErrDevKeyring, ErrClosed,
		ErrVersionDisabled, ErrVersionDestroyed} {
		if errors.Is(err, k) {
			return true
		}
	}
	return false
}
