package keys

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// value is a field value encrypted under a DEK, to prove it still decrypts.
type sealedValue struct {
	id      uint32
	env, pt []byte
}

// seedDEKs creates (through the Store) the first DEK of each key name and
// encrypts two values under each.
func seedDEKs(t testing.TB, s *Store, b *backend, names ...string) []sealedValue {
	t.Helper()
	var out []sealedValue
	for _, n := range names {
		k, err := s.Current(t.Context(), n, b.name)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			pt := fmt.Appendf(nil, "%s secret %d", n, i)
			env, err := k.Encrypt(nil, crypto.Mode(1+i%2), pt, aad, nil)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, sealedValue{k.ID(), env, pt})
		}
	}
	return out
}

// checkValues decrypts every value with a fresh Store (cold cache: every
// DEK is unwrapped through the KMS from its current row).
func checkValues(t testing.TB, p *pgxpool.Pool, b *backend, schema string, vals []sealedValue) {
	t.Helper()
	s := open(t, p, b.keks(), Options{Schema: schema})
	for _, v := range vals {
		k, err := s.ByID(t.Context(), v.id)
		if err != nil {
			t.Fatalf("DEK %d: %v", v.id, err)
		}
		pt, err := k.Decrypt(nil, v.env, aad)
		if err != nil || !bytes.Equal(pt, v.pt) {
			t.Fatalf("DEK %d: decrypt %q, %v; want %q", v.id, pt, err, v.pt)
		}
	}
}

// states returns the KMS state of every version by full name, and the primary.
func kekStates(t testing.TB, b *backend) (map[string]kms.VersionState, string) {
	t.Helper()
	vs, err := b.kek.KEK.Versions(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]kms.VersionState{}
	primary := ""
	for _, v := range vs {
		m[v.Name] = v.State
		if v.Primary {
			primary = v.Name
		}
	}
	return m, primary
}

// checkReferenced fails if a non-destroyed DEK's KEK version is not ENABLED:
// invariant 3 of DESIGN.md.
func checkReferenced(t testing.TB, p *pgxpool.Pool, b *backend, schema string) {
	t.Helper()
	st, _ := kekStates(t, b)
	for _, r := range dump(t, p, schema) {
		if r.State != StateDestroyed && st[r.KEKVersion] != kms.StateEnabled {
			t.Fatalf("DEK %d (%s v%d) is wrapped under %s, which is %v", r.ID, r.Key, r.Version, r.KEKVersion, st[r.KEKVersion])
		}
	}
}

