package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcrypt/pgcrypt-proxy/audit"
	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/metrics"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
	"github.com/pgcrypt/pgcrypt-proxy/rewrite"
)

// This file is the encrypting half of the client pump: it tracks prepared
// statements and portals, analyses SQL, encrypts what is bound for policy
// columns, refuses what cannot be done safely, and queues for each message
// what the server pump needs to handle its reply (results.go).

// stmtInfo is a prepared statement as the proxy knows it.
type stmtInfo struct {
	res *rewrite.Result // nil: the statement touches no policy table
	// hidden are the statement's policy constants, which the proxy turned
	// into parameters after the client's (numbered from nClient+1) so
	// that every Bind encrypts them under the data keys current then: a
	// constant encrypted once at Parse would keep a rotated-out key in use
	// for as long as the statement lives. The client never sees them.
	hidden  []rewrite.Literal
	nClient int
	// scalar: the statement went to the server in its ScalarSQL form,
	// which takes one candidate per compared parameter (col = $n::bytea),
	// because each compared column had one live data key at Parse. A
	// Bind that finds more (a data key rotated meanwhile) binds the array
	// form instead, which the proxy prepares under alias, a name of its
	// own, with arrayOIDs.
	scalar     bool
	arrayOIDs  []uint32
	alias      string      // client pump: set when the array form is first needed
	aliasReady atomic.Bool // server pump: the alias's ParseComplete arrived
	// describing is set by the client pump once a Describe of the
	// statement has been sent, so its RowDescription reaches the server
	// pump before any Execute of a portal made from it.
	describing bool
	// desc is the statement's RowDescription fields, set by the server
	// pump when a Describe of the statement is answered; the client pump
	// reads it at Bind to ask the server for policy columns in binary.
	desc atomic.Pointer[[]pgproto3.FieldDescription]
	// rdCache is the server pump's last rewrite of a portal
	// RowDescription of this statement, reused while the server's bytes
	// and the client's formats are the same (one Describe per execution
	// is what libpq's PQexecPrepared sends).
	rdCache *rowDescCache
	// formats is the client pump's last answer of binaryPolicyFormats for
	// this statement, reused while desc, catalog and client formats stay.
	formats *formatsCache
}

type formatsCache struct {
	desc   *[]pgproto3.FieldDescription
	cat    *catalog
	client []int16
	server []int16 // shared by the portals: read only
}

type rowDescCache struct {
	raw, out       []byte
	client, server []int16
	plan           *rowPlan
	cat            *catalog // simple protocol (session.qrd): the catalog the plan was made with
}

func (st *stmtInfo) touches() bool { return st != nil && st.res != nil && st.res.Touches }

// portalInfo is a bound portal.
type portalInfo struct {
	stmt          *stmtInfo
	resultFormats []int16 // as the client asked in Bind
	// serverFormats are the result formats the proxy asked the server for
	// (policy columns binary), when it rewrote them; nil otherwise.
	serverFormats []int16
	describing    bool     // client pump: a Describe of the portal was sent
	plan          *rowPlan // server pump: how to decrypt its rows
}

// expect is what the server pump must do with the reply to one message the
// client pump sent. Entries are queued in the order messages reach the
// server, which is the order replies come back.
type expect struct {
	kind    byte // the message: 'P','B','D','E','C','S','Q','F'; 'q' injected catalog query; 'a' injected abort
	swallow bool // the proxy injected the message: its reply goes nowhere
	refusal bool // the reply is the error the proxy raised for a refused statement
	stmt    *stmtInfo
	portal  *portalInfo
	loader  *catalogLoader
	copy    *copyStream // COPY … TO STDOUT of a policy table: decrypt its data
	// textCopy: the proxy turned the client's text or CSV COPY FROM into a
	// binary one; the client must see a text CopyInResponse.
	textCopy bool
	// alias: the proxy's Parse of stmt's array form (stmtInfo.alias).
	alias bool
}

// queue is a FIFO of expectations shared by the two pumps.
type queue struct {
	mu    sync.Mutex
	items []expect
	head  int
}

func (q *queue) push(e expect) {
	q.mu.Lock()
	q.items = append(q.items, e)
	q.mu.Unlock()
}

// front copies the oldest entry into dst and returns dst, or nil when the
// queue is empty. The entry is copied because the client pump may reuse
// its slot once it is popped; dst is caller storage so that the server
// pump's per-message lookup does not allocate.
func (q *queue) front(dst *expect) *expect {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return nil
	}
	*dst = q.items[q.head]
	return dst
}

func (q *queue) pop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return
	}
	q.items[q.head] = expect{}
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head > 1024 && q.head*2 > len(q.items) {
		n := copy(q.items, q.items[q.head:])
		q.items, q.head = q.items[:n], 0
	}
}

// popUntilSync drops the entries of messages the server skips after an
// error in an extended-protocol batch: everything before the next Sync.
func (q *queue) popUntilSync() {
	var buf expect
	for {
		e := q.front(&buf)
		if e == nil || e.kind == 'S' {
			return
		}
		q.pop()
	}
}

// portalSlab is how many portalInfos newPortal allocates at once.
const portalSlab = 32

// newPortal returns a zero portalInfo. They are carved from slabs, one
// allocation per portalSlab Binds instead of one per Bind; each is used
// for one portal and never recycled (a slab lives while any of its
// portals is referenced, a few KiB at most).
func (es *encState) newPortal() *portalInfo {
	if len(es.slab) == 0 {
		es.slab = make([]portalInfo, portalSlab)
	}
	pi := &es.slab[0]
	es.slab = es.slab[1:]
	return pi
}

