package e2e

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// wireSession is a raw protocol session through an encrypting proxy, for
// message sequences client libraries do not produce.
type wireSession struct {
	t  *testing.T
	fe *pgproto3.Frontend
}

func (e *encSetup) wire(t *testing.T) *wireSession {
	tc, _ := startTLSSession(t, e.p)
	t.Cleanup(func() { tc.Close() })
	_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
	return &wireSession{t: t, fe: pgproto3.NewFrontend(tc, tc)}
}

// send queues messages, flushes them and returns every reply up to and
// including the n-th ReadyForQuery, one line per message.
func (w *wireSession) send(n int, msgs ...pgproto3.FrontendMessage) []string {
	w.t.Helper()
	for _, m := range msgs {
		w.fe.Send(m)
	}
	if err := w.fe.Flush(); err != nil {
		w.t.Fatal(err)
	}
	var out []string
	for n > 0 {
		msg, err := w.fe.Receive()
		if err != nil {
			w.t.Fatalf("receive after %q: %v", out, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			n--
			out = append(out, "Z "+string(m.TxStatus))
		case *pgproto3.DataRow:
			vals := make([]string, len(m.Values))
			for i, v := range m.Values {
				if v == nil {
					vals[i] = "NULL"
				} else {
					vals[i] = fmt.Sprintf("%q", v)
				}
			}
			out = append(out, "D "+strings.Join(vals, ","))
		case *pgproto3.RowDescription:
			var f []string
			for _, fd := range m.Fields {
				f = append(f, fmt.Sprintf("%s:%d/%d", fd.Name, fd.DataTypeOID, fd.Format))
			}
			out = append(out, "T "+strings.Join(f, ","))
		case *pgproto3.ParameterDescription:
			out = append(out, fmt.Sprintf("t %v", m.ParameterOIDs))
		case *pgproto3.ErrorResponse:
			out = append(out, "E "+m.Code)
		case *pgproto3.CommandComplete:
			out = append(out, "C "+string(m.CommandTag))
		case *pgproto3.ParseComplete:
			out = append(out, "1")
		case *pgproto3.BindComplete:
			out = append(out, "2")
		case *pgproto3.CloseComplete:
			out = append(out, "3")
		case *pgproto3.NoData:
			out = append(out, "n")
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			out = append(out, fmt.Sprintf("%T", m))
		}
	}
	return out
}

func expectSeq(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, " | ") != strings.Join(want, " | ") {
		t.Fatalf("%s:\n got %s\nwant %s", what, strings.Join(got, " | "), strings.Join(want, " | "))
	}
}

func int4bin(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }

