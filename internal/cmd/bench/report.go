package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// targetSummary is the median over rounds of one target in one cell.
type targetSummary struct {
	TPS         float64   `json:"tps,omitempty"`
	LatencyMS   float64   `json:"latency_ms,omitempty"`
	CPUUsPerTxn float64   `json:"cpu_us_per_txn,omitempty"`
	OtherBusy   float64   `json:"other_busy_pct"` // CPU share of unrelated processes (noise)
	AllTPS      []float64 `json:"tps_all_rounds,omitempty"`
	Runs        int       `json:"runs"`   // successful runs
	Errors      int       `json:"errors"` // failed runs
}

// cell is one row of the table: a workload at a client count.
type cell struct {
	Workload string                    `json:"workload"`
	Clients  int                       `json:"clients"`
	Targets  map[string]*targetSummary `json:"targets"`
	// Ratios are 0 (omitted) when either side is missing.
	ProxyVsDirect    float64 `json:"proxy_vs_direct_tps,omitempty"`
	ProxyVsPgBouncer float64 `json:"proxy_vs_pgbouncer_tps,omitempty"`
	PgBouncerVsDir   float64 `json:"pgbouncer_vs_direct_tps,omitempty"`
	CPUProxyVsPgB    float64 `json:"proxy_vs_pgbouncer_cpu_per_txn,omitempty"`
	// With -nopolicy-proxy: the proxy (with the policy) against the
	// second proxy without one.
	PolicyVsNoPolicyTPS float64 `json:"proxy_vs_nopolicy_tps,omitempty"`
	PolicyVsNoPolicyCPU float64 `json:"proxy_vs_nopolicy_cpu_per_txn,omitempty"`
}

func (c *cell) get(target string) *targetSummary {
	if t := c.Targets[target]; t != nil && t.Runs > 0 {
		return t
	}
	return nil
}

// check is one target of issue 2 or issue 4.
type check struct {
	Issue  int    `json:"issue"`
	Name   string `json:"name"`
	Result string `json:"result"` // PASS, FAIL or n/a
	Detail string `json:"detail"`
}

// noisyPct is the share of the machine used by unrelated processes above
// which the report warns that its figures are unreliable.
const noisyPct = 10

// results is the JSON file.
type results struct {
	Started     time.Time   `json:"started"`
	Interrupted bool        `json:"interrupted,omitempty"`
	Environment environment `json:"environment"`
	Summary     []*cell     `json:"summary"`
	Encryption  []*encRow   `json:"encryption,omitempty"` // issue 4: enc vs plain through the proxy
	Checks      []check     `json:"checks"`
	Copy        *copyResult `json:"copy,omitempty"` // issue 5: COPY FROM STDIN through the proxy vs directly
	Runs        []runResult `json:"runs"`
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ratio(a, b float64) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	return a / b
}

// summarize groups runs by workload and client count, in matrix order, and
// takes the median of each figure over the rounds.
func summarize(runs []runResult) []*cell {
	var cells []*cell
	index := map[string]*cell{}
	type acc struct{ tps, lat, cpu, other []float64 }
	accs := map[*targetSummary]*acc{}
	for _, r := range runs {
		key := fmt.Sprintf("%s\x00%d", r.Workload, r.Clients)
		c := index[key]
		if c == nil {
			c = &cell{Workload: r.Workload, Clients: r.Clients, Targets: map[string]*targetSummary{}}
			index[key] = c
			cells = append(cells, c)
		}
		t := c.Targets[r.Target]
		if t == nil {
			t = &targetSummary{}
			c.Targets[r.Target] = t
			accs[t] = &acc{}
		}
		if r.Error != "" {
			t.Errors++
			continue
		}
		t.Runs++
		a := accs[t]
		a.tps = append(a.tps, r.TPS)
		a.lat = append(a.lat, r.LatencyMS)
		a.other = append(a.other, r.OtherBusyPct)
		if r.CPUUsPerTxn > 0 {
			a.cpu = append(a.cpu, r.CPUUsPerTxn)
		}
	}
	for t, a := range accs {
		t.TPS, t.LatencyMS, t.CPUUsPerTxn, t.OtherBusy = median(a.tps), median(a.lat), median(a.cpu), median(a.other)
		if len(a.tps) > 1 {
			t.AllTPS = a.tps
		}
	}
	for _, c := range cells {
		d, p, x := c.get(targetDirect), c.get(targetPgBouncer), c.get(targetProxy)
		if x != nil && d != nil {
			c.ProxyVsDirect = ratio(x.TPS, d.TPS)
		}
		if x != nil && p != nil {
			c.ProxyVsPgBouncer = ratio(x.TPS, p.TPS)
			c.CPUProxyVsPgB = ratio(x.CPUUsPerTxn, p.CPUUsPerTxn)
		}
		if p != nil && d != nil {
			c.PgBouncerVsDir = ratio(p.TPS, d.TPS)
		}
		if n := c.get(targetProxyNoPolicy); n != nil && x != nil {
			c.PolicyVsNoPolicyTPS = ratio(x.TPS, n.TPS)
			c.PolicyVsNoPolicyCPU = ratio(x.CPUUsPerTxn, n.CPUUsPerTxn)
		}
	}
	return cells
}

