package proxy

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// Wire format codes.
const (
	textFormat   int16 = 0
	binaryFormat int16 = 1
)

// A policy value's plaintext is encrypted in one canonical form: the
// PostgreSQL binary encoding of the column's declared type (for text and
// varchar, the UTF-8 bytes; for jsonb, version byte 1 and the JSON text).
// Values arrive from clients in text or binary format and leave in the
// format each client asked for; codec converts between the two. Binary is
// canonical for every type the policy allows in deterministic mode, so equal
// values give equal ciphertexts whichever format the client used.
//
// A codec belongs to one pump: pgtype.Map is not safe for concurrent use.
type codec struct {
	m  *pgtype.Map
	tz *time.Location // the session's TimeZone, for timestamptz text
}

func newCodec() *codec { return &codec{m: pgtype.NewMap(), tz: time.UTC} }

// valueError is a client value that is not valid for its column's declared
// type. Its message follows PostgreSQL's and never contains the value.
type valueError struct {
	code string
	msg  string
}

func (e *valueError) Error() string { return e.msg }

func invalidInput(t policy.Type) error {
	return &valueError{code: "22P02", msg: "invalid input syntax for type " + t.Name}
}

// setTimeZone follows the session's TimeZone parameter.
func (c *codec) setTimeZone(name string) {
	if loc, err := time.LoadLocation(name); err == nil {
		c.tz = loc
		return
	}
	// PostgreSQL also accepts POSIX-style zones ("<+03>-03") and offsets;
	// fall back to UTC, which only changes how timestamptz text is shown.
	c.tz = time.UTC
}

// toCanonical converts a client value in format to the canonical plaintext,
// appended to dst.
func (c *codec) toCanonical(dst []byte, t policy.Type, format int16, src []byte) ([]byte, error) {
	switch t.OID {
	case pgtype.TextOID, pgtype.VarcharOID:
		if !utf8.Valid(src) {
			return nil, &valueError{code: "22021", msg: "invalid byte sequence for encoding \"UTF8\""}
		}
		return append(dst, src...), nil
	case pgtype.ByteaOID:
		if format == binaryFormat {
			return append(dst, src...), nil
		}
		return decodeByteaText(dst, src)
	case pgtype.JSONBOID:
		body := src
		if format == binaryFormat {
			if len(src) == 0 || src[0] != 1 {
				return nil, &valueError{code: "22P02", msg: "unsupported jsonb version number"}
			}
			body = src[1:]
		}
		if !json.Valid(body) {
			return nil, &valueError{code: "22P02", msg: "invalid input syntax for type json"}
		}
		return append(append(dst, 1), body...), nil
	}
	if format == binaryFormat {
		if err := validBinary(t, src); err != nil {
			return nil, err
		}
		return append(dst, src...), nil
	}
	s := strings.TrimSpace(string(src))
	switch t.OID {
	case pgtype.TimestamptzOID, pgtype.TimestampOID:
		switch strings.ToLower(s) {
		case "infinity", "+infinity":
			return binary.BigEndian.AppendUint64(dst, uint64(pgInfinity)), nil
		case "-infinity":
			return binary.BigEndian.AppendUint64(dst, 1<<63), nil
		}
		tm, ok := parseTimestamp(s, t.OID == pgtype.TimestamptzOID, c.tz)
		if !ok {
			return nil, invalidInput(t)
		}
		return appendTimestamp(dst, tm, t.OID == pgtype.TimestamptzOID)
	case pgtype.BoolOID:
		switch strings.ToLower(s) {
		case "t", "true", "yes", "y", "on", "1":
			return append(dst, 1), nil
		case "f", "false", "no", "n", "off", "0":
			return append(dst, 0), nil
		}
		return nil, invalidInput(t)
	}
	v, err := c.decodeValue(t.OID, textFormat, []byte(s))
	if (err != nil || v == nil) && t.OID == pgtype.DateOID {
		// PostgreSQL reads a date from a timestamp's text too
		// ("2024-01-02 00:00:00Z"), as drivers send dates from time values.
		if tm, ok := parseTimestamp(s, false, time.UTC); ok {
			v, err = time.Date(tm.Year(), tm.Month(), tm.Day(), 0, 0, 0, 0, time.UTC), nil
		}
	}
	if err != nil || v == nil {
		return nil, invalidInput(t)
	}
	out, err := c.m.Encode(t.OID, binaryFormat, v, dst)
	if err != nil {
		return nil, invalidInput(t)
	}
	return out, nil
}

