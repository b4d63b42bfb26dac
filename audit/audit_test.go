package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/metrics"
)

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseLines(t, b)
}

func parseLines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestWritesJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	m := metrics.New(metrics.Options{})
	l, err := Open(path, Options{Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("X", 3600))
	l.Record(Event{Time: at, ConnID: 7, User: "app", Database: "shop", Client: "127.0.0.1:5000",
		Kind: KindRead, Statement: "select", Columns: []string{"public.users.ssn"}, KeyIDs: []uint32{3, 4}, Rows: 12})
	l.Record(Event{ConnID: 8, User: "app", Database: "shop", Kind: KindRefused, Statement: "update",
		Columns: []string{"public.users.email"}, SQLSTATE: "0A000", Reason: metrics.RefusalStatement.String()})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	lines := readLines(t, path)
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2", len(lines))
	}
	want := map[string]any{
		"log": "audit", "time": "2026-01-02T02:04:05.000000006Z", "conn_id": 7.0, "user": "app", "database": "shop",
		"client": "127.0.0.1:5000", "kind": "read", "statement": "select",
		"columns": []any{"public.users.ssn"}, "key_ids": []any{3.0, 4.0}, "rows": 12.0,
	}
	if !reflect.DeepEqual(lines[0], want) {
		t.Errorf("line 1 = %v\nwant     %v", lines[0], want)
	}
	if lines[1]["kind"] != "refused" || lines[1]["sqlstate"] != "0A000" || lines[1]["reason"] != "statement" {
		t.Errorf("line 2 = %v", lines[1])
	}
	if ts, _ := time.Parse(time.RFC3339Nano, lines[1]["time"].(string)); time.Since(ts) > time.Minute {
		t.Errorf("zero Time not set to now: %v", lines[1]["time"])
	}

	// Appends, never truncates.
	l, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l.Record(Event{ConnID: 9, Kind: KindWrite})
	l.Close()
	if n := len(readLines(t, path)); n != 3 {
		t.Errorf("after reopening: %d lines, want 3", n)
	}
}

// TestNoValueFields pins the record's fields: an audit event must never be
// able to carry a value or SQL text. Adding a field means deciding, here,
// that it cannot.
func TestNoValueFields(t *testing.T) {
	var b bytes.Buffer
	l := New(&b, Options{})
	l.Record(Event{ConnID: 1, User: "u", Database: "d", Client: "c", Kind: KindWrite, Statement: "insert",
		Columns: []string{"s.t.c"}, KeyIDs: []uint32{1}, Rows: 2, SQLSTATE: "22P02", Reason: "invalid_value"})
	l.Close()
	lines := parseLines(t, b.Bytes())
	if len(lines) != 1 {
		t.Fatalf("%d lines", len(lines))
	}
	var keys []string
	for k := range lines[0] {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"client", "columns", "conn_id", "database", "key_ids", "kind", "log", "reason", "rows", "sqlstate", "statement", "time", "user"}
	if !slices.Equal(keys, want) {
		t.Errorf("record fields %v, want exactly %v", keys, want)
	}
	for i := range reflect.TypeFor[Event]().NumField() {
		name := strings.ToLower(reflect.TypeFor[Event]().Field(i).Name)
		if name == "sqlstate" {
			continue // an error code
		}
		for _, banned := range []string{"value", "sql", "query", "param", "text", "message"} {
			if strings.Contains(name, banned) {
				t.Errorf("Event has field %s", reflect.TypeFor[Event]().Field(i).Name)
			}
		}
	}
}

// blockingWriter blocks every Write until released.
type blockingWriter struct {
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func TestDropOnFullNeverBlocks(t *testing.T) {
	m := metrics.New(metrics.Options{})
	w := &blockingWriter{release: make(chan struct{})}
	l := New(w, Options{Buffer: 4, Metrics: m})

	start := time.Now()
	const n = 1000
	for i := range n {
		l.Record(Event{ConnID: uint64(i), Kind: KindRead})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("%d Records with a stuck writer took %s", n, d)
	}
	close(w.release)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	written := len(parseLines(t, w.buf.Bytes()))
	dropped, events := counter(t, m, "pgcrypt_audit_events_dropped_total"), counter(t, m, "pgcrypt_audit_events_total")
	// The writer's stuck batch holds the event it took plus what it drained
	// (at most 1+4); the queue then fills again (4).
	if written < 1 || written > 9 {
		t.Errorf("%d events written with a queue of 4", written)
	}
	if int(dropped)+written != n || int(events) != written {
		t.Errorf("written %d, dropped %v, counted written %v: want written+dropped = %d", written, dropped, events, n)
	}

	l.Record(Event{Kind: KindRead}) // after Close: dropped, no panic
	if got := counter(t, m, "pgcrypt_audit_events_dropped_total"); got != dropped+1 {
		t.Errorf("Record after Close: dropped %v, want %v", got, dropped+1)
	}
}

func counter(t *testing.T, m *metrics.Metrics, name string) float64 {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	l, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l.Record(Event{ConnID: 1, Kind: KindRead})
	// logrotate: rename, then signal.
	waitLines(t, path, 1)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	l.Record(Event{ConnID: 2, Kind: KindRead}) // still the old file (same inode)
	waitLines(t, path+".1", 2)
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Record(Event{ConnID: 3, Kind: KindWrite})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if old := readLines(t, path+".1"); len(old) != 2 || old[1]["conn_id"] != 2.0 {
		t.Errorf("rotated file: %v", old)
	}
	cur := readLines(t, path)
	if len(cur) != 1 || cur[0]["conn_id"] != 3.0 {
		t.Errorf("new file: %v", cur)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("reopened file mode %v", fi.Mode().Perm())
	}

	// A path that cannot be opened keeps the old file and says so.
	l, err = Open(filepath.Join(dir, "sub", "a.log"), Options{})
	if err == nil {
		t.Error("Open in a missing directory succeeded")
		l.Close()
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err = Open(filepath.Join(sub, "a.log"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(sub); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err == nil {
		t.Error("Reopen into a removed directory succeeded")
	}
	l.Close()
	if err := l.Reopen(); err != ErrClosed {
		t.Errorf("Reopen after Close = %v, want ErrClosed", err)
	}
}

func waitLines(t *testing.T, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(path); bytes.Count(b, []byte("\n")) >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s never had %d lines", path, n)
}

func TestNilLog(t *testing.T) {
	var l *Log
	if l.Enabled() {
		t.Error("nil log enabled")
	}
	l.Record(Event{})
	if err := l.Reopen(); err != nil {
		t.Error(err)
	}
	if err := l.Close(); err != nil {
		t.Error(err)
	}
}

func TestConcurrentRecordAndClose(t *testing.T) {
	var b bytes.Buffer
	var mu sync.Mutex
	l := New(writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return b.Write(p) }), Options{Buffer: 64})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				l.Record(Event{ConnID: uint64(g*1000 + i), Kind: KindRead})
			}
		})
	}
	time.Sleep(time.Millisecond)
	l.Close()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	parseLines(t, b.Bytes()) // every line whole
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
