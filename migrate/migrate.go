package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// Keys is the keystore as the engine uses it; *keys.Store implements it.
type Keys interface {
	// Current is the active DEK of keyName (created if there is none yet,
	// unless the store is read-only), the one values move to.
	Current(ctx context.Context, keyName, kmsName string) (*crypto.Key, error)
	// ByID is the DEK an envelope's header names, to authenticate it.
	ByID(ctx context.Context, id uint32) (*crypto.Key, error)
}

var _ Keys = (*keys.Store)(nil)

// Defaults of Options.
const (
	DefaultBatchSize   = 1000
	DefaultLockTimeout = 5 * time.Second
	DefaultMaxAttempts = 3
)

// Options configure Run.
type Options struct {
	// Table names the table as SQL would ("users", "public.users"); an
	// unqualified name follows the search_path of pool's sessions.
	Table string
	// BatchSize is the rows per batch and transaction (default 1000).
	BatchSize int
	// Rate bounds the rows read per second, averaged over the run (0: no
	// bound).
	Rate float64
	// DryRun classifies and counts without writing anything, not even the
	// checkpoint; it scans the whole table.
	DryRun bool
	// Schema holds the checkpoint table: the keystore schema (default
	// keys.DefaultSchema).
	Schema string
	// Workers is the number of goroutines doing the cryptography (default
	// GOMAXPROCS).
	Workers int
	// LockTimeout bounds how long a batch's UPDATE waits for row locks held
	// by application transactions before the batch is retried (default 5s).
	LockTimeout time.Duration
	// MaxAttempts is how often a row whose compare-and-swap lost to a
	// concurrent write is tried in a run (default 3).
	MaxAttempts int
	// Logger receives progress and problems (counts, ids, primary keys of
	// problem rows; never values). The zero Logger discards.
	Logger zerolog.Logger
	// Progress, when set, is called after every batch.
	Progress func(Progress)
	// Rand supplies nonces (default crypto/rand).
	Rand io.Reader
	// StopAfterBatches stops the run after this many batches as if it
	// had been interrupted (0: never). For tests of resumption.
	StopAfterBatches int
}

// Progress is the state of a run after a batch.
type Progress struct {
	Table   string        `json:"table"`
	Done    int64         `json:"rows_done"`  // rows of the pass done, including before a resume
	Total   int64         `json:"rows_total"` // estimate
	Scanned int64         `json:"rows_scanned"`
	Updated int64         `json:"rows_updated"`
	Skipped int64         `json:"rows_skipped"`
	Elapsed time.Duration `json:"-"`
	Rate    float64       `json:"rows_per_second"` // rows scanned per second in this run
}

// ColumnReport counts one column's values as the run found them, and what
// it wrote.
type ColumnReport struct {
	Column        string `json:"column"`
	Key           string `json:"key"`
	Mode          string `json:"mode"`
	Type          string `json:"type"`
	CurrentKeyID  uint32 `json:"current_dek_id,omitempty"`
	Null          int64  `json:"null"`
	Plaintext     int64  `json:"plaintext"`
	OldKey        int64  `json:"old_key"`
	Current       int64  `json:"current"`
	Undecryptable int64  `json:"undecryptable"`
	Invalid       int64  `json:"invalid"`
	// Encrypted and Reencrypted count the plaintext and old-key values
	// written, under CurrentKeyID.
	Encrypted   int64 `json:"encrypted"`
	Reencrypted int64 `json:"reencrypted"`
	// OldKeys counts old-key values by the DEK id they were under.
	OldKeys map[uint32]int64 `json:"old_keys,omitempty"`
	// Reasons counts undecryptable and invalid values by reason.
	Reasons map[string]int64 `json:"reasons,omitempty"`
}

