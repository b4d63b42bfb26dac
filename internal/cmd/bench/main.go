// Command bench is what `make bench` runs: pgbench against PostgreSQL
// directly, through PgBouncer (session mode) and through pgcrypt-proxy,
// interleaved, reporting TPS, latency and each proxy's CPU time per
// transaction. See bench/README.md for how to read its output.
//
// It starts everything it measures on 127.0.0.1 (a throwaway pgtest
// cluster, PgBouncer, the proxy binary) and stops all of it on exit, on
// error and on Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// options are the command-line flags.
type options struct {
	copyRows  int
	duration  time.Duration
	rounds    int
	clients   []int
	only      *regexp.Regexp
	proxyBin  string
	proxyArgs []string
	jsonFile  string
	logDir    string
	scale     int
	warmup    time.Duration
	strict    bool
	tls       bool
	noPolicy  bool
	baseline  bool // -nopolicy-proxy
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: go run ./internal/cmd/bench [flags]   (make bench BENCHFLAGS='...')\n\n"+
			"Runs pgbench directly against PostgreSQL, through PgBouncer and through pgcrypt-proxy,\n"+
			"interleaved, and prints TPS, latency and CPU per transaction. See bench/README.md.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	o := &options{}
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each pgbench run (pgbench -T, whole seconds)")
	fs.IntVar(&o.rounds, "rounds", 1, "repeat the whole matrix this many times and report the median")
	clients := fs.String("clients", "1,16", "comma-separated client counts (pgbench -c; -j is min(clients, 2))")
	only := fs.String("only", "", "run only workloads whose name matches this regexp (e.g. 'select-only/prepared', 'enc'; an enc-* workload and its plain-* twin go together)")
	fs.StringVar(&o.proxyBin, "proxy-bin", "", "proxy binary to run (default: go build -o bin/pgcrypt-proxy ./cmd/pgcrypt-proxy, then that)")
	proxyArgs := fs.String("proxy-args", "", "extra arguments for `pgcrypt-proxy serve`, split on spaces (e.g. '--log.level error')")
	fs.StringVar(&o.jsonFile, "json", ".bench/results.json", "write the results as JSON to this file")
	fs.StringVar(&o.logDir, "logdir", ".bench", "directory for pgbouncer.log and proxy.log")
	fs.IntVar(&o.scale, "scale", 10, "pgbench -i scale factor")
	fs.DurationVar(&o.warmup, "warmup", 3*time.Second, "unrecorded select-only run against each target before the matrix (0: none)")
	fs.BoolVar(&o.tls, "tls", false, "TLS 1.3 on both legs of every target (pgbench sslmode=require; upstream verify-full)")
	fs.BoolVar(&o.strict, "strict", false, "exit 1 when a target of issue 2 or 4 is missed (not only on errors)")
	fs.IntVar(&o.copyRows, "copy-rows", 1000000, "rows of the COPY FROM STDIN measurement (issue 5); 0 skips it")
	fs.BoolVar(&o.noPolicy, "no-policy", false, "run the proxy without a policy (pass-through only; skips the enc/plain workloads)")
	fs.BoolVar(&o.baseline, "nopolicy-proxy", false, "also run the issue-2 workloads through a second proxy without a policy, interleaved, and print the policy's cost on pass-through")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var errs []error
	if o.duration < time.Second {
		errs = append(errs, fmt.Errorf("-duration %v: at least 1s", o.duration))
	}
	if o.rounds < 1 {
		errs = append(errs, fmt.Errorf("-rounds %d: at least 1", o.rounds))
	}
	if o.scale < 1 {
		errs = append(errs, fmt.Errorf("-scale %d: at least 1", o.scale))
	}
	for s := range strings.SplitSeq(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("-clients %q: %q is not a positive integer", *clients, s))
			continue
		}
		if !slices.Contains(o.clients, n) {
			o.clients = append(o.clients, n)
		}
	}
	slices.Sort(o.clients)
	re, err := regexp.Compile(*only)
	if err != nil {
		errs = append(errs, fmt.Errorf("-only: %w", err))
	}
	o.only = re
	o.proxyArgs = strings.Fields(*proxyArgs)
	return o, errors.Join(errs...)
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	opts, err := parseFlags(args, os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "\nbench: %v: stopping and cleaning up (again to quit at once)\n", s)
		cancel()
		// A second signal kills the bench; its children die with it
		// (parent-death signal, see package spawn).
		signal.Reset(syscall.SIGINT, syscall.SIGTERM)
	}()

	b := &bench{opts: opts, stdout: os.Stdout, logf: func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, format+"\n", a...)
	}}
	runErr := b.run(ctx)
	cleanErr := b.cleanup()
	code := 0
	if runErr != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted")
		} else {
			fmt.Fprintf(os.Stderr, "bench: %v\n", runErr)
		}
		code = 1
	}
	if cleanErr != nil {
		fmt.Fprintf(os.Stderr, "bench: cleanup: %v\n", cleanErr)
		code = 1
	}
	if code == 0 && b.failedRuns > 0 {
		fmt.Fprintf(os.Stderr, "bench: %d run(s) failed (see above)\n", b.failedRuns)
		code = 1
	}
	if code == 0 && opts.strict && b.missedGoals > 0 {
		code = 1
	}
	return code
}

