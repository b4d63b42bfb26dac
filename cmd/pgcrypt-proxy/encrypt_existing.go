package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/migrate"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

const encryptExistingUsage = `Usage: pgcrypt-proxy encrypt-existing --table T [flags] [--config FILE] [--SETTING VALUE ...]

Encrypts, in place and online, the legacy plaintext of table T's policy
columns, and re-encrypts values under data-key versions other than the
active one (after "keys rotate-dek"). It walks the table in primary-key
order in short transactions; each UPDATE is a compare-and-swap, so writes
that clients make through the proxy meanwhile are never overwritten. A
checkpoint (table encrypt_checkpoints in the keystore schema) lets a run
that was stopped or killed resume where it stopped. A second run changes
nothing. Values that look like ciphertext but do not decrypt (tampered,
copied from another column, under a destroyed key) are reported and left
alone, never encrypted as plaintext.

Migrating a plaintext column:
  1. ALTER TABLE users ALTER COLUMN ssn TYPE bytea USING convert_to(ssn, 'UTF8');
     (text, varchar; int4send(age) for int4, int2send, int8send, float8send,
     boolsend, date_send, timestamp_send, timestamptz_send, numeric_send,
     uuid_send, jsonb_send; bytea stays as it is)
  2. mark the column migrating: true in the policy; reload the proxies
  3. pgcrypt-proxy encrypt-existing --table users --dry-run, then without --dry-run
  4. when a run reports no plaintext and no old-key values, remove
     migrating: true and reload

Flags:
  --table T          the table (as SQL names it: users, public.users); required
  --dsn DSN          the database holding the table (default: keystore.dsn)
  --batch N          rows per batch and transaction (default 1000)
  --rate R           at most R rows read per second (default: no limit)
  --workers N        goroutines doing cryptography (default: the number of CPUs)
  --lock-timeout D   how long an UPDATE waits for application row locks before the
                     batch is retried (default 5s)
  --dry-run          count plaintext, old-key, current and undecryptable values
                     of the whole table; write nothing
  --json             print the report as JSON on stdout

Progress: a bar on a terminal (stderr), else a log line every 5s. Exit
status: 0 done (or dry run), 1 failed or interrupted (run again to resume),
2 usage, 3 done but values were left alone (undecryptable, invalid, or rows
that kept changing under concurrent writes): see the report and the log.
`