// Report is the outcome of a run.
type Report struct {
	Table   string          `json:"table"`
	DryRun  bool            `json:"dry_run"`
	Columns []*ColumnReport `json:"columns"`
	// Resumed: the run continued a pass an earlier run had started;
	// ResumedAt rows of it were done then.
	Resumed   bool  `json:"resumed"`
	ResumedAt int64 `json:"resumed_at_rows,omitempty"`
	// Complete: the pass reached the end of the table.
	Complete    bool  `json:"complete"`
	RowsScanned int64 `json:"rows_scanned"`
	RowsUpdated int64 `json:"rows_updated"`
	// RowsSkipped lost their compare-and-swap to concurrent writes on every
	// attempt; the next run handles them.
	RowsSkipped   int64         `json:"rows_skipped"`
	Batches       int           `json:"batches"`
	Elapsed       time.Duration `json:"-"`
	Seconds       float64       `json:"seconds"`
	RowsPerSecond float64       `json:"rows_per_second"`
}

// Clean reports whether the run left nothing behind: no undecryptable or
// invalid value, no skipped row.
func (r *Report) Clean() bool {
	if r.RowsSkipped > 0 {
		return false
	}
	for _, c := range r.Columns {
		if c.Undecryptable > 0 || c.Invalid > 0 {
			return false
		}
	}
	return true
}

// Pending counts values that a (non-dry) run would still change:
// plaintext and old-key values.
func (r *Report) Pending() int64 {
	var n int64
	for _, c := range r.Columns {
		n += c.Plaintext + c.OldKey
	}
	return n
}

// ErrBusy: another run holds the table.
var ErrBusy = errors.New("another encrypt-existing run is working on this table")

// maxLoggedProblems bounds the rows logged per column and kind of problem.
const maxLoggedProblems = 20

// engine is one run.
type engine struct {
	pool    *pgxpool.Pool
	keys    Keys
	o       Options
	t       *table
	cp      *checkpoint
	cur     []*crypto.Key // per column; nil in a dry run without a DEK
	rep     *Report
	log     zerolog.Logger
	workers []*classifier
	logged  map[string]int // column + verdict → problems logged
	began   time.Time
	done    int64 // rows of the pass done, including before a resume
}

