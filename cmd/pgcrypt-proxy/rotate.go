package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

const rotateUsage = `Usage: pgcrypt-proxy rotate [--json] [--wait] [--config FILE] [--SETTING VALUE ...]

Runs one KEK rotation pass on the keystore (keystore.dsn, keystore.schema)
and exits. Every data key not wrapped under its KEK's primary version is
rewrapped under it (and verified). A KEK version no data key needs is
disabled by a pass at least 15 minutes after one first found it
unreferenced, and, with rotation.destroy_retired_versions, destroyed by a
pass rotation.destroy_grace after it was disabled. A KMS that lost a
version data keys still need is reported, naming them; then nothing of that
KEK is retired. Serving replicas run the same pass at startup and every
rotation.interval; one process at a time runs it (a PostgreSQL advisory
lock on the keystore database).

  --json   print the summary as JSON
  --wait   wait for another process's pass to finish, then run one

Exit status: 0 clean pass; 1 problems (listed; the keystore stays
consistent and the next pass resumes); 2 usage or configuration error; 3
another process (a serving replica) is running a pass: try again later, or
use --wait.
`

// rotateClock is the rotation's clock (retirement times, destroy_grace);
// tests move it.
var rotateClock = time.Now

// rotatorOptions maps the configuration to the rotation worker's options.
func rotatorOptions(cfg *config.Config, log zerolog.Logger) keys.RotatorOptions {
	return keys.RotatorOptions{
		Schema:         cfg.Keystore.Schema,
		Logger:         log,
		Now:            rotateClock,
		PollInterval:   cfg.Rotation.Interval.D(),
		DestroyRetired: cfg.Rotation.DestroyRetiredVersions,
		DestroyGrace:   cfg.Rotation.DestroyGrace.D(),
		KeepVersions:   !cfg.Rotation.RetireVersions,
	}
}

// openRotationKEKs opens the kms backends again for the rotation worker,
// so that its KMS budget is its own (keys.DefaultRotateRateLimit calls per
// second) and neither waits behind nor starves the proxy's: local keyrings
// as openKEKs does, Cloud KMS keys with the rotation's rate limit.
func openRotationKEKs(ctx context.Context, cfg *config.Config) (map[string]kms.KEK, error) {
	others := *cfg
	others.KMS = map[string]*config.KMS{}
	var gcp []string
	for n, k := range cfg.KMS {
		if k != nil && k.Type == "gcp" {
			gcp = append(gcp, n)
		} else {
			others.KMS[n] = k
		}
	}
	sort.Strings(gcp)
	keks, err := openKEKs(ctx, &others)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, n := range gcp {
		k := cfg.KMS[n]
		g, err := kms.NewGCP(ctx, kms.GCPOptions{Key: k.Key, Endpoint: k.Endpoint,
			RateLimit: keys.DefaultRotateRateLimit, Burst: keys.DefaultRotateBurst})
		if err != nil {
			errs = append(errs, fmt.Errorf("kms.%s: %w", n, err))
			continue
		}
		keks[n] = g
	}
	if len(errs) > 0 {
		closeKEKs(keks)
		return nil, errors.Join(errs...)
	}
	return keks, nil
}

// startRotation starts serve's KEK rotation worker: a pass at once, then
// every rotation.interval, in one replica at a time. onPass (may be nil)
// gets every pass's result, for metrics. The worker does not stop the
// proxy: if it cannot start, that is logged. stop ends it and waits; call
// it before closing enc.
func startRotation(ctx context.Context, cfg *config.Config, enc *encryption, log zerolog.Logger,
	onPass func(*keys.PassResult)) (r *keys.Rotator, stop func()) {
	if enc == nil || enc.pool == nil {
		return nil, func() {}
	}
	keks, err := openRotationKEKs(ctx, cfg)
	if err != nil {
		log.Error().Err(err).Msg("KEK rotation worker not started: cannot open the kms backends")
		return nil, func() {}
	}
	o := rotatorOptions(cfg, log)
	o.OnPass = onPass
	r, err = keys.NewRotator(enc.pool, keks, o)
	if err != nil {
		closeKEKs(keks)
		log.Error().Err(err).Msg("KEK rotation worker not started")
		return nil, func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, cfg.Rotation.Interval.D())
	}()
	log.Info().Dur("interval", cfg.Rotation.Interval.D()).Bool("destroy_retired_versions", cfg.Rotation.DestroyRetiredVersions).
		Dur("destroy_grace", cfg.Rotation.DestroyGrace.D()).Msg("KEK rotation worker started")
	return r, func() {
		cancel()
		<-done
		closeKEKs(keks)
	}
}

