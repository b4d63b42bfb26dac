package keys

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// versionsDDL creates the retirement record (see Rotator). %[1]s is the
// quoted schema. A future keystore migration must create the same table
// with IF NOT EXISTS.
const versionsDDL = `CREATE TABLE IF NOT EXISTS %[1]s.kek_versions (
	kek_version     text        PRIMARY KEY,
	kek_name        text        NOT NULL,
	unreferenced_at timestamptz NOT NULL,
	disabled_at     timestamptz,
	destroyed_at    timestamptz,
	updated_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE %[1]s.kek_versions IS 'pgcrypt-proxy KEK version retirement, kept by the rotation worker (see keys.Rotator). Deleting a row restarts that version''s retirement.';`

// ensureVersionsTable creates <schema>.kek_versions once, under an advisory
// transaction lock so that replicas do not race on the DDL. When it exists
// it costs one read per Rotator.
func (r *Rotator) ensureVersionsTable(ctx context.Context) error {
	if r.tableReady.Load() {
		return nil
	}
	fail := func(err error) error {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42501" { // insufficient_privilege
			err = fmt.Errorf("%w (the KEK rotation needs CREATE on schema %s once, to create its kek_versions table)", err, r.schema)
		}
		return &Error{Op: "rotate", Kind: ErrKeystore, Err: fmt.Errorf("creating %s: %w", r.vtable, err)}
	}
	var exists bool
	if err := r.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", r.vtable).Scan(&exists); err != nil {
		return fail(err)
	}
	if !exists {
		tx, err := r.pool.Begin(ctx)
		if err != nil {
			return fail(err)
		}
		defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("kek_versions", r.schema)); err != nil {
			return fail(err)
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf(versionsDDL, pgx.Identifier{r.schema}.Sanitize())); err != nil {
			return fail(err)
		}
		if err := tx.Commit(ctx); err != nil {
			return fail(err)
		}
	}
	r.tableReady.Store(true)
	return nil
}

// versionRecord is a kek_versions row.
type versionRecord struct {
	unreferencedAt time.Time
	disabledAt     *time.Time
	destroyedAt    *time.Time
}

// retirePlan is what step 4 and 5 decided for one KEK.
type retirePlan struct {
	atRisk    []AtRiskVersion
	reenable  []string // disabled by this rotation, referenced again
	forget    []string // referenced again: drop the record
	mark      []string // newly found unreferenced
	restart   []string // re-enabled by someone else after this rotation disabled it
	adopt     []string // found disabled without a record of ours
	destroyed []string // found destroyed without a record of ours
	disable   []string
	destroy   []string
	retiring  []RetiringVersion
}

// decisive reports whether the plan acts on the KMS's word: then it must
// rest on a version list read during this pass.
func (pl *retirePlan) decisive() bool {
	return len(pl.atRisk)+len(pl.reenable)+len(pl.restart)+len(pl.adopt)+len(pl.disable)+len(pl.destroy) > 0
}

// retire is steps 4 and 5 for one KEK. Decisions that act on the KMS's
// word rest on a version list read during this pass.
func (p *passState) retire(ctx context.Context, kr *kekRun) error {
	kr.mu.Lock()
	stale := kr.primary != kr.snap.primary // a Wrap reported a newer primary
	kr.mu.Unlock()
	if stale {
		if ok, err := p.reread(ctx, kr); !ok {
			return err
		}
	}
	var pl *retirePlan
	for {
		refs, recs, err := p.retireState(ctx, kr.kek.Name())
		if err != nil {
			return err
		}
		pl = p.plan(kr, refs, recs)
		kr.mu.Lock()
		fresh := kr.fresh
		kr.mu.Unlock()
		if fresh || !pl.decisive() {
			break
		}
		if ok, err := p.reread(ctx, kr); !ok {
			return err
		}
	}
	if p.noRetire {
		pl = &retirePlan{atRisk: pl.atRisk}
	}
	return p.execute(ctx, kr, pl)
}

