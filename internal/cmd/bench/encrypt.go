package main

// The encryption workloads of issue 4 ("Speed"): pgbench custom scripts
// that insert and select rows with three encrypted columns (two randomized,
// one deterministic and looked up by equality) through the proxy, each
// paired with a plain twin that runs the same statements on an unencrypted
// copy of the table, through the same proxy and directly.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// The tables. bench_enc and bench_plain hold encRows identical rows (in
// bench_enc encrypted by the proxy) for the select and scan workloads;
// bench_enc_ins and bench_plain_ins receive the inserts and are emptied
// before every run.
const (
	encRows  = 100000 // rows of bench_enc and bench_plain
	scanRows = 10000  // rows of a scan-10k transaction

	// Constant values of the insert workloads, as long as the prefilled
	// ones (pgbench cannot build strings; -D passes them as variables).
	insA = "Customer 0000000"
	insB = "customer0000000@example.com"
)

// encPolicy is the policy the proxy always runs with in the bench (unless
// -no-policy): the encrypted tables; the plain twins are not in it.
const encPolicy = `# written by internal/cmd/bench; removed when the bench ends
version: 1
keys: {pii: {kms: local}}
tables:
  public.bench_enc:
    a: {key: pii, type: text}
    b: {key: pii, type: text}
    c: {key: pii, type: text, mode: deterministic}
  public.bench_enc_ins:
    a: {key: pii, type: text}
    b: {key: pii, type: text}
    c: {key: pii, type: text, mode: deterministic}
  public.bench_copy_enc:
    a: {key: pii, type: text}
    b: {key: pii, type: text, mode: deterministic}
`

// encTables creates the four tables (directly, before the proxy starts).
// Encrypted columns are bytea; their twins text. The deterministic column
// is indexed in both select tables, so the lookup is an index scan on both.
var encTables = []string{
	"DROP TABLE IF EXISTS bench_enc, bench_plain, bench_enc_ins, bench_plain_ins",
	"CREATE TABLE bench_enc (id int PRIMARY KEY, a bytea, b bytea, c bytea)",
	"CREATE TABLE bench_plain (id int PRIMARY KEY, a text, b text, c text)",
	"CREATE INDEX ON bench_enc (c)",
	"CREATE INDEX ON bench_plain (c)",
	"CREATE TABLE bench_enc_ins (id bigserial PRIMARY KEY, a bytea, b bytea, c bytea)",
	"CREATE TABLE bench_plain_ins (id bigserial PRIMARY KEY, a text, b text, c text)",
}

// prefillValues are the columns of row id of bench_enc and bench_plain.
func prefillValues(id int) (a, b, c string) {
	return fmt.Sprintf("Customer %07d", id), fmt.Sprintf("customer%07d@example.com", id), strconv.Itoa(id)
}

