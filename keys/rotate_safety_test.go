package keys

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// TestRotateLostVersion: a KMS that lost (or is about to lose) a version
// that DEKs still need is reported loudly, naming the DEKs, and nothing of
// that KEK is retired.
func TestRotateLostVersion(t *testing.T) {
	t.Run("gcp scheduled", func(t *testing.T) {
		ctx := t.Context()
		b := newGCP(t, kms.GCPOptions{})
		p := pool(t, "")
		schema := schemaFor(t)
		s := open(t, p, b.keks(), Options{})
		c := newClock()
		r := newRotator(t, p, b, c, RotatorOptions{DisableDelay: -1, DestroyRetired: true})
		v1, v2, v3 := versionOf(b, "1"), versionOf(b, "2"), versionOf(b, "3")
		vals := seedDEKs(t, s, b, "a", "b")
		rotateKMS(t, b)
		vals = append(vals, seedDEKs(t, s, b, "c")...)
		rotateKMS(t, b)
		// Someone schedules v1 for destruction while a and b need it.
		if err := b.kek.Destroy(ctx, v1); err != nil {
			t.Fatal(err)
		}
		res, err := r.Pass(ctx)
		if !errors.Is(err, ErrKEKVersionAtRisk) {
			t.Fatalf("pass: %v", err)
		}
		t.Logf("reported: %v", err)
		for _, want := range []string{v1, "DESTROY_SCHEDULED", "CAN STILL BE RESTORED", `"a" v1 (id 1)`, `"b" v1 (id 2)`, "2 data key(s) need it"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not say %q", want)
			}
		}
		if len(res.AtRisk) != 1 || res.AtRisk[0].Version != v1 || res.AtRisk[0].DestroyTime.IsZero() || len(res.AtRisk[0].DEKs) != 2 {
			t.Fatalf("at risk: %+v", res.AtRisk)
		}
		// c was rewrapped, so v2 is unreferenced: still not retired.
		if res.Rewrapped != 1 || len(res.Disabled) != 0 {
			t.Fatalf("pass: %+v", res)
		}
		if st, _ := kekStates(t, b); st[v2] != kms.StateEnabled || st[v1] != kms.StateDestroyScheduled {
			t.Fatalf("states: %v", st)
		}
		// Restored in time: the next pass rewraps a and b, then retires.
		if err := b.kek.Enable(ctx, v1); err != nil {
			t.Fatal(err)
		}
		res = mustPass(t, r)
		if res.Rewrapped != 2 || len(res.Disabled) != 2 {
			t.Fatalf("pass after the restore: %+v", res)
		}
		if st, _ := kekStates(t, b); st[v1] != kms.StateDisabled || st[v2] != kms.StateDisabled || st[v3] != kms.StateEnabled {
			t.Fatalf("states: %v", st)
		}
		checkValues(t, p, b, schema, vals)
	})

	t.Run("local destroyed and absent", func(t *testing.T) {
		ctx := t.Context()
		b := newLocal(t)
		p := pool(t, "")
		schema := schemaFor(t)
		s := open(t, p, b.keks(), Options{})
		c := newClock()
		r := newRotator(t, p, b, c, RotatorOptions{DisableDelay: -1})
		vals := seedDEKs(t, s, b, "a", "b")
		rotateKMS(t, b)
		seedDEKs(t, s, b, "c")
		rotateKMS(t, b)
		exec(t, p, "UPDATE "+schema+".data_keys SET kek_version = $1 WHERE key_name = 'b'", versionOf(b, "99"))
		if err := b.kek.Destroy(ctx, "1"); err != nil {
			t.Fatal(err)
		}
		res, err := r.Pass(ctx)
		if !errors.Is(err, ErrKEKVersionAtRisk) || len(res.AtRisk) != 2 {
			t.Fatalf("pass: %v, %+v", err, res.AtRisk)
		}
		t.Logf("reported: %v", err)
		got := fmt.Sprintf("%s %s %d; %s %s %d", kms.VersionID(res.AtRisk[0].Version), res.AtRisk[0].State, len(res.AtRisk[0].DEKs),
			kms.VersionID(res.AtRisk[1].Version), res.AtRisk[1].State, len(res.AtRisk[1].DEKs))
		if got != "1 DESTROYED 1; 99 ABSENT 1" {
			t.Fatalf("at risk: %s", got)
		}
		if !strings.Contains(err.Error(), "cannot be decrypted") || !strings.Contains(err.Error(), "not listed by the KMS") {
			t.Fatalf("error: %v", err)
		}
		if len(res.Disabled) != 0 {
			t.Fatalf("disabled %v while data keys are at risk", res.Disabled)
		}
		if st, _ := kekStates(t, b); st[versionOf(b, "2")] != kms.StateEnabled {
			t.Fatalf("states: %v", st)
		}
		_ = vals
	})

	t.Run("disabled by someone else", func(t *testing.T) {
		ctx := t.Context()
		b := newLocal(t)
		p := pool(t, "")
		s := open(t, p, b.keks(), Options{})
		c := newClock()
		r := newRotator(t, p, b, c, RotatorOptions{DisableDelay: -1})
		seedDEKs(t, s, b, "a")
		rotateKMS(t, b)
		if err := b.kek.Disable(ctx, "1"); err != nil {
			t.Fatal(err)
		}
		_, err := r.Pass(ctx)
		if !errors.Is(err, ErrKEKVersionAtRisk) || !strings.Contains(err.Error(), "is disabled, not by this keystore's rotation") {
			t.Fatalf("pass: %v", err)
		}
		// Not re-enabled behind the operator's back.
		if st, _ := kekStates(t, b); st[versionOf(b, "1")] != kms.StateDisabled {
			t.Fatalf("states: %v", st)
		}
	})
}

