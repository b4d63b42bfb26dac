// Package gcfloor keeps Go's garbage collector from running far more often
// than a small live heap warrants.
//
// With the default GOGC=100 the collector starts a cycle each time the heap
// doubles. The proxy's live heap is small (a few MiB: caches and per-session
// buffers) while it allocates steadily per statement, so under load it
// collected every 0.2 s, and each cycle's stop-the-world phases stall every
// session at once (measured: 69 cycles in 30 s of pgbench through the proxy,
// about 2 µs of CPU per statement). Run raises GOGC while the live heap is
// small, so that the heap goal stays at least Floor bytes, and lowers it back
// to 100 as the live heap grows: the collector then runs as if the live heap
// were never smaller than Floor/2, and never more often than with GOGC=100.
//
// An operator's own setting wins: with GOGC in the environment Run does
// nothing, and GOMEMLIMIT (a hard cap the collector honours whatever the
// GOGC value) keeps working as documented by the runtime.
package gcfloor

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

const (
	// Floor is the smallest heap goal Run aims for: the most memory the
	// tuning can add over GOGC=100.
	Floor = 32 << 20
	// MaxPercent bounds GOGC, so that a live heap that grows quickly
	// between two adjustments cannot get a goal far above it.
	MaxPercent = 800
	// Interval is how often Run re-reads the live heap.
	Interval = 500 * time.Millisecond
)

// Percent is the GOGC value Run sets for a live heap of live bytes.
func Percent(live uint64) int {
	if live == 0 {
		return MaxPercent
	}
	// The goal is live * (1 + p/100); p is the smallest for a goal >= Floor.
	need := (Floor - min(live, Floor)) * 100
	p := (need + live - 1) / live
	return int(min(max(p, 100), MaxPercent))
}

// Run adjusts GOGC every Interval until ctx is done, then restores GOGC=100
// (the value it found, since it only runs without GOGC set). It returns at once, doing nothing, when GOGC is set in the
// environment.
func Run(ctx context.Context) {
	if _, set := os.LookupEnv("GOGC"); set {
		return
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	prev := -1
	adjust := func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		if p := Percent(sample[0].Value.Uint64()); p != prev {
			debug.SetGCPercent(p)
			prev = p
		}
	}
	adjust()
	t := time.NewTicker(Interval)
	defer t.Stop()
	defer func() { debug.SetGCPercent(100) }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			adjust()
		}
	}
}
