package main

import "syscall"

// setParentDeathSignal makes the kernel kill the child when the thread that
// started it exits (see spawner).
func setParentDeathSignal(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGKILL }
