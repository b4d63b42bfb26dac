package kms

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"time"
)

// Keyring file format, version 1 (see doc.go for the full description).
const (
	keyringFormat        = "pgcrypt-keyring"
	keyringFormatVersion = 1
	cipherAES256GCM      = "AES-256-GCM"
	cipherNone           = "none"
	maxKeyringSize       = 16 << 20
	kekSize              = 32
	gcmNonceSize         = 12
	masterCheckSize      = 16

	hkdfInfoSeal  = "pgcrypt-keyring v1 seal"
	hkdfInfoCheck = "pgcrypt-keyring v1 master key check"
)

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// fileHeader is the cleartext part of the file. Re-serialized with
// json.Marshal (compact, in this field order) it is the AES-GCM associated
// data of the sealed section, so none of it can be changed undetected.
type fileHeader struct {
	Format         string `json:"format"`
	FormatVersion  int    `json:"format_version"`
	KeyID          string `json:"key_id"`
	Dev            bool   `json:"dev"`
	Cipher         string `json:"cipher"`
	MasterKeyCheck string `json:"master_key_check,omitempty"`
}

// keyringFile is the whole JSON document.
type keyringFile struct {
	fileHeader
	Nonce   string   `json:"nonce,omitempty"`   // base64, 12 bytes (sealed only)
	Sealed  string   `json:"sealed,omitempty"`  // base64 AES-256-GCM(payload JSON) (sealed only)
	Keyring *keyring `json:"keyring,omitempty"` // cleartext payload (dev only)
}

// keyring is the payload: every version's metadata and material.
type keyring struct {
	KeyID      string       `json:"key_id"`
	Primary    uint32       `json:"primary"`
	UpdateTime time.Time    `json:"update_time"`
	Versions   []*ringEntry `json:"versions"`
}

type ringEntry struct {
	Version     uint32       `json:"version"`
	State       VersionState `json:"state"`
	CreateTime  time.Time    `json:"create_time"`
	DestroyTime *time.Time   `json:"destroy_time,omitempty"`
	Key         []byte       `json:"key,omitempty"` // 32 bytes; absent once destroyed
}

func (r *keyring) entry(v uint32) *ringEntry {
	for _, e := range r.Versions {
		if e.Version == v {
			return e
		}
	}
	return nil
}

func (r *keyring) validate() error {
	if len(r.Versions) == 0 {
		return errors.New("no key versions")
	}
	var prev uint32
	for _, e := range r.Versions {
		if e.Version <= prev {
			return fmt.Errorf("versions not strictly increasing at version %d", e.Version)
		}
		prev = e.Version
		switch e.State {
		case StateEnabled, StateDisabled:
			if len(e.Key) != kekSize {
				return fmt.Errorf("version %d: key material missing or not %d bytes", e.Version, kekSize)
			}
		case StateDestroyed:
			if len(e.Key) != 0 {
				return fmt.Errorf("version %d: destroyed version still has key material", e.Version)
			}
		default:
			return fmt.Errorf("version %d: invalid state %s", e.Version, e.State)
		}
	}
	p := r.entry(r.Primary)
	if p == nil {
		return fmt.Errorf("primary version %d does not exist", r.Primary)
	}
	if p.State != StateEnabled {
		return fmt.Errorf("primary version %d is %s", r.Primary, p.State)
	}
	return nil
}

// clone deep-copies the keyring (key material included).
func (r *keyring) clone() *keyring {
	c := *r
	c.Versions = make([]*ringEntry, len(r.Versions))
	for i, e := range r.Versions {
		ce := *e
		ce.Key = bytes.Clone(e.Key)
		if e.DestroyTime != nil {
			t := *e.DestroyTime
			ce.DestroyTime = &t
		}
		c.Versions[i] = &ce
	}
	return &c
}

