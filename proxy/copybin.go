package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/rewrite"
)

// Text and CSV COPY FROM STDIN into a policy table go on to the server in
// binary format when every column's conversion is exact. PostgreSQL reads
// a hex bytea field of text COPY at about a third of the speed of the
// plaintext it replaces, and a binary field at four fifths: the encrypted
// columns would otherwise make the server the bottleneck. The client still
// speaks text or CSV: the proxy answers its CopyInResponse in the format it
// asked for, parses each row as PostgreSQL would, encrypts the policy
// fields and writes a binary tuple.
//
// A conversion is exact when PostgreSQL's binary receive function accepts
// the same values as its text input function and stores the same datum:
// the text types (whose recv and in functions both verify the encoding and
// apply the column's length modifier), json and jsonb, the integer types
// (whose text syntax the proxy parses as pg_strtoint does, including
// PostgreSQL 16's prefixes and underscores), boolean and uuid. A table with any
// other column type in the COPY, a non-UTF8 client or server encoding, or
// an option beyond FORMAT, DELIMITER, NULL, HEADER, QUOTE and ESCAPE keeps
// the text format upstream, with the policy fields as hex bytea.

// binConv is how one field of a text row becomes a binary field.
type binConv uint8

const (
	convPolicy binConv = iota // a policy column: encrypted
	convText                  // text, varchar, bpchar, json: the bytes
	convJSONB                 // jsonb: version 1, then the text
	convInt2
	convInt4
	convInt8
	convBool
	convUUID
)

// Type OIDs of the convertible column types.
const (
	boolOID    = 16
	int8OID    = 20
	int2OID    = 21
	int4OID    = 23
	textOID    = 25
	jsonOID    = 114
	bpcharOID  = 1042
	varcharOID = 1043
	jsonbOID   = 3802
	uuidOID    = 2950
)

func convForType(oid uint32) (binConv, bool) {
	switch oid {
	case textOID, varcharOID, bpcharOID, jsonOID:
		return convText, true
	case jsonbOID:
		return convJSONB, true
	case int2OID:
		return convInt2, true
	case int4OID:
		return convInt4, true
	case int8OID:
		return convInt8, true
	case boolOID:
		return convBool, true
	case uuidOID:
		return convUUID, true
	}
	return 0, false
}

// binaryCopyPlan returns the statement to send instead of c and each
// field's conversion, or ok false when the COPY must stay in text.
func (s *session) binaryCopyPlan(c *rewrite.Copy, cs *copyStream) (sql string, conv []binConv, ok bool) {
	if !c.From || c.Format == "binary" || !c.Basic || s.nonUTF8.Load() || s.serverNonUTF8.Load() {
		return "", nil, false
	}
	all, types := s.cat.Load().columnTypesOf(c.Schema, c.Name, s.searchPath())
	if all == nil || len(types) != len(all) {
		return "", nil, false
	}
	names := c.Columns
	if names == nil {
		names = all
	}
	if len(names) != len(cs.cols) {
		return "", nil, false
	}
	conv = make([]binConv, len(names))
	for i, n := range names {
		if cs.cols[i] != nil {
			conv[i] = convPolicy
			continue
		}
		j := -1
		for k, a := range all {
			if a == n {
				j = k
				break
			}
		}
		if j < 0 {
			return "", nil, false // the server reports the unknown column
		}
		cv, ok := convForType(types[j])
		if !ok {
			return "", nil, false
		}
		conv[i] = cv
	}
	var b strings.Builder
	b.WriteString("COPY ")
	if c.Schema != "" {
		b.WriteString(quoteIdent(c.Schema))
		b.WriteByte('.')
	}
	b.WriteString(quoteIdent(c.Name))
	b.WriteString(" (")
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(quoteIdent(n))
	}
	b.WriteString(") FROM STDIN (FORMAT binary)")
	return b.String(), conv, true
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// binaryCopyHeader starts a binary COPY stream: signature, no flags, no
// header extension.
func appendBinaryCopyHeader(dst []byte) []byte {
	dst = append(dst, binarySignature...)
	return append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
}

// textCopyResponse rewrites the server's CopyInResponse for a binary COPY
// into the text one the client asked for (same length, in place).
func textCopyResponse(msg []byte) {
	if len(msg) < 8 {
		return
	}
	msg[5] = 0
	for i := 8; i+1 < len(msg); i += 2 {
		msg[i], msg[i+1] = 0, 0
	}
}