// TestRotateReenable: a version this rotation disabled, referenced again (a
// keystore restored from a backup), is re-enabled and its DEKs rewrapped.
func TestRotateReenable(t *testing.T) {
	b := newLocal(t)
	p := pool(t, "")
	schema := schemaFor(t)
	s := open(t, p, b.keks(), Options{})
	c := newClock()
	r := newRotator(t, p, b, c, RotatorOptions{DisableDelay: -1})
	vals := seedDEKs(t, s, b, "a", "b")
	backup := dump(t, p, schema)
	rotateKMS(t, b)
	if res := mustPass(t, r); res.Rewrapped != 2 || len(res.Disabled) != 1 {
		t.Fatalf("pass: %+v", res)
	}
	exec(t, p, "UPDATE "+schema+".data_keys SET wrapped = $2, kek_version = $3 WHERE id = $1", backup[0].ID, backup[0].Wrapped, backup[0].KEKVersion)
	res := mustPass(t, r)
	if len(res.Reenabled) != 1 || res.Reenabled[0] != versionOf(b, "1") || res.Rewrapped != 1 || res.Failed != 0 {
		t.Fatalf("pass after the restore: %+v", res)
	}
	checkValues(t, p, b, schema, vals)
	checkReferenced(t, p, b, schema)
	// Unreferenced again: retired again.
	if res := mustPass(t, r); len(res.Disabled) != 1 {
		t.Fatalf("pass: %+v", res)
	}
}

// TestRotateProof: a DEK whose kek_version column lies (it says the primary,
// its blob is under a disabled version) stops the destruction.
func TestRotateProof(t *testing.T) {
	b := newLocal(t)
	p := pool(t, "")
	schema := schemaFor(t)
	s := open(t, p, b.keks(), Options{})
	c := newClock()
	r := newRotator(t, p, b, c, RotatorOptions{DisableDelay: -1, DestroyRetired: true, DestroyGrace: time.Hour})
	vals := seedDEKs(t, s, b, "a", "b", "c")
	before := dump(t, p, schema)
	rotateKMS(t, b)
	if res := mustPass(t, r); res.Rewrapped != 3 || len(res.Disabled) != 1 {
		t.Fatalf("pass: %+v", res)
	}
	exec(t, p, "UPDATE "+schema+".data_keys SET wrapped = $2 WHERE id = $1", before[0].ID, before[0].Wrapped)
	c.Advance(time.Hour)
	res, err := r.Pass(t.Context())
	if !errors.Is(err, ErrKEKVersionAtRisk) || len(res.Destroyed) != 0 || !strings.Contains(err.Error(), `"a" v1 (id 1)`) {
		t.Fatalf("pass: %v; %+v", err, res)
	}
	t.Logf("reported: %v", err)
	if st, _ := kekStates(t, b); st[versionOf(b, "1")] != kms.StateDisabled {
		t.Fatalf("states: %v", st)
	}
	// Repaired (re-enabled by the operator, rewrapped): destroyed later.
	if err := b.kek.Enable(t.Context(), "1"); err != nil {
		t.Fatal(err)
	}
	exec(t, p, "UPDATE "+schema+".data_keys SET kek_version = $2 WHERE id = $1", before[0].ID, before[0].KEKVersion)
	mustPass(t, r) // rewraps a; v1 restarts its retirement
	mustPass(t, r) // disables v1
	c.Advance(time.Hour)
	if res := mustPass(t, r); len(res.Destroyed) != 1 {
		t.Fatalf("pass: %+v", res)
	}
	checkValues(t, p, b, schema, vals)
}

