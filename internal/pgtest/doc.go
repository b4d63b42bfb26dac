// Package pgtest starts throwaway PostgreSQL clusters for tests, for
// `make demo` and for `make bench`: a real server (initdb in a temp dir,
// TLS, SCRAM), never a fake.
//
//	c := pgtest.New(t, pgtest.Options{})            // Start + t.Cleanup(c.Stop)
//	conn, err := pgx.Connect(ctx, c.DSN(pgtest.UserSCRAM, pgtest.Database))
//
// Outside a test, Start(ctx, opts) returns the cluster and the caller owns
// c.Stop. New fails the test when PostgreSQL is missing, it never skips: in
// CI a missing server is a broken build, not a reason to pass.
//
// # Binaries
//
// The server binaries (initdb, pg_ctl, postgres) are looked for, once per
// process: in $PGTEST_BINDIR when set (and only there); next to initdb on
// PATH (symlinks resolved, so Debian's /usr/local/bin/initdb ->
// /usr/lib/postgresql/15/bin works); in `pg_config --bindir`; under
// /usr/lib/postgresql/<version>/bin, highest version first. The error when
// none is found says how to install them (`apt-get install postgresql`).
// FindTool finds client programs (psql, pgbench) on PATH first, then in the
// server's directory.
//
// # What a cluster is
//
// Each cluster lives in its own directory os.TempDir()/pgtest-NNN (mode
// 0700): data/ (PGDATA, holding server.crt and server.key), ca.pem
// (CAFile), postgres.log (the server's stderr; the last lines are part of
// every start error) and the unix socket. Stop removes all of it.
//
// The server listens on 127.0.0.1 only, on a port picked free by binding
// 127.0.0.1:0 and closing it. Another process may take that port before the
// server binds it; Start then sees the bind error in the log and retries on
// a new port (five times). StartServer after StopServer reuses the port, so
// DSNs stay valid; if the port was taken meanwhile it fails and says so.
// Several clusters run at once without sharing anything, in one test binary
// or in the parallel binaries of `go test ./...`.
//
// Settings (postgresql.conf, then Options.ExtraConf, which wins): ssl=on,
// ssl_min_protocol_version=TLSv1.3, max_connections=200,
// shared_buffers=128MB, fsync, synchronous_commit and full_page_writes off
// (a crash loses the cluster, which nobody keeps), timezone UTC, encoding
// UTF8, locale C.
//
// # TLS
//
// Every cluster has its own in-memory CA (NewCA, ECDSA P-256) whose
// certificate is CAFile; the server certificate it signs is valid for
// "localhost" (ServerName) and 127.0.0.1 (Host). DSN defaults to
// sslmode=verify-full with sslrootcert=CAFile against host 127.0.0.1, which
// both pgx and libpq (14+) verify through the IP SAN. TLS 1.2 clients are
// refused by the server. c.CA() issues more certificates (for the proxy, say)
// from the same CA, so one CAFile verifies both hops. TLSConfig returns the
// matching client *tls.Config.
//
// # Users
//
// Every role's password is Password. pg_hba.conf has host lines (not
// hostssl: sslmode=disable works too) for 127.0.0.1/32, first match wins:
//
//	trust_user     trust
//	password_user  password      (cleartext on the wire)
//	md5_user       md5           (password stored as an MD5 hash, so it is real MD5)
//	all others     scram-sha-256 (postgres, scram_user)
//
// The database "app" is owned by scram_user; every role may connect and
// create in its schema public, and tables and sequences the superuser creates
// there (Exec) are granted to every role by default privileges, so fixtures
// made with Exec are usable by the user under test.
//
// # Running as root
//
// PostgreSQL refuses to run as root, and CI containers run tests as root.
// Under root, initdb, pg_ctl and postgres run as the "postgres" account when
// it exists, else as a system account "pgtest" created with useradd on first
// use (races between test binaries are tolerated). The cluster directory is
// chowned to that account; its parent must be traversable by it (os.TempDir
// is used when it is, else /tmp). The test process, still root, reads
// CAFile and the log directly. Not root: everything runs as the current user.
//
// # Never a server left behind
//
// The postmaster is a direct child of the test process (not daemonized by
// pg_ctl), in its own process group. Stop, from t.Cleanup, runs
// `pg_ctl stop -m fast`; if that fails it sends SIGQUIT to the process group,
// then SIGKILL, and waits for the exit. Backends leave with the postmaster.
//
// A test binary that dies without running its cleanups (panic in another
// goroutine, `go test -timeout`, SIGKILL) cannot stop anything itself. On
// Linux every child is started with a parent-death signal (SIGQUIT, an
// immediate shutdown) from a dedicated OS thread that lives as long as the
// process, so the kernel stops the server when the test binary exits,
// however it exits. Other platforms have no such signal: there, a killed
// test binary leaves its server running until stopped by hand
// (pg_ctl stop -D <dir>/data). The directories of dead test binaries are
// removed by the next Start on the same host (each holds its creator's pid in
// pgtest.owner); directories with a live creator or a running server are
// left alone.
package pgtest
