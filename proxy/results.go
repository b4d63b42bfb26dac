package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcrypt/pgcrypt-proxy/audit"
	"github.com/pgcrypt/pgcrypt-proxy/metrics"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// This file is the encrypting half of the server pump: it matches each
// reply to the client message it answers (the queue), presents policy
// columns and parameters in their declared types, decrypts rows, and keeps
// the replies to the proxy's own messages from the client.

// rowPlan says which columns of a result are policy columns.
type rowPlan struct {
	cols []planCol
}

type planCol struct {
	idx          int
	col          *policy.Column
	serverFormat int16 // how the server sends the bytea
	clientFormat int16 // how the client asked for the value
}

// planFor builds the decryption plan of a result. For a portal, pi gives
// the formats the client asked for and those the server was asked for;
// for a simple query (pi nil) both are the formats in fields.
func (s *session) planFor(fields []pgproto3.FieldDescription, pi *portalInfo, fromBind bool) *rowPlan {
	cat := s.cat.Load()
	var plan *rowPlan
	for i, f := range fields {
		col := cat.lookup(f.TableOID, f.TableAttributeNumber)
		if col == nil {
			continue
		}
		server, client := f.Format, f.Format
		if pi != nil {
			client = resultFormat(pi.resultFormats, i)
			if fromBind {
				server = client
			}
			if pi.serverFormats != nil {
				server = pi.serverFormats[i]
			}
		}
		if plan == nil {
			plan = &rowPlan{}
		}
		plan.cols = append(plan.cols, planCol{idx: i, col: col, serverFormat: server, clientFormat: client})
	}
	return plan
}

func resultFormat(formats []int16, i int) int16 {
	switch len(formats) {
	case 0:
		return textFormat
	case 1:
		return formats[0]
	}
	if i < len(formats) {
		return formats[i]
	}
	return textFormat
}

