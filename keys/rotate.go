package keys

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// Defaults of RotatorOptions.
const (
	// DefaultPollInterval is how long a KEK's version list (and so its
	// primary) is reused between passes: Cloud KMS's read quota is small.
	DefaultPollInterval = time.Hour
	// DefaultRotateRateLimit is the rotation's KMS budget, in calls per
	// second per KEK. A rewrap costs three calls (unwrap, wrap, verifying
	// unwrap), so 10,000 DEKs take about 50s. It is the rotation's own
	// budget, apart from the proxy's (see Rotator): lower it for Cloud HSM
	// keys or a Cloud KMS project whose quota other applications share.
	DefaultRotateRateLimit = 600
	// DefaultRotateBurst is the depth of the rotation's token bucket.
	DefaultRotateBurst = 50
	// DefaultRotateWorkers is how many DEKs are rewrapped at once: enough
	// to keep the rate limit busy when each Cloud KMS call takes ~50ms (a
	// rewrap is three calls in a row, plus a keystore update).
	DefaultRotateWorkers = 64
	// DefaultRotateBatch is how many keystore rows a pass reads at a time.
	DefaultRotateBatch = 1000
	// DefaultDisableDelay is how long a KEK version must have been found
	// unreferenced before a pass disables it. It outlasts any DEK load that
	// read a row before its rewrap and unwraps it after (loads are bounded
	// by one minute), so no reader ever meets a freshly disabled version.
	DefaultDisableDelay = 15 * time.Minute
)

// Rotation errors (Kinds of *Error, with Op "rotate").
var (
	// ErrRotationBusy: another process (a serving replica, or
	// `pgcrypt-proxy rotate`) holds the keystore's rotation lock.
	ErrRotationBusy = errors.New("another pgcrypt-proxy process is running a KEK rotation pass on this keystore")
	// ErrKEKVersionAtRisk: data keys are wrapped under a KEK version that
	// the KMS has disabled, scheduled for destruction, destroyed or does
	// not know. The error names the DEKs; nothing was retired.
	ErrKEKVersionAtRisk = errors.New("data keys are wrapped under a KEK version the KMS cannot use")
	// ErrRotationLockLost: the connection holding the rotation lock failed
	// during the pass; it stopped before retiring anything.
	ErrRotationLockLost = errors.New("lost the rotation lock (its database connection failed)")
)

// RotatorOptions configure a Rotator. The zero value is safe: it never
// destroys a KEK version (DestroyRetired is false).
type RotatorOptions struct {
	// Schema holds the keystore tables (default "pgcrypt").
	Schema string
	// Logger gets one line per pass, plus one per KEK version disabled,
	// re-enabled or destroyed. Never key bytes.
	Logger zerolog.Logger
	// Now is the clock of retirement (unreferenced_at, disabled_at,
	// destroy_grace) and of the version-list cache (default time.Now).
	Now func() time.Time
	// PollInterval is how long a KEK's version list, and so its primary, is
	// reused (default DefaultPollInterval). A Wrap that reports another
	// version, or an Unwrap of a supposedly old DEK with usedPrimary, ends
	// it early.
	PollInterval time.Duration
	// RateLimit is the rotation's KMS calls per second per KEK (default
	// DefaultRotateRateLimit; negative: unlimited); Burst the bucket's depth
	// (default DefaultRotateBurst).
	RateLimit float64
	Burst     int
	// Workers is how many DEKs are rewrapped concurrently (default
	// DefaultRotateWorkers); BatchSize how many rows are read at a time
	// (default DefaultRotateBatch).
	Workers   int
	BatchSize int
	// DisableDelay is how long a KEK version must stay unreferenced before
	// it is disabled (default DefaultDisableDelay; negative: at once).
	DisableDelay time.Duration
	// DestroyRetired enables destruction of disabled versions once
	// DestroyGrace has passed since they were disabled
	// (rotation.destroy_retired_versions, rotation.destroy_grace). The
	// grace must outlive the database backups that still hold DEKs wrapped
	// under the version.
	DestroyRetired bool
	DestroyGrace   time.Duration
	// KeepVersions makes passes rewrap and verify but never disable or
	// destroy a KEK version (rotation.retire_versions: false), for
	// replicas whose KMS identity may not change version states while a
	// separate, privileged `pgcrypt-proxy rotate` job retires them.
	KeepVersions bool
	// OnPass, if set, receives every pass's result (not passes skipped
	// because another process holds the lock): wire metrics here.
	OnPass func(*PassResult)
}

