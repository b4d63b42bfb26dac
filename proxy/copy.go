package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcrypt/pgcrypt-proxy/audit"
	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/metrics"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
	"github.com/pgcrypt/pgcrypt-proxy/rewrite"
)

// COPY through the proxy. COPY … FROM STDIN rows are reassembled from the
// client's CopyData messages (which may split rows anywhere), the policy
// fields encrypted, and whole rows sent on in CopyData messages of at most
// copyChunk bytes. COPY … TO STDOUT rows are decrypted the same way on the
// way back. Text, CSV and binary formats are supported, with the column
// list in any order. A row the proxy cannot read fails the COPY the way
// PostgreSQL fails it: the proxy sends CopyFail with the row number, the
// server aborts the COPY and nothing of it is committed.

const copyChunk = 64 << 10

var binarySignature = []byte("PGCOPY\n\xff\r\n\x00")

// copyStream is the state of one COPY data stream in one direction.
type copyStream struct {
	c      *rewrite.Copy
	cols   []*policy.Column // per field; nil: not encrypted
	from   bool
	buf    []byte // unconsumed input (a partial row)
	out    []byte // transformed rows not yet sent
	row    int    // rows seen, for error messages
	header bool   // header line/block still expected
	done   bool   // end of data seen (\. or binary trailer)
	failed bool   // a CopyFail was sent: drop the rest

	// conv is set when text or CSV rows go on to the server as binary
	// tuples (copybin.go): each field's conversion.
	conv           []binConv
	fields         [][]byte      // the current row's raw fields
	val            []byte        // an unescaped field
	keys           []*crypto.Key // current data key per policy field, per batch
	values         int           // policy values encrypted or decrypted, for the metrics
	eolKnown, crlf bool          // the line ending, from the first line
}

// newCopyStream maps the COPY's fields to policy columns.
func (s *session) newCopyStream(c *rewrite.Copy) (*copyStream, error) {
	names := c.Columns
	if names == nil {
		names = s.cat.Load().columnsOf(c.Schema, c.Name, s.searchPath())
		if names == nil {
			s.needCatalog = true
			return nil, &valueError{code: "55000", msg: fmt.Sprintf("pgcrypt-proxy does not know the columns of %s yet; retry the COPY", c.Table.Name)}
		}
	}
	cs := &copyStream{c: c, cols: make([]*policy.Column, len(names)), from: c.From, header: c.Header || c.Format == "binary"}
	any := false
	for i, n := range names {
		if col := c.Table.Column(n); col != nil {
			cs.cols[i] = col
			any = true
		}
	}
	if !any {
		return nil, nil
	}
	return cs, nil
}

// copyError is a row the proxy cannot transform.
type copyError struct {
	row int
	msg string
}

func (e *copyError) Error() string { return fmt.Sprintf("row %d: %s", e.row, e.msg) }

// feed consumes input bytes; complete rows are transformed into cs.out.
// At end (CopyDone) a final row without newline is processed too.
func (s *session) copyFeed(ctx context.Context, cs *copyStream, data []byte, end bool) error {
	cs.buf = append(cs.buf, data...)
	c := s.es.enc
	if !cs.from {
		c = s.dec
	} else if err := s.copyKeys(ctx, cs); err != nil {
		return err
	}
	for !cs.done {
		var n int
		var err error
		if cs.conv != nil {
			n, err = s.copyTextToBinaryRow(c, cs, end)
		} else if cs.c.Format == "binary" {
			n, err = s.copyBinaryRow(ctx, c, cs)
		} else {
			n, err = s.copyTextRow(ctx, c, cs, end)
		}
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		cs.buf = cs.buf[n:]
	}
	if end && len(cs.buf) > 0 && !cs.done {
		return &copyError{row: cs.row + 1, msg: "incomplete row at end of data"}
	}
	if len(cs.buf) == 0 {
		cs.buf = cs.buf[:0:cap(cs.buf)]
	} else if cap(cs.buf) > 4*copyChunk && len(cs.buf) < copyChunk {
		cs.buf = append([]byte(nil), cs.buf...)
	}
	return nil
}

// rowEnd finds the end of the next text or CSV row in b (index of the
// newline, or -1). CSV newlines inside quotes do not end a row.
func rowEnd(b []byte, c *rewrite.Copy) int {
	if c.Format != "csv" {
		return bytes.IndexByte(b, '\n')
	}
	return csvUnquoted(b, c, '\n')
}

