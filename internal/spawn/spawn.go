//go:build unix

// Package spawn starts child processes that die with their parent. Tests
// (internal/pgtest) and the bench start PostgreSQL, PgBouncer and the
// proxy; a test binary or bench killed with SIGKILL must leave none of them
// behind.
//
// On Linux the kernel sends a child its parent-death signal when the
// thread that forked it exits, not the process. So every child is started
// from one goroutine locked to its OS thread for the life of the process:
// the signal then fires exactly when the process dies. Elsewhere there is
// no parent-death signal and Start only serialises the forks.
package spawn

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

var spawner struct {
	once sync.Once
	reqs chan req
}

type req struct {
	cmd  *exec.Cmd
	done chan error
}

// Start runs cmd.Start on the spawner thread, with deathSig as the child's
// parent-death signal where the platform has one.
func Start(cmd *exec.Cmd, deathSig syscall.Signal) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	setParentDeathSignal(cmd.SysProcAttr, deathSig)
	spawner.once.Do(func() {
		spawner.reqs = make(chan req)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread must outlive every child
			for r := range spawner.reqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawner.reqs <- req{cmd: cmd, done: done}
	return <-done
}
