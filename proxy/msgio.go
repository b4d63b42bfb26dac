package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
)

// maxMessageLen bounds every regular (post-startup) protocol message in
// either direction. PostgreSQL itself refuses client messages above 1 GiB
// (PQ_LARGE_MESSAGE_LIMIT); we use the same bound for both directions.
const maxMessageLen = 1 << 30

// initialBufSize is the read buffer a connection starts with. PostgreSQL's
// own send buffer is 8 KiB, so a 32 KiB buffer holds a whole pipelined batch
// in the common case.
const initialBufSize = 32 << 10

// msgReader frames PostgreSQL protocol messages (type byte, int32 length,
// body) from a connection. It reads as much as the connection offers in one
// call and hands out whole messages that alias its buffer, so a burst of
// pipelined messages costs one read. The pumps decode the bodies with
// pgproto3's message types when they need to look inside; messages the proxy
// does not need to understand are forwarded as the bytes that arrived.
//
// A message returned by next is valid until the following call to next.
type msgReader struct {
	r    io.Reader
	buf  []byte
	rp   int // start of unconsumed data
	wp   int // end of data read
	max  int
	read int64 // bytes read from r, for metrics
}

func newMsgReader(r io.Reader, max int) *msgReader {
	return &msgReader{r: r, buf: make([]byte, initialBufSize), max: max}
}

// errMessageTooLarge is returned when a message header claims more than the
// configured limit: the stream can no longer be trusted and the connection
// must be closed.
type errMessageTooLarge struct {
	typ byte
	len int
}

func (e *errMessageTooLarge) Error() string {
	return fmt.Sprintf("message %q claims %d bytes, over the %d byte limit", e.typ, e.len, maxMessageLen)
}

// buffered reports whether a complete message is already in the buffer, so
// next would return without reading from the connection.
func (m *msgReader) buffered() bool {
	n := m.wp - m.rp
	if n < 5 {
		return false
	}
	l := int(binary.BigEndian.Uint32(m.buf[m.rp+1:]))
	return n >= 1+l
}

// next returns the next whole message: its type and its raw bytes including
// the 5-byte header.
func (m *msgReader) next() (byte, []byte, error) {
	if err := m.fill(5); err != nil {
		return 0, nil, err
	}
	typ := m.buf[m.rp]
	l := int(int32(binary.BigEndian.Uint32(m.buf[m.rp+1:])))
	if l < 4 {
		return 0, nil, fmt.Errorf("message %q has invalid length %d", typ, l)
	}
	if l > m.max {
		return 0, nil, &errMessageTooLarge{typ: typ, len: l}
	}
	if err := m.fill(1 + l); err != nil {
		return 0, nil, err
	}
	msg := m.buf[m.rp : m.rp+1+l : m.rp+1+l]
	m.rp += 1 + l
	return typ, msg, nil
}

// fill makes sure at least n unconsumed bytes are in the buffer.
func (m *msgReader) fill(n int) error {
	if m.wp-m.rp >= n {
		return nil
	}
	if m.rp == m.wp {
		m.rp, m.wp = 0, 0
		if len(m.buf) > 4*initialBufSize && n <= initialBufSize {
			// Give back memory after a large message.
			m.buf = make([]byte, initialBufSize)
		}
	}
	if len(m.buf)-m.rp < n {
		// Not enough room after rp: move the partial message to the front,
		// growing the buffer if the message is larger than it.
		size := len(m.buf)
		for size < n {
			size *= 2
		}
		if size != len(m.buf) {
			nb := make([]byte, size)
			m.wp = copy(nb, m.buf[m.rp:m.wp])
			m.buf = nb
		} else {
			m.wp = copy(m.buf, m.buf[m.rp:m.wp])
		}
		m.rp = 0
	}
	for m.wp-m.rp < n {
		k, err := m.r.Read(m.buf[m.wp:])
		m.wp += k
		m.read += int64(k)
		if err != nil {
			if m.wp-m.rp >= n {
				return nil
			}
			if err == io.EOF && m.wp != m.rp {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}