// encState is the client pump's encryption state of a session.
type encState struct {
	stmts   map[string]*stmtInfo
	portals map[string]*portalInfo
	slab    []portalInfo // newPortal's unused portalInfos
	// memo is the analyser's memo of this session's simple-protocol
	// statements (the last template used; see rewrite.Memo).
	memo       rewrite.Memo
	searchPath []string
	inBatch    bool // extended-protocol messages sent since the last Sync
	enc        *codec
	aliases    uint64 // stmtInfo.alias names handed out
	// scalarKeys[i] is the one live data key of parameter i of the Bind
	// being handled, when it is bound in its scalar form.
	scalarKeys []*crypto.Key
}

// aliasPrefix starts the names of the statements the proxy prepares itself
// (stmtInfo.alias). PostgreSQL keeps the first 63 bytes of a statement
// name, so the proxy's names are short and never derived from the
// client's; a client's Parse with this prefix is refused.
const aliasPrefix = "pgcrypt-proxy:"

// closeAlias closes st's array-form statement on the server, if the proxy
// prepared one; the reply goes nowhere.
func (s *session) closeAlias(st *stmtInfo) {
	if st == nil || st.alias == "" {
		return
	}
	s.toServer, _ = (&pgproto3.Close{ObjectType: 'S', Name: st.alias}).Encode(s.toServer)
	s.q.push(expect{kind: 'C', swallow: true})
	st.alias = ""
	st.aliasReady.Store(false)
}

// clientMessage handles one client message when the policy has tables.
func (s *session) clientMessage(ctx context.Context, typ byte, msg []byte) error {
	if s.copyIn != nil && (typ == 'd' || typ == 'c' || typ == 'f') {
		s.onCopyIn(ctx, typ, msg)
		return nil
	}
	switch typ {
	case 'Q':
		return s.onQuery(ctx, msg)
	case 'P':
		return s.onParse(ctx, msg)
	case 'B':
		return s.onBind(ctx, msg)
	case 'D':
		return s.onDescribe(msg)
	case 'E':
		return s.onExecute(msg)
	case 'C':
		return s.onClose(msg)
	case 'S':
		s.es.inBatch = false
		s.q.push(expect{kind: 'S'})
	case 'F':
		s.q.push(expect{kind: 'F'})
	case 'H':
		s.es.inBatch = true
	}
	s.toServer = append(s.toServer, msg...)
	return nil
}

// beginStatement runs before a Query or a Parse: it picks up a reloaded
// policy and, at a point where nothing is in flight, refreshes the catalog
// when DDL or a reload made it stale.
//
// self is how many ReadyForQuery the message being handled is already
// counted for (1 for a Query, 0 for a Parse): the session is at a boundary
// when nothing else is in flight.
func (s *session) beginStatement(self int64) {
	s.catalogInjected = false
	if st := s.srv.policyState(); st != s.pol {
		s.pol = st
		s.needCatalog = true
	}
	if s.needCatalog && s.atBoundary(self) {
		s.injectCatalogQuery()
	}
	if s.abortPending.Load() && s.atBoundary(self) {
		s.abortPending.Store(false)
		s.pendingRFQ.Add(1)
		s.toServer, _ = (&pgproto3.Query{String: raiseSQL("XX001", "pgcrypt-proxy: aborting the transaction after a decryption failure", "")}).Encode(s.toServer)
		s.q.push(expect{kind: 'a', swallow: true})
	}
}

func (s *session) atBoundary(self int64) bool {
	return !s.es.inBatch && s.pendingRFQ.Load() == self
}

// ensureCatalog makes sure the catalog knows every policy table a
// statement touches before the statement goes out: a table created (or
// re-created) by another session after this one loaded its catalog would
// otherwise come back undecrypted. It reloads the catalog ahead of the
// statement when the session is at a boundary, and otherwise refuses the
// statement (55000) so the client retries once the reload has happened.
func (s *session) ensureCatalog(res *rewrite.Result, self int64) *rewrite.Refusal {
	if !res.Touches || res.Refusal != nil || len(res.Columns) == 0 || s.catalogInjected {
		// A catalog reload already goes out ahead of this statement.
		return nil
	}
	cat := s.cat.Load()
	// A policy table dropped and created again by another session has a
	// new OID; the catalog is re-read when it is older than CatalogTTL.
	missing := cat == nil || cat.pol != s.pol.pol || time.Since(cat.loaded) > s.srv.cfg.CatalogTTL
	for i, c := range res.Columns {
		if i > 0 && c.Table == res.Columns[i-1].Table {
			continue
		}
		if missing || !cat.knows(c.Table) {
			missing = true
			break
		}
	}
	if !missing {
		return nil
	}
	if s.atBoundary(self) {
		s.injectCatalogQuery()
		return nil
	}
	if cat != nil && cat.pol == s.pol.pol && time.Since(cat.loaded) > s.srv.cfg.CatalogTTL {
		// Only old, not missing: refresh at the next boundary rather than
		// refuse in the middle of a batch.
		s.needCatalog = true
		return nil
	}
	s.needCatalog = true
	return &rewrite.Refusal{Code: "55000", Message: "pgcrypt-proxy has not loaded the catalog entry of this policy table yet",
		Hint: "retry the statement; it was created after this session started"}
}

