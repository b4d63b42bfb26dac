//go:build unix

package pgtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"maps"
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
)

// Roles and database every cluster has. All passwords are Password.
const (
	SuperUser    = "postgres"       // pg_hba: scram-sha-256
	Password     = "pgtest-secret"  // password of every user below and of the superuser
	UserSCRAM    = "scram_user"     // pg_hba: scram-sha-256
	UserMD5      = "md5_user"       // pg_hba: md5; the password is stored as an MD5 hash
	UserPassword = "password_user"  // pg_hba: password (cleartext over the wire)
	UserTrust    = "trust_user"     // pg_hba: trust (any or no password)
	Database     = "app"            // owned by UserSCRAM; every role may connect and create in schema public
	ServerName   = "localhost"      // the server certificate is valid for this name and 127.0.0.1
	defaultHost  = "127.0.0.1"      // the only address the server listens on
	startTimeout = 60 * time.Second // Start's deadline when ctx has none
	stopTimeout  = 60 * time.Second // Stop's deadline (it takes no context)
	portAttempts = 5                // Start's tries when another process takes the chosen port
)

// Options configures Start. The zero value is the default cluster: TLS on
// (TLS 1.3 minimum), SCRAM, the users above.
type Options struct {
	// Logf, when set, receives progress lines (start, stop, timings), e.g.
	// t.Logf. New defaults it to t.Logf.
	Logf func(format string, args ...any)
	// ExtraConf lines are appended to postgresql.conf after the harness's
	// own settings, so they override them, e.g. "max_connections = 300".
	ExtraConf []string
}

// Cluster is a running throwaway PostgreSQL server and its files. Its
// methods are safe for concurrent use.
type Cluster struct {
	Host       string // "127.0.0.1"
	Port       int    // chosen free at Start, kept by StartServer
	DataDir    string // PGDATA, inside a private temp dir
	CAFile     string // PEM of the CA that signed the server certificate (sslrootcert)
	ServerName string // "localhost": the server certificate is valid for it and for Host

	root    string // private temp dir: DataDir, CAFile, log, unix socket
	binDir  string
	logFile string
	user    *osUser
	ca      *CA
	logf    func(format string, args ...any)

	mu      sync.Mutex
	proc    *serverProc // nil while the server is down
	removed bool        // Stop ran: files are gone, nothing can restart
}

// serverProc is one run of the postmaster, a direct child of this process.
type serverProc struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd.Wait returned
	waitErr error         // valid after exited is closed
	logFrom int64         // log size when this run started
}

// New starts a cluster for t and stops it in t.Cleanup. Failing to start is
// fatal, never a skip: in CI a missing PostgreSQL must fail the build.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	c, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// Start creates a cluster in a fresh temp dir (initdb), starts it on a free
// port of 127.0.0.1, waits until it accepts connections, and creates the
// roles and the database above. ctx bounds all of it (60s when it has no
// deadline). The caller must call Stop.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	began := time.Now()
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	binDir, err := serverBinDir()
	if err != nil {
		return nil, err
	}
	u, err := serverUser()
	if err != nil {
		return nil, err
	}
	base, err := tempBase(u)
	if err != nil {
		return nil, err
	}
	sweepOnce.Do(func() { sweepStale(base, logf) })
	root, err := os.MkdirTemp(base, "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &Cluster{
		Host:       defaultHost,
		DataDir:    filepath.Join(root, "data"),
		CAFile:     filepath.Join(root, "ca.pem"),
		ServerName: ServerName,
		root:       root,
		binDir:     binDir,
		logFile:    filepath.Join(root, "postgres.log"),
		user:       u,
		logf:       logf,
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Stop())
		}
	}()
	if err := c.initdb(ctx, opts.ExtraConf); err != nil {
		return nil, err
	}
	initDone := time.Now()
	if err := c.startLocked(ctx, true); err != nil { // not yet shared: no lock needed
		return nil, err
	}
	started := time.Now()
	if err := c.bootstrap(ctx); err != nil {
		return nil, err
	}
	logf("pgtest: PostgreSQL at %s ready in %v (initdb %v, start %v, roles %v); data %s, log %s",
		c.Addr(), time.Since(began).Round(time.Millisecond), initDone.Sub(began).Round(time.Millisecond),
		started.Sub(initDone).Round(time.Millisecond), time.Since(started).Round(time.Millisecond),
		c.DataDir, c.logFile)
	return c, nil
}