// fromCanonical converts canonical plaintext to the client's format,
// appended to dst.
func (c *codec) fromCanonical(dst []byte, t policy.Type, format int16, canon []byte) ([]byte, error) {
	switch t.OID {
	case pgtype.TextOID, pgtype.VarcharOID:
		return append(dst, canon...), nil
	case pgtype.ByteaOID:
		if format == binaryFormat {
			return append(dst, canon...), nil
		}
		dst = append(dst, '\\', 'x')
		return hex.AppendEncode(dst, canon), nil
	case pgtype.JSONBOID:
		if len(canon) == 0 || canon[0] != 1 {
			return nil, errors.New("corrupt jsonb plaintext")
		}
		if format == binaryFormat {
			return append(dst, canon...), nil
		}
		return append(dst, canon[1:]...), nil
	}
	if format == binaryFormat {
		return append(dst, canon...), nil
	}
	if err := validBinary(t, canon); err != nil {
		return nil, err
	}
	switch t.OID {
	case pgtype.Int2OID:
		return strconv.AppendInt(dst, int64(int16(binary.BigEndian.Uint16(canon))), 10), nil
	case pgtype.Int4OID:
		return strconv.AppendInt(dst, int64(int32(binary.BigEndian.Uint32(canon))), 10), nil
	case pgtype.Int8OID:
		return strconv.AppendInt(dst, int64(binary.BigEndian.Uint64(canon)), 10), nil
	case pgtype.BoolOID:
		if canon[0] != 0 {
			return append(dst, 't'), nil
		}
		return append(dst, 'f'), nil
	case pgtype.Float8OID:
		return appendFloat8(dst, math.Float64frombits(binary.BigEndian.Uint64(canon))), nil
	case pgtype.TimestamptzOID, pgtype.TimestampOID:
		return c.appendTimestampText(dst, canon, t.OID == pgtype.TimestamptzOID), nil
	}
	v, err := c.decodeValue(t.OID, binaryFormat, canon)
	if err != nil {
		return nil, err
	}
	return c.m.Encode(t.OID, textFormat, v, dst)
}

func (c *codec) decodeValue(oid uint32, format int16, src []byte) (any, error) {
	typ, ok := c.m.TypeForOID(oid)
	if !ok {
		return nil, fmt.Errorf("BUG: no codec for type %d", oid)
	}
	return typ.Codec.DecodeValue(c.m, oid, format, src)
}

// validBinary checks the length of fixed-size binary encodings.
func validBinary(t policy.Type, b []byte) error {
	want := -1
	switch t.OID {
	case pgtype.BoolOID:
		want = 1
	case pgtype.Int2OID:
		want = 2
	case pgtype.Int4OID, pgtype.DateOID:
		want = 4
	case pgtype.Int8OID, pgtype.Float8OID, pgtype.TimestampOID, pgtype.TimestamptzOID:
		want = 8
	case pgtype.UUIDOID:
		want = 16
	case pgtype.NumericOID:
		if len(b) < 8 {
			return &valueError{code: "22P03", msg: "insufficient data left in message for type numeric"}
		}
		return nil
	}
	if want >= 0 && len(b) != want {
		return &valueError{code: "22P03", msg: fmt.Sprintf("incorrect binary data format for type %s", t.Name)}
	}
	return nil
}

// decodeByteaText reads bytea's text input: hex (\x…) or escape format.
func decodeByteaText(dst, src []byte) ([]byte, error) {
	if len(src) >= 2 && src[0] == '\\' && src[1] == 'x' {
		h := src[2:]
		// Fast path: PostgreSQL's own output, an even run of hex digits.
		if len(h)%2 == 0 {
			n := len(dst)
			dst = append(dst, make([]byte, len(h)/2)...)
			if _, err := hex.Decode(dst[n:], h); err == nil {
				return dst, nil
			}
			dst = dst[:n]
		}
		out := dst
		for i := 0; i < len(h); {
			if h[i] == ' ' || h[i] == '\n' || h[i] == '\t' || h[i] == '\r' {
				i++
				continue
			}
			if i+1 >= len(h) {
				return nil, &valueError{code: "22023", msg: "invalid hexadecimal data: odd number of digits"}
			}
			if !isHexDigit(h[i]) || !isHexDigit(h[i+1]) {
				return nil, &valueError{code: "22023", msg: "invalid hexadecimal digit"}
			}
			out = append(out, byte(hexDigit(h[i])<<4|hexDigit(h[i+1])))
			i += 2
		}
		return out, nil
	}
	out := dst
	for i := 0; i < len(src); i++ {
		if src[i] != '\\' {
			out = append(out, src[i])
			continue
		}
		switch {
		case i+1 < len(src) && src[i+1] == '\\':
			out = append(out, '\\')
			i++
		case i+3 < len(src) && isOctal(src[i+1]) && isOctal(src[i+2]) && isOctal(src[i+3]) && src[i+1] <= '3':
			out = append(out, (src[i+1]-'0')<<6|(src[i+2]-'0')<<3|(src[i+3]-'0'))
			i += 3
		default:
			return nil, &valueError{code: "22P02", msg: "invalid input syntax for type bytea"}
		}
	}
	return out, nil
}