// copyTextToBinaryRow reads one text or CSV row at the start of cs.buf and
// appends it to cs.out as a binary tuple; it returns how many bytes it
// consumed (0: no whole row yet).
func (s *session) copyTextToBinaryRow(c *codec, cs *copyStream, end bool) (int, error) {
	line, consumed, nl, eod, err := nextTextRow(cs.buf, cs.c, end)
	if consumed == 0 || err != nil {
		if err != nil {
			err = &copyError{row: cs.row + 1, msg: err.Error()}
		}
		return 0, err
	}
	// PostgreSQL takes the line ending from the first line and refuses
	// another one later.
	if crlf := nl == "\r\n"; !cs.eolKnown {
		cs.eolKnown, cs.crlf = true, crlf
	} else if crlf != cs.crlf && consumed > len(line) {
		if crlf {
			return 0, &copyError{row: cs.row + 1, msg: "literal carriage return found in data"}
		}
		return 0, &copyError{row: cs.row + 1, msg: "literal newline found in data"}
	}
	if cs.header {
		cs.header = false
		return consumed, nil
	}
	if eod && len(line) == 0 {
		cs.done = true
		cs.out = append(cs.out, 0xff, 0xff)
		return consumed, nil
	}
	if err := s.binaryTuple(c, cs, line); err != nil {
		return 0, err
	}
	if eod {
		cs.done = true
		cs.out = append(cs.out, 0xff, 0xff)
	}
	return consumed, nil
}

// binaryTuple appends one text or CSV row's fields to cs.out as a binary
// tuple.
func (s *session) binaryTuple(c *codec, cs *copyStream, line []byte) error {
	cs.row++
	if strayCR(line, cs.c) {
		return &copyError{row: cs.row, msg: "literal carriage return found in data"}
	}
	cs.fields = splitFieldsInto(cs.fields[:0], line, cs.c)
	if len(cs.fields) != len(cs.conv) {
		return &copyError{row: cs.row, msg: fmt.Sprintf("%d fields, the COPY names %d columns", len(cs.fields), len(cs.conv))}
	}
	rowStart := len(cs.out)
	cs.out = binary.BigEndian.AppendUint16(cs.out, uint16(len(cs.fields)))
	for f, raw := range cs.fields {
		if isNullField(raw, cs.c) {
			cs.out = append(cs.out, 0xff, 0xff, 0xff, 0xff)
			continue
		}
		val := raw
		if needsUnescape(raw, cs.c) {
			v, err := unescapeFieldInto(cs.val[:0], raw, cs.c)
			if err != nil {
				cs.out = cs.out[:rowStart]
				return &copyError{row: cs.row, msg: fmt.Sprintf("field %d: %v", f+1, err)}
			}
			cs.val, val = v, v
		}
		lenAt := len(cs.out)
		cs.out = append(cs.out, 0, 0, 0, 0)
		var err error
		switch conv := cs.conv[f]; conv {
		case convPolicy:
			cs.values++
			col := cs.cols[f]
			out, err := s.encryptWith(cs.out, cs.keys[f], c, col, textFormat, val)
			if err != nil {
				cs.out = cs.out[:rowStart]
				return copyValueError(cs.row, col, err)
			}
			cs.out = out
		case convText, convJSONB:
			if bytes.IndexByte(val, 0) >= 0 {
				err = fmt.Errorf("invalid byte sequence for encoding \"UTF8\": 0x00")
				break
			}
			if conv == convJSONB {
				cs.out = append(cs.out, 1)
			}
			cs.out = append(cs.out, val...)
		case convInt2, convInt4, convInt8:
			bits := 64
			switch conv {
			case convInt2:
				bits = 16
			case convInt4:
				bits = 32
			}
			n, ok := parsePGInt(val, bits, s.serverMajor.Load() >= 16)
			if !ok {
				err = fmt.Errorf("invalid input syntax or out of range for an integer of %d bits", bits)
				break
			}
			switch bits {
			case 16:
				cs.out = binary.BigEndian.AppendUint16(cs.out, uint16(n))
			case 32:
				cs.out = binary.BigEndian.AppendUint32(cs.out, uint32(n))
			default:
				cs.out = binary.BigEndian.AppendUint64(cs.out, uint64(n))
			}
		case convUUID:
			var u [16]byte
			if !parsePGUUID(val, &u) {
				err = fmt.Errorf("invalid input syntax for type uuid")
				break
			}
			cs.out = append(cs.out, u[:]...)
		case convBool:
			v, ok := parsePGBool(val)
			if !ok {
				err = fmt.Errorf("invalid input syntax for type boolean")
				break
			}
			b := byte(0)
			if v {
				b = 1
			}
			cs.out = append(cs.out, b)
		}
		if err != nil {
			cs.out = cs.out[:rowStart]
			return &copyError{row: cs.row, msg: fmt.Sprintf("field %d: %v", f+1, err)}
		}
		binary.BigEndian.PutUint32(cs.out[lenAt:], uint32(len(cs.out)-lenAt-4))
	}
	return nil
}

// strayCR reports a carriage return in a text row, or outside quotes in a
// CSV row, which PostgreSQL refuses.
func strayCR(line []byte, c *rewrite.Copy) bool {
	if bytes.IndexByte(line, '\r') < 0 {
		return false
	}
	if c.Format != "csv" {
		for i := 0; i < len(line); i++ {
			switch line[i] {
			case '\\':
				i++ // an escaped carriage return is data
			case '\r':
				return true
			}
		}
		return false
	}
	return csvUnquoted(line, c, '\r') >= 0
}

