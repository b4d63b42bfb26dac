package crypto

import (
	"encoding/binary"
	"fmt"
)

// Format constants of envelope version 1. They are frozen by the known-answer
// vectors in testdata/vectors.json; see doc.go for the byte layout.
const (
	// Magic0 and Magic1 are the two magic bytes every envelope starts with.
	// Neither byte occurs anywhere in valid UTF-8, so no text value can ever
	// look like an envelope.
	Magic0 byte = 0xC1
	Magic1 byte = 0xF5

	// Version1 is the only envelope format version this package writes and
	// reads.
	Version1 byte = 0x01

	// HeaderSize is the length of magic | version | mode | DEK id.
	HeaderSize = 2 + 1 + 1 + 4

	// NonceSize is the length of the random nonce of a randomized envelope
	// (XAES-256-GCM's 192-bit nonce).
	NonceSize = 24

	// TagSize is the length of the GCM tag of a randomized envelope.
	TagSize = 16

	// SIVSize is the length of the synthetic IV of a deterministic
	// envelope. It sits where the nonce sits and is also the tag.
	SIVSize = 16

	// MaxPlaintextLen bounds the plaintext so that every envelope fits in a
	// PostgreSQL field (1 GiB) with room to spare.
	MaxPlaintextLen = 1<<30 - 64
)

// Mode selects how a column is encrypted. The numeric value is the mode byte
// of the envelope. The zero Mode is invalid, so a forgotten mode is an error
// rather than a silent default.
type Mode uint8

const (
	// ModeRandomized is XAES-256-GCM with a random 192-bit nonce: equal
	// plaintexts give unrelated envelopes. It is the default.
	ModeRandomized Mode = 0x01
	// ModeDeterministic is AES-SIV (RFC 5297, AES-256 halves): equal
	// plaintexts under the same key and associated data give equal
	// envelopes, so equality search works and equality is all that leaks.
	ModeDeterministic Mode = 0x02
)

// ParseMode parses a policy's mode value: "randomized" or "deterministic".
// The empty string is the default, ModeRandomized.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "randomized":
		return ModeRandomized, nil
	case "deterministic":
		return ModeDeterministic, nil
	}
	return 0, fmt.Errorf("%w %q (want \"randomized\" or \"deterministic\")", ErrInvalidMode, s)
}

// String returns the policy spelling of m.
func (m Mode) String() string {
	switch m {
	case ModeRandomized:
		return "randomized"
	case ModeDeterministic:
		return "deterministic"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Valid reports whether m is a mode this package implements.
func (m Mode) Valid() bool {
	return m == ModeRandomized || m == ModeDeterministic
}

// MarshalText implements encoding.TextMarshaler.
func (m Mode) MarshalText() ([]byte, error) {
	if !m.Valid() {
		return nil, fmt.Errorf("%w %d", ErrInvalidMode, uint8(m))
	}
	return []byte(m.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseMode, so a
// policy decoder (yaml.v3, encoding/json) can decode a Mode directly.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Overhead returns how many bytes an envelope of mode m adds to the
// plaintext: 48 for ModeRandomized, 24 for ModeDeterministic, and 0 for an
// invalid mode.
func Overhead(m Mode) int {
	switch m {
	case ModeRandomized:
		return HeaderSize + NonceSize + TagSize
	case ModeDeterministic:
		return HeaderSize + SIVSize
	}
	return 0
}

// Header is the cleartext, authenticated prefix of an envelope.
type Header struct {
	Version byte
	Mode    Mode
	KeyID   uint32 // the DEK id; find the DEK by it before calling Decrypt
}

// ParseHeader decodes the header of envelope so the caller can find the DEK
// by Header.KeyID. It checks the magic, the version, the mode and that the
// envelope is at least as long as the mode's overhead; it does not
// authenticate anything. It returns ErrNotEnvelope, ErrUnsupportedVersion or
// ErrUnsupportedMode.
func ParseHeader(envelope []byte) (Header, error) {
	if len(envelope) < HeaderSize || envelope[0] != Magic0 || envelope[1] != Magic1 {
		return Header{}, ErrNotEnvelope
	}
	if envelope[2] != Version1 {
		return Header{}, ErrUnsupportedVersion
	}
	m := Mode(envelope[3])
	if !m.Valid() {
		return Header{}, ErrUnsupportedMode
	}
	if len(envelope) < Overhead(m) {
		return Header{}, ErrNotEnvelope
	}
	return Header{Version: envelope[2], Mode: m, KeyID: binary.BigEndian.Uint32(envelope[4:8])}, nil
}

// LooksLikeEnvelope reports whether b has the magic, a supported version and
// mode, and at least the minimum length of an envelope. It is a cheap
// pre-filter only: whether b is an envelope is decided by a successful
// Decrypt (authentication), never by LooksLikeEnvelope alone. It is false
// for every valid UTF-8 string and for every value shorter than 24 bytes.
func LooksLikeEnvelope(b []byte) bool {
	_, err := ParseHeader(b)
	return err == nil
}

// putHeader writes the version-1 header for mode and id into h[:HeaderSize].
func putHeader(h []byte, m Mode, id uint32) {
	_ = h[HeaderSize-1]
	h[0], h[1], h[2], h[3] = Magic0, Magic1, Version1, byte(m)
	binary.BigEndian.PutUint32(h[4:8], id)
}
