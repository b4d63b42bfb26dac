package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
	"github.com/pgcrypt/pgcrypt-proxy/rewrite"
)

func TestParsePGInt(t *testing.T) {
	type tc struct {
		in   string
		bits int
		pg16 bool
		want int64
		ok   bool
	}
	for _, c := range []tc{
		{"0", 32, false, 0, true},
		{" 42 ", 32, false, 42, true},
		{"\t+7\n", 32, false, 7, true},
		{"-0", 32, false, 0, true},
		{"007", 16, false, 7, true},
		{"-32768", 16, false, -32768, true},
		{"32767", 16, false, 32767, true},
		{"32768", 16, false, 0, false},
		{"-32769", 16, false, 0, false},
		{"2147483647", 32, false, 2147483647, true},
		{"-2147483648", 32, false, -2147483648, true},
		{"2147483648", 32, false, 0, false},
		{"9223372036854775807", 64, false, 9223372036854775807, true},
		{"-9223372036854775808", 64, false, -9223372036854775808, true},
		{"9223372036854775808", 64, false, 0, false},
		{"99999999999999999999999", 64, false, 0, false},
		{"", 32, false, 0, false},
		{" ", 32, false, 0, false},
		{"-", 32, false, 0, false},
		{"+-1", 32, false, 0, false},
		{"- 1", 32, false, 0, false},
		{"1 2", 32, false, 0, false},
		{"1.0", 32, false, 0, false},
		{"1e3", 32, false, 0, false},
		{"0x10", 32, false, 0, false},
		{"1_000", 32, false, 0, false},
		// PostgreSQL 16 and later.
		{"0x10", 32, true, 16, true},
		{"0X7FFFFFFF", 32, true, 2147483647, true},
		{"-0x80000000", 32, true, -2147483648, true},
		{"0x80000000", 32, true, 0, false},
		{"0o17", 32, true, 15, true},
		{"0b101", 32, true, 5, true},
		{"0b102", 32, true, 0, false},
		{"0x", 32, true, 0, false},
		{"0x_1F", 32, true, 31, true},
		{"1_000", 32, true, 1000, true},
		{"1_000_000", 32, true, 1000000, true},
		{"_1", 32, true, 0, false},
		{"1_", 32, true, 0, false},
		{"1__0", 32, true, 0, false},
		{" -1_0 ", 16, true, -10, true},
	} {
		got, ok := parsePGInt([]byte(c.in), c.bits, c.pg16)
		if ok != c.ok || ok && got != c.want {
			t.Errorf("parsePGInt(%q, %d, pg16=%v) = %d, %v; want %d, %v", c.in, c.bits, c.pg16, got, ok, c.want, c.ok)
		}
	}
}

