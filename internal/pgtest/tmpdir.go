//go:build unix

package pgtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// ownerFile, in each cluster's temp dir, names the process that made it, so
// a later run can remove what a killed test binary left behind.
const ownerFile = "pgtest.owner"

var sweepOnce sync.Once

// tempBase returns the directory to create cluster dirs in: os.TempDir(),
// or /tmp when the server account could not reach the former.
func tempBase(u *osUser) (string, error) {
	base, err := filepath.Abs(os.TempDir())
	if err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	if u.cred == nil || traversable(base, u) {
		return base, nil
	}
	if traversable("/tmp", u) {
		return "/tmp", nil
	}
	return "", fmt.Errorf("pgtest: neither %s nor /tmp can be traversed by the %s account", base, u.name)
}

// traversable reports whether u may search every directory from / to dir.
func traversable(dir string, u *osUser) bool {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || !fi.IsDir() {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return false
		}
		perm := fi.Mode().Perm()
		var x os.FileMode = 0o001
		switch {
		case int(st.Uid) == u.uid:
			x = 0o100
		case int(st.Gid) == u.gid:
			x = 0o010
		}
		if perm&x == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

func writeOwner(root string) error {
	host, _ := os.Hostname()
	data := fmt.Sprintf("pid=%d host=%s\n", os.Getpid(), host)
	return writeFile(filepath.Join(root, ownerFile), []byte(data), 0o644)
}

// sweepStale removes cluster dirs under base whose creator is gone and whose
// server is not running (a test binary killed before its cleanups, on a
// platform without a parent-death signal, or mid-initdb). Dirs made on
// another host (a /tmp shared between containers) or without an owner file
// (being created right now) are left alone, as are running servers.
func sweepStale(base string, logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(base, "pgtest-*"))
	host, _ := os.Hostname()
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		var pid int
		var owner string
		if _, err := fmt.Sscanf(string(b), "pid=%d host=%s", &pid, &owner); err != nil || owner != host {
			continue
		}
		if processAlive(pid) || postmasterAlive(filepath.Join(dir, "data")) {
			continue
		}
		if err := os.RemoveAll(dir); err == nil {
			logf("pgtest: removed %s, left behind by process %d", dir, pid)
		}
	}
}

// postmasterAlive reports whether postmaster.pid in dataDir names a live
// process.
func postmasterAlive(dataDir string) bool {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	return err == nil && processAlive(pid)
}
