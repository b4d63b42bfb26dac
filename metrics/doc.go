// Package metrics holds pgcrypt-proxy's Prometheus metrics: one *Metrics
// per process, registered in a registry of its own (never the global one)
// and served by internal/admin on /metrics.
//
// Every method is nil-safe: a nil *Metrics records nothing, so a code path
// built without metrics (tests, tools) costs one nil check. Hot-path methods
// (Encrypted, Decrypted, BytesRelayed, Statement, ConnAccepted…) touch only
// pre-resolved counters: an atomic add, no label lookup, no allocation.
//
// # Labels
//
// No label ever carries SQL text, a value, a user or database name, a
// client address, or an error message. Label values come from fixed sets
// defined here (RefuseReason, Outcome, RefusalReason, DialStage, op,
// result) or from what ops wrote in the config and policy (KMS backend
// names, KEK version names, the policy digest, and, only with
// Options.PerColumn, policy column identities). Two guards bound what a
// caller's bug could add: SQLSTATE labels must be five characters of
// [0-9A-Z] and at most 64 distinct ones are kept (then "other"); at most
// 1024 distinct columns are kept (then "other"). Relayed server errors are
// labelled by SQLSTATE class only, from PostgreSQL's own list of classes.
//
// # Metrics
//
// Connections (proxy listener):
//
//	pgcrypt_connections_open                     gauge    accepted and not yet closed
//	pgcrypt_connections_accepted_total           counter  TCP connections accepted, refused ones included
//	pgcrypt_connections_closed_total             counter  connections closed, refused ones included
//	pgcrypt_connections_refused_total{reason}    counter  reason: tls_required, tls_handshake, too_many,
//	                                                      startup_timeout, bad_startup, auth_failed,
//	                                                      upstream_unreachable
//
// Statements and errors:
//
//	pgcrypt_statements_total{outcome}            counter  outcome: passthrough, encrypted, refused
//	pgcrypt_refusals_total{sqlstate,reason}      counter  errors the proxy raised itself; reason: statement,
//	                                                      param_type, invalid_value, key_unavailable,
//	                                                      encrypt_failed, decrypt_failed, copy, internal
//	pgcrypt_server_errors_total{class}           counter  PostgreSQL errors relayed, by SQLSTATE class ("42", "23"…)
//
// Encryption:
//
//	pgcrypt_values_encrypted_total               counter  values encrypted
//	pgcrypt_values_decrypted_total               counter  values decrypted
//	pgcrypt_copy_from_total{upstream}            counter  COPY FROM STDIN into policy tables, by upstream format (binary, text)
//	pgcrypt_encrypt_value_duration_seconds       histogram mean seconds per value of a statement; one statement in 32 is timed
//	pgcrypt_decrypt_value_duration_seconds       histogram mean seconds per value of a result row; one row in 32 is timed
//	pgcrypt_column_values_total{column,op}       counter  only with Options.PerColumn; op: encrypt, decrypt
//
// Keys and KMS:
//
//	pgcrypt_kms_requests_total{backend,op,result}    counter  op: wrap, unwrap, primary, versions, disable,
//	                                                          enable, destroy, rotate; result: ok, error, canceled
//	pgcrypt_kms_request_duration_seconds{backend,op} histogram
//	pgcrypt_kms_unwrap_not_primary_total{backend}    counter  unwraps by a non-primary KEK version
//	pgcrypt_dek_cache_hits_total                     counter
//	pgcrypt_dek_cache_misses_total                   counter
//
// KEK rotation (this process's passes; only the replica holding the
// rotation lock runs them):
//
//	pgcrypt_rotation_passes_total{result}               counter  result: ok, error
//	pgcrypt_rotation_last_pass_timestamp_seconds        gauge
//	pgcrypt_rotation_last_success_timestamp_seconds     gauge    alert when time() minus this is large
//	pgcrypt_rotation_last_pass_duration_seconds         gauge
//	pgcrypt_rotation_deks_rewrapped_total               counter
//	pgcrypt_rotation_dek_failures_total                 counter
//	pgcrypt_rotation_deks{kek,version}                  gauge    non-destroyed DEKs per KEK version
//	pgcrypt_rotation_kek_versions_at_risk               gauge    alert when > 0
//
// Policy:
//
//	pgcrypt_policy_info{digest}                         gauge    1 for the policy in force
//	pgcrypt_policy_tables                               gauge
//	pgcrypt_policy_columns                              gauge
//	pgcrypt_policy_reloads_total{result}                counter  result: ok, error
//	pgcrypt_policy_last_load_success_timestamp_seconds  gauge
//
// Upstream, traffic, audit, build:
//
//	pgcrypt_upstream_dial_errors_total{stage}    counter  stage: connect, tls
//	pgcrypt_relayed_bytes_total{direction}       counter  direction: client_to_server, server_to_client
//	pgcrypt_audit_events_total                   counter  audit events written
//	pgcrypt_audit_events_dropped_total           counter  dropped: the audit queue was full (never blocks the proxy)
//	pgcrypt_audit_write_errors_total             counter  failed audit writes or reopens
//	pgcrypt_build_info{version,goversion}        gauge    always 1
//
// internal/admin adds the standard go_* and process_* collectors and
// promhttp_metric_handler_* to the same /metrics page.
//
// # KMS instrumentation
//
// InstrumentKEK wraps a kms.KEK so every call is counted and timed; the
// wrapper implements kms.Rotator exactly when the wrapped KEK does. Wrap
// each backend once, at startup, before handing the map to keys.Open and
// keys.NewRotator.
package metrics
