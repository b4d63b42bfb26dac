// Package audit writes pgcrypt-proxy's optional audit log: who (user,
// database, client address) read or wrote which policy columns, when, and
// with which data keys, plus every statement the proxy refused. It is a
// stream apart from the proxy's operational log, for security teams and
// their SIEM.
//
// # Format
//
// JSON lines, one event per line, appended:
//
//	{"log":"audit","time":"2026-01-02T03:04:05.123456789Z","conn_id":42,"user":"app","database":"shop",
//	 "client":"10.0.0.7:51234","kind":"read","statement":"select",
//	 "columns":["public.users.ssn","public.users.email"],"key_ids":[3],"rows":1}
//	{"log":"audit","time":"…","conn_id":43,"user":"app","database":"shop","client":"10.0.0.7:51240",
//	 "kind":"refused","statement":"update","columns":["public.users.ssn"],"sqlstate":"0A000","reason":"statement"}
//
// kind is read, write or refused; statement is the statement's kind
// (select, insert, update, delete, merge, copy, …); columns are
// schema.table.column as the policy names them; key_ids are data-key ids
// (pgcrypt-proxy keys list shows each one's key name, version and KEK
// version); rows counts the rows that carried policy values (what tells a
// bulk export from a lookup); reason is a short fixed word (the refusal
// reasons of package metrics). "log":"audit" tells the lines apart when
// they share stderr with the proxy's log.
//
// An event never holds a value, a bind parameter or SQL text: Event has no
// field that could carry one, and a test fails if one is added.
//
// # Delivery
//
// Record never blocks the proxy. Events go through a bounded queue
// (Options.Buffer) to one writer goroutine, which writes whatever is queued
// in one write call. When the queue is full — a slow or full disk — events
// are dropped, counted in pgcrypt_audit_events_dropped_total and reported
// in the proxy's log at most every 10 seconds. An audit trail that must be
// complete needs that counter alerted on; blocking the proxy instead would
// turn a disk problem into an outage.
//
// # Files and rotation
//
// Open creates the file with mode 0600 (it names users, clients and
// columns) and warns when an existing file is readable by others. Reopen
// closes and reopens the path: logrotate renames the file and signals the
// proxy (SIGHUP), and the writer moves to a new file without losing queued
// events. Path "-" writes to stderr, one line per write so lines stay whole
// beside the proxy's own JSON log. Close writes every queued event and
// closes the file.
package audit