func isHexDigit(b byte) bool {
	return b >= '0' && b <= '9' || b >= 'a' && b <= 'f' || b >= 'A' && b <= 'F'
}

func hexDigit(b byte) int {
	switch {
	case b >= '0' && b <= '9':
		return int(b - '0')
	case b >= 'a' && b <= 'f':
		return int(b-'a') + 10
	}
	return int(b-'A') + 10
}

func isOctal(b byte) bool { return b >= '0' && b <= '7' }

// appendFloat8 formats like PostgreSQL 12+ (shortest exact representation).
func appendFloat8(dst []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(dst, "NaN"...)
	case math.IsInf(f, 1):
		return append(dst, "Infinity"...)
	case math.IsInf(f, -1):
		return append(dst, "-Infinity"...)
	}
	return strconv.AppendFloat(dst, f, 'g', -1, 64)
}

// PostgreSQL timestamps count microseconds from 2000-01-01 00:00:00 UTC.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	pgInfinity    = math.MaxInt64
	pgNegInfinity = math.MinInt64
)

func appendTimestamp(dst []byte, tm time.Time, tz bool) ([]byte, error) {
	if !tz {
		// timestamp without time zone: the wall clock as written.
		y, mo, d := tm.Date()
		h, mi, s := tm.Clock()
		tm = time.Date(y, mo, d, h, mi, s, tm.Nanosecond(), time.UTC)
	}
	us := tm.Sub(pgEpoch).Microseconds()
	if d := tm.Sub(pgEpoch); d == math.MaxInt64 || d == math.MinInt64 {
		// Beyond time.Duration's ±292 years: compute from Unix time.
		us = (tm.Unix()-pgEpoch.Unix())*1_000_000 + int64(tm.Nanosecond()/1000)
	}
	return binary.BigEndian.AppendUint64(dst, uint64(us)), nil
}

func (c *codec) appendTimestampText(dst, canon []byte, tz bool) []byte {
	us := int64(binary.BigEndian.Uint64(canon))
	switch us {
	case pgInfinity:
		return append(dst, "infinity"...)
	case pgNegInfinity:
		return append(dst, "-infinity"...)
	}
	tm := time.Unix(pgEpoch.Unix()+us/1_000_000, (us%1_000_000)*1000).UTC()
	if us < 0 && us%1_000_000 != 0 {
		tm = time.Unix(pgEpoch.Unix()+us/1_000_000-1, (1_000_000+us%1_000_000)*1000).UTC()
	}
	if tz {
		tm = tm.In(c.tz)
	}
	// ISO DateStyle, as PostgreSQL prints by default.
	dst = tm.AppendFormat(dst, "2006-01-02 15:04:05")
	if frac := tm.Nanosecond() / 1000; frac != 0 {
		f := strconv.AppendInt(nil, int64(frac)+1_000_000, 10)[1:]
		for len(f) > 0 && f[len(f)-1] == '0' {
			f = f[:len(f)-1]
		}
		dst = append(append(dst, '.'), f...)
	}
	if tz {
		_, off := tm.Zone()
		sign := byte('+')
		if off < 0 {
			sign, off = '-', -off
		}
		dst = append(dst, sign)
		dst = append(dst, byte('0'+off/36000), byte('0'+off/3600%10))
		if m := off % 3600 / 60; m != 0 || off%60 != 0 {
			dst = append(dst, ':', byte('0'+m/10), byte('0'+m%10))
		}
		if s := off % 60; s != 0 {
			dst = append(dst, ':', byte('0'+s/10), byte('0'+s%10))
		}
	}
	return dst
}

// parseTimestamp reads the ISO forms clients send: "2006-01-02 15:04:05",
// optional fraction, optional "T", optional zone (Z, ±hh, ±hh:mm);
// "infinity" and "-infinity". A timestamptz without a zone is in the
// session's time zone, as PostgreSQL reads it.
func parseTimestamp(s string, tz bool, loc *time.Location) (time.Time, bool) {
	s = strings.Replace(s, "T", " ", 1)
	layouts := []string{
		"2006-01-02 15:04:05.999999999Z07:00:00",
		"2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999Z07",
		"2006-01-02 15:04:05.999999999 Z07:00",
		"2006-01-02 15:04:05.999999999",
		"2006-01-02 15:04",
		"2006-01-02",
	}
	for _, l := range layouts {
		in := loc
		if !tz {
			in = time.UTC
		}
		if tm, err := time.ParseInLocation(l, s, in); err == nil {
			return tm, true
		}
	}
	return time.Time{}, false
}