// injectCatalogQuery sends the catalog query; its reply is consumed by the
// server pump and never reaches the client.
func (s *session) injectCatalogQuery() {
	s.needCatalog = false
	if s.pol == nil || len(s.pol.pol.TableNames()) == 0 {
		s.cat.Store(&catalog{pol: s.pol.pol})
		return
	}
	s.catalogInjected = true
	s.pendingRFQ.Add(1)
	s.toServer, _ = (&pgproto3.Query{String: catalogQuery(s.pol.pol)}).Encode(s.toServer)
	s.q.push(expect{kind: 'q', swallow: true, loader: newCatalogLoader(s.pol.pol)})
}

func (s *session) analyze(memo *rewrite.Memo, sql string) *rewrite.Result {
	s.forgetDeallocated(sql)
	res := s.pol.analyzer.AnalyzeMemo(memo, sql, s.searchPath())
	if res.SearchPathChanged {
		if res.SearchPath != nil && !res.SearchPathLocal {
			sp := make([]string, 0, len(res.SearchPath))
			for _, p := range res.SearchPath {
				if p == "$user" {
					// PostgreSQL skips $user when no schema has the user's
					// name; keeping it only matters if one does.
					p = s.user
				}
				sp = append(sp, p)
			}
			s.es.searchPath = sp
		} else {
			// Unknown or transaction-local value: ask the server again
			// before the next statement.
			s.es.searchPath = nil
			s.needCatalog = true
		}
	}
	if res.Invalidates {
		s.needCatalog = true
	}
	if res.Touches && res.Refusal == nil {
		switch {
		case s.nonUTF8.Load():
			return &rewrite.Result{Touches: true, Refusal: &rewrite.Refusal{Code: "0A000",
				Message: "pgcrypt-proxy needs client_encoding UTF8 for statements on encrypted columns",
				Hint:    "SET client_encoding = 'UTF8'"}}
		case s.scsOff.Load() && len(res.Literals) > 0:
			return &rewrite.Result{Touches: true, Refusal: &rewrite.Refusal{Code: "0A000",
				Message: "pgcrypt-proxy cannot read literals for encrypted columns with standard_conforming_strings off",
				Hint:    "SET standard_conforming_strings = on, or pass the values as parameters"}}
		}
	}
	return res
}

// forgetDeallocated drops the proxy's record of prepared statements that a
// DEALLOCATE or DISCARD ALL removes on the server.
func (s *session) forgetDeallocated(sql string) {
	t := strings.TrimLeft(sql, " \t\r\n(")
	if len(t) < 7 {
		return
	}
	switch {
	case strings.EqualFold(t[:7], "DISCARD"):
		if strings.Contains(strings.ToUpper(t), "ALL") {
			clear(s.es.stmts)
			clear(s.es.portals)
		}
	case strings.EqualFold(t[:7], "DEALLOC"):
		f := strings.Fields(strings.TrimRight(t, "; \t\r\n"))
		if len(f) < 2 {
			return
		}
		name := f[len(f)-1]
		if strings.EqualFold(name, "all") {
			clear(s.es.stmts)
			return
		}
		if strings.HasPrefix(name, `"`) && strings.HasSuffix(name, `"`) && len(name) >= 2 {
			name = strings.ReplaceAll(name[1:len(name)-1], `""`, `"`)
		} else {
			name = strings.ToLower(name)
		}
		s.closeAlias(s.es.stmts[name])
		delete(s.es.stmts, name)
	}
}

func (s *session) searchPath() []string {
	if s.es.searchPath != nil {
		return s.es.searchPath
	}
	if c := s.cat.Load(); c != nil && c.searchPath != nil {
		return c.searchPath
	}
	return []string{"public"}
}

func (s *session) onQuery(ctx context.Context, msg []byte) error {
	s.beginStatement(1)
	var q pgproto3.Query
	if err := q.Decode(msg[5:]); err != nil {
		return fmt.Errorf("malformed Query message: %w", err)
	}
	s.copyIn = nil
	if rewrite.IsCopy(q.String) {
		s.stmtKind = "copy"
		c, ref := s.pol.analyzer.AnalyzeCopy(q.String, s.searchPath())
		if ref != nil {
			s.refuse(ref.Code, ref.Message, ref.Hint, ref.Column, 'Q', metrics.RefusalStatement)
			return nil
		}
		if c != nil {
			if cat := s.cat.Load(); (cat == nil || cat.columnsOf(c.Schema, c.Name, s.searchPath()) == nil) && c.Columns == nil && s.atBoundary(1) {
				// Learn the table's columns first; the reply arrives before
				// the COPY's, but the columns are needed now: refuse once,
				// and the retry finds them.
				s.injectCatalogQuery()
			}
			cs, err := s.newCopyStream(c)
			if err != nil {
				s.refuseErr(err, 'Q')
				return nil
			}
			e := expect{kind: 'Q'}
			if cs != nil && c.From {
				s.copyIn = cs
				sql, conv, ok := s.binaryCopyPlan(c, cs)
				s.srv.cfg.Metrics.CopyFrom(ok)
				if ok {
					s.log.Debug().Str("copy_upstream", "binary").Msg("COPY FROM goes on to the server in binary format")
					cs.conv = conv
					cs.out = appendBinaryCopyHeader(cs.out)
					e.textCopy = true
					s.q.push(e)
					s.toServer, _ = (&pgproto3.Query{String: sql}).Encode(s.toServer)
					return nil
				}
			} else if cs != nil {
				e.copy = cs
			}
			s.q.push(e)
			s.toServer = append(s.toServer, msg...)
			return nil
		}
	}
	res := s.analyze(&s.es.memo, q.String)
	s.stmtKind = res.Kind
	if ref := s.ensureCatalog(res, 1); ref != nil {
		res = &rewrite.Result{Touches: true, Refusal: ref}
	}
	if res.Refusal != nil {
		s.refuse(res.Refusal.Code, res.Refusal.Message, res.Refusal.Hint, res.Refusal.Column, 'Q', metrics.RefusalStatement)
		return nil
	}
	if !res.Touches {
		s.srv.cfg.Metrics.Statement(metrics.Passthrough)
	} else {
		s.srv.cfg.Metrics.Statement(metrics.Encrypted)
	}
	if !res.Touches || len(res.Literals) == 0 && res.SQL == q.String {
		s.q.push(expect{kind: 'Q'})
		s.toServer = append(s.toServer, msg...)
		return nil
	}
	// The Query message is written in place: type, length, text, NUL.
	start := len(s.toServer)
	out, err := s.appendSubstituted(ctx, append(s.toServer, 'Q', 0, 0, 0, 0), res)
	if err != nil {
		s.toServer = s.toServer[:start]
		s.refuseErr(err, 'Q')
		return nil
	}
	out = append(out, 0)
	binary.BigEndian.PutUint32(out[start+1:], uint32(len(out)-start-1))
	s.toServer = out
	s.auditWrite(res.Kind, literalColumns(res), 0)
	s.q.push(expect{kind: 'Q'})
	return nil
}

