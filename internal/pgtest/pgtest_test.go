package pgtest

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

var allUsers = []string{SuperUser, UserSCRAM, UserMD5, UserPassword, UserTrust}

func TestCluster(t *testing.T) {
	t.Parallel()
	c := New(t, Options{ExtraConf: []string{"max_connections = 150", "application_name = 'from_extra_conf'"}})
	ctx := t.Context()

	t.Run("Settings", func(t *testing.T) {
		conn := connect(t, c, SuperUser, "")
		for _, tc := range []struct{ name, want string }{
			{"listen_addresses", "127.0.0.1"},
			{"port", strconv.Itoa(c.Port)},
			{"ssl", "on"},
			{"ssl_min_protocol_version", "TLSv1.3"},
			{"fsync", "off"},
			{"synchronous_commit", "off"},
			{"full_page_writes", "off"},
			{"shared_buffers", "128MB"},
			{"password_encryption", "scram-sha-256"},
			{"server_encoding", "UTF8"},
			{"lc_collate", "C"},
			{"TimeZone", "UTC"},
			{"max_connections", "150"}, // ExtraConf overrides the default 200
			{"application_name", "from_extra_conf"},
		} {
			var got string
			if err := conn.QueryRow(ctx, "SELECT current_setting($1)", tc.name).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("%s = %q, want %q", tc.name, got, tc.want)
			}
		}
	})

	t.Run("HBA", func(t *testing.T) {
		// The first message after StartupMessage shows which method pg_hba
		// picked for the user: the spec, checked on the wire.
		for _, tc := range []struct {
			user string
			want pgproto3.BackendMessage
		}{
			{UserTrust, &pgproto3.AuthenticationOk{}},
			{UserPassword, &pgproto3.AuthenticationCleartextPassword{}},
			{UserMD5, &pgproto3.AuthenticationMD5Password{}},
			{UserSCRAM, &pgproto3.AuthenticationSASL{}},
			{SuperUser, &pgproto3.AuthenticationSASL{}},
		} {
			got := firstAuthMessage(t, c, tc.user)
			if fmt.Sprintf("%T", got) != fmt.Sprintf("%T", tc.want) {
				t.Errorf("user %s: server asked %T, want %T", tc.user, got, tc.want)
			}
			if sasl, ok := got.(*pgproto3.AuthenticationSASL); ok && !slices.Contains(sasl.AuthMechanisms, "SCRAM-SHA-256") {
				t.Errorf("user %s: SASL mechanisms %v lack SCRAM-SHA-256", tc.user, sasl.AuthMechanisms)
			}
		}
	})

	t.Run("StoredPasswords", func(t *testing.T) {
		conn := connect(t, c, SuperUser, "")
		for _, user := range allUsers {
			var hash string
			if err := conn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", user).Scan(&hash); err != nil {
				t.Fatalf("%s: %v", user, err)
			}
			want := "SCRAM-SHA-256$"
			if user == UserMD5 {
				want = "md5"
			}
			if !strings.HasPrefix(hash, want) {
				t.Errorf("%s: stored password %.14q…, want prefix %q", user, hash, want)
			}
		}
		var owner string
		if err := conn.QueryRow(ctx, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", Database).Scan(&owner); err != nil {
			t.Fatal(err)
		}
		if owner != UserSCRAM {
			t.Errorf("database %s owned by %s, want %s", Database, owner, UserSCRAM)
		}
	})

	for _, sslmode := range []string{"verify-full", "disable"} {
		t.Run("Users/"+sslmode, func(t *testing.T) {
			for _, user := range allUsers {
				conn := connect(t, c, user, "", "sslmode="+sslmode)
				var who, version string
				var ssl bool
				err := conn.QueryRow(ctx, `SELECT current_user, s.ssl, coalesce(s.version, '')
					FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()`).Scan(&who, &ssl, &version)
				if err != nil {
					t.Fatalf("%s: %v", user, err)
				}
				if who != user {
					t.Errorf("current_user = %s, want %s", who, user)
				}
				if wantSSL := sslmode != "disable"; ssl != wantSSL || (ssl && version != "TLSv1.3") {
					t.Errorf("%s: ssl=%v version=%q, want ssl=%v TLSv1.3", user, ssl, version, wantSSL)
				}
				table := fmt.Sprintf("public.t_%s_%s", user, strings.ReplaceAll(sslmode, "-", "_"))
				if _, err := conn.Exec(ctx, "CREATE TABLE "+table+" (id int); INSERT INTO "+table+" VALUES (1)"); err != nil {
					t.Errorf("%s cannot create in schema public: %v", user, err)
				}
			}
		})
	}

	t.Run("WrongPassword", func(t *testing.T) {
		for _, user := range allUsers {
			dsn := strings.Replace(c.DSN(user, ""), ":"+Password+"@", ":wrong@", 1)
			conn, err := pgx.Connect(ctx, dsn)
			if user == UserTrust {
				if err != nil {
					t.Errorf("trust user refused with a wrong password: %v", err)
				} else {
					conn.Close(ctx)
				}
				continue
			}
			if err == nil {
				conn.Close(ctx)
				t.Errorf("%s connected with a wrong password", user)
			} else if !strings.Contains(err.Error(), "28P01") {
				t.Errorf("%s: want SQLSTATE 28P01 (invalid_password), got %v", user, err)
			}
		}
	})

	t.Run("TLS12Refused", func(t *testing.T) {
		cfg, err := pgx.ParseConfig(c.DSN(UserSCRAM, ""))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.TLSConfig == nil || len(cfg.Fallbacks) != 0 {
			t.Fatalf("verify-full config: TLS %v, %d fallbacks; want TLS and no plaintext fallback", cfg.TLSConfig != nil, len(cfg.Fallbacks))
		}
		cfg.TLSConfig.MinVersion = tls.VersionTLS12
		cfg.TLSConfig.MaxVersion = tls.VersionTLS12
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			conn.Close(ctx)
			t.Fatal("a TLS 1.2-only client connected; want the server to refuse it")
		}
		if !strings.Contains(err.Error(), "protocol version") {
			t.Errorf("want a TLS protocol version alert, got %v", err)
		}
		// Control: the same config with TLS 1.3 allowed connects.
		cfg.TLSConfig.MaxVersion = tls.VersionTLS13
		conn, err = pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("TLS 1.3: %v", err)
		}
		conn.Close(ctx)
	})

	t.Run("WrongCA", func(t *testing.T) {
		other, err := NewCA("other")
		if err != nil {
			t.Fatal(err)
		}
		caFile, err := other.WriteCA(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, c.DSN(UserSCRAM, "", "sslrootcert="+caFile))
		if err == nil {
			conn.Close(ctx)
			t.Fatal("verify-full accepted a server certificate from an unknown CA")
		}
	})

	t.Run("TLSConfig", func(t *testing.T) {
		cfg, err := pgx.ParseConfig(c.DSN(UserSCRAM, "", "sslmode=disable"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLSConfig = c.TLSConfig()
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
	})

	t.Run("Exec", func(t *testing.T) {
		if err := c.Exec(ctx, "CREATE TABLE exec_a (id int); CREATE TABLE exec_b (id int)"); err != nil {
			t.Fatal(err)
		}
		err := c.Exec(ctx, "SELECT * FROM no_such_table")
		if err == nil || !strings.Contains(err.Error(), "42P01") {
			t.Errorf("want undefined_table error, got %v", err)
		}
	})

	t.Run("Tools", func(t *testing.T) {
		for _, tool := range []string{"psql", "pgbench", "pg_ctl"} {
			p, err := FindTool(tool)
			if err != nil {
				t.Fatal(err)
			}
			if err := isExecutable(p); err != nil {
				t.Error(err)
			}
		}
		if _, err := FindTool("no-such-pg-tool"); err == nil || !strings.Contains(err.Error(), "apt-get install postgresql") {
			t.Errorf("missing tool: want an install hint, got %v", err)
		}
		if err := isServerBinDir(c.BinDir()); err != nil {
			t.Error(err)
		}
	})

	t.Run("LibpqDSN", func(t *testing.T) {
		// DSN is for libpq clients too: verify-full against 127.0.0.1, spaces.
		psql, err := FindTool("psql")
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct{ user, param string }{
			{UserSCRAM, "application_name=a b+c"},
			{UserMD5, "sslmode=disable"},
			{UserPassword, "sslmode=require"},
		} {
			out, err := exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-d", c.DSN(tc.user, "", tc.param),
				"-c", "SELECT current_user || ' ' || current_setting('application_name') || ' ' || "+
					"(SELECT coalesce(version, 'plain') FROM pg_stat_ssl WHERE pid = pg_backend_pid())").CombinedOutput()
			if err != nil {
				t.Fatalf("psql as %s: %v\n%s", tc.user, err, out)
			}
			want := tc.user + " psql TLSv1.3"
			switch tc.param {
			case "application_name=a b+c":
				want = tc.user + " a b+c TLSv1.3"
			case "sslmode=disable":
				want = tc.user + " psql plain"
			}
			if got := strings.TrimSpace(string(out)); got != want {
				t.Errorf("psql: got %q, want %q", got, want)
			}
		}
	})
}