// PassResult is what one rotation pass did. Version names are full KMS
// version names; nothing here is secret.
type PassResult struct {
	// Started and Finished are read from RotatorOptions.Now; Duration is
	// measured on the monotonic clock.
	Started, Finished time.Time
	Duration          time.Duration
	// Rewrapped counts DEKs rewrapped under the primary and swapped in.
	Rewrapped int
	// Raced counts DEKs whose row another writer changed between read and
	// swap (another pass, a destroy): theirs stands.
	Raced int
	// Failed counts DEKs that could not be rewrapped; Errors says why. The
	// next pass tries them again.
	Failed int
	// Disabled, Destroyed and Reenabled list the KEK versions this pass
	// changed. Destroyed means scheduled for destruction with Cloud KMS.
	Disabled, Destroyed, Reenabled []string
	// Retiring lists versions on their way out, with their next step.
	Retiring []RetiringVersion
	// AtRisk lists KEK versions that DEKs still need and the KMS cannot
	// use (or may soon not); each is also in Err.
	AtRisk []AtRiskVersion
	// DEKsByKEKVersion counts the non-destroyed DEKs per KEK version at the
	// end of the pass; nil when the pass ended before counting them.
	DEKsByKEKVersion map[string]int
	// KMSCalls counts the KMS operations the pass made (a Versions call
	// counts once).
	KMSCalls int64
	// Err joins every problem (row failures, at-risk versions, KMS or
	// keystore errors); nil for a clean pass. It is also Pass's error.
	Err error
}

// OK reports whether the pass completed without any problem.
func (r *PassResult) OK() bool { return r != nil && r.Err == nil }

// RetiringVersion is a KEK version on its way out.
type RetiringVersion struct {
	Version string
	// State is "unreferenced" (no DEK needs it; to be disabled) or
	// "disabled" (to be destroyed, when destruction is enabled).
	State string
	// Since is when it became so; Next is the earliest time of the next
	// step (zero: never, destruction being off).
	Since, Next time.Time
}

// AtRiskVersion is a KEK version that DEKs still need while the KMS cannot
// unwrap under it, or soon will not.
type AtRiskVersion struct {
	Version string
	// State is the KMS's word (DISABLED, DESTROY_SCHEDULED, DESTROYED),
	// ABSENT when the KMS does not list it, or UNWRAP_FAILED when only an
	// Unwrap said so.
	State string
	// DestroyTime is when a DESTROY_SCHEDULED version loses its material;
	// until then it can be restored.
	DestroyTime time.Time
	DEKs        []DEKRef
}

// DEKRef names a DEK without its material.
type DEKRef struct {
	ID         uint32
	Key        string
	DEKVersion int
}

func (d DEKRef) String() string {
	return strconv.Quote(d.Key) + " v" + strconv.Itoa(d.DEKVersion) + " (id " + strconv.FormatUint(uint64(d.ID), 10) + ")"
}