// hideLiterals turns the policy constants of a Parse into parameters
// numbered after the client's (see stmtInfo.hidden) and returns the SQL to
// prepare and the parameter types.
func hideLiterals(st *stmtInfo, res *rewrite.Result, oids []uint32) (string, []uint32) {
	st.nClient = len(oids)
	var b strings.Builder
	prev := 0
	for _, l := range res.Literals {
		b.WriteString(res.SQL[prev:l.Start])
		prev = l.End
		if l.Null {
			b.WriteString(res.SQL[l.Start:l.End])
			continue
		}
		st.hidden = append(st.hidden, l)
		n := strconv.Itoa(st.nClient + len(st.hidden))
		switch {
		case l.Use == rewrite.UseStore:
			oids = append(oids, byteaOID)
			b.WriteString("$" + n + "::bytea")
		case l.Quant != "":
			oids = append(oids, byteaArrayOID)
			b.WriteString(l.Quant + "($" + n + "::bytea[])")
		default:
			oids = append(oids, byteaArrayOID)
			b.WriteString("$" + n + "::bytea[]")
		}
	}
	b.WriteString(res.SQL[prev:])
	return b.String(), oids
}

// appendSubstituted appends res.SQL with each policy literal's placeholder
// replaced by its ciphertext literal to dst. On error the returned slice
// must be discarded.
func (s *session) appendSubstituted(ctx context.Context, dst []byte, res *rewrite.Result) ([]byte, error) {
	if len(res.Literals) > 0 {
		if t := s.encTimer(); t != nil {
			defer t.done(len(res.Literals))
		} else {
			s.srv.cfg.Metrics.EncryptedUntimed(len(res.Literals))
		}
	}
	out := dst
	prev := 0
	for _, l := range res.Literals {
		out = append(out, res.SQL[prev:l.Start]...)
		prev = l.End
		if l.Null {
			out = append(out, res.SQL[l.Start:l.End]...)
			continue
		}
		if l.Use == rewrite.UseCompare {
			cands, err := s.candidates(ctx, s.candBuf[:0], s.es.enc, l.Column, textFormat, []byte(l.Value), 0)
			if err != nil {
				return out, err
			}
			s.candBuf = cands
			switch {
			case l.Quant == "":
				out = appendCandidateArrayLiteral(out, cands)
			case binary.BigEndian.Uint32(cands[12:]) == 1:
				// One candidate: col = '\x…'::bytea, which PostgreSQL plans
				// and runs faster than col = ANY(ARRAY[…]).
				out = appendByteaLiteral(out, cands[24:])
			default:
				out = append(out, l.Quant...)
				out = append(out, '(')
				out = appendCandidateArrayLiteral(out, cands)
				out = append(out, ')')
			}
			continue
		}
		env, err := s.encryptValue(ctx, s.envBuf[:0], s.es.enc, l.Column, textFormat, []byte(l.Value))
		if err != nil {
			return out, err
		}
		s.envBuf = env
		out = appendByteaLiteral(out, env)
	}
	return append(out, res.SQL[prev:]...), nil
}

func literalColumns(res *rewrite.Result) []*policy.Column {
	var cols []*policy.Column
	for _, l := range res.Literals {
		if l.Use == rewrite.UseStore && !l.Null {
			cols = append(cols, l.Column)
		}
	}
	return cols
}

// appendCandidateArrayLiteral turns a binary bytea[] (from candidates) into
// an ARRAY[…]::bytea[] literal.
func appendCandidateArrayLiteral(dst, arr []byte) []byte {
	n := int(binary.BigEndian.Uint32(arr[12:]))
	p := arr[20:]
	dst = append(dst, "ARRAY["...)
	for i := 0; i < n; i++ {
		l := int(binary.BigEndian.Uint32(p))
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendByteaLiteral(dst, p[4:4+l])
		p = p[4+l:]
	}
	return append(dst, "]::bytea[]"...)
}

