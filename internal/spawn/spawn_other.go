//go:build unix && !linux

package spawn

import "syscall"

// setParentDeathSignal is a no-op where the kernel has no parent-death
// signal: a process killed before its cleanups run leaves its children.
func setParentDeathSignal(*syscall.SysProcAttr, syscall.Signal) {}