// bench is one invocation: what it started, what it measured.
type bench struct {
	opts   *options
	stdout io.Writer
	logf   func(format string, a ...any)

	cleanups []func() error // run in reverse order by cleanup

	pgbench string
	clkTck  int64
	// postmasterPID is the cluster's postmaster, whose CPU time plus its
	// children's is PostgreSQL's; 0 when unknown.
	postmasterPID int
	admin         *pgx.Conn // direct connection for Setup and Before statements
	// checkpoint runs CHECKPOINT as the superuser; nil without a cluster.
	checkpoint func(context.Context) error
	copy       *copyResult
	targets    map[string]*target
	workloads  []workload
	scripts    map[string]string // script name → file path
	env        environment

	started     time.Time
	runs        []runResult
	failedRuns  int
	missedGoals int
}

// environment describes the machine and the programs, for the report.
type environment struct {
	CPUs            int      `json:"cpus"`
	CPUModel        string   `json:"cpu_model"`
	LoadAvg         string   `json:"loadavg_at_start"`
	BackgroundBusy  float64  `json:"background_busy_pct"` // machine CPU busy before the bench started anything
	ClockTicks      int64    `json:"clk_tck"`
	Pgbench         string   `json:"pgbench"`
	PostgreSQL      string   `json:"postgresql"`
	PgBouncer       string   `json:"pgbouncer,omitempty"`
	PgBouncerError  string   `json:"pgbouncer_error,omitempty"`
	ProxyBin        string   `json:"proxy_bin"`
	ProxyVersion    string   `json:"proxy_version"`
	ProxyArgs       []string `json:"proxy_args,omitempty"`
	DurationSeconds int      `json:"duration_s"`
	Rounds          int      `json:"rounds"`
	Clients         []int    `json:"clients"`
	Scale           int      `json:"scale"`
	TLS             bool     `json:"tls"` // TLS 1.3 on both legs of every target
	// Policy says whether the proxy ran with the bench's policy.
	Policy string `json:"policy"`
	// PrefillSeconds is how long loading bench_enc through the proxy took.
	PrefillSeconds float64 `json:"enc_prefill_s,omitempty"`
}

func (b *bench) onCleanup(f func() error) { b.cleanups = append(b.cleanups, f) }

func (b *bench) cleanup() error {
	var errs []error
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		errs = append(errs, b.cleanups[i]())
	}
	b.cleanups = nil
	return errors.Join(errs...)
}

