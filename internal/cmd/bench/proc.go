package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/internal/spawn"
)

// startCmd starts cmd in its own process group (so a Ctrl-C on the terminal
// reaches only the bench, which then stops its children in order), killed
// by the kernel if the bench dies (see package spawn).
func startCmd(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	return spawn.Start(cmd, syscall.SIGKILL)
}

// daemon is a long-running child (pgbouncer, the proxy).
type daemon struct {
	name    string
	cmd     *exec.Cmd
	logFile string
	exited  chan struct{} // closed when cmd.Wait returned
	waitErr error         // valid once exited is closed
	stopSig syscall.Signal
}

// startDaemon starts cmd with stdout and stderr written to logFile (emptied
// first).
func startDaemon(name string, cmd *exec.Cmd, logFile string, stopSig syscall.Signal) (*daemon, error) {
	f, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy of the descriptor
	cmd.Stdout, cmd.Stderr = f, f
	if err := startCmd(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, logFile: logFile, exited: make(chan struct{}), stopSig: stopSig}
	go func() {
		d.waitErr = cmd.Wait()
		close(d.exited)
	}()
	return d, nil
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// alive reports whether the daemon is still running.
func (d *daemon) alive() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// exitError describes how the daemon ended, with the tail of its log.
func (d *daemon) exitError() error {
	return fmt.Errorf("%s (pid %d) exited: %v; last log lines (%s):\n%s",
		d.name, d.pid(), d.waitErr, d.logFile, tail(d.logFile, 15))
}

// stop sends stopSig to the daemon's process group, waits up to grace, then
// kills the group. Stopping an exited daemon is a no-op.
func (d *daemon) stop(grace time.Duration) error {
	if !d.alive() {
		return nil
	}
	pgid := d.pid()
	_ = syscall.Kill(-pgid, d.stopSig)
	select {
	case <-d.exited:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-d.exited:
		return fmt.Errorf("%s (pid %d) ignored %v for %v and was killed", d.name, pgid, d.stopSig, grace)
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (pid %d) survived SIGKILL", d.name, pgid)
	}
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// cpuTicks returns the user+system CPU time of process pid (all threads,
// including exited ones) in clock ticks, from /proc/<pid>/stat.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatTicks(string(b))
}

// parseStatTicks extracts utime+stime (fields 14 and 15) from the text of
// /proc/<pid>/stat. The command name (field 2) is in parentheses and may
// itself contain spaces and parentheses, so fields are counted from the
// last ')'.
func parseStatTicks(stat string) (int64, error) {
	return parseStatFields(stat, 14, 15)
}

// parseStatFields returns the sum of the given numeric fields (numbered
// from 1 as in proc(5), each at least 3) of a /proc/<pid>/stat text.
func parseStatFields(stat string, fields ...int) (int64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat: no ')'")
	}
	f := strings.Fields(stat[i+1:])
	var sum int64
	for _, k := range fields {
		// f[0] is field 3 (state), so field k is f[k-3].
		if k < 3 || k-3 >= len(f) {
			return 0, errors.New("malformed /proc stat: too few fields")
		}
		n, err := strconv.ParseInt(f[k-3], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("malformed /proc stat: %w", err)
		}
		sum += n
	}
	return sum, nil
}

// rssKB returns the resident set size of process pid in KiB (VmRSS).
func rssKB(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// clockTicks returns the kernel's USER_HZ (getconf CLK_TCK), 100 when it
// cannot be found.
func clockTicks() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || n <= 0 {
		return 100
	}
	return n
}

// systemCPU returns, from the first line of /proc/stat, the jiffies the
// whole machine spent running processes (user, nice, system: what process
// utime and stime add up to), in interrupts (irq, softirq: loopback TCP
// lands here), stolen by the hypervisor, and in total.
func systemCPU() (procs, irq, steal, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, 0, 0
	}
	// user nice system idle iowait irq softirq steal guest guest_nice
	for i, s := range f[1:] {
		n, _ := strconv.ParseInt(s, 10, 64)
		switch i {
		case 0, 1, 2:
			procs += n
		case 5, 6:
			irq += n
		case 7:
			steal += n
		case 8, 9: // guest time is already in user and nice
			continue
		}
		total += n
	}
	return procs, irq, steal, total
}

// postmasterPID reads the postmaster's pid from dataDir/postmaster.pid; 0
// when it cannot.
func postmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

// treeTicks returns the CPU time, in clock ticks, of process pid, of its
// live children, and of its children that exited and were reaped (cutime,
// cstime): for the postmaster, all of PostgreSQL, and a sum that only
// grows. 0 when pid is 0 or gone.
func treeTicks(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	self, err := parseStatTicks(string(b))
	if err != nil {
		return 0
	}
	reaped, _ := parseStatFields(string(b), 16, 17)
	total := self + reaped
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return total
	}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		if ppid, err := parseStatFields(string(b), 4); err != nil || ppid != int64(pid) {
			continue
		}
		if t, err := parseStatTicks(string(b)); err == nil {
			total += t
		}
	}
	return total
}

// tempPrefix starts the name of every temp dir of the bench.
const tempPrefix = "pgcrypt-bench-"

// ownerFile, in each temp dir, holds the pid of the bench that made it, so
// that a later bench removes what a killed one left behind.
const ownerFile = "bench.owner"

// makeTempDir creates a temp dir under base ("" for os.TempDir) for kind
// and records us as its owner.
func makeTempDir(base, kind string) (string, error) {
	dir, err := os.MkdirTemp(base, tempPrefix+kind+"-")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return "", errors.Join(err, os.RemoveAll(dir))
	}
	return dir, nil
}

// sweepStale removes temp dirs of benches that no longer run (killed with
// SIGKILL: every child died with them, but their files stayed).
func sweepStale(logf func(string, ...any)) {
	seen := map[string]bool{}
	for _, base := range []string{os.TempDir(), "/tmp"} {
		dirs, _ := filepath.Glob(filepath.Join(base, tempPrefix+"*"))
		for _, dir := range dirs {
			if seen[dir] {
				continue
			}
			seen[dir] = true
			b, err := os.ReadFile(filepath.Join(dir, ownerFile))
			if err != nil {
				continue // not ours, or being created
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid <= 0 || processAlive(pid) {
				continue
			}
			if err := os.RemoveAll(dir); err == nil {
				logf("bench: removed %s, left by a bench that died (pid %d)", dir, pid)
			}
		}
	}
}

// processAlive reports whether a process with this pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
