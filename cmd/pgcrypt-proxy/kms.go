package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

const kmsUsage = `Usage: pgcrypt-proxy kms local COMMAND --keyring FILE [flags] [VERSION]

Manage the local keyring, the embedded KMS (a file of versioned KEKs sealed
under a master key from $PGCRYPT_MASTER_KEY or --master-key-file).

Commands:
  init               create the keyring (version 1, primary); never overwrites
  rotate             add a version and make it the primary
  list [--json]      show versions: state, primary, creation time
  enable VERSION     re-enable a disabled version
  disable VERSION    disable a version (reversible); not the primary
  destroy VERSION --yes
                     delete a version's key material for good; not the primary.
                     With --config, refused while a data key in the keystore
                     is still wrapped under it.

Flags:
  --keyring FILE           the keyring file (required)
  --master-key-file FILE   master key file (32 raw bytes or their base64); or set
                           PGCRYPT_MASTER_KEY (base64 of 32 bytes), not both
  --dev                    allow a cleartext keyring (no master key): never in production
  --config FILE            config file, for destroy's keystore check

LOSING THE MASTER KEY LOSES EVERY KEY IN THE KEYRING AND SO ALL ENCRYPTED
DATA. Keep it apart from the keyring file and from database backups.
Generate one with: head -c32 /dev/urandom | base64
`

// parseInterspersed parses flags that may come before or after positional
// arguments ("destroy 2 --yes") and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// commandContext is the context of a one-shot command: cancelled by SIGINT
// or SIGTERM.
func commandContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func kmsCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
		fmt.Fprint(stdout, kmsUsage)
		return 0
	}
	if len(args) < 2 || args[0] != "local" {
		fmt.Fprint(stderr, kmsUsage)
		return 2
	}
	sub := args[1]
	switch sub {
	case "init", "rotate", "list", "enable", "disable", "destroy":
	case "help", "--help", "-h":
		fmt.Fprint(stdout, kmsUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "pgcrypt-proxy kms local: unknown command %q\n\n%s", sub, kmsUsage)
		return 2
	}
	fs := flag.NewFlagSet("kms local "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, kmsUsage) }
	keyring := fs.String("keyring", "", "keyring file")
	mkFile := fs.String("master-key-file", "", "master key file")
	dev := fs.Bool("dev", false, "allow a cleartext keyring")
	asJSON := fs.Bool("json", false, "list: print JSON")
	yes := fs.Bool("yes", false, "destroy: confirm")
	keyID := fs.String("key-id", "", "init: the key id (default random)")
	load := configFlags(fs)
	pos, err := parseInterspersed(fs, args[2:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "pgcrypt-proxy kms local %s: %s\n\n%s", sub, fmt.Sprintf(format, a...), kmsUsage)
		return 2
	}
	if *keyring == "" {
		return usageErr("--keyring FILE is required")
	}
	wantArgs := 0
	if sub == "enable" || sub == "disable" || sub == "destroy" {
		wantArgs = 1
	}
	if len(pos) != wantArgs {
		if wantArgs == 1 {
			return usageErr("takes one VERSION (a version number, or its full name)")
		}
		return usageErr("takes no arguments, got %q", strings.Join(pos, " "))
	}
	if *asJSON && sub != "list" {
		return usageErr("--json applies to list only")
	}
	if *keyID != "" && sub != "init" {
		return usageErr("--key-id applies to init only")
	}
	if sub == "destroy" && !*yes {
		return usageErr("destroying version %s deletes its key material for good, and with it every data key "+
			"still wrapped under it; add --yes to confirm", pos[0])
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "pgcrypt-proxy kms local %s: %v\n", sub, err)
		return 1
	}
	mk, err := kms.LoadMasterKey(*mkFile)
	if err != nil {
		return fail(err)
	}
	ctx, cancel := commandContext()
	defer cancel()
	opts := kms.LocalOptions{Path: *keyring, MasterKey: mk, Dev: *dev, KeyID: *keyID}

	if sub == "init" {
		l, err := kms.InitLocal(ctx, opts)
		if err != nil {
			return fail(err)
		}
		defer l.Close()
		fmt.Fprintf(stdout, "created keyring %s: key %s, version 1 is the primary\n", l.Path(), l.Name())
		if mk.IsZero() {
			fmt.Fprintln(stderr, "WARNING: dev mode: this keyring is NOT encrypted; never use it in production")
		} else {
			fmt.Fprintln(stderr, "Keep the master key safe and apart from the keyring and from database backups: losing it loses all encrypted data.")
		}
		return 0
	}
	l, err := kms.OpenLocal(ctx, opts)
	if err != nil {
		return fail(err)
	}
	defer l.Close()
	switch sub {
	case "rotate":
		v, err := l.Rotate(ctx)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "version %s is now the primary of %s (new data keys are wrapped under it; run pgcrypt-proxy rotate to rewrap the others)\n",
			kms.VersionID(v), l.Name())
	case "list":
		vs, err := l.Versions(ctx)
		if err != nil {
			return fail(err)
		}
		if *asJSON {
			return writeJSON(stdout, stderr, kekVersionsJSON(l.Name(), vs))
		}
		printKEKVersions(stdout, vs)
	case "enable":
		if err := l.Enable(ctx, pos[0]); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "version %s of %s is enabled\n", versionArg(pos[0]), l.Name())
	case "disable":
		if err := l.Disable(ctx, pos[0]); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "version %s of %s is disabled (undo with: pgcrypt-proxy kms local enable %s --keyring %s)\n",
			versionArg(pos[0]), l.Name(), versionArg(pos[0]), *keyring)
	case "destroy":
		full := kms.VersionName(l.Name(), versionArg(pos[0]))
		if err := checkNoDEKs(ctx, fs, load, full, stderr); err != nil {
			return fail(err)
		}
		if err := l.Destroy(ctx, pos[0]); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "version %s of %s is destroyed\n", versionArg(pos[0]), l.Name())
	}
	return 0
}

