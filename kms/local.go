package kms

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// LocalPrefix starts every local key name: "local:<key_id>".
const LocalPrefix = "local:"

// LocalOptions configure the local keyring backend.
type LocalOptions struct {
	// Path of the keyring JSON file. Its directory must exist. A lock file
	// Path+".lock" is created beside it.
	Path string
	// MasterKey seals the keyring (see LoadMasterKey). Required unless Dev.
	MasterKey MasterKey
	// Dev allows a cleartext keyring: InitLocal without a master key writes
	// one, and OpenLocal accepts one. Never in production.
	Dev bool
	// KeyID names a new keyring (InitLocal only); the KEK's name is
	// "local:"+KeyID. Default: 16 random hex digits. [A-Za-z0-9._-], ≤ 64.
	KeyID string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Rand is the randomness for keys and nonces (default crypto/rand).
	Rand io.Reader
}

// Local is the embedded KEK backend: a keyring file of versioned AES-256 keys
// sealed under a master key. See doc.go for the file format. A *Local caches
// the decrypted keyring and reloads it whenever the file changes (another
// process rotated it), so a long-running proxy sees a rotation made by
// `pgcrypt-proxy kms local rotate` at its next call.
type Local struct {
	path, lockPath string
	master         MasterKey
	dev            bool
	now            func() time.Time

	randMu sync.Mutex
	rand   io.Reader

	mu     sync.Mutex
	ring   *keyring // never mutated once published; updates swap it
	stamp  fileStamp
	closed bool
}

var (
	_ KEK     = (*Local)(nil)
	_ Rotator = (*Local)(nil)
)

func (o *LocalOptions) defaults(op string) (*Local, error) {
	if o.Path == "" {
		return nil, &Error{Op: op, Kind: ErrInvalidArgument, Err: errors.New("keyring path is empty")}
	}
	abs, err := filepath.Abs(o.Path)
	if err != nil {
		return nil, &Error{Op: op, File: o.Path, Kind: ErrInvalidArgument, Err: err}
	}
	l := &Local{path: abs, lockPath: abs + ".lock", master: o.MasterKey, dev: o.Dev, now: o.Now, rand: o.Rand}
	if l.now == nil {
		l.now = time.Now
	}
	if l.rand == nil {
		l.rand = rand.Reader
	}
	return l, nil
}

// InitLocal creates a new keyring file with version 1 as the primary and
// returns it opened. It refuses to overwrite an existing file
// (ErrKeyringExists). Without a master key it requires Dev and writes a
// cleartext keyring.
func InitLocal(ctx context.Context, opts LocalOptions) (*Local, error) {
	l, err := opts.defaults("init")
	if err != nil {
		return nil, err
	}
	if l.master.IsZero() && !l.dev {
		return nil, l.err("init", ErrNoMasterKey, nil)
	}
	keyID := opts.KeyID
	if keyID == "" {
		b := make([]byte, 8)
		if err := l.readRand(b); err != nil {
			return nil, l.err("init", ErrBackend, err)
		}
		keyID = hex.EncodeToString(b)
	}
	if !keyIDPattern.MatchString(keyID) {
		return nil, &Error{Op: "init", File: l.path, Kind: ErrInvalidArgument,
			Err: fmt.Errorf("key id %q: use 1-64 of [A-Za-z0-9._-]", keyID)}
	}
	unlock, err := lockFile(ctx, l.lockPath, true)
	if err != nil {
		return nil, l.err("init", ErrBackend, fmt.Errorf("locking: %w", err))
	}
	defer unlock()
	if _, err := os.Lstat(l.path); err == nil {
		return nil, l.err("init", ErrKeyringExists, nil)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, l.err("init", ErrBackend, err)
	}
	key := make([]byte, kekSize)
	if err := l.readRand(key); err != nil {
		return nil, l.err("init", ErrBackend, err)
	}
	now := l.now().UTC()
	r := &keyring{KeyID: keyID, Primary: 1, UpdateTime: now,
		Versions: []*ringEntry{{Version: 1, State: StateEnabled, CreateTime: now, Key: key}}}
	if err := l.writeLocked("init", r, false); err != nil {
		return nil, err
	}
	return l, nil
}

