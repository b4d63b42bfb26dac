package main

import (
	"math"
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
