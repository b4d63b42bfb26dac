package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/metrics"
)

// Kind is what an event records.
type Kind string

// Event kinds.
const (
	KindRead    Kind = "read"    // policy columns decrypted for a client
	KindWrite   Kind = "write"   // values encrypted into policy columns
	KindRefused Kind = "refused" // a statement the proxy refused
)

// Event is one audit record: who touched which policy columns, when, with
// which data keys. It has no field for values or SQL text, on purpose; do
// not add one.
type Event struct {
	// Time is when it happened; Record sets it when zero.
	Time time.Time
	// ConnID is the session's conn_id, as in the proxy's log lines.
	ConnID uint64
	// User and Database are the startup message's user and database.
	User     string
	Database string
	// Client is the client's address (host:port).
	Client string
	Kind   Kind
	// Statement is the statement's kind: select, insert, update, delete,
	// merge, copy, … (rewrite.Result.Kind).
	Statement string
	// Columns are the policy columns read or written, "schema.table.column"
	// (policy.Column.Identity).
	Columns []string
	// KeyIDs are the ids of the data keys used (crypto.Key.ID), which name
	// the key version in the keystore.
	KeyIDs []uint32
	// Rows is how many rows carried policy values (read: rows decrypted;
	// write: rows encrypted); 0 when not counted. A count, never content:
	// it is what tells a bulk export from a lookup.
	Rows int64
	// SQLSTATE and Reason say why a statement was refused: the error's code
	// and a short fixed reason (metrics.RefusalReason.String()), never the
	// message text.
	SQLSTATE string
	Reason   string
}

// record is an Event as written: one JSON object per line. "log":"audit"
// tells audit lines apart where they share a stream with the proxy's log
// (file "-").
type record struct {
	Log       string    `json:"log"`
	Time      time.Time `json:"time"`
	ConnID    uint64    `json:"conn_id"`
	User      string    `json:"user"`
	Database  string    `json:"database"`
	Client    string    `json:"client,omitempty"`
	Kind      Kind      `json:"kind"`
	Statement string    `json:"statement,omitempty"`
	Columns   []string  `json:"columns,omitempty"`
	KeyIDs    []uint32  `json:"key_ids,omitempty"`
	Rows      int64     `json:"rows,omitempty"`
	SQLSTATE  string    `json:"sqlstate,omitempty"`
	Reason    string    `json:"reason,omitempty"`
}

// DefaultBuffer is the default length of the event queue.
const DefaultBuffer = 4096

// maxBatch bounds the bytes written in one call.
const maxBatch = 64 << 10

// ErrClosed is returned by Reopen after Close.
var ErrClosed = errors.New("audit: log closed")

// Options configure Open and New. The zero value is valid.
type Options struct {
	// Buffer is how many events may wait for the writer (default
	// DefaultBuffer). Past it, events are dropped and counted.
	Buffer int
	// Metrics counts written and dropped events and write errors.
	Metrics *metrics.Metrics
	// Logger receives write errors and drop reports (rate-limited).
	Logger zerolog.Logger
}

// Log is an audit log. Record never blocks: events go through a bounded queue
// to one writer goroutine, and when the queue is full they are dropped and
// counted (pgcrypt_audit_events_dropped_total), so a slow disk cannot slow
// the proxy. A nil *Log is a disabled log: every method is a no-op.
type Log struct {
	ch      chan Event
	reopenC chan chan error
	quit    chan struct{}
	done    chan struct{} // closed when the writer has exited
	path    string        // "" for a writer given to New (nothing to reopen)
	m       *metrics.Metrics
	log     zerolog.Logger
	dropped atomic.Uint64 // since the last drop report
	err     error         // the writer's final error, valid after done

	mu struct {
		sync.RWMutex // held for reading around each send, so Close knows when none is in flight
		closed       bool
	}

	// Owned by the writer goroutine.
	w        io.Writer
	f        *os.File // nil for stderr and New's writer
	perLine  bool     // one Write per event: lines stay whole on a shared stream
	lastWarn time.Time
}

// Open opens the audit log at path, appending, creating it with mode 0600.
// path "-" writes to stderr, one line per write so the lines stay whole
// beside the proxy's own log. The caller must Close it.
func Open(path string, o Options) (*Log, error) {
	if path == "" {
		return nil, errors.New("audit: empty path")
	}
	if path == "-" {
		l := newLog(os.Stderr, o)
		l.perLine = true
		l.start()
		return l, nil
	}
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	l := newLog(f, o)
	l.f, l.path = f, path
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		l.log.Warn().Str("audit_file", path).Str("mode", fi.Mode().Perm().String()).
			Msg("the audit log is readable by other users; it names users, clients and columns (chmod 600)")
	}
	l.start()
	return l, nil
}

// New writes the audit log to w (tests, custom sinks); Reopen is a no-op.
// Close does not close w.
func New(w io.Writer, o Options) *Log {
	l := newLog(w, o)
	l.start()
	return l
}

