package proxy

import (
	"bytes"
	"testing"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

func mustType(t *testing.T, name string) policy.Type {
	t.Helper()
	typ, ok := policy.LookupType(name)
	if !ok {
		t.Fatalf("no type %s", name)
	}
	return typ
}

// TestCodecRoundTrip checks that a value read in text format comes back in
// PostgreSQL's text output form, and that text and binary input of the same
// value give the same canonical plaintext.
func TestCodecRoundTrip(t *testing.T) {
	c := newCodec()
	for _, tc := range []struct {
		typ, in, out string
	}{
		{"text", "héllo wörld", "héllo wörld"},
		{"varchar", "", ""},
		{"int2", "-32768", "-32768"},
		{"int4", " 42 ", "42"},
		{"int8", "9223372036854775807", "9223372036854775807"},
		{"numeric", "1.50", "1.50"},
		{"numeric", "-123456789012345678901234567890.000001", "-123456789012345678901234567890.000001"},
		{"float8", "1.5", "1.5"},
		{"float8", "-Infinity", "-Infinity"},
		{"bool", "yes", "t"},
		{"bool", "f", "f"},
		{"date", "2024-02-29", "2024-02-29"},
		{"timestamp", "2024-01-02 03:04:05.123456", "2024-01-02 03:04:05.123456"},
		{"timestamp", "1999-12-31 23:59:59.5", "1999-12-31 23:59:59.5"},
		{"timestamptz", "2024-01-02 03:04:05+00", "2024-01-02 03:04:05+00"},
		{"timestamptz", "2024-01-02 03:04:05.25+02:30", "2024-01-02 00:34:05.25+00"},
		{"timestamptz", "infinity", "infinity"},
		{"uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
		{"jsonb", `{"a": [1, 2]}`, `{"a": [1, 2]}`},
		{"bytea", `\x00ff10`, `\x00ff10`},
		{"bytea", `ab\\c\001`, `\x61625c6301`},
	} {
		typ := mustType(t, tc.typ)
		canon, err := c.toCanonical(nil, typ, textFormat, []byte(tc.in))
		if err != nil {
			t.Errorf("%s %q: %v", tc.typ, tc.in, err)
			continue
		}
		text, err := c.fromCanonical(nil, typ, textFormat, canon)
		if err != nil || string(text) != tc.out {
			t.Errorf("%s %q: text out %q, %v; want %q", tc.typ, tc.in, text, err, tc.out)
		}
		bin, err := c.fromCanonical(nil, typ, binaryFormat, canon)
		if err != nil {
			t.Errorf("%s %q: binary out: %v", tc.typ, tc.in, err)
			continue
		}
		again, err := c.toCanonical(nil, typ, binaryFormat, bin)
		if err != nil || !bytes.Equal(again, canon) {
			t.Errorf("%s %q: binary input gives a different canonical form", tc.typ, tc.in)
		}
	}
}

func TestCodecRejectsInvalidInput(t *testing.T) {
	c := newCodec()
	for _, tc := range []struct{ typ, in string }{
		{"int4", "forty-two"},
		{"int2", "99999"},
		{"bool", "maybe"},
		{"uuid", "not-a-uuid"},
		{"jsonb", "{unclosed"},
		{"timestamptz", "yesterday-ish"},
		{"date", "2024-13-45"},
		{"bytea", `\x0`},
		{"text", "\xff\xfe"},
	} {
		if _, err := c.toCanonical(nil, mustType(t, tc.typ), textFormat, []byte(tc.in)); err == nil {
			t.Errorf("%s %q accepted", tc.typ, tc.in)
		} else if ve, ok := err.(*valueError); ok && bytes.Contains([]byte(ve.msg), []byte(tc.in)) && tc.in != "" {
			t.Errorf("error message echoes the value: %q", ve.msg)
		}
	}
	if _, err := c.toCanonical(nil, mustType(t, "int4"), binaryFormat, []byte{1, 2}); err == nil {
		t.Error("3-byte binary int4 accepted")
	}
}

func TestCodecTimeZone(t *testing.T) {
	c := newCodec()
	c.setTimeZone("Europe/Paris")
	typ := mustType(t, "timestamptz")
	canon, err := c.toCanonical(nil, typ, textFormat, []byte("2024-07-01 12:00:00"))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := c.fromCanonical(nil, typ, textFormat, canon)
	if string(out) != "2024-07-01 12:00:00+02" {
		t.Fatalf("got %q", out)
	}
	c.setTimeZone("UTC")
	out, _ = c.fromCanonical(nil, typ, textFormat, canon)
	if string(out) != "2024-07-01 10:00:00+00" {
		t.Fatalf("got %q", out)
	}
}
