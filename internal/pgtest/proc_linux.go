package pgtest

import "syscall"

// setParentDeathSignal makes the kernel send SIGQUIT (PostgreSQL's
// "immediate shutdown") to the child when the test binary dies, even by
// SIGKILL, so a crashed test never leaves a postmaster behind. See spawner.
func setParentDeathSignal(attr *syscall.SysProcAttr) {
	attr.Pdeathsig = syscall.SIGQUIT
}
