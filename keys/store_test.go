package keys

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
	"github.com/pgcrypt/pgcrypt-proxy/kms/kmstest"
)

var aad = []byte("public.users.ssn")

func TestMigrate(t *testing.T) {
	ctx := t.Context()
	p := pool(t, "")
	schema := schemaFor(t)

	// Replicas starting at once: every Open succeeds, the migration runs once.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := Open(ctx, p, nil, Options{Schema: schema})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var n, maxV int
	if err := p.QueryRow(ctx, "SELECT count(*), max(version) FROM "+schema+".schema_migrations").Scan(&n, &maxV); err != nil {
		t.Fatal(err)
	}
	if n != SchemaVersion || maxV != SchemaVersion {
		t.Fatalf("schema_migrations: %d rows, max %d; want %d", n, maxV, SchemaVersion)
	}

	// Migrating again is a no-op: no DDL at all.
	applied, err := migrate(ctx, p, schema)
	if err != nil || applied != 0 {
		t.Fatalf("second migrate: applied %d, %v", applied, err)
	}

	// A newer keystore is refused, not misread.
	exec(t, p, "INSERT INTO "+schema+".schema_migrations (version) VALUES (999)")
	_, err = Open(ctx, p, nil, Options{Schema: schema})
	if !errors.Is(err, ErrSchemaVersion) || !IsUserError(err) {
		t.Fatalf("newer schema: %v", err)
	}
}

func TestMigratePrivileges(t *testing.T) {
	ctx := t.Context()
	schema := schemaFor(t)
	// A role without CREATE on the database cannot create the keystore,
	// and is told what it needs.
	_, err := Open(ctx, pool(t, pgtest.UserPassword), nil, Options{Schema: schema})
	if !errors.Is(err, ErrKeystore) || !strings.Contains(err.Error(), "needs CREATE on the database") {
		t.Fatalf("Open without CREATE: %v", err)
	}
	// Once the owner created it, USAGE and DML suffice: Open runs no DDL.
	owner := pool(t, "")
	s := open(t, owner, newLocal(t).keks(), Options{Schema: schema})
	exec(t, owner, fmt.Sprintf("GRANT USAGE ON SCHEMA %[1]s TO %[2]s; GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA %[1]s TO %[2]s",
		schema, pgtest.UserPassword))
	b := newLocal(t)
	s2, err := Open(ctx, pool(t, pgtest.UserPassword), b.keks(), Options{Schema: schema})
	if err != nil {
		t.Fatalf("Open with USAGE and DML only: %v", err)
	}
	if _, err := s2.Current(ctx, "pii", "local"); err != nil {
		t.Fatalf("Current with DML only: %v", err)
	}
	_ = s
}

func TestReadOnly(t *testing.T) {
	ctx := t.Context()
	p := pool(t, "")
	schema := schemaFor(t)
	_, err := Open(ctx, p, nil, Options{Schema: schema, ReadOnly: true})
	if !errors.Is(err, ErrNoKeystore) {
		t.Fatalf("ReadOnly on no keystore: %v", err)
	}
	var exists bool
	if err := p.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil || exists {
		t.Fatalf("ReadOnly created schema %s (%v)", schema, err)
	}
	b := newLocal(t)
	open(t, p, b.keks(), Options{Schema: schema})
	ro := open(t, p, b.keks(), Options{Schema: schema, ReadOnly: true})
	if _, err := ro.Current(ctx, "pii", "local"); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("ReadOnly Current: %v", err)
	}
}