// rotateKMS makes a new primary as the KMS would on its own.
func rotateKMS(t testing.TB, b *backend) string {
	t.Helper()
	var v string
	var err error
	if b.srv != nil {
		v, err = b.srv.AutoRotate(gcpKey)
	} else {
		v, err = b.kek.KEK.(kms.Rotator).Rotate(t.Context())
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func versionOf(b *backend, id string) string { return kms.VersionName(b.kek.Name(), id) }

func newRotator(t testing.TB, p *pgxpool.Pool, b *backend, c *clock, o RotatorOptions) *Rotator {
	t.Helper()
	if o.Schema == "" {
		o.Schema = schemaFor(t)
	}
	if o.Now == nil {
		o.Now = c.Now
	}
	if o.RateLimit == 0 {
		o.RateLimit = -1
	}
	r, err := NewRotator(p, b.keks(), o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustPass(t testing.TB, r *Rotator) *PassResult {
	t.Helper()
	res, err := r.Pass(t.Context())
	if err != nil {
		t.Fatalf("pass: %v", err)
	}
	return res
}

// TestRotateCycle: the KMS rotates; a pass rewraps every DEK (each value
// still decrypts), the old version is disabled after DisableDelay and
// destroyed after the grace, never while referenced, never the primary.
func TestRotateCycle(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := t.Context()
		p := pool(t, "")
		schema := schemaFor(t)
		s := open(t, p, b.keks(), Options{})
		c := newClock()
		const grace = 720 * time.Hour
		var results []*PassResult
		r := newRotator(t, p, b, c, RotatorOptions{DestroyRetired: true, DestroyGrace: grace,
			OnPass: func(res *PassResult) { results = append(results, res) }})
		v1, v2, v3 := versionOf(b, "1"), versionOf(b, "2"), versionOf(b, "3")

		vals := seedDEKs(t, s, b, "a", "b", "c")
		// Nothing to do yet: no rewrap, nothing retired.
		res := mustPass(t, r)
		if res.Rewrapped != 0 || len(res.Disabled) != 0 || !reflect.DeepEqual(res.DEKsByKEKVersion, map[string]int{v1: 3}) {
			t.Fatalf("pass before rotation: %+v", res)
		}

		rotateKMS(t, b)
		vals = append(vals, seedDEKs(t, s, b, "d")...) // created under v2 already
		c.Advance(DefaultPollInterval)                 // the cached version list expires
		wraps, unwraps := b.kek.wraps.Load(), b.kek.unwraps.Load()
		res = mustPass(t, r)
		if res.Rewrapped != 3 || res.Failed != 0 || res.Raced != 0 {
			t.Fatalf("pass after rotation: %+v", res)
		}
		if w, u := b.kek.wraps.Load()-wraps, b.kek.unwraps.Load()-unwraps; w != 3 || u != 6 {
			t.Fatalf("pass made %d wraps and %d unwraps, want 3 and 6", w, u)
		}
		for _, row := range dump(t, p, schema) {
			if row.KEKVersion != v2 {
				t.Fatalf("row %+v not rewrapped to %s", row, v2)
			}
		}
		if !reflect.DeepEqual(res.DEKsByKEKVersion, map[string]int{v2: 4}) {
			t.Fatalf("DEKs by KEK version: %v", res.DEKsByKEKVersion)
		}
		// v1 is unreferenced, but not disabled before DisableDelay.
		if len(res.Disabled) != 0 || len(res.Retiring) != 1 || res.Retiring[0].Version != v1 || res.Retiring[0].State != "unreferenced" {
			t.Fatalf("retiring: %+v, disabled %v", res.Retiring, res.Disabled)
		}
		checkValues(t, p, b, schema, vals)

		// A pass with nothing to do makes no wrap.
		wraps = b.kek.wraps.Load()
		if res = mustPass(t, r); res.Rewrapped != 0 || b.kek.wraps.Load() != wraps || len(res.Disabled) != 0 {
			t.Fatalf("idle pass: %+v", res)
		}

		c.Advance(DefaultDisableDelay)
		res = mustPass(t, r)
		if !reflect.DeepEqual(res.Disabled, []string{v1}) {
			t.Fatalf("disabled %v, want [%s]", res.Disabled, v1)
		}
		if st, _ := kekStates(t, b); st[v1] != kms.StateDisabled || st[v2] != kms.StateEnabled {
			t.Fatalf("states after disable: %v", st)
		}
		checkValues(t, p, b, schema, vals)
		checkReferenced(t, p, b, schema)

		// Not destroyed before the grace.
		c.Advance(grace - time.Second)
		if res = mustPass(t, r); len(res.Destroyed) != 0 {
			t.Fatalf("destroyed before the grace: %v", res.Destroyed)
		}
		if len(res.Retiring) != 1 || res.Retiring[0].State != "disabled" || !res.Retiring[0].Next.Equal(res.Retiring[0].Since.Add(grace)) {
			t.Fatalf("retiring: %+v", res.Retiring)
		}
		c.Advance(time.Second)
		unwraps = b.kek.unwraps.Load()
		res = mustPass(t, r)
		if !reflect.DeepEqual(res.Destroyed, []string{v1}) {
			t.Fatalf("destroyed %v, want [%s] (%v)", res.Destroyed, v1, res.Err)
		}
		if u := b.kek.unwraps.Load() - unwraps; u != 4 {
			t.Fatalf("the destroy's proof made %d unwraps, want one per DEK (4)", u)
		}
		want := kms.StateDestroyed
		if b.srv != nil {
			want = kms.StateDestroyScheduled
		}
		if st, _ := kekStates(t, b); st[v1] != want || st[v2] != kms.StateEnabled {
			t.Fatalf("states after destroy: %v", st)
		}
		checkValues(t, p, b, schema, vals)

		// The next rotation: the same cycle, and v2 goes the same way.
		rotateKMS(t, b)
		c.Advance(DefaultPollInterval)
		if res = mustPass(t, r); res.Rewrapped != 4 {
			t.Fatalf("second rotation: %+v", res)
		}
		c.Advance(DefaultDisableDelay)
		if res = mustPass(t, r); !reflect.DeepEqual(res.Disabled, []string{v2}) {
			t.Fatalf("second rotation disabled %v", res.Disabled)
		}
		checkValues(t, p, b, schema, vals)
		checkReferenced(t, p, b, schema)
		if st, primary := kekStates(t, b); primary != v3 || st[v3] != kms.StateEnabled {
			t.Fatalf("primary %s, states %v", primary, st)
		}
		var recs []string
		rows, err := p.Query(ctx, "SELECT kek_version, disabled_at IS NOT NULL, destroyed_at IS NOT NULL FROM "+schema+".kek_versions ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var v string
			var dis, des bool
			if err := rows.Scan(&v, &dis, &des); err != nil {
				t.Fatal(err)
			}
			recs = append(recs, fmt.Sprintf("%s %v %v", kms.VersionID(v), dis, des))
		}
		if got := strings.Join(recs, "; "); got != "1 true true; 2 true false" {
			t.Fatalf("kek_versions: %s", got)
		}
		if len(results) != 8 || !results[len(results)-1].OK() {
			t.Fatalf("OnPass saw %d passes", len(results))
		}
	})
}

// TestRotateDestroyOff: with destroy_retired_versions off, a disabled
// version stays disabled for ever.
func TestRotateDestroyOff(t *testing.T) {
	b := newLocal(t)
	p := pool(t, "")
	s := open(t, p, b.keks(), Options{})
	c := newClock()
	r := newRotator(t, p, b, c, RotatorOptions{DisableDelay: -1, DestroyGrace: time.Hour})
	seedDEKs(t, s, b, "a")
	rotateKMS(t, b)
	if res := mustPass(t, r); res.Rewrapped != 1 || len(res.Disabled) != 1 {
		t.Fatalf("pass: %+v", res)
	}
	c.Advance(10 * 365 * 24 * time.Hour)
	res := mustPass(t, r)
	if len(res.Destroyed) != 0 || len(res.Retiring) != 1 || !res.Retiring[0].Next.IsZero() {
		t.Fatalf("pass years later: %+v", res)
	}
	if st, _ := kekStates(t, b); st[versionOf(b, "1")] != kms.StateDisabled {
		t.Fatalf("states: %v", st)
	}
}

// TestRotateKeepVersions: with KeepVersions a pass rewraps but never
// changes a version's state; a pass without it then retires.
func TestRotateKeepVersions(t *testing.T) {
	b := newLocal(t)
	p := pool(t, "")
	s := open(t, p, b.keks(), Options{})
	c := newClock()
	seedDEKs(t, s, b, "a")
	rotateKMS(t, b)
	keep := newRotator(t, p, b, c, RotatorOptions{DisableDelay: -1, DestroyRetired: true, DestroyGrace: time.Nanosecond, KeepVersions: true})
	if res := mustPass(t, keep); res.Rewrapped != 1 || len(res.Disabled) != 0 || len(res.Destroyed) != 0 {
		t.Fatalf("pass keeping versions: %+v", res)
	}
	if st, _ := kekStates(t, b); st[versionOf(b, "1")] != kms.StateEnabled {
		t.Fatalf("a kept version changed state: %v", st)
	}
	retire := newRotator(t, p, b, c, RotatorOptions{DisableDelay: -1})
	if res := mustPass(t, retire); len(res.Disabled) != 1 {
		t.Fatalf("privileged pass: %+v", res)
	}
}

// TestRotatePrimaryCache: the version list is read once per PollInterval;
// a Wrap reporting another version, or Trigger, end the reuse.
func TestRotatePrimaryCache(t *testing.T) {
	b := newGCP(t, kms.GCPOptions{})
	p := pool(t, "")
	schema := schemaFor(t)
	s := open(t, p, b.keks(), Options{})
	c := newClock()
	r := newRotator(t, p, b, c, RotatorOptions{})
	vals := seedDEKs(t, s, b, "a", "b")
	mustPass(t, r)
	lists := b.srv.Calls("ListCryptoKeyVersions")
	rotateKMS(t, b)
	// Within the poll interval: the old list is reused; no read, no rewrap.
	if res := mustPass(t, r); res.Rewrapped != 0 || b.srv.Calls("ListCryptoKeyVersions") != lists {
		t.Fatalf("pass within the poll interval: %+v, %d lists", res, b.srv.Calls("ListCryptoKeyVersions")-lists)
	}
	// A DEK created under v2 meanwhile: its Unwrap says usedPrimary, which
	// makes the pass read the list again.
	vals = append(vals, seedDEKs(t, s, b, "c")...)
	res := mustPass(t, r)
	if b.srv.Calls("ListCryptoKeyVersions") != lists+1 {
		t.Fatalf("usedPrimary did not refresh the version list: %+v", res)
	}
	// The list now says v2: the next pass rewraps the v1 DEKs.
	if res = mustPass(t, r); res.Rewrapped != 2 {
		t.Fatalf("pass after the refresh: %+v", res)
	}
	checkValues(t, p, b, schema, vals)

	// Wrap reporting a newer version than believed: rows are stored with
	// the version Wrap used, and the list is read again next pass.
	rotateKMS(t, b) // v3, unknown to the rotator
	// Row a's kek_version is wrong, say.
	exec(t, p, "UPDATE "+schema+".data_keys SET kek_version = $1 WHERE key_name = 'a'", versionOf(b, "1"))
	lists = b.srv.Calls("ListCryptoKeyVersions")
	// Row a (kek_version says 1) is rewrapped: Wrap reports 3, which the
	// pass then uses as the primary for the rows after a (b and c, under 2).
	res = mustPass(t, r)
	if res.Rewrapped != 3 {
		t.Fatalf("pass: %+v", res)
	}
	for _, row := range dump(t, p, schema) {
		if row.KEKVersion != versionOf(b, "3") {
			t.Fatalf("row %s stored %s, want the version Wrap reported (3)", row.Key, row.KEKVersion)
		}
	}
	if b.srv.Calls("ListCryptoKeyVersions") != lists+1 {
		t.Fatal("a Wrap under another version did not make the pass read the version list again")
	}
	checkValues(t, p, b, schema, vals)
}

var errCrash = errors.New("simulated crash")

// TestRotateCrash stops a pass at every step, as a crash would, then checks
// that every value still decrypts and no referenced version was disabled or
// destroyed, and that the next passes complete the cycle.
func TestRotateCrash(t *testing.T) {
	type step struct {
		name string
		nth  int64 // crash the nth time the step is reached
		set  func(h *rotateHooks, crash func() error)
	}
	steps := []step{
		{"after unwrap", 3, func(h *rotateHooks, f func() error) { h.afterUnwrap = func(uint32) error { return f() } }},
		{"after wrap", 3, func(h *rotateHooks, f func() error) { h.afterWrap = func(uint32) error { return f() } }},
		{"after update", 3, func(h *rotateHooks, f func() error) { h.afterUpdate = func(uint32) error { return f() } }},
		{"after disable", 1, func(h *rotateHooks, f func() error) { h.afterDisable = func(string) error { return f() } }},
		{"before destroy", 1, func(h *rotateHooks, f func() error) { h.beforeDestroy = func(string) error { return f() } }},
		{"after destroy", 1, func(h *rotateHooks, f func() error) { h.afterDestroy = func(string) error { return f() } }},
	}
	eachBackend(t, func(t *testing.T, b *backend) {
		for _, st := range steps {
			t.Run(strings.ReplaceAll(st.name, " ", "_"), func(t *testing.T) {
				p := pool(t, "")
				schema := schemaFor(t)
				s := open(t, p, b.keks(), Options{Schema: schema})
				c := newClock()
				const grace = time.Hour
				o := RotatorOptions{Schema: schema, DestroyRetired: true, DestroyGrace: grace, Workers: 2, BatchSize: 3}
				vals := seedDEKs(t, s, b, "a", "b", "c", "d", "e")
				old, _ := kekStates(t, b)
				rotateKMS(t, b)
				var n atomic.Int64
				crashing := newRotator(t, p, b, c, o)
				st.set(&crashing.hooks, func() error {
					if n.Add(1) >= st.nth {
						return errCrash
					}
					return nil
				})
				clean := newRotator(t, p, b, c, o)
				// Bring retirement steps to their point with clean passes.
				crashed := false
				for range 3 {
					_, err := crashing.Pass(t.Context())
					if errors.Is(err, errCrash) {
						crashed = true
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					c.Advance(max(DefaultDisableDelay, grace))
				}
				if !crashed {
					t.Fatalf("the %s step was never reached", st.name)
				}
				checkValues(t, p, b, schema, vals)
				checkReferenced(t, p, b, schema)

				// Clean passes complete the cycle.
				for range 4 {
					mustPass(t, clean)
					checkValues(t, p, b, schema, vals)
					checkReferenced(t, p, b, schema)
					c.Advance(max(DefaultDisableDelay, grace))
				}
				now, primary := kekStates(t, b)
				for v := range old {
					if v == primary {
						continue
					}
					if now[v] != kms.StateDestroyed && now[v] != kms.StateDestroyScheduled {
						t.Fatalf("after the rerun, old version %s is %v (%v)", v, now[v], now)
					}
				}
				for _, row := range dump(t, p, schema) {
					if row.KEKVersion != primary {
						t.Fatalf("row %d still under %s", row.ID, row.KEKVersion)
					}
				}
			})
		}
	})
}

// TestRotateReplicas: two replicas running passes at once rewrap each DEK
// once; without the lock (two passes racing) the compare-and-swap keeps
// every row consistent.
func TestRotateReplicas(t *testing.T) {
	ctx := t.Context()
	b := newGCP(t, kms.GCPOptions{})
	p1, p2 := pool(t, ""), pool(t, "")
	schema := schemaFor(t)
	s := open(t, p1, b.keks(), Options{})
	c := newClock()
	var names []string
	for i := range 60 {
		names = append(names, fmt.Sprintf("k%02d", i))
	}
	vals := seedDEKs(t, s, b, names...)

	t.Run("locked", func(t *testing.T) {
		rotateKMS(t, b)
		r1 := newRotator(t, p1, b, c, RotatorOptions{Schema: schema, Workers: 4})
		r2 := newRotator(t, p2, b, c, RotatorOptions{Schema: schema, Workers: 4})
		wraps := b.srv.Calls("Encrypt")
		var wg sync.WaitGroup
		results := make([]*PassResult, 4)
		for i := range results {
			wg.Go(func() {
				r := []*Rotator{r1, r2}[i%2]
				res, err := r.PassWait(ctx)
				if err != nil {
					t.Error(err)
				}
				results[i] = res
			})
		}
		wg.Wait()
		total := 0
		for _, res := range results {
			if res != nil {
				total += res.Rewrapped + res.Raced
			}
		}
		if w := b.srv.Calls("Encrypt") - wraps; w != len(names) || total != len(names) {
			t.Fatalf("%d Encrypt calls, %d rewraps over 4 passes; want %d each", w, total, len(names))
		}
		checkValues(t, p1, b, schema, vals)
	})

	t.Run("busy", func(t *testing.T) {
		r := newRotator(t, p1, b, c, RotatorOptions{Schema: schema})
		conn, err := p2.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", RotationLockKey(schema)); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Pass(ctx); !errors.Is(err, ErrRotationBusy) {
			t.Fatalf("Pass while another holds the lock: %v", err)
		}
		done := make(chan error, 1)
		go func() { _, err := r.PassWait(ctx); done <- err }()
		select {
		case err := <-done:
			t.Fatalf("PassWait did not wait: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", RotationLockKey(schema)); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("PassWait after the release: %v", err)
		}
		// The lock is released after the pass (the connection is closed).
		if _, err := r.Pass(ctx); err != nil {
			t.Fatalf("Pass after a pass: %v", err)
		}
	})

	t.Run("unlocked race", func(t *testing.T) {
		rotateKMS(t, b)
		r1 := newRotator(t, p1, b, c, RotatorOptions{Schema: schema, Workers: 8})
		r2 := newRotator(t, p2, b, c, RotatorOptions{Schema: schema, Workers: 8})
		wraps := b.srv.Calls("Encrypt")
		var res [2]*PassResult
		var wg sync.WaitGroup
		for i, r := range []*Rotator{r1, r2} {
			wg.Go(func() { res[i] = r.pass(ctx, nil) })
		}
		wg.Wait()
		if res[0].Err != nil || res[1].Err != nil {
			t.Fatal(res[0].Err, res[1].Err)
		}
		w := b.srv.Calls("Encrypt") - wraps
		if n := res[0].Rewrapped + res[1].Rewrapped; n != len(names) || res[0].Raced+res[1].Raced != w-len(names) {
			t.Fatalf("rewrapped %d+%d, raced %d+%d, %d wraps; want %d rewraps in all",
				res[0].Rewrapped, res[1].Rewrapped, res[0].Raced, res[1].Raced, w, len(names))
		}
		t.Logf("two unlocked passes: %d wraps for %d DEKs (%d lost the compare-and-swap)", w, len(names), w-len(names))
		_, primary := kekStates(t, b)
		for _, row := range dump(t, p1, schema) {
			if row.KEKVersion != primary {
				t.Fatalf("row %d under %s", row.ID, row.KEKVersion)
			}
		}
		checkValues(t, p1, b, schema, vals)
	})
}

// TestRotateKMSFaults: KMS errors and timeouts mid-pass leave every row with
// its old or its new blob, both decrypting; the next pass completes.
func TestRotateKMSFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inject func(b *backend)
		// the pass stops this KEK's rewrap (the KMS is down), or fails rows
		down bool
	}{
		{"encrypt unavailable", func(b *backend) { b.srv.FailNext("Encrypt", 5, codes.Unavailable) }, false},
		{"decrypt unavailable", func(b *backend) { b.srv.FailNext("Decrypt", 7, codes.Unavailable) }, false},
		{"decrypt checksum", func(b *backend) { b.srv.CorruptNextCRC("Decrypt", 4) }, false},
		{"encrypt permission", func(b *backend) { b.srv.FailNext("Encrypt", 3, codes.PermissionDenied) }, false},
		{"timeouts", func(b *backend) { b.srv.SetLatency("Decrypt", 300*time.Millisecond) }, true},
		{"outage", func(b *backend) { b.srv.FailNext("", -1, codes.Unavailable) }, true},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			b := newGCP(t, kms.GCPOptions{})
			// The rotator's own handle gives up fast; the Store's and the
			// checks' do not.
			g, err := kms.NewGCP(t.Context(), kms.GCPOptions{Key: gcpKey, ClientOptions: b.srv.ClientOptions(),
				RateLimit: -1, CallTimeout: 50 * time.Millisecond, MaxAttempts: 1})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.Close() })
			fast := &backend{name: "gcp", kek: &countingKEK{KEK: g}, srv: b.srv}
			p := pool(t, "")
			schema := schemaFor(t)
			s := open(t, p, b.keks(), Options{})
			c := newClock()
			var names []string
			for i := range 30 {
				names = append(names, fmt.Sprintf("k%02d", i))
			}
			vals := seedDEKs(t, s, b, names...)
			rotateKMS(t, b)
			r := newRotator(t, p, fast, c, RotatorOptions{Workers: 3, BatchSize: 7, DisableDelay: -1})
			tc.inject(b)
			res := r.pass(t.Context(), nil)
			b.srv.ClearFaults()
			t.Logf("pass with faults: rewrapped %d, failed %d: %v", res.Rewrapped, res.Failed, res.Err)
			if res.Err == nil || !errors.Is(res.Err, ErrKMS) {
				t.Fatalf("pass with faults: no KMS error reported: %+v", res)
			}
			if tc.down && res.Rewrapped > len(names)/2 {
				t.Fatalf("the pass went on through a KMS outage: %+v", res)
			}
			if len(res.Disabled)+len(res.Destroyed) != 0 {
				t.Fatalf("retired during faults: %+v", res)
			}
			checkValues(t, p, b, schema, vals)
			checkReferenced(t, p, b, schema)
			res = r.pass(t.Context(), nil)
			if res.Err != nil || res.Failed != 0 {
				t.Fatalf("pass after recovery: %+v", res)
			}
			_, primary := kekStates(t, b)
			for _, row := range dump(t, p, schema) {
				if row.KEKVersion != primary {
					t.Fatalf("row %d under %s after recovery", row.ID, row.KEKVersion)
				}
			}
			checkValues(t, p, b, schema, vals)
		})
	}
}
