package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/migrate"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

const rotateDEKUsage = `Usage: pgcrypt-proxy keys rotate-dek KEY [--wait 5m] [--kms NAME] [--json] [--config FILE] [--SETTING VALUE ...]

Makes a new data-key (DEK) version of policy key KEY the one new values are
encrypted under. Old versions keep decrypting; "pgcrypt-proxy
encrypt-existing --table T" re-encrypts the values of each table that uses
KEY under the new version.

It works in two steps so that deterministic (equality-searchable) columns
keep finding every row on every proxy replica:
  1. the new version is created "retired": every proxy can decrypt with it
     and its equality lookups try it, but nobody encrypts under it yet;
  2. after --wait, when every proxy's key cache (5 minutes) has picked it up,
     it becomes active and the previous version is retired.
Interrupting the wait is safe: run the command again and it resumes with
what is left of the wait. Proxies switch their writes to the new version
within their cache TTL after step 2; until then they still write under the
previous version, which stays decryptable. Running it again after it
finished rotates again.

Flags:
  --wait D      time between the steps, at least the proxies' key cache TTL
                (default 5m; 0 activates at once: only safe when no proxy runs,
                or none uses deterministic columns of KEY)
  --kms NAME    the kms backend that wraps the new DEK (default: the policy's
                for KEY)
  --json        print the result as JSON
`

const destroyDEKUsage = `Usage: pgcrypt-proxy keys destroy-dek KEY VERSION [--force] [--dsn DSN] [--json] [--config FILE] [--SETTING VALUE ...]

Crypto-shreds version VERSION of the data key of policy key KEY: its wrapped
key is deleted from the keystore, so every value encrypted under it becomes
undecryptable. Backups of the database taken before still hold the wrapped
key, which decrypts for as long as the KEK version that wrapped it exists:
shredding is complete once the KEK has rotated past it and that version is
destroyed (rotation.destroy_grace), and once copies of a local keyring file
holding it are gone. Reads of such values fail with an error naming the
destroyed key (SQLSTATE 58000), never return garbage.

Refused:
  - for the active version (rotate first: keys rotate-dek KEY);
  - while stored values still use the version: every policy column that uses
    KEY is scanned (one sequential scan per table, reading the first 8 bytes
    of each value: plan for a full read of those tables); re-encrypt them
    with encrypt-existing first, or give --force;
  - for a version retired less than --min-retired-age ago (proxies may still
    encrypt under it for their cache TTL), unless --force.
Proxies that hold the key in their cache keep decrypting with it for up to
their cache TTL (5m).

Flags:
  --force                 destroy even if values still use the version, or it was
                          retired recently (never the active version)
  --dsn DSN               the database holding the tables (default: keystore.dsn)
  --min-retired-age D     default 5m, the proxies' key cache TTL
  --json                  print the destroyed key's row as JSON
`