// Rotator is the KEK rotation worker (DESIGN.md, "KEK rotation"): it
// rewraps every DEK that is not under its KEK's primary version, then
// retires the versions no DEK needs any more. A pass:
//
//  1. Lock: a session-level pg_try_advisory_lock (pg_advisory_lock with
//     PassWait) on a connection taken out of the pool for the pass, so one
//     process at a time runs a pass on a keystore; ending the session (a
//     crash included) releases it. Pass returns ErrRotationBusy when
//     another process holds it. Correctness never depends on the lock:
//     every write below is a compare-and-swap or re-checked under a table
//     lock, so two passes at once only waste KMS calls.
//  2. Detect: for each KEK that wrapped a row of the keystore (kek_name),
//     read its versions (kms.KEK.Versions: the primary and every state),
//     reused for PollInterval. A Wrap that reports another version than
//     the primary believed, or an old DEK whose Unwrap says usedPrimary,
//     ends the reuse at once.
//  3. Rewrap each non-destroyed DEK whose kek_version is not the primary,
//     BatchSize rows at a time in id order, Workers at once, each KMS call
//     waiting on a token bucket of RateLimit per KEK: Unwrap with
//     Identity(schema, key_name, dek_version) as AAD; Wrap under the
//     primary with the same AAD; Unwrap the new blob and compare in
//     constant time; then
//     UPDATE … SET wrapped = $new, kek_version = $version WHERE id = $id AND wrapped = $old,
//     $version being the version Wrap reports. A row changed meanwhile is
//     left as the other writer made it (Raced). A crash at any step leaves
//     each row with its old or its new blob, and both unwrap while the old
//     version is enabled, so the next pass simply resumes. Unwrap failures
//     that say the version is disabled, destroyed or unknown are collected
//     as AtRisk; many transient KMS failures in a row stop the KEK's
//     rewrap for this pass.
//  4. Verify: every KEK version that a non-destroyed DEK references must be
//     ENABLED in the KMS. Otherwise the pass reports ErrKEKVersionAtRisk
//     naming the DEKs (and, for DESTROY_SCHEDULED, that the version can
//     still be restored until its destroy time) and retires nothing of
//     that KEK. A version this keystore's rotation disabled itself and that
//     DEKs reference again (a keystore restored from a backup, a creation
//     that raced the disable) is re-enabled.
//  5. Retire (versions older than the primary only, never the primary; the
//     record lives in <schema>.kek_versions, see below): a version no DEK
//     references is first recorded as unreferenced; after DisableDelay it
//     is disabled; after DestroyGrace from then, with DestroyRetired, it is
//     destroyed. Before destroying anything of a KEK the pass unwraps every
//     non-destroyed DEK of that KEK, proving that none secretly needs a
//     disabled version (a wrong kek_version column). Each disable and
//     destroy runs in a transaction holding LOCK TABLE data_keys IN SHARE
//     MODE (concurrent creations and rewraps wait, readers do not), which
//     re-counts the references right before the KMS call. A version found
//     disabled by someone else is adopted (its grace starts when the pass
//     saw it); one re-enabled by someone else starts over.
//
// # The kek_versions table
//
// <schema>.kek_versions records retirement, since Cloud KMS does not say
// when a version was disabled. The Rotator creates it (CREATE TABLE IF NOT
// EXISTS under pg_advisory_xact_lock, the first time it finds it missing;
// the role then needs CREATE on the schema), outside schema_migrations, so
// that a future migration must create it with IF NOT EXISTS and these
// columns:
//
//	column           type         meaning
//	kek_version      text         full KEK version name (primary key)
//	kek_name         text         KEK.Name()
//	unreferenced_at  timestamptz  when a pass first found no DEK under it
//	disabled_at      timestamptz  when a pass disabled (or found disabled) it: destroy_grace counts from here
//	destroyed_at     timestamptz  when a pass destroyed (gcp: scheduled destruction of) it
//	updated_at       timestamptz
//
// Times come from RotatorOptions.Now. A row is deleted when its version is
// referenced again, so the rotation's role needs SELECT, INSERT, UPDATE and
// DELETE on it (a GRANT … ON ALL TABLES made before it existed does not
// cover it). Without the table (no CREATE), a pass still rewraps and
// verifies, retires nothing, and says what is missing.
//
// # What it assumes
//
// A KEK serves one keystore: its data_keys rows are everything the KEK's
// versions protect. A KEK shared with another keystore or application
// must not be rotated by this worker (its other users' data would lose
// the versions). Only KEKs that wrapped at least one row of this keystore
// are touched. Database backups hold DEKs wrapped under old versions:
// DestroyGrace must outlive them.
//
// # Budget
//
// The Rotator's token bucket is per KEK and counts its own calls only.
// The `serve` and `rotate` commands give it KEK handles of its own (their
// kms-level limiter set to the same budget), so a pass neither waits behind
// nor starves the proxy's own KMS calls. A rewrap costs 3 calls; a destroy
// costs one Unwrap per DEK of the KEK (the proof above), once per retired
// version; an idle pass costs one Versions per KEK per PollInterval.
type Rotator struct {
	pool     *pgxpool.Pool
	schema   string
	table    string             // quoted <schema>.data_keys
	vtable   string             // quoted <schema>.kek_versions
	keks     map[string]kms.KEK // by KEK.Name()
	limiters map[string]*rate.Limiter
	o        RotatorOptions
	log      zerolog.Logger
	hooks    rotateHooks

	tableReady atomic.Bool
	trigger    chan struct{}

	mu    sync.Mutex
	snaps map[string]*kekSnapshot // by KEK.Name()
}