// rowDescHasPolicy scans a RowDescription without decoding it.
func rowDescHasPolicy(msg []byte, cat *catalog) bool {
	if cat == nil || len(cat.columns) == 0 || len(msg) < 7 {
		return false
	}
	n := int(binary.BigEndian.Uint16(msg[5:]))
	p := msg[7:]
	for i := 0; i < n; i++ {
		j := indexZero(p)
		if j < 0 || len(p) < j+1+18 {
			return false
		}
		f := p[j+1:]
		if cat.lookup(binary.BigEndian.Uint32(f), binary.BigEndian.Uint16(f[4:])) != nil {
			return true
		}
		p = f[18:]
	}
	return false
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// typlen is pg_type.typlen of a declarable type.
func typlen(t policy.Type) int16 {
	switch t.Name {
	case "bool":
		return 1
	case "int2":
		return 2
	case "int4", "date":
		return 4
	case "int8", "float8", "timestamp", "timestamptz":
		return 8
	case "uuid":
		return 16
	}
	return -1
}

// rewriteRowDesc presents policy columns in their declared types, and in
// the format the client asked for when the proxy asked the server for
// another (pi non-nil with serverFormats).
func (s *session) rewriteRowDesc(rd *pgproto3.RowDescription, pi *portalInfo) {
	cat := s.cat.Load()
	for i := range rd.Fields {
		f := &rd.Fields[i]
		if col := cat.lookup(f.TableOID, f.TableAttributeNumber); col != nil {
			f.DataTypeOID = col.Type.OID
			f.DataTypeSize = typlen(col.Type)
			f.TypeModifier = -1
			if pi != nil && pi.serverFormats != nil {
				f.Format = resultFormat(pi.resultFormats, i)
			}
		}
	}
}

// serverMessage handles one server message when the policy has tables.
func (s *session) serverMessage(ctx context.Context, typ byte, msg []byte) error {
	e := s.q.front(&s.frontBuf)
	if s.failing {
		// A decryption failure was reported: the rest of the client's
		// batch is answered only by its ReadyForQuery.
		if typ != 'Z' {
			return nil
		}
		s.failing = false
	}
	if e != nil && e.kind == 'q' {
		if e.loader.handle(typ, msg) {
			s.finishCatalog(e.loader)
			s.q.pop()
			s.afterReadyForQuery(msg)
		}
		return nil
	}
	if s.copyOut != nil && (typ == 'd' || typ == 'c') {
		return s.onCopyOut(ctx, typ, msg)
	}
	switch typ {
	case 'G':
		if e != nil && e.textCopy {
			textCopyResponse(msg)
		}
	case 'H':
		if e != nil && e.copy != nil {
			s.copyOut = e.copy
		}
	case 'S':
		s.noteParameterStatus(msg)
	case 'N', 'A':
	case '1', '2', '3', 'n':
		if e != nil {
			s.q.pop()
			if e.alias && typ == '1' {
				e.stmt.aliasReady.Store(true)
			}
			if e.swallow {
				return nil
			}
		}
	case 't':
		if e != nil && e.kind == 'D' {
			if e.swallow {
				return nil
			}
			if e.stmt.touches() {
				return s.rewriteParamDesc(msg, e.stmt)
			}
		}
	case 'T':
		if e == nil {
			break
		}
		switch e.kind {
		case 'D':
			s.q.pop()
			if e.stmt.touches() || e.portal != nil && e.portal.stmt.touches() {
				return s.onRowDescription(msg, e)
			}
			if e.swallow {
				return nil
			}
		case 'Q':
			s.qplan = nil
			cat := s.cat.Load()
			// A simple-protocol statement run again describes its result
			// with the same bytes: reuse the plan and the rewritten
			// message while the catalog is the same.
			if c := s.qrd; c != nil && c.cat == cat && bytes.Equal(c.raw, msg) {
				s.qplan = c.plan
				s.toClient = append(s.toClient, c.out...)
				return nil
			}
			if rowDescHasPolicy(msg, cat) {
				var rd pgproto3.RowDescription
				if err := rd.Decode(msg[5:]); err != nil {
					return err
				}
				s.qplan = s.planFor(rd.Fields, nil, false)
				s.rewriteRowDesc(&rd, nil)
				start := len(s.toClient)
				s.toClient, _ = rd.Encode(s.toClient)
				s.qrd = &rowDescCache{raw: append([]byte(nil), msg...), out: append([]byte(nil), s.toClient[start:]...), plan: s.qplan, cat: cat}
				return nil
			}
		}
	case 'D':
		var plan *rowPlan
		if e != nil {
			switch e.kind {
			case 'Q':
				plan = s.qplan
			case 'E':
				if e.portal != nil {
					plan = s.portalPlan(e.portal)
				}
			}
		}
		if plan != nil {
			return s.decryptRow(ctx, msg, plan, e)
		}
	case 'C', 'I', 's':
		s.auditRead("select")
		if e != nil {
			switch e.kind {
			case 'E':
				s.q.pop()
			case 'Q':
				s.qplan = nil
			}
		}
	case 'E':
		if e != nil {
			refusal := e.refusal
			switch e.kind {
			case 'Q', 'F', 'a':
				s.qplan = nil
				if e.swallow {
					return nil
				}
			default:
				s.q.popUntilSync()
			}
			if refusal {
				return s.forwardRefusal(msg)
			}
		}
		s.srv.cfg.Metrics.ServerError(sqlstateOf(msg))
	case 'Z':
		if e != nil && e.kind != 'S' && e.kind != 'Q' && e.kind != 'F' && e.kind != 'a' {
			// Entries left by a batch the server answered partially (for
			// instance an error before its Sync); drop them.
			for e != nil && e.kind != 'S' && e.kind != 'Q' && e.kind != 'F' && e.kind != 'a' {
				s.q.pop()
				e = s.q.front(&s.frontBuf)
			}
		}
		s.copyOut = nil
		if e != nil {
			s.q.pop()
			s.qplan = nil
			if e.swallow {
				s.afterReadyForQuery(msg)
				return nil
			}
		}
		if s.statusOverride != 0 && len(msg) >= 6 {
			// The client saw an error the server did not raise: inside a
			// transaction block it now believes the transaction aborted.
			// Show it that state, and make it so on the server before the
			// client's next statement.
			if msg[5] == 'T' {
				msg = []byte{'Z', 0, 0, 0, 5, 'E'}
				s.abortPending.Store(true)
			}
			s.statusOverride = 0
		}
	}
	s.toClient = append(s.toClient, msg...)
	return nil
}

// afterReadyForQuery keeps pendingRFQ and the idle state right for a
// ReadyForQuery the client never sees.
func (s *session) afterReadyForQuery(msg []byte) {
	if s.pendingRFQ.Add(-1) <= 0 {
		s.pendingRFQ.Store(0)
		s.setIdle()
	}
}

func (s *session) finishCatalog(l *catalogLoader) {
	if l.failed != nil {
		s.log.Warn().Err(l.failed).Msg("could not load the catalog of policy tables; keeping the previous one")
		return
	}
	if len(l.mismatch) > 0 {
		s.log.Warn().Strs("columns", l.mismatch).Msg("policy columns that are not bytea in the database; run pgcrypt-proxy policy check")
	}
	s.cat.Store(l.cat)
	s.log.Debug().Int("policy_columns", len(l.cat.columns)).Strs("search_path", l.cat.searchPath).Msg("catalog of policy tables loaded")
}

// noteParameterStatus follows the server settings that change how the
// proxy must read or write values.
func (s *session) noteParameterStatus(msg []byte) {
	var ps pgproto3.ParameterStatus
	if err := ps.Decode(msg[5:]); err != nil {
		return
	}
	switch ps.Name {
	case "TimeZone":
		s.tzName.Store(&ps.Value)
	case "standard_conforming_strings":
		s.scsOff.Store(ps.Value != "on")
	case "client_encoding":
		s.nonUTF8.Store(!isUTF8Name(ps.Value))
	case "server_encoding":
		s.serverNonUTF8.Store(!isUTF8Name(ps.Value))
	case "server_version":
		s.serverMajor.Store(int32(majorVersion(ps.Value)))
	}
}

// portalPlan is the plan for an Execute's rows: from the portal's own
// RowDescription, else from its statement's with the Bind formats.
func (s *session) portalPlan(pi *portalInfo) *rowPlan {
	if pi.plan == nil && pi.stmt != nil && pi.stmt.desc.Load() != nil {
		pi.plan = s.planFor(*pi.stmt.desc.Load(), pi, true)
		if pi.plan == nil {
			pi.plan = &rowPlan{}
		}
	}
	if pi.plan == nil || len(pi.plan.cols) == 0 {
		return nil
	}
	return pi.plan
}

func (s *session) onRowDescription(msg []byte, e *expect) error {
	if pi := e.portal; pi != nil && e.stmt == nil && pi.stmt != nil {
		if c := pi.stmt.rdCache; c != nil && bytes.Equal(c.raw, msg) &&
			slices.Equal(c.client, pi.resultFormats) && slices.Equal(c.server, pi.serverFormats) {
			pi.plan = c.plan
			if !e.swallow {
				s.toClient = append(s.toClient, c.out...)
			}
			return nil
		}
	}
	var rd pgproto3.RowDescription
	if err := rd.Decode(msg[5:]); err != nil {
		return err
	}
	if e.stmt != nil {
		fields := make([]pgproto3.FieldDescription, len(rd.Fields))
		copy(fields, rd.Fields)
		for i := range fields {
			fields[i].Name = append([]byte(nil), fields[i].Name...)
		}
		e.stmt.desc.Store(&fields)
	}
	if e.portal != nil {
		e.portal.plan = s.planFor(rd.Fields, e.portal, false)
		if e.portal.plan == nil {
			e.portal.plan = &rowPlan{}
		}
	}
	if e.swallow {
		return nil
	}
	s.rewriteRowDesc(&rd, e.portal)
	start := len(s.toClient)
	out, err := rd.Encode(s.toClient)
	if err != nil {
		return err
	}
	s.toClient = out
	if pi := e.portal; pi != nil && e.stmt == nil && pi.stmt != nil {
		pi.stmt.rdCache = &rowDescCache{raw: append([]byte(nil), msg...), out: append([]byte(nil), out[start:]...),
			client: pi.resultFormats, server: pi.serverFormats, plan: pi.plan}
	}
	return nil
}

// rewriteParamDesc presents policy parameters in their declared types.
func (s *session) rewriteParamDesc(msg []byte, st *stmtInfo) error {
	var pd pgproto3.ParameterDescription
	if err := pd.Decode(msg[5:]); err != nil {
		return err
	}
	for i, p := range st.res.Params {
		if p.Column != nil && i < len(pd.ParameterOIDs) {
			pd.ParameterOIDs[i] = p.Column.Type.OID
		}
	}
	if len(st.hidden) > 0 && st.nClient <= len(pd.ParameterOIDs) {
		pd.ParameterOIDs = pd.ParameterOIDs[:st.nClient] // the proxy's own parameters
	}
	out, err := pd.Encode(s.toClient)
	if err != nil {
		return err
	}
	s.toClient = out
	return nil
}

// decryptRow appends the DataRow with its policy columns decrypted. A
// value that does not decrypt fails the statement: the client gets an
// error in place of the row, never garbage.
func (s *session) decryptRow(ctx context.Context, msg []byte, plan *rowPlan, e *expect) error {
	if len(msg) < 7 {
		return errors.New("malformed DataRow")
	}
	n := int(binary.BigEndian.Uint16(msg[5:]))
	start := len(s.toClient)
	out := append(s.toClient, 'D', 0, 0, 0, 0)
	out = binary.BigEndian.AppendUint16(out, uint16(n))
	p := msg[7:]
	next := 0
	dec := s.dec
	m := s.srv.cfg.Metrics
	// Every row is counted, one in 32 is timed: reading the clock and
	// observing a histogram per row cost more than decrypting it.
	s.decRows++
	timed := m != nil && s.decRows%32 == 1
	var began time.Time
	if timed {
		began = time.Now()
	}
	if tz := s.tzName.Load(); tz != nil && *tz != s.decTZ {
		s.decTZ = *tz
		dec.setTimeZone(*tz)
	}
	for i := 0; i < n; i++ {
		if len(p) < 4 {
			return errors.New("malformed DataRow")
		}
		l := int(int32(binary.BigEndian.Uint32(p)))
		var val []byte
		if l >= 0 {
			if len(p) < 4+l {
				return errors.New("malformed DataRow")
			}
			val = p[4 : 4+l]
		}
		raw := p
		if l >= 0 {
			p = p[4+l:]
		} else {
			p = p[4:]
		}
		if next < len(plan.cols) && plan.cols[next].idx == i {
			pc := plan.cols[next]
			next++
			if l >= 0 {
				lenAt := len(out)
				out = append(out, 0, 0, 0, 0)
				var err error
				out, err = s.decryptValue(ctx, out, dec, pc.col, pc.serverFormat, pc.clientFormat, val)
				if err != nil {
					s.toClient = s.toClient[:start]
					return s.failDecrypt(err)
				}
				binary.BigEndian.PutUint32(out[lenAt:], uint32(len(out)-lenAt-4))
				continue
			}
		}
		if l >= 0 {
			out = append(out, raw[:4+l]...)
		} else {
			out = append(out, raw[:4]...)
		}
	}
	binary.BigEndian.PutUint32(out[start+1:], uint32(len(out)-start-1))
	s.toClient = out
	if timed {
		m.Decrypted(len(plan.cols), time.Since(began))
	} else {
		m.DecryptedUntimed(len(plan.cols))
	}
	if s.srv.cfg.Audit.Enabled() {
		s.readRows++
		s.readPlan = plan
	}
	return nil
}

// noteReadKey remembers a data key used to decrypt, for the audit event of
// the result set.
func (s *session) noteReadKey(id uint32) {
	if s.srv.cfg.Audit.Enabled() && !slices.Contains(s.readKeys, id) {
		s.readKeys = append(s.readKeys, id)
	}
}

// auditRead records the result set just completed, if it decrypted
// anything.
func (s *session) auditRead(kind string) {
	a := s.srv.cfg.Audit
	if !a.Enabled() || s.readRows == 0 {
		return
	}
	e := s.auditEvent(audit.KindRead)
	e.Statement, e.Rows, e.KeyIDs = kind, s.readRows, s.readKeys
	for _, pc := range s.readPlan.cols {
		e.Columns = append(e.Columns, pc.col.Identity())
	}
	a.Record(e)
	s.readRows, s.readKeys, s.readPlan = 0, nil, nil
}

// failDecrypt reports a decryption failure to the client and swallows the
// rest of the batch's replies until ReadyForQuery.
func (s *session) failDecrypt(err error) error {
	var ce *cryptoError
	code, msg, hint := "XX001", "pgcrypt-proxy could not decrypt a value", ""
	if errors.As(err, &ce) {
		code, msg, hint = ce.code, ce.msg, ce.hint
	}
	s.log.Error().Err(err).Msg("decryption failed; the statement was failed for the client")
	s.srv.cfg.Metrics.Refusal(code, metrics.RefusalDecryptFailed)
	er := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: msg, Hint: hint}
	s.toClient, _ = er.Encode(s.toClient)
	s.failing = true
	s.statusOverride = 'E'
	return nil
}

// forwardRefusal passes the server's error for a refused statement with
// the traces of the raising DO block removed.
func (s *session) forwardRefusal(msg []byte) error {
	var er pgproto3.ErrorResponse
	if err := er.Decode(msg[5:]); err != nil {
		return err
	}
	if er.Code != "25P02" {
		er.Where, er.File, er.Line, er.Routine, er.InternalQuery, er.InternalPosition = "", "", 0, "", "", 0
	}
	out, err := er.Encode(s.toClient)
	if err != nil {
		return err
	}
	s.toClient = out
	return nil
}

func isUTF8Name(enc string) bool {
	return strings.EqualFold(enc, "UTF8") || strings.EqualFold(enc, "UTF-8")
}

// majorVersion reads the major version from a server_version setting
// ("15.18 (Debian 15.18-0+deb12u1)", "17devel"); 0 if it has none.
func majorVersion(v string) int {
	n := 0
	for i := 0; i < len(v) && v[i] >= '0' && v[i] <= '9'; i++ {
		n = n*10 + int(v[i]-'0')
	}
	return n
}
