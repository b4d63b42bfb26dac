package migrate

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// TestRunEncryptsEveryType: a table converted with the send functions is
// encrypted in place, every value decrypting to its canonical plaintext;
// a second run changes no row.
func TestRunEncryptsEveryType(t *testing.T) {
	f := newFixture(t)
	const n = 2500
	table := f.makeUsers(t, n)
	pol := usersPolicy(t, table)
	var progress []Progress
	rep := f.run(t, pol, Options{Table: table, BatchSize: 400, Progress: func(p Progress) { progress = append(progress, p) }})
	if !rep.Complete || rep.Resumed || rep.RowsScanned != n || rep.Batches != 7 || rep.RowsSkipped != 0 || !rep.Clean() {
		t.Fatalf("report %+v", rep)
	}
	if rep.RowsUpdated != n {
		t.Fatalf("rows updated %d, want %d", rep.RowsUpdated, n)
	}
	for _, c := range rep.Columns {
		if c.Plaintext+c.Null != n || c.Encrypted != c.Plaintext || c.Current != 0 || c.OldKey != 0 {
			t.Errorf("column %+v", c)
		}
	}
	if len(progress) != 7 || progress[6].Done != n || progress[6].Total != n || progress[0].Done != 400 {
		t.Fatalf("progress %+v", progress)
	}
	f.checkEncrypted(t, pol, table)

	// A second run is a new pass that finds everything current and writes
	// no row.
	before := f.xmins(t, table)
	rep = f.run(t, pol, Options{Table: table})
	if !rep.Complete || rep.RowsUpdated != 0 || rep.RowsScanned != n || rep.Pending() != 0 || !rep.Clean() {
		t.Fatalf("second run %+v", rep)
	}
	for _, c := range rep.Columns {
		if c.Current+c.Null != n {
			t.Errorf("second run, column %+v", c)
		}
	}
	after := f.xmins(t, table)
	for id, x := range before {
		if after[id] != x {
			t.Fatalf("the second run rewrote row %d", id)
		}
	}
	cps, err := Checkpoints(t.Context(), f.pool, f.schema)
	if err != nil || len(cps) != 1 || cps[0].LastPK != nil || cps[0].CompletedAt == nil || cps[0].RowsDone != n ||
		cps[0].Table != "public."+table || cps[0].Columns != "age,born,email,photo,prefs,score,seen,ssn" {
		t.Fatalf("checkpoints %+v %v", cps, err)
	}
}

