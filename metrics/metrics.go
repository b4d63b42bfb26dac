package metrics

import (
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// Namespace prefixes every metric name.
const Namespace = "pgcrypt"

// Options configure New. The zero value is valid.
type Options struct {
	// Version is the binary's version, exported as pgcrypt_build_info.
	Version string
	// PerColumn enables pgcrypt_column_values_total, one series per policy
	// column and direction. Off by default: it costs a label lookup per
	// call and its cardinality grows with the policy.
	PerColumn bool
}

// Metrics holds every metric of one proxy process in its own registry. A nil
// *Metrics is valid and records nothing, so code paths without metrics pay
// one nil check. All methods are safe for concurrent use.
type Metrics struct {
	reg       *prometheus.Registry
	perColumn bool

	connOpen     prometheus.Gauge
	connAccepted prometheus.Counter
	connClosed   prometheus.Counter
	connRefused  [numRefuseReasons]prometheus.Counter

	statements   [numOutcomes]prometheus.Counter
	refusals     *prometheus.CounterVec // sqlstate, reason
	refusalCodes *guard
	relayed      map[string]prometheus.Counter // by SQLSTATE class
	relayedOther prometheus.Counter

	copies [2]prometheus.Counter // COPY FROM into policy tables: upstream text, binary

	encValues    prometheus.Counter
	encSeconds   prometheus.Histogram
	decValues    prometheus.Counter
	decSeconds   prometheus.Histogram
	columnValues *prometheus.CounterVec // column, op
	columnNames  *guard

	kmsRequests   *prometheus.CounterVec   // backend, op, result
	kmsSeconds    *prometheus.HistogramVec // backend, op
	kmsNotPrimary *prometheus.CounterVec   // backend

	dekHits   prometheus.Counter
	dekMisses prometheus.Counter

	rotPasses       [2]prometheus.Counter // ok, error
	rotLastPass     prometheus.Gauge
	rotLastSuccess  prometheus.Gauge
	rotLastDuration prometheus.Gauge
	rotRewrapped    prometheus.Counter
	rotFailures     prometheus.Counter
	rotMu           sync.Mutex           // orders SetDEKsByKEKVersion's reset and set
	rotDEKs         *prometheus.GaugeVec // kek, version
	rotAtRisk       prometheus.Gauge

	policyMu          sync.Mutex // orders SetPolicy's reset and set
	policyInfo        *prometheus.GaugeVec
	policyTables      prometheus.Gauge
	policyColumns     prometheus.Gauge
	policyReloads     [2]prometheus.Counter // ok, error
	policyLastSuccess prometheus.Gauge

	dialErrors [numDialErrors]prometheus.Counter

	bytesFromClient prometheus.Counter
	bytesFromServer prometheus.Counter

	auditEvents  prometheus.Counter
	auditDropped prometheus.Counter
	auditErrors  prometheus.Counter
}

// Per-value crypto latency: a field encryption is microseconds, one that
// had to fetch and unwrap its data key first is KMS latency.
var cryptoBuckets = []float64{
	1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1,
}

// KMS request latency: local keyring calls are microseconds, Cloud KMS
// calls tens of milliseconds, a struggling KMS seconds.
var kmsBuckets = []float64{
	100e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10,
}

// New returns a Metrics registered in a new registry of its own (never the
// global one), so tests and several servers in one process do not collide.
func New(o Options) *Metrics {
	reg := prometheus.NewRegistry()
	f := promauto.With(reg)
	m := &Metrics{reg: reg, perColumn: o.PerColumn}

	f.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help: "Always 1; labels carry the version of pgcrypt-proxy and of Go.",
	}, []string{"version", "goversion"}).WithLabelValues(orDev(o.Version), runtime.Version()).Set(1)

	m.connOpen = f.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "connections_open",
		Help: "Client connections accepted and not yet closed.",
	})
	m.connAccepted = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "connections_accepted_total",
		Help: "Client TCP connections accepted, refused ones included.",
	})
	m.connClosed = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "connections_closed_total",
		Help: "Client connections closed, refused ones included.",
	})
	refused := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "connections_refused_total",
		Help: "Client connections the proxy refused before relaying, by reason.",
	}, []string{"reason"})
	for r := range numRefuseReasons {
		m.connRefused[r] = refused.WithLabelValues(r.String())
	}

	stmts := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "statements_total",
		Help: "Client statements by outcome: passthrough (no policy column), encrypted (touches policy columns), refused.",
	}, []string{"outcome"})
	for o := range numOutcomes {
		m.statements[o] = stmts.WithLabelValues(o.String())
	}
	copies := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "copy_from_total",
		Help: "COPY FROM STDIN into tables with encrypted columns, by the format the proxy sent on to the server: binary (every column converts exactly; fast) or text (hex bytea; about 3x slower at the server).",
	}, []string{"upstream"})
	m.copies[0] = copies.WithLabelValues("text")
	m.copies[1] = copies.WithLabelValues("binary")
	m.refusals = f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "refusals_total",
		Help: "Errors the proxy raised to clients in place of the server's answer, by SQLSTATE and reason.",
	}, []string{"sqlstate", "reason"})
	m.refusalCodes = newGuard(maxRefusalCodes)
	relayed := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "server_errors_total",
		Help: "PostgreSQL ErrorResponses relayed to clients, by SQLSTATE class (first two characters).",
	}, []string{"class"})
	m.relayed = make(map[string]prometheus.Counter, len(sqlstateClasses))
	for _, c := range sqlstateClasses {
		m.relayed[c] = relayed.WithLabelValues(c)
	}
	m.relayedOther = relayed.WithLabelValues(otherLabel)

	m.encValues = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "values_encrypted_total",
		Help: "Values encrypted for policy columns.",
	})
	m.decValues = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "values_decrypted_total",
		Help: "Values decrypted from policy columns.",
	})
	m.encSeconds = f.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "encrypt_value_duration_seconds",
		Help:    "Mean time to encrypt one value, observed once per batch of values (a Bind, a row, a COPY chunk).",
		Buckets: cryptoBuckets,
	})
	m.decSeconds = f.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "decrypt_value_duration_seconds",
		Help:    "Mean time to decrypt one value, observed once per batch of values (one DataRow in 32 is timed).",
		Buckets: cryptoBuckets,
	})
	if o.PerColumn {
		m.columnValues = f.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "column_values_total",
			Help: "Values encrypted or decrypted per policy column (schema.table.column as the policy names it).",
		}, []string{"column", "op"})
		m.columnNames = newGuard(maxColumns)
	}

	m.kmsRequests = f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "kms_requests_total",
		Help: "KMS requests by backend (config kms name), operation and result.",
	}, []string{"backend", "op", "result"})
	m.kmsSeconds = f.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "kms_request_duration_seconds",
		Help:    "KMS request latency by backend and operation.",
		Buckets: kmsBuckets,
	}, []string{"backend", "op"})
	m.kmsNotPrimary = f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "kms_unwrap_not_primary_total",
		Help: "Successful unwraps by a KEK version that is not the primary (DEKs awaiting rewrap).",
	}, []string{"backend"})

	m.dekHits = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "dek_cache_hits_total",
		Help: "Data-key lookups served from the unwrapped-DEK cache.",
	})
	m.dekMisses = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "dek_cache_misses_total",
		Help: "Data-key lookups that had to read the keystore and unwrap through the KMS.",
	})

	passes := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "rotation_passes_total",
		Help: "KEK rotation passes run by this process, by result (ok, error).",
	}, []string{"result"})
	m.rotPasses = [2]prometheus.Counter{passes.WithLabelValues(resultOK), passes.WithLabelValues(resultError)}
	m.rotLastPass = f.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "rotation_last_pass_timestamp_seconds",
		Help: "Unix time the last rotation pass of this process ended, whatever its result.",
	})
	m.rotLastSuccess = f.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "rotation_last_success_timestamp_seconds",
		Help: "Unix time the last rotation pass of this process ended without any problem.",
	})
	m.rotLastDuration = f.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "rotation_last_pass_duration_seconds",
		Help: "How long the last rotation pass took.",
	})
	m.rotRewrapped = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "rotation_deks_rewrapped_total",
		Help: "DEKs rewrapped under the primary KEK version.",
	})
	m.rotFailures = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "rotation_dek_failures_total",
		Help: "DEKs a rotation pass failed to rewrap (retried by the next pass).",
	})
	m.rotDEKs = f.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "rotation_deks",
		Help: "Non-destroyed DEKs per KEK version that wraps them, as of the last rotation pass.",
	}, []string{"kek", "version"})
	m.rotAtRisk = f.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "rotation_kek_versions_at_risk",
		Help: "KEK versions that DEKs still need but the KMS cannot (or soon will not) use, as of the last pass.",
	})

	m.policyInfo = f.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "policy_info",
		Help: "Always 1; the digest label identifies the policy in force.",
	}, []string{"digest"})
	m.policyTables = f.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "policy_tables",
		Help: "Tables in the policy in force.",
	})
	m.policyColumns = f.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "policy_columns",
		Help: "Encrypted columns in the policy in force.",
	})
	reloads := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "policy_reloads_total",
		Help: "Policy reloads that changed the policy (ok) or were rejected (error).",
	}, []string{"result"})
	m.policyReloads = [2]prometheus.Counter{reloads.WithLabelValues(resultOK), reloads.WithLabelValues(resultError)}
	m.policyLastSuccess = f.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "policy_last_load_success_timestamp_seconds",
		Help: "Unix time the policy in force was loaded.",
	})

	dial := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "upstream_dial_errors_total",
		Help: "Failed connections to the upstream PostgreSQL, by stage (connect, tls).",
	}, []string{"stage"})
	for d := range numDialErrors {
		m.dialErrors[d] = dial.WithLabelValues(d.String())
	}

	bytes := f.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "relayed_bytes_total",
		Help: "Bytes relayed, by direction (client_to_server, server_to_client), as written after rewriting.",
	}, []string{"direction"})
	m.bytesFromClient = bytes.WithLabelValues("client_to_server")
	m.bytesFromServer = bytes.WithLabelValues("server_to_client")

	m.auditEvents = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "audit_events_total",
		Help: "Audit events written to the audit log.",
	})
	m.auditDropped = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "audit_events_dropped_total",
		Help: "Audit events dropped because the audit writer's queue was full or the log closed.",
	})
	m.auditErrors = f.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "audit_write_errors_total",
		Help: "Failed writes or reopens of the audit log.",
	})
	return m
}