func (s *session) onParse(ctx context.Context, msg []byte) error {
	s.beginStatement(0)
	s.copyIn = nil // a COPY the server refused before CopyInResponse
	var p pgproto3.Parse
	if err := p.Decode(msg[5:]); err != nil {
		return fmt.Errorf("malformed Parse message: %w", err)
	}
	s.closeAlias(s.es.stmts[p.Name])
	var res *rewrite.Result
	if strings.HasPrefix(p.Name, aliasPrefix) {
		// Refused before any analysis, which would track what the
		// statement does (search_path, DEALLOCATE) as if it ran.
		s.stmtKind = "other"
		res = &rewrite.Result{Touches: true, Refusal: &rewrite.Refusal{Code: "42939",
			Message: fmt.Sprintf("prepared statement names starting with %q are reserved by pgcrypt-proxy", aliasPrefix),
			Hint:    "choose another statement name"}}
	} else {
		res = s.analyze(nil, p.Query)
		s.stmtKind = res.Kind
		if ref := s.ensureCatalog(res, 0); ref != nil {
			res = &rewrite.Result{Touches: true, Refusal: ref}
		}
	}
	s.es.inBatch = true
	if res.Refusal != nil {
		delete(s.es.stmts, p.Name)
		s.refuse(res.Refusal.Code, res.Refusal.Message, res.Refusal.Hint, res.Refusal.Column, 'P', metrics.RefusalStatement)
		return nil
	}
	st := &stmtInfo{}
	if !res.Touches {
		s.es.stmts[p.Name] = st
		s.q.push(expect{kind: 'P', stmt: st})
		s.toServer = append(s.toServer, msg...)
		return nil
	}
	st.res = res
	oids := p.ParameterOIDs
	if len(oids) < len(res.Params) {
		oids = append(oids, make([]uint32, len(res.Params)-len(oids))...)
	}
	for i, prm := range res.Params {
		if prm.Column == nil {
			continue
		}
		if oids[i] != 0 && oids[i] != prm.Column.Type.OID && oids[i] != byteaOID && oids[i] != byteaArrayOID && !sameTextFamily(oids[i], prm.Column.Type.OID) {
			delete(s.es.stmts, p.Name)
			s.refuse("42804", fmt.Sprintf("parameter $%d is declared with type OID %d, but column %s holds %s", i+1, oids[i], prm.Column, prm.Column.Type.Name),
				"leave the parameter type unspecified or declare it as "+prm.Column.Type.Name, prm.Column, 'P', metrics.RefusalParamType)
			return nil
		}
		if prm.Use == rewrite.UseCompare {
			oids[i] = byteaArrayOID
		} else {
			oids[i] = byteaOID
		}
	}
	sql := res.SQL
	if res.ScalarSQL != "" && len(res.Literals) == 0 && s.scalarForm(ctx, res.Params, false) {
		st.scalar = true
		st.arrayOIDs = slices.Clone(oids)
		oids = slices.Clone(oids)
		for i, prm := range res.Params {
			if prm.Scalar {
				oids[i] = byteaOID
			}
		}
		sql = res.ScalarSQL
	}
	if len(res.Literals) > 0 {
		// A constant that cannot be a value of its column is refused now,
		// as before it became a parameter, not at every Bind.
		for _, l := range res.Literals {
			if l.Null {
				continue
			}
			canon, err := s.es.enc.toCanonical(s.scratch[:0], l.Column.Type, textFormat, []byte(l.Value))
			if err != nil {
				delete(s.es.stmts, p.Name)
				s.refuseErr(err, 'P')
				return nil
			}
			s.scratch = canon
		}
		sql, oids = hideLiterals(st, res, oids)
	}
	s.es.stmts[p.Name] = st
	s.q.push(expect{kind: 'P', stmt: st})
	s.toServer, _ = (&pgproto3.Parse{Name: p.Name, Query: sql, ParameterOIDs: oids}).Encode(s.toServer)
	// Learn the result columns now (the reply is the proxy's), so every
	// later Bind can ask for policy columns in binary and no Execute needs
	// a Describe of its own.
	st.describing = true
	s.toServer, _ = (&pgproto3.Describe{ObjectType: 'S', Name: p.Name}).Encode(s.toServer)
	s.q.push(expect{kind: 'D', swallow: true, stmt: st})
	return nil
}

// genericPlanArrayLen is the array length PostgreSQL's planner assumes for
// an array parameter (see session.candidates).
const genericPlanArrayLen = 10

// sameTextFamily reports string types whose values are the same bytes:
// text, varchar and unknown (drivers such as pgjdbc declare varchar for
// every string parameter).
func sameTextFamily(a, b uint32) bool {
	text := func(o uint32) bool { return o == 25 || o == 1043 || o == 705 }
	return text(a) && text(b)
}