// encWorkloads returns the issue-4 pairs, each as the plain twin followed
// by the enc workload, for both query modes. In -M prepared pgbench sends
// every :variable as a text parameter; in -M simple it substitutes it into
// the SQL text, hence the quotes there.
func encWorkloads() []workload {
	type kind struct {
		name     string
		prepared string // script body with %s for the table
		simple   string
		before   bool // truncate the table before each run
	}
	kinds := []kind{
		{
			name: "insert",
			prepared: "\\set v random(1, 1000000000)\n" +
				"INSERT INTO %s (a, b, c) VALUES (:a, :b, :v);\n",
			simple: "\\set v random(1, 1000000000)\n" +
				"INSERT INTO %s (a, b, c) VALUES (':a', ':b', ':v');\n",
			before: true,
		},
		{
			name: "select",
			prepared: fmt.Sprintf("\\set v random(1, %d)\n", encRows) +
				"SELECT a, b, c FROM %s WHERE c = :v;\n",
			simple: fmt.Sprintf("\\set v random(1, %d)\n", encRows) +
				"SELECT a, b, c FROM %s WHERE c = ':v';\n",
		},
		{
			name:     "scan-10k",
			prepared: "SELECT a FROM %s WHERE id <= " + strconv.Itoa(scanRows) + ";\n",
			simple:   "SELECT a FROM %s WHERE id <= " + strconv.Itoa(scanRows) + ";\n",
		},
	}
	var ws []workload
	for _, k := range kinds {
		for _, mode := range []string{"prepared", "simple"} {
			body := k.prepared
			if mode == "simple" {
				body = k.simple
			}
			args := []string{"-M", mode}
			if k.name == "insert" {
				args = append(args, "-D", "a="+insA, "-D", "b="+insB)
			}
			pair := func(prefix, table string, targets []string) workload {
				name := prefix + "-" + k.name + "/" + mode
				w := workload{
					Name:    name,
					Args:    args,
					Scripts: []script{{Name: prefix + "-" + k.name + "-" + mode + ".sql", Body: fmt.Sprintf(body, table)}},
					Targets: targets,
				}
				if k.before {
					w.Before = []string{"TRUNCATE " + table + " RESTART IDENTITY"}
				}
				return w
			}
			table := "bench_%s"
			if k.name == "insert" {
				table = "bench_%s_ins"
			}
			plain := pair("plain", fmt.Sprintf(table, "plain"), []string{targetDirect, targetProxy})
			enc := pair("enc", fmt.Sprintf(table, "enc"), []string{targetProxy})
			enc.Twin = plain.Name
			ws = append(ws, plain, enc)
		}
	}
	return ws
}

// isEnc reports whether w belongs to issue 4's pairs (enc-* or plain-*).
func isEnc(name string) bool {
	return strings.HasPrefix(name, "enc-") || strings.HasPrefix(name, "plain-")
}

// needsPrefill reports whether w reads the prefilled tables.
func needsPrefill(w workload) bool {
	return isEnc(w.Name) && !strings.Contains(w.Name, "-insert/")
}

// encConfig is what the proxy needs to encrypt: a local keyring under a
// fresh master key, the policy, the keystore (in the bench's cluster).
type encConfig struct {
	keystoreDSN string
	keyring     string
	masterFile  string
	policyFile  string
}

// yaml is the proxy configuration's part for encryption.
func (e *encConfig) yaml() string {
	if e == nil {
		return ""
	}
	return fmt.Sprintf("keystore: {dsn: %q, schema: pgcrypt_bench}\nkms:\n  local: {type: local, keyring: %q, master_key_file: %q}\npolicy_file: %q\n",
		e.keystoreDSN, e.keyring, e.masterFile, e.policyFile)
}

// prepareEncryption creates the tables directly and writes keyring, master
// key and policy into a temp dir.
func (b *bench) prepareEncryption(ctx context.Context, cluster *pgtest.Cluster) (*encConfig, error) {
	if err := b.execAll(ctx, encTables); err != nil {
		return nil, fmt.Errorf("encryption tables: %w", err)
	}
	dir, err := makeTempDir("", "keys")
	if err != nil {
		return nil, err
	}
	b.onCleanup(func() error { return os.RemoveAll(dir) })
	mk := make([]byte, kms.MasterKeySize)
	if _, err := rand.Read(mk); err != nil {
		return nil, err
	}
	e := &encConfig{
		// A role that may CREATE SCHEMA (scram_user owns the database);
		// TLS off: the keystore is read at startup, not per statement.
		keystoreDSN: cluster.DSN(pgtest.UserSCRAM, pgtest.Database, "sslmode=disable"),
		keyring:     filepath.Join(dir, "keyring.json"),
		masterFile:  filepath.Join(dir, "master.key"),
		policyFile:  filepath.Join(dir, "policy.yaml"),
	}
	if err := os.WriteFile(e.masterFile, []byte(base64.StdEncoding.EncodeToString(mk)+"\n"), 0o600); err != nil {
		return nil, err
	}
	master, err := kms.NewMasterKey(mk)
	if err != nil {
		return nil, err
	}
	kek, err := kms.InitLocal(ctx, kms.LocalOptions{Path: e.keyring, MasterKey: master})
	if err != nil {
		return nil, fmt.Errorf("local keyring: %w", err)
	}
	kek.Close()
	if err := os.WriteFile(e.policyFile, []byte(encPolicy), 0o600); err != nil {
		return nil, err
	}
	return e, nil
}