func orDev(v string) string {
	if v == "" {
		return "dev"
	}
	return v
}

const (
	resultOK    = "ok"
	resultError = "error"
	otherLabel  = "other"

	maxRefusalCodes = 64   // distinct SQLSTATEs on pgcrypt_refusals_total
	maxColumns      = 1024 // distinct columns on pgcrypt_column_values_total
)

// Registry returns the registry holding these metrics (nil for a nil
// *Metrics), for promhttp.HandlerFor.
func (m *Metrics) Registry() *prometheus.Registry {
	if m == nil {
		return nil
	}
	return m.reg
}

// ---- connections ----

// RefuseReason is why a client connection was refused before relaying.
type RefuseReason uint8

// Connection refusal reasons (label reason of pgcrypt_connections_refused_total).
const (
	RefuseTLSRequired         RefuseReason = iota // plaintext client while client_tls.mode is require (28000)
	RefuseTLSHandshake                            // client TLS handshake failed (TLS 1.2 client, bad ClientHello)
	RefuseTooMany                                 // limits.max_connections reached (53300)
	RefuseStartupTimeout                          // limits.startup_timeout elapsed before ReadyForQuery
	RefuseBadStartup                              // malformed or oversized startup packet, unsupported protocol
	RefuseAuthFailed                              // the server rejected authentication (relayed error)
	RefuseUpstreamUnreachable                     // could not connect to PostgreSQL (08006)
	numRefuseReasons
)