// TestRotateNoKEK: DEKs wrapped by a KEK the config lacks are reported, not
// touched; a configured KEK without DEKs here is not touched either.
func TestRotateNoKEK(t *testing.T) {
	b1, b2 := newLocal(t), newLocal(t)
	p := pool(t, "")
	schema := schemaFor(t)
	s := open(t, p, b1.keks(), Options{})
	seedDEKs(t, s, b1, "a")
	rotateKMS(t, b2)
	before := dump(t, p, schema)
	r := newRotator(t, p, b2, newClock(), RotatorOptions{DisableDelay: -1})
	_, err := r.Pass(t.Context())
	if !errors.Is(err, ErrNoKEK) || !strings.Contains(err.Error(), b1.kek.Name()) {
		t.Fatalf("pass: %v", err)
	}
	if after := dump(t, p, schema); fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatal("keystore changed")
	}
	if st, _ := kekStates(t, b2); st[versionOf(b2, "1")] != kms.StateEnabled {
		t.Fatalf("a KEK with no DEKs here was retired: %v", st)
	}
}

// TestRotateDuringTraffic: lookups and writes through a Store that reloads
// DEKs all the time see no error while the KMS rotates and passes rewrap,
// disable and destroy.
func TestRotateDuringTraffic(t *testing.T) {
	b := newGCP(t, kms.GCPOptions{})
	p := pool(t, "")
	schema := schemaFor(t)
	s := open(t, p, b.keks(), Options{})
	var names []string
	for i := range 20 {
		names = append(names, fmt.Sprintf("k%02d", i))
	}
	vals := seedDEKs(t, s, b, names...)
	traffic := open(t, p, b.keks(), Options{Schema: schema, CacheTTL: time.Millisecond})
	c := newClock()
	r := newRotator(t, p, b, c, RotatorOptions{DestroyRetired: true, DestroyGrace: time.Hour, Workers: 4})

	stop := make(chan struct{})
	var errs []error
	var mu sync.Mutex
	var ops atomic.Int64
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := w; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				v := vals[i%len(vals)]
				err := func() error {
					k, err := traffic.ByID(t.Context(), v.id)
					if err != nil {
						return err
					}
					if _, err := k.Decrypt(nil, v.env, aad); err != nil {
						return err
					}
					k, err = traffic.Current(t.Context(), names[i%len(names)], b.name)
					if err != nil {
						return err
					}
					env, err := k.Encrypt(nil, crypto.ModeRandomized, []byte("x"), aad, nil)
					if err != nil {
						return err
					}
					_, err = k.Decrypt(nil, env, aad)
					return err
				}()
				ops.Add(1)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	rotateKMS(t, b)
	c.Advance(DefaultPollInterval)
	if res := mustPass(t, r); res.Rewrapped != len(names) {
		t.Errorf("rewrap pass: %+v", res)
	}
	time.Sleep(100 * time.Millisecond) // DisableDelay, in real time, for readers in flight
	c.Advance(DefaultDisableDelay)
	if res := mustPass(t, r); len(res.Disabled) != 1 {
		t.Errorf("disable pass: %+v", res)
	}
	time.Sleep(50 * time.Millisecond)
	c.Advance(time.Hour)
	if res := mustPass(t, r); len(res.Destroyed) != 1 {
		t.Errorf("destroy pass: %+v", res)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("%d lookups and writes during the cycle", ops.Load())
	if len(errs) > 0 {
		t.Fatalf("%d errors during rotation, first: %v", len(errs), errs[0])
	}
}

// TestRotateWithoutCreate: a role that cannot create the kek_versions table
// still rewraps, and is told what it lacks; nothing is retired.
func TestRotateWithoutCreate(t *testing.T) {
	b := newLocal(t)
	owner := pool(t, "")
	schema := schemaFor(t)
	s := open(t, owner, b.keks(), Options{})
	vals := seedDEKs(t, s, b, "a")
	exec(t, owner, fmt.Sprintf("GRANT USAGE ON SCHEMA %[1]s TO %[2]s; GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA %[1]s TO %[2]s",
		schema, pgtest.UserPassword))
	rotateKMS(t, b)
	r := newRotator(t, pool(t, pgtest.UserPassword), b, newClock(), RotatorOptions{Schema: schema, DisableDelay: -1})
	res, err := r.Pass(t.Context())
	if !errors.Is(err, ErrKeystore) || !strings.Contains(err.Error(), "needs CREATE on schema") || res.Rewrapped != 1 || len(res.Disabled) != 0 {
		t.Fatalf("pass: %v; %+v", err, res)
	}
	checkValues(t, owner, b, schema, vals)
	// Once the owner ran a pass (creating the table), the role retires too.
	mustPass(t, newRotator(t, owner, b, newClock(), RotatorOptions{Schema: schema, DisableDelay: -1}))
	exec(t, owner, fmt.Sprintf("GRANT SELECT, INSERT, UPDATE, DELETE ON %s.kek_versions TO %s", schema, pgtest.UserPassword))
	rotateKMS(t, b)
	r = newRotator(t, pool(t, pgtest.UserPassword), b, newClock(), RotatorOptions{Schema: schema, DisableDelay: -1})
	if res := mustPass(t, r); res.Rewrapped != 1 || len(res.Disabled) != 1 {
		t.Fatalf("pass with the table: %+v", res)
	}
}
