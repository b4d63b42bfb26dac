package keys

import (
	"sync"
	"sync/atomic"
	"time"
)

// touchEvery is the granularity of an entry's last-use time: a hit stores
// the time only when it moved by more than this, so concurrent hits on one
// hot entry do not keep writing its cache line.
const touchEvery = int64(time.Second)

// entry is one cached value, or a cached failure (err != nil). Immutable
// except for used.
type entry[V any] struct {
	v       V
	err     error
	expires int64        // unix nanoseconds; the entry is dead at or after it
	used    atomic.Int64 // unix nanoseconds of the last hit (approximate)
}

// cache is a bounded map with TTL and approximate-LRU eviction, built for a
// read path that takes no lock and allocates nothing: readers load an
// immutable map through an atomic pointer; writers (misses, which are rare:
// once per key per TTL) copy it under mu, dropping dead entries and
// evicting the least recently used beyond size, and publish the copy.
type cache[K comparable, V any] struct {
	m    atomic.Pointer[map[K]*entry[V]]
	mu   sync.Mutex // serializes writers
	size int
}

func newCache[K comparable, V any](size int) *cache[K, V] {
	c := &cache[K, V]{size: size}
	m := map[K]*entry[V]{}
	c.m.Store(&m)
	return c
}

// get returns the live entry for k, if any, and marks it used.
func (c *cache[K, V]) get(k K, now int64) (*entry[V], bool) {
	e := (*c.m.Load())[k]
	if e == nil || now >= e.expires {
		return nil, false
	}
	if now-e.used.Load() > touchEvery {
		e.used.Store(now)
	}
	return e, true
}

// put publishes e under k.
func (c *cache[K, V]) put(k K, e *entry[V], now int64) {
	e.used.Store(now)
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.m.Load()
	m := make(map[K]*entry[V], min(len(old)+1, c.size))
	for ok, oe := range old {
		if ok != k && now < oe.expires {
			m[ok] = oe
		}
	}
	for len(m) >= c.size {
		c.evictLocked(m)
	}
	m[k] = e
	c.m.Store(&m)
}

// evictLocked deletes the least recently used entry of m (a scan: the map
// holds at most size entries and eviction happens only on a miss).
func (c *cache[K, V]) evictLocked(m map[K]*entry[V]) {
	var victim K
	oldest := int64(1<<63 - 1)
	for k, e := range m {
		if u := e.used.Load(); u < oldest {
			victim, oldest = k, u
		}
	}
	delete(m, victim)
}

// remove drops k.
func (c *cache[K, V]) remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.m.Load()
	if _, ok := old[k]; !ok {
		return
	}
	m := make(map[K]*entry[V], len(old))
	for ok, oe := range old {
		if ok != k {
			m[ok] = oe
		}
	}
	c.m.Store(&m)
}

// purge drops everything.
func (c *cache[K, V]) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := map[K]*entry[V]{}
	c.m.Store(&m)
}

// len counts the entries, dead ones included (for tests).
func (c *cache[K, V]) len() int { return len(*c.m.Load()) }