func TestRestartKeepsData(t *testing.T) {
	t.Parallel()
	c := New(t, Options{})
	ctx := t.Context()
	if err := c.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before restart')"); err != nil {
		t.Fatal(err)
	}
	port := c.Port
	if err := c.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StopServer(ctx); err != nil {
		t.Fatalf("second StopServer: %v", err)
	}
	if conn, err := pgx.Connect(ctx, c.DSN(UserSCRAM, "")); err == nil {
		conn.Close(ctx)
		t.Fatal("connected to a stopped server")
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "PG_VERSION")); err != nil {
		t.Fatalf("data dir gone after StopServer: %v", err)
	}

	// Someone takes the port meanwhile: StartServer fails and says why.
	l, err := net.Listen("tcp", c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	err = c.StartServer(ctx)
	l.Close()
	if err == nil {
		t.Fatal("StartServer succeeded on a taken port")
	}
	if !isBindError(err.Error()) || !strings.Contains(err.Error(), "last lines of") {
		t.Errorf("want the server log's bind error in the error, got %v", err)
	}

	if err := c.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StartServer(ctx); err != nil {
		t.Fatalf("second StartServer: %v", err)
	}
	if c.Port != port {
		t.Errorf("port changed from %d to %d", port, c.Port)
	}
	conn := connect(t, c, UserSCRAM, "")
	var v string
	if err := conn.QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != "before restart" {
		t.Errorf("got %q", v)
	}
}

