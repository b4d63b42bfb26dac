package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"gopkg.in/yaml.v3"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// Package state set up once by TestMain.
var (
	proxyBin     string           // the built binary
	shared       *pgtest.Cluster  // the cluster most tests use
	proxyCAFile  string           // CA that signed the proxy's certificate (clients' sslrootcert)
	proxyCrtFile string           // the proxy's certificate, valid for localhost and 127.0.0.1
	proxyKeyFile string           // its key
	tmpRoot      string           // temp dir of the package, removed at the end
	uniqueSeq    = newSequence(0) // for unique object names across parallel tests
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse() // for testing.Verbose
	var err error
	tmpRoot, err = os.MkdirTemp("", "pgcrypt-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmpRoot)

	began := time.Now()
	proxyBin = filepath.Join(tmpRoot, "pgcrypt-proxy")
	build := exec.Command("go", "build", "-o", proxyBin, "github.com/pgcrypt/pgcrypt-proxy/cmd/pgcrypt-proxy")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build: %v\n%s", err, out)
		return 1
	}

	ca, err := pgtest.NewCA("pgcrypt-proxy e2e CA")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	certDir := filepath.Join(tmpRoot, "proxy-certs")
	if err := os.Mkdir(certDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	proxyCrtFile, proxyKeyFile, err = ca.WriteLeaf(certDir, "proxy", "localhost", "127.0.0.1")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	proxyCAFile = filepath.Join(certDir, "ca.pem")
	built := time.Now()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	shared, err = pgtest.Start(ctx, pgtest.Options{ExtraConf: []string{"max_connections = 300"}})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: start PostgreSQL:", err)
		return 1
	}
	defer func() {
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: stop PostgreSQL:", err)
		}
	}()
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "e2e: binary built in %v, PostgreSQL %s ready in %v\n",
			built.Sub(began).Round(time.Millisecond), shared.Addr(), time.Since(built).Round(time.Millisecond))
	}
	return m.Run()
}

// sequence hands out increasing numbers, for unique names.
type sequence struct {
	mu sync.Mutex
	n  int
}

func newSequence(start int) *sequence { return &sequence{n: start} }

func (s *sequence) next() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return s.n
}

// uniqueName returns prefix plus a number unique in this test binary, a
// valid unquoted SQL identifier.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s_%d", prefix, uniqueSeq.next())
}

// proxyConfig mirrors the config file fields the tests set.
type proxyConfig struct {
	Listen   string `yaml:"listen"`
	Upstream struct {
		Address string `yaml:"address"`
		TLS     struct {
			Mode       string `yaml:"mode"`
			CAFile     string `yaml:"ca_file,omitempty"`
			ServerName string `yaml:"server_name,omitempty"`
		} `yaml:"tls"`
	} `yaml:"upstream"`
	ClientTLS struct {
		Mode     string `yaml:"mode"`
		CertFile string `yaml:"cert_file,omitempty"`
		KeyFile  string `yaml:"key_file,omitempty"`
	} `yaml:"client_tls"`
	Log struct {
		Level  string `yaml:"level"`
		Format string `yaml:"format"`
	} `yaml:"log"`
	Limits struct {
		MaxConnections int    `yaml:"max_connections"`
		StartupTimeout string `yaml:"startup_timeout"`
		IdleTimeout    string `yaml:"idle_timeout,omitempty"`
	} `yaml:"limits"`
	ShutdownGrace string `yaml:"shutdown_grace"`

	Keystore struct {
		DSN    string `yaml:"dsn,omitempty"`
		Schema string `yaml:"schema,omitempty"`
	} `yaml:"keystore"`
	Admin struct {
		Listen string `yaml:"listen"`
	} `yaml:"admin"`
	Audit struct {
		File string `yaml:"file,omitempty"`
	} `yaml:"audit"`
	KMS            map[string]map[string]any `yaml:"kms,omitempty"`
	PolicyFile     string                    `yaml:"policy_file,omitempty"`
	CatalogRefresh string                    `yaml:"catalog_refresh,omitempty"`

	// cluster is the upstream; not part of the file.
	cluster *pgtest.Cluster
	// env is added to the proxy's environment (PGCRYPT_MASTER_KEY).
	env []string
}

type cfgMutator func(*proxyConfig)

// withCluster points the proxy at c instead of the shared cluster.
func withCluster(c *pgtest.Cluster) cfgMutator {
	return func(pc *proxyConfig) {
		pc.cluster = c
		pc.Upstream.Address = c.Addr()
		pc.Upstream.TLS.CAFile = c.CAFile
	}
}

// withUpstreamTLS sets upstream.tls.mode.
func withUpstreamTLS(mode string) cfgMutator {
	return func(pc *proxyConfig) { pc.Upstream.TLS.Mode = mode }
}

// withClientTLS sets client_tls.mode.
func withClientTLS(mode string) cfgMutator {
	return func(pc *proxyConfig) { pc.ClientTLS.Mode = mode }
}

// proxyProc is a running pgcrypt-proxy process.
type proxyProc struct {
	Addr    string
	Port    int
	cfg     proxyConfig
	cmd     *exec.Cmd
	logs    *logBuffer
	exited  chan struct{}
	waitErr error // valid once exited is closed

	stopOnce sync.Once
	stopErr  error
}

