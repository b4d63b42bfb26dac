package main

import "slices"

// workload is one pgbench configuration of the matrix. Every workload runs
// at every client count of -clients against every target.
//
// To add a workload, append to workloads(): a custom transaction goes in
// Scripts (each becomes "-f FILE@WEIGHT"), anything else pgbench accepts in
// Args; Setup prepares the database once, Before resets it before each run.
type workload struct {
	// Name identifies the workload in the table, the JSON and -only, e.g.
	// "select-only/prepared".
	Name string
	// Args are pgbench arguments for this workload. The runner adds the
	// connection, -c, -j, -T and --no-vacuum itself.
	Args []string
	// Scripts are custom pgbench scripts, written to a temp dir and passed
	// as -f FILE@WEIGHT.
	Scripts []script
	// Setup statements run once, directly against PostgreSQL as the
	// benchmark user, after pgbench -i and before any run (e.g. CREATE TABLE
	// for a COPY workload). One statement per element: VACUUM cannot run in
	// the implicit transaction of a multi-statement query.
	Setup []string
	// Before statements run directly against PostgreSQL before every run of
	// the workload on any target, outside the measured window, so that each
	// target starts from the same state (pgbench's own vacuum step would
	// otherwise go through the target and count towards its CPU).
	Before []string
	// Targets restricts the workload to these targets (nil: every
	// target). The enc-* workloads run only through the proxy: their
	// table holds ciphertext that only the proxy can read and write.
	Targets []string
	// Twin, on an enc-* workload of issue 4, names the plain-* workload
	// that runs the same statements on the unencrypted twin table. The two
	// are selected together (-only matching either selects both), run
	// interleaved cell by cell, and are compared in the encryption table.
	Twin string
}

// runsOn reports whether w runs against the target named name.
func (w workload) runsOn(name string) bool {
	return w.Targets == nil || slices.Contains(w.Targets, name)
}

// script is a custom pgbench script (pgbench -f).
type script struct {
	Name   string // file name, e.g. "copy.sql"
	Body   string // pgbench script text
	Weight int    // relative weight; 0 means 1
}

// tpcbBefore is what pgbench does itself before a built-in TPC-B run
// unless -n is given: vacuum the small hot tables, empty the history.
var tpcbBefore = []string{"VACUUM pgbench_branches", "VACUUM pgbench_tellers", "TRUNCATE pgbench_history"}

// selectBefore: select-only runs change nothing, but vacuuming the hot
// tables between TPC-B and select runs keeps the heap state comparable.
var selectBefore = []string{"VACUUM pgbench_branches", "VACUUM pgbench_tellers"}

// workloads returns the benchmark matrix of issue 2 ("Speed"): pgbench
// select-only and TPC-B-like, each with the extended protocol and prepared
// statements and with the simple protocol.
func workloads() []workload {
	return []workload{
		{Name: "select-only/prepared", Args: []string{"-S", "-M", "prepared"}, Before: selectBefore},
		{Name: "select-only/simple", Args: []string{"-S", "-M", "simple"}, Before: selectBefore},
		{Name: "tpcb-like/prepared", Args: []string{"-M", "prepared"}, Before: tpcbBefore},
		{Name: "tpcb-like/simple", Args: []string{"-M", "simple"}, Before: tpcbBefore},
	}
}

// allWorkloads is the issue-2 matrix followed by the encryption workloads
// of issue 4 (see encrypt.go).
func allWorkloads() []workload {
	return append(workloads(), encWorkloads()...)
}

// The target of issue 2 is measured on this workload and client count.
const (
	goalWorkload = "select-only/prepared"
	goalClients  = 16
	goalCPURatio = 1.3 // proxy CPU/txn at most this times PgBouncer's
)