// csvUnquoted is the index of the first ch outside CSV quotes in b, or -1.
func csvUnquoted(b []byte, c *rewrite.Copy, ch byte) int {
	inQuote := false
	for i := 0; i < len(b); i++ {
		x := b[i]
		switch {
		case inQuote && x == c.Escape && c.Escape != c.Quote && i+1 < len(b) && (b[i+1] == c.Quote || b[i+1] == c.Escape):
			i++
		case x == c.Quote:
			inQuote = !inQuote
		case x == ch && !inQuote:
			return i
		}
	}
	return -1
}

// copyTextRow transforms one text or CSV row at the start of cs.buf and
// returns how many bytes it consumed (0: no whole row yet).
func (s *session) copyTextRow(ctx context.Context, c *codec, cs *copyStream, end bool) (int, error) {
	line, consumed, nl, eod, err := nextTextRow(cs.buf, cs.c, end)
	if consumed == 0 || err != nil {
		if err != nil {
			err = &copyError{row: cs.row + 1, msg: err.Error()}
		}
		return 0, err
	}
	if cs.header {
		cs.header = false
		cs.out = append(append(cs.out, line...), nl...)
		return consumed, nil
	}
	if eod {
		// Rows before the marker on its line are data; the server stops
		// at the marker, so everything after it is dropped here too.
		if len(line) > 0 {
			if err := s.copyTextFields(ctx, c, cs, line, nl); err != nil {
				return 0, err
			}
		}
		cs.done = true
		cs.out = append(cs.out, `\.`...)
		cs.out = append(cs.out, nl...)
		return consumed, nil
	}
	if err := s.copyTextFields(ctx, c, cs, line, nl); err != nil {
		return 0, err
	}
	return consumed, nil
}

// nextTextRow finds the next row of text or CSV COPY data at the start of
// b, as PostgreSQL's CopyReadLine does: the row without its line ending,
// the bytes it spans (0: no whole row yet), its line ending, and whether
// it ends the data. In text format a backslash escapes the next byte, even
// a newline, and \. ends the data wherever it stands on its line (the
// part of the line before it is the last row); in CSV only a line that is
// exactly \. does, and newlines inside quotes do not end a row.
func nextTextRow(b []byte, c *rewrite.Copy, end bool) (line []byte, consumed int, nl string, eod bool, err error) {
	i := -1
	if c.Format == "csv" {
		i = rowEnd(b, c)
	} else {
	scan:
		for j := 0; j < len(b); j++ {
			switch b[j] {
			case '\n':
				i = j
				break scan
			case '\\':
				if j+1 >= len(b) {
					break scan // need the escaped byte
				}
				if b[j+1] != '.' {
					j++
					continue
				}
				k := j + 2
				if k < len(b) && b[k] == '\r' {
					k++
				}
				switch {
				case k < len(b) && b[k] == '\n':
					nl = "\n"
					if k > j+2 {
						nl = "\r\n"
					}
					return b[:j], k + 1, nl, true, nil
				case k >= len(b) && !end:
					return nil, 0, "", false, nil
				case k >= len(b):
					return b[:j], len(b), "\n", true, nil
				}
				return nil, 0, "", false, errors.New("end-of-copy marker corrupt")
			}
		}
	}
	if i < 0 {
		if !end || len(b) == 0 {
			return nil, 0, "", false, nil
		}
		i = len(b) // last row without a newline
	}
	line = b[:i]
	consumed = i
	if i < len(b) {
		consumed++
	}
	nl = "\n"
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
		nl = "\r\n"
	}
	if c.Format == "csv" && string(line) == `\.` {
		return line[:0], consumed, nl, true, nil
	}
	return line, consumed, nl, false, nil
}

