package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// pgbenchResult is what one pgbench run printed.
type pgbenchResult struct {
	TPS       float64 // "tps = … (without initial connection time)"
	LatencyMS float64 // "latency average = … ms"
	Txns      int64   // "number of transactions actually processed"
	Failed    int64   // "number of failed transactions" (PostgreSQL 15+)
	ConnMS    float64 // "initial connection time = … ms"
}

var (
	reTPS     = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)`)
	reLatency = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reTxns    = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	reFailed  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
	reConn    = regexp.MustCompile(`(?m)^initial connection time = ([0-9.]+) ms`)
)

// parsePgbench extracts the figures from pgbench's report (its stdout).
func parsePgbench(out string) (pgbenchResult, error) {
	var r pgbenchResult
	var missing []string
	get := func(re *regexp.Regexp, name string, required bool) string {
		m := re.FindStringSubmatch(out)
		if m == nil {
			if required {
				missing = append(missing, name)
			}
			return ""
		}
		return m[1]
	}
	var errs []error
	if s := get(reTPS, "tps", true); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		errs = append(errs, err)
		r.TPS = v
	}
	if s := get(reLatency, "latency average", true); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		errs = append(errs, err)
		r.LatencyMS = v
	}
	if s := get(reTxns, "number of transactions actually processed", true); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		errs = append(errs, err)
		r.Txns = v
	}
	if s := get(reFailed, "", false); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		errs = append(errs, err)
		r.Failed = v
	}
	if s := get(reConn, "", false); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		errs = append(errs, err)
		r.ConnMS = v
	}
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("pgbench output lacks %s", strings.Join(missing, ", ")))
	}
	return r, errors.Join(errs...)
}

// endpoint is where pgbench connects.
type endpoint struct {
	host string
	port int
	user string
	db   string
	tls  bool // sslmode=require instead of disable
}

func (ep endpoint) sslmode() string {
	if ep.tls {
		return "require"
	}
	return "disable"
}

// pgbenchEnv is our environment without libpq variables, plus the
// connection settings: TLS off (on with -tls) and GSS encryption off, so no
// connection spends a round trip on a GSSENCRequest.
func pgbenchEnv(ep endpoint) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"PGHOST="+ep.host, "PGPORT="+strconv.Itoa(ep.port), "PGUSER="+ep.user, "PGDATABASE="+ep.db,
		"PGSSLMODE="+ep.sslmode(), "PGGSSENCMODE=disable", "PGAPPNAME=pgcrypt-bench", "PGCONNECT_TIMEOUT=10")
}

// runPgbench runs pgbench with args against ep, killing it when ctx ends,
// and returns its stdout and the CPU time it used. A failure carries the
// tail of its output.
func runPgbench(ctx context.Context, pgbench string, ep endpoint, args []string) (string, time.Duration, error) {
	cmd := exec.Command(pgbench, args...)
	cmd.Env = pgbenchEnv(ep)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := startCmd(cmd); err != nil {
		return "", 0, fmt.Errorf("start pgbench: %w", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var err error
	select {
	case err = <-waited:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-waited:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-waited
		}
		return "", 0, ctx.Err()
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if err != nil {
		return stdout.String(), cpu, fmt.Errorf("pgbench %s: %v\n%s", strings.Join(args, " "), err, lastLines(stderr.String()+stdout.String(), 12))
	}
	return stdout.String(), cpu, nil
}

// lastLines returns the last n non-empty lines of s, indented.
func lastLines(s string, n int) string {
	var lines []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}