func TestEncryptWireSequences(t *testing.T) {
	e := startEncrypting(t)
	w := e.wire(t)
	ins := `INSERT INTO ` + e.users + ` (id, ssn, email, age) VALUES ($1, $2, $3, $4)`
	sel := `SELECT id, ssn, email, age FROM ` + e.users + ` WHERE email = $1`

	// A named statement, described, then executed twice with text and
	// binary parameters; no Describe of the portals.
	got := w.send(1,
		&pgproto3.Parse{Name: "ins", Query: ins},
		&pgproto3.Describe{ObjectType: 'S', Name: "ins"},
		&pgproto3.Bind{PreparedStatement: "ins", Parameters: [][]byte{[]byte("1"), []byte("ssn-1"), []byte("one@x"), []byte("41")}},
		&pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "ins", ParameterFormatCodes: []int16{1, 0, 0, 1},
			Parameters: [][]byte{int4bin(2), []byte("ssn-2"), []byte("two@x"), int4bin(42)}},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "named insert", got, "1", "t [23 25 25 23]", "n", "2", "C INSERT 0 1", "2", "C INSERT 0 1", "Z I")

	// The unnamed statement, never described by the client: the proxy
	// describes the portal itself and decrypts, in text and binary.
	got = w.send(1,
		&pgproto3.Parse{Query: sel},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("two@x")}},
		&pgproto3.Execute{},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("one@x")}, ResultFormatCodes: []int16{1, 0, 0, 1}},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "undescribed select", got, "1", "2", `D "2","ssn-2","two@x","42"`, "C SELECT 1", "2",
		`D "\x00\x00\x00\x01","ssn-1","one@x","\x00\x00\x00)"`, "C SELECT 1", "Z I")

	// An error in the middle of a pipeline: the server skips to Sync, and
	// the proxy's bookkeeping follows (the next batch decrypts again).
	got = w.send(2,
		&pgproto3.Parse{Name: "sel", Query: sel},
		&pgproto3.Bind{PreparedStatement: "sel", Parameters: [][]byte{[]byte("one@x")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 1/0"},
		&pgproto3.Bind{},
		&pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "sel", Parameters: [][]byte{[]byte("two@x")}},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "sel", Parameters: [][]byte{[]byte("two@x")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "error mid-pipeline", got, "1", "2", "T id:23/0,ssn:25/0,email:25/0,age:23/0", `D "1","ssn-1","one@x","41"`, "C SELECT 1",
		"1", "E 22012", "Z I",
		"2", "T id:23/0,ssn:25/0,email:25/0,age:23/0", `D "2","ssn-2","two@x","42"`, "C SELECT 1", "Z I")

	// Close, DEALLOCATE and DISCARD ALL forget statements; a name reused
	// for another statement is analysed afresh.
	got = w.send(1,
		&pgproto3.Close{ObjectType: 'S', Name: "sel"},
		&pgproto3.Parse{Name: "sel", Query: `SELECT ssn FROM ` + e.users + ` WHERE id = $1`},
		&pgproto3.Bind{PreparedStatement: "sel", Parameters: [][]byte{[]byte("2")}},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "reused name", got, "3", "1", "2", `D "ssn-2"`, "C SELECT 1", "Z I")
	got = w.send(1, &pgproto3.Query{String: "DEALLOCATE sel"})
	expectSeq(t, "deallocate", got, "C DEALLOCATE", "Z I")
	got = w.send(1,
		&pgproto3.Parse{Name: "sel", Query: `SELECT age FROM ` + e.users + ` WHERE id = $1`},
		&pgproto3.Bind{PreparedStatement: "sel", Parameters: [][]byte{[]byte("1")}},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "after deallocate", got, "1", "2", `D "41"`, "C SELECT 1", "Z I")
	got = w.send(1, &pgproto3.Query{String: "DISCARD ALL"})
	expectSeq(t, "discard", got, "C DISCARD ALL", "Z I")

	// Simple protocol: several statements, literals encrypted, results
	// decrypted, and a refusal in a multi-statement query fails all of it.
	got = w.send(1, &pgproto3.Query{String: `INSERT INTO ` + e.users + ` (id, ssn, email) VALUES (3, 'ssn-3', 'three@x'); SELECT ssn, email FROM ` + e.users + ` WHERE email = 'three@x'; SELECT 42`})
	expectSeq(t, "simple multi-statement", got, "C INSERT 0 1", "T ssn:25/0,email:25/0", `D "ssn-3","three@x"`, "C SELECT 1", "T ?column?:23/0", `D "42"`, "C SELECT 1", "Z I")
	got = w.send(1, &pgproto3.Query{String: `INSERT INTO ` + e.users + ` (id, ssn) VALUES (4, 'ssn-4'); SELECT * FROM ` + e.users + ` WHERE ssn = 'ssn-4'`})
	expectSeq(t, "refused multi-statement", got, "E 0A000", "Z I")
	got = w.send(1, &pgproto3.Query{String: `SELECT count(*) FROM ` + e.users + ` WHERE id = 4`})
	expectSeq(t, "nothing of the refused query", got, "T count:20/0", `D "0"`, "C SELECT 1", "Z I")
	e.assertNoPlaintext(t, 3, "ssn-3", "three@x")
}

// Binds the proxy rewrites are checked as the server would check them, and
// NULL and empty values keep their meaning.
func TestEncryptWireBindEdges(t *testing.T) {
	e := startEncrypting(t)
	w := e.wire(t)
	ins := `INSERT INTO ` + e.users + ` (id, ssn, email, age) VALUES ($1, $2, $3, $4)`
	got := w.send(1, &pgproto3.Parse{Name: "ins", Query: ins}, &pgproto3.Sync{})
	expectSeq(t, "parse", got, "1", "Z I")

	// Two format codes for four parameters: refused, nothing sent on.
	got = w.send(1,
		&pgproto3.Bind{PreparedStatement: "ins", ParameterFormatCodes: []int16{0, 0},
			Parameters: [][]byte{[]byte("7"), []byte("ssn-bad-formats"), []byte("bad@x"), []byte("1")}},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "format count", got, "E 08P01", "Z I")
	// Too few parameters: the server's own refusal.
	got = w.send(1,
		&pgproto3.Bind{PreparedStatement: "ins", Parameters: [][]byte{[]byte("7"), []byte("ssn-few")}},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "parameter count", got, "E 08P01", "Z I")

	// NULL and the empty string in policy columns, one format code for all,
	// then every policy value NULL (nothing to encrypt).
	got = w.send(1,
		&pgproto3.Bind{PreparedStatement: "ins", ParameterFormatCodes: []int16{0},
			Parameters: [][]byte{[]byte("8"), nil, {}, []byte("30")}},
		&pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "ins", Parameters: [][]byte{[]byte("9"), nil, nil, nil}},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "NULL and empty", got, "2", "C INSERT 0 1", "2", "C INSERT 0 1", "Z I")
	got = w.send(1,
		&pgproto3.Parse{Query: `SELECT id, ssn, email, age FROM ` + e.users + ` WHERE id IN (8, 9) ORDER BY id`},
		&pgproto3.Bind{},
		&pgproto3.Execute{},
		&pgproto3.Parse{Query: `SELECT id FROM ` + e.users + ` WHERE email = $1`},
		&pgproto3.Bind{Parameters: [][]byte{{}}},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	expectSeq(t, "read back", got, "1", "2", `D "8",NULL,"","30"`, `D "9",NULL,NULL,NULL`, "C SELECT 2",
		"1", "2", `D "8"`, "C SELECT 1", "Z I")
	// Stored: the empty string as an envelope, NULL as NULL; nothing of
	// the refused Binds.
	row := e.direct(t, 8)
	if _, ok := row["ssn"]; ok || len(row["email"]) == 0 || row["email"][0] != 0xC1 {
		t.Fatalf("row 8 stored as %q", row)
	}
	if row := e.direct(t, 7); len(row) != 0 {
		t.Fatalf("refused row 7 stored: %q", row)
	}
}
