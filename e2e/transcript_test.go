package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// transcriptStep is frontend messages sent together, then backend messages
// read until until ReadyForQuery (or until the message type named).
type transcriptStep struct {
	name  string
	send  []pgproto3.FrontendMessage
	until string // backend message type to stop after; "" means ReadyForQuery
}

func transcriptScript(table string) []transcriptStep {
	i32 := func(n int32) []byte { return []byte(fmt.Sprint(n)) }
	return []transcriptStep{
		{name: "extended query", send: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s1", Query: "SELECT $1::int + g, 'x' || $2 FROM generate_series(1, 3) g", ParameterOIDs: []uint32{23, 25}},
			&pgproto3.Describe{ObjectType: 'S', Name: "s1"},
			&pgproto3.Bind{DestinationPortal: "p1", PreparedStatement: "s1", Parameters: [][]byte{i32(10), []byte("y")}},
			&pgproto3.Describe{ObjectType: 'P', Name: "p1"},
			&pgproto3.Execute{Portal: "p1"},
			&pgproto3.Sync{},
		}},
		{name: "portal suspended and resumed", send: []pgproto3.FrontendMessage{
			&pgproto3.Bind{DestinationPortal: "p2", PreparedStatement: "s1", Parameters: [][]byte{i32(0), []byte("z")},
				ResultFormatCodes: []int16{1, 0}},
			&pgproto3.Execute{Portal: "p2", MaxRows: 2},
			&pgproto3.Execute{Portal: "p2", MaxRows: 2},
			&pgproto3.Close{ObjectType: 'P', Name: "p2"},
			&pgproto3.Sync{},
		}},
		{name: "simple query with two statements", send: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "SELECT 1 AS one, 'a' AS a; SELECT now() IS NOT NULL, NULL::text"},
		}},
		{name: "empty query", send: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: ""},
		}},
		{name: "notice", send: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "DO $$BEGIN RAISE NOTICE 'hello %', 1; RAISE WARNING 'w' USING DETAIL = 'd'; END$$"},
		}},
		{name: "error mid-pipeline", send: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "INSERT INTO " + table + " VALUES ($1, $2)"},
			&pgproto3.Bind{Parameters: [][]byte{i32(1), []byte("one")}},
			&pgproto3.Execute{},
			&pgproto3.Parse{Query: "SELEC 1"},
			&pgproto3.Bind{},
			&pgproto3.Execute{},
			&pgproto3.Parse{Query: "SELECT 2"},
			&pgproto3.Bind{},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
			&pgproto3.Query{String: "SELECT count(*) FROM " + table},
		}},
		{name: "error in a simple query", send: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "SELECT 1; SELECT 1/0; SELECT 3"},
		}},
		{name: "transaction aborted then rolled back", send: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "BEGIN; INSERT INTO " + table + " VALUES (1, 'one')"},
			&pgproto3.Query{String: "INSERT INTO " + table + " VALUES (1, 'dup')"},
			&pgproto3.Query{String: "SELECT 1"},
			&pgproto3.Query{String: "ROLLBACK"},
		}},
		{name: "unique violation", send: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "INSERT INTO " + table + " VALUES (5, 'five'); INSERT INTO " + table + " VALUES (5, 'again')"},
		}},
		{name: "copy in starts", until: "CopyInResponse", send: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "COPY " + table + " FROM STDIN"},
		}},
		{name: "copy in data", send: []pgproto3.FrontendMessage{
			&pgproto3.CopyData{Data: []byte("10\tten\n11\televen\n")},
			&pgproto3.CopyData{Data: []byte("12\t\\N\n")},
			&pgproto3.CopyDone{},
		}},
		{name: "copy in fails", until: "CopyInResponse", send: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "COPY " + table + " FROM STDIN"},
		}},
		{name: "copy fail", send: []pgproto3.FrontendMessage{
			&pgproto3.CopyData{Data: []byte("20\ttwenty\n")},
			&pgproto3.CopyFail{Message: "client gave up"},
		}},
		{name: "copy out", send: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "COPY (SELECT * FROM " + table + " ORDER BY id) TO STDOUT"},
		}},
		{name: "extended copy out", send: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "COPY (SELECT id FROM " + table + " ORDER BY id) TO STDOUT WITH (FORMAT csv)"},
			&pgproto3.Bind{},
			&pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{},
			&pgproto3.Sync{},
		}},
		{name: "close statement", send: []pgproto3.FrontendMessage{
			&pgproto3.Close{ObjectType: 'S', Name: "s1"},
			&pgproto3.Parse{Name: "s1", Query: "SELECT 1"},
			&pgproto3.Sync{},
		}},
	}
}