// reread reads kr's version list afresh. False means this KEK's work ends
// for this pass: with an error (the context ended), or recorded.
func (p *passState) reread(ctx context.Context, kr *kekRun) (bool, error) {
	if err := p.snapshot(ctx, kr, true); err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		p.problem(&Error{Op: "rotate", Kind: ErrKMS, Err: fmt.Errorf("listing the versions of KEK %s: %w", kr.kek.Name(), err)})
		return false, nil
	}
	return true, nil
}

// retireState reads the references per KEK version (non-destroyed DEKs)
// and the retirement records of a KEK.
func (p *passState) retireState(ctx context.Context, kekName string) (map[string]int, map[string]*versionRecord, error) {
	r := p.r
	refs := map[string]int{}
	rows, err := r.pool.Query(ctx, "SELECT kek_version, count(*) FROM "+r.table+" WHERE kek_name = $1 AND state <> 'destroyed' GROUP BY kek_version", kekName)
	if err != nil {
		return nil, nil, &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
	}
	var kv string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&kv, &n}, func() error { refs[kv] = n; return nil }); err != nil {
		return nil, nil, &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
	}
	recs := map[string]*versionRecord{}
	if p.noRetire {
		return refs, recs, nil
	}
	rows, err = r.pool.Query(ctx, "SELECT kek_version, unreferenced_at, disabled_at, destroyed_at FROM "+r.vtable+" WHERE kek_name = $1", kekName)
	if err != nil {
		return nil, nil, &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
	}
	var rec versionRecord
	if _, err := pgx.ForEachRow(rows, []any{&kv, &rec.unreferencedAt, &rec.disabledAt, &rec.destroyedAt}, func() error {
		c := rec
		recs[kv] = &c
		return nil
	}); err != nil {
		return nil, nil, &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
	}
	return refs, recs, nil
}

// plan decides steps 4 and 5 from the KMS's version list, the references
// and the records. It writes nothing.
func (p *passState) plan(kr *kekRun, refs map[string]int, recs map[string]*versionRecord) *retirePlan {
	o := p.r.o
	now := o.Now()
	kr.mu.Lock()
	snap := kr.snap
	kr.mu.Unlock()
	pl := &retirePlan{}

	// 4. Every referenced version must be usable.
	for _, kv := range sortedKeys(refs) {
		v, listed := snap.version(kv)
		rec := recs[kv]
		var state string
		switch {
		case !listed:
			state = "ABSENT"
		case v.State == kms.StateEnabled:
			if rec != nil {
				pl.forget = append(pl.forget, kv)
			}
			if _, failed := p.atRisk[kv]; failed {
				state = "UNWRAP_FAILED" // the list says ENABLED, an Unwrap said otherwise
			}
		case v.State == kms.StateDisabled && rec != nil && rec.disabledAt != nil && rec.destroyedAt == nil:
			pl.reenable = append(pl.reenable, kv) // our own retirement raced a reference: undo it
		default:
			state = v.State.String()
		}
		if state != "" {
			a := AtRiskVersion{Version: kv, State: state}
			if v.State == kms.StateDestroyScheduled {
				a.DestroyTime = v.DestroyTime
			}
			pl.atRisk = append(pl.atRisk, a)
		}
	}
	// Unwrap failures under a version no row references any more (the
	// rows changed since): nothing to report.

	// 5. Versions older than the primary that nothing references.
	primaryNum := versionNumber(snap.primary)
	for _, v := range snap.versions {
		if v.Name == snap.primary || refs[v.Name] > 0 {
			continue
		}
		if n := versionNumber(v.Name); n == 0 || n >= primaryNum {
			continue // newer than the primary (a rotation in progress?): leave it alone
		}
		rec := recs[v.Name]
		switch v.State {
		case kms.StateEnabled:
			switch {
			case rec == nil:
				pl.mark = append(pl.mark, v.Name)
				if o.DisableDelay == 0 {
					pl.disable = append(pl.disable, v.Name)
				} else {
					pl.retiring = append(pl.retiring, RetiringVersion{Version: v.Name, State: "unreferenced", Since: now, Next: now.Add(o.DisableDelay)})
				}
			case rec.disabledAt != nil || rec.destroyedAt != nil:
				pl.restart = append(pl.restart, v.Name)
				pl.retiring = append(pl.retiring, RetiringVersion{Version: v.Name, State: "unreferenced", Since: now, Next: now.Add(o.DisableDelay)})
			case !now.Before(rec.unreferencedAt.Add(o.DisableDelay)):
				pl.disable = append(pl.disable, v.Name)
			default:
				pl.retiring = append(pl.retiring, RetiringVersion{Version: v.Name, State: "unreferenced", Since: rec.unreferencedAt,
					Next: rec.unreferencedAt.Add(o.DisableDelay)})
			}
		case kms.StateDisabled:
			since := now
			if rec == nil || rec.disabledAt == nil {
				pl.adopt = append(pl.adopt, v.Name)
			} else {
				since = *rec.disabledAt
			}
			switch {
			case !o.DestroyRetired:
				pl.retiring = append(pl.retiring, RetiringVersion{Version: v.Name, State: "disabled", Since: since})
			case rec != nil && rec.disabledAt != nil && !now.Before(since.Add(o.DestroyGrace)):
				pl.destroy = append(pl.destroy, v.Name)
			default:
				pl.retiring = append(pl.retiring, RetiringVersion{Version: v.Name, State: "disabled", Since: since, Next: since.Add(o.DestroyGrace)})
			}
		case kms.StateDestroyScheduled, kms.StateDestroyed:
			if rec == nil || rec.destroyedAt == nil {
				pl.destroyed = append(pl.destroyed, v.Name)
			}
		}
	}
	if len(pl.atRisk) > 0 {
		// Loud, and nothing of this KEK is retired until it is resolved.
		pl.disable, pl.destroy = nil, nil
	}
	return pl
}

