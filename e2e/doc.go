// Package e2e holds the end-to-end tests of pgcrypt-proxy: the real binary,
// built once by TestMain, in front of a real PostgreSQL cluster started with
// internal/pgtest, driven by real clients (pgx, database/sql over pgx's
// stdlib driver, and libpq through the psql and pgbench executables).
//
// How the tests are arranged:
//
//  1. TestMain builds cmd/pgcrypt-proxy into a temp dir, issues the proxy's
//     certificate from a CA of its own (so a client that trusts the proxy
//     does not trust the database server, and the other way round), and
//     starts one PostgreSQL cluster shared by the package. Tests that must
//     break a server start their own.
//  2. startProxy writes a config file (TLS on both legs by default: client
//     TLS required, upstream verify-full), runs the binary on a free port
//     of 127.0.0.1 and waits for "pgcrypt-proxy serving". Its stderr (JSON
//     log lines) is kept in memory, searched by tests, and printed when a
//     test fails. On cleanup the process gets SIGTERM and must exit 0.
//  3. Where the proxy claims to be transparent, a test runs the same thing
//     directly against PostgreSQL and through the proxy and compares: result
//     values, SQLSTATEs and messages, NOTICEs, and for TestWireTranscript the
//     whole sequence of backend messages.
//
// Nothing here skips when PostgreSQL is missing: pgtest fails with the
// install instructions, so CI fails instead of passing vacuously.
package e2e
