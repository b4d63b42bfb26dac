package rewrite

import (
	"hash/maphash"
	"sync"
)

// lru is a bounded least-recently-used cache, sharded so that concurrent
// sessions rarely wait on one another.
type lru[K comparable, V any] struct {
	seed   maphash.Seed
	shards []lruShard[K, V]
}

type lruShard[K comparable, V any] struct {
	mu    sync.Mutex
	max   int
	items map[K]*lruEntry[K, V]
	head  lruEntry[K, V] // sentinel: head.next is the most recent
}

type lruEntry[K comparable, V any] struct {
	key        K
	val        V
	prev, next *lruEntry[K, V]
}

const lruShards = 16

func newLRU[K comparable, V any](size int) *lru[K, V] {
	n := lruShards
	if size < 4*n {
		n = 1
	}
	c := &lru[K, V]{seed: maphash.MakeSeed(), shards: make([]lruShard[K, V], n)}
	for i := range c.shards {
		s := &c.shards[i]
		s.max = (size + n - 1) / n
		s.items = make(map[K]*lruEntry[K, V])
		s.head.next, s.head.prev = &s.head, &s.head
	}
	return c
}

func (c *lru[K, V]) shard(k K) *lruShard[K, V] {
	if len(c.shards) == 1 {
		return &c.shards[0]
	}
	return &c.shards[maphash.Comparable(c.seed, k)%uint64(len(c.shards))]
}

func (c *lru[K, V]) get(k K) (V, bool) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	s.moveFrontLocked(e)
	return e.val, true
}

func (c *lru[K, V]) put(k K, v V) {
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.items[k]; ok {
		e.val = v
		s.moveFrontLocked(e)
		return
	}
	if len(s.items) >= s.max {
		old := s.head.prev
		s.unlinkLocked(old)
		delete(s.items, old.key)
	}
	e := &lruEntry[K, V]{key: k, val: v}
	s.items[k] = e
	s.linkFrontLocked(e)
}

func (c *lru[K, V]) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.items)
		s.mu.Unlock()
	}
	return n
}

func (s *lruShard[K, V]) unlinkLocked(e *lruEntry[K, V]) {
	e.prev.next, e.next.prev = e.next, e.prev
}

func (s *lruShard[K, V]) linkFrontLocked(e *lruEntry[K, V]) {
	e.prev, e.next = &s.head, s.head.next
	s.head.next.prev = e
	s.head.next = e
}

func (s *lruShard[K, V]) moveFrontLocked(e *lruEntry[K, V]) {
	s.unlinkLocked(e)
	s.linkFrontLocked(e)
}