// goalChecks evaluates the targets of issue 2 on the goal cell.
func goalChecks(cells []*cell) []check {
	tpsName := fmt.Sprintf("proxy TPS >= PgBouncer TPS (%s, %d clients)", goalWorkload, goalClients)
	cpuName := fmt.Sprintf("proxy CPU/txn <= %.1fx PgBouncer's (%s, %d clients)", goalCPURatio, goalWorkload, goalClients)
	var c *cell
	for _, x := range cells {
		if x.Workload == goalWorkload && x.Clients == goalClients {
			c = x
		}
	}
	na := func(why string) []check {
		return []check{{2, tpsName, "n/a", why}, {2, cpuName, "n/a", why}}
	}
	if c == nil {
		return na("not run (see -only and -clients)")
	}
	p, x := c.get(targetPgBouncer), c.get(targetProxy)
	switch {
	case p == nil:
		return na("no successful PgBouncer run")
	case x == nil:
		return na("no successful proxy run")
	}
	checks := []check{{
		2, tpsName, verdict(x.TPS >= p.TPS),
		fmt.Sprintf("proxy %.0f vs PgBouncer %.0f TPS = %.2fx", x.TPS, p.TPS, c.ProxyVsPgBouncer),
	}}
	if p.CPUUsPerTxn <= 0 || x.CPUUsPerTxn <= 0 {
		checks = append(checks, check{2, cpuName, "n/a", "CPU time not measured"})
	} else {
		checks = append(checks, check{
			2, cpuName, verdict(x.CPUUsPerTxn <= goalCPURatio*p.CPUUsPerTxn),
			fmt.Sprintf("proxy %.1f vs PgBouncer %.1f µs/txn = %.2fx (limit %.1f µs)",
				x.CPUUsPerTxn, p.CPUUsPerTxn, c.CPUProxyVsPgB, goalCPURatio*p.CPUUsPerTxn),
		})
	}
	return checks
}

