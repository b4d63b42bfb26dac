// Package proxy is the network half of pgcrypt-proxy: the listener, one
// session per client connection, TLS on both legs, the startup and
// authentication relay, the two message pumps, cancel forwarding and
// graceful shutdown.
//
// # A connection's life
//
//  1. Accept. Server.Serve accepts a TCP connection and starts a session in
//     its own goroutine, with a context derived from the server's. Past
//     Config.MaxConnections the client gets PostgreSQL's own "too many
//     clients" error (53300) instead. A session recovers its own panics: a
//     bug closes one connection, never the process.
//
//  2. Startup (state startup). Under Config.StartupTimeout, the session
//     reads length-prefixed startup packets, at most 10,000 bytes each (as
//     PostgreSQL does), and exactly one at a time, so nothing a client sends
//     after an SSLRequest is ever read in plaintext:
//     SSLRequest is answered 'S' and followed by a TLS handshake with TLS 1.3
//     as the minimum (a TLS 1.2 client fails here), or 'N' when client TLS
//     is disabled; a TLS ClientHello as the very first byte is PostgreSQL 17's
//     direct TLS, accepted with ALPN "postgresql"; GSSENCRequest is declined
//     with 'N'; a CancelRequest is forwarded upstream and the connection
//     closed; a StartupMessage ends the phase. A client without TLS is then
//     refused with SQLSTATE 28000 when client TLS is required.
//
//  3. Upstream dial (state auth). The session dials PostgreSQL, sends an
//     SSLRequest and completes a TLS 1.3 handshake verified per the upstream
//     mode (disable, require, verify-ca, verify-full). A server that declines
//     TLS is an error, never a fallback to plaintext. The client's
//     StartupMessage is forwarded byte for byte.
//
//  4. Authentication. Trust, cleartext and MD5 exchanges are relayed message
//     for message, bounded at PostgreSQL's 65,535-byte auth token limit.
//     SCRAM is relayed with SCRAM-SHA-256-PLUS withheld from the client,
//     since the client's TLS channel ends at the proxy. When both legs are
//     TLS, relaying SCRAM cannot work for clients that support channel
//     binding (they announce it, and PostgreSQL rejects the exchange as a
//     downgrade), so the proxy asks the client for its password over TLS 1.3
//     and authenticates upstream itself with SCRAM-SHA-256-PLUS bound to the
//     upstream channel (auth.go). PostgreSQL's own errors (wrong password,
//     no pg_hba entry) reach the client untouched. BackendKeyData is
//     PostgreSQL's own, so a cancel reaching any proxy replica in front of
//     the same server can be forwarded. The phase ends at the first
//     ReadyForQuery.
//
//  5. Relay (states idle and busy). Two pumps run: the client pump (client
//     → server) in the session goroutine and the server pump (server →
//     client) in a second one. Each pump reads whatever its peer sent in one
//     read, handles every whole message in its buffer, and writes what it
//     produced in one write before blocking on the next read: a pipelined
//     batch costs one read and one write per direction, however many
//     messages it holds, and steady-state relaying allocates nothing per
//     message. Messages are framed by msgReader (type, length bounded at
//     1 GiB, body) and forwarded as the bytes that arrived; a message the
//     proxy needs to look into is decoded with pgproto3's types, and one it
//     builds is a pgproto3 struct encoded into the pump's buffer. Each
//     Query, Sync and FunctionCall the client pump forwards is owed one
//     ReadyForQuery; when the server pump has relayed the last one the
//     session is idle, and ReadyForQuery's status byte says whether it is
//     inside a transaction.
//
//  6. Encryption. When the server has a policy (Config.Policy) the pumps
//     understand the messages that carry SQL, values and results, and keep
//     an ordered queue of what each reply needs (extended.go, results.go):
//     right after authentication, the session loads the catalog of policy
//     tables (table OID and attribute number to policy column) on its own
//     connection, before the client sees ReadyForQuery. Parse and Query
//     text is analysed by package rewrite (cached by text; statements that
//     cannot name a policy table skip parsing). Parse goes on with
//     parameters bound for policy columns typed bytea (bytea[] for
//     deterministic comparisons, which try every live data-key version);
//     Bind encrypts those parameters (text or binary) and sends them binary;
//     a simple Query's policy literals are replaced by ciphertext literals.
//     The server's ParameterDescription and RowDescription are shown to the
//     client in the policy's declared types, and DataRow values of policy
//     columns are decrypted and re-encoded in the format the client asked
//     for. An Execute whose result columns the proxy does not know yet gets
//     a Describe the proxy injects and whose reply it swallows. COPY FROM
//     STDIN data is encrypted row by row and COPY TO STDOUT data decrypted
//     (copy.go). A statement the proxy refuses is replaced by one that makes
//     the server raise the proxy's error (SQLSTATE, message, hint), so the
//     session ends up exactly as after a server error: a transaction block
//     is aborted and an extended-protocol batch skips to Sync. A value that
//     does not decrypt fails its statement with XX001 for the client, and a
//     transaction block it happened in is aborted on the server before the
//     client's next statement. Without a policy none of this runs and
//     messages are relayed as the bytes that arrived.
//
//  7. Close. A client Terminate is forwarded and ends the session. A client
//     that vanishes while a query runs gets that query cancelled upstream,
//     so the server does not keep working for nobody. Either side closing
//     closes the other. One log line records why, how long the session
//     lasted and the bytes moved.
//
//  8. Shutdown. Server.Shutdown stops accepting, then closes each session as
//     soon as it is idle outside a transaction, with PostgreSQL's own
//     "terminating connection due to administrator command" (57P01) to the
//     client and a Terminate to the server; sessions still busy when the
//     grace period ends are closed the same way.
//
// Every log line of a session carries conn_id and peer; once known, user
// and backend_pid too. Logs never carry query text, parameters or
// passwords.
package proxy