func TestStopRemovesEverything(t *testing.T) {
	t.Parallel()
	c, err := Start(t.Context(), Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	pid := c.proc.cmd.Process.Pid
	if !postmasterAlive(c.DataDir) {
		t.Fatal("postmaster.pid does not name a live process")
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if processAlive(pid) {
		t.Errorf("postmaster %d still running after Stop", pid)
	}
	for _, p := range []string{c.DataDir, c.CAFile, c.root} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Stop (%v)", p, err)
		}
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := c.StartServer(t.Context()); err == nil {
		t.Error("StartServer after Stop succeeded")
	}
}

// TestParallelClusters starts clusters at the same moment from goroutines
// (not parallel subtests: -parallel may be lower than n) and runs them side
// by side.
func TestParallelClusters(t *testing.T) {
	t.Parallel()
	const n = 3
	ctx := t.Context()
	clusters := make([]*Cluster, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			clusters[i], errs[i] = Start(ctx, Options{Logf: t.Logf})
			if errs[i] == nil {
				errs[i] = clusters[i].Exec(ctx, fmt.Sprintf("CREATE TABLE who (i int); INSERT INTO who VALUES (%d)", i))
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range clusters {
			if c != nil {
				wg.Go(func() {
					if err := c.Stop(); err != nil {
						t.Error(err)
					}
				})
			}
		}
		wg.Wait()
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	ports, dirs := map[int]bool{}, map[string]bool{}
	for i, c := range clusters {
		ports[c.Port], dirs[c.DataDir] = true, true
		conn := connect(t, c, UserSCRAM, "")
		var got int
		if err := conn.QueryRow(ctx, "SELECT i FROM who").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != i {
			t.Errorf("cluster %d sees row %d", i, got)
		}
	}
	if len(ports) != n || len(dirs) != n {
		t.Errorf("%d clusters used %d ports and %d data dirs", n, len(ports), len(dirs))
	}
}

func TestStartFailureShowsLog(t *testing.T) {
	t.Parallel()
	_, err := Start(t.Context(), Options{ExtraConf: []string{"shared_buffers = 'lots'"}})
	if err == nil {
		t.Fatal("Start succeeded with an invalid setting")
	}
	if !strings.Contains(err.Error(), `"shared_buffers"`) || !strings.Contains(err.Error(), "last lines of") {
		t.Errorf("want the server log naming shared_buffers in the error, got %v", err)
	}
	m := regexpLogFile.FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error does not name the log file: %v", err)
	}
	if _, statErr := os.Stat(filepath.Dir(m[1])); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("failed Start left %s behind (%v)", filepath.Dir(m[1]), statErr)
	}
}

// TestParentDeathStopsServer kills a test binary that holds a running
// cluster, as a crash or a `go test -timeout` would, and expects the
// postmaster to go with it.
func TestParentDeathStopsServer(t *testing.T) {
	if os.Getenv("PGTEST_ORPHAN_CHILD") == "1" {
		c, err := Start(context.Background(), Options{})
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Printf("READY %d %s\n", c.proc.cmd.Process.Pid, c.root)
		select {} // until killed
	}
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal exists only on Linux")
	}
	t.Parallel()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestParentDeathStopsServer$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PGTEST_ORPHAN_CHILD=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var line string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if line = sc.Text(); strings.HasPrefix(line, "READY ") || strings.HasPrefix(line, "ERROR ") {
			break
		}
	}
	var pid int
	var root string
	if _, err := fmt.Sscanf(line, "READY %d %s", &pid, &root); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child: %q", line)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if !processAlive(pid) {
		t.Fatal("child's postmaster is not running")
	}
	cmd.Process.Kill() // SIGKILL: no cleanup runs in the child
	cmd.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			syscallKill(pid)
			t.Fatalf("postmaster %d survived its parent", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if postmasterAlive(filepath.Join(root, "data")) {
		t.Error("a server still runs in the orphaned data dir")
	}
}