// Exit statuses of rotate beyond 0, 1 and 2.
const exitRotationBusy = 3

func rotateCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rotate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, rotateUsage) }
	asJSON := fs.Bool("json", false, "print JSON")
	wait := fs.Bool("wait", false, "wait for another process's pass")
	load := configFlags(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(pos) > 0 {
		if pos[0] == "help" {
			fmt.Fprint(stdout, rotateUsage)
			return 0
		}
		fmt.Fprintf(stderr, "pgcrypt-proxy rotate: unexpected argument %q\n\n%s", pos[0], rotateUsage)
		return 2
	}
	cfg, ok := loadForKeystore("rotate", load, stderr)
	if !ok {
		return 2
	}
	fail := failer("rotate", stderr)
	ctx, cancel := commandContext()
	defer cancel()
	keks, err := openRotationKEKs(ctx, cfg)
	if err != nil {
		return fail(fmt.Errorf("cannot open the kms backends:\n%s", indent(err)))
	}
	defer closeKEKs(keks)
	pool, err := keystorePool(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	// The summary below says what the pass's log line would. This command
	// is the privileged job rotation.retire_versions: false defers to, so
	// it always retires.
	ro := rotatorOptions(cfg, zerolog.Nop())
	ro.KeepVersions = false
	r, err := keys.NewRotator(pool, keks, ro)
	if err != nil {
		return fail(err)
	}
	var res *keys.PassResult
	if *wait {
		res, err = r.PassWait(ctx)
	} else {
		res, err = r.Pass(ctx)
	}
	if errors.Is(err, keys.ErrRotationBusy) {
		fmt.Fprintf(stderr, "pgcrypt-proxy rotate: %v (a serving replica runs one every rotation.interval); "+
			"try again later, or use --wait\n", err)
		return exitRotationBusy
	}
	if res == nil {
		return fail(err)
	}
	if *asJSON {
		if code := writeJSON(stdout, stderr, passJSON(res)); code != 0 {
			return code
		}
	} else {
		printPass(stdout, res)
	}
	if err != nil {
		fmt.Fprintf(stderr, "pgcrypt-proxy rotate: the pass had problems:\n%s\n", indent(err))
		return 1
	}
	return 0
}

// rotateJSON is the output of `rotate --json`.
type rotateJSON struct {
	OK               bool           `json:"ok"`
	Started          time.Time      `json:"started"`
	DurationSeconds  float64        `json:"duration_seconds"`
	Rewrapped        int            `json:"rewrapped"`
	Raced            int            `json:"raced"`
	Failed           int            `json:"failed"`
	Disabled         []string       `json:"disabled"`
	Destroyed        []string       `json:"destroyed"`
	Reenabled        []string       `json:"reenabled"`
	Retiring         []retiringJSON `json:"retiring"`
	AtRisk           []atRiskJSON   `json:"at_risk"`
	DEKsByKEKVersion map[string]int `json:"deks_by_kek_version"`
	KMSCalls         int64          `json:"kms_calls"`
	Errors           []string       `json:"errors"`
}

type retiringJSON struct {
	Version string     `json:"version"`
	State   string     `json:"state"`
	Since   time.Time  `json:"since"`
	Next    *time.Time `json:"next,omitempty"`
}

type atRiskJSON struct {
	Version     string     `json:"version"`
	State       string     `json:"state"`
	DestroyTime *time.Time `json:"destroy_time,omitempty"`
	DEKs        []dekRef   `json:"deks"`
}

type dekRef struct {
	ID         uint32 `json:"id"`
	Key        string `json:"key"`
	DEKVersion int    `json:"dek_version"`
}

func passJSON(res *keys.PassResult) rotateJSON {
	j := rotateJSON{
		OK: res.OK(), Started: res.Started.UTC(), DurationSeconds: res.Duration.Seconds(),
		Rewrapped: res.Rewrapped, Raced: res.Raced, Failed: res.Failed,
		Disabled: nonNil(res.Disabled), Destroyed: nonNil(res.Destroyed), Reenabled: nonNil(res.Reenabled),
		Retiring: []retiringJSON{}, AtRisk: []atRiskJSON{}, DEKsByKEKVersion: res.DEKsByKEKVersion,
		KMSCalls: res.KMSCalls, Errors: errorList(res.Err),
	}
	if j.DEKsByKEKVersion == nil {
		j.DEKsByKEKVersion = map[string]int{}
	}
	for _, v := range res.Retiring {
		rj := retiringJSON{Version: v.Version, State: v.State, Since: v.Since.UTC()}
		if !v.Next.IsZero() {
			n := v.Next.UTC()
			rj.Next = &n
		}
		j.Retiring = append(j.Retiring, rj)
	}
	for _, a := range res.AtRisk {
		aj := atRiskJSON{Version: a.Version, State: a.State, DEKs: []dekRef{}}
		if !a.DestroyTime.IsZero() {
			d := a.DestroyTime.UTC()
			aj.DestroyTime = &d
		}
		for _, d := range a.DEKs {
			aj.DEKs = append(aj.DEKs, dekRef{ID: d.ID, Key: d.Key, DEKVersion: d.DEKVersion})
		}
		j.AtRisk = append(j.AtRisk, aj)
	}
	return j
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// errorList splits a joined error into its messages.
func errorList(err error) []string {
	out := []string{}
	if err == nil {
		return out
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok && !isKeysError(err) {
		for _, e := range j.Unwrap() {
			out = append(out, e.Error())
		}
		return out
	}
	return append(out, err.Error())
}

func isKeysError(err error) bool {
	_, ok := err.(*keys.Error)
	return ok
}

func printPass(w io.Writer, res *keys.PassResult) {
	fmt.Fprintf(w, "rewrapped %d data key(s) (%d changed meanwhile by another writer, %d failed) in %v, %d KMS call(s)\n",
		res.Rewrapped, res.Raced, res.Failed, res.Duration.Round(time.Millisecond), res.KMSCalls)
	for _, v := range res.Reenabled {
		fmt.Fprintf(w, "re-enabled  %s (data keys need it again)\n", v)
	}
	for _, v := range res.Disabled {
		fmt.Fprintf(w, "disabled    %s\n", v)
	}
	for _, v := range res.Destroyed {
		fmt.Fprintf(w, "destroyed   %s\n", v)
	}
	for _, v := range res.Retiring {
		next := "destruction is off (rotation.destroy_retired_versions)"
		switch {
		case v.State == "unreferenced":
			next = "to be disabled by a pass after " + v.Next.UTC().Format(time.RFC3339)
		case !v.Next.IsZero():
			next = "to be destroyed by a pass after " + v.Next.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "retiring    %s: %s since %s; %s\n", v.Version, v.State, v.Since.UTC().Format(time.RFC3339), next)
	}
	for _, a := range res.AtRisk {
		var ds []string
		for _, d := range a.DEKs {
			ds = append(ds, d.String())
		}
		fmt.Fprintf(w, "AT RISK     %s (%s): %d data key(s): %s\n", a.Version, a.State, len(a.DEKs), strings.Join(ds, ", "))
	}
	if len(res.DEKsByKEKVersion) > 0 {
		fmt.Fprintln(w, "data keys by KEK version:")
		vs := make([]string, 0, len(res.DEKsByKEKVersion))
		for v := range res.DEKsByKEKVersion {
			vs = append(vs, v)
		}
		sort.Strings(vs)
		for _, v := range vs {
			fmt.Fprintf(w, "  %s  %d\n", v, res.DEKsByKEKVersion[v])
		}
	}
}
