package keys

// DEK rotation and crypto-shredding.
//
// # Rotating a DEK (RotateDEK, `pgcrypt-proxy keys rotate-dek KEY`)
//
// Every process caches, for up to its CacheTTL, which version of a key is
// active (Current) and which versions are live (Live, the candidates of a
// deterministic lookup). If a new version became active at once, a replica
// that already writes under it could store a value that another replica,
// whose Live list predates the version, does not find with WHERE col = $1
// for up to CacheTTL. So the new version is first staged: inserted as
// 'retired', which makes it live (decryptable, listed by Live) but never
// used for writing. After at least CacheTTL every process's Live includes
// it; only then does one transaction retire the old version and activate
// the new one. Both steps take the per-key advisory lock that DEK creation
// takes (lockKey("dek", schema, key)), re-read the keystore under it and
// are idempotent, so an interrupted rotation is resumed by running it
// again (a 'retired' version newer than the active one is a staged one;
// nothing else makes such a row), with the wait counted from the staged
// row's created_at by the database's clock.
//
// After activation, processes switch to the new version within their
// CacheTTL (this one at once); until then some still encrypt under the old
// one, which stays live, so nothing is lost either way. Values written
// under the old version keep decrypting; `pgcrypt-proxy encrypt-existing`
// re-encrypts them under the new one.
//
// # Destroying a DEK (DestroyDEK, `pgcrypt-proxy keys destroy-dek`)
//
// state = 'destroyed', wrapped = NULL, under the same lock. The active
// version is refused, and so is a version whose row changed less than a
// CacheTTL ago: right after a rotation, other replicas may still write
// under it. Whether any stored value still needs the version is checked by
// the caller (migrate.KeyUsage scans the policy's columns), because that
// needs the policy and a table scan.

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
)

// Refusals of DestroyDEK and RotateDEK. They are causes (Error.Err) of an
// *Error whose Kind is ErrInvalidArgument, so IsUserError holds for them
// and errors.Is finds both.
var (
	// ErrActiveDEK: the version is the active one, the DEK of new writes.
	// Rotate first (keys rotate-dek), then move rows forward
	// (encrypt-existing), then destroy the old version.
	ErrActiveDEK = errors.New("data key version is the active one (new writes use it); rotate it first")
	// ErrRecentlyRetired: the version stopped being active less than the
	// caches' TTL ago, so another replica may still be encrypting under it.
	ErrRecentlyRetired = errors.New("data key version was retired too recently: other replicas may still encrypt new values under it")
	// ErrNoActiveDEK: RotateDEK on a key name that has no active DEK yet
	// (the proxy creates version 1 with the first write).
	ErrNoActiveDEK = errors.New("key has no active data key to rotate (the proxy creates version 1 with the first write)")
)

// RotateOptions configure RotateDEK.
type RotateOptions struct {
	// Wait is how long the new version stays staged (live, decrypt-only)
	// before it becomes active: at least the CacheTTL of every process
	// using the keystore, so that all of them include it in Live before
	// anyone writes under it. Zero means this Store's CacheTTL; a negative
	// value means no wait (tests, or a keystore with a single process).
	Wait time.Duration
	// Sleep waits d or until ctx ends (default: a timer). Tests replace it.
	Sleep func(ctx context.Context, d time.Duration) error
	// OnStaged, when set, is called once the new version is staged, with
	// how long RotateDEK is about to wait. Resumed is true when an earlier,
	// interrupted rotation had staged it.
	OnStaged func(staged DEKInfo, wait time.Duration, resumed bool)
}

// Rotation is the outcome of RotateDEK.
type Rotation struct {
	Key      string        `json:"key"`
	Previous DEKInfo       `json:"previous"` // the version that was active, now retired
	Active   DEKInfo       `json:"active"`   // the new active version
	Waited   time.Duration `json:"waited_ns"`
	// Resumed: an earlier, interrupted RotateDEK had staged Active.
	Resumed bool `json:"resumed"`
	// AlreadyDone: another process finished this rotation first; nothing
	// was changed by this call.
	AlreadyDone bool `json:"already_done"`
}