// Prefill settings: parallel connections through the proxy, rows per
// pgx.Batch (one prepared INSERT, a Bind/Execute per row, one Sync).
const (
	prefillConns = 4
	prefillBatch = 1000
)

// prefillInsert is the statement the prefill sends through the proxy.
const prefillInsert = "INSERT INTO bench_enc (id, a, b, c) VALUES ($1, $2, $3, $4)"

// prefill loads encRows rows into bench_plain directly and the same rows
// into bench_enc through the proxy (so they are encrypted), checks that the
// proxy finds one by its deterministic column and returns it decrypted,
// and vacuums both. It returns how long the encrypted half took.
func (b *bench) prefill(ctx context.Context, proxy endpoint) (time.Duration, error) {
	began := time.Now()
	plain := fmt.Sprintf("INSERT INTO bench_plain (id, a, b, c) SELECT i, 'Customer ' || lpad(i::text, 7, '0'), "+
		"'customer' || lpad(i::text, 7, '0') || '@example.com', i::text FROM generate_series(1, %d) i", encRows)
	if err := b.execAll(ctx, []string{"TRUNCATE bench_plain, bench_enc", plain}); err != nil {
		return 0, fmt.Errorf("prefill bench_plain (directly): %w", err)
	}
	b.logf("bench: prefill: %d rows into bench_plain directly in %v", encRows, time.Since(began).Round(time.Millisecond))

	began = time.Now()
	dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=%s application_name=pgcrypt-bench-prefill",
		proxy.host, proxy.port, proxy.user, proxy.db, proxy.sslmode())
	var wg sync.WaitGroup
	errs := make([]error, prefillConns)
	per := (encRows + prefillConns - 1) / prefillConns
	for i := range prefillConns {
		lo, hi := i*per+1, min((i+1)*per, encRows)
		wg.Go(func() { errs[i] = prefillRange(ctx, dsn, lo, hi) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("prefill bench_enc through the proxy: %w", err)
	}
	took := time.Since(began)
	b.logf("bench: prefill: %d rows into bench_enc through the proxy in %v (%d connections, batches of %d, %.0f rows/s)",
		encRows, took.Round(time.Millisecond), prefillConns, prefillBatch, float64(encRows)/took.Seconds())

	if err := b.execAll(ctx, []string{"VACUUM ANALYZE bench_enc", "VACUUM ANALYZE bench_plain"}); err != nil {
		return took, err
	}
	var n int
	if err := b.admin.QueryRow(ctx, "SELECT count(*) FROM bench_enc WHERE a IS NOT NULL AND c IS NOT NULL").Scan(&n); err != nil {
		return took, err
	}
	if n != encRows {
		return took, fmt.Errorf("prefill: bench_enc holds %d complete rows, want %d", n, encRows)
	}
	return took, checkEncrypted(ctx, dsn)
}

// prefillRange inserts rows lo..hi of bench_enc on one connection.
func prefillRange(ctx context.Context, dsn string, lo, hi int) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for start := lo; start <= hi; start += prefillBatch {
		batch := &pgx.Batch{}
		for id := start; id <= min(start+prefillBatch-1, hi); id++ {
			a, b, c := prefillValues(id)
			batch.Queue(prefillInsert, id, a, b, c)
		}
		if err := conn.SendBatch(ctx, batch).Close(); err != nil {
			return fmt.Errorf("rows %d-%d: %s: %w", start, min(start+prefillBatch-1, hi), prefillInsert, err)
		}
	}
	return nil
}