// startProxy writes a config file, starts the binary on a free port of
// 127.0.0.1 and waits until it accepts connections. On cleanup it sends
// SIGTERM and fails the test unless the process exits 0 in time; when the
// test failed, the proxy's log is printed.
func startProxy(t testing.TB, muts ...cfgMutator) *proxyProc {
	t.Helper()
	var cfg proxyConfig
	cfg.cluster = shared
	cfg.Upstream.Address = shared.Addr()
	cfg.Upstream.TLS.Mode = "verify-full"
	cfg.Upstream.TLS.CAFile = shared.CAFile
	cfg.Upstream.TLS.ServerName = pgtest.ServerName
	cfg.ClientTLS.Mode = "require"
	cfg.ClientTLS.CertFile = proxyCrtFile
	cfg.ClientTLS.KeyFile = proxyKeyFile
	cfg.Log.Level = "debug"
	cfg.Log.Format = "json"
	cfg.Limits.MaxConnections = 1000
	cfg.Limits.StartupTimeout = "30s"
	cfg.ShutdownGrace = "30s"
	for _, m := range muts {
		m(&cfg)
	}
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		p, err := launchProxy(t, dir, cfg)
		if err == nil {
			t.Cleanup(func() {
				if err := p.stop(); err != nil {
					t.Errorf("proxy did not shut down cleanly: %v", err)
				}
				if t.Failed() {
					t.Logf("proxy %s log:\n%s", p.Addr, p.logs.String())
				}
			})
			return p
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("start proxy: %v", lastErr)
	return nil
}

func launchProxy(t testing.TB, dir string, cfg proxyConfig) (*proxyProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if cfg.Listen == "" {
		cfg.Listen = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	if cfg.Admin.Listen == "" {
		aport, err := freePort()
		if err != nil {
			return nil, err
		}
		cfg.Admin.Listen = net.JoinHostPort("127.0.0.1", strconv.Itoa(aport))
	}
	data, err := yaml.Marshal(&cfg)
	if err != nil {
		return nil, err
	}
	cfgFile := filepath.Join(dir, "pgcrypt-proxy.yaml")
	if err := os.WriteFile(cfgFile, data, 0o600); err != nil {
		return nil, err
	}
	p := &proxyProc{Addr: cfg.Listen, Port: port, cfg: cfg, logs: &logBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(proxyBin, "serve", "--config", cfgFile)
	p.cmd.Stdout = p.logs
	p.cmd.Stderr = p.logs
	p.cmd.Env = append(cleanEnv(), cfg.env...)
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	deadline := time.After(20 * time.Second)
	for {
		if p.logs.contains("pgcrypt-proxy serving") {
			c, err := net.DialTimeout("tcp", p.Addr, time.Second)
			if err == nil {
				c.Close()
				return p, nil
			}
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("proxy exited before serving (%v):\n%s", p.waitErr, p.logs.String())
		case <-deadline:
			_ = p.cmd.Process.Kill()
			<-p.exited
			return nil, fmt.Errorf("proxy not serving after 20s:\n%s", p.logs.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// cleanEnv is the environment without PGCRYPT_* variables, so a developer's
// shell cannot change what the tests configure.
func cleanEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "PGCRYPT_") })
}

// signal sends sig to the proxy.
func (p *proxyProc) signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// wait waits up to d for the process to exit and returns its exit code.
func (p *proxyProc) wait(d time.Duration) (int, error) {
	select {
	case <-p.exited:
	case <-time.After(d):
		return -1, fmt.Errorf("proxy still running %v after it was asked to stop", d)
	}
	if p.waitErr == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(p.waitErr, &ee) {
		return ee.ExitCode(), nil
	}
	return -1, p.waitErr
}

// stop sends SIGTERM (unless the process already exited) and requires exit
// status 0 within 35s (shutdown_grace is 30s); a process that does not exit
// is killed. Calling it again returns the first result.
func (p *proxyProc) stop() error {
	p.stopOnce.Do(func() {
		select {
		case <-p.exited:
		default:
			if err := p.signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
				p.stopErr = err
				return
			}
		}
		code, err := p.wait(35 * time.Second)
		if err != nil {
			_ = p.cmd.Process.Kill()
			<-p.exited
			p.stopErr = err
			return
		}
		if code != 0 {
			p.stopErr = fmt.Errorf("exit status %d", code)
		}
	})
	return p.stopErr
}

// DSN returns a URL for pgx and libpq that connects to the proxy as user on
// db (pgtest.Database when empty) with pgtest.Password, verifying the
// proxy's certificate (sslmode=verify-full). params override, as for
// pgtest.Cluster.DSN; sslmode=disable drops sslrootcert.
func (p *proxyProc) DSN(user, db string, params ...string) string {
	return dsnFor(p.Addr, proxyCAFile, user, db, params...)
}

// directDSN is DSN for the shared cluster, bypassing the proxy.
func directDSN(user string, params ...string) string {
	return shared.DSN(user, pgtest.Database, params...)
}

func dsnFor(addr, caFile, user, db string, params ...string) string {
	if db == "" {
		db = pgtest.Database
	}
	q := url.Values{}
	q.Set("sslmode", "verify-full")
	q.Set("sslrootcert", caFile)
	explicitRoot := false
	for _, kv := range params {
		k, v, _ := strings.Cut(kv, "=")
		q.Set(k, v)
		explicitRoot = explicitRoot || k == "sslrootcert"
	}
	if q.Get("sslmode") == "disable" && !explicitRoot {
		q.Del("sslrootcert")
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, pgtest.Password), Host: addr, Path: "/" + db,
		RawQuery: strings.ReplaceAll(q.Encode(), "+", "%20")}
	return u.String()
}

// connect opens a pgx connection to dsn, closed on cleanup. Each mutator
// may adjust the parsed config (exec mode, notice handler, dialer…).
func connect(t testing.TB, dsn string, muts ...func(*pgx.ConnConfig)) *pgx.Conn {
	t.Helper()
	conn, err := tryConnect(t, dsn, muts...)
	if err != nil {
		t.Fatalf("connect %s: %v", redact(dsn), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

func tryConnect(t testing.TB, dsn string, muts ...func(*pgx.ConnConfig)) (*pgx.Conn, error) {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parse %s: %v", redact(dsn), err)
	}
	for _, m := range muts {
		m(cfg)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// withExecMode sets the default query exec mode.
func withExecMode(mode pgx.QueryExecMode) func(*pgx.ConnConfig) {
	return func(c *pgx.ConnConfig) { c.DefaultQueryExecMode = mode }
}

// withCancelRequest makes a cancelled context send a CancelRequest (the
// default only sets a deadline on the socket, which kills the connection).
func withCancelRequest(c *pgx.ConnConfig) {
	c.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, CancelRequestDelay: 0, DeadlineDelay: 10 * time.Second}
	}
}

func redact(dsn string) string { return strings.ReplaceAll(dsn, pgtest.Password, "xxxxx") }

// ctxFor returns the test's context bounded by d.
func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// mustExec runs sql as the superuser directly on the shared cluster.
func mustExec(t testing.TB, sql string) {
	t.Helper()
	if err := shared.Exec(ctxFor(t, 30*time.Second), sql); err != nil {
		t.Fatalf("direct exec %q: %v", sql, err)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// pgCode returns the SQLSTATE of err, or "" when it is not a *PgError.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// logBuffer collects the proxy's stdout and stderr; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) contains(s string) bool { return strings.Contains(b.String(), s) }

// logEntry is one JSON log line of the proxy.
type logEntry map[string]any

func (e logEntry) str(key string) string {
	switch v := e[key].(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		return fmt.Sprint(v)
	}
}

// raw is the line as JSON, for substring checks over every field.
func (e logEntry) raw() string {
	b, _ := json.Marshal(map[string]any(e))
	return string(b)
}

// entries parses every complete line; lines that are not JSON (there should
// be none) are returned with only "message" set, so they are still seen.
func (b *logBuffer) entries() []logEntry {
	var out []logEntry
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var e logEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			e = logEntry{"message": line, "_not_json": true}
		}
		out = append(out, e)
	}
	return out
}

// waitLog waits up to d for a log line that satisfies match, and fails the
// test naming what when there is none.
func (p *proxyProc) waitLog(t testing.TB, d time.Duration, what string, match func(logEntry) bool) logEntry {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		for _, e := range p.logs.entries() {
			if match(e) {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no proxy log line %s within %v; log:\n%s", what, d, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// peerEntries returns the log lines about the client connection from peer.
func (p *proxyProc) peerEntries(peer string) []logEntry {
	return slices.DeleteFunc(p.logs.entries(), func(e logEntry) bool { return e.str("peer") != peer })
}

// recordingDialer returns a DialFunc that remembers every connection it
// made, so a test can learn its client address or kill it.
type recordingDialer struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (r *recordingDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err == nil {
		r.mu.Lock()
		r.conns = append(r.conns, c)
		r.mu.Unlock()
	}
	return c, err
}

func (r *recordingDialer) first() net.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.conns) == 0 {
		return nil
	}
	return r.conns[0]
}

func (r *recordingDialer) apply(c *pgx.ConnConfig) { c.DialFunc = r.dial }

// tool runs a PostgreSQL client program (psql, pgbench) with a clean libpq
// environment plus env, and returns its combined output.
func tool(t testing.TB, ctx context.Context, name string, env []string, args ...string) (string, error) {
	t.Helper()
	path, err := pgtest.FindTool(name)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PG")
	}), "PGCONNECT_TIMEOUT=20", "PSQLRC=/dev/null", "PGAPPNAME=e2e-"+name)
	cmd.Env = append(cmd.Env, env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// psql runs psql -X -A -t -v ON_ERROR_STOP=1 with dsn and args.
func psql(t testing.TB, ctx context.Context, dsn string, args ...string) (string, error) {
	t.Helper()
	return tool(t, ctx, "psql", nil, append([]string{"-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn}, args...)...)
}