// RotateDEK makes a new DEK version of keyName the active one, in two
// phases (see dek_rotation_doc.go):
//
//  1. stage: under the per-key advisory lock, insert version n+1 as
//     'retired' (live and decrypt-only), wrapped under the KEK of the kms
//     backend kmsName and verified by unwrapping it. If an interrupted
//     rotation already staged one, reuse it.
//  2. wait until the staged row is o.Wait old (by the database's clock,
//     so an interrupted rotation resumes with the remainder), so every
//     process's Live includes the new version before anybody writes under
//     it: deterministic lookups on other replicas never miss a row.
//  3. activate: under the same lock, in one transaction, retire the active
//     version and activate the staged one; Invalidate.
//
// Old versions keep decrypting. RotateDEK is idempotent and resumable: each
// step re-reads the keystore under the lock, so a crash or a concurrent
// RotateDEK at any point leaves either the old or the new version active,
// never both and never neither.
func (s *Store) RotateDEK(ctx context.Context, keyName, kmsName string, o RotateOptions) (*Rotation, error) {
	if err := checkKeyName("rotate", keyName); err != nil {
		return nil, err
	}
	if s.readOnly {
		return nil, &Error{Op: "rotate", Key: keyName, Kind: ErrReadOnly}
	}
	wait := o.Wait
	switch {
	case wait == 0:
		wait = time.Duration(s.ttl)
	case wait < 0:
		wait = 0
	}
	sleep := o.Sleep
	if sleep == nil {
		sleep = sleepDEKWait
	}
	staged, prev, resumed, err := s.stageDEK(ctx, keyName, kmsName)
	if err != nil {
		return nil, err
	}
	// How long ago was it staged, by the database's clock (the same clock
	// for every process, and for a resumed rotation).
	var ageMicros int64
	if err := s.pool.QueryRow(ctx, "SELECT (extract(epoch FROM now() - created_at) * 1e6)::bigint FROM "+s.table+
		" WHERE id = $1", int32(staged.ID)).Scan(&ageMicros); err != nil {
		return nil, &Error{Op: "rotate", Key: keyName, DEKVersion: staged.DEKVersion, ID: staged.ID, Kind: ErrKeystore, Err: err}
	}
	remaining := max(wait-time.Duration(ageMicros)*time.Microsecond, 0)
	if o.OnStaged != nil {
		o.OnStaged(staged, remaining, resumed)
	}
	s.log.Info().Str("key", keyName).Int("dek_version", staged.DEKVersion).Uint32("dek_id", staged.ID).
		Bool("resumed", resumed).Dur("wait", remaining).Msg("data key version staged; waiting for every process to see it before activating it")
	if remaining > 0 {
		if err := sleep(ctx, remaining); err != nil {
			return nil, &Error{Op: "rotate", Key: keyName, DEKVersion: staged.DEKVersion, ID: staged.ID, Kind: ErrInternal,
				Err: fmt.Errorf("interrupted while waiting; the new version stays staged and a rerun resumes: %w", err)}
		}
	}
	r, err := s.activateDEK(ctx, keyName, staged)
	if err != nil {
		return nil, err
	}
	r.Waited, r.Resumed = remaining, resumed
	if r.Previous.ID == 0 {
		r.Previous = prev
	}
	return r, nil
}