// rotateHooks let tests stop a pass at each step, as a crash would. A
// non-nil error aborts the pass at once.
type rotateHooks struct {
	afterUnwrap, afterWrap, afterUpdate       func(id uint32) error
	afterDisable, beforeDestroy, afterDestroy func(version string) error
}

// kekSnapshot is a KEK's version list as read at one time.
type kekSnapshot struct {
	at       time.Time
	primary  string
	versions []kms.Version
}

func (s *kekSnapshot) version(name string) (kms.Version, bool) {
	for _, v := range s.versions {
		if v.Name == name {
			return v, true
		}
	}
	return kms.Version{}, false
}

// NewRotator returns a Rotator of the keystore in pool's database. keks are
// the kms backends (by config name, as for Open); a DEK is rewrapped by the
// KEK whose Name() is its kek_name. It does not own pool or keks, and makes
// no call until the first pass.
func NewRotator(pool *pgxpool.Pool, keks map[string]kms.KEK, o RotatorOptions) (*Rotator, error) {
	fail := func(err error) error { return &Error{Op: "rotate", Kind: ErrInvalidArgument, Err: err} }
	if pool == nil {
		return nil, fail(errors.New("nil pool"))
	}
	if o.Schema == "" {
		o.Schema = DefaultSchema
	}
	if !isIdent(o.Schema) {
		return nil, fail(fmt.Errorf("schema %q is not a plain lower-case SQL identifier", o.Schema))
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.RateLimit == 0 {
		o.RateLimit = DefaultRotateRateLimit
	}
	if o.Burst <= 0 {
		o.Burst = DefaultRotateBurst
	}
	if o.Workers <= 0 {
		o.Workers = DefaultRotateWorkers
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultRotateBatch
	}
	switch {
	case o.DisableDelay == 0:
		o.DisableDelay = DefaultDisableDelay
	case o.DisableDelay < 0:
		o.DisableDelay = 0
	}
	if o.DestroyGrace < 0 {
		return nil, fail(errors.New("negative destroy grace"))
	}
	r := &Rotator{
		pool:     pool,
		schema:   o.Schema,
		table:    pgx.Identifier{o.Schema, "data_keys"}.Sanitize(),
		vtable:   pgx.Identifier{o.Schema, "kek_versions"}.Sanitize(),
		keks:     make(map[string]kms.KEK, len(keks)),
		limiters: make(map[string]*rate.Limiter, len(keks)),
		o:        o,
		log:      o.Logger.With().Str("component", "kek-rotation").Logger(),
		trigger:  make(chan struct{}, 1),
		snaps:    map[string]*kekSnapshot{},
	}
	for name, k := range keks {
		if k == nil {
			return nil, fail(fmt.Errorf("kms backend %q is nil", name))
		}
		if _, ok := r.keks[k.Name()]; ok {
			continue // two config entries for one KEK
		}
		r.keks[k.Name()] = k
		if o.RateLimit > 0 {
			r.limiters[k.Name()] = rate.NewLimiter(rate.Limit(o.RateLimit), o.Burst)
		}
	}
	return r, nil
}

// RotationLockKey is the bigint of the session-level advisory lock that a
// rotation pass holds on the keystore database (pg_locks shows it as
// classid = key>>32, objid = key&0xffffffff, objsubid = 1).
func RotationLockKey(schema string) int64 { return lockKey("rotate", schema) }

// Pass runs one pass if no other process is running one (else an *Error of
// kind ErrRotationBusy, and nothing is done). Its error is the result's
// Err; a nil result means the pass could not start (the keystore database
// failed, or ctx ended).
func (r *Rotator) Pass(ctx context.Context) (*PassResult, error) { return r.locked(ctx, false) }

// PassWait runs one pass, waiting for another process's pass to finish.
func (r *Rotator) PassWait(ctx context.Context) (*PassResult, error) { return r.locked(ctx, true) }

// Trigger asks Run for an early pass with a fresh version list, e.g. when
// the proxy sees Unwrap's usedPrimary=false. Run honors at most one trigger
// per minute; Trigger never blocks.
func (r *Rotator) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// minTriggerGap bounds how often Trigger starts a pass.
const minTriggerGap = time.Minute

// Run runs a pass at once, then every interval and on Trigger, until ctx
// ends. A pass skipped because another replica holds the lock is logged at
// debug level; a failed one is logged and retried at the next interval.
func (r *Rotator) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	t := time.NewTimer(0)
	defer t.Stop()
	var lastTriggered time.Time
	for {
		fresh := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.trigger:
			if time.Since(lastTriggered) < minTriggerGap {
				continue
			}
			lastTriggered = time.Now()
			fresh = true
		}
		if fresh {
			r.forgetSnapshots()
		}
		res, err := r.Pass(ctx)
		switch {
		case errors.Is(err, ErrRotationBusy):
			r.log.Debug().Msg("another replica is running the KEK rotation pass")
		case res == nil && err != nil && ctx.Err() == nil:
			// A pass that ran has logged itself.
			r.log.Error().Err(err).Msg("KEK rotation pass could not start")
		}
		if !fresh {
			t.Reset(interval)
		}
	}
}