func TestCurrentRace(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := t.Context()
		p := pool(t, "")
		stores := []*Store{open(t, p, b.keks(), Options{}), open(t, p, b.keks(), Options{})}
		type result struct {
			k   *crypto.Key
			err error
		}
		results := make(chan result, 16)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for _, s := range stores {
			for range 8 {
				wg.Go(func() {
					<-start
					k, err := s.Current(ctx, "pii", b.name)
					results <- result{k, err}
				})
			}
		}
		close(start)
		wg.Wait()
		close(results)
		var first *crypto.Key
		for r := range results {
			if r.err != nil {
				t.Fatal(r.err)
			}
			if first == nil {
				first = r.k
			} else if !first.Equal(r.k) {
				t.Fatalf("two different DEKs: %v and %v", first, r.k)
			}
		}
		rows := dump(t, p, schemaFor(t))
		if len(rows) != 1 || rows[0].Version != 1 || rows[0].State != StateActive || uint32(rows[0].ID) != first.ID() {
			t.Fatalf("keystore after the race: %+v", rows)
		}
		if rows[0].KEKName != b.kek.Name() || kms.VersionID(rows[0].KEKVersion) != "1" {
			t.Fatalf("kek_name %q kek_version %q", rows[0].KEKName, rows[0].KEKVersion)
		}
		if w := b.kek.wraps.Load(); w != 1 {
			t.Fatalf("%d Wrap calls, want 1", w)
		}
		t.Logf("16 racing Current calls in 2 stores: %d Wrap, %d Unwrap (1 verification + 1 per other store)", b.kek.wraps.Load(), b.kek.unwraps.Load())
	})
}

func TestRoundTrip(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := t.Context()
		p := pool(t, "")
		s := open(t, p, b.keks(), Options{})
		k, err := s.Current(ctx, "pii", b.name)
		if err != nil {
			t.Fatal(err)
		}
		env, err := k.Encrypt(nil, crypto.ModeRandomized, []byte("123-45-6789"), aad, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Another replica (cold cache) decrypts through the keystore.
		s2 := open(t, p, b.keks(), Options{})
		h, err := crypto.ParseHeader(env)
		if err != nil {
			t.Fatal(err)
		}
		k2, err := s2.ByID(ctx, h.KeyID)
		if err != nil {
			t.Fatal(err)
		}
		pt, err := k2.Decrypt(nil, env, aad)
		if err != nil || string(pt) != "123-45-6789" {
			t.Fatalf("Decrypt: %q, %v", pt, err)
		}
		if !k.Equal(k2) {
			t.Fatal("ByID returned another key than Current")
		}
		live, err := s2.Live(ctx, "pii")
		if err != nil || len(live) != 1 || live[0] != k2 {
			t.Fatalf("Live: %v, %v", live, err)
		}
		if got, _ := s2.Current(ctx, "pii", b.name); got != k2 {
			t.Fatal("Current after ByID did not reuse the cached key")
		}
		list, err := s2.List(ctx)
		if err != nil || len(list) != 1 {
			t.Fatalf("List: %v, %v", list, err)
		}
		want := DEKInfo{ID: k.ID(), Key: "pii", DEKVersion: 1, KEKName: b.kek.Name(), KEKVersion: list[0].KEKVersion, State: StateActive,
			CreatedAt: list[0].CreatedAt, UpdatedAt: list[0].UpdatedAt}
		if !reflect.DeepEqual(list[0], want) || list[0].CreatedAt.IsZero() || kms.VersionID(list[0].KEKVersion) != "1" {
			t.Fatalf("List: %+v", list[0])
		}
	})
}