func (b *bench) run(ctx context.Context) error {
	o := b.opts
	b.started = time.Now().UTC()
	b.workloads = selectWorkloads(allWorkloads(), o.only, o.noPolicy)
	if len(b.workloads) == 0 {
		var names []string
		for _, w := range allWorkloads() {
			if !o.noPolicy || !isEnc(w.Name) {
				names = append(names, w.Name)
			}
		}
		return fmt.Errorf("-only %q matches no workload (have: %s)", o.only, strings.Join(names, ", "))
	}
	if err := os.MkdirAll(o.logDir, 0o755); err != nil {
		return err
	}
	sweepStale(b.logf)
	b.clkTck = clockTicks()
	b.env = environment{
		CPUs: runtime.NumCPU(), CPUModel: cpuModel(), LoadAvg: loadAvg(), ClockTicks: b.clkTck,
		DurationSeconds: seconds(o.duration), Rounds: o.rounds, Clients: o.clients, Scale: o.scale, TLS: o.tls,
		ProxyArgs: o.proxyArgs, Policy: "policy: bench_enc, bench_enc_ins (a, b randomized; c deterministic)",
	}
	if o.noPolicy {
		b.env.Policy = "no policy (-no-policy)"
	}
	b.env.BackgroundBusy = sampleBusy(ctx, time.Second)

	var err error
	if b.pgbench, err = pgtest.FindTool("pgbench"); err != nil {
		return err
	}
	b.env.Pgbench = firstLine(exec.Command(b.pgbench, "--version").Output())

	if err := b.prepareProxyBin(ctx); err != nil {
		return err
	}

	pgbouncerBin, pgbErr := findPgBouncer(ctx, b.logf)
	if pgbErr != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.env.PgBouncerError = pgbErr.Error()
		b.logf("bench: WARNING: no PgBouncer, continuing without its column: %v", pgbErr)
	} else {
		b.env.PgBouncer = pgbouncerBin + ": " + firstLine(exec.Command(pgbouncerBin, "--version").Output())
	}

	maxClients := slices.Max(o.clients)
	began := time.Now()
	cluster, err := pgtest.Start(ctx, pgtest.Options{
		Logf: b.logf,
		ExtraConf: []string{
			fmt.Sprintf("max_connections = %d", max(200, 3*maxClients+20)),
			"shared_buffers = 256MB",
			"log_min_messages = warning",
		},
	})
	if err != nil {
		return err
	}
	b.onCleanup(cluster.Stop)
	b.checkpoint = func(ctx context.Context) error { return cluster.Exec(ctx, "CHECKPOINT") }
	b.postmasterPID = postmasterPID(cluster.DataDir)
	direct := endpoint{host: cluster.Host, port: cluster.Port, user: pgtest.UserTrust, db: pgtest.Database, tls: o.tls}
	var tf *tlsFiles
	if o.tls {
		cert, key, err := cluster.CA().Issue("127.0.0.1", "localhost")
		if err != nil {
			return err
		}
		tf = &tlsFiles{caPEM: cluster.CA().CertPEM, certPEM: cert, keyPEM: key, serverName: cluster.ServerName}
	}
	b.targets = map[string]*target{targetDirect: {name: targetDirect, ep: direct}}

	b.logf("bench: pgbench -i -s %d (direct, as %s) …", o.scale, direct.user)
	if _, _, err := runPgbench(ctx, b.pgbench, direct, []string{"-i", "-q", "-s", strconv.Itoa(o.scale)}); err != nil {
		return fmt.Errorf("initialize: %w", err)
	}
	b.admin, err = pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", // not measured
		direct.host, direct.port, direct.user, direct.db))
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	b.onCleanup(func() error { return b.admin.Close(context.Background()) })
	if err := b.admin.QueryRow(ctx, "SHOW server_version").Scan(&b.env.PostgreSQL); err != nil {
		return err
	}
	if err := b.setupWorkloads(ctx); err != nil {
		return err
	}
	var enc *encConfig
	if !o.noPolicy {
		// The proxy always runs with the policy, so that its pass-through
		// figures (issue 2, plain-*) are measured under the same config.
		if enc, err = b.prepareEncryption(ctx, cluster); err != nil {
			return err
		}
	}
	b.logf("bench: PostgreSQL ready in %v", time.Since(began).Round(time.Millisecond))

	if pgbErr == nil {
		t, stop, err := startPgBouncer(ctx, pgbouncerBin, direct, max(20, maxClients+4), tf, o.logDir)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.env.PgBouncerError = err.Error()
			b.logf("bench: WARNING: PgBouncer did not start, continuing without its column: %v", err)
		} else {
			b.onCleanup(stop)
			b.targets[targetPgBouncer] = t
			b.logf("bench: PgBouncer (pid %d) on %s:%d, session mode", t.d.pid(), t.ep.host, t.ep.port)
		}
	}
	t, stop, err := startProxy(ctx, targetProxy, b.env.ProxyBin, direct, o.proxyArgs, tf, enc, o.logDir)
	if err != nil {
		return err
	}
	b.onCleanup(stop)
	b.targets[targetProxy] = t
	b.logf("bench: proxy (pid %d) on %s:%d, %s, log %s", t.d.pid(), t.ep.host, t.ep.port, b.env.Policy, t.d.logFile)
	if o.baseline && enc != nil {
		t, stop, err := startProxy(ctx, targetProxyNoPolicy, b.env.ProxyBin, direct, o.proxyArgs, tf, nil, o.logDir)
		if err != nil {
			return err
		}
		b.onCleanup(stop)
		b.targets[targetProxyNoPolicy] = t
		b.logf("bench: %s (pid %d) on %s:%d, no policy, log %s", t.name, t.d.pid(), t.ep.host, t.ep.port, t.d.logFile)
	}

	if slices.ContainsFunc(b.workloads, needsPrefill) {
		took, err := b.prefill(ctx, t.ep)
		if err != nil {
			if !t.d.alive() {
				err = fmt.Errorf("%w\n%v", err, t.d.exitError())
			}
			return err
		}
		b.env.PrefillSeconds = took.Seconds()
	}

	if o.copyRows > 0 && enc != nil && (o.only == nil || o.only.MatchString("copy")) {
		if b.copy, err = b.copyBench(ctx, direct, t.ep, o.copyRows); err != nil {
			return err
		}
	}
	if err := b.warm(ctx); err != nil {
		return err
	}
	err = b.matrix(ctx)
	// Report what was measured even when interrupted or failed half-way.
	b.report(ctx.Err() != nil)
	return err
}

