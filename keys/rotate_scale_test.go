package keys

import (
	"crypto/rand"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// TestRotate10k measures a pass over 10,000 DEKs against the fake Cloud KMS
// through the real client: once at the default rate limit (the figure the
// design promises, under a minute; most of it is the limiter's wait) and
// once unlimited (the cost of everything else). It asserts what the pass
// did, and that the limiter held the rate down; it never asserts a time
// ceiling. -short skips the rate-limited half, except under CI=true.
func TestRotate10k(t *testing.T) {
	const n = 10_000
	ctx := t.Context()
	b := newGCP(t, kms.GCPOptions{})
	p := pool(t, "")
	schema := schemaFor(t)
	open(t, p, b.keks(), Options{}) // creates the keystore
	srv := b.srv

	// 10,000 DEKs under v1, made directly (a Store would take a transaction
	// and two KMS calls each).
	type seeded struct {
		key     string
		wrapped []byte
		version string
	}
	rows := make([]seeded, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range rows {
		g.Go(func() error {
			dek := make([]byte, crypto.DEKSize)
			rand.Read(dek)
			key := fmt.Sprintf("k%05d", i)
			w, v, err := b.kek.Wrap(gctx, dek, Identity(schema, key, 1))
			rows[i] = seeded{key, w, v}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CopyFrom(ctx, pgx.Identifier{schema, "data_keys"},
		[]string{"key_name", "dek_version", "wrapped", "kek_name", "kek_version", "state"},
		pgx.CopyFromSlice(n, func(i int) ([]any, error) {
			return []any{rows[i].key, 1, rows[i].wrapped, b.kek.Name(), rows[i].version, StateActive}, nil
		})); err != nil {
		t.Fatal(err)
	}
	// Values under a sample of the DEKs, to decrypt after each pass.
	s := open(t, p, b.keks(), Options{Schema: schema})
	var vals []sealedValue
	for id := uint32(1); id <= n; id += n / 100 {
		k, err := s.ByID(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		env, err := k.Encrypt(nil, crypto.ModeRandomized, []byte("value"), aad, nil)
		if err != nil {
			t.Fatal(err)
		}
		vals = append(vals, sealedValue{id, env, []byte("value")})
	}

	run := func(t *testing.T, rateLimit float64, kek *backend) {
		primary := rotateKMS(t, b)
		r, err := NewRotator(p, kek.keks(), RotatorOptions{Schema: schema, RateLimit: rateLimit})
		if err != nil {
			t.Fatal(err)
		}
		srv.ResetCalls()
		began := time.Now()
		res, err := r.Pass(ctx)
		took := time.Since(began)
		if err != nil {
			t.Fatal(err)
		}
		enc, dec := srv.Calls("Encrypt"), srv.Calls("Decrypt")
		t.Logf("%d DEKs rewrapped in %v (%.0f DEKs/s; %d Encrypt, %d Decrypt, %d calls in all)",
			res.Rewrapped, took.Round(time.Millisecond), float64(res.Rewrapped)/took.Seconds(), enc, dec, srv.Calls(""))
		if res.Rewrapped != n || enc != n || dec != 2*n {
			t.Fatalf("pass: %d rewrapped, %d Encrypt, %d Decrypt; want %d, %d, %d", res.Rewrapped, enc, dec, n, n, 2*n)
		}
		if res.DEKsByKEKVersion[primary] != n || len(res.DEKsByKEKVersion) != 1 {
			t.Fatalf("DEKs by KEK version: %v", res.DEKsByKEKVersion)
		}
		if rateLimit == 0 {
			// The token bucket: at most Burst calls beyond the rate.
			calls, rate := float64(3*n-DefaultRotateBurst), float64(DefaultRotateRateLimit)
			if floor := time.Duration(calls / rate * float64(time.Second)); took < floor {
				t.Fatalf("%d KMS calls in %v: faster than the rate limit allows (%v)", 3*n, took, floor)
			}
		}
		checkValues(t, p, b, schema, vals)
	}

	t.Run("unlimited", func(t *testing.T) { run(t, -1, b) })
	t.Run("default rate limit", func(t *testing.T) {
		if testing.Short() && os.Getenv("CI") != "true" {
			t.Skip("-short: the rate-limited pass takes about 50s by design")
		}
		// The handle the serve and rotate commands give the rotation: the
		// kms-level limiter at the rotation's budget.
		g, err := kms.NewGCP(ctx, kms.GCPOptions{Key: gcpKey, ClientOptions: srv.ClientOptions(),
			RateLimit: DefaultRotateRateLimit, Burst: DefaultRotateBurst})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Close() })
		run(t, 0, &backend{name: "gcp", kek: &countingKEK{KEK: g}, srv: srv})
	})
}