func (r *Rotator) forgetSnapshots() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.snaps)
}

// locked runs a pass under the session-level rotation lock, on a
// connection of its own that is closed afterwards (which releases the lock
// whatever happened).
func (r *Rotator) locked(ctx context.Context, wait bool) (*PassResult, error) {
	startErr := func(kind, err error) error { return &Error{Op: "rotate", Kind: kind, Err: err} }
	c, err := r.pool.Acquire(ctx)
	if err != nil {
		return nil, startErr(ErrKeystore, err)
	}
	conn := c.Hijack() // never back into the pool holding the lock
	key := RotationLockKey(r.schema)
	defer func() {
		// Unlock explicitly: the server releases a closed session's locks
		// only when its backend exits, a moment after Close returns. If
		// the unlock fails, closing the session releases the lock anyway.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = conn.Exec(cctx, "SELECT pg_advisory_unlock_all()")
		_ = conn.Close(cctx)
	}()
	if wait {
		if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
			return nil, startErr(ErrKeystore, fmt.Errorf("waiting for the rotation lock: %w", err))
		}
	} else {
		var got bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got); err != nil {
			return nil, startErr(ErrKeystore, fmt.Errorf("taking the rotation lock: %w", err))
		}
		if !got {
			return nil, &Error{Op: "rotate", Kind: ErrRotationBusy}
		}
	}
	res := r.pass(ctx, func(ctx context.Context) error {
		if err := conn.Ping(ctx); err != nil {
			return &Error{Op: "rotate", Kind: ErrRotationLockLost, Err: err}
		}
		return nil
	})
	return res, res.Err
}

// pass is one rotation pass; holdsLock (nil: not checked) verifies, right
// before retiring anything, that the lock is still held.
func (r *Rotator) pass(ctx context.Context, holdsLock func(context.Context) error) *PassResult {
	p := &passState{r: r, res: &PassResult{Started: r.o.Now()}, atRisk: map[string][]DEKRef{}, began: time.Now()}
	err := p.run(ctx, holdsLock)
	p.finish(err)
	return p.res
}

// passState is the state of one pass.
type passState struct {
	r        *Rotator
	res      *PassResult
	began    time.Time
	kmsCalls atomic.Int64

	noRetire bool // the kek_versions table is missing: verify, but retire nothing

	mu        sync.Mutex
	errs      []error
	rowErrs   int
	atRisk    map[string][]DEKRef // kek_version → DEKs whose Unwrap said the version is gone
	atRiskErr map[string]error    // kek_version → that Unwrap error
}

// maxRowErrors bounds the row failures kept in Err (the count is exact).
const maxRowErrors = 10

func (p *passState) problem(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, err)
}

func (p *passState) rowFailed(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.res.Failed++
	if p.rowErrs < maxRowErrors {
		p.errs = append(p.errs, err)
	}
	p.rowErrs++
}

