package e2e

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// TestNoPlaintextAnywhere drives every path a value takes (extended and
// simple protocol, lookups, refusals, bad values, COPY, errors) with a
// marker value through a proxy logging at trace level, in front of a
// PostgreSQL that logs every statement, and then looks for the marker in
// everything either of them wrote: the proxy's log and the server's log
// and table files must not contain it.
func TestNoPlaintextAnywhere(t *testing.T) {
	c := pgtest.New(t, pgtest.Options{ExtraConf: []string{
		"log_statement = 'all'", "log_min_error_statement = 'debug5'", "log_parameter_max_length = -1",
		"log_parameter_max_length_on_error = -1",
	}})
	e := startEncryptingOn(t, c, func(pc *proxyConfig) { pc.Log.Level = "trace" })
	const marker = "MARKER-7f3a9c"
	ctx := ctxFor(t, 60*time.Second)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database), withExecMode(mode))
		id := int(mode) + 10
		if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn, email, prefs) VALUES ($1, $2, $3, $4)`,
			id, marker+"-ssn", marker+"-email", `{"k": "`+marker+`"}`); err != nil {
			t.Fatalf("insert (%v): %v", mode, err)
		}
		var s string
		if err := conn.QueryRow(ctx, `SELECT ssn FROM `+e.users+` WHERE email = $1`, marker+"-email").Scan(&s); err != nil || s != marker+"-ssn" {
			t.Fatalf("lookup (%v): %q %v", mode, s, err)
		}
		// Refused and failing statements carrying the marker.
		_, _ = conn.Exec(ctx, `SELECT id FROM `+e.users+` WHERE ssn = $1`, marker+"-refused")
		_, _ = conn.Exec(ctx, `INSERT INTO `+e.users+` (id, age) VALUES ($1, $2)`, id+100, marker+"-not-an-int")
		_, _ = conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn) VALUES ($1, $2)`, id, marker+"-duplicate-key")
		_, _ = conn.Exec(ctx, `UPDATE `+e.users+` SET ssn = upper($1) WHERE id = $2`, marker+"-expr", id)
		conn.Close(ctx)
	}
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	defer conn.Close(ctx)
	if _, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("90\t"+marker+"-copy\n91\t"+marker+"-copy\textra\n"), `COPY `+e.users+` (id, ssn) FROM STDIN`); err == nil {
		t.Fatal("malformed COPY accepted")
	}
	if _, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("92\t"+marker+"-copy\n"), `COPY `+e.users+` (id, ssn) FROM STDIN`); err != nil {
		t.Fatal(err)
	}
	// Force the server to write everything out.
	if err := c.Exec(ctx, `CHECKPOINT`); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(e.p.logs.String(), marker) {
		t.Errorf("the proxy's log contains the marker:\n%s", e.p.logs.String())
	}
	serverLog, err := os.ReadFile(c.LogFile())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(serverLog, []byte("statement:")) {
		t.Fatal("the server log does not log statements; the check below would prove nothing")
	}
	if i := bytes.Index(serverLog, []byte(marker)); i >= 0 {
		t.Errorf("the server log contains the marker: …%s…", serverLog[max(0, i-300):min(len(serverLog), i+100)])
	}
	if found := grepDir(t, c.DataDir, []byte(marker)); found != "" {
		t.Errorf("the marker is in the server's data files: %s", found)
	}
}

// grepDir returns the first file under dir containing needle.
func grepDir(t *testing.T, dir string, needle []byte) string {
	t.Helper()
	var found string
	_ = filepathWalk(dir, func(path string, data []byte) {
		if found == "" && bytes.Contains(data, needle) {
			found = path
		}
	})
	return found
}
