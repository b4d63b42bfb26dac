package proxy

import (
	"bytes"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func encodeBind(t testing.TB, b *pgproto3.Bind) []byte {
	t.Helper()
	msg, err := b.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// rewriteUnchanged writes m back with bindWriter, every value copied.
func rewriteUnchanged(m bindMsg) []byte {
	var w bindWriter
	out := w.begin([]byte("prefix"))
	out = appendCString(out, m.portal)
	out = appendCString(out, string(m.stmt))
	out = appendInt16(out, int16(len(m.formats)/2))
	out = append(out, m.formats...)
	out = appendInt16(out, int16(len(m.params)))
	for _, v := range m.params {
		if v == nil {
			out = appendValue(out, nil)
			continue
		}
		out = w.beginValue(out)
		out = append(out, v...)
		w.endValue(out)
	}
	out = appendInt16(out, int16(len(m.results)/2))
	out = append(out, m.results...)
	return w.finish(out)[len("prefix"):]
}

func TestParseBind(t *testing.T) {
	cases := []pgproto3.Bind{
		{},
		{DestinationPortal: "p", PreparedStatement: "s1"},
		{PreparedStatement: "s", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{[]byte("x"), nil, {}},
			ResultFormatCodes: []int16{1}},
		{ParameterFormatCodes: []int16{0, 1, 0}, Parameters: [][]byte{[]byte("abc"), {0, 0, 0, 1}, nil},
			ResultFormatCodes: []int16{0, 1, 1, 0}},
		{Parameters: [][]byte{bytes.Repeat([]byte{0xFF}, 70000)}, ResultFormatCodes: []int16{0}},
	}
	for _, c := range cases {
		msg := encodeBind(t, &c)
		m, err := parseBind(msg[5:], nil)
		if err != nil {
			t.Fatalf("%+v: %v", c, err)
		}
		if string(m.portal) != c.DestinationPortal || string(m.stmt) != c.PreparedStatement {
			t.Errorf("names %q %q, want %q %q", m.portal, m.stmt, c.DestinationPortal, c.PreparedStatement)
		}
		if len(m.params) != len(c.Parameters) {
			t.Fatalf("%d params, want %d", len(m.params), len(c.Parameters))
		}
		for i, v := range c.Parameters {
			if (v == nil) != (m.params[i] == nil) || !bytes.Equal(v, m.params[i]) {
				t.Errorf("param %d = %q, want %q (nil %v)", i, m.params[i], v, v == nil)
			}
			want := int16(0)
			switch len(c.ParameterFormatCodes) {
			case 0:
			case 1:
				want = c.ParameterFormatCodes[0]
			default:
				want = c.ParameterFormatCodes[i]
			}
			if got := m.format(i); got != want {
				t.Errorf("format(%d) = %d, want %d", i, got, want)
			}
		}
		if got := m.resultCodes(); !slices.Equal(got, c.ResultFormatCodes) {
			t.Errorf("result codes %v, want %v", got, c.ResultFormatCodes)
		}
		if got := rewriteUnchanged(m); !bytes.Equal(got, msg) {
			t.Errorf("rewritten unchanged:\n got % x\nwant % x", got, msg)
		}
		if n := len(m.rawParams); !bytes.HasSuffix(msg[:len(msg)-2-len(m.results)], m.rawParams) || n < 2 {
			t.Errorf("rawParams % x is not the parameter section of % x", m.rawParams, msg)
		}
	}
}

func TestParseBindMalformed(t *testing.T) {
	good := encodeBind(t, &pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s",
		ParameterFormatCodes: []int16{1}, Parameters: [][]byte{[]byte("value"), nil}, ResultFormatCodes: []int16{1, 0}})
	body := good[5:]
	if _, err := parseBind(body, nil); err != nil {
		t.Fatal(err)
	}
	// Every truncation is refused, never read past.
	for n := range len(body) {
		if _, err := parseBind(body[:n], nil); err == nil {
			t.Errorf("truncated to %d bytes: no error", n)
		}
	}
	// Trailing bytes, a negative length other than -1, a length past the end.
	bad := [][]byte{
		append(slices.Clone(body), 0),
		encodeBind(t, &pgproto3.Bind{Parameters: [][]byte{[]byte("ab")}})[5:],
	}
	bad[1][2+2+1] = 0xFF // count 1 → first length word 0xFF000002, negative
	past := encodeBind(t, &pgproto3.Bind{Parameters: [][]byte{[]byte("ab")}})[5:]
	past[2+2+2+3] = 9 // length 9 with 2 bytes left
	bad = append(bad, past)
	for i, b := range bad {
		if _, err := parseBind(b, nil); err == nil {
			t.Errorf("case %d: no error for % x", i, b)
		}
	}
}

// FuzzParseBind: whatever parseBind accepts, pgproto3 decodes the same
// way, and writing it back gives the same bytes.
func FuzzParseBind(f *testing.F) {
	for _, b := range []pgproto3.Bind{
		{},
		{DestinationPortal: "p", PreparedStatement: "s", ParameterFormatCodes: []int16{1},
			Parameters: [][]byte{[]byte("x"), nil}, ResultFormatCodes: []int16{0, 1}},
	} {
		msg, _ := b.Encode(nil)
		f.Add(msg[5:])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := parseBind(body, nil)
		var ref pgproto3.Bind
		refErr := ref.Decode(body)
		if err != nil {
			return
		}
		if refErr != nil {
			t.Fatalf("parseBind accepted what pgproto3 refuses (%v): % x", refErr, body)
		}
		if string(m.portal) != ref.DestinationPortal || string(m.stmt) != ref.PreparedStatement ||
			len(m.params) != len(ref.Parameters) || !slices.Equal(m.resultCodes(), ref.ResultFormatCodes) {
			t.Fatalf("differs from pgproto3: %+v vs %+v", m, ref)
		}
		for i := range m.params {
			if !bytes.Equal(m.params[i], ref.Parameters[i]) || (m.params[i] == nil) != (ref.Parameters[i] == nil) {
				t.Fatalf("param %d: % x vs % x", i, m.params[i], ref.Parameters[i])
			}
		}
		out := rewriteUnchanged(m)
		if !bytes.Equal(out[5:], body) {
			t.Fatalf("round trip:\n got % x\nwant % x", out[5:], body)
		}
	})
}