// deriveKeys derives the sealing key and the master key check value from the
// master key, salted with the key id.
func deriveKeys(master []byte, keyID string) (sealKey, check []byte, err error) {
	sealKey, err = hkdf.Key(sha256.New, master, []byte(keyID), hkdfInfoSeal, 32)
	if err != nil {
		return nil, nil, err
	}
	check, err = hkdf.Key(sha256.New, master, []byte(keyID), hkdfInfoCheck, masterCheckSize)
	return sealKey, check, err
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// encodeKeyring serializes r. With a master key the payload is sealed; with a
// zero master key (dev mode only) it is written in cleartext.
func encodeKeyring(r *keyring, master MasterKey, rnd io.Reader) ([]byte, error) {
	f := keyringFile{fileHeader: fileHeader{
		Format: keyringFormat, FormatVersion: keyringFormatVersion, KeyID: r.KeyID,
	}}
	if master.IsZero() {
		f.Dev = true
		f.Cipher = cipherNone
		f.Keyring = r
	} else {
		sealKey, check, err := deriveKeys(master.bytes(), r.KeyID)
		if err != nil {
			return nil, err
		}
		f.Cipher = cipherAES256GCM
		f.MasterKeyCheck = base64.StdEncoding.EncodeToString(check)
		aad, err := json.Marshal(f.fileHeader)
		if err != nil {
			return nil, err
		}
		payload, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		defer clear(payload)
		aead, err := newGCM(sealKey)
		clear(sealKey)
		if err != nil {
			return nil, err
		}
		nonce := make([]byte, gcmNonceSize)
		if _, err := io.ReadFull(rnd, nonce); err != nil {
			return nil, fmt.Errorf("reading random nonce: %w", err)
		}
		f.Nonce = base64.StdEncoding.EncodeToString(nonce)
		f.Sealed = base64.StdEncoding.EncodeToString(aead.Seal(nil, nonce, payload, aad))
	}
	out, err := json.MarshalIndent(&f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// decodeKeyring parses and authenticates a keyring file's bytes. Errors are
// kind-only (ErrCorruptKeyring, ErrWrongMasterKey, ErrNoMasterKey,
// ErrDevKeyring) plus a cause that never quotes file content.
func decodeKeyring(data []byte, master MasterKey, devAllowed bool) (*keyring, error, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, ErrCorruptKeyring, errors.New("file is empty")
	}
	var f keyringFile
	if err := strictJSON(data, &f); err != nil {
		return nil, ErrCorruptKeyring, err
	}
	// encoding/json matches field names case-insensitively and accepts
	// non-canonical base64 and numbers; requiring the exact canonical
	// encoding makes every altered byte of the cleartext part an error.
	var compact bytes.Buffer
	if err := json.Compact(&compact, bytes.TrimSpace(data)); err != nil {
		return nil, ErrCorruptKeyring, errors.New("invalid JSON")
	}
	canon, err := json.Marshal(&f)
	same := err == nil && bytes.Equal(compact.Bytes(), canon)
	clear(compact.Bytes())
	clear(canon)
	if !same {
		return nil, ErrCorruptKeyring, errors.New("not in the canonical form this program writes (modified by hand or damaged)")
	}
	h := f.fileHeader
	switch {
	case h.Format != keyringFormat:
		return nil, ErrCorruptKeyring, errors.New("not a pgcrypt keyring (bad \"format\")")
	case h.FormatVersion != keyringFormatVersion:
		return nil, ErrCorruptKeyring, fmt.Errorf("unsupported format_version %d (this build reads %d)", h.FormatVersion, keyringFormatVersion)
	case !keyIDPattern.MatchString(h.KeyID):
		return nil, ErrCorruptKeyring, errors.New("invalid key_id")
	}
	var r *keyring
	if h.Dev {
		if h.Cipher != cipherNone || h.MasterKeyCheck != "" || f.Nonce != "" || f.Sealed != "" || f.Keyring == nil {
			return nil, ErrCorruptKeyring, errors.New("inconsistent dev-mode keyring")
		}
		if !devAllowed {
			return nil, ErrDevKeyring, nil
		}
		r = f.Keyring
	} else {
		if h.Cipher != cipherAES256GCM || f.Keyring != nil {
			return nil, ErrCorruptKeyring, errors.New("inconsistent sealed keyring (cipher or cleartext section)")
		}
		if master.IsZero() {
			return nil, ErrNoMasterKey, nil
		}
		check, err1 := base64.StdEncoding.Strict().DecodeString(h.MasterKeyCheck)
		nonce, err2 := base64.StdEncoding.Strict().DecodeString(f.Nonce)
		sealed, err3 := base64.StdEncoding.Strict().DecodeString(f.Sealed)
		if err := errors.Join(err1, err2, err3); err != nil || len(check) != masterCheckSize ||
			len(nonce) != gcmNonceSize || len(sealed) < 16 {
			return nil, ErrCorruptKeyring, errors.New("malformed master_key_check, nonce or sealed field")
		}
		sealKey, wantCheck, err := deriveKeys(master.bytes(), h.KeyID)
		if err != nil {
			return nil, ErrCorruptKeyring, err
		}
		defer clear(sealKey)
		aad, err := json.Marshal(h)
		if err != nil {
			return nil, ErrCorruptKeyring, err
		}
		aead, err := newGCM(sealKey)
		if err != nil {
			return nil, ErrCorruptKeyring, err
		}
		payload, openErr := aead.Open(nil, nonce, sealed, aad)
		defer clear(payload)
		if !hmac.Equal(check, wantCheck) {
			if openErr == nil {
				return nil, ErrCorruptKeyring, errors.New("master_key_check was modified")
			}
			return nil, ErrWrongMasterKey, nil
		}
		if openErr != nil {
			return nil, ErrCorruptKeyring, errors.New("authentication failed: the file was modified or damaged")
		}
		r = new(keyring)
		if err := strictJSON(payload, r); err != nil {
			return nil, ErrCorruptKeyring, fmt.Errorf("sealed payload: %w", err)
		}
	}
	if r.KeyID != h.KeyID {
		return nil, ErrCorruptKeyring, errors.New("key_id of payload and header differ")
	}
	if err := r.validate(); err != nil {
		return nil, ErrCorruptKeyring, err
	}
	return r, nil, nil
}

// strictJSON decodes exactly one JSON value with no unknown fields and no
// trailing data. Its errors name offsets and fields, never content.
func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return sanitizeJSONError(err, dec.InputOffset())
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after the JSON document at byte %d", dec.InputOffset())
	}
	return nil
}

func sanitizeJSONError(err error, off int64) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("truncated JSON (unexpected end of file)")
	case errors.As(err, &se):
		return fmt.Errorf("invalid JSON at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Errorf("invalid JSON: field %q has the wrong type at byte %d", te.Field, te.Offset)
	default:
		// Unknown field, invalid state word, bad base64 in a []byte…: the
		// messages may quote content, so report only the position.
		return fmt.Errorf("invalid keyring content near byte %d", off)
	}
}