// TestRunDryRun counts every class of value and writes nothing, not even
// the checkpoint table.
func TestRunDryRun(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t)
	table := unique("dry")
	f.exec(t, `CREATE TABLE `+table+` (id bigint PRIMARY KEY, ssn bytea, age bytea)`)
	pol := parsePolicy(t, `version: 1
keys: {pii: {kms: local}}
tables:
  `+table+`:
    ssn: {key: pii, type: text}
    age: {key: pii, type: int4}
`)
	col := pol.Table("public", table, nil).Column("ssn")
	v1, err := f.store.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	encV1, _ := v1.Encrypt(nil, crypto.ModeRandomized, []byte("old key"), []byte(col.Identity()), nil)
	if _, err := f.store.RotateDEK(ctx, "pii", "local", keys.RotateOptions{Wait: -1}); err != nil {
		t.Fatal(err)
	}
	v2, err := f.store.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	encV2, _ := v2.Encrypt(nil, crypto.ModeRandomized, []byte("current"), []byte(col.Identity()), nil)
	tampered := bytes.Clone(encV2)
	tampered[len(tampered)-1] ^= 1
	otherCol, _ := v2.Encrypt(nil, crypto.ModeRandomized, []byte("elsewhere"), []byte("public.other.ssn"), nil)
	unknown, _ := v2.Encrypt(nil, crypto.ModeRandomized, []byte("x"), []byte(col.Identity()), nil)
	unknown[4], unknown[5], unknown[6], unknown[7] = 0, 0x0f, 0x42, 0x40 // id 1000000
	det, _ := v2.Encrypt(nil, crypto.ModeDeterministic, []byte("wrong mode"), []byte(col.Identity()), nil)

	rows := [][]any{
		{1, []byte("plain"), []byte{0, 0, 0, 42}},
		{2, encV1, nil},
		{3, encV2, []byte{1, 2, 3}}, // age: not 4 bytes
		{4, tampered, nil},
		{5, otherCol, nil},
		{6, unknown, nil},
		{7, det, nil}, // current key, other mode: must move
		{8, []byte{0xff, 0xfe}, nil},
	}
	for _, r := range rows {
		f.exec(t, `INSERT INTO `+table+` VALUES ($1, $2, $3)`, r...)
	}
	before := f.xmins(t, table)
	rep := f.run(t, pol, Options{Table: table, DryRun: true})
	if !rep.DryRun || !rep.Complete || rep.RowsScanned != 8 || rep.RowsUpdated != 0 {
		t.Fatalf("dry run %+v", rep)
	}
	ssn, age := rep.Columns[1], rep.Columns[0]
	if ssn.Column != "ssn" || age.Column != "age" {
		t.Fatalf("columns %+v %+v", ssn, age)
	}
	if ssn.Plaintext != 1 || ssn.OldKey != 2 || ssn.Current != 1 || ssn.Undecryptable != 3 || ssn.Invalid != 1 ||
		ssn.OldKeys[v1.ID()] != 1 || ssn.OldKeys[v2.ID()] != 1 || ssn.CurrentKeyID != v2.ID() ||
		ssn.Reasons[ReasonAuth] != 2 || ssn.Reasons[ReasonUnknownKey] != 1 || ssn.Reasons[ReasonInvalidUTF8] != 1 {
		t.Fatalf("ssn counts %+v", ssn)
	}
	if age.Plaintext != 1 || age.Null != 6 || age.Invalid != 1 || age.Reasons[ReasonWrongLength] != 1 {
		t.Fatalf("age counts %+v", age)
	}
	if rep.Clean() || rep.Pending() != 4 {
		t.Fatalf("clean %v pending %d", rep.Clean(), rep.Pending())
	}
	after := f.xmins(t, table)
	for id, x := range before {
		if after[id] != x {
			t.Fatalf("the dry run wrote row %d", id)
		}
	}
	if cps, err := Checkpoints(ctx, f.pool, f.schema); err != nil || cps != nil {
		t.Fatalf("dry run made checkpoints: %v %v", cps, err)
	}

	// The real run moves what it can and leaves the rest exactly as it was.
	stored := func() map[int64][]byte {
		out := map[int64][]byte{}
		rs, err := f.pool.Query(ctx, `SELECT id, ssn FROM `+table)
		if err != nil {
			t.Fatal(err)
		}
		defer rs.Close()
		for rs.Next() {
			var id int64
			var v []byte
			if err := rs.Scan(&id, &v); err != nil {
				t.Fatal(err)
			}
			out[id] = v
		}
		return out
	}
	rep = f.run(t, pol, Options{Table: table})
	if rep.RowsUpdated != 3 || rep.Clean() { // rows 1, 2 and 7
		t.Fatalf("run %+v", rep)
	}
	got := stored()
	for id, want := range map[int64][]byte{3: encV2, 4: tampered, 5: otherCol, 6: unknown, 8: {0xff, 0xfe}} {
		if !bytes.Equal(got[id], want) {
			t.Errorf("row %d changed: %x", id, got[id])
		}
	}
	for id, want := range map[int64]string{1: "plain", 2: "old key", 7: "wrong mode"} {
		h, err := crypto.ParseHeader(got[id])
		if err != nil || h.KeyID != v2.ID() || h.Mode != crypto.ModeRandomized {
			t.Fatalf("row %d: %+v %v", id, h, err)
		}
		if pt, err := v2.Decrypt(nil, got[id], []byte(col.Identity())); err != nil || string(pt) != want {
			t.Fatalf("row %d: %q %v", id, pt, err)
		}
	}
}

// TestRunRotation: after a DEK rotation a run re-encrypts every value
// under the new version; deterministic values become exactly what the
// proxy now writes for them, so lookups keep working with either key.
func TestRunRotation(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t)
	table := f.makeUsers(t, 700)
	pol := usersPolicy(t, table)
	f.run(t, pol, Options{Table: table})
	v1, _ := f.store.Current(ctx, "pii", "local")
	r, err := f.store.RotateDEK(ctx, "pii", "local", keys.RotateOptions{Wait: -1})
	if err != nil {
		t.Fatal(err)
	}
	rep := f.run(t, pol, Options{Table: table, BatchSize: 128})
	if rep.RowsUpdated != 700 || !rep.Clean() {
		t.Fatalf("run after rotation %+v", rep)
	}
	for _, c := range rep.Columns {
		if c.OldKey != c.Reencrypted || c.OldKeys[v1.ID()] != c.OldKey || c.Plaintext != 0 || c.CurrentKeyID != r.Active.ID {
			t.Fatalf("column %+v", c)
		}
	}
	f.checkEncrypted(t, pol, table)
	v2, _ := f.store.Current(ctx, "pii", "local")
	email := pol.Table("public", table, nil).Column("email")
	var stored []byte
	if err := f.pool.QueryRow(ctx, `SELECT email FROM `+table+` WHERE id = 5`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	want, _ := v2.Encrypt(nil, crypto.ModeDeterministic, []byte("user5@example.com"), []byte(email.Identity()), nil)
	if !bytes.Equal(stored, want) {
		t.Fatal("a deterministic value re-encrypted differs from what the proxy writes")
	}
}

// TestRunResume: a run stopped after some batches leaves a checkpoint; the
// next run resumes after it, and the pass completes with every row done.
func TestRunResume(t *testing.T) {
	f := newFixture(t)
	table := f.makeUsers(t, 1000)
	pol := usersPolicy(t, table)
	rep := f.run(t, pol, Options{Table: table, BatchSize: 100, StopAfterBatches: 3})
	if rep.Complete || rep.RowsScanned != 300 || rep.RowsUpdated != 300 {
		t.Fatalf("stopped run %+v", rep)
	}
	cps, err := Checkpoints(t.Context(), f.pool, f.schema)
	if err != nil || len(cps) != 1 || len(cps[0].LastPK) != 1 || cps[0].LastPK[0] != "300" || cps[0].RowsDone != 300 {
		t.Fatalf("checkpoint %+v %v", cps, err)
	}
	before := f.xmins(t, table)
	rep = f.run(t, pol, Options{Table: table, BatchSize: 100})
	if !rep.Complete || !rep.Resumed || rep.ResumedAt != 300 || rep.RowsScanned != 700 || rep.RowsUpdated != 700 {
		t.Fatalf("resumed run %+v", rep)
	}
	after := f.xmins(t, table)
	for id := 1; id <= 300; id++ {
		if before[id] != after[id] {
			t.Fatalf("the resumed run went over row %d again", id)
		}
	}
	f.checkEncrypted(t, pol, table)
	rep = f.run(t, pol, Options{Table: table})
	if rep.Resumed || rep.RowsUpdated != 0 || rep.RowsScanned != 1000 {
		t.Fatalf("next pass %+v", rep)
	}
}