// Run encrypts, in place, the legacy plaintext of o.Table's policy columns
// and re-encrypts values under DEK versions other than the active one,
// online and resumably; see doc.go. pool connects to the database that
// holds the table (and the checkpoint table, in o.Schema). It returns a
// report also when it fails or is interrupted part-way (then with
// Complete false).
func Run(ctx context.Context, pool *pgxpool.Pool, pol *policy.Policy, ks Keys, o Options) (*Report, error) {
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.Rate > 0 && o.Rate < float64(o.BatchSize) {
		o.BatchSize = max(1, int(o.Rate))
	}
	if o.Schema == "" {
		o.Schema = keys.DefaultSchema
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if pol == nil {
		return nil, &UserError{Msg: "no policy"}
	}
	// From here on, pool is the engine's own (enginePool).
	pool, err := enginePool(ctx, pool)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	t, err := resolveTable(ctx, pool, pol, o.Table, o.BatchSize)
	if err != nil {
		return nil, err
	}
	e := &engine{pool: pool, keys: ks, o: o, t: t, logged: map[string]int{},
		log: o.Logger.With().Str("component", "encrypt-existing").Str("table", t.display).Logger(),
		rep: &Report{Table: t.display, DryRun: o.DryRun}}
	for range o.Workers {
		e.workers = append(e.workers, &classifier{keys: ks, rand: o.Rand, dry: o.DryRun})
	}

	// One run per table at a time: a session lock on a connection of its
	// own, released when the run ends or its process dies.
	lockConn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer lockConn.Release()
	var locked bool
	if err := lockConn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", lockKey("table", t.display)).Scan(&locked); err != nil {
		return nil, fmt.Errorf("lock table %s: %w", t.display, err)
	}
	if !locked {
		return nil, &UserError{Msg: "table " + t.display, Err: ErrBusy, Hint: "wait for it to finish, or stop it; a killed run releases the table"}
	}
	defer func() {
		// Not ctx: the lock must be released even after an interrupt.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := lockConn.Exec(uctx, "SELECT pg_advisory_unlock($1)", lockKey("table", t.display)); err != nil {
			lockConn.Conn().Close(uctx) //nolint:errcheck // closing releases the lock anyway
		}
	}()

	// The active DEK of every column's key.
	for _, c := range t.cols {
		k, err := ks.Current(ctx, c.pol.Key, c.kms)
		noDEKYet := errors.Is(err, keys.ErrReadOnly) || errors.Is(err, keys.ErrNoKeystore)
		switch {
		case err == nil:
		case o.DryRun && noDEKYet:
			k = nil // a dry run before the key's first DEK exists: no value can be current
		default:
			return nil, fmt.Errorf("active data key of %q for column %s: %w", c.pol.Key, c.name, err)
		}
		e.cur = append(e.cur, k)
		cr := &ColumnReport{Column: c.name, Key: c.pol.Key, Mode: c.pol.Mode.String(), Type: c.pol.Type.Name,
			OldKeys: map[uint32]int64{}, Reasons: map[string]int64{}}
		if k != nil {
			cr.CurrentKeyID = k.ID()
		}
		e.rep.Columns = append(e.rep.Columns, cr)
	}

	var cursor []string
	if !o.DryRun {
		if err := ensureCheckpointTable(ctx, pool, o.Schema); err != nil {
			return nil, err
		}
		e.cp = &checkpoint{pool: pool, table: pgx.Identifier{o.Schema, CheckpointTable}.Sanitize(),
			tname: t.displayName(), columns: t.columnSet()}
		last, done, err := e.cp.load(ctx)
		if err != nil {
			return nil, err
		}
		if last != nil {
			if len(last) != len(t.pk) {
				return nil, fmt.Errorf("checkpoint of %s holds a primary key of %d columns, the table's has %d: delete its row from %s to start over",
					t.display, len(last), len(t.pk), e.cp.table)
			}
			cursor, e.done = last, done
			e.rep.Resumed, e.rep.ResumedAt = true, done
		} else if err := e.cp.start(ctx); err != nil {
			return nil, err
		}
	}
	total := e.estimate(ctx)
	cols := make([]string, len(t.cols))
	for i, c := range t.cols {
		cols[i] = c.name
	}
	e.log.Info().Strs("columns", cols).Bool("dry_run", o.DryRun).Bool("resumed", e.rep.Resumed).Int64("rows_done", e.done).
		Int64("rows_estimate", total).Int("batch", o.BatchSize).Float64("rate_limit", o.Rate).Int("workers", o.Workers).
		Msg("encrypt-existing started")

	e.began = time.Now()
	err = e.loop(ctx, cursor, total)
	e.rep.Elapsed = time.Since(e.began)
	e.rep.Seconds = e.rep.Elapsed.Seconds()
	if s := e.rep.Elapsed.Seconds(); s > 0 {
		e.rep.RowsPerSecond = float64(e.rep.RowsScanned) / s
	}
	for _, w := range e.workers {
		w.wipe()
	}
	if err == nil && e.rep.Complete && e.cp != nil {
		err = e.cp.complete(context.WithoutCancel(ctx), e.done)
	}
	for i, c := range t.cols {
		if cr := e.rep.Columns[i]; cr.Plaintext > 0 && !c.pol.Migrating {
			e.log.Warn().Str("column", c.name).Int64("plaintext", cr.Plaintext).
				Msg("the column held plaintext but is not marked migrating: true in the policy, so the proxy fails to read those rows until they are encrypted")
		}
	}
	ev := e.log.Info()
	if err != nil {
		ev = e.log.Warn().Err(err)
	}
	ev.Bool("complete", e.rep.Complete).Int64("rows_scanned", e.rep.RowsScanned).Int64("rows_updated", e.rep.RowsUpdated).
		Int64("rows_skipped", e.rep.RowsSkipped).Int64("pending", e.rep.Pending()).Dur("took", e.rep.Elapsed).
		Float64("rows_per_second", e.rep.RowsPerSecond).Msg("encrypt-existing finished")
	return e.rep, err
}

