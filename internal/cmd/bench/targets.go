package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Target names, in the order each workload runs them.
const (
	targetDirect    = "direct"
	targetPgBouncer = "pgbouncer"
	targetProxy     = "proxy"
	// targetProxyNoPolicy is a second proxy without a policy, with
	// -nopolicy-proxy only: the baseline of the policy's cost on
	// pass-through statements (issue-2 workloads).
	targetProxyNoPolicy = "proxy-nopolicy"
)

var targetOrder = []string{targetDirect, targetPgBouncer, targetProxy, targetProxyNoPolicy}

// target is somewhere pgbench connects: PostgreSQL itself, or a pooler or
// proxy in front of it whose CPU time is measured.
type target struct {
	name string
	ep   endpoint
	d    *daemon // nil for direct
}

// freePort returns a port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitServing returns once a PostgreSQL session through ep runs SELECT 1,
// or fails when d exits or timeout passes.
func waitServing(ctx context.Context, ep endpoint, d *daemon, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=%s connect_timeout=2", ep.host, ep.port, ep.user, ep.db, ep.sslmode())
	var last error
	for {
		if d != nil && !d.alive() {
			return d.exitError()
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, dsn)
		if err == nil {
			var one int
			err = conn.QueryRow(cctx, "SELECT 1").Scan(&one)
			conn.Close(cctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not serving on %s:%d after %v: %w", ep.host, ep.port, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tlsFiles are what a pooler or proxy needs to speak TLS on both legs:
// its own certificate for clients, and the CA of PostgreSQL's certificate
// (valid for serverName) to verify the upstream. nil means TLS off.
type tlsFiles struct {
	caPEM      []byte // CA that signed PostgreSQL's and our certificates
	certPEM    []byte // our certificate (for 127.0.0.1 and localhost)
	keyPEM     []byte
	serverName string // name in PostgreSQL's certificate
}

// write puts ca.pem, server.crt and server.key into dir (the key 0600) and
// returns their paths.
func (t *tlsFiles) write(dir string, uid, gid int, chown bool) (ca, cert, key string, err error) {
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{{ca, t.caPEM, 0o644}, {cert, t.certPEM, 0o644}, {key, t.keyPEM, 0o600}} {
		if err := os.WriteFile(f.path, f.data, f.perm); err != nil {
			return "", "", "", err
		}
		if chown {
			if err := os.Chown(f.path, uid, gid); err != nil {
				return "", "", "", err
			}
		}
	}
	return ca, cert, key, nil
}

// ---- PgBouncer ----

// findPgBouncer returns the pgbouncer binary, installing the Debian
// package when it is missing and we are root. log receives progress.
func findPgBouncer(ctx context.Context, logf func(string, ...any)) (string, error) {
	look := func() string {
		if p, err := exec.LookPath("pgbouncer"); err == nil {
			return p
		}
		for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer"} {
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
				return p
			}
		}
		return ""
	}
	if p := look(); p != "" {
		return p, nil
	}
	if os.Geteuid() != 0 {
		return "", errors.New("pgbouncer is not installed and we are not root to install it; run `sudo apt-get install -y pgbouncer`")
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", errors.New("pgbouncer is not installed and there is no apt-get to install it; install PgBouncer and put it on PATH")
	}
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	for _, args := range [][]string{
		{"update"},
		{"install", "-y", "--no-install-recommends", "pgbouncer"},
	} {
		logf("bench: apt-get %s", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, lastLines(string(out), 10))
		}
	}
	if p := look(); p != "" {
		return p, nil
	}
	return "", errors.New("apt-get installed pgbouncer but no pgbouncer binary was found")
}

// unprivileged returns the credential to run pgbouncer with (it refuses to
// run as root) and the account's name; nil when we are not root.
func unprivileged() (*syscall.Credential, int, int, string, error) {
	if os.Geteuid() != 0 {
		return nil, os.Geteuid(), os.Getegid(), "", nil
	}
	for _, name := range []string{"postgres", "pgtest", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 != nil || err2 != nil {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, uid, gid, name, nil
	}
	return nil, 0, 0, "", errors.New("running as root and no postgres, pgtest or nobody account to run pgbouncer as")
}

// pgbouncerINI is PgBouncer's configuration for the bench: session pooling,
// trust on both legs, TLS off on both legs unless tlsConf says otherwise,
// minimal logging, on loopback, no unix socket, no pid file.
func pgbouncerINI(port int, upstream endpoint, authFile string, poolSize int, tlsConf string) string {
	if tlsConf == "" {
		tlsConf = "server_tls_sslmode = disable\nclient_tls_sslmode = disable\n"
	}
	return fmt.Sprintf(`;; written by internal/cmd/bench; removed when the bench ends
[databases]
%s = host=%s port=%d dbname=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
pidfile =
logfile =
auth_type = trust
auth_file = %s
pool_mode = session
default_pool_size = %d
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
max_db_connections = 0
server_reset_query = DISCARD ALL
%signore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
log_stats = 0
stats_period = 3600
verbose = 0
`, upstream.db, upstream.host, upstream.port, upstream.db, port, authFile, poolSize, tlsConf)
}

// startPgBouncer starts PgBouncer in front of upstream in a fresh temp dir
// and waits until it serves.
func startPgBouncer(ctx context.Context, bin string, upstream endpoint, poolSize int, tf *tlsFiles, logDir string) (*target, func() error, error) {
	cred, uid, gid, account, err := unprivileged()
	if err != nil {
		return nil, nil, err
	}
	base := "" // os.TempDir()
	if cred != nil {
		base = "/tmp" // TMPDIR may not be reachable by the unprivileged account
	}
	dir, err := makeTempDir(base, "pgbouncer")
	if err != nil {
		return nil, nil, err
	}
	cleanupDir := func() error { return os.RemoveAll(dir) }
	port, err := freePort()
	if err != nil {
		return nil, nil, errors.Join(err, cleanupDir())
	}
	var tlsConf string
	if tf != nil {
		ca, cert, key, err := tf.write(dir, uid, gid, cred != nil)
		if err != nil {
			return nil, nil, errors.Join(err, cleanupDir())
		}
		tlsConf = fmt.Sprintf("client_tls_sslmode = require\nclient_tls_cert_file = %s\nclient_tls_key_file = %s\n"+
			"client_tls_protocols = tlsv1.3\nserver_tls_sslmode = verify-full\nserver_tls_ca_file = %s\nserver_tls_protocols = tlsv1.3\n",
			cert, key, ca)
		// PgBouncer verifies the upstream against the host it dials.
		upstream.host = tf.serverName
	}
	authFile := filepath.Join(dir, "userlist.txt")
	ini := filepath.Join(dir, "pgbouncer.ini")
	files := map[string]string{
		// trust: no password is checked, but the user must be listed.
		authFile: fmt.Sprintf("%q \"\"\n", upstream.user),
		ini:      pgbouncerINI(port, upstream, authFile, poolSize, tlsConf),
	}
	for name, body := range files {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			return nil, nil, errors.Join(err, cleanupDir())
		}
	}
	if cred != nil {
		for _, p := range []string{dir, authFile, ini} {
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, nil, errors.Join(err, cleanupDir())
			}
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, nil, errors.Join(err, cleanupDir())
		}
	}
	cmd := exec.Command(bin, ini)
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	// SIGTERM: immediate shutdown (SIGINT would wait for clients).
	d, err := startDaemon("pgbouncer", cmd, filepath.Join(logDir, "pgbouncer.log"), syscall.SIGTERM)
	if err != nil {
		return nil, nil, errors.Join(err, cleanupDir())
	}
	stop := func() error { return errors.Join(d.stop(10*time.Second), cleanupDir()) }
	ep := endpoint{host: "127.0.0.1", port: port, user: upstream.user, db: upstream.db, tls: tf != nil}
	if err := waitServing(ctx, ep, d, 20*time.Second); err != nil {
		if account != "" {
			err = fmt.Errorf("%w (pgbouncer runs as %s)", err, account)
		}
		return nil, nil, errors.Join(fmt.Errorf("pgbouncer: %w", err), stop())
	}
	return &target{name: targetPgBouncer, ep: ep, d: d}, stop, nil
}