// TestRunCompareAndSwap: a row that a client changes while the run waits
// for its lock is not overwritten. The run reads it again and encrypts
// what is still plaintext in it.
func TestRunCompareAndSwap(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t)
	table := f.makeUsers(t, 50)
	pol := usersPolicy(t, table)
	cur, err := f.store.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	ssn := pol.Table("public", table, nil).Column("ssn")
	clientValue, _ := cur.Encrypt(nil, crypto.ModeRandomized, []byte("written by a client"), []byte(ssn.Identity()), nil)

	// A client transaction changes row 10's ssn (through the proxy: an
	// envelope) and holds its lock.
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE `+table+` SET ssn = $1 WHERE id = 10`, clientValue); err != nil {
		t.Fatal(err)
	}
	type result struct {
		rep *Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := Run(ctx, f.pool, pol, f.store, Options{Table: table, Schema: f.schema, LockTimeout: time.Minute})
		done <- result{rep, err}
	}()
	// Wait until the run's UPDATE waits for the row lock, then commit.
	deadline := time.Now().Add(20 * time.Second)
	for {
		var waiting int
		if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE %`+table+`%'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the run never waited for the client's row lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.rep.RowsUpdated != 50 || res.rep.RowsSkipped != 0 {
		t.Fatalf("report %+v", res.rep)
	}
	var got, email []byte
	if err := f.pool.QueryRow(ctx, `SELECT ssn, email FROM `+table+` WHERE id = 10`).Scan(&got, &email); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, clientValue) {
		t.Fatal("the run overwrote the client's write")
	}
	if h, err := crypto.ParseHeader(email); err != nil || h.KeyID != cur.ID() {
		t.Fatalf("the rest of row 10 was not encrypted after the retry: %v", err)
	}
	// Everything else is the original, encrypted.
	f.exec(t, `UPDATE `+table+`_orig SET ssn = 'written by a client' WHERE id = 10`)
	f.checkEncrypted(t, pol, table)
}

// TestRunConcurrentWriter: a client keeps writing while a run goes over
// the table; afterwards every row holds the client's last write or the
// original, encrypted.
func TestRunConcurrentWriter(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t)
	const n = 3000
	table := f.makeUsers(t, n)
	pol := usersPolicy(t, table)
	cur, err := f.store.Current(ctx, "pii", "local")
	if err != nil {
		t.Fatal(err)
	}
	ssn := pol.Table("public", table, nil).Column("ssn")
	stop := make(chan struct{})
	var writes atomic.Int64
	written := map[int]string{}
	writerDone := make(chan error, 1)
	go func() {
		i := 0
		for {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			i++
			id := (i*7919)%n + 1
			v := "client write " + string(rune('a'+i%26))
			env, _ := cur.Encrypt(nil, crypto.ModeRandomized, []byte(v), []byte(ssn.Identity()), nil)
			if _, err := f.pool.Exec(ctx, `UPDATE `+table+` SET ssn = $1 WHERE id = $2`, env, id); err != nil {
				writerDone <- err
				return
			}
			written[id] = v
			writes.Add(1)
		}
	}()
	rep := f.run(t, pol, Options{Table: table, BatchSize: 200, Rate: 15000})
	close(stop)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	if writes.Load() < 50 {
		t.Fatalf("only %d concurrent writes", writes.Load())
	}
	t.Logf("%d concurrent writes; report: updated %d, skipped %d", writes.Load(), rep.RowsUpdated, rep.RowsSkipped)
	for id, v := range written {
		f.exec(t, `UPDATE `+table+`_orig SET ssn = $1 WHERE id = $2`, v, id)
	}
	if rep.RowsSkipped > 0 {
		f.run(t, pol, Options{Table: table})
	}
	f.checkEncrypted(t, pol, table)
}

func TestRunRefusals(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t)
	nopk, notBytea, pkEnc := unique("nopk"), unique("notbytea"), unique("pkenc")
	f.exec(t, `CREATE TABLE `+nopk+` (id int, ssn bytea)`)
	f.exec(t, `CREATE TABLE `+notBytea+` (id int PRIMARY KEY, ssn text, age int)`)
	f.exec(t, `CREATE TABLE `+pkEnc+` (ssn bytea PRIMARY KEY)`)
	pol := parsePolicy(t, `version: 1
keys: {pii: {kms: local}}
tables:
  `+nopk+`: {ssn: {key: pii, type: text}}
  `+notBytea+`: {ssn: {key: pii, type: text}, age: {key: pii, type: int4}, gone: {key: pii, type: text}}
  `+pkEnc+`: {ssn: {key: pii, type: text}}