func keysRotateDEK(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keys rotate-dek", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, rotateDEKUsage) }
	wait := fs.Duration("wait", keys.DefaultCacheTTL, "wait between staging and activating")
	kmsName := fs.String("kms", "", "kms backend for the new DEK (default: the policy's)")
	asJSON := fs.Bool("json", false, "print JSON")
	load := configFlags(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(pos) != 1 || *wait < 0 {
		fmt.Fprintf(stderr, "pgcrypt-proxy keys rotate-dek: give one KEY and a --wait of 0 or more\n\n%s", rotateDEKUsage)
		return 2
	}
	key := pos[0]
	cfg, ok := loadForKeystore("keys rotate-dek", load, stderr)
	if !ok {
		return 2
	}
	fail := failer("keys rotate-dek", stderr)
	var pol *policy.Policy
	if cfg.PolicyFile != "" {
		if pol, err = policy.Load(cfg.PolicyFile); err != nil {
			return fail(err)
		}
	}
	if *kmsName == "" {
		k, ok := dekPolicyKey(pol, key)
		if !ok {
			return fail(fmt.Errorf("the policy (%s) has no key %q; name the kms backend with --kms", dekPolicySource(cfg), key))
		}
		*kmsName = k.KMS
	}
	ctx, cancel := commandContext()
	defer cancel()
	log := newLogger(cfg.Log, stderr)
	keks, err := openKEKs(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	defer closeKEKs(keks)
	pool, err := keystorePool(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	store, err := keys.Open(ctx, pool, keks, keys.Options{Schema: cfg.Keystore.Schema, Logger: log})
	if err != nil {
		return fail(err)
	}
	w := *wait
	if w == 0 {
		w = -1 // RotateOptions: negative is no wait, zero the store's TTL
	}
	r, err := store.RotateDEK(ctx, key, *kmsName, keys.RotateOptions{Wait: w,
		OnStaged: func(st keys.DEKInfo, left time.Duration, resumed bool) {
			how := "staged"
			if resumed {
				how = "found staged by an earlier run"
			}
			fmt.Fprintf(stderr, "%s: version %d (id %d) %s; waiting %v for every proxy to see it before it becomes active "+
				"(interrupting is safe: run the command again to resume)\n", key, st.DEKVersion, st.ID, how, left.Round(time.Second))
		}})
	if err != nil {
		return fail(err)
	}
	if *asJSON {
		return writeJSON(stdout, stderr, r)
	}
	if r.AlreadyDone {
		fmt.Fprintf(stdout, "%s: another run activated version %d (id %d) meanwhile\n", key, r.Active.DEKVersion, r.Active.ID)
	} else {
		fmt.Fprintf(stdout, "%s: version %d (id %d) is active; version %d (id %d) is retired and still decrypts\n",
			key, r.Active.DEKVersion, r.Active.ID, r.Previous.DEKVersion, r.Previous.ID)
	}
	if tables := tablesUsingKey(pol, key); len(tables) > 0 {
		fmt.Fprintf(stdout, "Proxies encrypt new values under it within their key cache TTL (5m). To move stored values forward, run\n")
		for _, t := range tables {
			fmt.Fprintf(stdout, "  pgcrypt-proxy encrypt-existing --table %s\n", t)
		}
		fmt.Fprintf(stdout, "and once they report no old-key values, version %d can be destroyed (keys destroy-dek %s %d).\n",
			r.Previous.DEKVersion, key, r.Previous.DEKVersion)
	}
	return 0
}

func keysDestroyDEK(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keys destroy-dek", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, destroyDEKUsage) }
	force := fs.Bool("force", false, "destroy even if values still use it")
	dsn := fs.String("dsn", "", "database holding the tables (default keystore.dsn)")
	minAge := fs.Duration("min-retired-age", keys.DefaultCacheTTL, "refuse versions retired more recently")
	asJSON := fs.Bool("json", false, "print JSON")
	load := configFlags(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var version int
	if len(pos) == 2 {
		version, err = strconv.Atoi(pos[1])
	}
	if len(pos) != 2 || err != nil || version < 1 {
		fmt.Fprintf(stderr, "pgcrypt-proxy keys destroy-dek: give KEY and VERSION (a number from keys list)\n\n%s", destroyDEKUsage)
		return 2
	}
	key := pos[0]
	cfg, ok := loadForKeystore("keys destroy-dek", load, stderr)
	if !ok {
		return 2
	}
	fail := failer("keys destroy-dek", stderr)
	ctx, cancel := commandContext()
	defer cancel()
	log := newLogger(cfg.Log, stderr)
	pool, err := keystorePool(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	// No KMS is needed: destroying deletes the wrapped key, it unwraps
	// nothing.
	store, err := keys.Open(ctx, pool, nil, keys.Options{Schema: cfg.Keystore.Schema, Logger: log, ReadOnly: true})
	if err != nil {
		return fail(err)
	}
	list, err := store.List(ctx)
	if err != nil {
		return fail(err)
	}
	var target *keys.DEKInfo
	for i := range list {
		if list[i].Key == key && list[i].DEKVersion == version {
			target = &list[i]
		}
	}
	switch {
	case target == nil:
		return fail(fmt.Errorf("key %q has no version %d (see keys list)", key, version))
	case target.State == keys.StateDestroyed:
		fmt.Fprintf(stdout, "%s version %d (id %d) was already destroyed\n", key, version, target.ID)
		return 0
	case target.State == keys.StateActive:
		return fail(fmt.Errorf("%s version %d (id %d) is the active version, which new values are encrypted under; "+
			"rotate first (keys rotate-dek %s), move the values forward (encrypt-existing), then destroy it", key, version, target.ID, key))
	}

	if !*force {
		pol, err := loadMigrationPolicy(cfg)
		if err != nil {
			return fail(fmt.Errorf("cannot check which values use the key without the policy (%w); --force destroys without checking", err))
		}
		dataDSN := *dsn
		if dataDSN == "" {
			dataDSN = cfg.Keystore.DSN.Value()
		}
		dpool, err := pgxpool.New(ctx, dataDSN)
		if err != nil {
			return fail(fmt.Errorf("database %s: %w", config.RedactDSN(dataDSN), err))
		}
		defer dpool.Close()
		began := time.Now()
		usage, err := migrate.KeyUsage(ctx, dpool, pol, key, target.ID)
		if err != nil {
			return fail(err)
		}
		log.Info().Str("key", key).Int("dek_version", version).Uint32("dek_id", target.ID).Int("columns", len(usage)).
			Dur("took", time.Since(began)).Msg("scanned policy columns for values under the data key")
		var used []string
		tables := map[string]bool{}
		for _, u := range usage {
			if u.Values > 0 {
				used = append(used, fmt.Sprintf("  %s.%s: %d value(s)", u.Table, u.Column, u.Values))
				tables[u.Table] = true
			}
		}
		if len(used) > 0 {
			var runs []string
			for t := range tables {
				runs = append(runs, "pgcrypt-proxy encrypt-existing --table "+t)
			}
			sort.Strings(runs)
			return fail(fmt.Errorf("refused: values are still encrypted under %s version %d (id %d):\n%s\n"+
				"re-encrypt them under the active version first (%s), or destroy anyway with --force, which makes them unreadable for good",
				key, version, target.ID, strings.Join(used, "\n"), strings.Join(runs, "; ")))
		}
	}
	minRetired := *minAge
	if *force || minRetired == 0 {
		minRetired = -1 // DestroyOptions: negative is no check, zero the store's TTL
	}
	info, err := store.DestroyDEK(ctx, key, version, keys.DestroyOptions{MinRetiredAge: minRetired})
	if err != nil {
		if errors.Is(err, keys.ErrRecentlyRetired) {
			return fail(fmt.Errorf("%w; --force destroys it anyway", err))
		}
		return fail(err)
	}
	if *asJSON {
		return writeJSON(stdout, stderr, info)
	}
	fmt.Fprintf(stdout, "%s version %d (id %d) destroyed: values encrypted under it can no longer be decrypted. "+
		"Proxies that cached it keep decrypting with it for up to their key cache TTL (5m).\n", key, version, info.ID)
	return 0
}

func dekPolicyKey(pol *policy.Policy, key string) (policy.Key, bool) {
	if pol == nil {
		return policy.Key{}, false
	}
	k, ok := pol.Keys[key]
	return k, ok
}

func dekPolicySource(cfg *config.Config) string {
	if cfg.PolicyFile == "" {
		return "no policy_file"
	}
	return cfg.PolicyFile
}

// tablesUsingKey lists the policy tables with a column under key.
func tablesUsingKey(pol *policy.Policy, key string) []string {
	if pol == nil {
		return nil
	}
	var out []string
	for _, t := range pol.Tables() {
		for _, c := range t.Columns {
			if c.Key == key {
				out = append(out, t.Name.String())
				break
			}
		}
	}
	return out
}