func (s *session) onBind(ctx context.Context, msg []byte) error {
	s.es.inBatch = true
	portalName, rest, ok := cstring(msg[5:])
	if !ok {
		return errMalformedBind
	}
	stmtName, _, ok := cstring(rest)
	if !ok {
		return errMalformedBind
	}
	st := s.es.stmts[string(stmtName)]
	if !st.touches() {
		if len(s.es.portals) > 0 {
			delete(s.es.portals, string(portalName))
		}
		s.q.push(expect{kind: 'B'})
		s.toServer = append(s.toServer, msg...)
		return nil
	}
	b, err := parseBind(msg[5:], s.bindParams[:0])
	if err != nil {
		return err
	}
	s.bindParams = b.params
	defer clear(b.params) // they point into the client's read buffer
	portal := string(b.portal)
	s.stmtKind = st.res.Kind
	pi := s.es.newPortal()
	pi.stmt, pi.resultFormats = st, b.resultCodes()
	if desc := st.desc.Load(); desc != nil {
		pi.serverFormats = s.serverFormats(st, desc, pi.resultFormats)
	}
	if nf := len(b.formats) / 2; nf > 1 && nf != len(b.params) {
		// As the server would: the proxy rewrites the codes, so it must
		// not turn a malformed Bind into a well-formed one.
		delete(s.es.portals, portal)
		s.refuse("08P01", fmt.Sprintf("bind message has %d parameter formats but %d parameters", nf, len(b.params)),
			"", nil, 'B', metrics.RefusalStatement)
		return nil
	}
	params := st.res.Params
	if len(b.params) < len(params) {
		// The server refuses the count mismatch; let it.
		params = params[:len(b.params)]
	}
	if len(st.hidden) > 0 && len(b.params) != st.nClient {
		// The server would count the proxy's own parameters too.
		delete(s.es.portals, portal)
		s.refuse("08P01", fmt.Sprintf("bind message supplies %d parameters, but prepared statement %q requires %d", len(b.params), string(b.stmt), st.nClient),
			"", nil, 'B', metrics.RefusalStatement)
		return nil
	}
	useAlias := st.scalar && !s.scalarForm(ctx, st.res.Params, true)
	if useAlias {
		if st.alias == "" {
			s.es.aliases++
			st.alias = aliasPrefix + strconv.FormatUint(s.es.aliases, 10)
		}
		if !st.aliasReady.Load() {
			// Close first: a Parse of the alias sent earlier may have
			// succeeded without its reply having arrived yet.
			s.toServer, _ = (&pgproto3.Close{ObjectType: 'S', Name: st.alias}).Encode(s.toServer)
			s.q.push(expect{kind: 'C', swallow: true})
			s.toServer, _ = (&pgproto3.Parse{Name: st.alias, Query: st.res.SQL, ParameterOIDs: st.arrayOIDs}).Encode(s.toServer)
			s.q.push(expect{kind: 'P', swallow: true, stmt: st, alias: true})
		}
	}
	// policyValues: the Bind carries values of policy columns (perhaps
	// all NULL); encrypting: at least one of them is to be encrypted.
	policyValues := len(st.hidden) > 0
	encrypting := policyValues
	for i, prm := range params {
		if prm.Column != nil {
			policyValues = true
			if b.params[i] != nil {
				encrypting = true
				break
			}
		}
	}
	auditing := policyValues && s.srv.cfg.Audit.Enabled()
	if !encrypting && pi.serverFormats == nil && !useAlias {
		if auditing {
			s.auditBind(st, params)
		}
		s.es.portals[portal] = pi
		s.q.push(expect{kind: 'B', portal: pi})
		s.toServer = append(s.toServer, msg...)
		return nil
	}

	// The rewritten Bind goes straight into the outgoing buffer, each
	// encrypted value written in place. s.toServer itself moves only at the
	// end, so a refusal half-way leaves nothing of it behind.
	var w bindWriter
	out := w.begin(s.toServer)
	out = appendCString(out, b.portal)
	if useAlias {
		out = appendCString(out, st.alias)
	} else {
		out = appendCString(out, b.stmt)
	}
	encrypts := func(i int) bool {
		return i < len(params) && params[i].Column != nil && b.params[i] != nil
	}
	nOut := len(b.params) + len(st.hidden)
	if !encrypting {
		out = binary.BigEndian.AppendUint16(out, uint16(len(b.formats)/2))
		out = append(out, b.formats...)
		out = append(out, b.rawParams...)
	} else {
		if nOut > math.MaxUint16 {
			delete(s.es.portals, portal)
			s.refuse("54000", fmt.Sprintf("bind message would carry %d parameters, more than the protocol allows", nOut),
				"", nil, 'B', metrics.RefusalStatement)
			return nil
		}
		out = binary.BigEndian.AppendUint16(out, uint16(nOut))
		for i := range b.params {
			f := b.format(i)
			if encrypts(i) {
				f = binaryFormat
			}
			out = appendInt16(out, f)
		}
		for range st.hidden {
			out = appendInt16(out, binaryFormat)
		}
		out = binary.BigEndian.AppendUint16(out, uint16(nOut))
		timer := s.encTimer()
		n := 0
		for i, v := range b.params {
			if !encrypts(i) {
				out = appendValue(out, v)
				continue
			}
			prm := params[i]
			out = w.beginValue(out)
			var err error
			switch {
			case prm.Use == rewrite.UseCompare && st.scalar && prm.Scalar && !useAlias:
				out, err = s.scalarCandidate(out, s.es.scalarKeys[i], s.es.enc, prm.Column, b.format(i), v)
			case prm.Use == rewrite.UseCompare:
				out, err = s.candidates(ctx, out, s.es.enc, prm.Column, b.format(i), v, genericPlanArrayLen)
			default:
				out, err = s.encryptValue(ctx, out, s.es.enc, prm.Column, b.format(i), v)
			}
			if err != nil {
				delete(s.es.portals, portal)
				s.refuseErr(annotateParam(err, i, prm.Column), 'B')
				return nil
			}
			w.endValue(out)
			n++
		}
		// The proxy's parameters for the statement's constants, encrypted
		// now under the data keys current now. They follow the client's;
		// with another count from the client the server refuses the Bind.
		for _, h := range st.hidden {
			out = w.beginValue(out)
			var err error
			if h.Use == rewrite.UseCompare {
				out, err = s.candidates(ctx, out, s.es.enc, h.Column, textFormat, []byte(h.Value), genericPlanArrayLen)
			} else {
				out, err = s.encryptValue(ctx, out, s.es.enc, h.Column, textFormat, []byte(h.Value))
			}
			if err != nil {
				delete(s.es.portals, portal)
				s.refuseErr(err, 'B')
				return nil
			}
			w.endValue(out)
			n++
		}
		if timer != nil {
			timer.done(n)
		} else {
			s.srv.cfg.Metrics.EncryptedUntimed(n)
		}
	}
	if auditing {
		// After the encryption: it noted the data keys used.
		s.auditBind(st, params)
	}
	if sf := pi.serverFormats; sf != nil {
		out = binary.BigEndian.AppendUint16(out, uint16(len(sf)))
		for _, f := range sf {
			out = appendInt16(out, f)
		}
	} else {
		out = binary.BigEndian.AppendUint16(out, uint16(len(b.results)/2))
		out = append(out, b.results...)
	}
	s.toServer = w.finish(out)
	s.es.portals[portal] = pi
	s.q.push(expect{kind: 'B', portal: pi})
	return nil
}