// copyTextFields transforms the fields of one text or CSV row into cs.out.
func (s *session) copyTextFields(ctx context.Context, c *codec, cs *copyStream, line []byte, nl string) error {
	cs.row++
	cs.fields = splitFieldsInto(cs.fields[:0], line, cs.c)
	fields := cs.fields
	if len(fields) != len(cs.cols) {
		return &copyError{row: cs.row, msg: fmt.Sprintf("%d fields, the COPY names %d columns", len(fields), len(cs.cols))}
	}
	for f, raw := range fields {
		if f > 0 {
			cs.out = append(cs.out, cs.c.Delimiter)
		}
		col := cs.cols[f]
		if col == nil || isNullField(raw, cs.c) {
			cs.out = append(cs.out, raw...)
			continue
		}
		val, err := unescapeFieldInto(cs.val[:0], raw, cs.c)
		cs.val = val
		if err != nil {
			return &copyError{row: cs.row, msg: fmt.Sprintf("column %s: %v", col.Name, err)}
		}
		cs.values++
		if cs.from {
			env, err := s.encryptWith(s.envBuf[:0], cs.keys[f], c, col, textFormat, val)
			if err != nil {
				return copyValueError(cs.row, col, err)
			}
			s.envBuf = env
			if cs.c.Format == "csv" {
				cs.out = append(cs.out, '\\', 'x')
			} else {
				cs.out = append(cs.out, '\\', '\\', 'x')
			}
			cs.out = hex.AppendEncode(cs.out, env)
			continue
		}
		// TO: the server wrote the bytea; decrypt it to the declared
		// type's text form and escape it for the format.
		plain, err := s.decryptValue(ctx, s.copyBuf[:0], c, col, textFormat, textFormat, val)
		if err != nil {
			return err
		}
		s.copyBuf = plain
		cs.out = escapeField(cs.out, plain, cs.c)
	}
	cs.out = append(cs.out, nl...)
	return nil
}

func copyValueError(row int, col *policy.Column, err error) error {
	var ve *valueError
	if errors.As(err, &ve) {
		return &copyError{row: row, msg: fmt.Sprintf("column %s: %s", col.Name, ve.msg)}
	}
	return err
}

// splitFieldsInto appends a row's fields, split at unescaped delimiters,
// to out, each as written (escapes and quotes included).
func splitFieldsInto(out [][]byte, line []byte, c *rewrite.Copy) [][]byte {
	start := 0
	inQuote := false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		if c.Format == "csv" {
			switch {
			case inQuote && ch == c.Escape && c.Escape != c.Quote && i+1 < len(line) && (line[i+1] == c.Quote || line[i+1] == c.Escape):
				i++
				continue
			case ch == c.Quote:
				inQuote = !inQuote
				continue
			}
		} else if ch == '\\' {
			i++
			continue
		}
		if ch == c.Delimiter && !inQuote {
			out = append(out, line[start:i])
			start = i + 1
		}
	}
	return append(out, line[start:])
}

func isNullField(raw []byte, c *rewrite.Copy) bool {
	// A CSV field with a quote in it is never NULL, even when its text is
	// the NULL string (without FORCE_NULL, which the proxy does not see
	// here).
	return string(raw) == c.Null && (c.Format != "csv" || bytes.IndexByte(raw, c.Quote) < 0)
}

// unescapeFieldInto appends one field's value (escapes and quotes
// decoded) to out.
func unescapeFieldInto(out, raw []byte, c *rewrite.Copy) ([]byte, error) {
	if c.Format == "csv" {
		inQuote := false
		for i := 0; i < len(raw); i++ {
			ch := raw[i]
			switch {
			case inQuote && ch == c.Escape && i+1 < len(raw) && (raw[i+1] == c.Quote || raw[i+1] == c.Escape) && (c.Escape != c.Quote || raw[i+1] == c.Quote):
				out = append(out, raw[i+1])
				i++
			case ch == c.Quote:
				inQuote = !inQuote
			default:
				out = append(out, ch)
			}
		}
		if inQuote {
			return nil, errors.New("unterminated CSV quoted field")
		}
		return out, nil
	}
	for i := 0; i < len(raw); i++ {
		ch := raw[i]
		if ch != '\\' {
			out = append(out, ch)
			continue
		}
		i++
		if i >= len(raw) {
			return nil, errors.New("backslash at end of field")
		}
		switch e := raw[i]; e {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'v':
			out = append(out, '\v')
		case 'x':
			v, n := 0, 0
			for n < 2 && i+1 < len(raw) && isHex(raw[i+1]) {
				v = v*16 + hexVal(raw[i+1])
				i++
				n++
			}
			if n == 0 {
				out = append(out, 'x')
			} else {
				out = append(out, byte(v))
			}
		default:
			if e >= '0' && e <= '7' {
				v := int(e - '0')
				for n := 1; n < 3 && i+1 < len(raw) && raw[i+1] >= '0' && raw[i+1] <= '7'; n++ {
					v = v*8 + int(raw[i+1]-'0')
					i++
				}
				out = append(out, byte(v))
			} else {
				out = append(out, e)
			}
		}
	}
	return out, nil
}