// checkEncrypted looks a prefilled row up through the proxy by its
// deterministic column, in both protocols, and checks the decrypted values.
func checkEncrypted(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	id := encRows / 2
	wa, wb, wc := prefillValues(id)
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{"SELECT a, b, c FROM bench_enc WHERE c = $1", []any{wc}},
		{"SELECT a, b, c FROM bench_enc WHERE c = '" + wc + "'", []any{pgx.QueryExecModeSimpleProtocol}},
	} {
		var a, b, c string
		if err := conn.QueryRow(ctx, q.sql, q.args...).Scan(&a, &b, &c); err != nil {
			return fmt.Errorf("check through the proxy: %s: %w", q.sql, err)
		}
		if a != wa || b != wb || c != wc {
			return fmt.Errorf("check through the proxy: %s: got (%q, %q, %q), want (%q, %q, %q)", q.sql, a, b, c, wa, wb, wc)
		}
	}
	return nil
}

// ---- report ----

// encRow is one row of the encryption table: an enc workload and its
// plain twin at a client count.
type encRow struct {
	Workload string `json:"workload"`       // enc-*
	Twin     string `json:"plain_workload"` // plain-*
	Clients  int    `json:"clients"`
	// Medians over the rounds; nil when the cell did not run, Runs 0 when
	// every run of it failed.
	Enc         *targetSummary `json:"enc_proxy,omitempty"`
	Plain       *targetSummary `json:"plain_proxy,omitempty"`
	PlainDirect *targetSummary `json:"plain_direct,omitempty"`
	// Ratios are 0 (omitted) when either side is missing. The TPS and
	// latency ratios are paired: the median over the rounds of each
	// round's enc/plain ratio (the two ran back to back in that round),
	// which cancels the drift of the machine from round to round; with
	// no round holding both, the ratio of the medians.
	TPSRatio       float64   `json:"enc_vs_plain_tps,omitempty"`
	LatencyRatio   float64   `json:"enc_vs_plain_latency,omitempty"`
	RoundTPSRatios []float64 `json:"enc_vs_plain_tps_by_round,omitempty"`
	RoundLatRatios []float64 `json:"enc_vs_plain_latency_by_round,omitempty"`
	CPURatio       float64   `json:"enc_vs_plain_cpu_per_txn,omitempty"`
	PlainVsDirect  float64   `json:"plain_proxy_vs_direct_tps,omitempty"`
	OtherBusy      float64   `json:"other_busy_pct"`
}

// encSummary pairs the cells of the enc workloads with their twins',
// and the runs of each round for the paired ratios.
func encSummary(cells []*cell, ws []workload, runs []runResult) []*encRow {
	find := func(name string, clients int) *cell {
		for _, c := range cells {
			if c.Workload == name && c.Clients == clients {
				return c
			}
		}
		return nil
	}
	var rows []*encRow
	for _, c := range cells {
		var twin string
		for _, w := range ws {
			if w.Name == c.Workload {
				twin = w.Twin
			}
		}
		if twin == "" {
			continue
		}
		r := &encRow{Workload: c.Workload, Twin: twin, Clients: c.Clients, Enc: c.Targets[targetProxy]}
		for _, t := range c.Targets {
			r.OtherBusy = max(r.OtherBusy, t.OtherBusy)
		}
		if p := find(twin, c.Clients); p != nil {
			r.Plain, r.PlainDirect = p.Targets[targetProxy], p.Targets[targetDirect]
			for _, t := range p.Targets {
				r.OtherBusy = max(r.OtherBusy, t.OtherBusy)
			}
		}
		if ok(r.Enc) && ok(r.Plain) {
			r.RoundTPSRatios, r.RoundLatRatios = roundRatios(runs, c.Workload, twin, c.Clients)
			r.TPSRatio, r.LatencyRatio = median(r.RoundTPSRatios), median(r.RoundLatRatios)
			if len(r.RoundTPSRatios) == 0 {
				r.TPSRatio = ratio(r.Enc.TPS, r.Plain.TPS)
				r.LatencyRatio = ratio(r.Enc.LatencyMS, r.Plain.LatencyMS)
			}
			r.CPURatio = ratio(r.Enc.CPUUsPerTxn, r.Plain.CPUUsPerTxn)
		}
		if ok(r.Plain) && ok(r.PlainDirect) {
			r.PlainVsDirect = ratio(r.Plain.TPS, r.PlainDirect.TPS)
		}
		rows = append(rows, r)
	}
	return rows
}