`)
	for _, tc := range []struct{ table, want string }{
		{nopk, "has no primary key"},
		{notBytea, "ALTER TABLE public." + notBytea + " ALTER COLUMN age TYPE bytea USING int4send(age)"},
		{notBytea, "USING convert_to(ssn, 'UTF8')"},
		{notBytea, "has no column gone"},
		{pkEnc, "part of the primary key"},
		{"no_such_table", "does not exist"},
		{"pg_class", "has no columns in the policy"},
	} {
		_, err := Run(ctx, f.pool, pol, f.store, Options{Table: tc.table, Schema: f.schema})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !IsUserError(err) {
			t.Errorf("%s: %v, want a user error containing %q", tc.table, err, tc.want)
		}
	}

	// One run per table at a time.
	table := f.makeUsers(t, 10)
	upol := usersPolicy(t, table)
	conn, err := f.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey("table", "public."+table)); err != nil {
		t.Fatal(err)
	}
	_, err = Run(ctx, f.pool, upol, f.store, Options{Table: table, Schema: f.schema})
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("concurrent run: %v", err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", lockKey("table", "public."+table)); err != nil {
		t.Fatal(err)
	}
	f.run(t, upol, Options{Table: table})
}

// TestRunKeyFailures: a transient keystore failure stops the run (and is
// not counted as undecryptable); a destroyed DEK makes its values
// undecryptable and left alone.
func TestRunKeyFailures(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t)
	table := f.makeUsers(t, 300)
	pol := usersPolicy(t, table)
	f.run(t, pol, Options{Table: table})

	// A cold Store whose keystore cannot be read.
	cold := f.open(t, keys.Options{})
	if _, err := cold.Current(ctx, "pii", "local"); err != nil {
		t.Fatal(err)
	}
	f.exec(t, "ALTER TABLE "+f.schema+".data_keys RENAME TO data_keys_away")
	_, err := Run(ctx, f.pool, pol, failingKeys{cold}, Options{Table: table, Schema: f.schema})
	f.exec(t, "ALTER TABLE "+f.schema+".data_keys_away RENAME TO data_keys")
	if err == nil || !strings.Contains(err.Error(), "data key") {
		t.Fatalf("run with the keystore down: %v", err)
	}

	if _, err := f.store.RotateDEK(ctx, "pii", "local", keys.RotateOptions{Wait: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.DestroyDEK(ctx, "pii", 1, keys.DestroyOptions{MinRetiredAge: -1}); err != nil {
		t.Fatal(err)
	}
	before := f.stored(t, table)
	rep := f.run(t, pol, Options{Table: table})
	if rep.RowsUpdated != 0 || rep.Clean() {
		t.Fatalf("run over destroyed values %+v", rep)
	}
	for _, c := range rep.Columns {
		if c.Undecryptable+c.Null != 300 || c.Reasons[ReasonDestroyedKey] != c.Undecryptable {
			t.Fatalf("column %+v", c)
		}
	}
	after := f.stored(t, table)
	for id, vals := range before {
		for i := range vals {
			if !bytes.Equal(vals[i], after[id][i]) {
				t.Fatalf("row %d column %s changed", id, userColumns[i])
			}
		}
	}
}

// failingKeys forgets every DEK it is asked for by id, so each value
// needs the keystore.
type failingKeys struct{ *keys.Store }

func (k failingKeys) ByID(ctx context.Context, id uint32) (*crypto.Key, error) {
	k.Purge()
	return k.Store.ByID(ctx, id)
}

// TestRunRate: the rate limit holds the run to about the rate.
func TestRunRate(t *testing.T) {
	f := newFixture(t)
	table := f.makeUsers(t, 600)
	pol := usersPolicy(t, table)
	began := time.Now()
	rep := f.run(t, pol, Options{Table: table, Rate: 2000, BatchSize: 100})
	// Each batch of 100 waits for its share of the rate: the 7th read (the
	// empty one that ends the pass) starts 0.3s in.
	if el := time.Since(began); el < 300*time.Millisecond || rep.RowsPerSecond > 2000 {
		t.Fatalf("600 rows at --rate 2000 took %v (%.0f rows/s)", el, rep.RowsPerSecond)
	}
}

func TestKeyUsage(t *testing.T) {
	ctx := t.Context()
	f := newFixture(t)
	table := f.makeUsers(t, 100)
	pol := usersPolicy(t, table)
	f.run(t, pol, Options{Table: table})
	v1, _ := f.store.Current(ctx, "pii", "local")
	// Other schema, same table name, matched by an unqualified policy
	// table.
	other := unique("s")
	f.exec(t, "CREATE SCHEMA "+other)
	f.exec(t, "CREATE TABLE "+other+"."+table+" (id int PRIMARY KEY, ssn bytea, note text)")
	ssn := pol.Table("public", table, nil).Column("ssn")
	env, _ := v1.Encrypt(nil, crypto.ModeRandomized, []byte("x"), []byte(ssn.Identity()), nil)
	f.exec(t, "INSERT INTO "+other+"."+table+" VALUES (1, $1), (2, NULL), (3, 'plain')", env)

	count := func(p *policy.Policy, id uint32) map[string]int64 {
		us, err := KeyUsage(ctx, f.pool, p, "pii", id)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for _, u := range us {
			out[u.Table+"."+u.Column] = u.Values
		}
		return out
	}
	var nSSN, nPhoto int64
	if err := f.pool.QueryRow(ctx, "SELECT count(ssn), count(photo) FROM "+table).Scan(&nSSN, &nPhoto); err != nil {
		t.Fatal(err)
	}
	got := count(pol, v1.ID())
	if len(got) != 8 || got["public."+table+".ssn"] != nSSN || got["public."+table+".email"] != 100 ||
		got["public."+table+".photo"] != nPhoto {
		t.Fatalf("usage %v", got)
	}
	unq := parsePolicy(t, `version: 1
keys: {pii: {kms: local}, other: {kms: local}}
tables:
  `+table+`: {ssn: {key: pii, type: text}, note: {key: pii, type: text}, email: {key: other, type: text}}
`)
	got = count(unq, v1.ID())
	if len(got) != 2 || got[other+"."+table+".ssn"] != 1 || got["public."+table+".ssn"] != nSSN {
		t.Fatalf("usage through an unqualified policy table %v", got)
	}
	if got := count(pol, v1.ID()+1000); got["public."+table+".ssn"] != 0 {
		t.Fatalf("usage of an unused id %v", got)
	}
}

// TestRunCompositeKey: a primary key of several columns, of types whose
// text form must round-trip (text in mixed case and UTF-8, timestamptz),
// with names that need quoting; stopped and resumed.
func TestRunCompositeKey(t *testing.T) {
	f := newFixture(t)
	table := unique("Composite")
	qt := `"` + table + `"`
	f.exec(t, `CREATE TABLE `+qt+` ("Tenant Id" text, at timestamptz, seq int, "SSN" bytea, PRIMARY KEY ("Tenant Id", at, seq))`)
	f.exec(t, `INSERT INTO `+qt+` SELECT t, timestamptz '2024-03-01 10:00:00.123456+02' + (i % 7) * interval '1 hour', i,
		convert_to('ssn ' || t || ' ' || i, 'UTF8')
		FROM unnest(ARRAY['Acme', 'acme', 'Zeta', 'ümlaut', 'O''Brien', '']) t, generate_series(1, 100) i`)
	pol := parsePolicy(t, `version: 1
keys: {pii: {kms: local}}
tables:
  public."`+table+`":
    '"SSN"': {key: pii, type: text, migrating: true}
`)
	rep := f.run(t, pol, Options{Table: qt, BatchSize: 37, StopAfterBatches: 5})
	if rep.Complete || rep.RowsUpdated != 185 {
		t.Fatalf("stopped run %+v", rep)
	}
	rep = f.run(t, pol, Options{Table: qt, BatchSize: 37})
	if !rep.Complete || !rep.Resumed || rep.RowsScanned != 600-185 || rep.RowsUpdated != 600-185 {
		t.Fatalf("resumed run %+v", rep)
	}
	var plain, total int
	if err := f.pool.QueryRow(t.Context(), `SELECT count(*) FILTER (WHERE substr("SSN", 1, 2) <> '\xc1f5'::bytea), count(*) FROM `+qt).Scan(&plain, &total); err != nil {
		t.Fatal(err)
	}
	if plain != 0 || total != 600 {
		t.Fatalf("%d of %d rows still plaintext", plain, total)
	}
	col := pol.Table("public", table, nil).Column("SSN")
	cur, _ := f.store.Current(t.Context(), "pii", "local")
	var v []byte
	if err := f.pool.QueryRow(t.Context(), `SELECT "SSN" FROM `+qt+` WHERE "Tenant Id" = 'ümlaut' AND seq = 42`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if pt, err := cur.Decrypt(nil, v, []byte(col.Identity())); err != nil || string(pt) != "ssn ümlaut 42" {
		t.Fatalf("decrypt: %q %v", pt, err)
	}
	if rep := f.run(t, pol, Options{Table: qt}); rep.RowsUpdated != 0 {
		t.Fatalf("next pass %+v", rep)
	}
}

// TestRunInterrupted: cancelling the context (SIGINT in the CLI) stops the
// run after the batch in hand, with the checkpoint after it.
func TestRunInterrupted(t *testing.T) {
	f := newFixture(t)
	table := f.makeUsers(t, 1000)
	pol := usersPolicy(t, table)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	rep, err := Run(ctx, f.pool, pol, f.store, Options{Table: table, Schema: f.schema, BatchSize: 100,
		Progress: func(p Progress) {
			if p.Done == 200 {
				cancel()
			}
		}})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "interrupted after 200 rows; run again to resume") {
		t.Fatalf("interrupted run: %v", err)
	}
	if rep == nil || rep.Complete || rep.RowsUpdated != 200 {
		t.Fatalf("report %+v", rep)
	}
	rep = f.run(t, pol, Options{Table: table})
	if !rep.Resumed || rep.ResumedAt != 200 || rep.RowsUpdated != 800 {
		t.Fatalf("resumed run %+v", rep)
	}
	f.checkEncrypted(t, pol, table)
}