// sessionSettings are the engine's session parameters: primary keys
// travel as text and must read back as the same values whatever the
// caller's settings, and a crash may lose the last batches' commits, which
// a rerun redoes (doc.go).
var sessionSettings = map[string]string{
	"DateStyle":          "ISO, YMD",
	"IntervalStyle":      "postgres",
	"TimeZone":           "UTC",
	"extra_float_digits": "3",
	"synchronous_commit": "off",
}

// enginePool opens the engine's own pool with the caller's connection
// settings plus sessionSettings: the lock session, the reader and the
// writer.
func enginePool(ctx context.Context, pool *pgxpool.Pool) (*pgxpool.Pool, error) {
	cfg := pool.Config()
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	for k, v := range sessionSettings {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "pgcrypt-proxy encrypt-existing"
	}
	cfg.MaxConns = 4
	cfg.MinConns = 0
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return p, nil
}

// estimate is the table's row count as the planner knows it, or counted
// when it was never analyzed.
func (e *engine) estimate(ctx context.Context) int64 {
	var n float64
	if err := e.pool.QueryRow(ctx, "SELECT reltuples FROM pg_class WHERE oid = $1", e.t.oid).Scan(&n); err == nil && n >= 0 {
		return int64(n)
	}
	var c int64
	if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM "+e.t.qualified).Scan(&c); err != nil {
		return -1
	}
	return c
}

// batch is a batch of rows as read: primary keys as text (by column) and
// the policy columns' stored bytes (row-major, nil for NULL).
type batch struct {
	n    int
	pk   [][]string // [pk column][row]
	vals [][]byte   // [row*len(cols)+col]
	err  error
}

func (b *batch) key(row int) []string {
	k := make([]string, len(b.pk))
	for i := range b.pk {
		k[i] = b.pk[i][row]
	}
	return k
}

func (b *batch) keyString(row int) string { return strings.Join(b.key(row), "\x00") }

// loop reads batches one ahead of processing them.
func (e *engine) loop(ctx context.Context, cursor []string, total int64) error {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan *batch, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(batches)
		e.reader(rctx, cursor, batches)
	})
	defer wg.Wait()
	defer cancel()
	interrupted := func() error {
		return fmt.Errorf("interrupted after %d rows; run again to resume: %w", e.done, context.Cause(ctx))
	}
	for b := range batches {
		if b.err != nil {
			if ctx.Err() != nil {
				return interrupted()
			}
			return b.err
		}
		if err := e.process(ctx, b); err != nil {
			return err
		}
		e.rep.Batches++
		e.progress(total)
		if e.o.StopAfterBatches > 0 && e.rep.Batches >= e.o.StopAfterBatches {
			return nil
		}
		if ctx.Err() != nil {
			return interrupted()
		}
	}
	if ctx.Err() != nil {
		return interrupted()
	}
	e.rep.Complete = true
	return nil
}

// reader sends batches in primary-key order until the end of the table,
// honoring the rate limit.
func (e *engine) reader(ctx context.Context, cursor []string, out chan<- *batch) {
	var read int64
	start := time.Now()
	for {
		if e.o.Rate > 0 {
			due := start.Add(time.Duration(float64(read) / e.o.Rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return
				}
			}
		}
		b, err := e.read(ctx, cursor)
		if err != nil {
			select {
			case out <- &batch{err: err}:
			case <-ctx.Done():
			}
			return
		}
		if b.n == 0 {
			return
		}
		read += int64(b.n)
		cursor = b.key(b.n - 1)
		select {
		case out <- b:
		case <-ctx.Done():
			return
		}
	}
}