func isHex(b byte) bool {
	return b >= '0' && b <= '9' || b >= 'a' && b <= 'f' || b >= 'A' && b <= 'F'
}

func hexVal(b byte) int {
	switch {
	case b >= '0' && b <= '9':
		return int(b - '0')
	case b >= 'a' && b <= 'f':
		return int(b-'a') + 10
	}
	return int(b-'A') + 10
}

// escapeField writes a value as COPY TO would.
func escapeField(dst, v []byte, c *rewrite.Copy) []byte {
	if c.Format == "csv" {
		need := len(v) == 0 && c.Null == "" || string(v) == c.Null
		for _, ch := range v {
			if ch == c.Delimiter || ch == c.Quote || ch == '\n' || ch == '\r' || ch == c.Escape {
				need = true
				break
			}
		}
		if !need {
			return append(dst, v...)
		}
		dst = append(dst, c.Quote)
		for _, ch := range v {
			if ch == c.Quote || ch == c.Escape {
				dst = append(dst, c.Escape)
			}
			dst = append(dst, ch)
		}
		return append(dst, c.Quote)
	}
	for _, ch := range v {
		switch ch {
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\v':
			dst = append(dst, '\\', 'v')
		default:
			if ch == c.Delimiter {
				dst = append(dst, '\\')
			}
			dst = append(dst, ch)
		}
	}
	return dst
}

// copyBinaryRow transforms the header or one tuple of a binary COPY.
func (s *session) copyBinaryRow(ctx context.Context, c *codec, cs *copyStream) (int, error) {
	b := cs.buf
	if cs.header {
		if len(b) < len(binarySignature)+8 {
			return 0, nil
		}
		if !bytes.Equal(b[:len(binarySignature)], binarySignature) {
			return 0, &copyError{row: 0, msg: "COPY file signature not recognized"}
		}
		ext := int(binary.BigEndian.Uint32(b[len(binarySignature)+4:]))
		n := len(binarySignature) + 8 + ext
		if ext < 0 || ext > 1<<20 {
			return 0, &copyError{row: 0, msg: "invalid COPY file header"}
		}
		if len(b) < n {
			return 0, nil
		}
		cs.header = false
		cs.out = append(cs.out, b[:n]...)
		return n, nil
	}
	if len(b) < 2 {
		return 0, nil
	}
	nf := int(int16(binary.BigEndian.Uint16(b)))
	if nf == -1 {
		cs.done = true
		cs.out = append(cs.out, b[:2]...)
		return 2, nil
	}
	if nf != len(cs.cols) {
		return 0, &copyError{row: cs.row + 1, msg: fmt.Sprintf("%d fields, the COPY names %d columns", nf, len(cs.cols))}
	}
	// Check the whole tuple is here before transforming any of it.
	p := 2
	for f := 0; f < nf; f++ {
		if len(b) < p+4 {
			return 0, nil
		}
		l := int(int32(binary.BigEndian.Uint32(b[p:])))
		p += 4
		if l > 0 {
			if l > maxMessageLen {
				return 0, &copyError{row: cs.row + 1, msg: "field too long"}
			}
			p += l
		}
		if len(b) < p {
			return 0, nil
		}
	}
	cs.row++
	cs.out = append(cs.out, b[:2]...)
	p = 2
	for f := 0; f < nf; f++ {
		l := int(int32(binary.BigEndian.Uint32(b[p:])))
		p += 4
		col := cs.cols[f]
		if l < 0 || col == nil {
			cs.out = append(cs.out, b[p-4:p+max(l, 0)]...)
			p += max(l, 0)
			continue
		}
		val := b[p : p+l]
		p += l
		cs.values++
		lenAt := len(cs.out)
		cs.out = append(cs.out, 0, 0, 0, 0)
		var err error
		if cs.from {
			out, err := s.encryptWith(cs.out, cs.keys[f], c, col, binaryFormat, val)
			if err != nil {
				cs.out = cs.out[:lenAt]
				return 0, copyValueError(cs.row, col, err)
			}
			cs.out = out
		} else {
			cs.out, err = s.decryptValue(ctx, cs.out, c, col, binaryFormat, binaryFormat, val)
			if err != nil {
				return 0, err
			}
		}
		binary.BigEndian.PutUint32(cs.out[lenAt:], uint32(len(cs.out)-lenAt-4))
	}
	return p, nil
}

