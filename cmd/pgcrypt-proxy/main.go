package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/internal/gcfloor"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
	"github.com/pgcrypt/pgcrypt-proxy/proxy"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `pgcrypt-proxy: transparent column encryption for PostgreSQL

Usage:
  pgcrypt-proxy serve   [--config FILE] [--SETTING VALUE ...]   run the proxy
  pgcrypt-proxy policy check [--config FILE] [--dsn DSN]              validate the policy against the live schema
  pgcrypt-proxy rotate  [--json] [--wait] [--config FILE]        run one KEK rotation pass (rewrap, retire) and exit
  pgcrypt-proxy keys list [--json] [--config FILE]               show data keys, their KEK versions and states
  pgcrypt-proxy keys rotate-dek KEY [--wait 5m]                  make a new data-key version active (two-phase)
  pgcrypt-proxy keys destroy-dek KEY VERSION [--force]           crypto-shred a data-key version
  pgcrypt-proxy encrypt-existing --table T [--dry-run] [--rate R]
                                                                 encrypt a table's legacy plaintext in place, resumably
  pgcrypt-proxy kms local init|rotate|list|enable|disable|destroy --keyring FILE
                                                                 manage the local keyring ("kms --help")
  pgcrypt-proxy version                                          print the version

Every setting of the config file can also be given as a flag named by its
path (--upstream.tls.mode disable) or as an environment variable
(PGCRYPT_UPSTREAM_TLS_MODE=disable). Flags override the environment, which
overrides the file. "pgcrypt-proxy serve --help" lists the settings.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "rotate":
		return rotateCmd(args[1:], stdout, stderr)
	case "keys":
		return keysCmd(args[1:], stdout, stderr)
	case "kms":
		return kmsCmd(args[1:], stdout, stderr)
	case "encrypt-existing":
		return encryptExisting(args[1:], stdout, stderr)
	case "policy":
		return policyCmd(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "pgcrypt-proxy %s (%s, %s/%s)\n", version, buildInfo(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "pgcrypt-proxy: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func buildInfo() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown build"
	}
	return bi.GoVersion
}

// configFlags registers --config and one flag per config setting, and
// returns a function that loads the configuration after parsing.
func configFlags(fs *flag.FlagSet) func() (*config.Config, error) {
	path := fs.String("config", "", "config file (default "+config.DefaultFile+")")
	overrides := map[string]string{}
	for _, name := range config.Fields() {
		if strings.Contains(name, ".NAME.") {
			continue
		}
		fs.Func(name, "set "+name, func(v string) error {
			overrides[name] = v
			return nil
		})
	}
	return func() (*config.Config, error) {
		p := *path
		explicit := p != ""
		if !explicit {
			if env := os.Getenv(config.EnvPrefix + "CONFIG"); env != "" {
				p, explicit = env, true
			}
		}
		return config.Load(p, explicit, os.Environ(), overrides)
	}
}

func newLogger(cfg config.Log, w io.Writer) zerolog.Logger {
	level, err := zerolog.ParseLevel(cfg.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	if cfg.Format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
}

func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	load := configFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg, err := load()
	if err != nil {
		fmt.Fprintf(stderr, "pgcrypt-proxy: invalid configuration:\n%v\n", indent(err))
		return 2
	}
	log := newLogger(cfg.Log, stderr)
	if f := os.Getenv("PGCRYPT_CPUPROFILE"); f != "" {
		// A debugging aid: a CPU profile of the whole run, written at exit.
		if out, err := os.Create(f); err == nil {
			if err := pprof.StartCPUProfile(out); err == nil {
				defer func() { pprof.StopCPUProfile(); out.Close() }()
			}
		}
	}
	if f := os.Getenv("PGCRYPT_MEMPROFILE"); f != "" {
		// Likewise: where the run allocated (go tool pprof -sample_index=alloc_space).
		defer func() {
			if out, err := os.Create(f); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(out, 0)
				out.Close()
			}
		}()
	}

	pcfg, err := proxyConfig(cfg, log)
	if err != nil {
		log.Error().Err(err).Msg("invalid configuration")
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go gcfloor.Run(ctx) // fewer GC cycles while the live heap is small; GOGC in the environment turns it off
	m := newMetrics()
	enc, err := openEncryption(ctx, cfg, log, m)
	if err != nil {
		log.Error().Err(err).Msg("cannot start encryption")
		return 1
	}
	defer enc.close()
	_, stopRotation := startRotation(ctx, cfg, enc, log, func(r *keys.PassResult) {
		m.RotationPass(r.OK(), r.Started.Add(r.Duration), r.Duration, r.Rewrapped, r.Failed, len(r.AtRisk))
		if r.DEKsByKEKVersion != nil {
			m.SetDEKsByKEKVersion(r.DEKsByKEKVersion)
		}
	}) // KEK rotation worker; stopped before enc.close
	defer stopRotation()
	auditLog, err := openAudit(ctx, cfg.Audit.File, cfg.Audit.Buffer, log, m)
	if err != nil {
		log.Error().Err(err).Msg("cannot open the audit log")
		return 1
	}
	pcfg.Policy, pcfg.Keys = enc.policy, enc.keys
	pcfg.Metrics, pcfg.Audit = m, auditLog
	srv, err := proxy.New(pcfg)
	if err != nil {
		log.Error().Err(err).Msg("cannot start")
		return 1
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		log.Error().Err(err).Msg("cannot listen")
		return 1
	}
	adm, err := startAdmin(ctx, cfg, log, m, readinessChecks(cfg, pcfg.UpstreamTLS, enc.keks, enc.policy))
	if err != nil {
		log.Error().Err(err).Msg("cannot start the admin listener")
		return 1
	}
	defer func() {
		actx, acancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer acancel()
		_ = adm.Shutdown(actx)
	}()
	if enc.policy != nil {
		recordPolicy(m, enc.policy.Current())
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	if enc.policy != nil {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		trigger := make(chan struct{}, 1)
		go func() {
			for range hup {
				select {
				case trigger <- struct{}{}:
				default:
				}
			}
		}()
		go enc.policy.Watch(ctx, 2*time.Second, trigger, func(p *policy.Policy, err error) {
			policyReloaded(m, p, err)
			if err != nil {
				log.Error().Err(err).Msg("policy reload failed; the previous policy stays in force")
				return
			}
			log.Info().Str("policy", p.Source).Str("digest", p.Digest).Int("tables", len(p.Tables())).Msg("policy reloaded")
		})
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	log.Info().Str("listen", ln.Addr().String()).Str("upstream", cfg.Upstream.Address).
		Str("upstream_tls", cfg.Upstream.TLS.Mode).Str("client_tls", cfg.ClientTLS.Mode).
		Str("config", cfg.Source()).Str("version", version).Msg("pgcrypt-proxy serving")

	select {
	case err := <-served:
		if err != nil && !errors.Is(err, proxy.ErrServerClosed) {
			log.Error().Err(err).Msg("serve failed")
			return 1
		}
		return 0
	case sig := <-sigs:
		adm.SetDraining()
		log.Info().Str("signal", sig.String()).Dur("grace", cfg.ShutdownGrace.D()).
			Int("sessions", srv.ActiveSessions()).Msg("shutting down: no new connections; idle sessions close now, busy ones when they finish")
	}
	sctx, scancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace.D())
	defer scancel()
	go func() {
		// A second signal skips the grace period.
		<-sigs
		log.Warn().Msg("second signal: closing all sessions now")
		scancel()
	}()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("shutdown grace ended; remaining sessions were closed")
	}
	<-served
	auditLog.Close()
	log.Info().Msg("pgcrypt-proxy stopped")
	return 0
}

func proxyConfig(cfg *config.Config, log zerolog.Logger) (proxy.Config, error) {
	host, _, _ := net.SplitHostPort(cfg.Upstream.Address)
	up := cfg.Upstream.TLS
	upTLS, err := proxy.UpstreamTLSConfig(up.Mode, up.CAFile, up.ServerName, host, up.CertFile, up.KeyFile)
	if err != nil {
		return proxy.Config{}, err
	}
	pc := proxy.Config{
		Upstream:            cfg.Upstream.Address,
		UpstreamTLS:         upTLS,
		UpstreamDialTimeout: cfg.Upstream.DialTimeout.D(),
		ClientTLSRequired:   cfg.ClientTLS.Mode == "require",
		MaxConnections:      cfg.Limits.MaxConnections,
		StartupTimeout:      cfg.Limits.StartupTimeout.D(),
		IdleTimeout:         cfg.Limits.IdleTimeout.D(),
		CatalogTTL:          cfg.CatalogRefresh.D(),
		Logger:              log,
	}
	if cfg.ClientTLS.Mode != "disable" {
		pc.ClientTLS, err = proxy.ClientTLSConfig(cfg.ClientTLS.CertFile, cfg.ClientTLS.KeyFile)
		if err != nil {
			return proxy.Config{}, err
		}
	}
	if cfg.ClientTLS.Mode != "require" {
		log.Warn().Str("client_tls", cfg.ClientTLS.Mode).Msg("clients may connect without TLS; use client_tls.mode: require in production")
	}
	if cfg.Upstream.TLS.Mode == "disable" || cfg.Upstream.TLS.Mode == "require" {
		log.Warn().Str("upstream_tls", cfg.Upstream.TLS.Mode).Msg("the upstream server's identity is not verified; use upstream.tls.mode: verify-full in production")
	}
	return pc, nil
}

func indent(err error) string {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return strings.Join(lines, "\n")
}
