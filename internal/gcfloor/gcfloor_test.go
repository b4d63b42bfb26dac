package gcfloor

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, MaxPercent},
		{1 << 20, MaxPercent}, // 1 MiB: would need 3100
		{4 << 20, 700},        // goal 4 MiB * 8 = 32 MiB
		{5 << 20, 540},        // 5 MiB * 6.4 = 32 MiB
		{8 << 20, 300},        // 8 MiB * 4 = 32 MiB
		{16 << 20, 100},       // GOGC=100 already reaches the floor
		{Floor, 100},          //
		{1 << 30, 100},        // never below the default
		{Floor/3 + 1, 200},    // rounds up: the goal is never under Floor
	} {
		got := Percent(c.live)
		if got != c.want {
			t.Errorf("Percent(%d) = %d, want %d", c.live, got, c.want)
		}
		if goal := c.live + c.live*uint64(got)/100; c.live > 0 && got < MaxPercent && goal < Floor {
			t.Errorf("Percent(%d) = %d: goal %d below the floor", c.live, got, goal)
		}
	}
}

func TestRunRaisesAndRestores(t *testing.T) {
	t.Setenv("GOGC", "") // registers the restore at the end of the test
	os.Unsetenv("GOGC")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { Run(ctx); close(done) }()
	// The test binary's live heap is far below Floor.
	deadline := time.Now().Add(5 * time.Second)
	for gogc() <= 100 {
		if time.Now().After(deadline) {
			t.Fatal("Run did not raise GOGC above 100 for a small live heap")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if p := gogc(); p != 100 {
		t.Errorf("after Run returned, GOGC = %d, want 100 restored", p)
	}
}

func TestRunLeavesOperatorsGOGC(t *testing.T) {
	t.Setenv("GOGC", "150")
	old := debug.SetGCPercent(150)
	defer debug.SetGCPercent(old)
	ctx, cancel := context.WithTimeout(t.Context(), 2*Interval)
	defer cancel()
	Run(ctx) // returns at once
	if ctx.Err() != nil {
		t.Fatal("Run waited although GOGC is set")
	}
	if p := gogc(); p != 150 {
		t.Errorf("GOGC = %d, want the operator's 150 untouched", p)
	}
}

// gogc reads the collector's current GOGC without changing it.
func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}