// stageDEK is phase 1 of RotateDEK: it returns the staged version (new, or
// left by an interrupted rotation) and the active one.
func (s *Store) stageDEK(ctx context.Context, keyName, kmsName string) (staged, active DEKInfo, resumed bool, err error) {
	fail := func(version int, kind, cause error) *Error {
		return &Error{Op: "rotate", Key: keyName, DEKVersion: version, Kind: kind, Err: cause}
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return staged, active, false, fail(0, ErrKeystore, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("dek", s.schema, keyName)); err != nil {
		return staged, active, false, fail(0, ErrKeystore, err)
	}
	versions, err := s.dekVersionsTx(ctx, tx, keyName)
	if err != nil {
		return staged, active, false, fail(0, ErrKeystore, err)
	}
	act, pending := activeAndStaged(versions)
	if act == nil {
		return staged, active, false, fail(0, ErrInvalidArgument, ErrNoActiveDEK)
	}
	if pending != nil {
		// An earlier rotation staged it and did not finish: resume.
		return *pending, *act, true, nil
	}
	kek := s.keks[kmsName]
	if kek == nil {
		return staged, *act, false, fail(0, ErrUnknownKMS, fmt.Errorf("the policy names kms %q; configure kms.%s", kmsName, kmsName))
	}
	version := 1
	for _, v := range versions {
		version = max(version, v.DEKVersion+1)
	}
	dek := make([]byte, crypto.DEKSize)
	defer clear(dek)
	s.randMu.Lock()
	_, err = io.ReadFull(s.rand, dek)
	s.randMu.Unlock()
	if err != nil {
		return staged, *act, false, fail(version, ErrInternal, fmt.Errorf("random source: %w", err))
	}
	aad := Identity(s.schema, keyName, version)
	wrapped, kekVersion, err := kek.Wrap(ctx, dek, aad)
	if err != nil {
		return staged, *act, false, fail(version, ErrKMS, err)
	}
	// As in create: a wrap that does not unwrap to the same key would lose
	// every value written under it.
	pt, _, err := kek.Unwrap(ctx, wrapped, aad)
	if err != nil {
		return staged, *act, false, fail(version, ErrKMS, fmt.Errorf("verifying the new wrapped key: %w", err))
	}
	same := subtle.ConstantTimeCompare(pt, dek) == 1
	clear(pt)
	if !same {
		return staged, *act, false, fail(version, ErrKMS, errors.New("verifying the new wrapped key: it unwraps to a different key"))
	}
	var id int32
	if err := tx.QueryRow(ctx, "INSERT INTO "+s.table+" (key_name, dek_version, wrapped, kek_name, kek_version, state) "+
		"VALUES ($1, $2, $3, $4, $5, 'retired') RETURNING id",
		keyName, version, wrapped, kek.Name(), kekVersion).Scan(&id); err != nil {
		return staged, *act, false, fail(version, ErrKeystore, err)
	}
	var info DEKInfo
	if err := tx.QueryRow(ctx, "SELECT "+dekInfoColumns+" FROM "+s.table+" WHERE id = $1", id).Scan(dekInfoDest(&info)...); err != nil {
		return staged, *act, false, fail(version, ErrKeystore, err)
	}
	info.ID = uint32(id)
	if err := tx.Commit(ctx); err != nil {
		return staged, *act, false, fail(version, ErrKeystore, err)
	}
	// Cache the new DEK now; Live lists it from the next fill on.
	if k, err := crypto.NewKey(uint32(id), dek); err == nil {
		now := s.now().UnixNano()
		s.ids.put(k.ID(), &entry[*crypto.Key]{v: k, expires: now + s.ttl}, now)
	}
	s.live.remove(keyName)
	s.log.Info().Str("key", keyName).Int("dek_version", version).Uint32("dek_id", uint32(id)).
		Str("kek_version", kekVersion).Msg("data key version staged (retired until activated)")
	return info, *act, false, nil
}

// activateDEK is phase 3 of RotateDEK: retire the active version and
// activate staged, in one transaction under the per-key lock.
func (s *Store) activateDEK(ctx context.Context, keyName string, staged DEKInfo) (*Rotation, error) {
	fail := func(kind, cause error) *Error {
		return &Error{Op: "rotate", Key: keyName, DEKVersion: staged.DEKVersion, ID: staged.ID, Kind: kind, Err: cause}
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fail(ErrKeystore, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("dek", s.schema, keyName)); err != nil {
		return nil, fail(ErrKeystore, err)
	}
	versions, err := s.dekVersionsTx(ctx, tx, keyName)
	if err != nil {
		return nil, fail(ErrKeystore, err)
	}
	act, pending := activeAndStaged(versions)
	switch {
	case act != nil && act.ID == staged.ID:
		// Another RotateDEK activated it meanwhile.
		var prev DEKInfo
		for _, v := range versions {
			if v.DEKVersion < act.DEKVersion && (prev.ID == 0 || v.DEKVersion > prev.DEKVersion) {
				prev = v
			}
		}
		s.Invalidate(keyName)
		return &Rotation{Key: keyName, Previous: prev, Active: *act, AlreadyDone: true}, nil
	case act == nil:
		return nil, fail(ErrInvalidArgument, ErrNoActiveDEK)
	case pending == nil || pending.ID != staged.ID:
		return nil, fail(ErrKeystore, errors.New("the staged version changed while waiting (destroyed, or another rotation moved on); run rotate-dek again"))
	}
	// Retire first: data_keys_one_active allows one active row per key.
	if _, err := tx.Exec(ctx, "UPDATE "+s.table+" SET state = 'retired' WHERE id = $1 AND state = 'active'", int32(act.ID)); err != nil {
		return nil, fail(ErrKeystore, err)
	}
	tag, err := tx.Exec(ctx, "UPDATE "+s.table+" SET state = 'active' WHERE id = $1 AND state = 'retired'", int32(staged.ID))
	if err != nil {
		return nil, fail(ErrKeystore, err)
	}
	if tag.RowsAffected() != 1 {
		return nil, fail(ErrKeystore, errors.New("the staged version is no longer retired"))
	}
	var prev, now DEKInfo
	if err := tx.QueryRow(ctx, "SELECT "+dekInfoColumns+" FROM "+s.table+" WHERE id = $1", int32(act.ID)).Scan(dekInfoDest(&prev)...); err != nil {
		return nil, fail(ErrKeystore, err)
	}
	if err := tx.QueryRow(ctx, "SELECT "+dekInfoColumns+" FROM "+s.table+" WHERE id = $1", int32(staged.ID)).Scan(dekInfoDest(&now)...); err != nil {
		return nil, fail(ErrKeystore, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fail(ErrKeystore, err)
	}
	s.Invalidate(keyName)
	s.log.Info().Str("key", keyName).Int("dek_version", now.DEKVersion).Uint32("dek_id", now.ID).
		Int("previous_version", prev.DEKVersion).Uint32("previous_id", prev.ID).Msg("data key rotated: new version active")
	return &Rotation{Key: keyName, Previous: prev, Active: now}, nil
}

// DestroyOptions configure DestroyDEK.
type DestroyOptions struct {
	// MinRetiredAge refuses (ErrRecentlyRetired) a version whose row
	// changed less than this long ago (the keystore's updated_at: when it
	// was retired, or rewrapped): other processes may hold it as their
	// active DEK for up to their CacheTTL after a rotation. Zero means this
	// Store's CacheTTL; negative disables the check (--force).
	MinRetiredAge time.Duration
}

// DestroyDEK crypto-shreds one DEK version: state 'destroyed', wrapped
// NULL (the keystore's trigger never lets it come back). Values encrypted
// under it can never be decrypted again; reads of them fail naming the
// key. It refuses the active version (ErrActiveDEK) and a version retired
// less than MinRetiredAge ago (ErrRecentlyRetired). Destroying a destroyed
// version is a no-op that returns its row. Whether rows still use the
// version is the caller's check (it needs the policy and a table scan; see
// migrate.KeyUsage).
//
// Other processes keep an unwrapped copy in their caches for up to their
// CacheTTL; this process forgets it at once.
func (s *Store) DestroyDEK(ctx context.Context, keyName string, version int, o DestroyOptions) (DEKInfo, error) {
	fail := func(id uint32, kind, cause error) *Error {
		return &Error{Op: "destroy", Key: keyName, DEKVersion: version, ID: id, Kind: kind, Err: cause}
	}
	if err := checkKeyName("destroy", keyName); err != nil {
		return DEKInfo{}, err
	}
	if version < 1 {
		return DEKInfo{}, fail(0, ErrInvalidArgument, fmt.Errorf("version %d: versions start at 1", version))
	}
	minAge := o.MinRetiredAge
	if minAge == 0 {
		minAge = time.Duration(s.ttl)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return DEKInfo{}, fail(0, ErrKeystore, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("dek", s.schema, keyName)); err != nil {
		return DEKInfo{}, fail(0, ErrKeystore, err)
	}
	var info DEKInfo
	var ageMicros int64
	err = tx.QueryRow(ctx, "SELECT "+dekInfoColumns+", (extract(epoch FROM now() - updated_at) * 1e6)::bigint FROM "+s.table+
		" WHERE key_name = $1 AND dek_version = $2 FOR UPDATE", keyName, version).Scan(append(dekInfoDest(&info), &ageMicros)...)
	age := time.Duration(ageMicros) * time.Microsecond
	if errors.Is(err, pgx.ErrNoRows) {
		return DEKInfo{}, fail(0, ErrNotFound, nil)
	}
	if err != nil {
		return DEKInfo{}, fail(0, ErrKeystore, err)
	}
	switch info.State {
	case StateDestroyed:
		return info, nil
	case StateActive:
		return info, fail(info.ID, ErrInvalidArgument, ErrActiveDEK)
	}
	if minAge > 0 && age < minAge {
		return info, fail(info.ID, ErrInvalidArgument, fmt.Errorf("%w (changed %v ago; wait until %v have passed, or force)",
			ErrRecentlyRetired, age.Round(time.Second), minAge))
	}
	if _, err := tx.Exec(ctx, "UPDATE "+s.table+" SET state = 'destroyed', wrapped = NULL WHERE id = $1", int32(info.ID)); err != nil {
		return info, fail(info.ID, ErrKeystore, err)
	}
	if err := tx.QueryRow(ctx, "SELECT "+dekInfoColumns+" FROM "+s.table+" WHERE id = $1", int32(info.ID)).Scan(dekInfoDest(&info)...); err != nil {
		return info, fail(info.ID, ErrKeystore, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return info, fail(info.ID, ErrKeystore, err)
	}
	s.ids.remove(info.ID)
	s.failed.remove(info.ID)
	s.Invalidate(keyName)
	s.log.Warn().Str("key", keyName).Int("dek_version", version).Uint32("dek_id", info.ID).
		Msg("data key destroyed: values encrypted under it can no longer be decrypted")
	return info, nil
}

// dekInfoColumns are the data_keys columns of a DEKInfo, scanned by dekInfoDest.
const dekInfoColumns = "id, key_name, dek_version, kek_name, kek_version, state, created_at, updated_at"

// dekInfoDest returns scan destinations for dekInfoColumns; the id lands in
// d.ID through a uint32 conversion done by pgx (int4 → uint32 is checked).
func dekInfoDest(d *DEKInfo) []any {
	return []any{&d.ID, &d.Key, &d.DEKVersion, &d.KEKName, &d.KEKVersion, &d.State, &d.CreatedAt, &d.UpdatedAt}
}

// dekVersionsTx lists every version of keyName, oldest first.
func (s *Store) dekVersionsTx(ctx context.Context, tx pgx.Tx, keyName string) ([]DEKInfo, error) {
	rows, err := tx.Query(ctx, "SELECT "+dekInfoColumns+" FROM "+s.table+" WHERE key_name = $1 ORDER BY dek_version", keyName)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (DEKInfo, error) {
		var d DEKInfo
		err := r.Scan(dekInfoDest(&d)...)
		return d, err
	})
}

// activeAndStaged picks, from a key's versions, the active one and a
// staged one: a 'retired' version newer than the active one, which only a
// rotation's phase 1 makes. Several staged versions cannot arise through
// this package; the newest wins.
func activeAndStaged(versions []DEKInfo) (active, staged *DEKInfo) {
	for i := range versions {
		if versions[i].State == StateActive {
			active = &versions[i]
		}
	}
	if active == nil {
		return nil, nil
	}
	for i := range versions {
		v := &versions[i]
		if v.State == StateRetired && v.DEKVersion > active.DEKVersion && (staged == nil || v.DEKVersion > staged.DEKVersion) {
			staged = v
		}
	}
	return active, staged
}

// sleepDEKWait waits d or until ctx ends.
func sleepDEKWait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