// versionArg returns the short id of a VERSION argument (id or full name).
func versionArg(v string) string {
	if id := kms.VersionID(v); id != "" {
		return id
	}
	return v
}

// checkNoDEKs refuses to destroy a KEK version that a keystore's data keys
// still need, when a config file names the keystore.
func checkNoDEKs(ctx context.Context, fs *flag.FlagSet, load func() (*config.Config, error), version string, stderr io.Writer) error {
	explicit := fs.Lookup("config").Value.String() != "" || os.Getenv(config.EnvPrefix+"CONFIG") != ""
	if !explicit {
		fmt.Fprintln(stderr, "note: not checked against a keystore; give --config to make sure no data key is still wrapped under this version")
		return nil
	}
	cfg, err := load()
	if err != nil {
		return fmt.Errorf("invalid configuration:\n%s", indent(err))
	}
	if cfg.Keystore.DSN == "" {
		fmt.Fprintln(stderr, "note: keystore.dsn is not set; not checked against a keystore")
		return nil
	}
	pool, err := keystorePool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	st, err := keys.Open(ctx, pool, nil, keys.Options{Schema: cfg.Keystore.Schema, ReadOnly: true})
	if errors.Is(err, keys.ErrNoKeystore) {
		return nil
	}
	if err != nil {
		return err
	}
	n, err := st.KEKVersionRefs(ctx, version)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("refusing to destroy %s: %d data key(s) in the keystore are still wrapped under it "+
			"(run pgcrypt-proxy rotate to rewrap them, then disable it and wait out destroy_grace)", version, n)
	}
	return nil
}

type kekVersionJSON struct {
	Version   string     `json:"version"` // short id, "1"
	Name      string     `json:"name"`    // full version name
	State     string     `json:"state"`
	Primary   bool       `json:"primary"`
	Created   time.Time  `json:"created"`
	Destroyed *time.Time `json:"destroyed,omitempty"`
}

func kekVersionsJSON(key string, vs []kms.Version) []kekVersionJSON {
	out := make([]kekVersionJSON, 0, len(vs))
	for _, v := range vs {
		j := kekVersionJSON{Version: v.ID(), Name: v.Name, State: v.State.String(), Primary: v.Primary, Created: v.CreateTime.UTC()}
		if !v.DestroyTime.IsZero() {
			d := v.DestroyTime.UTC()
			j.Destroyed = &d
		}
		out = append(out, j)
	}
	return out
}

func printKEKVersions(w io.Writer, vs []kms.Version) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tPRIMARY\tCREATED\tDESTROYED")
	for _, v := range vs {
		primary, destroyed := "", ""
		if v.Primary {
			primary = "yes"
		}
		if !v.DestroyTime.IsZero() {
			destroyed = v.DestroyTime.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.ID(), v.State, primary, v.CreateTime.UTC().Format(time.RFC3339), destroyed)
	}
	tw.Flush()
}

func writeJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "pgcrypt-proxy: %v\n", err)
		return 1
	}
	return 0
}

// openKEKs opens every kms backend of the configuration, by config name:
// local keyrings with their master key (master_key_file or
// $PGCRYPT_MASTER_KEY), Cloud KMS keys with their endpoint. Every failure
// is reported at once; on error nothing stays open. The caller closes the
// KEKs with closeKEKs.
func openKEKs(ctx context.Context, cfg *config.Config) (map[string]kms.KEK, error) {
	names := make([]string, 0, len(cfg.KMS))
	for n := range cfg.KMS {
		names = append(names, n)
	}
	sort.Strings(names)
	keks := make(map[string]kms.KEK, len(names))
	var errs []error
	for _, n := range names {
		k := cfg.KMS[n]
		if k == nil {
			errs = append(errs, fmt.Errorf("kms.%s: is empty", n))
			continue
		}
		var kek kms.KEK
		var err error
		switch k.Type {
		case "local":
			var mk kms.MasterKey
			if mk, err = kms.LoadMasterKey(k.MasterKeyFile); err == nil {
				kek, err = kms.OpenLocal(ctx, kms.LocalOptions{Path: k.Keyring, MasterKey: mk, Dev: k.Dev})
			}
		case "gcp":
			kek, err = kms.NewGCP(ctx, kms.GCPOptions{Key: k.Key, Endpoint: k.Endpoint})
		default:
			err = fmt.Errorf("type %q is not one of local, gcp", k.Type)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("kms.%s: %w", n, err))
			continue
		}
		keks[n] = kek
	}
	if len(errs) > 0 {
		closeKEKs(keks)
		return nil, errors.Join(errs...)
	}
	return keks, nil
}

// closeKEKs closes what openKEKs opened.
func closeKEKs(keks map[string]kms.KEK) {
	for _, k := range keks {
		_ = k.Close()
	}
}