// OpenLocal opens an existing keyring file.
func OpenLocal(ctx context.Context, opts LocalOptions) (*Local, error) {
	l, err := opts.defaults("open")
	if err != nil {
		return nil, err
	}
	unlock, err := lockFile(ctx, l.lockPath, false)
	if err != nil {
		return nil, l.err("open", ErrBackend, fmt.Errorf("locking: %w", err))
	}
	defer unlock()
	r, st, err := l.readLocked("open")
	if err != nil {
		return nil, err
	}
	l.ring, l.stamp = r, st
	return l, nil
}

func (l *Local) err(op string, kind, cause error) *Error {
	return &Error{Op: op, File: l.path, Key: l.name(), Kind: kind, Err: cause}
}

func (l *Local) name() string {
	if l.ring == nil {
		return ""
	}
	return LocalPrefix + l.ring.KeyID
}

func (l *Local) readRand(b []byte) error {
	l.randMu.Lock()
	defer l.randMu.Unlock()
	if _, err := io.ReadFull(l.rand, b); err != nil {
		return fmt.Errorf("reading randomness: %w", err)
	}
	return nil
}

// readLocked reads and authenticates the file; the caller holds the file lock.
func (l *Local) readLocked(op string) (*keyring, fileStamp, error) {
	f, err := os.Open(l.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fileStamp{}, &Error{Op: op, File: l.path, Kind: ErrNotFound,
				Err: errors.New("no such file (create it with `pgcrypt-proxy kms local init`)")}
		}
		return nil, fileStamp{}, &Error{Op: op, File: l.path, Kind: ErrBackend, Err: err}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileStamp{}, &Error{Op: op, File: l.path, Kind: ErrBackend, Err: err}
	}
	if !fi.Mode().IsRegular() {
		return nil, fileStamp{}, &Error{Op: op, File: l.path, Kind: ErrCorruptKeyring, Err: errors.New("not a regular file")}
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyringSize+1))
	if err != nil {
		return nil, fileStamp{}, &Error{Op: op, File: l.path, Kind: ErrBackend, Err: err}
	}
	defer clear(data)
	if len(data) > maxKeyringSize {
		return nil, fileStamp{}, &Error{Op: op, File: l.path, Kind: ErrCorruptKeyring, Err: errors.New("file is too large")}
	}
	r, kind, cause := decodeKeyring(data, l.master, l.dev)
	if kind != nil {
		return nil, fileStamp{}, &Error{Op: op, File: l.path, Kind: kind, Err: cause}
	}
	return r, stampOf(fi), nil
}