func TestFindBinDir(t *testing.T) {
	real, err := serverBinDir()
	if err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	if got, err := findBinDir(real, "/nonexistent"); err != nil || got != real {
		t.Errorf("override %s: got %q, %v", real, got, err)
	}
	if _, err := findBinDir(empty, "/usr/lib/postgresql"); err == nil || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Errorf("bad override: want an error with the install hint, got %v", err)
	}
	t.Setenv("PATH", empty)
	if _, err := findBinDir("", empty); err == nil || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Errorf("nothing installed: want an error with the install hint, got %v", err)
	}

	// Highest version under the Debian-style root wins; incomplete dirs are skipped.
	root := t.TempDir()
	for _, v := range []string{"9.6", "13", "15", "16"} {
		dir := filepath.Join(root, v, "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		tools := serverTools
		if v == "16" {
			tools = tools[:2] // no postgres: a client-only install
		}
		for _, tool := range tools {
			if err := os.WriteFile(filepath.Join(dir, tool), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, err := findBinDir("", root); err != nil || got != filepath.Join(root, "15", "bin") {
		t.Errorf("got %q, %v; want %s/15/bin", got, err, root)
	}

	for _, tc := range []struct {
		a, b string
		want int
	}{{"9.6", "15", -1}, {"15", "9.6", 1}, {"15", "15", 0}, {"15", "16", -1}, {"x", "9", -1}} {
		if got := compareVersions(tc.a, tc.b); sign(got) != tc.want {
			t.Errorf("compareVersions(%q, %q) = %d, want sign %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestDSN(t *testing.T) {
	c := &Cluster{Host: "127.0.0.1", Port: 5433, CAFile: "/tmp/x y/ca.pem"}
	for _, tc := range []struct {
		user, db string
		params   []string
		want     string
	}{
		{UserSCRAM, "", nil,
			"postgres://scram_user:pgtest-secret@127.0.0.1:5433/app?sslmode=verify-full&sslrootcert=%2Ftmp%2Fx%20y%2Fca.pem"},
		{"", "postgres", []string{"sslmode=disable", "application_name=a b+c"},
			"postgres://postgres:pgtest-secret@127.0.0.1:5433/postgres?application_name=a%20b%2Bc&sslmode=disable"},
		{UserTrust, "", []string{"sslmode=require", "sslrootcert=/r.pem"},
			"postgres://trust_user:pgtest-secret@127.0.0.1:5433/app?sslmode=require&sslrootcert=%2Fr.pem"},
	} {
		if got := c.DSN(tc.user, tc.db, tc.params...); got != tc.want {
			t.Errorf("DSN(%q, %q, %q)\n got %s\nwant %s", tc.user, tc.db, tc.params, got, tc.want)
		}
	}
	cfg, err := pgx.ParseConfig(c.DSN(UserMD5, "", "sslmode=disable", "application_name=a b+c"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.User != UserMD5 || cfg.Password != Password || cfg.Database != Database || cfg.Port != 5433 ||
		cfg.TLSConfig != nil || cfg.RuntimeParams["application_name"] != "a b+c" {
		t.Errorf("pgx parsed %+v", cfg.Config)
	}
}

// connect opens a connection closed at the end of the test.
func connect(t *testing.T, c *Cluster, user, db string, params ...string) *pgx.Conn {
	t.Helper()
	conn, err := c.Connect(t.Context(), user, db, params...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// firstAuthMessage sends a StartupMessage for user without TLS and returns
// the server's first reply.
func firstAuthMessage(t *testing.T, c *Cluster, user string) pgproto3.BackendMessage {
	t.Helper()
	nc, err := net.DialTimeout("tcp", c.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters:      map[string]string{"user": user, "database": Database},
	})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := fe.Receive()
	if err != nil {
		t.Fatalf("%s: %v", user, err)
	}
	if e, ok := msg.(*pgproto3.ErrorResponse); ok {
		t.Fatalf("%s: %s %s", user, e.Code, e.Message)
	}
	return msg
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}

var regexpLogFile = regexp.MustCompile(`--- last lines of (\S+) ---`)

// syscallKill ends a postmaster a failed test left behind.
func syscallKill(pid int) { _ = syscall.Kill(pid, syscall.SIGKILL) }