func (p *passState) finish(err error) {
	r, res := p.r, p.res
	if err != nil {
		p.problem(err)
	}
	if p.rowErrs > maxRowErrors {
		p.problem(&Error{Op: "rotate", Err: fmt.Errorf("%d more data keys could not be rewrapped", p.rowErrs-maxRowErrors)})
	}
	res.Duration = time.Since(p.began)
	res.Finished = r.o.Now()
	res.KMSCalls = p.kmsCalls.Load()
	res.Err = errors.Join(p.errs...)
	ev := r.log.Info()
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		ev = r.log.Warn().Err(res.Err) // interrupted (shutdown); the next pass resumes
	case res.Err != nil:
		ev = r.log.Error().Err(res.Err)
	}
	ev.Int("rewrapped", res.Rewrapped).Int("raced", res.Raced).Int("failed", res.Failed).
		Strs("disabled", res.Disabled).Strs("destroyed", res.Destroyed).Strs("reenabled", res.Reenabled).
		Int("at_risk_versions", len(res.AtRisk)).Int("retiring", len(res.Retiring)).
		Int64("kms_calls", res.KMSCalls).Dur("took", res.Duration).Msg("KEK rotation pass")
	if r.o.OnPass != nil {
		r.o.OnPass(res)
	}
}

func (p *passState) run(ctx context.Context, holdsLock func(context.Context) error) error {
	r := p.r
	v, err := schemaVersion(ctx, r.pool, r.schema)
	switch {
	case err != nil:
		return &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
	case v == 0:
		return nil // no keystore yet: nothing to rotate
	case v > SchemaVersion:
		return &Error{Op: "rotate", Kind: ErrSchemaVersion,
			Err: fmt.Errorf("schema %s is at version %d, this binary knows up to %d", r.schema, v, SchemaVersion)}
	}
	if err := r.ensureVersionsTable(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Rewrapping needs no retirement record: do it, and say why
		// nothing is retired.
		p.problem(err)
		p.noRetire = true
	}
	if r.o.KeepVersions {
		p.noRetire = true
	}
	rows, err := r.pool.Query(ctx, "SELECT kek_name, count(*) FILTER (WHERE state <> 'destroyed') FROM "+r.table+" GROUP BY kek_name ORDER BY kek_name")
	if err != nil {
		return &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
	}
	type kekRows struct {
		name string
		live int
	}
	names, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (kekRows, error) {
		var k kekRows
		return k, row.Scan(&k.name, &k.live)
	})
	if err != nil {
		return &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
	}
	for _, n := range names {
		kek := r.keks[n.name]
		if kek == nil {
			if n.live > 0 {
				p.problem(&Error{Op: "rotate", Kind: ErrNoKEK,
					Err: fmt.Errorf("%d data keys are wrapped by KEK %s, which no configured kms backend provides: not rotated", n.live, n.name)})
			}
			continue
		}
		if err := p.rotateKEK(ctx, kek, holdsLock); err != nil {
			return err
		}
	}
	counts, err := r.pool.Query(ctx, "SELECT kek_version, count(*) FROM "+r.table+" WHERE state <> 'destroyed' GROUP BY kek_version")
	if err != nil {
		return &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
	}
	p.res.DEKsByKEKVersion = map[string]int{}
	var kv string
	var n int
	_, err = pgx.ForEachRow(counts, []any{&kv, &n}, func() error {
		p.res.DEKsByKEKVersion[kv] = n
		return nil
	})
	if err != nil {
		return &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
	}
	return nil
}

// kekRun is one KEK's state during a pass.
type kekRun struct {
	kek kms.KEK

	mu        sync.Mutex
	snap      *kekSnapshot
	fresh     bool // snap was read during this pass
	refreshed bool // a signal already caused a re-read this pass
	primary   string
}

func (k *kekRun) currentPrimary() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.primary
}

// rotateKEK runs steps 2 to 5 for one KEK. An error return aborts the pass
// (a crash hook, a database failure, the caller's context); KMS trouble is
// recorded and ends only this KEK's work.
func (p *passState) rotateKEK(ctx context.Context, kek kms.KEK, holdsLock func(context.Context) error) error {
	kr := &kekRun{kek: kek}
	if err := p.snapshot(ctx, kr, false); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.problem(&Error{Op: "rotate", Kind: ErrKMS, Err: fmt.Errorf("listing the versions of KEK %s: %w", kek.Name(), err)})
		return nil
	}
	if err := p.rewrap(ctx, kr); err != nil {
		if errors.Is(err, errKMSUnavailable) {
			p.problem(&Error{Op: "rotate", Kind: ErrKMS, Err: fmt.Errorf("KEK %s: %w", kek.Name(), err)})
			return nil
		}
		return err
	}
	if holdsLock != nil {
		if err := holdsLock(ctx); err != nil {
			return err
		}
	}
	reenabled := len(p.res.Reenabled)
	if err := p.retire(ctx, kr); err != nil {
		return err
	}
	if len(p.res.Reenabled) > reenabled {
		// DEKs under a version this pass re-enabled can be rewrapped now.
		if err := p.rewrap(ctx, kr); err != nil && !errors.Is(err, errKMSUnavailable) {
			return err
		}
	}
	return nil
}