// report prints the table and the checks and writes the JSON file.
func (b *bench) report(interrupted bool) {
	cells := summarize(b.runs)
	var checks []check
	if slices.ContainsFunc(b.workloads, func(w workload) bool { return !isEnc(w.Name) }) {
		checks = goalChecks(cells)
	}
	enc := encSummary(cells, b.workloads, b.runs)
	if len(enc) > 0 {
		checks = append(checks, encChecks(enc)...)
	}
	for _, c := range checks {
		if c.Result == "FAIL" {
			b.missedGoals++
		}
	}
	printTable(b.stdout, b.env, cells, enc, checks, b.runs, interrupted)
	printCopy(b.stdout, b.copy)
	if b.copy != nil && b.copy.Check.Result == "FAIL" {
		b.missedGoals++
	}
	res := results{
		Started: b.started, Interrupted: interrupted, Environment: b.env,
		Summary: cells, Encryption: enc, Checks: checks, Runs: b.runs, Copy: b.copy,
	}
	if err := writeJSON(b.opts.jsonFile, res); err != nil {
		b.logf("bench: write %s: %v", b.opts.jsonFile, err)
		b.failedRuns++ // makes the exit status 1
		return
	}
	fmt.Fprintf(b.stdout, "\nResults: %s   Logs: %s\n", b.opts.jsonFile,
		strings.Join([]string{filepath.Join(b.opts.logDir, "proxy.log"), filepath.Join(b.opts.logDir, "pgbouncer.log")}, ", "))
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func printTable(w io.Writer, env environment, allCells []*cell, enc []*encRow, checks []check, runs []runResult, interrupted bool) {
	var cells []*cell // issue 2's matrix; the enc/plain pairs get their own table
	for _, c := range allCells {
		if !isEnc(c.Workload) {
			cells = append(cells, c)
		}
	}
	fmt.Fprintf(w, "\npgcrypt-proxy bench: %d CPU(s) %s, CLK_TCK %d, load %s, machine %.0f%% busy before start\n",
		env.CPUs, env.CPUModel, env.ClockTicks, env.LoadAvg, env.BackgroundBusy)
	fmt.Fprintf(w, "  PostgreSQL %s; %s; pgbench -s %d, -T %ds, %d round(s)%s; TLS %s\n",
		env.PostgreSQL, env.Pgbench, env.Scale, env.DurationSeconds, env.Rounds, map[bool]string{true: " (median)", false: ""}[env.Rounds > 1],
		map[bool]string{true: "1.3 on both legs", false: "off"}[env.TLS])
	if env.PgBouncer != "" {
		fmt.Fprintf(w, "  PgBouncer: %s (session mode)\n", env.PgBouncer)
	} else {
		fmt.Fprintf(w, "  PgBouncer: not available: %s\n", env.PgBouncerError)
	}
	fmt.Fprintf(w, "  proxy: %s (%s), %s", env.ProxyBin, env.ProxyVersion, env.Policy)
	if len(env.ProxyArgs) > 0 {
		fmt.Fprintf(w, " %s", strings.Join(env.ProxyArgs, " "))
	}
	fmt.Fprintln(w)
	if env.BackgroundBusy > noisyPct {
		fmt.Fprintf(w, "  WARNING: other processes kept the machine %.0f%% busy before the bench started: figures are noisy\n", env.BackgroundBusy)
	}
	if interrupted {
		fmt.Fprintln(w, "  INTERRUPTED: partial results")
	}

	num := func(v float64, format string) string {
		if v <= 0 {
			return "-"
		}
		return fmt.Sprintf(format, v)
	}
	tps := func(t *targetSummary) string {
		if t == nil {
			return "-"
		}
		return num(t.TPS, "%.0f")
	}
	lat := func(t *targetSummary) string {
		if t == nil {
			return "-"
		}
		return num(t.LatencyMS, "%.3f")
	}
	cpu := func(t *targetSummary) string {
		if t == nil {
			return "-"
		}
		return num(t.CPUUsPerTxn, "%.1f")
	}
	x := func(v float64) string { return num(v, "%.2fx") }
	mark := func(t *targetSummary, s string) string { // a failed run
		if t != nil && t.Errors > 0 {
			return s + "!"
		}
		return s
	}

	if len(cells) > 0 {
		const row = "%-22s %7s | %8s %9s %8s | %6s %9s | %7s %9s %7s | %9s %7s %6s | %6s\n"
		fmt.Fprintln(w)
		fmt.Fprintf(w, "%-22s %7s | %-28s | %-16s | %-25s | %-24s | %s\n", "", "", "TPS (higher is better)", "proxy TPS vs", "avg latency ms", "proxy CPU µs/txn", "noise")
		fmt.Fprintf(w, row, "workload", "clients", "direct", "pgbouncer", "proxy", "direct", "pgbouncer", "direct", "pgbouncer", "proxy", "pgbouncer", "proxy", "ratio", "other%")
		fmt.Fprintln(w, strings.Repeat("-", 22+1+7+3+8+1+9+1+8+3+6+1+9+3+7+1+9+1+7+3+9+1+7+1+6+3+6))
		for _, c := range cells {
			d, p, px := c.Targets[targetDirect], c.Targets[targetPgBouncer], c.Targets[targetProxy]
			var other float64
			for _, t := range c.Targets {
				other = max(other, t.OtherBusy)
			}
			fmt.Fprintf(w, row, c.Workload, fmt.Sprint(c.Clients),
				mark(d, tps(c.get(targetDirect))), mark(p, tps(c.get(targetPgBouncer))), mark(px, tps(c.get(targetProxy))),
				x(c.ProxyVsDirect), x(c.ProxyVsPgBouncer),
				lat(c.get(targetDirect)), lat(c.get(targetPgBouncer)), lat(c.get(targetProxy)),
				cpu(c.get(targetPgBouncer)), cpu(c.get(targetProxy)), x(c.CPUProxyVsPgB), fmt.Sprintf("%.0f", other))
		}

		var noisiest float64
		for _, c := range cells {
			for _, t := range c.Targets {
				noisiest = max(noisiest, t.OtherBusy)
			}
		}
		if noisiest > noisyPct {
			fmt.Fprintf(w, "WARNING: other processes used up to %.0f%% of the machine's CPU during these runs (column other%%):\n"+
				"         the figures measure contention as much as the proxy; rerun on a quiet machine, with -rounds 3.\n", noisiest)
		}

		if env.TLS {
			fmt.Fprintf(w, "\nTargets (issue 2; defined with TLS off, this run had TLS 1.3 on both legs):\n")
		} else {
			fmt.Fprintf(w, "\nTargets (issue 2, TLS off on both legs):\n")
		}
		printChecks(w, checks, 2)
		for _, c := range cells {
			if c.Workload == goalWorkload && c.Clients == goalClients && c.PgBouncerVsDir > 0 {
				fmt.Fprintf(w, "  (reference: issue 2 expects PgBouncer at about 1.0x direct with 30-45 µs/txn here; this run: %.2fx, %s µs/txn)\n",
					c.PgBouncerVsDir, cpu(c.get(targetPgBouncer)))
			}
		}
	}
	if slices.ContainsFunc(cells, func(c *cell) bool { return c.Targets[targetProxyNoPolicy] != nil }) {
		printPolicyCost(w, cells)
	}
	if len(enc) > 0 {
		printEncTable(w, env, enc, checks)
	}

	var failed []runResult
	for _, r := range runs {
		if r.Error != "" {
			failed = append(failed, r)
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(w, "\nFailed runs (marked ! above):\n")
		for _, r := range failed {
			fmt.Fprintf(w, "  round %d %s c=%d %s: %s\n", r.Round, r.Workload, r.Clients, r.Target,
				strings.ReplaceAll(r.Error, "\n", "\n    "))
		}
	}
}

func printChecks(w io.Writer, checks []check, issue int) {
	for _, c := range checks {
		if c.Issue == issue {
			fmt.Fprintf(w, "  %-4s  %s: %s\n", c.Result, c.Name, c.Detail)
		}
	}
}

// printEncTable prints issue 4's table: each enc workload through the
// proxy against its plain twin through the proxy, and the twin directly.
func printEncTable(w io.Writer, env environment, rows []*encRow, checks []check) {
	num := func(t *targetSummary, f func(*targetSummary) float64, format string) string {
		if t == nil {
			return "-"
		}
		s := "-"
		if ok(t) && f(t) > 0 {
			s = fmt.Sprintf(format, f(t))
		}
		if t.Errors > 0 { // some run of the cell failed
			s += "!"
		}
		return s
	}
	tps := func(t *targetSummary) float64 { return t.TPS }
	lat := func(t *targetSummary) float64 { return t.LatencyMS }
	cpu := func(t *targetSummary) float64 { return t.CPUUsPerTxn }
	x := func(v float64) string {
		if v <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", v)
	}

	fmt.Fprintf(w, "\nEncryption (issue 4): enc-* on the encrypted table vs plain-* on its unencrypted twin, both through the proxy;\n"+
		"plain directly for reference. Proxy CPU is the proxy process's, per transaction.\n\n")
	const row = "%-23s %7s | %8s %8s %6s | %8s %8s %6s | %8s %8s %6s | %8s %6s | %6s\n"
	fmt.Fprintf(w, "%-23s %7s | %-24s | %-24s | %-24s | %-15s | %s\n", "", "", "TPS through proxy", "avg latency ms, proxy", "proxy CPU µs/txn", "plain direct", "noise")
	fmt.Fprintf(w, row, "workload", "clients", "enc", "plain", "ratio", "enc", "plain", "ratio", "enc", "plain", "ratio", "TPS", "ms", "other%")
	fmt.Fprintln(w, strings.Repeat("-", 23+1+7+3+24+3+24+3+24+3+15+3+6))
	for _, r := range rows {
		fmt.Fprintf(w, row, r.Workload, fmt.Sprint(r.Clients),
			num(r.Enc, tps, "%.0f"), num(r.Plain, tps, "%.0f"), x(r.TPSRatio),
			num(r.Enc, lat, "%.3f"), num(r.Plain, lat, "%.3f"), x(r.LatencyRatio),
			num(r.Enc, cpu, "%.1f"), num(r.Plain, cpu, "%.1f"), x(r.CPURatio),
			num(r.PlainDirect, tps, "%.0f"), num(r.PlainDirect, lat, "%.3f"), fmt.Sprintf("%.0f", r.OtherBusy))
	}
	var noisiest float64
	for _, r := range rows {
		noisiest = max(noisiest, r.OtherBusy)
	}
	if noisiest > noisyPct {
		fmt.Fprintf(w, "WARNING: other processes used up to %.0f%% of the machine's CPU during these runs (column other%%).\n", noisiest)
	}
	fmt.Fprintf(w, "\nTargets (issue 4, through the proxy%s):\n", map[bool]string{true: "; TLS 1.3 on both legs", false: ", TLS off"}[env.TLS])
	printChecks(w, checks, 4)
}

// printPolicyCost prints, with -nopolicy-proxy, the proxy with the policy
// against a second proxy without one on the issue-2 workloads: whatever
// the policy costs statements that touch no policy table.
func printPolicyCost(w io.Writer, cells []*cell) {
	f := func(t *targetSummary, v func(*targetSummary) float64, format string) string {
		s := "-"
		if ok(t) && v(t) > 0 {
			s = fmt.Sprintf(format, v(t))
		}
		if t != nil && t.Errors > 0 {
			s += "!"
		}
		return s
	}
	x := func(v float64) string {
		if v <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", v)
	}
	tps := func(t *targetSummary) float64 { return t.TPS }
	lat := func(t *targetSummary) float64 { return t.LatencyMS }
	cpu := func(t *targetSummary) float64 { return t.CPUUsPerTxn }
	fmt.Fprintf(w, "\nPolicy cost on pass-through: proxy (with the bench's policy) vs %s (a second proxy without one), interleaved\n\n", targetProxyNoPolicy)
	const row = "%-22s %7s | %8s %8s %6s | %8s %8s | %8s %8s %6s\n"
	fmt.Fprintf(w, "%-22s %7s | %-24s | %-17s | %s\n", "", "", "TPS", "avg latency ms", "proxy CPU µs/txn")
	fmt.Fprintf(w, row, "workload", "clients", "policy", "none", "ratio", "policy", "none", "policy", "none", "ratio")
	fmt.Fprintln(w, strings.Repeat("-", 22+1+7+3+24+3+17+3+24))
	for _, c := range cells {
		p, n := c.Targets[targetProxy], c.Targets[targetProxyNoPolicy]
		fmt.Fprintf(w, row, c.Workload, fmt.Sprint(c.Clients),
			f(p, tps, "%.0f"), f(n, tps, "%.0f"), x(c.PolicyVsNoPolicyTPS),
			f(p, lat, "%.3f"), f(n, lat, "%.3f"),
			f(p, cpu, "%.1f"), f(n, cpu, "%.1f"), x(c.PolicyVsNoPolicyCPU))
	}
}
