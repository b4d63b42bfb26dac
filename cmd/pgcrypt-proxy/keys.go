package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/keys"
)

const keysUsage = `Usage: pgcrypt-proxy keys list [--json] [--config FILE] [--SETTING VALUE ...]

Lists the data encryption keys (DEKs) of the keystore (keystore.dsn,
keystore.schema): for each, its policy key name, DEK version, id, state
(active: new writes; retired: decrypt only; destroyed: shredded), the KEK
version that wraps it, and whether that is the KEK's primary (when the
configured kms backends can be reached; "no" means the next rotation pass
rewraps it). No key material is read or shown.

  --json   print a JSON array of {"key", "dek_version", "kek_version", "state",
           "id", "kek_name", "kek_primary", "created_at", "updated_at"}
`

// loadForKeystore loads the configuration of a command that works on the
// keystore. ok false: it said why on stderr, and the command exits 2.
func loadForKeystore(name string, load func() (*config.Config, error), stderr io.Writer) (cfg *config.Config, ok bool) {
	cfg, err := load()
	if err != nil {
		fmt.Fprintf(stderr, "pgcrypt-proxy: invalid configuration:\n%v\n", indent(err))
		return nil, false
	}
	if cfg.Keystore.DSN == "" {
		fmt.Fprintf(stderr, "pgcrypt-proxy %s: keystore.dsn is not set (config file, --keystore.dsn or PGCRYPT_KEYSTORE_DSN)\n", name)
		return nil, false
	}
	return cfg, true
}

// failer returns the reporter of a command's runtime error: it prints
// "pgcrypt-proxy NAME: error" and gives exit status 1.
func failer(name string, stderr io.Writer) func(error) int {
	return func(err error) int {
		fmt.Fprintf(stderr, "pgcrypt-proxy %s: %v\n", name, err)
		return 1
	}
}

func keysCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return 2
	}
	switch args[0] {
	case "list":
		return keysList(args[1:], stdout, stderr)
	case "rotate-dek":
		return keysRotateDEK(args[1:], stdout, stderr)
	case "destroy-dek":
		return keysDestroyDEK(args[1:], stdout, stderr)
	case "help", "--help", "-h":
		fmt.Fprint(stdout, keysUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "pgcrypt-proxy keys: unknown command %q\n\n%s", args[0], keysUsage)
		return 2
	}
}

// dekJSON is one line of `keys list --json`.
type dekJSON struct {
	Key        string    `json:"key"`
	DEKVersion int       `json:"dek_version"`
	KEKVersion string    `json:"kek_version"`
	State      string    `json:"state"`
	ID         uint32    `json:"id"`
	KEKName    string    `json:"kek_name"`
	KEKPrimary *bool     `json:"kek_primary,omitempty"` // absent when the KEK could not be asked
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

func keysList(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keys list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	load := configFlags(fs)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "pgcrypt-proxy keys list: unexpected argument %q\n\n%s", pos[0], keysUsage)
		return 2
	}
	cfg, ok := loadForKeystore("keys list", load, stderr)
	if !ok {
		return 2
	}
	fail := failer("keys list", stderr)
	ctx, cancel := commandContext()
	defer cancel()

	pool, err := keystorePool(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	// The KEKs only say which version is primary; the list needs no KMS.
	keks, err := openKEKs(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "warning: cannot open the kms backends; kek_primary is not shown:\n%s\n", indent(err))
	}
	defer closeKEKs(keks)
	primary := map[string]string{} // kek_name → primary version
	for name, k := range keks {
		p, err := k.Primary(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "warning: kms.%s: %v\n", name, err)
			continue
		}
		primary[k.Name()] = p
	}

	var list []keys.DEKInfo
	st, err := keys.Open(ctx, pool, nil, keys.Options{Schema: cfg.Keystore.Schema, ReadOnly: true})
	switch {
	case errors.Is(err, keys.ErrNoKeystore):
		fmt.Fprintf(stderr, "note: %v\n", err)
	case err != nil:
		return fail(err)
	default:
		if list, err = st.List(ctx); err != nil {
			return fail(err)
		}
	}

	out := make([]dekJSON, 0, len(list))
	for _, d := range list {
		j := dekJSON{Key: d.Key, DEKVersion: d.DEKVersion, KEKVersion: d.KEKVersion, State: d.State, ID: d.ID,
			KEKName: d.KEKName, CreatedAt: d.CreatedAt.UTC(), UpdatedAt: d.UpdatedAt.UTC()}
		if p, ok := primary[d.KEKName]; ok && d.State != keys.StateDestroyed {
			isPrimary := p == d.KEKVersion
			j.KEKPrimary = &isPrimary
		}
		out = append(out, j)
	}
	if *asJSON {
		return writeJSON(stdout, stderr, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tDEK_VERSION\tID\tSTATE\tKEK_VERSION\tKEK_PRIMARY\tCREATED")
	for _, d := range out {
		p := "?"
		if d.KEKPrimary != nil {
			p = map[bool]string{true: "yes", false: "no (rewrap pending)"}[*d.KEKPrimary]
		} else if d.State == keys.StateDestroyed {
			p = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", d.Key, d.DEKVersion, strconv.FormatUint(uint64(d.ID), 10), d.State,
			d.KEKVersion, p, d.CreatedAt.Format(time.RFC3339))
	}
	tw.Flush()
	return 0
}