// writeLocked writes r atomically: a temp file in the same directory (0600),
// fsync, rename over the keyring (or link, which refuses to overwrite, when
// creating), fsync of the directory. The caller holds the exclusive lock.
func (l *Local) writeLocked(op string, r *keyring, replace bool) error {
	data, err := encodeKeyring(r, l.master, lockedReader{l})
	if err != nil {
		return l.err(op, ErrBackend, err)
	}
	dir := filepath.Dir(l.path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(l.path)+".tmp-*")
	if err != nil {
		return l.err(op, ErrBackend, err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // after a rename this fails harmlessly
	werr := tmp.Chmod(0o600)
	if werr == nil {
		_, werr = tmp.Write(data)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return l.err(op, ErrBackend, werr)
	}
	if replace {
		werr = os.Rename(tmpName, l.path)
	} else {
		werr = os.Link(tmpName, l.path)
		if errors.Is(werr, fs.ErrExist) {
			return l.err(op, ErrKeyringExists, nil)
		}
	}
	if werr != nil {
		return l.err(op, ErrBackend, werr)
	}
	if d, err := os.Open(dir); err == nil {
		werr = d.Sync()
		d.Close()
	}
	if werr != nil {
		return l.err(op, ErrBackend, fmt.Errorf("fsync of directory: %w", werr))
	}
	fi, err := os.Stat(l.path)
	if err != nil {
		return l.err(op, ErrBackend, err)
	}
	l.ring, l.stamp = r, stampOf(fi)
	return nil
}

type lockedReader struct{ l *Local }

func (r lockedReader) Read(b []byte) (int, error) {
	r.l.randMu.Lock()
	defer r.l.randMu.Unlock()
	return r.l.rand.Read(b)
}

// current returns the keyring, reloading it if the file changed.
func (l *Local) current(ctx context.Context, op string) (*keyring, error) {
	if err := ctx.Err(); err != nil {
		return nil, l.err(op, ErrTransient, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, l.err(op, ErrClosed, nil)
	}
	if fi, err := os.Stat(l.path); err == nil && l.ring != nil && stampOf(fi) == l.stamp {
		return l.ring, nil
	}
	unlock, err := lockFile(ctx, l.lockPath, false)
	if err != nil {
		return nil, l.err(op, ErrBackend, fmt.Errorf("locking: %w", err))
	}
	defer unlock()
	r, st, err := l.readLocked(op)
	if err != nil {
		return nil, err
	}
	l.ring, l.stamp = r, st
	return r, nil
}

// update runs a read-modify-write of the keyring under the exclusive file
// lock. fn gets a private copy freshly read from disk; if it returns an error
// nothing is written.
func (l *Local) update(ctx context.Context, op string, fn func(r *keyring, now time.Time) error) error {
	if err := ctx.Err(); err != nil {
		return l.err(op, ErrTransient, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return l.err(op, ErrClosed, nil)
	}
	unlock, err := lockFile(ctx, l.lockPath, true)
	if err != nil {
		return l.err(op, ErrBackend, fmt.Errorf("locking: %w", err))
	}
	defer unlock()
	r, _, err := l.readLocked(op)
	if err != nil {
		return err
	}
	now := l.now().UTC()
	if err := fn(r, now); err != nil {
		return err
	}
	r.UpdateTime = now
	if err := r.validate(); err != nil {
		panic("BUG: kms: keyring update produced an invalid keyring: " + err.Error())
	}
	return l.writeLocked(op, r, true)
}

// Name returns "local:<key_id>".
func (l *Local) Name() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.name()
}

// Path returns the keyring file's absolute path.
func (l *Local) Path() string { return l.path }

func (l *Local) fullName(r *keyring, v uint32) string {
	return VersionName(LocalPrefix+r.KeyID, strconv.FormatUint(uint64(v), 10))
}

// parseVersion resolves a version argument (full name or bare number).
func (l *Local) parseVersion(op string, r *keyring, version string) (uint32, error) {
	id, err := resolveVersion(LocalPrefix+r.KeyID, version)
	if err != nil {
		return 0, &Error{Op: op, Key: LocalPrefix + r.KeyID, Version: version, Kind: ErrNotFound, Err: err}
	}
	n, err := strconv.ParseUint(id, 10, 32)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != id {
		return 0, &Error{Op: op, Key: LocalPrefix + r.KeyID, Version: version, Kind: ErrNotFound,
			Err: errors.New("local version ids are positive decimal numbers")}
	}
	return uint32(n), nil
}

// Local blob format: "PGKW" | 0x01 | version (uint32 big-endian) | nonce (12)
// | AES-256-GCM ciphertext+tag. The GCM associated data is the 9-byte header
// followed by the caller's aad.
const (
	blobMagic     = "PGKW"
	blobFormatV1  = 1
	blobHeaderLen = 4 + 1 + 4
	blobOverhead  = blobHeaderLen + gcmNonceSize + 16
)

func blobAAD(header, aad []byte) []byte {
	out := make([]byte, 0, len(header)+len(aad))
	return append(append(out, header...), aad...)
}

// Wrap encrypts plaintext under the primary version with AES-256-GCM.
func (l *Local) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, string, error) {
	r, err := l.current(ctx, "wrap")
	if err != nil {
		return nil, "", err
	}
	e := r.entry(r.Primary)
	version := l.fullName(r, e.Version)
	aead, err := newGCM(e.Key)
	if err != nil {
		return nil, "", &Error{Op: "wrap", Version: version, Kind: ErrBackend, Err: err}
	}
	blob := make([]byte, blobHeaderLen+gcmNonceSize, blobOverhead+len(plaintext))
	copy(blob, blobMagic)
	blob[4] = blobFormatV1
	binary.BigEndian.PutUint32(blob[5:9], e.Version)
	if err := l.readRand(blob[blobHeaderLen:]); err != nil {
		return nil, "", &Error{Op: "wrap", Version: version, Kind: ErrBackend, Err: err}
	}
	blob = aead.Seal(blob, blob[blobHeaderLen:], plaintext, blobAAD(blob[:blobHeaderLen], aad))
	return blob, version, nil
}

// BlobVersion returns the full name of the version that wrapped a local blob,
// without decrypting it.
func (l *Local) BlobVersion(blob []byte) (string, error) {
	v, err := parseBlobHeader(blob)
	if err != nil {
		return "", &Error{Op: "blob version", Key: l.Name(), Kind: ErrInvalidCiphertext, Err: err}
	}
	return VersionName(l.Name(), strconv.FormatUint(uint64(v), 10)), nil
}

func parseBlobHeader(blob []byte) (uint32, error) {
	if len(blob) < blobOverhead {
		return 0, fmt.Errorf("blob is %d bytes, shorter than the minimum %d", len(blob), blobOverhead)
	}
	if string(blob[:4]) != blobMagic || blob[4] != blobFormatV1 {
		return 0, errors.New("not a local KEK blob (bad magic or format version)")
	}
	return binary.BigEndian.Uint32(blob[5:9]), nil
}

// Unwrap decrypts a blob from Wrap; the blob names its version.
func (l *Local) Unwrap(ctx context.Context, blob, aad []byte) ([]byte, bool, error) {
	r, err := l.current(ctx, "unwrap")
	if err != nil {
		return nil, false, err
	}
	key := LocalPrefix + r.KeyID
	v, err := parseBlobHeader(blob)
	if err != nil {
		return nil, false, &Error{Op: "unwrap", Key: key, Kind: ErrInvalidCiphertext, Err: err}
	}
	version := l.fullName(r, v)
	e := r.entry(v)
	switch {
	case e == nil:
		return nil, false, &Error{Op: "unwrap", Version: version, Kind: ErrNotFound}
	case e.State == StateDisabled:
		return nil, false, &Error{Op: "unwrap", Version: version, Kind: ErrVersionDisabled}
	case e.State == StateDestroyed:
		return nil, false, &Error{Op: "unwrap", Version: version, Kind: ErrVersionDestroyed}
	}
	aead, err := newGCM(e.Key)
	if err != nil {
		return nil, false, &Error{Op: "unwrap", Version: version, Kind: ErrBackend, Err: err}
	}
	pt, err := aead.Open(nil, blob[blobHeaderLen:blobHeaderLen+gcmNonceSize],
		blob[blobHeaderLen+gcmNonceSize:], blobAAD(blob[:blobHeaderLen], aad))
	if err != nil {
		return nil, false, &Error{Op: "unwrap", Version: version, Kind: ErrInvalidCiphertext}
	}
	return pt, v == r.Primary, nil
}

// Primary returns the primary version's full name.
func (l *Local) Primary(ctx context.Context) (string, error) {
	r, err := l.current(ctx, "primary")
	if err != nil {
		return "", err
	}
	return l.fullName(r, r.Primary), nil
}

// Versions lists all versions, oldest first, including destroyed tombstones.
func (l *Local) Versions(ctx context.Context) ([]Version, error) {
	r, err := l.current(ctx, "versions")
	if err != nil {
		return nil, err
	}
	out := make([]Version, 0, len(r.Versions))
	for _, e := range r.Versions {
		v := Version{Name: l.fullName(r, e.Version), State: e.State, Primary: e.Version == r.Primary, CreateTime: e.CreateTime}
		if e.DestroyTime != nil {
			v.DestroyTime = *e.DestroyTime
		}
		out = append(out, v)
	}
	return out, nil
}

// Rotate adds a new random version and makes it the primary.
func (l *Local) Rotate(ctx context.Context) (string, error) {
	var version string
	err := l.update(ctx, "rotate", func(r *keyring, now time.Time) error {
		last := r.Versions[len(r.Versions)-1].Version
		if last == ^uint32(0) {
			return &Error{Op: "rotate", Key: LocalPrefix + r.KeyID, Kind: ErrFailedPrecondition, Err: errors.New("version numbers exhausted")}
		}
		key := make([]byte, kekSize)
		if err := l.readRand(key); err != nil {
			return &Error{Op: "rotate", Key: LocalPrefix + r.KeyID, Kind: ErrBackend, Err: err}
		}
		r.Versions = append(r.Versions, &ringEntry{Version: last + 1, State: StateEnabled, CreateTime: now, Key: key})
		r.Primary = last + 1
		version = l.fullName(r, last+1)
		return nil
	})
	return version, err
}

// Disable disables a non-primary version.
func (l *Local) Disable(ctx context.Context, version string) error {
	return l.update(ctx, "disable", func(r *keyring, _ time.Time) error {
		e, full, err := l.lookup("disable", r, version)
		if err != nil {
			return err
		}
		switch {
		case e.State == StateDestroyed:
			return &Error{Op: "disable", Version: full, Kind: ErrVersionDestroyed}
		case e.Version == r.Primary:
			return &Error{Op: "disable", Version: full, Kind: ErrPrimaryVersion}
		}
		e.State = StateDisabled
		return nil
	})
}

// Enable re-enables a disabled version.
func (l *Local) Enable(ctx context.Context, version string) error {
	return l.update(ctx, "enable", func(r *keyring, _ time.Time) error {
		e, full, err := l.lookup("enable", r, version)
		if err != nil {
			return err
		}
		if e.State == StateDestroyed {
			return &Error{Op: "enable", Version: full, Kind: ErrVersionDestroyed}
		}
		e.State = StateEnabled
		return nil
	})
}

// Destroy deletes a non-primary version's material at once, keeping a
// DESTROYED tombstone with its destroy time.
func (l *Local) Destroy(ctx context.Context, version string) error {
	return l.update(ctx, "destroy", func(r *keyring, now time.Time) error {
		e, full, err := l.lookup("destroy", r, version)
		if err != nil {
			return err
		}
		switch {
		case e.State == StateDestroyed:
			return nil
		case e.Version == r.Primary:
			return &Error{Op: "destroy", Version: full, Kind: ErrPrimaryVersion}
		}
		clear(e.Key)
		e.Key = nil
		e.State = StateDestroyed
		e.DestroyTime = &now
		return nil
	})
}

func (l *Local) lookup(op string, r *keyring, version string) (*ringEntry, string, error) {
	v, err := l.parseVersion(op, r, version)
	if err != nil {
		return nil, "", err
	}
	full := l.fullName(r, v)
	e := r.entry(v)
	if e == nil {
		return nil, "", &Error{Op: op, Version: full, Kind: ErrNotFound}
	}
	return e, full, nil
}

// Close marks the KEK closed; later calls fail with ErrClosed.
func (l *Local) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return nil
}