var refuseNames = [numRefuseReasons]string{
	"tls_required", "tls_handshake", "too_many", "startup_timeout", "bad_startup", "auth_failed", "upstream_unreachable",
}

func (r RefuseReason) String() string {
	if r < numRefuseReasons {
		return refuseNames[r]
	}
	return otherLabel
}

// ConnAccepted records an accepted client connection: call it once per
// net.Conn returned by Accept, refused ones included.
func (m *Metrics) ConnAccepted() {
	if m == nil {
		return
	}
	m.connAccepted.Inc()
	m.connOpen.Inc()
}

// ConnClosed records the close of a connection counted by ConnAccepted:
// call it exactly once per accepted connection.
func (m *Metrics) ConnClosed() {
	if m == nil {
		return
	}
	m.connClosed.Inc()
	m.connOpen.Dec()
}

// ConnRefused records why a connection was refused. It does not close it:
// ConnClosed still follows.
func (m *Metrics) ConnRefused(r RefuseReason) {
	if m == nil || r >= numRefuseReasons {
		return
	}
	m.connRefused[r].Inc()
}

// ---- statements ----

// Outcome is what happened to a client statement.
type Outcome uint8

// Statement outcomes (label outcome of pgcrypt_statements_total).
const (
	Passthrough Outcome = iota // touches no policy column: relayed as it is
	Encrypted                  // touches policy columns: encrypted, decrypted or rewritten
	Refused                    // refused by the proxy
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"passthrough", "encrypted", "refused"}

