package proxy

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/jackc/pgx/v5/pgproto3"
)

func encode(t testing.TB, msgs ...pgproto3.Message) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func TestMsgReaderFraming(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 3*initialBufSize+17) // forces growth
	stream := encode(t,
		&pgproto3.Query{String: "select 1"},
		&pgproto3.Parse{Name: "s", Query: string(big)},
		&pgproto3.Sync{},
		&pgproto3.Query{String: "select 2"},
	)
	for name, r := range map[string]io.Reader{
		"whole":    bytes.NewReader(stream),
		"one byte": iotest.OneByteReader(bytes.NewReader(stream)),
		"half":     iotest.HalfReader(bytes.NewReader(stream)),
	} {
		t.Run(name, func(t *testing.T) {
			m := newMsgReader(r, maxMessageLen)
			var got []byte
			var types []byte
			for {
				typ, msg, err := m.next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				types = append(types, typ)
				got = append(got, msg...)
			}
			if string(types) != "QPSQ" {
				t.Fatalf("types %q, want QPSQ", types)
			}
			if !bytes.Equal(got, stream) {
				t.Fatal("reassembled stream differs from the input")
			}
			if m.read != int64(len(stream)) {
				t.Fatalf("read counter %d, want %d", m.read, len(stream))
			}
		})
	}
}

func TestMsgReaderBuffered(t *testing.T) {
	stream := encode(t, &pgproto3.Sync{}, &pgproto3.Query{String: "select 1"})
	m := newMsgReader(bytes.NewReader(stream), maxMessageLen)
	if m.buffered() {
		t.Fatal("buffered before any read")
	}
	if _, _, err := m.next(); err != nil {
		t.Fatal(err)
	}
	if !m.buffered() {
		t.Fatal("second message already read but not reported as buffered")
	}
	if _, _, err := m.next(); err != nil {
		t.Fatal(err)
	}
	if m.buffered() {
		t.Fatal("buffered after the last message")
	}
}

func TestMsgReaderBounds(t *testing.T) {
	for name, tc := range map[string]struct {
		in   []byte
		want func(error) bool
	}{
		"1 GiB claim": {[]byte{'Q', 0x40, 0, 0, 8}, func(err error) bool { var e *errMessageTooLarge; return errors.As(err, &e) }},
		"negative":    {[]byte{'Q', 0xff, 0xff, 0xff, 0xff}, func(err error) bool { return err != nil }},
		"too short":   {[]byte{'Q', 0, 0, 0, 3}, func(err error) bool { return err != nil }},
		"truncated":   {[]byte{'Q', 0, 0, 0, 100, 'a'}, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
	} {
		t.Run(name, func(t *testing.T) {
			m := newMsgReader(bytes.NewReader(tc.in), 1<<20)
			_, _, err := m.next()
			if !tc.want(err) {
				t.Fatalf("got error %v", err)
			}
			if len(m.buf) > 1<<20 {
				t.Fatalf("buffer grew to %d bytes on a bogus header", len(m.buf))
			}
		})
	}
}

func BenchmarkMsgReader(b *testing.B) {
	batch := encode(b, &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("42")}},
		&pgproto3.Execute{}, &pgproto3.Sync{})
	r := bytes.NewReader(nil)
	m := newMsgReader(r, maxMessageLen)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		r.Reset(batch)
		for j := 0; j < 3; j++ {
			if _, _, err := m.next(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