// prepareProxyBin builds the proxy unless -proxy-bin names one.
func (b *bench) prepareProxyBin(ctx context.Context) error {
	bin := b.opts.proxyBin
	if bin == "" {
		out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
		gomod := strings.TrimSpace(string(out))
		if err != nil || gomod == "" || gomod == os.DevNull {
			return errors.New("cannot find the module root to build the proxy (run from the repository, or pass -proxy-bin)")
		}
		root := filepath.Dir(gomod)
		bin = filepath.Join(root, "bin", "pgcrypt-proxy")
		b.logf("bench: go build -o bin/pgcrypt-proxy ./cmd/pgcrypt-proxy")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/pgcrypt-proxy")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build the proxy: %v\n%s(to benchmark an existing binary instead: -proxy-bin %s)",
				err, out, bin)
		}
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("-proxy-bin: %w", err)
	}
	b.env.ProxyBin = abs
	b.env.ProxyVersion = firstLine(exec.CommandContext(ctx, abs, "version").Output())
	return nil
}

// setupWorkloads writes the custom scripts and runs each workload's Setup.
func (b *bench) setupWorkloads(ctx context.Context) error {
	b.scripts = map[string]string{}
	var dir string
	for _, w := range b.workloads {
		for _, s := range w.Scripts {
			if dir == "" {
				var err error
				if dir, err = makeTempDir("", "scripts"); err != nil {
					return err
				}
				b.onCleanup(func() error { return os.RemoveAll(dir) })
			}
			p := filepath.Join(dir, s.Name)
			if err := os.WriteFile(p, []byte(s.Body), 0o644); err != nil {
				return err
			}
			b.scripts[s.Name] = p
		}
		if err := b.execAll(ctx, w.Setup); err != nil {
			return fmt.Errorf("setup of %s: %w", w.Name, err)
		}
	}
	return nil
}