// roundRatios returns, for every round with a successful run of both
// workload and twin through the proxy, enc/plain TPS and latency.
func roundRatios(runs []runResult, workload, twin string, clients int) (tps, lat []float64) {
	type pair struct{ enc, plain *runResult }
	rounds := map[int]*pair{}
	var order []int
	for i := range runs {
		r := &runs[i]
		if r.Target != targetProxy || r.Clients != clients || r.Error != "" || (r.Workload != workload && r.Workload != twin) {
			continue
		}
		p := rounds[r.Round]
		if p == nil {
			p = &pair{}
			rounds[r.Round] = p
			order = append(order, r.Round)
		}
		if r.Workload == workload {
			p.enc = r
		} else {
			p.plain = r
		}
	}
	slices.Sort(order)
	for _, n := range order {
		p := rounds[n]
		if p.enc == nil || p.plain == nil {
			continue
		}
		if t := ratio(p.enc.TPS, p.plain.TPS); t > 0 {
			tps = append(tps, t)
		}
		if l := ratio(p.enc.LatencyMS, p.plain.LatencyMS); l > 0 {
			lat = append(lat, l)
		}
	}
	return tps, lat
}

// The targets of issue 4, at encGoalClients clients, through the proxy.
const (
	encGoalClients  = 16
	encGoalTPS      = 0.9 // enc TPS at least this times plain TPS (select, insert)
	encGoalScanLat  = 3.0 // enc scan latency at most this times plain's
	encGoalScanKind = "scan-10k"
)

// encChecks evaluates issue 4's targets, in each query mode.
func encChecks(rows []*encRow) []check {
	var checks []check
	for _, mode := range []string{"prepared", "simple"} {
		for _, kind := range []string{"select", "insert", encGoalScanKind} {
			name := fmt.Sprintf("enc-%s TPS >= %.1fx plain-%s TPS through the proxy (%s, %d clients)", kind, encGoalTPS, kind, mode, encGoalClients)
			if kind == encGoalScanKind {
				name = fmt.Sprintf("enc-%s latency <= %.0fx plain-%s latency through the proxy (%s, %d clients)", kind, encGoalScanLat, kind, mode, encGoalClients)
			}
			ck := check{Issue: 4, Name: name, Result: "n/a"}
			var r *encRow
			for _, x := range rows {
				if x.Workload == "enc-"+kind+"/"+mode && x.Clients == encGoalClients {
					r = x
				}
			}
			switch {
			case r == nil:
				ck.Detail = "not run (see -only and -clients)"
			case !ok(r.Enc):
				ck.Detail = "no successful enc run"
			case !ok(r.Plain):
				ck.Detail = "no successful plain run through the proxy"
			case kind == encGoalScanKind:
				ck.Result = verdict(r.LatencyRatio <= encGoalScanLat)
				ck.Detail = fmt.Sprintf("%.2fx%s; median enc %.3f vs plain %.3f ms",
					r.LatencyRatio, byRound(r.RoundLatRatios), r.Enc.LatencyMS, r.Plain.LatencyMS)
			default:
				ck.Result = verdict(r.TPSRatio >= encGoalTPS)
				ck.Detail = fmt.Sprintf("%.3fx%s; median enc %.0f vs plain %.0f TPS",
					r.TPSRatio, byRound(r.RoundTPSRatios), r.Enc.TPS, r.Plain.TPS)
			}
			checks = append(checks, ck)
		}
	}
	return checks
}

// byRound describes a paired ratio's rounds, when there are several.
func byRound(xs []float64) string {
	if len(xs) < 2 {
		return ""
	}
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.2f", x)
	}
	return " (median of the rounds' ratios: " + strings.Join(parts, ", ") + ")"
}

// ok reports whether t has a successful run.
func ok(t *targetSummary) bool { return t != nil && t.Runs > 0 }

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}