func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return otherLabel
}

// Statement counts one client statement by outcome.
func (m *Metrics) Statement(o Outcome) {
	if m == nil || o >= numOutcomes {
		return
	}
	m.statements[o].Inc()
}

// RefusalReason classifies an error the proxy raised itself. Reasons are a
// fixed set so the label's cardinality stays bounded; the error's message
// (which may name a column) is never a label.
type RefusalReason uint8

// Refusal reasons (label reason of pgcrypt_refusals_total).
const (
	RefusalStatement      RefusalReason = iota // rewrite refused the SQL (cannot prove where values go, unsupported on ciphertext)
	RefusalParamType                           // a parameter's declared type conflicts with its policy column
	RefusalInvalidValue                        // a value is not valid input for its column's declared type
	RefusalKeyUnavailable                      // the data key could not be had (keystore or KMS down)
	RefusalEncryptFailed                       // encryption failed for another reason
	RefusalDecryptFailed                       // a stored value did not decrypt (tampered, wrong column, not ciphertext)
	RefusalCopy                                // a COPY FROM row could not be read or encrypted
	RefusalInternal                            // anything else
	numRefusalReasons
)

var refusalNames = [numRefusalReasons]string{
	"statement", "param_type", "invalid_value", "key_unavailable", "encrypt_failed", "decrypt_failed", "copy", "internal",
}

func (r RefusalReason) String() string {
	if r < numRefusalReasons {
		return refusalNames[r]
	}
	return otherLabel
}

// Refusal counts one error the proxy raised to a client, by its SQLSTATE
// and reason. A SQLSTATE that is not five characters of [0-9A-Z] is
// counted as "other", and so is any beyond the 64th distinct one.
func (m *Metrics) Refusal(sqlstate string, r RefusalReason) {
	if m == nil {
		return
	}
	if !validSQLSTATE(sqlstate) || !m.refusalCodes.allow(sqlstate) {
		sqlstate = otherLabel
	}
	m.refusals.WithLabelValues(sqlstate, r.String()).Inc()
}

// ServerError counts one ErrorResponse from PostgreSQL relayed to a client,
// by SQLSTATE class. Classes not defined by PostgreSQL count as "other".
func (m *Metrics) ServerError(sqlstate string) {
	if m == nil {
		return
	}
	if len(sqlstate) >= 2 {
		if c, ok := m.relayed[sqlstate[:2]]; ok {
			c.Inc()
			return
		}
	}
	m.relayedOther.Inc()
}