// TestKMSCalls counts KMS calls while 10,000 values are encrypted and
// decrypted by many goroutines: one Wrap when the DEK is created, at most
// one Unwrap per DEK per cache lifetime.
func TestKMSCalls(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := t.Context()
		p := pool(t, "")
		clk := newClock()
		s := open(t, p, b.keks(), Options{Now: clk.Now, CacheTTL: time.Minute})
		const values, workers = 10_000, 32
		keyNames := []string{"pii", "contact"}
		envs := make([][]byte, values)

		run := func(s *Store, f func(s *Store, i int) error) {
			t.Helper()
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Go(func() {
					for i := w; i < values; i += workers {
						if err := f(s, i); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
		}
		encrypt := func(s *Store, i int) error {
			k, err := s.Current(ctx, keyNames[i%2], b.name)
			if err != nil {
				return err
			}
			envs[i], err = k.Encrypt(nil, crypto.Mode(1+i%2), fmt.Appendf(nil, "value %d", i), aad, nil)
			return err
		}
		decrypt := func(s *Store, i int) error {
			h, err := crypto.ParseHeader(envs[i])
			if err != nil {
				return err
			}
			k, err := s.ByID(ctx, h.KeyID)
			if err != nil {
				return err
			}
			pt, err := k.Decrypt(nil, envs[i], aad)
			if err != nil {
				return err
			}
			if string(pt) != fmt.Sprintf("value %d", i) {
				return fmt.Errorf("value %d decrypted to %q", i, pt)
			}
			if h.Mode == crypto.ModeDeterministic {
				if _, err := s.Live(ctx, keyNames[i%2]); err != nil {
					return err
				}
			}
			return nil
		}
		counts := func() (w, u int64) { return b.kek.wraps.Load(), b.kek.unwraps.Load() }
		wantCounts := func(stage string, w, u int64) {
			t.Helper()
			gw, gu := counts()
			t.Logf("%s: %d Wrap, %d Unwrap for %d DEKs", stage, gw, gu, len(keyNames))
			if gw != w || gu != u {
				t.Fatalf("%s: %d Wrap and %d Unwrap calls, want %d and %d", stage, gw, gu, w, u)
			}
			if b.srv != nil {
				if e, d := b.srv.Calls("Encrypt"), b.srv.Calls("Decrypt"); int64(e) != w || int64(d) != u {
					t.Fatalf("%s: the fake Cloud KMS saw %d Encrypt and %d Decrypt, want %d and %d", stage, e, d, w, u)
				}
			}
		}

		// Creation: one Wrap per DEK, one Unwrap that verifies it.
		run(s, encrypt)
		run(s, decrypt)
		wantCounts("10,000 values encrypted and decrypted, DEKs created", 2, 2)

		// Another replica, cold cache: one Unwrap per DEK.
		s2 := open(t, p, b.keks(), Options{Now: clk.Now, CacheTTL: time.Minute})
		run(s2, decrypt)
		run(s2, encrypt)
		wantCounts("10,000 values decrypted and encrypted by a second replica", 2, 4)

		// The cache expires: exactly one more Unwrap per DEK and store.
		clk.Advance(time.Minute)
		run(s, decrypt)
		run(s, encrypt)
		wantCounts("after the TTL", 2, 6)
		clk.Advance(59 * time.Second)
		run(s, decrypt)
		wantCounts("within the new TTL", 2, 6)
	})
}

func TestCacheBounds(t *testing.T) {
	ctx := t.Context()
	b := newLocal(t)
	s := open(t, pool(t, ""), b.keks(), Options{CacheSize: 2})
	var ids []uint32
	for _, name := range []string{"a", "b", "c"} {
		k, err := s.Current(ctx, name, "local")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.ID())
	}
	if n := s.ids.len(); n > 2 {
		t.Fatalf("%d DEKs cached, limit 2", n)
	}
	before := b.kek.unwraps.Load()
	// "a" was least recently used: evicted, so it is unwrapped again.
	if _, err := s.ByID(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ByID(ctx, ids[2]); err != nil {
		t.Fatal(err)
	}
	if got := b.kek.unwraps.Load() - before; got != 1 {
		t.Fatalf("%d unwraps after eviction, want 1", got)
	}
	// Envelopes naming made-up ids do not push real DEKs out.
	before = b.kek.unwraps.Load()
	for id := uint32(1000); id < 1010; id++ {
		if _, err := s.ByID(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("ByID(%d): %v", id, err)
		}
	}
	for _, id := range ids[1:] { // the two cached ones ("c" and "a")
		if id == ids[1] {
			continue
		}
		if _, err := s.ByID(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.ByID(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if got := b.kek.unwraps.Load() - before; got != 0 {
		t.Fatalf("%d unwraps after a flood of unknown ids, want 0", got)
	}
	if n := s.failed.len(); n > 2 {
		t.Fatalf("%d failures cached, limit 2", n)
	}
}

func TestHotPathAllocs(t *testing.T) {
	ctx := t.Context()
	b := newLocal(t)
	s := open(t, pool(t, ""), b.keks(), Options{})
	k, err := s.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Live(ctx, "pii"); err != nil {
		t.Fatal(err)
	}
	id := k.ID()
	for name, f := range map[string]func(){
		"Current": func() { _, _ = s.Current(ctx, "pii", "local") },
		"ByID":    func() { _, _ = s.ByID(ctx, id) },
		"Live":    func() { _, _ = s.Live(ctx, "pii") },
	} {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, n)
		}
	}
}

// wantKeyErr checks an error names the DEK and carries no key bytes.
func wantKeyErr(t *testing.T, err, kind error, key string, version int, secrets ...[]byte) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("got %v, want %v", err, kind)
	}
	msg := err.Error()
	if want := fmt.Sprintf("data key %q version %d", key, version); !strings.Contains(msg, want) {
		t.Fatalf("error %q does not name %s", msg, want)
	}
	for _, s := range secrets {
		if len(s) > 0 && (strings.Contains(msg, hex.EncodeToString(s)) || strings.Contains(msg, string(s))) {
			t.Fatalf("error %q contains key bytes", msg)
		}
	}
}

