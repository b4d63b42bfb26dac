package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
)

// bindMsg is a Bind message read in place: every byte slice aliases the
// message, which must outlive it. Parsing allocates nothing (params reuses
// the caller's slice), so the per-execution cost of a prepared statement
// that touches no policy value stays a scan and a copy.
type bindMsg struct {
	portal, stmt []byte
	formats      []byte   // the parameter format codes, 2 bytes each
	params       [][]byte // the parameter values; nil is SQL NULL
	rawParams    []byte   // the parameter count and values as sent
	results      []byte   // the result format codes, 2 bytes each
}

var errMalformedBind = errors.New("malformed Bind message")

// parseBind reads the body of a Bind message (after type and length).
// params is reused for the values. It checks every count and length
// against the body, as the server would, so nothing later reads past it.
func parseBind(body []byte, params [][]byte) (bindMsg, error) {
	var m bindMsg
	var ok bool
	if m.portal, body, ok = cstring(body); !ok {
		return m, errMalformedBind
	}
	if m.stmt, body, ok = cstring(body); !ok {
		return m, errMalformedBind
	}
	if m.formats, body, ok = int16Array(body); !ok {
		return m, errMalformedBind
	}
	if len(body) < 2 {
		return m, errMalformedBind
	}
	raw := body
	n := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	params = params[:0]
	for range n {
		if len(body) < 4 {
			return m, errMalformedBind
		}
		l := int32(binary.BigEndian.Uint32(body))
		body = body[4:]
		if l == -1 {
			params = append(params, nil)
			continue
		}
		if l < 0 || int(l) > len(body) {
			return m, errMalformedBind
		}
		// A zero-length value is not NULL: keep it non-nil.
		params = append(params, body[:l:l])
		body = body[l:]
	}
	m.params = params
	m.rawParams = raw[:len(raw)-len(body)]
	if m.results, body, ok = int16Array(body); !ok || len(body) != 0 {
		return m, errMalformedBind
	}
	return m, nil
}

// cstring splits the NUL-terminated string at the start of b off the rest
// (sub-slices: map lookups with string(s) do not copy).
func cstring(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, b, false
	}
	return b[:i], b[i+1:], true
}

// int16Array splits a count-prefixed array of 2-byte codes off b.
func int16Array(b []byte) (codes, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, b, false
	}
	n := 2 * int(binary.BigEndian.Uint16(b))
	if len(b)-2 < n {
		return nil, b, false
	}
	return b[2 : 2+n], b[2+n:], true
}

// format is the format code of parameter i: one code applies to all.
func (m *bindMsg) format(i int) int16 {
	return codeAt(m.formats, i)
}

func codeAt(codes []byte, i int) int16 {
	switch len(codes) {
	case 0:
		return textFormat
	case 2:
		return int16(binary.BigEndian.Uint16(codes))
	}
	if 2*i+1 < len(codes) {
		return int16(binary.BigEndian.Uint16(codes[2*i:]))
	}
	return textFormat
}

// Shared result-format slices for the common requests: a portal's formats
// are only ever read, so one slice serves every portal.
var (
	allText   = []int16{textFormat}
	allBinary = []int16{binaryFormat}
)

// resultCodes returns the result format codes as int16s, sharing a static
// slice for none or one code (what nearly every driver sends).
func (m *bindMsg) resultCodes() []int16 {
	switch len(m.results) {
	case 0:
		return nil
	case 2:
		switch int16(binary.BigEndian.Uint16(m.results)) {
		case textFormat:
			return allText
		case binaryFormat:
			return allBinary
		}
	}
	out := make([]int16, len(m.results)/2)
	for i := range out {
		out[i] = int16(binary.BigEndian.Uint16(m.results[2*i:]))
	}
	return out
}

// bindWriter appends a Bind message to a buffer field by field; finish
// writes its length. Values can be appended in place (encrypted straight
// into the outgoing buffer) between beginValue and endValue.
type bindWriter struct {
	start int // offset of the message type byte
	val   int // offset of the current value's length word
}

// begin appends the message type and room for its length; the caller
// appends the portal and statement names next.
func (w *bindWriter) begin(dst []byte) []byte {
	w.start = len(dst)
	return append(dst, 'B', 0, 0, 0, 0)
}

func appendCString[S ~string | ~[]byte](dst []byte, s S) []byte {
	dst = append(dst, s...)
	return append(dst, 0)
}

func appendInt16(dst []byte, v int16) []byte {
	return binary.BigEndian.AppendUint16(dst, uint16(v))
}

func (w *bindWriter) beginValue(dst []byte) []byte {
	w.val = len(dst)
	return append(dst, 0, 0, 0, 0)
}

func (w *bindWriter) endValue(dst []byte) {
	binary.BigEndian.PutUint32(dst[w.val:], uint32(len(dst)-w.val-4))
}

func appendValue(dst, v []byte) []byte {
	if v == nil {
		return binary.BigEndian.AppendUint32(dst, 0xFFFFFFFF)
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(v)))
	return append(dst, v...)
}

func (w *bindWriter) finish(dst []byte) []byte {
	binary.BigEndian.PutUint32(dst[w.start+1:], uint32(len(dst)-w.start-1))
	return dst
}