func (b *bench) execAll(ctx context.Context, stmts []string) error {
	for _, s := range stmts {
		if _, err := b.admin.Exec(ctx, s, pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// pgbenchArgs returns the arguments of one measured run of w.
func (b *bench) pgbenchArgs(w workload, clients int, d time.Duration) []string {
	args := []string{"--no-vacuum", "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
		"-T", strconv.Itoa(seconds(d))}
	args = append(args, w.Args...)
	for _, s := range w.Scripts {
		args = append(args, "-f", fmt.Sprintf("%s@%d", b.scripts[s.Name], max(s.Weight, 1)))
	}
	return args
}

// warm runs an unrecorded select-only run against each target, so that the
// first measured run does not pay for cold caches, pools and goroutines.
func (b *bench) warm(ctx context.Context) error {
	if b.opts.warmup <= 0 {
		return nil
	}
	c := slices.Max(b.opts.clients)
	w := workload{Name: "warm-up", Args: []string{"-S", "-M", "prepared"}}
	for _, name := range targetOrder {
		t := b.targets[name]
		if t == nil {
			continue
		}
		b.logf("bench: warm-up %s (%v, %d clients)", name, b.opts.warmup, c)
		if _, _, err := runPgbench(ctx, b.pgbench, t.ep, b.pgbenchArgs(w, c, b.opts.warmup)); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if t.d != nil && !t.d.alive() {
				return fmt.Errorf("warm-up of %s: %w", name, t.d.exitError())
			}
			return fmt.Errorf("warm-up of %s: %w", name, err)
		}
	}
	return nil
}

// matrix runs every workload at every client count against every target,
// targets back to back, rounds times. Each round starts with a different
// target so that none always runs first. An enc workload and its plain twin
// form one group whose runs (plain direct, plain proxy, enc proxy) go back
// to back in the same way.
func (b *bench) matrix(ctx context.Context) error {
	o := b.opts
	var order []string
	for _, name := range targetOrder {
		if b.targets[name] != nil {
			order = append(order, name)
		}
	}
	groups := groupWorkloads(b.workloads)
	var total, width int
	for _, g := range groups {
		total += o.rounds * len(o.clients) * len(g.jobs(order))
		for _, w := range g {
			width = max(width, len(w.Name))
		}
	}
	twidth := 0
	for _, name := range order {
		twidth = max(twidth, len(name))
	}
	n := 0
	est := time.Duration(total) * time.Duration(seconds(o.duration)) * time.Second
	b.logf("bench: %d runs of %ds (about %v)", total, seconds(o.duration), est.Round(time.Second))
	for round := 1; round <= o.rounds; round++ {
		for _, g := range groups {
			jobs := g.jobs(order)
			rot := (round - 1) % len(jobs)
			jobs = append(slices.Clone(jobs[rot:]), jobs[:rot]...)
			for _, c := range o.clients {
				for _, j := range jobs {
					w, name := j.w, j.target
					n++
					r := b.measure(ctx, round, w, c, b.targets[name])
					if ctx.Err() != nil {
						return ctx.Err()
					}
					b.runs = append(b.runs, r)
					if r.Error != "" {
						b.failedRuns++
						b.logf("[%*d/%d] round %d %-*s c=%-3d %-*s FAILED: %s", len(strconv.Itoa(total)), n, total,
							round, width, w.Name, c, twidth, name, r.Error)
						continue
					}
					cpu := ""
					if r.CPUUsPerTxn > 0 {
						cpu = fmt.Sprintf(", %.1f µs CPU/txn", r.CPUUsPerTxn)
					}
					b.logf("[%*d/%d] round %d %-*s c=%-3d %-*s %9.0f tps, %.3f ms%s (other processes: %.0f%% of the machine)",
						len(strconv.Itoa(total)), n, total, round, width, w.Name, c, twidth, name, r.TPS, r.LatencyMS, cpu, r.OtherBusyPct)
				}
			}
		}
	}
	return nil
}

// runResult is one pgbench run.
type runResult struct {
	Round       int      `json:"round"`
	Workload    string   `json:"workload"`
	Clients     int      `json:"clients"`
	Target      string   `json:"target"`
	Args        []string `json:"pgbench_args"`
	TPS         float64  `json:"tps,omitempty"`
	LatencyMS   float64  `json:"latency_ms,omitempty"`
	Txns        int64    `json:"transactions,omitempty"`
	Failed      int64    `json:"failed_transactions,omitempty"`
	ConnMS      float64  `json:"initial_connection_ms,omitempty"`
	CPUTicks    int64    `json:"cpu_ticks,omitempty"`      // of the pooler/proxy process, utime+stime
	CPUUsPerTxn float64  `json:"cpu_us_per_txn,omitempty"` // of the pooler/proxy process
	RSSKB       int64    `json:"rss_kb,omitempty"`         // of the pooler/proxy process, after the run
	// PostgresUsPerTxn and PgbenchUsPerTxn are the CPU time per
	// transaction of the whole cluster (postmaster and backends) and of
	// pgbench, for context.
	PostgresUsPerTxn float64 `json:"postgres_cpu_us_per_txn,omitempty"`
	PgbenchUsPerTxn  float64 `json:"pgbench_cpu_us_per_txn,omitempty"`
	MachineBusyPct   float64 `json:"machine_busy_pct"` // all CPUs, all processes, interrupts and steal, during the run
	// OtherBusyPct is the share of the machine's CPU used during the run by
	// processes other than pgbench, PostgreSQL and the target: noise.
	OtherBusyPct float64 `json:"other_busy_pct"`
	StealPct     float64 `json:"steal_pct,omitempty"` // CPU the hypervisor gave to other guests: noise too
	Error        string  `json:"error,omitempty"`
}

// measure runs pgbench once against t and reads t's CPU time around it.
func (b *bench) measure(ctx context.Context, round int, w workload, clients int, t *target) runResult {
	args := b.pgbenchArgs(w, clients, b.opts.duration)
	r := runResult{Round: round, Workload: w.Name, Clients: clients, Target: t.name, Args: args}
	fail := func(err error) runResult {
		r.Error = err.Error()
		return r
	}
	if t.d != nil && !t.d.alive() {
		return fail(fmt.Errorf("%s is not running: %w", t.name, t.d.exitError()))
	}
	if err := b.execAll(ctx, w.Before); err != nil {
		return fail(fmt.Errorf("before-run SQL: %w", err))
	}
	// Every run starts with no dirty buffers and a fresh checkpoint
	// interval: otherwise the writes of an earlier insert run, or a timed
	// checkpoint, land in whichever run comes next.
	if b.checkpoint != nil {
		if err := b.checkpoint(ctx); err != nil {
			return fail(fmt.Errorf("checkpoint before the run: %w", err))
		}
	}
	var ticks0 int64
	if t.d != nil {
		var err error
		if ticks0, err = cpuTicks(t.d.pid()); err != nil {
			return fail(err)
		}
	}
	pg0 := treeTicks(b.postmasterPID)
	procs0, irq0, steal0, total0 := systemCPU()
	out, benchCPU, err := runPgbench(ctx, b.pgbench, t.ep, args)
	procs1, irq1, steal1, total1 := systemCPU()
	pg1 := treeTicks(b.postmasterPID)
	var ticks1 int64
	if t.d != nil {
		var terr error
		if ticks1, terr = cpuTicks(t.d.pid()); terr != nil && err == nil {
			err = fmt.Errorf("%s: %w", t.name, terr)
		}
		r.CPUTicks = ticks1 - ticks0
	}
	if total1 > total0 {
		dt := float64(total1 - total0)
		r.MachineBusyPct = 100 * float64(procs1-procs0+irq1-irq0+steal1-steal0) / dt
		r.StealPct = 100 * float64(steal1-steal0) / dt
		ours := float64(pg1-pg0) + float64(r.CPUTicks) + benchCPU.Seconds()*float64(b.clkTck)
		r.OtherBusyPct = max(0, 100*(float64(procs1-procs0)-ours)/dt)
	}
	if err != nil {
		if t.d != nil && !t.d.alive() {
			err = fmt.Errorf("%w\n%v", err, t.d.exitError())
		}
		return fail(err)
	}
	res, err := parsePgbench(out)
	if err != nil {
		return fail(fmt.Errorf("%w\n%s", err, lastLines(out, 12)))
	}
	r.TPS, r.LatencyMS, r.Txns, r.Failed, r.ConnMS = res.TPS, res.LatencyMS, res.Txns, res.Failed, res.ConnMS
	if r.Txns > 0 {
		perTxn := func(ticks int64) float64 { return float64(ticks) * 1e6 / float64(b.clkTck) / float64(r.Txns) }
		if t.d != nil {
			r.CPUUsPerTxn = perTxn(r.CPUTicks)
			r.RSSKB = rssKB(t.d.pid())
		}
		if b.postmasterPID != 0 {
			r.PostgresUsPerTxn = perTxn(pg1 - pg0)
		}
		r.PgbenchUsPerTxn = float64(benchCPU.Microseconds()) / float64(r.Txns)
	}
	if r.Failed > 0 {
		return fail(fmt.Errorf("%d transactions failed", r.Failed))
	}
	return r
}

// seconds rounds d up to whole seconds (pgbench -T), at least 1.
func seconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

func firstLine(out []byte, err error) string {
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	l, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return l
}

// sampleBusy returns the percentage of all CPUs busy over d, before the
// bench starts anything: other work on the machine skews every figure.
func sampleBusy(ctx context.Context, d time.Duration) float64 {
	b0, i0, s0, t0 := systemCPU()
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	b1, i1, s1, t1 := systemCPU()
	b0, b1 = b0+i0+s0, b1+i1+s1
	if t1 <= t0 {
		return 0
	}
	return 100 * float64(b1-b0) / float64(t1-t0)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// selectWorkloads returns the workloads of all that -only selects, in
// order: an enc-* workload and its plain-* twin are selected together when
// either matches. noPolicy drops both.
func selectWorkloads(all []workload, only *regexp.Regexp, noPolicy bool) []workload {
	chosen := map[string]bool{}
	for _, w := range all {
		if only.MatchString(w.Name) || (w.Twin != "" && only.MatchString(w.Twin)) {
			chosen[w.Name] = true
			if w.Twin != "" {
				chosen[w.Twin] = true
			}
		}
	}
	var ws []workload
	for _, w := range all {
		if chosen[w.Name] && (!noPolicy || !isEnc(w.Name)) {
			ws = append(ws, w)
		}
	}
	return ws
}

// group is workloads whose runs interleave: one issue-2 workload, or a
// plain-* twin and its enc-* workload.
type group []workload

type job struct {
	w      workload
	target string
}

// jobs returns the runs of one cell of g, in the given target order.
func (g group) jobs(order []string) []job {
	var js []job
	for _, w := range g {
		for _, name := range order {
			if w.runsOn(name) {
				js = append(js, job{w, name})
			}
		}
	}
	return js
}

// groupWorkloads puts each enc workload with its twin (twin first), in the
// order of ws.
func groupWorkloads(ws []workload) []group {
	twins := map[string]workload{}
	for _, w := range ws {
		if w.Twin != "" {
			twins[w.Twin] = w
		}
	}
	byName := map[string]workload{}
	for _, w := range ws {
		byName[w.Name] = w
	}
	var gs []group
	for _, w := range ws {
		if _, isTwin := twins[w.Name]; isTwin {
			continue // grouped with its enc workload
		}
		if t, ok := byName[w.Twin]; ok && w.Twin != "" {
			gs = append(gs, group{t, w})
			continue
		}
		gs = append(gs, group{w})
	}
	return gs
}