// snapshot sets kr's version list: the cached one unless older than
// PollInterval, or fresh when asked.
func (p *passState) snapshot(ctx context.Context, kr *kekRun, fresh bool) error {
	r := p.r
	name := kr.kek.Name()
	now := r.o.Now()
	if !fresh {
		r.mu.Lock()
		s := r.snaps[name]
		r.mu.Unlock()
		if s != nil && now.Sub(s.at) < r.o.PollInterval && now.Sub(s.at) >= 0 {
			kr.mu.Lock()
			kr.snap, kr.primary = s, s.primary
			kr.mu.Unlock()
			return nil
		}
	}
	if err := p.wait(ctx, kr.kek); err != nil {
		return err
	}
	vs, err := kr.kek.Versions(ctx)
	if err != nil {
		return err
	}
	s := &kekSnapshot{at: now, versions: vs}
	for _, v := range vs {
		if v.Primary {
			s.primary = v.Name
		}
	}
	if s.primary == "" {
		return fmt.Errorf("KEK %s has no primary version", name)
	}
	r.mu.Lock()
	r.snaps[name] = s
	r.mu.Unlock()
	kr.mu.Lock()
	kr.snap, kr.primary, kr.fresh = s, s.primary, true
	kr.mu.Unlock()
	return nil
}

// stale ends the reuse of kr's version list (for this and later passes).
func (p *passState) stale(kr *kekRun) {
	p.r.mu.Lock()
	defer p.r.mu.Unlock()
	delete(p.r.snaps, kr.kek.Name())
}