func encryptExisting(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("encrypt-existing", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, encryptExistingUsage) }
	table := fs.String("table", "", "table to encrypt")
	dsn := fs.String("dsn", "", "database holding the table (default keystore.dsn)")
	batch := fs.Int("batch", migrate.DefaultBatchSize, "rows per batch")
	rate := fs.Float64("rate", 0, "rows per second (0: no limit)")
	workers := fs.Int("workers", 0, "crypto goroutines (default: CPUs)")
	lockTimeout := fs.Duration("lock-timeout", migrate.DefaultLockTimeout, "row lock wait before a batch is retried")
	dryRun := fs.Bool("dry-run", false, "count only; write nothing")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	load := configFlags(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "pgcrypt-proxy encrypt-existing: "+format+"\n\n%s", append(a, encryptExistingUsage)...)
		return 2
	}
	switch {
	case len(pos) > 0:
		return usage("unexpected argument %q", pos[0])
	case *table == "":
		return usage("--table is required")
	case *batch < 1 || *batch > 100_000:
		return usage("--batch must be between 1 and 100000")
	case *rate < 0:
		return usage("--rate must not be negative")
	}
	cfg, err := load()
	if err != nil {
		fmt.Fprintf(stderr, "pgcrypt-proxy: invalid configuration:\n%v\n", indent(err))
		return 2
	}
	fail := failer("encrypt-existing", stderr)
	pol, err := loadMigrationPolicy(cfg)
	if err != nil {
		return fail(err)
	}
	dataDSN := *dsn
	if dataDSN == "" {
		dataDSN = cfg.Keystore.DSN.Value()
	}
	if dataDSN == "" {
		return usage("no database: set keystore.dsn (config, --keystore.dsn, PGCRYPT_KEYSTORE_DSN) or --dsn")
	}
	if cfg.Keystore.DSN == "" {
		cfg.Keystore.DSN = config.Secret(dataDSN)
	}

	ctx, cancel := commandContext()
	defer cancel()
	tty := isTTY(stderr)
	log := newLogger(cfg.Log, stderr)
	engineLog := log
	if tty {
		// The bar shows progress; the log keeps to problems.
		engineLog = log.Level(max(log.GetLevel(), zerolog.WarnLevel))
	}

	keks, err := openKEKs(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	defer closeKEKs(keks)
	kpool, err := keystorePool(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	defer kpool.Close()
	var ks migrate.Keys
	store, err := keys.Open(ctx, kpool, keks, keys.Options{Schema: cfg.Keystore.Schema, Logger: engineLog, ReadOnly: *dryRun})
	switch {
	case *dryRun && errors.Is(err, keys.ErrNoKeystore):
		ks = noDEKs{}
	case err != nil:
		return fail(err)
	default:
		ks = store
	}
	dpool, err := pgxpool.New(ctx, dataDSN)
	if err != nil {
		return fail(fmt.Errorf("database %s: %w", config.RedactDSN(dataDSN), err))
	}
	defer dpool.Close()

	var bar *migrateProgressBar
	prog := migrateProgressLog(log, 5*time.Second)
	if tty {
		bar = &migrateProgressBar{w: stderr}
		prog = bar.update
	}
	rep, err := migrate.Run(ctx, dpool, pol, ks, migrate.Options{
		Table: *table, BatchSize: *batch, Rate: *rate, DryRun: *dryRun, Schema: cfg.Keystore.Schema,
		Workers: *workers, LockTimeout: *lockTimeout, Logger: engineLog, Progress: prog,
	})
	if bar != nil {
		bar.finish()
	}
	if rep != nil {
		if *asJSON {
			if code := writeJSON(stdout, stderr, rep); code != 0 {
				return code
			}
		} else {
			printMigrateReport(stdout, rep)
		}
	}
	if err != nil {
		return fail(err)
	}
	if !rep.Complete {
		return fail(errors.New("stopped before the end of the table; run again to resume"))
	}
	if !*dryRun && !rep.Clean() {
		return 3
	}
	return 0
}

// loadMigrationPolicy reads the config's policy file and checks that its keys name
// configured kms backends.
func loadMigrationPolicy(cfg *config.Config) (*policy.Policy, error) {
	if cfg.PolicyFile == "" {
		return nil, errors.New("policy_file is not set (config file, --policy_file or PGCRYPT_POLICY_FILE)")
	}
	pol, err := policy.Load(cfg.PolicyFile)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, k := range pol.Keys {
		if _, ok := cfg.KMS[k.KMS]; !ok {
			errs = append(errs, fmt.Errorf("policy key %q uses kms %q, which the config does not define under kms:", k.Name, k.KMS))
		}
	}
	return pol, errors.Join(errs...)
}

// noDEKs is the keystore of a dry run before the keystore exists: no DEK
// at all.
type noDEKs struct{}

func (noDEKs) Current(context.Context, string, string) (*crypto.Key, error) {
	return nil, &keys.Error{Op: "current", Kind: keys.ErrNoKeystore}
}

func (noDEKs) ByID(_ context.Context, id uint32) (*crypto.Key, error) {
	return nil, &keys.Error{Op: "by id", ID: id, Kind: keys.ErrNotFound}
}

// printMigrateReport writes a run's report for people.
func printMigrateReport(w io.Writer, r *migrate.Report) {
	what := "pass complete"
	switch {
	case r.DryRun:
		what = "dry run: nothing written"
	case !r.Complete:
		what = "stopped part-way; run again to resume"
	}
	resumed := ""
	if r.Resumed {
		resumed = fmt.Sprintf(" (resumed after %s rows)", thousands(r.ResumedAt))
	}
	fmt.Fprintf(w, "%s: %s rows scanned%s in %s (%s rows/s), %s updated, %s skipped; %s\n",
		r.Table, thousands(r.RowsScanned), resumed, r.Elapsed.Round(time.Millisecond), thousands(int64(r.RowsPerSecond)),
		thousands(r.RowsUpdated), thousands(r.RowsSkipped), what)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "COLUMN\tKEY\tMODE\tPLAINTEXT\tOLD_KEY\tCURRENT\tNULL\tUNDECRYPTABLE\tINVALID\tWRITTEN\t")
	for _, c := range r.Columns {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", c.Column, c.Key, c.Mode, c.Plaintext, c.OldKey, c.Current,
			c.Null, c.Undecryptable, c.Invalid, c.Encrypted+c.Reencrypted)
	}
	tw.Flush()
	for _, c := range r.Columns {
		if len(c.OldKeys) > 0 {
			var parts []string
			for _, kv := range c.SortedOldKeys() {
				parts = append(parts, fmt.Sprintf("%d under data key id %d", kv[1], kv[0]))
			}
			fmt.Fprintf(w, "  %s: old-key values: %s (active: id %d)\n", c.Column, strings.Join(parts, ", "), c.CurrentKeyID)
		}
		if len(c.Reasons) > 0 {
			reasons := make([]string, 0, len(c.Reasons))
			for k := range c.Reasons {
				reasons = append(reasons, k)
			}
			sort.Strings(reasons)
			for i, k := range reasons {
				reasons[i] = fmt.Sprintf("%d %s", c.Reasons[k], k)
			}
			fmt.Fprintf(w, "  %s: left alone: %s (the log names the first rows)\n", c.Column, strings.Join(reasons, ", "))
		}
	}
}