func TestTamperedWrappedKey(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := t.Context()
		p := pool(t, "")
		schema := schemaFor(t)
		s := open(t, p, b.keks(), Options{})
		k, err := s.Current(ctx, "pii", b.name)
		if err != nil {
			t.Fatal(err)
		}
		// Flip one bit of the last byte of the wrapped DEK, with SQL.
		exec(t, p, "UPDATE "+schema+".data_keys SET wrapped = set_byte(wrapped, length(wrapped) - 1, get_byte(wrapped, length(wrapped) - 1) # 1) WHERE id = $1", int32(k.ID()))
		before := dump(t, p, schema)

		s2 := open(t, p, b.keks(), Options{})
		_, err = s2.ByID(ctx, k.ID())
		wantKeyErr(t, err, ErrUnwrap, "pii", 1, before[0].Wrapped)
		if IsRetryable(err) || IsUserError(err) {
			t.Fatalf("tampering is an internal fault, not retryable: %v", err)
		}
		t.Logf("altered: %v", err)
		// Current must not paper over it with a new DEK.
		_, err = s2.Current(ctx, "pii", b.name)
		wantKeyErr(t, err, ErrUnwrap, "pii", 1)
		if _, err := s2.Live(ctx, "pii"); !errors.Is(err, ErrUnwrap) {
			t.Fatalf("Live: %v", err)
		}
		if after := dump(t, p, schema); !reflect.DeepEqual(before, after) {
			t.Fatalf("keystore changed:\n%+v\n%+v", before, after)
		}
	})
}

func TestSwappedWrappedKeys(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := t.Context()
		p := pool(t, "")
		schema := schemaFor(t)
		s := open(t, p, b.keks(), Options{})
		ka, err := s.Current(ctx, "a", b.name)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := s.Current(ctx, "b", b.name)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, p, "UPDATE "+schema+".data_keys d SET wrapped = o.wrapped FROM "+schema+".data_keys o WHERE d.id IN ($1, $2) AND o.id IN ($1, $2) AND o.id <> d.id",
			int32(ka.ID()), int32(kb.ID()))
		before := dump(t, p, schema)
		s2 := open(t, p, b.keks(), Options{})
		_, err = s2.ByID(ctx, ka.ID())
		wantKeyErr(t, err, ErrUnwrap, "a", 1)
		_, err = s2.ByID(ctx, kb.ID())
		wantKeyErr(t, err, ErrUnwrap, "b", 1)
		if after := dump(t, p, schema); !reflect.DeepEqual(before, after) {
			t.Fatalf("keystore changed:\n%+v\n%+v", before, after)
		}
	})
}

func TestKMSFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inject func(srv *kmstest.Server, method string)
		kind   error
	}{
		{"timeout", func(srv *kmstest.Server, m string) { srv.SetLatency(m, time.Second) }, kms.ErrTransient},
		{"unavailable", func(srv *kmstest.Server, m string) { srv.FailNext(m, 100, codes.Unavailable) }, kms.ErrTransient},
		{"checksum", func(srv *kmstest.Server, m string) { srv.CorruptNextCRC(m, 100) }, kms.ErrChecksum},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			b := newGCP(t, kms.GCPOptions{CallTimeout: 100 * time.Millisecond, MaxAttempts: 2})
			p := pool(t, "")
			schema := schemaFor(t)
			s := open(t, p, b.keks(), Options{})

			// Creation fails while Encrypt fails: nothing is written.
			tc.inject(b.srv, "Encrypt")
			_, err := s.Current(ctx, "pii", "gcp")
			wantKeyErr(t, err, ErrKMS, "pii", 1)
			if !errors.Is(err, tc.kind) || !IsRetryable(err) {
				t.Fatalf("Current: %v, want %v and retryable", err, tc.kind)
			}
			t.Logf("wrap: %v", err)
			if rows := dump(t, p, schema); len(rows) != 0 {
				t.Fatalf("keystore written: %+v", rows)
			}
			b.srv.ClearFaults()
			k, err := s.Current(ctx, "pii", "gcp")
			if err != nil {
				t.Fatal(err)
			}
			before := dump(t, p, schema)
			if len(before) != 1 || before[0].Version != 1 {
				t.Fatalf("keystore: %+v", before)
			}

			// Unwrap fails: a clear error, nothing cached, nothing written;
			// the next call after the KMS recovers succeeds.
			s2 := open(t, p, b.keks(), Options{})
			tc.inject(b.srv, "Decrypt")
			_, err = s2.ByID(ctx, k.ID())
			wantKeyErr(t, err, ErrKMS, "pii", 1)
			if !errors.Is(err, tc.kind) || !IsRetryable(err) {
				t.Fatalf("ByID: %v, want %v and retryable", err, tc.kind)
			}
			t.Logf("unwrap: %v", err)
			b.srv.ClearFaults()
			if _, err := s2.ByID(ctx, k.ID()); err != nil {
				t.Fatalf("ByID after recovery: %v", err)
			}
			if after := dump(t, p, schema); !reflect.DeepEqual(before, after) {
				t.Fatalf("keystore changed:\n%+v\n%+v", before, after)
			}
		})
	}
}

func TestCallerContext(t *testing.T) {
	b := newGCP(t, kms.GCPOptions{})
	p := pool(t, "")
	s := open(t, p, b.keks(), Options{})
	b.srv.SetLatency("Encrypt", 300*time.Millisecond)
	// A caller that gives up does not cancel the creation others wait for.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Current(ctx, "pii", "gcp"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Current with a short deadline: %v", err)
	}
	k, err := s.Current(t.Context(), "pii", "gcp")
	if err != nil {
		t.Fatal(err)
	}
	if w := b.kek.wraps.Load(); w != 1 {
		t.Fatalf("%d wraps, want 1 (the abandoned call's creation went on)", w)
	}
	_ = k
}

func TestDisabledKEKVersion(t *testing.T) {
	ctx := t.Context()
	b := newLocal(t)
	p := pool(t, "")
	s := open(t, p, b.keks(), Options{})
	k, err := s.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.kek.KEK.(kms.Rotator).Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.kek.Disable(ctx, "1"); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, p, b.keks(), Options{})
	_, err = s2.ByID(ctx, k.ID())
	wantKeyErr(t, err, ErrKMS, "pii", 1)
	if !errors.Is(err, kms.ErrVersionDisabled) || !IsUserError(err) || IsRetryable(err) {
		t.Fatalf("disabled KEK version: %v", err)
	}
}

func TestDestroyed(t *testing.T) {
	eachBackend(t, func(t *testing.T, b *backend) {
		ctx := t.Context()
		p := pool(t, "")
		schema := schemaFor(t)
		s := open(t, p, b.keks(), Options{})
		k1, err := s.Current(ctx, "pii", b.name)
		if err != nil {
			t.Fatal(err)
		}
		exec(t, p, "UPDATE "+schema+".data_keys SET state = 'destroyed', wrapped = NULL WHERE id = $1", int32(k1.ID()))
		s2 := open(t, p, b.keks(), Options{})
		_, err = s2.ByID(ctx, k1.ID())
		wantKeyErr(t, err, ErrDestroyed, "pii", 1)
		if !IsUserError(err) {
			t.Fatalf("destroyed is not a user error: %v", err)
		}
		t.Logf("destroyed: %v", err)
		if live, err := s2.Live(ctx, "pii"); err != nil || len(live) != 0 {
			t.Fatalf("Live after destroy: %v, %v", live, err)
		}
		// No active DEK left: new writes get version 2.
		k2, err := s2.Current(ctx, "pii", b.name)
		if err != nil {
			t.Fatal(err)
		}
		if k2.ID() == k1.ID() {
			t.Fatal("DEK id reused")
		}
		rows := dump(t, p, schema)
		if len(rows) != 2 || rows[1].Version != 2 || rows[1].State != StateActive {
			t.Fatalf("keystore: %+v", rows)
		}
		// The table refuses to resurrect, delete or relabel a DEK.
		for _, sql := range []string{
			"UPDATE " + schema + ".data_keys SET state = 'retired', wrapped = '\\x00' WHERE id = $1",
			"DELETE FROM " + schema + ".data_keys WHERE id = $1",
		} {
			if _, err := p.Exec(ctx, sql, int32(k1.ID())); err == nil {
				t.Fatalf("%s: accepted", sql)
			}
		}
		if _, err := p.Exec(ctx, "UPDATE "+schema+".data_keys SET dek_version = 3 WHERE id = $1", int32(k2.ID())); err == nil {
			t.Fatal("changing dek_version accepted")
		}
	})
}