func newLog(w io.Writer, o Options) *Log {
	if o.Buffer <= 0 {
		o.Buffer = DefaultBuffer
	}
	return &Log{
		ch:      make(chan Event, o.Buffer),
		reopenC: make(chan chan error),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
		m:       o.Metrics,
		log:     o.Logger,
		w:       w,
	}
}

func openFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return f, nil
}

func (l *Log) start() { go l.run() }

// Enabled reports whether events are recorded; check it before building
// an Event on a hot path.
func (l *Log) Enabled() bool { return l != nil }

// Record queues e for writing, or drops it (counted) when the queue is full
// or the log closed. It never blocks. The caller must not modify e's
// slices afterwards.
func (l *Log) Record(e Event) {
	if l == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	l.mu.RLock()
	if l.mu.closed {
		l.mu.RUnlock()
		l.drop()
		return
	}
	select {
	case l.ch <- e:
		l.mu.RUnlock()
	default:
		l.mu.RUnlock()
		l.drop()
	}
}

func (l *Log) drop() {
	l.dropped.Add(1)
	l.m.AuditDropped()
}

// Reopen closes and reopens the file, for logrotate (call it on SIGHUP).
// Events keep flowing meanwhile; if the file cannot be opened, the old one
// stays in use and the error is returned.
func (l *Log) Reopen() error {
	if l == nil || l.path == "" {
		return nil
	}
	req := make(chan error, 1)
	select {
	case l.reopenC <- req:
		return <-req
	case <-l.done:
		return ErrClosed
	}
}

// Close writes every event queued so far, closes the file (not stderr nor
// New's writer), and returns the last write or close error. Events recorded
// after Close are dropped.
func (l *Log) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	already := l.mu.closed
	l.mu.closed = true
	l.mu.Unlock()
	if !already {
		close(l.quit)
	}
	<-l.done
	return l.err
}

// run is the writer goroutine.
func (l *Log) run() {
	defer close(l.done)
	buf := make([]byte, 0, 4096)
	report := time.NewTicker(10 * time.Second)
	defer report.Stop()
	for {
		select {
		case e := <-l.ch:
			buf = l.batch(buf[:0], e)
		case req := <-l.reopenC:
			req <- l.reopen()
		case <-report.C:
			l.reportDrops()
		case <-l.quit:
			// No Record is sending any more (Close held the lock): drain.
			for {
				select {
				case e := <-l.ch:
					buf = l.batch(buf[:0], e)
					continue
				default:
				}
				break
			}
			l.reportDrops()
			if l.f != nil {
				if err := l.f.Close(); err != nil && l.err == nil {
					l.err = err
				}
			}
			return
		}
	}
}

// batch writes e and whatever else is already queued: up to maxBatch
// bytes per write (one line per write with perLine), and at most a queue's
// worth of events per call, so Reopen and Close are served under load.
func (l *Log) batch(buf []byte, e Event) []byte {
	buf = appendEvent(buf, e)
	n := 1
	for range cap(l.ch) {
		if l.perLine || len(buf) >= maxBatch {
			l.write(buf, n)
			buf, n = buf[:0], 0
		}
		select {
		case e := <-l.ch:
			buf = appendEvent(buf, e)
			n++
			continue
		default:
		}
		break
	}
	if n > 0 {
		l.write(buf, n)
	}
	return buf
}

func appendEvent(buf []byte, e Event) []byte {
	b, err := json.Marshal(record{
		Log: "audit", Time: e.Time.UTC(), ConnID: e.ConnID, User: e.User, Database: e.Database,
		Client: e.Client, Kind: e.Kind, Statement: e.Statement, Columns: e.Columns, KeyIDs: e.KeyIDs, Rows: e.Rows,
		SQLSTATE: e.SQLSTATE, Reason: e.Reason,
	})
	if err != nil {
		panic("BUG: audit record does not marshal: " + err.Error())
	}
	return append(append(buf, b...), '\n')
}

func (l *Log) write(buf []byte, n int) {
	if _, err := l.w.Write(buf); err != nil {
		l.err = err
		l.m.AuditWriteError()
		if time.Since(l.lastWarn) > time.Minute {
			l.lastWarn = time.Now()
			l.log.Error().Err(err).Int("events", n).Msg("cannot write the audit log; events lost")
		}
		return
	}
	l.m.AuditWritten(n)
}

func (l *Log) reopen() error {
	f, err := openFile(l.path)
	if err != nil {
		l.m.AuditWriteError()
		l.log.Error().Err(err).Msg("cannot reopen the audit log; still writing to the old file")
		return err
	}
	old := l.f
	l.f, l.w = f, f
	l.err = nil
	if err := old.Close(); err != nil {
		l.log.Warn().Err(err).Msg("closing the previous audit log file")
	}
	return nil
}

func (l *Log) reportDrops() {
	if n := l.dropped.Swap(0); n > 0 {
		l.log.Warn().Uint64("dropped", n).Msg("audit events dropped: the audit log cannot keep up (queue full)")
	}
}