// appendCopyData wraps transformed rows into CopyData messages.
func appendCopyData(dst, rows []byte) []byte {
	for len(rows) > 0 {
		n := min(len(rows), copyChunk)
		dst = append(dst, 'd')
		dst = binary.BigEndian.AppendUint32(dst, uint32(n+4))
		dst = append(dst, rows[:n]...)
		rows = rows[n:]
	}
	return dst
}

// onCopyData handles a client CopyData, CopyDone or CopyFail while a
// COPY FROM STDIN into a policy table runs.
func (s *session) onCopyIn(ctx context.Context, typ byte, msg []byte) {
	cs := s.copyIn
	switch typ {
	case 'd':
		if cs.failed {
			return
		}
		if err := s.copyFeed(ctx, cs, msg[5:], false); err != nil {
			s.failCopy(cs, err)
			return
		}
		// Send whole rows as they come, in bounded messages.
		if len(cs.out) >= copyChunk {
			s.toServer = appendCopyData(s.toServer, cs.out)
			cs.out = cs.out[:0]
		}
	case 'c':
		s.copyIn = nil
		if cs.failed {
			return // the server has the CopyFail already
		}
		if err := s.copyFeed(ctx, cs, nil, true); err != nil {
			s.failCopy(cs, err)
			return
		}
		if cs.conv != nil && !cs.done {
			cs.out = append(cs.out, 0xff, 0xff) // the binary trailer
		}
		s.toServer = appendCopyData(s.toServer, cs.out)
		s.toServer = append(s.toServer, msg...)
		s.srv.cfg.Metrics.Statement(metrics.Encrypted)
		s.srv.cfg.Metrics.EncryptedUntimed(cs.values)
		var cols []*policy.Column
		for _, c := range cs.cols {
			if c != nil {
				cols = append(cols, c)
			}
		}
		s.auditWrite("copy", cols, int64(cs.row))
	case 'f':
		s.copyIn = nil
		if !cs.failed {
			s.toServer = append(s.toServer, msg...)
		}
	}
}

// failCopy aborts the COPY on the server with the row the proxy could
// not read; the client gets the server's error for it.
func (s *session) failCopy(cs *copyStream, err error) {
	cs.failed = true
	var ce *copyError
	var cr *cryptoError
	msg := "pgcrypt-proxy could not encrypt the COPY data"
	switch {
	case errors.As(err, &ce):
		msg = "pgcrypt-proxy: " + ce.Error()
	case errors.As(err, &cr):
		msg = "pgcrypt-proxy: " + cr.msg
		s.log.Error().Err(cr.cause).Msg(cr.msg)
	}
	s.log.Warn().Str("copy_error", msg).Msg("COPY refused")
	s.srv.cfg.Metrics.Statement(metrics.Refused)
	s.srv.cfg.Metrics.Refusal("57014", metrics.RefusalCopy)
	if a := s.srv.cfg.Audit; a.Enabled() {
		e := s.auditEvent(audit.KindRefused)
		e.Statement, e.SQLSTATE, e.Reason = "copy", "57014", metrics.RefusalCopy.String()
		a.Record(e)
	}
	s.toServer, _ = (&pgproto3.CopyFail{Message: msg}).Encode(s.toServer)
}

// onCopyOut decrypts the server's COPY TO data.
func (s *session) onCopyOut(ctx context.Context, typ byte, msg []byte) error {
	cs := s.copyOut
	switch typ {
	case 'd':
		if cs.failed {
			return nil
		}
		if err := s.copyFeed(ctx, cs, msg[5:], false); err != nil {
			cs.failed = true
			return s.failDecrypt(err)
		}
		s.toClient = appendCopyData(s.toClient, cs.out)
		cs.out = cs.out[:0]
	case 'c':
		s.copyOut = nil
		if cs.failed {
			return nil
		}
		if err := s.copyFeed(ctx, cs, nil, true); err != nil {
			return s.failDecrypt(err)
		}
		s.toClient = appendCopyData(s.toClient, cs.out)
		s.toClient = append(s.toClient, msg...)
		s.srv.cfg.Metrics.DecryptedUntimed(cs.values)
	}
	return nil
}