func validSQLSTATE(s string) bool {
	if len(s) != 5 {
		return false
	}
	for i := 0; i < 5; i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// sqlstateClasses are PostgreSQL's SQLSTATE classes (Appendix A).
var sqlstateClasses = []string{
	"00", "01", "02", "03", "08", "09", "0A", "0B", "0F", "0L", "0P", "0Z",
	"20", "21", "22", "23", "24", "25", "26", "27", "28", "2B", "2D", "2F",
	"34", "38", "39", "3B", "3D", "3F", "40", "42", "44", "53", "54", "55",
	"57", "58", "72", "F0", "HV", "P0", "XX",
}

// ---- encryption ----

// Encrypted records n values encrypted in d (the whole batch's time). The
// histogram observes d/n once per call, so a Bind with ten parameters
// costs one observation.
func (m *Metrics) Encrypted(n int, d time.Duration) {
	if m == nil || n <= 0 {
		return
	}
	m.encValues.Add(float64(n))
	m.encSeconds.Observe(d.Seconds() / float64(n))
}

// CopyFrom counts a COPY FROM STDIN into a policy table, by whether the
// proxy sent it on in binary.
func (m *Metrics) CopyFrom(binary bool) {
	if m == nil {
		return
	}
	i := 0
	if binary {
		i = 1
	}
	m.copies[i].Inc()
}

// EncryptedUntimed counts n values encrypted without timing them (COPY,
// where parsing and encrypting interleave row by row).
func (m *Metrics) EncryptedUntimed(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.encValues.Add(float64(n))
}

// Decrypted records n values decrypted in d; see Encrypted.
// DecryptedUntimed counts n values decrypted without timing them (the
// proxy times a sample of rows; see Decrypted).
func (m *Metrics) DecryptedUntimed(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.decValues.Add(float64(n))
}

func (m *Metrics) Decrypted(n int, d time.Duration) {
	if m == nil || n <= 0 {
		return
	}
	m.decValues.Add(float64(n))
	m.decSeconds.Observe(d.Seconds() / float64(n))
}

// ColumnEncrypted counts n values encrypted for column ("schema.table.column",
// policy.Column.Identity). A no-op unless Options.PerColumn; past 1024
// distinct columns the rest count as "other".
func (m *Metrics) ColumnEncrypted(column string, n int) { m.column(column, "encrypt", n) }

// ColumnDecrypted counts n values decrypted from column; see ColumnEncrypted.
func (m *Metrics) ColumnDecrypted(column string, n int) { m.column(column, "decrypt", n) }

func (m *Metrics) column(column, op string, n int) {
	if m == nil || !m.perColumn || n <= 0 {
		return
	}
	if !m.columnNames.allow(column) {
		column = otherLabel
	}
	m.columnValues.WithLabelValues(column, op).Add(float64(n))
}

// ---- data keys ----

// DEKCacheHit counts a data-key lookup served from the cache.
func (m *Metrics) DEKCacheHit() {
	if m == nil {
		return
	}
	m.dekHits.Inc()
}

// DEKCacheMiss counts a data-key lookup that went to the keystore and KMS.
func (m *Metrics) DEKCacheMiss() {
	if m == nil {
		return
	}
	m.dekMisses.Inc()
}

// ---- rotation ----

// RotationPass records one KEK rotation pass that ended at end after d:
// ok when it completed without any problem, rewrapped and failed DEK
// counts, and atRisk the KEK versions still needed but unusable.
func (m *Metrics) RotationPass(ok bool, end time.Time, d time.Duration, rewrapped, failed, atRisk int) {
	if m == nil {
		return
	}
	ts := float64(end.UnixNano()) / 1e9
	m.rotLastPass.Set(ts)
	m.rotLastDuration.Set(d.Seconds())
	if ok {
		m.rotPasses[0].Inc()
		m.rotLastSuccess.Set(ts)
	} else {
		m.rotPasses[1].Inc()
	}
	if rewrapped > 0 {
		m.rotRewrapped.Add(float64(rewrapped))
	}
	if failed > 0 {
		m.rotFailures.Add(float64(failed))
	}
	m.rotAtRisk.Set(float64(atRisk))
}

// SetDEKsByKEKVersion replaces pgcrypt_rotation_deks with counts, keyed by
// full KEK version name (<key>/cryptoKeyVersions/<id>); versions absent
// from counts disappear, so a retired version leaves no stale series.
func (m *Metrics) SetDEKsByKEKVersion(counts map[string]int) {
	if m == nil {
		return
	}
	m.rotMu.Lock()
	defer m.rotMu.Unlock()
	m.rotDEKs.Reset()
	for v, n := range counts {
		key, id, ok := kms.SplitVersionName(v)
		if !ok {
			key, id = v, ""
		}
		m.rotDEKs.WithLabelValues(key, id).Set(float64(n))
	}
}

// ---- policy ----

// SetPolicy records the policy now in force: its digest
// (policy.Policy.Digest), table and column counts. Call it at startup and
// after every reload that changed the policy.
func (m *Metrics) SetPolicy(digest string, tables, columns int) {
	if m == nil {
		return
	}
	m.policyMu.Lock()
	defer m.policyMu.Unlock()
	m.policyInfo.Reset()
	m.policyInfo.WithLabelValues(digest).Set(1)
	m.policyTables.Set(float64(tables))
	m.policyColumns.Set(float64(columns))
	m.policyLastSuccess.SetToCurrentTime()
}

// PolicyReload counts a reload attempt that changed the policy (ok) or was
// rejected (the previous policy stays in force). On success call SetPolicy
// too.
func (m *Metrics) PolicyReload(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.policyReloads[0].Inc()
	} else {
		m.policyReloads[1].Inc()
	}
}

