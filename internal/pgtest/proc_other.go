//go:build unix && !linux

package pgtest

import "syscall"

// setParentDeathSignal is a no-op where the kernel has no parent-death
// signal: a test binary killed before its cleanups run leaves the server
// running (see doc.go).
func setParentDeathSignal(*syscall.SysProcAttr) {}