// ---- the proxy ----

// proxyYAML is the proxy's configuration for the bench: the given TLS
// settings (flow-style YAML maps), log level warn, admin listener on a free
// port (so two benches, or a bench and a demo, never collide), and the
// encryption settings (YAML lines, may be empty). -proxy-args flags
// override it.
func proxyYAML(listen, upstream, upstreamTLS, clientTLS, admin, encryption string) string {
	return fmt.Sprintf(`# written by internal/cmd/bench; removed when the bench ends
listen: %s
upstream:
  address: %s
  tls: %s
client_tls: %s
admin: {listen: %s}
log: {level: warn, format: json}
shutdown_grace: 5s
%s`, listen, upstream, upstreamTLS, clientTLS, admin, encryption)
}

// startProxy starts the proxy binary in front of upstream and waits until
// it serves, as the target name (its log is logDir/name.log). enc
// configures encryption (keystore, KMS, policy); nil: none.
func startProxy(ctx context.Context, name, bin string, upstream endpoint, extraArgs []string, tf *tlsFiles, enc *encConfig, logDir string) (*target, func() error, error) {
	dir, err := makeTempDir("", "proxy")
	if err != nil {
		return nil, nil, err
	}
	cleanupDir := func() error { return os.RemoveAll(dir) }
	port, err1 := freePort()
	adminPort, err2 := freePort()
	if err := errors.Join(err1, err2); err != nil {
		return nil, nil, errors.Join(err, cleanupDir())
	}
	cfg := filepath.Join(dir, "pgcrypt-proxy.yaml")
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	up := net.JoinHostPort(upstream.host, strconv.Itoa(upstream.port))
	admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(adminPort))
	upTLS, clientTLS := "{mode: disable}", "{mode: disable}"
	if tf != nil {
		ca, cert, key, err := tf.write(dir, 0, 0, false)
		if err != nil {
			return nil, nil, errors.Join(err, cleanupDir())
		}
		upTLS = fmt.Sprintf("{mode: verify-full, ca_file: %q, server_name: %q}", ca, tf.serverName)
		clientTLS = fmt.Sprintf("{mode: require, cert_file: %q, key_file: %q}", cert, key)
	}
	if err := os.WriteFile(cfg, []byte(proxyYAML(listen, up, upTLS, clientTLS, admin, enc.yaml())), 0o600); err != nil {
		return nil, nil, errors.Join(err, cleanupDir())
	}
	args := append([]string{"serve", "--config", cfg}, extraArgs...)
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	// PGCRYPT_* settings in the caller's environment would override the
	// file: the bench passes settings with -proxy-args only.
	var env []string
	for _, kv := range cleanEnv() {
		if !strings.HasPrefix(kv, "PGCRYPT_") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	// SIGTERM: graceful shutdown (shutdown_grace 5s above).
	d, err := startDaemon(name, cmd, filepath.Join(logDir, name+".log"), syscall.SIGTERM)
	if err != nil {
		return nil, nil, errors.Join(err, cleanupDir())
	}
	stop := func() error { return errors.Join(d.stop(15*time.Second), cleanupDir()) }
	ep := endpoint{host: "127.0.0.1", port: port, user: upstream.user, db: upstream.db, tls: tf != nil}
	if err := waitServing(ctx, ep, d, 20*time.Second); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("%s: %w", name, err), stop())
	}
	return &target{name: name, ep: ep, d: d}, stop, nil
}

// cleanEnv is our environment without libpq variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") && !strings.HasPrefix(kv, "PGCRYPT_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}