// initdb fills root: owner marker, CA, data dir, server certificate,
// postgresql.conf and pg_hba.conf, all owned by the server account.
func (c *Cluster) initdb(ctx context.Context, extraConf []string) error {
	if err := os.Chmod(c.root, 0o700); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := writeOwner(c.root); err != nil {
		return err
	}
	ca, err := NewCA("pgtest CA")
	if err != nil {
		return err
	}
	c.ca = ca
	if _, err := ca.WriteCA(c.root); err != nil {
		return err
	}
	pwFile := filepath.Join(c.root, "pwfile")
	if err := writeFile(pwFile, []byte(Password+"\n"), 0o600); err != nil {
		return err
	}
	if err := c.user.chownTree(c.root); err != nil {
		return fmt.Errorf("pgtest: give %s to the server account: %w", c.root, err)
	}
	cmd := c.user.command(c.root, filepath.Join(c.binDir, "initdb"),
		"-D", c.DataDir, "-U", SuperUser, "--pwfile", pwFile, "--auth=scram-sha-256",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	if err := c.runTool(ctx, cmd); err != nil {
		return fmt.Errorf("pgtest: initdb: %w", err)
	}
	if err := os.Remove(pwFile); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if _, _, err := ca.WriteLeaf(c.DataDir, "server", ServerName, defaultHost); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(c.DataDir, "ca.pem")); err != nil { // WriteLeaf's copy; CAFile is the one
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := appendFile(filepath.Join(c.DataDir, "postgresql.conf"), c.conf(extraConf)); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(c.DataDir, "pg_hba.conf"), []byte(hbaConf), 0o600); err != nil {
		return err
	}
	if err := c.user.chownTree(c.root); err != nil {
		return fmt.Errorf("pgtest: give %s to the server account: %w", c.root, err)
	}
	return nil
}

// hbaConf: host (not hostssl) lines, so tests can connect with and without
// TLS; first match wins.
const hbaConf = `# pgtest: see internal/pgtest/doc.go
# TYPE  DATABASE     USER                 ADDRESS        METHOD
local   all          all                                 scram-sha-256
host    all          ` + UserTrust + `           127.0.0.1/32   trust
host    all          ` + UserPassword + `        127.0.0.1/32   password
host    all          ` + UserMD5 + `             127.0.0.1/32   md5
host    all          all                  127.0.0.1/32   scram-sha-256
host    replication  all                  127.0.0.1/32   scram-sha-256
`

// conf returns the lines appended to postgresql.conf. The port is not among
// them: it is passed with -p so a start can retry on another port.
func (c *Cluster) conf(extra []string) []byte {
	sockets := c.root
	// A unix socket path is limited to 107 bytes; without sockets the
	// cluster still works over TCP, which is all tests use.
	if len(sockets)+len("/.s.PGSQL.65535.lock") > 100 {
		sockets = ""
	}
	lines := []string{
		"",
		"# pgtest settings (internal/pgtest/doc.go); ExtraConf follows and overrides",
		"listen_addresses = '" + defaultHost + "'",
		"unix_socket_directories = " + quoteConf(sockets),
		"unix_socket_permissions = 0700",
		"max_connections = 200",
		"shared_buffers = 128MB",
		"huge_pages = off",
		"fsync = off",
		"synchronous_commit = off",
		"full_page_writes = off",
		"ssl = on",
		"ssl_cert_file = 'server.crt'",
		"ssl_key_file = 'server.key'",
		"ssl_min_protocol_version = 'TLSv1.3'",
		"password_encryption = 'scram-sha-256'",
		"logging_collector = off",
		"log_destination = 'stderr'",
		"timezone = 'UTC'",
		"log_timezone = 'UTC'",
	}
	if len(extra) > 0 {
		lines = append(lines, "# ExtraConf")
		lines = append(lines, extra...)
	}
	return []byte(strings.Join(lines, "\n") + "\n")
}