// resultFormats: primary keys as text, columns as binary bytea.
func (e *engine) resultFormats() pgx.QueryResultFormats {
	f := make(pgx.QueryResultFormats, len(e.t.pk)+len(e.t.cols))
	for i := len(e.t.pk); i < len(f); i++ {
		f[i] = 1
	}
	return f
}

// read reads the batch after cursor (from the start when nil).
func (e *engine) read(ctx context.Context, cursor []string) (*batch, error) {
	sql := e.t.selectFirst
	args := []any{e.resultFormats()}
	if cursor != nil {
		sql = e.t.selectAfter
		for _, k := range cursor {
			args = append(args, k)
		}
	}
	rows, err := e.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", e.t.display, err)
	}
	return e.collect(rows, e.o.BatchSize)
}

// collect copies rows into a batch (RawValues are only valid until Next).
func (e *engine) collect(rows pgx.Rows, hint int) (*batch, error) {
	defer rows.Close()
	npk, ncol := len(e.t.pk), len(e.t.cols)
	b := &batch{pk: make([][]string, npk), vals: make([][]byte, 0, hint*ncol)}
	for i := range b.pk {
		b.pk[i] = make([]string, 0, hint)
	}
	var arena []byte
	for rows.Next() {
		raw := rows.RawValues()
		for i := range npk {
			b.pk[i] = append(b.pk[i], string(raw[i]))
		}
		for i := range ncol {
			v := raw[npk+i]
			if v == nil {
				b.vals = append(b.vals, nil)
				continue
			}
			if cap(arena)-len(arena) < len(v) {
				arena = make([]byte, 0, max(len(v), 256<<10))
			}
			s := len(arena)
			arena = append(arena, v...)
			b.vals = append(b.vals, arena[s:len(arena):len(arena)])
		}
		b.n++
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", e.t.display, err)
	}
	return b, nil
}

