package main

import (
	"math"
	"regexp"
	"strings"
	"testing"
	"time"
)

// pgbench 15 output for a select-only run.
const pgbench15 = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 81234
number of failed transactions: 0 (0.000%)
latency average = 0.984 ms
initial connection time = 12.345 ms
tps = 16247.123456 (without initial connection time)
`

func TestParsePgbench(t *testing.T) {
	r, err := parsePgbench(pgbench15)
	if err != nil {
		t.Fatal(err)
	}
	want := pgbenchResult{TPS: 16247.123456, LatencyMS: 0.984, Txns: 81234, ConnMS: 12.345}
	if r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
	// pgbench before 14 said "excluding connections establishing".
	old := strings.Replace(pgbench15, "without initial connection time", "excluding connections establishing", 1)
	if r, err := parsePgbench(old); err != nil || r.TPS != want.TPS {
		t.Errorf("old format: %+v, %v", r, err)
	}
	if _, err := parsePgbench("pgbench: error: connection to server failed\n"); err == nil ||
		!strings.Contains(err.Error(), "tps") {
		t.Errorf("garbage: err = %v, want one naming tps", err)
	}
}

func TestParseStatTicks(t *testing.T) {
	// Field 2 may hold spaces and parentheses.
	stat := "4242 (pgcrypt (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 567 0 0 20 0 9 0 100 0 0"
	got, err := parseStatTicks(stat)
	if err != nil || got != 1234+567 {
		t.Errorf("got %d, %v; want 1801", got, err)
	}
	if _, err := parseStatTicks("4242 (x) S 1 2"); err == nil {
		t.Error("short stat: no error")
	}
}

func TestSummarize(t *testing.T) {
	var runs []runResult
	add := func(round int, target string, tps, cpu float64) {
		runs = append(runs, runResult{Round: round, Workload: goalWorkload, Clients: goalClients, Target: target,
			TPS: tps, LatencyMS: 1, CPUUsPerTxn: cpu})
	}
	for round, f := range []float64{1, 3, 2} {
		add(round+1, targetDirect, 1000*f, 0)
		add(round+1, targetPgBouncer, 900*f, 40)
		add(round+1, targetProxy, 950*f, 50)
	}
	runs = append(runs, runResult{Round: 4, Workload: goalWorkload, Clients: goalClients, Target: targetProxy, Error: "boom"})
	cells := summarize(runs)
	if len(cells) != 1 {
		t.Fatalf("%d cells", len(cells))
	}
	c := cells[0]
	if got := c.Targets[targetProxy]; got.TPS != 1900 || got.Runs != 3 || got.Errors != 1 {
		t.Errorf("proxy: %+v", got)
	}
	if math.Abs(c.ProxyVsPgBouncer-950.0/900) > 1e-9 || math.Abs(c.CPUProxyVsPgB-1.25) > 1e-9 {
		t.Errorf("ratios: %+v", c)
	}
	checks := goalChecks(cells)
	if len(checks) != 2 || checks[0].Result != "PASS" || checks[1].Result != "PASS" {
		t.Errorf("checks: %+v", checks)
	}
	if checks := goalChecks(nil); checks[0].Result != "n/a" {
		t.Errorf("no cell: %+v", checks)
	}
}

func TestFlags(t *testing.T) {
	var sb strings.Builder
	o, err := parseFlags([]string{"-duration", "5s", "-clients", "16, 1,16", "-only", "select", "-proxy-args", "--a b  --c"}, &sb)
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != 5*time.Second || len(o.clients) != 2 || o.clients[0] != 1 || o.clients[1] != 16 ||
		len(o.proxyArgs) != 3 || !o.only.MatchString("select-only/simple") {
		t.Errorf("%+v", o)
	}
	if _, err := parseFlags([]string{"-clients", "0", "-rounds", "0"}, &sb); err == nil {
		t.Error("bad flags accepted")
	}
	if seconds(1500*time.Millisecond) != 2 || seconds(0) != 1 {
		t.Error("seconds")
	}
}

func TestSelectAndGroupWorkloads(t *testing.T) {
	names := func(ws []workload) []string {
		var s []string
		for _, w := range ws {
			s = append(s, w.Name)
		}
		return s
	}
	all := allWorkloads()
	// -only enc selects each enc workload with its plain twin.
	ws := selectWorkloads(all, regexp.MustCompile("enc"), false)
	if len(ws) != 12 {
		t.Fatalf("-only enc: %v", names(ws))
	}
	// Matching the twin selects the pair too, and nothing else.
	ws = selectWorkloads(all, regexp.MustCompile("^plain-select/prepared$"), false)
	if got := strings.Join(names(ws), ","); got != "plain-select/prepared,enc-select/prepared" {
		t.Errorf("-only plain-select/prepared: %s", got)
	}
	gs := groupWorkloads(ws)
	if len(gs) != 1 || len(gs[0]) != 2 {
		t.Fatalf("groups: %+v", gs)
	}
	var jobs []string
	for _, j := range gs[0].jobs(targetOrder) {
		jobs = append(jobs, j.w.Name+"@"+j.target)
	}
	if got := strings.Join(jobs, ","); got != "plain-select/prepared@direct,plain-select/prepared@proxy,enc-select/prepared@proxy" {
		t.Errorf("jobs: %s", got)
	}
	// Issue 2's workloads stay one group each, on every target.
	ws = selectWorkloads(all, regexp.MustCompile("select-only"), false)
	if gs := groupWorkloads(ws); len(gs) != 2 || len(gs[0].jobs(targetOrder)) != len(targetOrder) {
		t.Errorf("select-only: %+v", gs)
	}
	// -no-policy drops the pairs.
	if ws := selectWorkloads(all, regexp.MustCompile(""), true); len(ws) != len(workloads()) {
		t.Errorf("-no-policy: %v", names(ws))
	}
	// Every enc workload has a twin, and both have a script.
	for _, w := range all {
		if strings.HasPrefix(w.Name, "enc-") && (w.Twin == "" || len(w.Scripts) != 1 || w.runsOn(targetDirect)) {
			t.Errorf("%s: %+v", w.Name, w)
		}
	}
}

func TestEncSummaryAndChecks(t *testing.T) {
	var runs []runResult
	add := func(workload, target string, tps, lat float64) {
		runs = append(runs, runResult{Round: 1, Workload: workload, Clients: encGoalClients, Target: target,
			TPS: tps, LatencyMS: lat, CPUUsPerTxn: 10})
	}
	add("plain-select/prepared", targetDirect, 2000, 0.5)
	add("plain-select/prepared", targetProxy, 1000, 1)
	add("enc-select/prepared", targetProxy, 950, 1.05)
	add("plain-insert/prepared", targetProxy, 1000, 1)
	add("enc-insert/prepared", targetProxy, 850, 1.2)
	add("plain-scan-10k/prepared", targetProxy, 100, 10)
	add("enc-scan-10k/prepared", targetProxy, 40, 29)
	ws := selectWorkloads(allWorkloads(), regexp.MustCompile("prepared"), false)
	rows := encSummary(summarize(runs), ws, runs)
	if len(rows) != 3 {
		t.Fatalf("rows: %+v", rows)
	}
	if r := rows[0]; r.Workload != "enc-select/prepared" || math.Abs(r.TPSRatio-0.95) > 1e-9 || r.PlainVsDirect != 0.5 {
		t.Errorf("select row: %+v", r)
	}
	got := map[string]string{}
	for _, c := range encChecks(rows) {
		if c.Issue != 4 {
			t.Errorf("issue %d: %+v", c.Issue, c)
		}
		got[c.Name[:strings.Index(c.Name, " ")]+"/"+map[bool]string{true: "prepared", false: "simple"}[strings.Contains(c.Name, "prepared")]] = c.Result
	}
	want := map[string]string{
		"enc-select/prepared": "PASS", "enc-insert/prepared": "FAIL", "enc-scan-10k/prepared": "PASS",
		"enc-select/simple": "n/a", "enc-insert/simple": "n/a", "enc-scan-10k/simple": "n/a",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s, want %s (all: %v)", k, got[k], v, got)
		}
	}
}

// The TPS ratio pairs the enc and plain runs of each round: a round where
// the whole machine was slow moves both sides, not the ratio.
func TestEncRatioIsPairedByRound(t *testing.T) {
	var runs []runResult
	add := func(round int, workload string, tps float64, failed bool) {
		r := runResult{Round: round, Workload: workload, Clients: encGoalClients, Target: targetProxy, TPS: tps, LatencyMS: 1000 / tps}
		if failed {
			r.Error = "boom"
		}
		runs = append(runs, r)
	}
	// Rounds on a fast, a slow and a medium machine: enc is 0.95x of plain
	// in two, 0.76x in the third. The ratio of the medians (enc 1900,
	// plain 2250) would say 0.84; the paired median says 0.95.
	add(1, "plain-insert/prepared", 3000, false)
	add(1, "enc-insert/prepared", 2850, false)
	add(2, "plain-insert/prepared", 1000, false)
	add(2, "enc-insert/prepared", 950, false)
	add(3, "plain-insert/prepared", 2500, false)
	add(3, "enc-insert/prepared", 1900, false)
	add(4, "plain-insert/prepared", 2000, false)
	add(4, "enc-insert/prepared", 1500, true) // a failed run pairs with nothing
	ws := selectWorkloads(allWorkloads(), regexp.MustCompile("insert/prepared"), false)
	rows := encSummary(summarize(runs), ws, runs)
	if len(rows) != 1 {
		t.Fatalf("rows: %+v", rows)
	}
	r := rows[0]
	if len(r.RoundTPSRatios) != 3 || math.Abs(r.RoundTPSRatios[2]-0.76) > 1e-9 {
		t.Fatalf("round ratios %v", r.RoundTPSRatios)
	}
	if math.Abs(r.TPSRatio-0.95) > 1e-9 {
		t.Errorf("TPS ratio %v, want the median of the rounds' ratios, 0.95", r.TPSRatio)
	}
	if math.Abs(r.LatencyRatio-1/0.95) > 1e-9 {
		t.Errorf("latency ratio %v", r.LatencyRatio)
	}
	var ck check
	for _, c := range encChecks(rows) {
		if strings.HasPrefix(c.Name, "enc-insert") && strings.Contains(c.Name, "prepared") {
			ck = c
		}
	}
	if ck.Result != "PASS" || !strings.Contains(ck.Detail, "0.95, 0.95, 0.76") {
		t.Errorf("check: %+v", ck)
	}
}
