package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// BinDirEnv names the environment variable that, when set, is the only place
// the server binaries are looked for.
const BinDirEnv = "PGTEST_BINDIR"

// serverTools must all sit in one directory for it to be a server bindir.
var serverTools = []string{"initdb", "pg_ctl", "postgres"}

// installHint ends every "binaries not found" error: CI must fail loudly with
// the fix, never skip.
const installHint = "install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`; " +
	"Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql@15`) " +
	"or set " + BinDirEnv + " to the directory holding initdb, pg_ctl and postgres"

var binDirCache struct {
	mu  sync.Mutex
	dir string // "" until found; failures are not cached
}

// serverBinDir returns the directory of initdb, pg_ctl and postgres,
// searching once per process (see findBinDir).
func serverBinDir() (string, error) {
	binDirCache.mu.Lock()
	defer binDirCache.mu.Unlock()
	if binDirCache.dir != "" {
		return binDirCache.dir, nil
	}
	dir, err := findBinDir(os.Getenv(BinDirEnv), "/usr/lib/postgresql")
	if err != nil {
		return "", err
	}
	binDirCache.dir = dir
	return dir, nil
}

// findBinDir looks for the server binaries in, in order:
//  1. override, when non-empty (and nowhere else);
//  2. the directory of initdb found on PATH, symlinks resolved (Debian puts
//     only some tools on PATH, so the real directory is what counts);
//  3. `pg_config --bindir`;
//  4. debianRoot/<version>/bin, highest version first.
func findBinDir(override, debianRoot string) (string, error) {
	if override != "" {
		if err := isServerBinDir(override); err != nil {
			return "", fmt.Errorf("pgtest: %s=%s: %w; %s", BinDirEnv, override, err, installHint)
		}
		return override, nil
	}
	var tried []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if isServerBinDir(dir) == nil {
			return dir, nil
		}
		tried = append(tried, dir)
	}
	if p, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(p, "--bindir").Output(); err == nil {
			dir := strings.TrimSpace(string(out))
			if isServerBinDir(dir) == nil {
				return dir, nil
			}
			tried = append(tried, dir)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(debianRoot, "*", "bin"))
	// Highest major version first: "9.6" < "15" < "17".
	slices.SortFunc(dirs, func(a, b string) int {
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	for _, dir := range dirs {
		if isServerBinDir(dir) == nil {
			return dir, nil
		}
		tried = append(tried, dir)
	}
	where := "nothing found"
	if len(tried) > 0 {
		where = "incomplete: " + strings.Join(tried, ", ")
	}
	return "", fmt.Errorf("pgtest: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found "+
		"on PATH, via pg_config --bindir or under %s/*/bin (%s); %s", debianRoot, where, installHint)
}

// isServerBinDir reports why dir is not a server bindir, or nil when it is.
func isServerBinDir(dir string) error {
	for _, tool := range serverTools {
		if err := isExecutable(filepath.Join(dir, tool)); err != nil {
			return err
		}
	}
	return nil
}

func isExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

// compareVersions orders dotted numeric versions ("9.6" < "15"); a part that
// is not a number sorts before any number.
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		ai, bi := -1, -1
		if i < len(as) {
			if n, err := strconv.Atoi(as[i]); err == nil {
				ai = n
			}
		}
		if i < len(bs) {
			if n, err := strconv.Atoi(bs[i]); err == nil {
				bi = n
			}
		}
		if ai != bi {
			return ai - bi
		}
	}
	return strings.Compare(a, b)
}

// FindTool returns the path of a PostgreSQL client or server program such as
// psql or pgbench: PATH first (so a newer client wins, and Debian's wrappers
// work), then the server bindir.
func FindTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	dir, err := serverBinDir()
	if err != nil {
		return "", fmt.Errorf("pgtest: %s not found on PATH: %w", name, err)
	}
	p := filepath.Join(dir, name)
	if err := isExecutable(p); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("pgtest: %s found neither on PATH nor in %s; %s", name, dir, installHint)
		}
		return "", fmt.Errorf("pgtest: %w", err)
	}
	return p, nil
}
