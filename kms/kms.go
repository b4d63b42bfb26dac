package kms

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// KEK is a versioned key-encryption key held by a KMS. Exactly one version is
// the primary; Wrap always uses it. Older versions keep unwrapping what they
// wrapped while they are enabled.
//
// Version arguments and results are full version names
// (Name()+"/cryptoKeyVersions/"+id); see [VersionID]. All methods are safe for
// concurrent use.
type KEK interface {
	// Name is the key's stable name, as stored in the keystore's kek_name
	// column: the Cloud KMS CryptoKey resource name, or "local:<key_id>".
	Name() string

	// Wrap encrypts plaintext (a DEK) under the primary version, binding aad.
	// It returns the opaque blob and the full name of the version actually
	// used, which the caller stores beside the blob.
	Wrap(ctx context.Context, plaintext, aad []byte) (blob []byte, version string, err error)

	// Unwrap decrypts a blob made by Wrap with the same aad. usedPrimary
	// reports whether the version that decrypted it is the current primary
	// (false is a signal that the blob should be rewrapped).
	Unwrap(ctx context.Context, blob, aad []byte) (plaintext []byte, usedPrimary bool, err error)

	// Primary returns the full name of the primary version.
	Primary(ctx context.Context) (string, error)

	// Versions lists every version, oldest first, including destroyed ones.
	Versions(ctx context.Context) ([]Version, error)

	// Disable makes a version unusable for Unwrap, reversibly. Disabling an
	// already disabled version is a no-op; the primary cannot be disabled
	// (ErrPrimaryVersion).
	Disable(ctx context.Context, version string) error

	// Enable re-enables a disabled version. With gcp, a version scheduled for
	// destruction is restored first. A destroyed version cannot come back
	// (ErrVersionDestroyed).
	Enable(ctx context.Context, version string) error

	// Destroy destroys a version's key material: gcp schedules destruction
	// (DESTROY_SCHEDULED, reversible with Enable until destroy_time); local
	// deletes the material at once and keeps a DESTROYED tombstone. The
	// primary cannot be destroyed (ErrPrimaryVersion). Destroying a destroyed
	// or scheduled version is a no-op, so retries are safe.
	Destroy(ctx context.Context, version string) error

	// Close releases resources (the gRPC connection). Further calls fail with
	// ErrClosed.
	Close() error
}

// Rotator is implemented by backends that can create a new primary version on
// demand (both local and gcp). With gcp, Cloud KMS normally rotates on its own
// schedule (rotation_period); Rotate is for tests and manual operation.
type Rotator interface {
	// Rotate creates a new version, makes it the primary, and returns its
	// full name.
	Rotate(ctx context.Context) (version string, err error)
}

// VersionState is the lifecycle state of a KEK version. String returns the
// Cloud KMS word (ENABLED, DISABLED, DESTROY_SCHEDULED, DESTROYED).
type VersionState int

// Version states. The zero value is StateUnknown, which also stands for Cloud
// KMS states this package does not use (PENDING_GENERATION, import states…).
const (
	StateUnknown VersionState = iota
	StateEnabled
	StateDisabled
	StateDestroyScheduled
	StateDestroyed
)

var stateNames = [...]string{
	StateUnknown:          "STATE_UNKNOWN",
	StateEnabled:          "ENABLED",
	StateDisabled:         "DISABLED",
	StateDestroyScheduled: "DESTROY_SCHEDULED",
	StateDestroyed:        "DESTROYED",
}

func (s VersionState) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "VersionState(" + strconv.Itoa(int(s)) + ")"
}

// ParseVersionState parses the Cloud KMS word for a state.
func ParseVersionState(s string) (VersionState, error) {
	for i, n := range stateNames {
		if i != int(StateUnknown) && n == s {
			return VersionState(i), nil
		}
	}
	return StateUnknown, fmt.Errorf("unknown key version state %q", s)
}

// MarshalText implements encoding.TextMarshaler.
func (s VersionState) MarshalText() ([]byte, error) {
	if s <= StateUnknown || int(s) >= len(stateNames) {
		return nil, fmt.Errorf("cannot marshal key version state %d", int(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *VersionState) UnmarshalText(b []byte) error {
	v, err := ParseVersionState(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Usable reports whether a version in this state can wrap and unwrap.
func (s VersionState) Usable() bool { return s == StateEnabled }

// Version describes one KEK version.
type Version struct {
	Name       string // full version name: <key name>/cryptoKeyVersions/<id>
	State      VersionState
	Primary    bool
	CreateTime time.Time
	// DestroyTime is when the material was (local, gcp DESTROYED) or will be
	// (gcp DESTROY_SCHEDULED) destroyed; zero otherwise.
	DestroyTime time.Time
}

// ID returns the short version id ("3").
func (v Version) ID() string { _, id, _ := SplitVersionName(v.Name); return id }

// versionSep separates a key name from its version id in a full version name,
// for every backend (it is Cloud KMS's own syntax).
const versionSep = "/cryptoKeyVersions/"

// VersionName joins a key name and a short version id.
func VersionName(key, id string) string { return key + versionSep + id }

// SplitVersionName splits a full version name into its key name and short id.
func SplitVersionName(version string) (key, id string, ok bool) {
	i := strings.LastIndex(version, versionSep)
	if i <= 0 {
		return "", "", false
	}
	key, id = version[:i], version[i+len(versionSep):]
	if id == "" || strings.Contains(id, "/") {
		return "", "", false
	}
	return key, id, true
}

// VersionID returns the short id of a full version name ("" if malformed).
func VersionID(version string) string { _, id, _ := SplitVersionName(version); return id }

// resolveVersion turns a caller's version argument (full name, or a bare id
// for CLI convenience) into a short id, checking it belongs to key.
func resolveVersion(key, version string) (string, error) {
	if version == "" {
		return "", fmt.Errorf("empty version name")
	}
	if !strings.Contains(version, "/") {
		return version, nil
	}
	k, id, ok := SplitVersionName(version)
	if !ok {
		return "", fmt.Errorf("malformed version name %q", version)
	}
	if k != key {
		return "", fmt.Errorf("version %q does not belong to key %q", version, key)
	}
	return id, nil
}
