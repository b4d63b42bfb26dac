package keys

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
)

// ids returns the ids of ks, in order.
func ids(ks []*crypto.Key) []uint32 {
	out := make([]uint32, len(ks))
	for i, k := range ks {
		out[i] = k.ID()
	}
	return out
}

func equalIDs(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestRotateDEKTwoPhase: two replicas share a keystore. While the new
// version is staged, both replicas' Live lists include it and both still
// encrypt under the old one; after activation the rotating replica
// encrypts under the new one at once, the other within its TTL, and every
// value written under either version decrypts and is found by a
// deterministic lookup through Live.
func TestRotateDEKTwoPhase(t *testing.T) {
	ctx := t.Context()
	p := pool(t, "")
	b := newLocal(t)
	clk := newClock()
	const ttl = time.Minute
	schema := schemaFor(t)
	a := open(t, p, b.keks(), Options{Schema: schema, CacheTTL: ttl, Now: clk.Now})
	other := open(t, p, b.keks(), Options{Schema: schema, CacheTTL: ttl, Now: clk.Now})

	v1, err := a.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	// The other replica has v1 as its active DEK and its live list cached.
	if k, err := other.Current(ctx, "pii", "local"); err != nil || k.ID() != v1.ID() {
		t.Fatalf("other replica current: %v %v", k, err)
	}
	if live, err := other.Live(ctx, "pii"); err != nil || !equalIDs(ids(live), []uint32{v1.ID()}) {
		t.Fatalf("other replica live: %v %v", live, err)
	}
	oldEnv, err := v1.Encrypt(nil, crypto.ModeDeterministic, []byte("alice@example.com"), aad, nil)
	if err != nil {
		t.Fatal(err)
	}

	clk.Advance(time.Second) // time passes between those fills and the rotation
	var stagedID uint32
	var slept []time.Duration
	r, err := a.RotateDEK(ctx, "pii", "local", RotateOptions{
		OnStaged: func(st DEKInfo, wait time.Duration, resumed bool) {
			stagedID = st.ID
			if st.State != StateRetired || st.DEKVersion != 2 || resumed {
				t.Errorf("staged %+v resumed=%v", st, resumed)
			}
			if wait <= ttl-10*time.Second || wait > ttl {
				t.Errorf("wait %v, want about the cache TTL %v", wait, ttl)
			}
			// Staged: still nobody writes under it.
			for name, s := range map[string]*Store{"rotating": a, "other": other} {
				if k, err := s.Current(ctx, "pii", "local"); err != nil || k.ID() != v1.ID() {
					t.Errorf("%s replica current while staged: %v %v", name, k, err)
				}
			}
		},
		Sleep: func(_ context.Context, d time.Duration) error {
			slept = append(slept, d)
			clk.Advance(d)
			// Every replica's caches have expired by now: their Live
			// includes the staged version before anybody writes under it.
			live, err := other.Live(ctx, "pii")
			if err != nil || !equalIDs(ids(live), []uint32{stagedID, v1.ID()}) {
				t.Errorf("other replica live after the wait: %v %v", ids(live), err)
			}
			if k, err := other.Current(ctx, "pii", "local"); err != nil || k.ID() != v1.ID() {
				t.Errorf("other replica current before activation: %v %v", k, err)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(slept) != 1 || r.Resumed || r.AlreadyDone || r.Active.ID != stagedID || r.Active.DEKVersion != 2 ||
		r.Active.State != StateActive || r.Previous.ID != v1.ID() || r.Previous.State != StateRetired {
		t.Fatalf("rotation %+v, slept %v", r, slept)
	}

	// The rotating replica writes under v2 at once.
	v2, err := a.Current(ctx, "pii", "local")
	if err != nil || v2.ID() != stagedID {
		t.Fatalf("current after rotation: %v %v", v2, err)
	}
	// The other one still writes under v1 until its TTL passes, which is
	// harmless: v1 is live everywhere.
	if k, err := other.Current(ctx, "pii", "local"); err != nil || k.ID() != v1.ID() {
		t.Fatalf("other replica within its TTL: %v %v", k, err)
	}
	clk.Advance(ttl)
	if k, err := other.Current(ctx, "pii", "local"); err != nil || k.ID() != v2.ID() {
		t.Fatalf("other replica after its TTL: %v %v", k, err)
	}

	// Deterministic lookups: the candidates under every live version match
	// values written under either.
	newEnv, err := v2.Encrypt(nil, crypto.ModeDeterministic, []byte("bob@example.com"), aad, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, other} {
		live, err := s.Live(ctx, "pii")
		if err != nil {
			t.Fatal(err)
		}
		for pt, env := range map[string][]byte{"alice@example.com": oldEnv, "bob@example.com": newEnv} {
			found := false
			for _, k := range live {
				c, err := k.Encrypt(nil, crypto.ModeDeterministic, []byte(pt), aad, nil)
				if err != nil {
					t.Fatal(err)
				}
				found = found || bytes.Equal(c, env)
			}
			if !found {
				t.Fatalf("lookup of %s misses across versions %v", pt, ids(live))
			}
		}
		// And both decrypt by id.
		for _, env := range [][]byte{oldEnv, newEnv} {
			h, _ := crypto.ParseHeader(env)
			k, err := s.ByID(ctx, h.KeyID)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := k.Decrypt(nil, env, aad); err != nil {
				t.Fatal(err)
			}
		}
	}

	got := dump(t, p, schema)
	if len(got) != 2 || got[0].State != StateRetired || got[1].State != StateActive || got[1].Version != 2 {
		t.Fatalf("keystore after rotation: %+v", got)
	}
}

// TestRotateDEKResume: a rotation interrupted while waiting leaves the new
// version staged; running it again waits only what is left of the wait and
// activates the same version.
func TestRotateDEKResume(t *testing.T) {
	ctx := t.Context()
	p := pool(t, "")
	b := newLocal(t)
	s := open(t, p, b.keks(), Options{})
	v1, err := s.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	const wait = time.Hour
	interrupted := errors.New("operator pressed Ctrl-C")
	_, err = s.RotateDEK(ctx, "pii", "local", RotateOptions{Wait: wait,
		Sleep: func(context.Context, time.Duration) error { return interrupted }})
	if !errors.Is(err, interrupted) {
		t.Fatalf("interrupted rotation: %v", err)
	}
	rows := dump(t, p, schemaFor(t))
	if len(rows) != 2 || rows[0].State != StateActive || rows[1].State != StateRetired || rows[1].Version != 2 {
		t.Fatalf("after an interrupted rotation: %+v", rows)
	}
	if k, err := s.Current(ctx, "pii", "local"); err != nil || k.ID() != v1.ID() {
		t.Fatalf("current while staged: %v %v", k, err)
	}
	// Pretend the staging happened 50 minutes ago.
	exec(t, p, "ALTER TABLE "+schemaFor(t)+".data_keys DISABLE TRIGGER data_keys_guard")
	exec(t, p, "UPDATE "+schemaFor(t)+".data_keys SET created_at = now() - interval '50 minutes' WHERE dek_version = 2")
	exec(t, p, "ALTER TABLE "+schemaFor(t)+".data_keys ENABLE TRIGGER data_keys_guard")

	var slept time.Duration
	var resumedSeen bool
	r, err := s.RotateDEK(ctx, "pii", "local", RotateOptions{Wait: wait,
		OnStaged: func(_ DEKInfo, _ time.Duration, resumed bool) { resumedSeen = resumed },
		Sleep:    func(_ context.Context, d time.Duration) error { slept = d; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Resumed || !resumedSeen || r.Active.DEKVersion != 2 || r.Active.ID != uint32(rows[1].ID) {
		t.Fatalf("resumed rotation: %+v", r)
	}
	if slept < 9*time.Minute || slept > 10*time.Minute {
		t.Fatalf("resumed rotation waited %v, want the 10 minutes left", slept)
	}
	if k, err := s.Current(ctx, "pii", "local"); err != nil || k.ID() != r.Active.ID {
		t.Fatalf("current after the resumed rotation: %v %v", k, err)
	}

	// The wrapped DEK of the staged row is bound to its identity, as for
	// created ones: a fresh Store unwraps it.
	fresh := open(t, p, b.keks(), Options{Schema: schemaFor(t)})
	if _, err := fresh.ByID(ctx, r.Active.ID); err != nil {
		t.Fatal(err)
	}
}

// TestRotateDEKConcurrent: replicas rotating at once (each reaching its
// wait before any activates) make exactly one new version, and exactly one
// of them activates it.
func TestRotateDEKConcurrent(t *testing.T) {
	ctx := t.Context()
	p := pool(t, "")
	b := newLocal(t)
	schema := schemaFor(t)
	first := open(t, p, b.keks(), Options{Schema: schema})
	if _, err := first.Current(ctx, "pii", "local"); err != nil {
		t.Fatal(err)
	}
	const n = 6
	var wg, arrived sync.WaitGroup
	arrived.Add(n)
	barrier := func(context.Context, time.Duration) error {
		arrived.Done()
		arrived.Wait()
		return nil
	}
	results := make(chan *Rotation, n)
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			s := open(t, p, b.keks(), Options{Schema: schema})
			r, err := s.RotateDEK(ctx, "pii", "local", RotateOptions{Wait: time.Hour, Sleep: barrier})
			if err != nil {
				errs <- err
				return
			}
			results <- r
		})
	}
	wg.Wait()
	close(results)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var active uint32
	done := 0
	for r := range results {
		if active != 0 && r.Active.ID != active {
			t.Fatalf("two different active versions: %d and %d", active, r.Active.ID)
		}
		active = r.Active.ID
		if !r.AlreadyDone {
			done++
		}
	}
	if done != 1 {
		t.Fatalf("%d rotations activated a version, want 1", done)
	}
	rows := dump(t, p, schema)
	if len(rows) != 2 || rows[1].State != StateActive || uint32(rows[1].ID) != active || rows[0].State != StateRetired {
		t.Fatalf("keystore: %+v", rows)
	}
}

func TestRotateDEKRefusals(t *testing.T) {
	ctx := t.Context()
	p := pool(t, "")
	b := newLocal(t)
	s := open(t, p, b.keks(), Options{})
	_, err := s.RotateDEK(ctx, "pii", "local", RotateOptions{Wait: -1})
	if !errors.Is(err, ErrNoActiveDEK) || !IsUserError(err) {
		t.Fatalf("rotate without a DEK: %v", err)
	}
	if _, err := s.Current(ctx, "pii", "local"); err != nil {
		t.Fatal(err)
	}
	_, err = s.RotateDEK(ctx, "pii", "gcp", RotateOptions{Wait: -1})
	if !errors.Is(err, ErrUnknownKMS) {
		t.Fatalf("rotate under an unconfigured kms: %v", err)
	}
	if _, err := s.RotateDEK(ctx, "", "local", RotateOptions{}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty key name: %v", err)
	}
	ro := open(t, p, b.keks(), Options{Schema: schemaFor(t), ReadOnly: true})
	if _, err := ro.RotateDEK(ctx, "pii", "local", RotateOptions{Wait: -1}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only store: %v", err)
	}
	if n := len(dump(t, p, schemaFor(t))); n != 1 {
		t.Fatalf("refused rotations wrote %d rows", n)
	}
}

// TestDestroyDEK: the active version and a just-retired one are refused;
// a destroyed version is gone for this process at once, for the others
// after their TTL, and never comes back.
func TestDestroyDEK(t *testing.T) {
	ctx := t.Context()
	p := pool(t, "")
	b := newLocal(t)
	clk := newClock()
	const ttl = time.Minute
	schema := schemaFor(t)
	s := open(t, p, b.keks(), Options{Schema: schema, CacheTTL: ttl, Now: clk.Now})
	other := open(t, p, b.keks(), Options{Schema: schema, CacheTTL: ttl, Now: clk.Now})
	v1, err := s.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.ByID(ctx, v1.ID()); err != nil { // cached in the other replica
		t.Fatal(err)
	}

	_, err = s.DestroyDEK(ctx, "pii", 1, DestroyOptions{})
	if !errors.Is(err, ErrActiveDEK) || !IsUserError(err) {
		t.Fatalf("destroy the active version: %v", err)
	}
	if _, err := s.DestroyDEK(ctx, "pii", 7, DestroyOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("destroy a missing version: %v", err)
	}
	if _, err := s.RotateDEK(ctx, "pii", "local", RotateOptions{Wait: -1}); err != nil {
		t.Fatal(err)
	}
	_, err = s.DestroyDEK(ctx, "pii", 1, DestroyOptions{})
	if !errors.Is(err, ErrRecentlyRetired) {
		t.Fatalf("destroy a version retired a moment ago: %v", err)
	}
	if rows := dump(t, p, schema); rows[0].State != StateRetired || rows[0].Wrapped == nil {
		t.Fatalf("refused destroys changed the keystore: %+v", rows)
	}

	info, err := s.DestroyDEK(ctx, "pii", 1, DestroyOptions{MinRetiredAge: -1})
	if err != nil {
		t.Fatal(err)
	}
	if info.State != StateDestroyed || info.ID != v1.ID() || info.DEKVersion != 1 {
		t.Fatalf("destroyed: %+v", info)
	}
	rows := dump(t, p, schema)
	if rows[0].State != StateDestroyed || rows[0].Wrapped != nil {
		t.Fatalf("keystore row after destroy: %+v", rows[0])
	}
	// This process forgets it at once; the error names key and version.
	_, err = s.ByID(ctx, v1.ID())
	if !errors.Is(err, ErrDestroyed) || !bytes.Contains([]byte(err.Error()), []byte(`"pii" version 1`)) {
		t.Fatalf("ByID of the destroyed version: %v", err)
	}
	live, err := s.Live(ctx, "pii")
	if err != nil || len(live) != 1 || live[0].ID() == v1.ID() {
		t.Fatalf("live after destroy: %v %v", live, err)
	}
	// Another replica keeps its cached copy for up to its TTL, then fails
	// the same way.
	if _, err := other.ByID(ctx, v1.ID()); err != nil {
		t.Fatalf("other replica within its TTL: %v", err)
	}
	clk.Advance(ttl)
	if _, err := other.ByID(ctx, v1.ID()); !errors.Is(err, ErrDestroyed) {
		t.Fatalf("other replica after its TTL: %v", err)
	}
	// A fresh process cannot decrypt either.
	fresh := open(t, p, b.keks(), Options{Schema: schema})
	if k, err := fresh.ByID(ctx, v1.ID()); !errors.Is(err, ErrDestroyed) {
		t.Fatalf("fresh process: %v %v", k, err)
	}

	// Idempotent, and final.
	if again, err := s.DestroyDEK(ctx, "pii", 1, DestroyOptions{}); err != nil || again.State != StateDestroyed {
		t.Fatalf("destroy again: %+v %v", again, err)
	}
	if _, err := p.Exec(ctx, "UPDATE "+schema+".data_keys SET state = 'retired' WHERE id = $1", int32(v1.ID())); err == nil {
		t.Fatal("a destroyed data key came back")
	}

	// Once a version has been retired for the TTL, no force is needed.
	if _, err := s.RotateDEK(ctx, "pii", "local", RotateOptions{Wait: -1}); err != nil {
		t.Fatal(err)
	}
	exec(t, p, "ALTER TABLE "+schema+".data_keys DISABLE TRIGGER data_keys_guard")
	exec(t, p, "UPDATE "+schema+".data_keys SET updated_at = now() - interval '2 minutes' WHERE dek_version = 2")
	exec(t, p, "ALTER TABLE "+schema+".data_keys ENABLE TRIGGER data_keys_guard")
	if _, err := s.DestroyDEK(ctx, "pii", 2, DestroyOptions{}); err != nil {
		t.Fatalf("destroy a version retired for longer than the TTL: %v", err)
	}
}
