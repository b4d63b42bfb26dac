package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}

// Holder holds the current policy and swaps in a new one atomically when
// the file changes and the new content validates. Readers call Current for
// each statement and keep the value for that statement's life, so a reload
// never changes a statement half-way.
type Holder struct {
	path string
	cur  atomic.Pointer[Policy]

	mu       sync.Mutex // serialises reloads
	lastData string

	// Check, when set, vets a new policy against what only the caller
	// knows (for instance that every key names a configured KMS); a policy
	// it rejects is not swapped in. Set it before the first Reload.
	Check func(*Policy) error
}

// NewHolder loads the policy at path. An empty path holds the empty policy
// (pure pass-through) and never reloads.
func NewHolder(path string) (*Holder, error) {
	h := &Holder{path: path}
	if path == "" {
		h.cur.Store(Empty())
		return h, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	h.cur.Store(p)
	h.lastData = string(data)
	return h, nil
}

// HolderOf holds a fixed policy (tests, tools).
func HolderOf(p *Policy) *Holder {
	h := &Holder{}
	h.cur.Store(p)
	return h
}

// Current returns the policy in force.
func (h *Holder) Current() *Policy { return h.cur.Load() }

// Reload re-reads the file. If its content changed and validates, the new
// policy replaces the old one and changed is true; if it does not
// validate, the old policy stays and the error says why.
func (h *Holder) Reload() (changed bool, err error) {
	if h.path == "" {
		return false, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	data, err := os.ReadFile(h.path)
	if err != nil {
		return false, err
	}
	if string(data) == h.lastData {
		return false, nil
	}
	p, err := Parse(data, h.path)
	if err == nil && h.Check != nil {
		err = h.Check(p)
	}
	if err != nil {
		// Remember the bad content so it is reported once, not every poll.
		h.lastData = string(data)
		return false, err
	}
	h.cur.Store(p)
	h.lastData = string(data)
	return true, nil
}

// Watch polls the file every interval (polling works across editors'
// rename-on-save and Kubernetes ConfigMap symlink swaps alike) and on
// every trigger received, e.g. from SIGHUP, until ctx is done. report is
// called after each reload that changed something or failed.
func (h *Holder) Watch(ctx context.Context, interval time.Duration, trigger <-chan struct{}, report func(p *Policy, err error)) {
	if h.path == "" {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-trigger:
		}
		changed, err := h.Reload()
		if changed || err != nil {
			report(h.Current(), err)
		}
	}
}