// auditBind records the write of a Bind's encrypted values.
func (s *session) auditBind(st *stmtInfo, params []rewrite.Param) {
	var cols []*policy.Column
	for _, prm := range params {
		if prm.Column != nil && prm.Use == rewrite.UseStore {
			cols = append(cols, prm.Column)
		}
	}
	for _, h := range st.hidden {
		if h.Use == rewrite.UseStore {
			cols = append(cols, h.Column)
		}
	}
	if len(cols) > 0 {
		s.auditWrite(st.res.Kind, cols, 1)
	} else {
		s.auditKeys = nil
	}
}

// serverFormats is binaryPolicyFormats for a portal of st, remembered
// per statement: a prepared statement's Binds ask for the same formats.
func (s *session) serverFormats(st *stmtInfo, desc *[]pgproto3.FieldDescription, client []int16) []int16 {
	cat := s.cat.Load()
	if c := st.formats; c != nil && c.desc == desc && c.cat == cat && slices.Equal(c.client, client) {
		return c.server
	}
	sf := binaryPolicyFormats(cat, *desc, client)
	st.formats = &formatsCache{desc: desc, cat: cat, client: slices.Clone(client), server: sf}
	return sf
}

// binaryPolicyFormats returns per-column result formats asking for every
// policy column in binary (so the proxy decrypts raw bytes rather than
// bytea hex) and every other column as the client asked; nil when the
// result has no policy column.
func binaryPolicyFormats(cat *catalog, fields []pgproto3.FieldDescription, client []int16) []int16 {
	var out []int16
	for i, f := range fields {
		if cat.lookup(f.TableOID, f.TableAttributeNumber) == nil {
			continue
		}
		if out == nil {
			out = make([]int16, len(fields))
			for j := range out {
				out[j] = resultFormat(client, j)
			}
		}
		out[i] = binaryFormat
	}
	return out
}

func annotateParam(err error, i int, col *policy.Column) error {
	var ve *valueError
	if errors.As(err, &ve) {
		return &valueError{code: ve.code, msg: fmt.Sprintf("%s (parameter $%d, column %s)", ve.msg, i+1, col)}
	}
	return err
}

func (s *session) onDescribe(msg []byte) error {
	s.es.inBatch = true
	var d pgproto3.Describe
	if err := d.Decode(msg[5:]); err != nil {
		return fmt.Errorf("malformed Describe message: %w", err)
	}
	if d.ObjectType == 'S' {
		st := s.es.stmts[d.Name]
		if st != nil {
			st.describing = true
		}
		s.q.push(expect{kind: 'D', stmt: st})
	} else {
		pi := s.es.portals[d.Name]
		if pi != nil {
			pi.describing = true
		}
		s.q.push(expect{kind: 'D', portal: pi})
	}
	s.toServer = append(s.toServer, msg...)
	return nil
}

func (s *session) onExecute(msg []byte) error {
	s.es.inBatch = true
	portal, _, ok := cstring(msg[5:])
	if !ok {
		return errors.New("malformed Execute message")
	}
	pi := s.es.portals[string(portal)]
	if pi != nil {
		s.srv.cfg.Metrics.Statement(metrics.Encrypted)
	} else {
		s.srv.cfg.Metrics.Statement(metrics.Passthrough)
	}
	if pi != nil && !pi.describing && !pi.stmt.describing {
		// The proxy must know the result columns to decrypt them: ask,
		// and keep the answer from the client, which did not ask.
		pi.describing = true
		s.toServer, _ = (&pgproto3.Describe{ObjectType: 'P', Name: string(portal)}).Encode(s.toServer)
		s.q.push(expect{kind: 'D', swallow: true, portal: pi})
	}
	s.q.push(expect{kind: 'E', portal: pi})
	s.toServer = append(s.toServer, msg...)
	return nil
}

func (s *session) onClose(msg []byte) error {
	s.es.inBatch = true
	var c pgproto3.Close
	if err := c.Decode(msg[5:]); err != nil {
		return fmt.Errorf("malformed Close message: %w", err)
	}
	if c.ObjectType == 'S' {
		s.closeAlias(s.es.stmts[c.Name])
		delete(s.es.stmts, c.Name)
	} else {
		delete(s.es.portals, c.Name)
	}
	s.q.push(expect{kind: 'C'})
	s.toServer = append(s.toServer, msg...)
	return nil
}