// needsUnescape reports whether a raw field differs from its value.
func needsUnescape(raw []byte, c *rewrite.Copy) bool {
	if c.Format == "csv" {
		return bytes.IndexByte(raw, c.Quote) >= 0
	}
	return bytes.IndexByte(raw, '\\') >= 0
}

// isSpace is C's isspace in the C locale, which PostgreSQL's integer and
// boolean input functions skip around the value.
func isSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f'
}

// parsePGInt reads an integer of the given bits as pg_strtoint16/32/64
// read it: surrounding whitespace, an optional sign, decimal digits; from
// PostgreSQL 16 on also 0x, 0o and 0b prefixes and underscores between
// digits.
func parsePGInt(s []byte, bits int, pg16 bool) (int64, bool) {
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	base := uint64(10)
	if pg16 && i+1 < len(s) && s[i] == '0' {
		switch s[i+1] {
		case 'x', 'X':
			base = 16
		case 'o', 'O':
			base = 8
		case 'b', 'B':
			base = 2
		}
		if base != 10 {
			i += 2
		}
	}
	// The magnitude limit: 2^(bits-1) for negative numbers, one less for
	// positive ones.
	limit := uint64(1) << (bits - 1)
	if !neg {
		limit--
	}
	first := i
	var v uint64
	for i < len(s) {
		d, ok := digitVal(s[i], base)
		if !ok {
			if s[i] != '_' || !pg16 {
				break
			}
			// An underscore may not come first in a decimal number, and
			// must be followed by a digit.
			if base == 10 && i == first {
				return 0, false
			}
			if i+1 >= len(s) {
				return 0, false
			}
			if _, ok := digitVal(s[i+1], base); !ok {
				return 0, false
			}
			i++
			continue
		}
		if v > (limit-d)/base {
			return 0, false
		}
		v = v*base + d
		i++
	}
	if i == first {
		return 0, false
	}
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	if i != len(s) {
		return 0, false
	}
	if neg {
		return -int64(v-1) - 1, true // v may be 2^63
	}
	return int64(v), true
}

func digitVal(b byte, base uint64) (uint64, bool) {
	var d uint64
	switch {
	case b >= '0' && b <= '9':
		d = uint64(b - '0')
	case b >= 'a' && b <= 'f':
		d = uint64(b-'a') + 10
	case b >= 'A' && b <= 'F':
		d = uint64(b-'A') + 10
	default:
		return 0, false
	}
	return d, d < base
}

// parsePGBool reads a boolean as boolin does: surrounding whitespace, then
// a case-insensitive prefix of true, false, yes or no, on or off (at least
// two letters), or 1 or 0.
func parsePGBool(s []byte) (bool, bool) {
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	if len(s) == 0 {
		return false, false
	}
	prefixOf := func(word string, min int) bool {
		return len(s) >= min && len(s) <= len(word) && strings.EqualFold(string(s), word[:len(s)])
	}
	switch s[0] {
	case 't', 'T':
		return true, prefixOf("true", 1)
	case 'f', 'F':
		return false, prefixOf("false", 1)
	case 'y', 'Y':
		return true, prefixOf("yes", 1)
	case 'n', 'N':
		return false, prefixOf("no", 1)
	case 'o', 'O':
		if prefixOf("on", 2) {
			return true, true
		}
		return false, prefixOf("off", 2)
	case '1':
		return true, len(s) == 1
	case '0':
		return false, len(s) == 1
	}
	return false, false
}

// parsePGUUID reads a uuid as uuid_in does: optionally in braces, 32 hex
// digits in pairs, with an optional hyphen after any group of four digits
// (but not after the last), nothing else.
func parsePGUUID(s []byte, u *[16]byte) bool {
	braces := len(s) > 0 && s[0] == '{'
	if braces {
		s = s[1:]
	}
	for i := 0; i < 16; i++ {
		if len(s) < 2 || !isHex(s[0]) || !isHex(s[1]) {
			return false
		}
		u[i] = byte(hexVal(s[0])<<4 | hexVal(s[1]))
		s = s[2:]
		if len(s) > 0 && s[0] == '-' && i%2 == 1 && i < 15 {
			s = s[1:]
		}
	}
	if braces {
		if len(s) == 0 || s[0] != '}' {
			return false
		}
		s = s[1:]
	}
	return len(s) == 0
}

// copyKeys looks up the current data key of every policy field once per
// batch of COPY data, rather than once per value.
func (s *session) copyKeys(ctx context.Context, cs *copyStream) error {
	if cs.keys == nil {
		cs.keys = make([]*crypto.Key, len(cs.cols))
	}
	for f, col := range cs.cols {
		if col == nil {
			continue
		}
		k, err := s.currentKey(ctx, col)
		if err != nil {
			return err
		}
		cs.keys[f] = k
	}
	return nil
}