func quoteConf(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func appendFile(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// runTool runs a short-lived server tool (initdb, pg_ctl), killing its
// process group when ctx ends, and returns its output in the error.
func (c *Cluster) runTool(ctx context.Context, cmd *exec.Cmd) error {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := startCmd(cmd); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = killGroup(cmd.Process.Pid, syscall.SIGKILL) })
	err := cmd.Wait()
	stop()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return fmt.Errorf("%w\n%s", err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// startLocked starts the postmaster and waits until it serves connections.
// With newPort it picks a free port, and picks another when the server
// finds it taken (another process bound it between our probe and the
// server's bind); otherwise it reuses c.Port.
func (c *Cluster) startLocked(ctx context.Context, newPort bool) error {
	if c.removed {
		return errors.New("pgtest: cluster was stopped with Stop; its files are gone")
	}
	if c.proc != nil {
		return nil
	}
	for attempt := 1; ; attempt++ {
		if newPort {
			port, err := freePort()
			if err != nil {
				return err
			}
			c.Port = port
		}
		p, err := c.spawn()
		if err != nil {
			return err
		}
		err = c.waitReady(ctx, p)
		if err == nil {
			c.proc = p
			return nil
		}
		killErr := c.kill(p)
		tail := c.logTail(p.logFrom)
		if newPort && attempt < portAttempts && isBindError(tail) {
			c.logf("pgtest: port %d taken, retrying on another", c.Port)
			continue
		}
		return errors.Join(fmt.Errorf("pgtest: start postgres on %s: %w\n--- last lines of %s ---\n%s",
			c.Addr(), err, c.logFile, tail), killErr)
	}
}

// spawn starts the postmaster as a child of this process, its output
// appended to the log file.
func (c *Cluster) spawn() (*serverProc, error) {
	log, err := os.OpenFile(c.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	defer log.Close() // the child has its own descriptor
	fi, err := log.Stat()
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if c.user.cred != nil {
		if err := os.Chown(c.logFile, c.user.uid, c.user.gid); err != nil {
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	cmd := c.user.command(c.root, filepath.Join(c.binDir, "postgres"),
		"-D", c.DataDir, "-p", strconv.Itoa(c.Port))
	cmd.Stdout, cmd.Stderr = log, log
	if err := startCmd(cmd); err != nil {
		return nil, fmt.Errorf("pgtest: start postgres: %w", err)
	}
	p := &serverProc{cmd: cmd, exited: make(chan struct{}), logFrom: fi.Size()}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// waitReady returns once p serves connections as the superuser over TLS
// (verify-full, so a bad certificate fails here), or p exits, or ctx ends.
func (c *Cluster) waitReady(ctx context.Context, p *serverProc) error {
	want, err := os.Stat(c.DataDir)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	var lastErr error
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("postgres exited: %v", p.waitErr)
		default:
		}
		dir, err := c.probe(ctx, p)
		if err == nil {
			// Someone else's server may hold the port our postmaster failed to
			// bind (it is then about to exit): only our data dir counts.
			if got, err := os.Stat(dir); err == nil && os.SameFile(got, want) {
				return nil
			}
			err = fmt.Errorf("another server (data directory %s) answers on %s", dir, c.Addr())
		}
		lastErr = err
		select {
		case <-p.exited:
			return fmt.Errorf("postgres exited: %v", p.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last attempt: %v)", ctx.Err(), lastErr)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// probe connects as the superuser and returns the server's data directory.
// It gives up when p exits: whatever holds the port then (a listener that
// never answers, say) is not our server.
func (c *Cluster) probe(ctx context.Context, p *serverProc) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	go func() {
		select {
		case <-p.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	conn, err := pgx.Connect(ctx, c.DSN(SuperUser, "postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var dir string
	err = conn.QueryRow(ctx, "SHOW data_directory").Scan(&dir)
	return dir, err
}

func isBindError(log string) bool {
	return strings.Contains(log, "could not bind") || strings.Contains(log, "Address already in use") ||
		strings.Contains(log, "could not create any TCP/IP sockets")
}

// freePort returns a port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(defaultHost, "0"))
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// bootstrap creates the roles and the database.
func (c *Cluster) bootstrap(ctx context.Context) error {
	pw := quoteLiteral(Password)
	steps := []struct{ db, sql string }{
		{"postgres", "SET password_encryption = 'scram-sha-256';" +
			"CREATE ROLE " + UserSCRAM + " LOGIN PASSWORD " + pw + ";" +
			"CREATE ROLE " + UserPassword + " LOGIN PASSWORD " + pw + ";" +
			"CREATE ROLE " + UserTrust + " LOGIN PASSWORD " + pw + ";" +
			"SET password_encryption = 'md5';" +
			"CREATE ROLE " + UserMD5 + " LOGIN PASSWORD " + pw},
		// CREATE DATABASE cannot share a (multi-statement) query.
		{"postgres", "CREATE DATABASE " + Database + " OWNER " + UserSCRAM},
		// Since PostgreSQL 15 only the owner may create in public. Fixtures
		// made with Exec (as the superuser) are usable by every role.
		{Database, "GRANT CREATE, USAGE ON SCHEMA public TO PUBLIC;" +
			"ALTER DEFAULT PRIVILEGES FOR ROLE " + SuperUser + " GRANT ALL ON TABLES TO PUBLIC;" +
			"ALTER DEFAULT PRIVILEGES FOR ROLE " + SuperUser + " GRANT ALL ON SEQUENCES TO PUBLIC"},
	}
	for _, s := range steps {
		if err := c.exec(ctx, s.db, s.sql); err != nil {
			return fmt.Errorf("pgtest: create roles and database: %w", err)
		}
	}
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Addr returns "127.0.0.1:PORT".
func (c *Cluster) Addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// BinDir returns the directory of the server binaries (initdb, pg_ctl,
// postgres). Client tools may live elsewhere: use FindTool.
func (c *Cluster) BinDir() string { return c.binDir }

// LogFile returns the path of the server log.
func (c *Cluster) LogFile() string { return c.logFile }

// CA returns the CA that signed the server certificate; tests may issue
// more certificates from it (for the proxy, say) so one CAFile verifies both.
func (c *Cluster) CA() *CA { return c.ca }

// TLSConfig returns a client TLS config that verifies the server as
// verify-full does (root CAFile, name ServerName).
func (c *Cluster) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: c.ca.CertPool(), ServerName: c.ServerName, MinVersion: tls.VersionTLS13}
}

// DSN returns a postgres:// URL for user on db with password Password,
// sslmode=verify-full and sslrootcert=CAFile. user defaults to SuperUser and
// db to Database when empty. params ("key=value") add to or override the
// query, e.g. "sslmode=disable" (which also drops the default sslrootcert:
// pgx would still read it) or "application_name=x". The URL suits libpq and
// pgx alike: spaces are %20, never "+", which libpq does not decode.
func (c *Cluster) DSN(user, db string, params ...string) string {
	if user == "" {
		user = SuperUser
	}
	if db == "" {
		db = Database
	}
	q := map[string]string{"sslmode": "verify-full", "sslrootcert": c.CAFile}
	explicitRoot := false
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		q[k] = v
		explicitRoot = explicitRoot || k == "sslrootcert"
	}
	if q["sslmode"] == "disable" && !explicitRoot {
		delete(q, "sslrootcert")
	}
	var query []string
	for _, k := range slices.Sorted(maps.Keys(q)) {
		query = append(query, uriEscape(k)+"="+uriEscape(q[k]))
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, Password),
		Host:     c.Addr(),
		Path:     "/" + db,
		RawQuery: strings.Join(query, "&"),
	}
	return u.String()
}

func uriEscape(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }

// Connect opens a pgx connection to DSN(user, db, params...).
func (c *Cluster) Connect(ctx context.Context, user, db string, params ...string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, c.DSN(user, db, params...))
}

// Exec runs sql (one or more statements, simple protocol) as the superuser
// on Database.
func (c *Cluster) Exec(ctx context.Context, sql string) error {
	return c.exec(ctx, Database, sql)
}

func (c *Cluster) exec(ctx context.Context, db, sql string) error {
	conn, err := pgx.Connect(ctx, c.DSN(SuperUser, db))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	return err
}

// StopServer stops the server (pg_ctl stop -m fast) and keeps its files,
// for StartServer. It kills the server when pg_ctl fails or ctx ends first.
// Stopping a stopped server is a no-op.
func (c *Cluster) StopServer(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked(ctx)
}

// StartServer starts the server again on the same port and waits until it
// serves connections (60s when ctx has no deadline). Starting a running
// server is a no-op.
func (c *Cluster) StartServer(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.startLocked(ctx, false)
}

// Stop stops the server and removes every file of the cluster. It is
// idempotent, and safe to call on a cluster that failed half-way through
// Start. After Stop, StartServer fails.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	c.removed = true
	// Stop has no context parameter (it runs from t.Cleanup); bound it here.
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	began := time.Now()
	err := c.stopLocked(ctx)
	if rmErr := os.RemoveAll(c.root); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("pgtest: remove %s: %w", c.root, rmErr))
	}
	c.logf("pgtest: PostgreSQL at %s stopped and removed in %v", c.Addr(), time.Since(began).Round(time.Millisecond))
	return err
}

func (c *Cluster) stopLocked(ctx context.Context) error {
	p := c.proc
	if p == nil {
		return nil
	}
	c.proc = nil
	cmd := c.user.command(c.root, filepath.Join(c.binDir, "pg_ctl"),
		"stop", "-D", c.DataDir, "-m", "fast", "-w", "-t", "30")
	stopErr := c.runTool(ctx, cmd)
	if stopErr == nil {
		// pg_ctl returns once postmaster.pid is gone; the process follows.
		select {
		case <-p.exited:
			return nil
		case <-time.After(10 * time.Second):
			stopErr = errors.New("postmaster still running after pg_ctl stop")
		}
	}
	if killErr := c.kill(p); killErr != nil {
		return fmt.Errorf("pgtest: stop postgres: %w; then: %w", stopErr, killErr)
	}
	c.logf("pgtest: pg_ctl stop failed (%v); killed the server", stopErr)
	return nil
}

// kill ends p's process group: SIGQUIT (immediate shutdown: the postmaster
// takes its backends with it; they live in process groups of their own),
// then SIGKILL if it lingers. It returns once p has exited.
func (c *Cluster) kill(p *serverProc) error {
	pid := p.cmd.Process.Pid
	for _, step := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGQUIT, 5 * time.Second}, {syscall.SIGKILL, 30 * time.Second}} {
		select {
		case <-p.exited:
			return nil
		default:
		}
		if err := killGroup(pid, step.sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("pgtest: kill postgres (pid %d): %w", pid, err)
		}
		select {
		case <-p.exited:
			return nil
		case <-time.After(step.wait):
		}
	}
	return fmt.Errorf("pgtest: postgres (pid %d) survived SIGKILL", pid)
}

// logTail returns the last lines written to the log since offset from.
func (c *Cluster) logTail(from int64) string {
	const maxTail = 4 << 10
	f, err := os.Open(c.logFile)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size()-from > maxTail {
		from = fi.Size() - maxTail
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	b, _ := io.ReadAll(f)
	return strings.TrimSpace(string(b))
}

// Main is a TestMain body for a package whose tests share one cluster: it
// starts the cluster (into *c), runs the tests, stops the cluster and
// returns the exit code for os.Exit.
func Main(m *testing.M, opts Options, c **Cluster) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cl, err := Start(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*c = cl
	code := m.Run()
	if err := cl.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return code
}