// execute carries out a plan. Its error aborts the pass (a crash hook, the
// context); KMS and keystore failures of one action are recorded.
func (p *passState) execute(ctx context.Context, kr *kekRun, pl *retirePlan) error {
	r := p.r
	kek := kr.kek
	now := r.o.Now()
	if len(pl.atRisk) > 0 {
		if err := p.reportAtRisk(ctx, kek, pl.atRisk); err != nil {
			return err
		}
	}
	for _, v := range pl.reenable {
		if err := p.wait(ctx, kek); err != nil {
			return err
		}
		if err := kek.Enable(ctx, v); err != nil {
			p.problem(&Error{Op: "rotate", Kind: ErrKMS, Err: fmt.Errorf("re-enabling %s, which data keys need again: %w", v, err)})
			continue
		}
		p.res.Reenabled = append(p.res.Reenabled, v)
		p.mu.Lock()
		p.res.Failed -= len(p.atRisk[v]) // rewrapped after all, below
		delete(p.atRisk, v)
		p.mu.Unlock()
		r.log.Warn().Str("kek_version", v).Msg("re-enabled a KEK version this rotation had disabled: data keys reference it again")
		pl.forget = append(pl.forget, v)
	}
	exec := func(sql string, args ...any) error {
		if _, err := r.pool.Exec(ctx, sql, args...); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			p.problem(&Error{Op: "rotate", Kind: ErrKeystore, Err: err})
		}
		return nil
	}
	for _, v := range pl.forget {
		if err := exec("DELETE FROM "+r.vtable+" WHERE kek_version = $1", v); err != nil {
			return err
		}
	}
	for _, v := range pl.mark {
		if err := exec("INSERT INTO "+r.vtable+" (kek_version, kek_name, unreferenced_at) VALUES ($1, $2, $3) ON CONFLICT (kek_version) DO NOTHING",
			v, kek.Name(), now); err != nil {
			return err
		}
	}
	for _, v := range pl.restart {
		r.log.Warn().Str("kek_version", v).Msg("a KEK version this rotation had retired was enabled again by someone else: its retirement starts over")
		if err := exec("UPDATE "+r.vtable+" SET unreferenced_at = $2, disabled_at = NULL, destroyed_at = NULL, updated_at = now() WHERE kek_version = $1",
			v, now); err != nil {
			return err
		}
	}
	for _, v := range pl.adopt {
		r.log.Info().Str("kek_version", v).Msg("found an unreferenced KEK version already disabled: destroy_grace starts now")
		if err := exec("INSERT INTO "+r.vtable+" (kek_version, kek_name, unreferenced_at, disabled_at) VALUES ($1, $2, $3, $3) "+
			"ON CONFLICT (kek_version) DO UPDATE SET disabled_at = $3, destroyed_at = NULL, updated_at = now()", v, kek.Name(), now); err != nil {
			return err
		}
	}
	for _, v := range pl.destroyed {
		if err := exec("INSERT INTO "+r.vtable+" (kek_version, kek_name, unreferenced_at, destroyed_at) VALUES ($1, $2, $3, $3) "+
			"ON CONFLICT (kek_version) DO UPDATE SET destroyed_at = coalesce("+r.vtable+".destroyed_at, $3), updated_at = now()",
			v, kek.Name(), now); err != nil {
			return err
		}
	}
	for _, v := range pl.disable {
		if err := p.disable(ctx, kek, v); err != nil {
			return err
		}
	}
	if len(pl.destroy) > 0 {
		ok, err := p.prove(ctx, kek)
		if err != nil {
			return err
		}
		if ok {
			for _, v := range pl.destroy {
				if err := p.destroy(ctx, kek, v); err != nil {
					return err
				}
			}
		}
	}
	p.res.Retiring = append(p.res.Retiring, pl.retiring...)
	return nil
}