// classifyBatch classifies every value of b in parallel.
func (e *engine) classifyBatch(ctx context.Context, b *batch) ([]outcome, error) {
	ncol := len(e.t.cols)
	outs := make([]outcome, len(b.vals))
	nw := min(len(e.workers), max(1, b.n/64))
	per := (b.n + nw - 1) / nw
	errs := make([]error, nw)
	var wg sync.WaitGroup
	for w := range nw {
		lo, hi := w*per, min((w+1)*per, b.n)
		if lo >= hi {
			continue
		}
		wg.Go(func() {
			c := e.workers[w]
			for r := lo; r < hi; r++ {
				for ci, col := range e.t.cols {
					i := r*ncol + ci
					o, err := c.classify(ctx, col, e.cur[ci], b.vals[i])
					if err != nil {
						errs[w] = fmt.Errorf("column %s: %w", col.name, err)
						return
					}
					outs[i] = o
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return outs, nil
}

// process classifies a batch, counts it, writes what must change and
// advances the checkpoint.
func (e *engine) process(ctx context.Context, b *batch) error {
	outs, err := e.classifyBatch(ctx, b)
	if err != nil {
		return err
	}
	e.count(b, outs)
	e.rep.RowsScanned += int64(b.n)
	e.done += int64(b.n)
	if e.o.DryRun {
		return nil
	}
	last := b.key(b.n - 1)
	for attempt := 1; ; attempt++ {
		final := attempt >= e.o.MaxAttempts
		lost, err := e.write(ctx, b, outs, last, final)
		if err != nil {
			return err
		}
		if len(lost) == 0 {
			return nil
		}
		if final {
			e.rep.RowsSkipped += int64(len(lost))
			e.log.Warn().Int("rows", len(lost)).Int("attempts", attempt).
				Msg("rows kept changing under concurrent writes; skipped, the next run handles them")
			return nil
		}
		// Read the rows that changed under us again and retry them. The
		// checkpoint stays before this batch until they are done, so a
		// run killed meanwhile does the batch again.
		if b, err = e.reread(ctx, b, lost); err != nil {
			return err
		}
		if b.n == 0 {
			// Deleted meanwhile: nothing to retry; advance the checkpoint.
			_, err := e.write(ctx, b, nil, last, true)
			return err
		}
		if outs, err = e.classifyBatch(ctx, b); err != nil {
			return err
		}
	}
}

// write runs one batch's compare-and-swap UPDATE and the checkpoint update
// in one transaction and returns the rows (indexes into b) that lost the
// swap. The checkpoint advances to last only when no row was lost or the
// attempt is the final one. It retries the transaction on lock timeouts,
// deadlocks and serialization failures.
func (e *engine) write(ctx context.Context, b *batch, outs []outcome, last []string, final bool) (lost []int, err error) {
	ncol := len(e.t.cols)
	args := make([]any, 0, len(e.t.pk)+2*ncol)
	pk := make([][]string, len(e.t.pk))
	nw := make([][][]byte, ncol)
	old := make([][][]byte, ncol)
	var rows []int
	for r := range b.n {
		change := false
		for ci := range ncol {
			change = change || outs[r*ncol+ci].newVal != nil
		}
		if !change {
			continue
		}
		rows = append(rows, r)
		for i := range pk {
			pk[i] = append(pk[i], b.pk[i][r])
		}
		for ci := range ncol {
			o := outs[r*ncol+ci]
			if o.newVal == nil {
				nw[ci], old[ci] = append(nw[ci], nil), append(old[ci], nil)
			} else {
				nw[ci], old[ci] = append(nw[ci], o.newVal), append(old[ci], b.vals[r*ncol+ci])
			}
		}
	}
	for i := range pk {
		args = append(args, pk[i])
	}
	for ci := range ncol {
		args = append(args, nw[ci], old[ci])
	}
	if len(rows) > 0 {
		// Rows are in key order: the first and the last bound the batch.
		for _, k := range b.key(rows[0]) {
			args = append(args, k)
		}
		for _, k := range b.key(rows[len(rows)-1]) {
			args = append(args, k)
		}
	}

	var updated map[string]bool
	for try := 1; ; try++ {
		updated, err = e.writeTx(ctx, args, len(rows), last, final)
		if err == nil {
			break
		}
		var pe *pgconn.PgError
		if try < 5 && errors.As(err, &pe) && (pe.Code == "55P03" || pe.Code == "40P01" || pe.Code == "40001") && ctx.Err() == nil {
			e.log.Debug().Str("sqlstate", pe.Code).Int("try", try).Msg("batch rolled back; retrying")
			select {
			case <-time.After(time.Duration(try*try) * 50 * time.Millisecond):
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
			continue
		}
		return nil, fmt.Errorf("update %s: %w", e.t.display, err)
	}
	for _, r := range rows {
		if !updated[b.keyString(r)] {
			lost = append(lost, r)
			continue
		}
		e.rep.RowsUpdated++
		for ci := range ncol {
			switch o := outs[r*ncol+ci]; {
			case o.newVal == nil:
			case o.verdict == verdictPlaintext:
				e.rep.Columns[ci].Encrypted++
			default:
				e.rep.Columns[ci].Reencrypted++
			}
		}
	}
	return lost, nil
}

// writeTx is one attempt at a batch's transaction; it returns the primary
// keys (joined by NUL) of the rows updated.
func (e *engine) writeTx(ctx context.Context, args []any, n int, last []string, final bool) (map[string]bool, error) {
	updated := make(map[string]bool, n)
	err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		var qb pgx.Batch
		qb.Queue("SELECT set_config('lock_timeout', $1, true)", fmt.Sprintf("%dms", e.o.LockTimeout.Milliseconds()))
		if n > 0 {
			qb.Queue(e.t.update, args...)
		}
		br := tx.SendBatch(ctx, &qb)
		if _, err := br.Exec(); err != nil {
			br.Close()
			return err
		}
		if n > 0 {
			rows, err := br.Query()
			if err != nil {
				br.Close()
				return err
			}
			for rows.Next() {
				raw := rows.RawValues()
				parts := make([]string, len(raw))
				for i, v := range raw {
					parts[i] = string(v)
				}
				updated[strings.Join(parts, "\x00")] = true
			}
			if err := rows.Err(); err != nil {
				br.Close()
				return err
			}
		}
		if err := br.Close(); err != nil {
			return err
		}
		if len(updated) == n || final {
			var cb pgx.Batch
			e.cp.queueAdvance(&cb, last, e.done)
			return tx.SendBatch(ctx, &cb).Close()
		}
		return nil
	})
	return updated, err
}

// reread reads the rows of b at indexes (ascending) again, by primary
// key, in key order.
func (e *engine) reread(ctx context.Context, b *batch, idx []int) (*batch, error) {
	args := []any{e.resultFormats()}
	for i := range e.t.pk {
		ks := make([]string, len(idx))
		for j, r := range idx {
			ks[j] = b.pk[i][r]
		}
		args = append(args, ks)
	}
	for _, k := range b.key(idx[0]) {
		args = append(args, k)
	}
	for _, k := range b.key(idx[len(idx)-1]) {
		args = append(args, k)
	}
	rows, err := e.pool.Query(ctx, e.t.reread, args...)
	if err != nil {
		return nil, fmt.Errorf("read %s again: %w", e.t.display, err)
	}
	return e.collect(rows, len(idx))
}

// count adds a batch's classification to the report and logs the first
// problem rows of each column.
func (e *engine) count(b *batch, outs []outcome) {
	ncol := len(e.t.cols)
	for i, o := range outs {
		ci := i % ncol
		cr := e.rep.Columns[ci]
		switch o.verdict {
		case verdictNull:
			cr.Null++
		case verdictCurrent:
			cr.Current++
		case verdictOldKey:
			cr.OldKey++
			cr.OldKeys[o.keyID]++
		case verdictPlaintext:
			cr.Plaintext++
		case verdictUndecryptable, verdictInvalid:
			what := "undecryptable"
			if o.verdict == verdictUndecryptable {
				cr.Undecryptable++
			} else {
				cr.Invalid++
				what = "invalid"
			}
			cr.Reasons[o.reason]++
			lk := cr.Column + "\x00" + what
			if e.logged[lk] < maxLoggedProblems {
				e.logged[lk]++
				ev := e.log.Warn().Str("column", cr.Column).Str("reason", o.reason).Strs("primary_key", b.key(i/ncol))
				if o.keyID != 0 {
					ev = ev.Uint32("dek_id", o.keyID)
				}
				if e.logged[lk] == maxLoggedProblems {
					ev = ev.Bool("further_rows_not_logged", true)
				}
				ev.Msgf("%s value left alone", what)
			}
		}
	}
}

// progress reports after a batch.
func (e *engine) progress(total int64) {
	if e.o.Progress == nil {
		return
	}
	el := time.Since(e.began)
	p := Progress{Table: e.t.display, Done: e.done, Total: max(total, e.done), Scanned: e.rep.RowsScanned,
		Updated: e.rep.RowsUpdated, Skipped: e.rep.RowsSkipped, Elapsed: el}
	if s := el.Seconds(); s > 0 {
		p.Rate = float64(e.rep.RowsScanned) / s
	}
	e.o.Progress(p)
}

// SortedOldKeys lists a column's old-key counts by DEK id, for printing.
func (c *ColumnReport) SortedOldKeys() [][2]int64 {
	out := make([][2]int64, 0, len(c.OldKeys))
	for id, n := range c.OldKeys {
		out = append(out, [2]int64{int64(id), n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}