// refuse makes the server raise the proxy's error in place of the client's
// message, so the session ends up exactly as after a PostgreSQL error: in
// a transaction block the transaction is aborted, and in an extended
// batch the server skips to Sync.
func (s *session) refuse(code, msg, hint string, col *policy.Column, in byte, reason metrics.RefusalReason) {
	ev := s.log.Warn().Str("sqlstate", code).Str("refusal", msg)
	if col != nil {
		ev = ev.Str("column", col.String())
	}
	ev.Msg("statement refused")
	m := s.srv.cfg.Metrics
	m.Statement(metrics.Refused)
	m.Refusal(code, reason)
	if a := s.srv.cfg.Audit; a.Enabled() {
		e := s.auditEvent(audit.KindRefused)
		e.SQLSTATE, e.Reason, e.Statement = code, reason.String(), s.stmtKind
		if col != nil {
			e.Columns = []string{col.Identity()}
		}
		a.Record(e)
	}
	sql := raiseSQL(code, msg, hint)
	if in == 'Q' {
		s.q.push(expect{kind: 'Q', refusal: true})
		s.toServer, _ = (&pgproto3.Query{String: sql}).Encode(s.toServer)
		return
	}
	s.toServer, _ = (&pgproto3.Parse{Query: sql}).Encode(s.toServer)
	s.toServer, _ = (&pgproto3.Bind{}).Encode(s.toServer)
	s.toServer, _ = (&pgproto3.Execute{}).Encode(s.toServer)
	s.q.push(expect{kind: 'P', swallow: true})
	s.q.push(expect{kind: 'B', swallow: true})
	s.q.push(expect{kind: 'E', refusal: true})
}

// refuseErr refuses with an encryption or value error.
func (s *session) refuseErr(err error, in byte) {
	var ve *valueError
	var ce *cryptoError
	switch {
	case errors.As(err, &ve):
		s.refuse(ve.code, ve.msg, "", nil, in, metrics.RefusalInvalidValue)
	case errors.As(err, &ce):
		s.log.Error().Err(ce.cause).Msg(ce.msg)
		reason := metrics.RefusalEncryptFailed
		if ce.code == "58000" {
			reason = metrics.RefusalKeyUnavailable
		}
		s.refuse(ce.code, ce.msg, ce.hint, nil, in, reason)
	default:
		s.log.Error().Err(err).Msg("cannot encrypt")
		s.refuse("XX000", "pgcrypt-proxy could not encrypt a value", "", nil, in, metrics.RefusalInternal)
	}
}

// auditEvent is an audit event about this session.
func (s *session) auditEvent(kind audit.Kind) audit.Event {
	return audit.Event{ConnID: s.id, User: s.user, Database: s.database, Client: s.client.RemoteAddr().String(), Kind: kind}
}

// auditWrite records values encrypted into columns.
func (s *session) auditWrite(kind string, cols []*policy.Column, rows int64) {
	a := s.srv.cfg.Audit
	if !a.Enabled() {
		return
	}
	e := s.auditEvent(audit.KindWrite)
	e.Statement, e.Rows, e.KeyIDs = kind, rows, s.takeKeyIDs()
	for _, c := range cols {
		if !slices.Contains(e.Columns, c.Identity()) {
			e.Columns = append(e.Columns, c.Identity())
		}
	}
	a.Record(e)
}

// noteKeyID remembers a data key used for the next audit event.
func (s *session) noteKeyID(id uint32) {
	if s.srv.cfg.Audit.Enabled() && !slices.Contains(s.auditKeys, id) {
		s.auditKeys = append(s.auditKeys, id)
	}
}

func (s *session) takeKeyIDs() []uint32 {
	ids := s.auditKeys
	s.auditKeys = nil
	return ids
}

// raiseSQL is a statement that makes the server raise an error with this
// SQLSTATE, message and hint.
func raiseSQL(code, msg, hint string) string {
	lit := func(s string) string {
		s = strings.ReplaceAll(s, `\`, `\\`)
		s = strings.ReplaceAll(s, `'`, `''`)
		return `E'` + s + `'`
	}
	var b strings.Builder
	b.WriteString("DO $pgcrypt_refusal$BEGIN RAISE EXCEPTION USING ERRCODE = ")
	b.WriteString(lit(code))
	b.WriteString(", MESSAGE = ")
	b.WriteString(lit(strings.ReplaceAll(msg, "$pgcrypt_refusal$", "")))
	if hint != "" {
		b.WriteString(", HINT = ")
		b.WriteString(lit(strings.ReplaceAll(hint, "$pgcrypt_refusal$", "")))
	}
	b.WriteString("; END$pgcrypt_refusal$")
	return b.String()
}

// startEncryption prepares a freshly authenticated session for the policy
// in force: when it has tables, the catalog is loaded on the session's own
// connection before the client sees ReadyForQuery.
func (s *session) startEncryption() error {
	st := s.srv.policyState()
	if st == nil || len(st.pol.TableNames()) == 0 && s.srv.cfg.Keys == nil {
		return nil
	}
	s.encrypting = true
	s.pol = st
	s.es = encState{stmts: map[string]*stmtInfo{}, portals: map[string]*portalInfo{}, enc: newCodec()}
	s.dec = newCodec()
	s.cat.Store(&catalog{pol: st.pol})
	if len(st.pol.TableNames()) == 0 {
		return nil
	}
	q, _ := (&pgproto3.Query{String: catalogQuery(st.pol)}).Encode(nil)
	if _, err := s.server.Write(q); err != nil {
		return &clientError{code: "08006", message: "pgcrypt-proxy lost the connection to the database server", cause: err}
	}
	l := newCatalogLoader(st.pol)
	for {
		typ, msg, err := s.sr.next()
		if err != nil {
			return &clientError{code: "08006", message: "pgcrypt-proxy lost the connection to the database server", cause: err}
		}
		if typ == 'N' || typ == 'S' {
			s.toClient = append(s.toClient, msg...)
			continue
		}
		if l.handle(typ, msg) {
			break
		}
	}
	if l.failed != nil {
		return &clientError{code: "58000", message: "pgcrypt-proxy could not read the catalog of policy tables", cause: l.failed}
	}
	s.finishCatalog(l)
	return nil
}