// lockedTx begins a transaction holding data_keys in SHARE mode (inserts
// and updates wait for it; reads do not) and returns the number of
// non-destroyed DEKs wrapped under version.
func (p *passState) lockedTx(ctx context.Context, version string) (pgx.Tx, int, error) {
	r := p.r
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return nil, 0, err
	}
	var n int
	if _, err = tx.Exec(ctx, "SET LOCAL lock_timeout = '10s'"); err == nil {
		if _, err = tx.Exec(ctx, "LOCK TABLE "+r.table+" IN SHARE MODE"); err == nil {
			err = tx.QueryRow(ctx, "SELECT count(*) FROM "+r.table+" WHERE kek_version = $1 AND state <> 'destroyed'", version).Scan(&n)
		}
	}
	if err != nil {
		_ = tx.Rollback(ctx)
		return nil, 0, err
	}
	return tx, n, nil
}

// disable disables one unreferenced version, re-counting its references
// under the table lock right before the KMS call.
func (p *passState) disable(ctx context.Context, kek kms.KEK, version string) error {
	r := p.r
	keystoreErr := func(err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.problem(&Error{Op: "rotate", Kind: ErrKeystore, Err: fmt.Errorf("disabling %s: %w", version, err)})
		return nil
	}
	tx, n, err := p.lockedTx(ctx, version)
	if err != nil {
		return keystoreErr(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if n > 0 {
		// Referenced again since the plan: not retired after all.
		if _, err := tx.Exec(ctx, "DELETE FROM "+r.vtable+" WHERE kek_version = $1", version); err != nil {
			return keystoreErr(err)
		}
		return keystoreErr(tx.Commit(ctx))
	}
	if err := p.wait(ctx, kek); err != nil {
		return err
	}
	if err := kek.Disable(ctx, version); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.problem(&Error{Op: "rotate", Kind: ErrKMS, Err: fmt.Errorf("disabling unreferenced %s: %w", version, err)})
		return nil
	}
	if err := runHook(r.hooks.afterDisable, version); err != nil {
		return err
	}
	now := r.o.Now()
	if _, err := tx.Exec(ctx, "INSERT INTO "+r.vtable+" (kek_version, kek_name, unreferenced_at, disabled_at) VALUES ($1, $2, $3, $3) "+
		"ON CONFLICT (kek_version) DO UPDATE SET disabled_at = $3, destroyed_at = NULL, updated_at = now()", version, kek.Name(), now); err != nil {
		return keystoreErr(err) // the next pass finds it disabled and adopts it
	}
	if err := tx.Commit(ctx); err != nil {
		return keystoreErr(err)
	}
	p.res.Disabled = append(p.res.Disabled, version)
	next := "destruction is off (rotation.destroy_retired_versions)"
	if r.o.DestroyRetired {
		next = "destroyed after " + now.Add(r.o.DestroyGrace).UTC().Format(time.RFC3339)
	}
	r.log.Info().Str("kek_version", version).Str("next", next).Msg("disabled a KEK version no data key references")
	rv := RetiringVersion{Version: version, State: "disabled", Since: now}
	if r.o.DestroyRetired {
		rv.Next = now.Add(r.o.DestroyGrace)
	}
	p.res.Retiring = append(p.res.Retiring, rv)
	return nil
}

// destroy destroys one disabled version whose grace has passed, re-checking
// references and the record under the table lock right before the KMS call.
func (p *passState) destroy(ctx context.Context, kek kms.KEK, version string) error {
	r := p.r
	keystoreErr := func(err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.problem(&Error{Op: "rotate", Kind: ErrKeystore, Err: fmt.Errorf("destroying %s: %w", version, err)})
		return nil
	}
	tx, n, err := p.lockedTx(ctx, version)
	if err != nil {
		return keystoreErr(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	var disabledAt, destroyedAt *time.Time
	err = tx.QueryRow(ctx, "SELECT disabled_at, destroyed_at FROM "+r.vtable+" WHERE kek_version = $1 FOR UPDATE", version).Scan(&disabledAt, &destroyedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // forgotten meanwhile (referenced again)
	}
	if err != nil {
		return keystoreErr(err)
	}
	now := r.o.Now()
	if n > 0 || disabledAt == nil || destroyedAt != nil || now.Before(disabledAt.Add(r.o.DestroyGrace)) {
		return nil // the plan no longer holds; the next pass decides again
	}
	if err := runHook(r.hooks.beforeDestroy, version); err != nil {
		return err
	}
	if err := p.wait(ctx, kek); err != nil {
		return err
	}
	if err := kek.Destroy(ctx, version); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.problem(&Error{Op: "rotate", Kind: ErrKMS, Err: fmt.Errorf("destroying retired %s: %w", version, err)})
		return nil
	}
	if err := runHook(r.hooks.afterDestroy, version); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "UPDATE "+r.vtable+" SET destroyed_at = $2, updated_at = now() WHERE kek_version = $1", version, now); err != nil {
		return keystoreErr(err) // the next pass finds it destroyed and records it
	}
	if err := tx.Commit(ctx); err != nil {
		return keystoreErr(err)
	}
	p.res.Destroyed = append(p.res.Destroyed, version)
	r.log.Warn().Str("kek_version", version).Time("disabled_at", *disabledAt).
		Msg("destroyed a retired KEK version (gcp: destruction scheduled); data keys in database backups older than its retirement can no longer be unwrapped")
	return nil
}

// prove unwraps every non-destroyed DEK of kek before a destroy: each must
// unwrap under an enabled version, which shows that none needs a disabled
// one whatever its kek_version column says. False (with the reason
// recorded) postpones every destroy of this KEK.
func (p *passState) prove(ctx context.Context, kek kms.KEK) (bool, error) {
	r := p.r
	var lastID int32
	var failed []DEKRef // the first 1000 that failed for good
	var why error       // the first such error
	var bad, transient int
	for {
		rows, err := r.pool.Query(ctx, "SELECT "+rowColumns+" FROM "+r.table+
			" WHERE kek_name = $1 AND state <> 'destroyed' AND id > $2 ORDER BY id LIMIT $3", kek.Name(), lastID, r.o.BatchSize)
		if err != nil {
			return false, &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
		}
		batch, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (row, error) { return scanRow(row) })
		if err != nil {
			return false, asKeystoreErr("rotate", 0, err)
		}
		if len(batch) == 0 {
			break
		}
		lastID = int32(batch[len(batch)-1].id)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(r.o.Workers)
		results := make([]error, len(batch))
		for i, rw := range batch {
			g.Go(func() error {
				if err := p.wait(gctx, kek); err != nil {
					return err
				}
				pt, _, err := kek.Unwrap(gctx, rw.wrapped, Identity(r.schema, rw.keyName, rw.version))
				if err == nil && len(pt) != crypto.DEKSize {
					err = fmt.Errorf("unwrapped data key is %d bytes, want %d", len(pt), crypto.DEKSize)
				}
				clear(pt)
				results[i] = err
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return false, err
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		for i, err := range results {
			switch {
			case err == nil:
			case kms.IsRetryable(err):
				transient++
			default:
				bad++
				if len(failed) < 1000 {
					failed = append(failed, DEKRef{ID: batch[i].id, Key: batch[i].keyName, DEKVersion: batch[i].version})
				}
				if why == nil {
					why = err
				}
			}
		}
		if transient > 0 {
			break // postpone: no point reading on through an outage
		}
	}
	switch {
	case bad > 0:
		p.res.AtRisk = append(p.res.AtRisk, AtRiskVersion{Version: kek.Name(), State: "UNWRAP_FAILED", DEKs: failed})
		p.problem(&Error{Op: "rotate", Kind: ErrKEKVersionAtRisk, Err: fmt.Errorf(
			"before destroying a retired version of KEK %s, %d data keys failed to unwrap (%s; first error: %v): "+
				"they may be wrapped under a disabled version whatever their kek_version says; nothing was destroyed; "+
				"re-enable the disabled versions of this KEK and investigate", kek.Name(), bad, refList(failed, bad), why)})
		return false, nil
	case transient > 0:
		p.problem(&Error{Op: "rotate", Kind: ErrKMS, Err: fmt.Errorf(
			"destroying retired versions of KEK %s postponed: the KMS failed while proving that no data key needs them", kek.Name())})
		return false, nil
	}
	return true, nil
}

// reportAtRisk names the DEKs under each at-risk version, in the result and
// as an error.
func (p *passState) reportAtRisk(ctx context.Context, kek kms.KEK, atRisk []AtRiskVersion) error {
	r := p.r
	for _, a := range atRisk {
		rows, err := r.pool.Query(ctx, "SELECT id, key_name, dek_version FROM "+r.table+
			" WHERE kek_version = $1 AND state <> 'destroyed' ORDER BY id LIMIT 1000", a.Version)
		if err != nil {
			return &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
		}
		var d DEKRef
		var id int32
		if _, err := pgx.ForEachRow(rows, []any{&id, &d.Key, &d.DEKVersion}, func() error {
			d.ID = uint32(id)
			a.DEKs = append(a.DEKs, d)
			return nil
		}); err != nil {
			return &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
		}
		var total int
		if err := r.pool.QueryRow(ctx, "SELECT count(*) FROM "+r.table+" WHERE kek_version = $1 AND state <> 'destroyed'", a.Version).Scan(&total); err != nil {
			return &Error{Op: "rotate", Kind: ErrKeystore, Err: err}
		}
		var what string
		switch a.State {
		case "DESTROY_SCHEDULED":
			what = fmt.Sprintf("is DESTROY_SCHEDULED (its material is destroyed at %s); it CAN STILL BE RESTORED until then (kms Enable, or "+
				"gcloud kms keys versions restore then enable), after which a pass rewraps these keys", a.DestroyTime.UTC().Format(time.RFC3339))
		case "DESTROYED":
			what = "is DESTROYED: values encrypted under these data keys cannot be decrypted unless the KEK version is recovered from a KMS backup"
		case "DISABLED":
			what = "is disabled, not by this keystore's rotation: enable it (kms enable) so that these keys unwrap and get rewrapped"
		case "ABSENT":
			what = "is not listed by the KMS (wrong key, deleted keyring, or a wrong kek_version column)"
		default:
			err := p.atRiskErr[a.Version]
			what = fmt.Sprintf("is %s according to Unwrap (%v)", a.State, err)
		}
		p.res.AtRisk = append(p.res.AtRisk, a)
		p.problem(&Error{Op: "rotate", Kind: ErrKEKVersionAtRisk, Err: fmt.Errorf(
			"KEK version %s %s; %d data key(s) need it: %s; nothing of KEK %s is retired until this is resolved",
			a.Version, what, total, refList(a.DEKs, total), kek.Name())})
	}
	return nil
}

// refList names up to ten DEKs of n.
func refList(ds []DEKRef, n int) string {
	var b strings.Builder
	for i, d := range ds {
		if i == 10 {
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(d.String())
	}
	if n > min(len(ds), 10) {
		fmt.Fprintf(&b, " and %d more", n-min(len(ds), 10))
	}
	return b.String()
}