// wait takes a token of kek's rotation budget and counts the call.
func (p *passState) wait(ctx context.Context, kek kms.KEK) error {
	p.kmsCalls.Add(1)
	if l := p.r.limiters[kek.Name()]; l != nil {
		if err := l.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
	return nil
}

// errKMSUnavailable stops a KEK's rewrap after many transient failures in
// a row: the KMS is down or throttling, and the next pass will resume.
var errKMSUnavailable = errors.New("the KMS keeps failing (unavailable, throttling or timing out); rewrap stopped for this pass")

// rewrap is step 3 for one KEK.
func (p *passState) rewrap(ctx context.Context, kr *kekRun) error {
	r := p.r
	var lastID int32
	var transient atomic.Int64
	limit := int64(max(8, 2*r.o.Workers))
	for {
		rows, err := r.pool.Query(ctx, "SELECT "+rowColumns+" FROM "+r.table+
			" WHERE kek_name = $1 AND state <> 'destroyed' AND kek_version <> $2 AND id > $3 ORDER BY id LIMIT $4",
			kr.kek.Name(), kr.currentPrimary(), lastID, r.o.BatchSize)
		if err != nil {
			return &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
		}
		batch, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (row, error) { return scanRow(row) })
		if err != nil {
			return asKeystoreErr("rotate", 0, err)
		}
		if len(batch) == 0 {
			return nil
		}
		lastID = int32(batch[len(batch)-1].id)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(r.o.Workers)
		for _, row := range batch {
			g.Go(func() error {
				if transient.Load() >= limit {
					return errKMSUnavailable
				}
				return p.rewrapRow(gctx, kr, row, &transient)
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
}

// rewrapRow rewraps one DEK. Its error aborts the pass; a failure of this
// row alone is recorded and returns nil.
func (p *passState) rewrapRow(ctx context.Context, kr *kekRun, rw row, transient *atomic.Int64) error {
	r := p.r
	kek := kr.kek
	fail := func(kind, cause error) error {
		if ctx.Err() != nil {
			return ctx.Err() // the pass is ending; not this row's fault
		}
		if kms.IsRetryable(cause) {
			transient.Add(1)
		}
		p.rowFailed(&Error{Op: "rotate", Key: rw.keyName, DEKVersion: rw.version, ID: rw.id, Kind: kind,
			Err: fmt.Errorf("rewrapping from %s: %w", rw.kekVersion, cause)})
		return nil
	}
	aad := Identity(r.schema, rw.keyName, rw.version)

	if err := p.wait(ctx, kek); err != nil {
		return err
	}
	pt, usedPrimary, err := kek.Unwrap(ctx, rw.wrapped, aad)
	if err != nil {
		switch {
		case errors.Is(err, kms.ErrVersionDisabled), errors.Is(err, kms.ErrVersionDestroyed), errors.Is(err, kms.ErrNotFound):
			p.mu.Lock()
			p.atRisk[rw.kekVersion] = append(p.atRisk[rw.kekVersion], DEKRef{ID: rw.id, Key: rw.keyName, DEKVersion: rw.version})
			if p.atRiskErr == nil {
				p.atRiskErr = map[string]error{}
			}
			p.atRiskErr[rw.kekVersion] = err
			p.res.Failed++
			p.mu.Unlock()
			return nil // reported by retire, with the KMS's view of the version
		case errors.Is(err, kms.ErrInvalidCiphertext):
			return fail(ErrUnwrap, err)
		}
		return fail(ErrKMS, err)
	}
	defer clear(pt)
	transient.Store(0)
	if len(pt) != crypto.DEKSize {
		return fail(ErrCorrupt, fmt.Errorf("unwrapped data key is %d bytes, want %d", len(pt), crypto.DEKSize))
	}
	if usedPrimary {
		// The blob is under the primary the KMS has now: either our
		// version list is stale, or the row's kek_version is wrong. Read
		// the list again (once per pass); a right row needs nothing.
		if err := p.signal(ctx, kr); err != nil {
			return err
		}
		if rw.kekVersion == kr.currentPrimary() {
			return nil
		}
	}
	if err := runHook(r.hooks.afterUnwrap, rw.id); err != nil {
		return err
	}

	if err := p.wait(ctx, kek); err != nil {
		return err
	}
	blob, version, err := kek.Wrap(ctx, pt, aad)
	if err != nil {
		return fail(ErrKMS, err)
	}
	if err := runHook(r.hooks.afterWrap, rw.id); err != nil {
		return err
	}
	if version != kr.currentPrimary() {
		// The KMS rotated since we looked: Wrap reports the version it used.
		kr.mu.Lock()
		kr.primary = version
		kr.mu.Unlock()
		p.stale(kr)
	}

	if err := p.wait(ctx, kek); err != nil {
		return err
	}
	pt2, _, err := kek.Unwrap(ctx, blob, aad)
	if err != nil {
		return fail(ErrKMS, fmt.Errorf("verifying the rewrapped key: %w", err))
	}
	same := subtle.ConstantTimeCompare(pt, pt2) == 1
	clear(pt2)
	if !same {
		return fail(ErrKMS, errors.New("verifying the rewrapped key: it unwraps to a different key"))
	}

	tag, err := r.pool.Exec(ctx, "UPDATE "+r.table+" SET wrapped = $2, kek_version = $3 WHERE id = $1 AND wrapped = $4 AND state <> 'destroyed'",
		int32(rw.id), blob, version, rw.wrapped)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &Error{Op: "rotate", Key: rw.keyName, DEKVersion: rw.version, ID: rw.id, Kind: ErrKeystore, Err: err}
	}
	p.mu.Lock()
	if tag.RowsAffected() == 1 {
		p.res.Rewrapped++
	} else {
		p.res.Raced++
	}
	p.mu.Unlock()
	return runHook(r.hooks.afterUpdate, rw.id)
}

// signal re-reads kr's version list once per pass, after a sign that the
// primary changed.
func (p *passState) signal(ctx context.Context, kr *kekRun) error {
	kr.mu.Lock()
	if kr.refreshed {
		kr.mu.Unlock()
		return nil
	}
	kr.refreshed = true
	kr.mu.Unlock()
	if err := p.snapshot(ctx, kr, true); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.problem(&Error{Op: "rotate", Kind: ErrKMS, Err: fmt.Errorf("listing the versions of KEK %s: %w", kr.kek.Name(), err)})
	}
	return nil
}

func runHook[T any](f func(T) error, v T) error {
	if f == nil {
		return nil
	}
	return f(v)
}

// versionNumber is a version's numeric id (0 if not numeric): both
// backends number versions 1, 2, … in creation order.
func versionNumber(version string) uint64 {
	n, err := strconv.ParseUint(kms.VersionID(version), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
