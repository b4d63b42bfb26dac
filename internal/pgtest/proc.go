//go:build unix

package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/internal/spawn"
)

// startCmd starts a server process so that it dies with the test binary
// (SIGQUIT, PostgreSQL's immediate shutdown, even when the binary is
// killed with SIGKILL; see package spawn).
func startCmd(cmd *exec.Cmd) error { return spawn.Start(cmd, syscall.SIGQUIT) }

// osUser is the account that owns the cluster files and runs initdb, pg_ctl
// and postgres.
type osUser struct {
	name     string
	uid, gid int
	cred     *syscall.Credential // nil: run as ourselves
}

// serverUser picks the account the server runs as. PostgreSQL refuses to
// run as root, so under root (CI containers) that is the "postgres" account
// when it exists, else a system account "pgtest" created on first use.
func serverUser() (*osUser, error) {
	if os.Geteuid() != 0 {
		return &osUser{name: "", uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	u, err := lookupOrCreateUser()
	if err != nil {
		return nil, err
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pgtest: account %s: %w", u.Username, err)
	}
	return &osUser{
		name: u.Username,
		uid:  uid,
		gid:  gid,
		// Groups empty (not nil with NoSetGroups) drops root's supplementary groups.
		cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
	}, nil
}

func lookupOrCreateUser() (*user.User, error) {
	if u, err := user.Lookup("postgres"); err == nil {
		return u, nil
	}
	if u, err := user.Lookup("pgtest"); err == nil {
		return u, nil
	}
	useradd, err := exec.LookPath("useradd")
	if err != nil {
		return nil, errors.New("pgtest: running as root, PostgreSQL refuses root, and there is neither " +
			"a postgres nor a pgtest account nor useradd to create one; run the tests as another user or create one")
	}
	// Test binaries of several packages may race here: useradd then fails
	// ("already exists", or /etc/passwd locked), so look again for a while.
	out, addErr := exec.Command(useradd, "--system", "--user-group", "--no-create-home",
		"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "pgtest").CombinedOutput()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if u, err := user.Lookup("pgtest"); err == nil {
			return u, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("pgtest: create system user pgtest: %v: %s", addErr, out)
		}
		time.Sleep(100 * time.Millisecond)
		if addErr != nil { // maybe lock contention: try again
			out, addErr = exec.Command(useradd, "--system", "--user-group", "--no-create-home",
				"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "pgtest").CombinedOutput()
		}
	}
}

// command returns cmd for a server tool, run as u in its own process group,
// in dir, with an environment free of libpq variables.
func (u *osUser) command(dir, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: u.cred}
	return cmd
}

// cleanEnv is our environment minus PG* (PGDATA, PGPORT, PGHOST, … would
// redirect the tools) with a predictable locale and HOME.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "PG"), strings.HasPrefix(kv, "LC_"), strings.HasPrefix(kv, "LANG="),
			strings.HasPrefix(kv, "LANGUAGE="), strings.HasPrefix(kv, "HOME="):
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C", "HOME=/nonexistent")
}

// chownTree gives the tree at root to u (no-op when u is ourselves).
func (u *osUser) chownTree(root string) error {
	if u.cred == nil {
		return nil
	}
	return filepath.WalkDir(root, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, u.uid, u.gid)
	})
}

// processAlive reports whether a process with this pid exists.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killGroup sends sig to the process group led by pid.
func killGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}