func TestCurrentSeesNewVersion(t *testing.T) {
	ctx := t.Context()
	b := newLocal(t)
	p := pool(t, "")
	schema := schemaFor(t)
	clk := newClock()
	s := open(t, p, b.keks(), Options{Now: clk.Now, CacheTTL: time.Minute})
	k1, err := s.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	// Another process rotates the DEK: v1 retired, v2 active.
	exec(t, p, "UPDATE "+schema+".data_keys SET state = 'retired' WHERE id = $1", int32(k1.ID()))
	other := open(t, p, b.keks(), Options{})
	k2, err := other.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Current(ctx, "pii", "local"); got != k1 {
		t.Fatal("Current changed before the TTL")
	}
	clk.Advance(time.Minute)
	got, err := s.Current(ctx, "pii", "local")
	if err != nil || !got.Equal(k2) {
		t.Fatalf("Current after the TTL: %v, %v; want %v", got, err, k2)
	}
	// The retired version still decrypts; Live lists both, newest first.
	if _, err := s.ByID(ctx, k1.ID()); err != nil {
		t.Fatal(err)
	}
	live, err := s.Live(ctx, "pii")
	if err != nil || len(live) != 2 || !live[0].Equal(k2) || !live[1].Equal(k1) {
		t.Fatalf("Live: %v, %v", live, err)
	}
}

func TestBadInput(t *testing.T) {
	ctx := t.Context()
	b := newLocal(t)
	p := pool(t, "")
	s := open(t, p, b.keks(), Options{})
	if _, err := s.Current(ctx, "pii", "nope"); !errors.Is(err, ErrUnknownKMS) || !IsUserError(err) {
		t.Fatalf("unknown kms: %v", err)
	}
	if _, err := s.Current(ctx, "", "local"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty key name: %v", err)
	}
	if _, err := s.Current(ctx, "a\x00b", "local"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("NUL in key name: %v", err)
	}
	for _, id := range []uint32{0, 12345, 1 << 31} {
		if _, err := s.ByID(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("ByID(%d): %v", id, err)
		}
	}
	if _, err := Open(ctx, p, nil, Options{Schema: "Bad-Schema"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad schema: %v", err)
	}
	// A DEK whose KEK is not configured.
	k, err := s.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	s2 := open(t, p, newLocal(t).keks(), Options{})
	_, err = s2.ByID(ctx, k.ID())
	wantKeyErr(t, err, ErrNoKEK, "pii", 1)
	if !IsUserError(err) || !strings.Contains(err.Error(), b.kek.Name()) {
		t.Fatalf("no KEK: %v", err)
	}
}

func TestIdentity(t *testing.T) {
	got := string(Identity("pgcrypt", "pii", 12))
	if want := "pgcrypt-proxy/dek/v1\x00pgcrypt\x00pii\x0012"; got != want {
		t.Fatalf("Identity = %q, want %q", got, want)
	}
}

// BenchmarkHotPath measures cache hits from many goroutines at once.
func BenchmarkHotPath(b *testing.B) {
	ctx := b.Context()
	be := newLocal(b)
	s := open(b, pool(b, ""), be.keks(), Options{})
	k, err := s.Current(ctx, "pii", "local")
	if err != nil {
		b.Fatal(err)
	}
	id := k.ID()
	b.Run("Current", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Current(ctx, "pii", "local"); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("ByID", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.ByID(ctx, id); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
