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
//  6. Close. A client Terminate is forwarded and ends the session. A client
//     that vanishes while a query runs gets that query cancelled upstream,
//     so the server does not keep working for nobody. Either side closing
//     closes the other. One log line records why, how long the session
//     lasted and the bytes moved.
//
//  7. Shutdown. Server.Shutdown stops accepting, then closes each session as
//     soon as it is idle outside a transaction, with PostgreSQL's own
//     "terminating connection due to administrator command" (57P01) to the
//     client and a Terminate to the server; sessions still busy when the
//     grace period ends are closed the same way.
//
// Every log line of a session carries conn_id and peer; once known, user
// and backend_pid too. Logs never carry query text, parameters or
// passwords.
package proxy