// runTranscript connects to addr without TLS as the trust user, runs the
// script and renders every backend message as JSON, one per line, with
// ParameterStatus values and BackendKeyData zeroed.
func runTranscript(t *testing.T, addr, table string) []string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	var out []string
	record := func(msg pgproto3.BackendMessage) string {
		switch m := msg.(type) {
		case *pgproto3.ParameterStatus:
			msg = &pgproto3.ParameterStatus{Name: m.Name}
		case *pgproto3.BackendKeyData:
			msg = &pgproto3.BackendKeyData{}
		}
		b, err := json.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, "  "+string(b))
		return fmt.Sprintf("%T", msg)
	}
	readUntil := func(until string) {
		if until == "" {
			until = "ReadyForQuery"
		}
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("receive: %v (transcript so far:\n%s)", err, strings.Join(out, "\n"))
			}
			if record(msg) == "*pgproto3."+until {
				return
			}
		}
	}

	out = append(out, "startup")
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{
		"user": pgtest.UserTrust, "database": pgtest.Database, "application_name": "e2e-transcript"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	readUntil("")
	for _, step := range transcriptScript(table) {
		out = append(out, step.name)
		syncs := 0
		for _, m := range step.send {
			fe.Send(m)
			switch m.(type) {
			case *pgproto3.Sync, *pgproto3.Query:
				syncs++
			}
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		if step.until != "" {
			readUntil(step.until)
			continue
		}
		if syncs == 0 { // CopyDone/CopyFail: answered with one ReadyForQuery
			syncs = 1
		}
		for range syncs {
			readUntil("")
		}
	}
	fe.Send(&pgproto3.Terminate{})
	_ = fe.Flush()
	return out
}

// TestWireTranscript runs one scripted sequence of frontend messages against
// PostgreSQL directly and through the proxy (TLS off on both legs, so the
// raw protocol is visible) and requires identical backend messages.
func TestWireTranscript(t *testing.T) {
	t.Parallel()
	p := startProxy(t, withClientTLS("disable"), withUpstreamTLS("disable"))
	directTable := uniqueName("e2e_wire")
	proxyTable := uniqueName("e2e_wire")
	mustExec(t, "CREATE TABLE "+directTable+" (id int PRIMARY KEY, name text); CREATE TABLE "+proxyTable+" (id int PRIMARY KEY, name text)")

	direct := runTranscript(t, shared.Addr(), directTable)
	proxied := runTranscript(t, p.Addr, proxyTable)
	// The table names differ; everything else must not.
	norm := func(lines []string, table string) []string {
		out := make([]string, len(lines))
		for i, l := range lines {
			out[i] = strings.ReplaceAll(l, table, "TABLE")
		}
		return out
	}
	direct, proxied = norm(direct, directTable), norm(proxied, proxyTable)
	if len(direct) < 60 {
		t.Fatalf("direct transcript suspiciously short (%d lines):\n%s", len(direct), strings.Join(direct, "\n"))
	}
	for i := 0; i < max(len(direct), len(proxied)); i++ {
		var d, p string
		if i < len(direct) {
			d = direct[i]
		}
		if i < len(proxied) {
			p = proxied[i]
		}
		if d != p {
			t.Fatalf("transcripts differ at line %d:\ndirect: %s\nproxy:  %s\n\nfull direct transcript:\n%s\n\nfull proxy transcript:\n%s",
				i+1, d, p, strings.Join(direct, "\n"), strings.Join(proxied, "\n"))
		}
	}
	if testing.Verbose() {
		t.Logf("%d identical lines; direct transcript:\n%s", len(direct), strings.Join(direct, "\n"))
	}
}