// thousands formats n with thousands separators.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// isTTY reports whether w is a character device (a terminal).
func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// migrateProgressLog logs progress at most every interval, and the last batch.
func migrateProgressLog(log zerolog.Logger, interval time.Duration) func(migrate.Progress) {
	var last time.Time
	return func(p migrate.Progress) {
		if time.Since(last) < interval && p.Done < p.Total {
			return
		}
		last = time.Now()
		pct := 100.0
		if p.Total > 0 {
			pct = min(100, float64(p.Done)*100/float64(p.Total))
		}
		log.Info().Str("table", p.Table).Int64("rows_done", p.Done).Int64("rows_total_estimate", p.Total).
			Float64("percent", float64(int(pct*10))/10).Int64("rows_updated", p.Updated).Int64("rows_skipped", p.Skipped).
			Float64("rows_per_second", float64(int(p.Rate))).Msg("encrypt-existing progress")
	}
}

// migrateProgressBar draws one line on a terminal, at most every 100ms.
type migrateProgressBar struct {
	mu   sync.Mutex
	w    io.Writer
	last time.Time
	p    migrate.Progress
}

const migrateBarWidth = 30

func (b *migrateProgressBar) update(p migrate.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.p = p
	if time.Since(b.last) < 100*time.Millisecond {
		return
	}
	b.drawLocked()
}

func (b *migrateProgressBar) drawLocked() {
	p := b.p
	b.last = time.Now()
	frac := 1.0
	if p.Total > 0 {
		frac = min(1, float64(p.Done)/float64(p.Total))
	}
	full := int(frac * migrateBarWidth)
	eta := ""
	if p.Rate > 0 && p.Total > p.Done {
		eta = " ETA " + time.Duration(float64(p.Total-p.Done)/p.Rate*float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(b.w, "\r\033[K%s [%s%s] %3.0f%% %s/%s rows  %s rows/s%s", p.Table, strings.Repeat("█", full),
		strings.Repeat("░", migrateBarWidth-full), frac*100, thousands(p.Done), thousands(p.Total), thousands(int64(p.Rate)), eta)
}

// finish draws the last state and ends the line.
func (b *migrateProgressBar) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.p.Table != "" {
		b.drawLocked()
		fmt.Fprintln(b.w)
	}
}