func TestParsePGBool(t *testing.T) {
	for in, want := range map[string]int{ // 1 true, 0 false, -1 invalid
		"t": 1, "tr": 1, "TRUE": 1, " true ": 1, "y": 1, "yes": 1, "on": 1, "1": 1,
		"f": 0, "fa": 0, "False": 0, "n": 0, "no": 0, "of": 0, "off": 0, "0": 0, "\toff\n": 0,
		"": -1, " ": -1, "o": -1, "tru e": -1, "truex": -1, "yess": -1, "onn": -1, "offf": -1,
		"10": -1, "01": -1, "maybe": -1, "2": -1, "-1": -1,
	} {
		v, ok := parsePGBool([]byte(in))
		got := -1
		if ok {
			got = 0
			if v {
				got = 1
			}
		}
		if got != want {
			t.Errorf("parsePGBool(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestNextTextRow(t *testing.T) {
	text := &rewrite.Copy{Format: "text", Delimiter: '\t', Null: `\N`}
	for _, c := range []struct {
		in       string
		end      bool
		line     string
		consumed int
		nl       string
		eod      bool
		err      bool
	}{
		{"a\tb\nrest", false, "a\tb", 4, "\n", false, false},
		{"a\tb\r\nrest", false, "a\tb", 5, "\r\n", false, false},
		{"a\\\nb\n", false, "a\\\nb", 5, "\n", false, false}, // escaped newline is data
		{"a\tb", false, "", 0, "", false, false},             // no whole row yet
		{"a\tb", true, "a\tb", 3, "\n", false, false},        // last row without newline
		{"a\\", false, "", 0, "", false, false},              // wait for the escaped byte
		{"\\.\n", false, "", 3, "\n", true, false},
		{"\\.\r\n", false, "", 4, "\r\n", true, false},
		{"x\\.\nmore\n", false, "x", 4, "\n", true, false},
		{"x\\.", false, "", 0, "", false, false},
		{"x\\.", true, "x", 3, "\n", true, false},
		{"x\\.y\n", false, "", 0, "", false, true},
		{"x\\\\.y\n", false, "x\\\\.y", 6, "\n", false, false},
	} {
		line, consumed, nl, eod, err := nextTextRow([]byte(c.in), text, c.end)
		if string(line) != c.line || consumed != c.consumed || nl != c.nl || eod != c.eod || (err != nil) != c.err {
			t.Errorf("nextTextRow(%q, end=%v) = %q, %d, %q, %v, %v", c.in, c.end, line, consumed, nl, eod, err)
		}
	}
}

// FuzzCopyText feeds arbitrary text and CSV COPY data to the text-to-binary
// row reader (columns int4, text, bool; no policy column, so no keys are
// needed). It must never panic; the result must not depend on how the data
// is chunked; and what it accepts must be a well-formed binary COPY body.
func FuzzCopyText(f *testing.F) {
	f.Add([]byte("1\tabc\tt\n2\t\\N\tf\n\\.\n"), false, uint8(1))
	f.Add([]byte("1\ta\\tb\\x41\\101\\\\\ttrue\r\n2\tb\\.\r\n"), false, uint8(2))
	f.Add([]byte("1,\"a,b\",true\n2,,\n3,\"multi\nline\",off\n"), true, uint8(3))
	f.Add([]byte("x\\.y\n"), false, uint8(2))
	f.Add([]byte(" 0x1F \t_\t o\n-2147483648\t\\\n\tyes"), false, uint8(5))
	f.Add([]byte("1,\"\"\"\",\"\"\n\\.\n"), true, uint8(4))
	f.Fuzz(func(t *testing.T, data []byte, csv bool, chunk uint8) {
		run := func(step int) ([]byte, error) {
			c := &rewrite.Copy{Format: "text", Delimiter: '\t', Null: `\N`, From: true, Basic: true}
			if csv {
				c.Format, c.Delimiter, c.Null, c.Quote, c.Escape = "csv", ',', "", '"', '"'
			}
			cs := &copyStream{c: c, cols: make([]*policy.Column, 3), from: true, conv: []binConv{convInt4, convText, convBool}}
			s := &session{}
			s.serverMajor.Store(16)
			ctx := context.Background()
			var out []byte
			for i := 0; i < len(data); i += step {
				if err := s.copyFeed(ctx, cs, data[i:min(i+step, len(data))], false); err != nil {
					return nil, err
				}
				out, cs.out = append(out, cs.out...), cs.out[:0]
			}
			if err := s.copyFeed(ctx, cs, nil, true); err != nil {
				return nil, err
			}
			out = append(out, cs.out...)
			if !cs.done {
				out = append(out, 0xff, 0xff)
			}
			return out, nil
		}
		whole, err1 := run(len(data) + 1)
		pieces, err2 := run(int(chunk)%7 + 1)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("whole: %v, in pieces of %d: %v", err1, int(chunk)%7+1, err2)
		}
		if err1 != nil {
			return
		}
		if !bytes.Equal(whole, pieces) {
			t.Fatalf("output depends on chunking:\n%x\n%x", whole, pieces)
		}
		p := whole
		for {
			if len(p) < 2 {
				t.Fatalf("truncated stream: %x", whole)
			}
			n := int16(binary.BigEndian.Uint16(p))
			p = p[2:]
			if n == -1 {
				break
			}
			if n != 3 {
				t.Fatalf("tuple of %d fields", n)
			}
			for f := 0; f < 3; f++ {
				if len(p) < 4 {
					t.Fatalf("truncated field")
				}
				l := int32(binary.BigEndian.Uint32(p))
				p = p[4:]
				if l == -1 {
					continue
				}
				if l < 0 || int(l) > len(p) {
					t.Fatalf("field length %d", l)
				}
				switch {
				case f == 0 && l != 4, f == 2 && (l != 1 || p[0] > 1):
					t.Fatalf("field %d: %x", f, p[:l])
				case f == 1 && (bytes.IndexByte(p[:l], 0) >= 0):
					t.Fatalf("NUL in a text field")
				}
				p = p[l:]
			}
		}
		if len(p) != 0 {
			t.Fatalf("bytes after the trailer: %x", p)
		}
	})
}