// ---- upstream and bytes ----

// DialStage is where a connection to the upstream failed.
type DialStage uint8

// Upstream dial failure stages (label stage of pgcrypt_upstream_dial_errors_total).
const (
	DialConnect DialStage = iota // TCP connect (refused, unreachable, timeout)
	DialTLS                      // SSLRequest declined or TLS handshake/verification failed
	numDialErrors
)

var dialNames = [numDialErrors]string{"connect", "tls"}

func (d DialStage) String() string {
	if d < numDialErrors {
		return dialNames[d]
	}
	return otherLabel
}

// UpstreamDialError counts a failed upstream connection (session or cancel
// forwarding).
func (m *Metrics) UpstreamDialError(s DialStage) {
	if m == nil || s >= numDialErrors {
		return
	}
	m.dialErrors[s].Inc()
}

// BytesRelayed adds bytes written to the server (toServer) and to the
// client (toClient). Cheap enough to call at every flush.
func (m *Metrics) BytesRelayed(toServer, toClient int) {
	if m == nil {
		return
	}
	if toServer > 0 {
		m.bytesFromClient.Add(float64(toServer))
	}
	if toClient > 0 {
		m.bytesFromServer.Add(float64(toClient))
	}
}

// ---- audit ----

// AuditWritten counts n audit events written.
func (m *Metrics) AuditWritten(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.auditEvents.Add(float64(n))
}

// AuditDropped counts an audit event dropped.
func (m *Metrics) AuditDropped() {
	if m == nil {
		return
	}
	m.auditDropped.Inc()
}

// AuditWriteError counts a failed audit write or reopen.
func (m *Metrics) AuditWriteError() {
	if m == nil {
		return
	}
	m.auditErrors.Inc()
}

// guard admits at most max distinct label values, so a bug that feeds an
// unbounded value into a label degrades to "other" instead of growing the
// registry without bound.
type guard struct {
	seen sync.Map // string → struct{}: admitted values, read without a lock
	max  int
	mu   struct {
		sync.Mutex
		n int // values in seen
	}
}

func newGuard(max int) *guard { return &guard{max: max} }

func (g *guard) allow(v string) bool {
	if _, ok := g.seen.Load(v); ok {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.seen.Load(v); ok {
		return true
	}
	if g.mu.n >= g.max {
		return false
	}
	g.seen.Store(v, struct{}{})
	g.mu.n++
	return true
}
