package keys

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"golang.org/x/sync/singleflight"

	"github.com/pgcrypt/pgcrypt-proxy/crypto"
	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// Defaults of Options.
const (
	DefaultSchema    = "pgcrypt"
	DefaultCacheTTL  = 5 * time.Minute
	DefaultCacheSize = 1024
)

// DEK states, the values of data_keys.state.
const (
	StateActive    = "active"    // the DEK for new writes; at most one per key name
	StateRetired   = "retired"   // decrypt-only
	StateDestroyed = "destroyed" // crypto-shredded: wrapped is NULL
)

// loadTimeout bounds one cache fill (database reads and KMS calls, retries
// included). Fills run detached from the caller's context, since other
// callers wait on the same fill; each caller still stops waiting when its
// own context ends.
const loadTimeout = time.Minute

// maxNegativeTTL bounds how long a failure to load a DEK by id (not found,
// wrapped DEK not authentic) is remembered, so that envelopes naming a bad
// id cost one keystore read or KMS call per interval, not one per value,
// while a repaired row is noticed soon.
const maxNegativeTTL = 10 * time.Second

// Options configure a Store.
type Options struct {
	// Schema holds the keystore tables (default "pgcrypt"). It must be a
	// plain lower-case identifier. It is part of every DEK's identity (the
	// KMS associated data): moving the keystore to another schema needs a
	// rewrap.
	Schema string
	// CacheTTL is how long an unwrapped DEK, and the knowledge of which DEK
	// is active, stay in memory (default 5m). It bounds how long a DEK
	// survives in memory after its KEK version is disabled or the DEK is
	// destroyed, and how long another replica takes to notice a new active
	// DEK version.
	CacheTTL time.Duration
	// CacheSize bounds the number of cached DEKs (default 1024).
	CacheSize int
	// Logger receives DEK creations and unwraps (ids, versions, durations;
	// never key bytes). The zero Logger discards.
	Logger zerolog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Rand supplies new DEKs (default crypto/rand).
	Rand io.Reader
	// ReadOnly opens an existing keystore without creating or migrating it
	// (ErrNoKeystore when it does not exist) and makes Current refuse to
	// create DEKs. For tools such as `pgcrypt-proxy keys list`.
	ReadOnly bool
	// OnCache, when set, is told of every data-key cache lookup (true: a
	// hit), for metrics. It must be cheap and safe for concurrent use.
	OnCache func(hit bool)
}

// Store is the keystore of one upstream database: wrapped DEKs in
// <schema>.data_keys, unwrapped through the KMS on demand into a bounded
// cache. All methods are safe for concurrent use; see doc.go.
type Store struct {
	onCache   func(hit bool)
	pool      *pgxpool.Pool
	schema    string
	table     string             // quoted <schema>.data_keys
	keks      map[string]kms.KEK // by kms backend name (config)
	kekByName map[string]kms.KEK // by KEK.Name() (kek_name column)
	ttl       int64              // nanoseconds
	negTTL    int64              // nanoseconds
	now       func() time.Time
	log       zerolog.Logger
	readOnly  bool
	flights   singleflight.Group                  // one fill per key at a time
	ids       *cache[uint32, *crypto.Key]         // unwrapped DEKs by id
	failed    *cache[uint32, *crypto.Key]         // lasting failures by id (err set), apart so they never evict DEKs
	current   *cache[string, *entry[*crypto.Key]] // key name → entry of the active DEK in ids
	live      *cache[string, []*crypto.Key]       // key name → non-destroyed DEKs, newest first

	randMu sync.Mutex
	rand   io.Reader
}

// Open prepares the keystore in pool's database (creating or migrating
// its schema unless o.ReadOnly) and returns a Store. keks are the KEK
// backends by their config names (policy keys name them); DEKs are
// unwrapped by the backend whose Name() matches their kek_name. The Store
// does not own pool or keks.
func Open(ctx context.Context, pool *pgxpool.Pool, keks map[string]kms.KEK, o Options) (*Store, error) {
	if pool == nil {
		return nil, &Error{Op: "open", Kind: ErrInvalidArgument, Err: errors.New("nil pool")}
	}
	if o.Schema == "" {
		o.Schema = DefaultSchema
	}
	if !isIdent(o.Schema) {
		return nil, &Error{Op: "open", Kind: ErrInvalidArgument,
			Err: fmt.Errorf("schema %q is not a plain lower-case SQL identifier", o.Schema)}
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = DefaultCacheTTL
	}
	if o.CacheSize <= 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	s := &Store{
		pool:      pool,
		schema:    o.Schema,
		table:     pgx.Identifier{o.Schema, "data_keys"}.Sanitize(),
		keks:      make(map[string]kms.KEK, len(keks)),
		kekByName: make(map[string]kms.KEK, len(keks)),
		ttl:       int64(o.CacheTTL),
		negTTL:    int64(min(o.CacheTTL, maxNegativeTTL)),
		now:       o.Now,
		log:       o.Logger.With().Str("component", "keystore").Logger(),
		readOnly:  o.ReadOnly,
		onCache:   o.OnCache,
		ids:       newCache[uint32, *crypto.Key](o.CacheSize),
		failed:    newCache[uint32, *crypto.Key](o.CacheSize),
		current:   newCache[string, *entry[*crypto.Key]](o.CacheSize),
		live:      newCache[string, []*crypto.Key](o.CacheSize),
		rand:      o.Rand,
	}
	for name, k := range keks {
		if k == nil {
			return nil, &Error{Op: "open", Kind: ErrInvalidArgument, Err: fmt.Errorf("kms backend %q is nil", name)}
		}
		s.keks[name] = k
		if prev, ok := s.kekByName[k.Name()]; ok && prev != k {
			// Two config entries for one KEK: either unwraps.
			continue
		}
		s.kekByName[k.Name()] = k
	}
	if o.ReadOnly {
		v, err := schemaVersion(ctx, pool, s.schema)
		switch {
		case err != nil:
			return nil, &Error{Op: "open", Kind: ErrKeystore, Err: err}
		case v == 0:
			return nil, &Error{Op: "open", Kind: ErrNoKeystore, Err: fmt.Errorf("no table %s", s.table)}
		case v > SchemaVersion:
			return nil, &Error{Op: "open", Kind: ErrSchemaVersion,
				Err: fmt.Errorf("schema %s is at version %d, this binary knows up to %d", s.schema, v, SchemaVersion)}
		}
		return s, nil
	}
	n, err := migrate(ctx, pool, s.schema)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		s.log.Info().Str("schema", s.schema).Int("schema_version", SchemaVersion).Int("migrations", n).Msg("keystore migrated")
	}
	return s, nil
}

// Schema returns the keystore's schema name.
func (s *Store) Schema() string { return s.schema }

// Current returns the active DEK of keyName, the one new values are
// encrypted under. If keyName has no active DEK yet, Current creates one
// (version 1, or the next version if older ones exist), wrapped by the KEK
// of the kms backend kmsName; exactly one is created however many replicas
// ask at once. kmsName matters only then: an existing DEK is unwrapped by
// the KEK that wrapped it.
//
// In steady state Current takes no lock and allocates nothing. A new
// active version made by another process is noticed within CacheTTL.
func (s *Store) Current(ctx context.Context, keyName, kmsName string) (*crypto.Key, error) {
	now := s.now().UnixNano()
	if e, ok := s.current.get(keyName, now); ok && now < e.v.expires {
		s.hit()
		return e.v.v, nil
	}
	s.miss()
	v, err := s.fill(ctx, "current\x00"+keyName, func(ctx context.Context) (any, error) {
		now := s.now().UnixNano()
		if e, ok := s.current.get(keyName, now); ok && now < e.v.expires {
			return e.v.v, nil // filled between our miss and this flight
		}
		return s.loadCurrent(ctx, keyName, kmsName)
	})
	if err != nil {
		return nil, err
	}
	return v.(*crypto.Key), nil
}

// ByID returns the DEK with this id, as named by an envelope's header,
// whatever its state except destroyed (ErrDestroyed, naming key and
// version). An unknown id is ErrNotFound. In steady state ByID takes no
// lock and allocates nothing.
func (s *Store) ByID(ctx context.Context, id uint32) (*crypto.Key, error) {
	now := s.now().UnixNano()
	if e, ok := s.ids.get(id, now); ok {
		s.hit()
		return e.v, nil
	}
	if e, ok := s.failed.get(id, now); ok {
		return nil, e.err
	}
	s.miss()
	v, err := s.fill(ctx, idFlight(id), func(ctx context.Context) (any, error) {
		if e, ok := s.cachedID(id); ok {
			return e, nil // filled between our miss and this flight
		}
		return s.loadID(ctx, id)
	})
	if err != nil {
		return nil, err
	}
	e := v.(*entry[*crypto.Key])
	return e.v, e.err
}

// Live returns every non-destroyed DEK of keyName, newest version first:
// the keys a deterministic lookup must try. A key name without DEKs gives
// an empty slice (and is not cached, so a DEK created elsewhere shows up at
// once). The slice is shared: callers must not modify it. In steady state
// Live takes no lock and allocates nothing.
func (s *Store) Live(ctx context.Context, keyName string) ([]*crypto.Key, error) {
	now := s.now().UnixNano()
	if e, ok := s.live.get(keyName, now); ok {
		return e.v, nil
	}
	v, err := s.fill(ctx, "live\x00"+keyName, func(ctx context.Context) (any, error) {
		if e, ok := s.live.get(keyName, s.now().UnixNano()); ok {
			return e.v, nil // filled between our miss and this flight
		}
		return s.loadLive(ctx, keyName)
	})
	if err != nil {
		return nil, err
	}
	return v.([]*crypto.Key), nil
}

// DEKInfo describes one keystore row, without key material.
type DEKInfo struct {
	ID         uint32    `json:"id"`
	Key        string    `json:"key"`
	DEKVersion int       `json:"dek_version"`
	KEKName    string    `json:"kek_name"`
	KEKVersion string    `json:"kek_version"`
	State      string    `json:"state"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// List returns every keystore row, ordered by key name and DEK version. It
// reads the table only: no KMS call, no cache.
func (s *Store) List(ctx context.Context) ([]DEKInfo, error) {
	rows, err := s.pool.Query(ctx, "SELECT id, key_name, dek_version, kek_name, kek_version, state, created_at, updated_at FROM "+
		s.table+" ORDER BY key_name, dek_version")
	if err != nil {
		return nil, &Error{Op: "list", Kind: ErrKeystore, Err: err}
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (DEKInfo, error) {
		var d DEKInfo
		var id int32
		err := r.Scan(&id, &d.Key, &d.DEKVersion, &d.KEKName, &d.KEKVersion, &d.State, &d.CreatedAt, &d.UpdatedAt)
		d.ID = uint32(id)
		return d, err
	})
	if err != nil {
		return nil, &Error{Op: "list", Kind: ErrKeystore, Err: err}
	}
	return out, nil
}

// KEKVersionRefs counts the DEKs that are not destroyed and whose wrapped
// key was made by this KEK version (full name): a KEK version with
// references must not be destroyed.
func (s *Store) KEKVersionRefs(ctx context.Context, kekVersion string) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, "SELECT count(*) FROM "+s.table+" WHERE kek_version = $1 AND state <> 'destroyed'", kekVersion).Scan(&n)
	if err != nil {
		return 0, &Error{Op: "count references", Kind: ErrKeystore, Err: err}
	}
	return n, nil
}

// Invalidate forgets which DEK is active for keyName and its live list, so
// the next Current and Live read the keystore again (the unwrapped DEKs stay
// cached). The DEK rotation that changes the active version calls it.
func (s *Store) Invalidate(keyName string) {
	s.current.remove(keyName)
	s.live.remove(keyName)
}

// Purge drops every cached DEK; the next calls reload through the KMS.
func (s *Store) Purge() {
	s.ids.purge()
	s.failed.purge()
	s.current.purge()
	s.live.purge()
}

// fill runs fn once for all concurrent callers with the same flight key, on
// a context detached from any one caller's (bounded by loadTimeout), and
// waits for it or for ctx.
func (s *Store) fill(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	ch := s.flights.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
		defer cancel()
		return fn(fctx)
	})
	select {
	case r := <-ch:
		return r.Val, r.Err
	case <-ctx.Done():
		return nil, &Error{Op: "load", Err: fmt.Errorf("gave up waiting for the keystore or KMS: %w", context.Cause(ctx))}
	}
}

// hit and miss report cache lookups to Options.OnCache (metrics).
func (s *Store) hit() {
	if s.onCache != nil {
		s.onCache(true)
	}
}

func (s *Store) miss() {
	if s.onCache != nil {
		s.onCache(false)
	}
}

func idFlight(id uint32) string { return "id\x00" + strconv.FormatUint(uint64(id), 10) }

// row is one data_keys row.
type row struct {
	id         uint32
	keyName    string
	version    int
	wrapped    []byte
	kekName    string
	kekVersion string
	state      string
}

const rowColumns = "id, key_name, dek_version, wrapped, kek_name, kek_version, state"

func scanRow(r pgx.Row) (row, error) {
	var x row
	var id int32
	if err := r.Scan(&id, &x.keyName, &x.version, &x.wrapped, &x.kekName, &x.kekVersion, &x.state); err != nil {
		return row{}, err
	}
	if id <= 0 {
		return row{}, &Error{Op: "load", Key: x.keyName, DEKVersion: x.version, Kind: ErrCorrupt, Err: fmt.Errorf("id %d out of range", id)}
	}
	x.id = uint32(id)
	return x, nil
}

// Identity returns the associated data that binds a wrapped DEK to its
// keystore row: "pgcrypt-proxy/dek/v1" NUL schema NUL key name NUL decimal
// DEK version. Wrap and Unwrap of a DEK always pass it, so a wrapped DEK
// moved to another row, key name, version or keystore schema does not
// unwrap. The id is not part of it (it is assigned by the INSERT).
func Identity(schema, keyName string, dekVersion int) []byte {
	b := make([]byte, 0, len(identityPrefix)+len(schema)+len(keyName)+2+20)
	b = append(b, identityPrefix...)
	b = append(b, schema...)
	b = append(b, 0)
	b = append(b, keyName...)
	b = append(b, 0)
	return strconv.AppendInt(b, int64(dekVersion), 10)
}

const identityPrefix = "pgcrypt-proxy/dek/v1\x00"

func checkKeyName(op, keyName string) error {
	if keyName == "" || len(keyName) > 200 || !utf8.ValidString(keyName) || containsNUL(keyName) {
		return &Error{Op: op, Kind: ErrInvalidArgument,
			Err: fmt.Errorf("key name %q: use 1 to 200 bytes of UTF-8 without NUL", keyName)}
	}
	return nil
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

// loadID reads the row of id and unwraps it (or records why not).
func (s *Store) loadID(ctx context.Context, id uint32) (*entry[*crypto.Key], error) {
	if id == 0 || id > 1<<31-1 {
		return s.tombstone(id, &Error{Op: "by id", ID: id, Kind: ErrNotFound}), nil
	}
	r, err := scanRow(s.pool.QueryRow(ctx, "SELECT "+rowColumns+" FROM "+s.table+" WHERE id = $1", int32(id)))
	if errors.Is(err, pgx.ErrNoRows) {
		return s.tombstone(id, &Error{Op: "by id", ID: id, Kind: ErrNotFound}), nil
	}
	if err != nil {
		return nil, asKeystoreErr("by id", id, err)
	}
	// Not s.dek: this already runs in the id's flight.
	return s.unwrap(ctx, "by id", r)
}

// dek returns the cache entry of a row's DEK, unwrapping it through the KMS
// at most once for all concurrent callers. A destroyed row, or a wrapped
// DEK the KMS rejects as not authentic, gives an entry whose err says so;
// an error return is a failure that may pass (KMS outage, timeout).
func (s *Store) dek(ctx context.Context, op string, r row) (*entry[*crypto.Key], error) {
	if e, ok := s.cachedID(r.id); ok {
		return e, nil
	}
	v, err := s.fill(ctx, idFlight(r.id), func(ctx context.Context) (any, error) {
		if e, ok := s.cachedID(r.id); ok {
			return e, nil // filled between our miss and this flight
		}
		return s.unwrap(ctx, op, r)
	})
	if err != nil {
		return nil, err
	}
	return v.(*entry[*crypto.Key]), nil
}

// cachedID returns the live cache entry of a DEK id: the DEK, or a
// remembered failure.
func (s *Store) cachedID(id uint32) (*entry[*crypto.Key], bool) {
	now := s.now().UnixNano()
	if e, ok := s.ids.get(id, now); ok {
		return e, true
	}
	return s.failed.get(id, now)
}

// unwrap unwraps r through its KEK and caches the result. Every fill
// publishes to the cache before its flight ends, and every flight checks the
// cache first, so a miss that races with a finishing fill costs no second
// KMS call.
func (s *Store) unwrap(ctx context.Context, op string, r row) (*entry[*crypto.Key], error) {
	fail := func(kind, cause error) *Error {
		return &Error{Op: op, Key: r.keyName, DEKVersion: r.version, ID: r.id, Kind: kind, Err: cause}
	}
	if r.state == StateDestroyed || r.wrapped == nil {
		// Destruction is final: remember it for the full TTL.
		now := s.now().UnixNano()
		e := &entry[*crypto.Key]{err: fail(ErrDestroyed, nil), expires: now + s.ttl}
		s.failed.put(r.id, e, now)
		return e, nil
	}
	kek := s.kekByName[r.kekName]
	if kek == nil {
		return s.tombstone(r.id, fail(ErrNoKEK, fmt.Errorf("it is wrapped by KEK %s (version %s); add a kms backend with that key to the config", r.kekName, r.kekVersion))), nil
	}
	began := time.Now()
	pt, usedPrimary, err := kek.Unwrap(ctx, r.wrapped, Identity(s.schema, r.keyName, r.version))
	if err != nil {
		s.log.Warn().Err(err).Str("key", r.keyName).Int("dek_version", r.version).Uint32("dek_id", r.id).
			Str("kek_version", r.kekVersion).Msg("cannot unwrap data key")
		switch {
		case errors.Is(err, kms.ErrInvalidCiphertext):
			return s.tombstone(r.id, fail(ErrUnwrap, err)), nil
		case kms.IsRetryable(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
			return nil, fail(ErrKMS, err)
		default:
			// Lasting (disabled KEK version, permission, not found):
			// remember briefly rather than ask the KMS once per value.
			return s.tombstone(r.id, fail(ErrKMS, err)), nil
		}
	}
	defer clear(pt)
	if len(pt) != crypto.DEKSize {
		return s.tombstone(r.id, fail(ErrCorrupt, fmt.Errorf("unwrapped data key is %d bytes, want %d", len(pt), crypto.DEKSize))), nil
	}
	k, err := crypto.NewKey(r.id, pt)
	if err != nil {
		return nil, fail(ErrCorrupt, err)
	}
	now := s.now().UnixNano()
	e := &entry[*crypto.Key]{v: k, expires: now + s.ttl}
	s.ids.put(r.id, e, now)
	s.log.Debug().Str("key", r.keyName).Int("dek_version", r.version).Uint32("dek_id", r.id).
		Str("kek_version", r.kekVersion).Bool("kek_primary", usedPrimary).Dur("took", time.Since(began)).Msg("data key unwrapped")
	return e, nil
}

// tombstone caches a lasting failure for a short while, in a cache of its
// own: envelopes naming made-up ids cannot push real DEKs out.
func (s *Store) tombstone(id uint32, err error) *entry[*crypto.Key] {
	now := s.now().UnixNano()
	e := &entry[*crypto.Key]{err: err, expires: now + s.negTTL}
	s.failed.put(id, e, now)
	return e
}

func asKeystoreErr(op string, id uint32, err error) error {
	var ke *Error
	if errors.As(err, &ke) {
		return ke
	}
	return &Error{Op: op, ID: id, Kind: ErrKeystore, Err: err}
}

// loadCurrent finds (or creates) the active DEK of keyName and caches it.
func (s *Store) loadCurrent(ctx context.Context, keyName, kmsName string) (*crypto.Key, error) {
	if err := checkKeyName("current", keyName); err != nil {
		return nil, err
	}
	r, err := scanRow(s.pool.QueryRow(ctx, "SELECT "+rowColumns+" FROM "+s.table+" WHERE key_name = $1 AND state = 'active'", keyName))
	var e *entry[*crypto.Key]
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		e, err = s.create(ctx, keyName, kmsName)
	case err != nil:
		return nil, &Error{Op: "current", Key: keyName, Kind: ErrKeystore, Err: err}
	default:
		e, err = s.dek(ctx, "current", r)
	}
	if err != nil {
		return nil, err
	}
	if e.err != nil {
		return nil, e.err
	}
	now := s.now().UnixNano()
	s.current.put(keyName, &entry[*entry[*crypto.Key]]{v: e, expires: now + s.ttl}, now)
	return e.v, nil
}

// create makes the first (or next) DEK version of keyName, active, under
// a per-key advisory lock so that one replica creates it and the others,
// queued on the lock, find it. It wraps under kmsName's KEK, checks that the
// wrap unwraps to the same key, and inserts, all in one transaction: if any
// step fails nothing is written.
func (s *Store) create(ctx context.Context, keyName, kmsName string) (*entry[*crypto.Key], error) {
	fail := func(version int, kind, cause error) *Error {
		return &Error{Op: "create", Key: keyName, DEKVersion: version, Kind: kind, Err: cause}
	}
	if s.readOnly {
		return nil, fail(0, ErrReadOnly, nil)
	}
	kek := s.keks[kmsName]
	if kek == nil {
		return nil, fail(0, ErrUnknownKMS, fmt.Errorf("the policy names kms %q; configure kms.%s", kmsName, kmsName))
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fail(0, ErrKeystore, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("dek", s.schema, keyName)); err != nil {
		return nil, fail(0, ErrKeystore, err)
	}
	// Under the lock: did another replica create it meanwhile?
	r, err := scanRow(tx.QueryRow(ctx, "SELECT "+rowColumns+" FROM "+s.table+" WHERE key_name = $1 AND state = 'active'", keyName))
	switch {
	case err == nil:
		if err := tx.Rollback(ctx); err != nil {
			return nil, fail(0, ErrKeystore, err)
		}
		return s.dek(ctx, "current", r)
	case !errors.Is(err, pgx.ErrNoRows):
		return nil, fail(0, ErrKeystore, err)
	}
	var version int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(dek_version), 0) + 1 FROM "+s.table+" WHERE key_name = $1", keyName).Scan(&version); err != nil {
		return nil, fail(0, ErrKeystore, err)
	}
	dek := make([]byte, crypto.DEKSize)
	defer clear(dek)
	s.randMu.Lock()
	_, err = io.ReadFull(s.rand, dek)
	s.randMu.Unlock()
	if err != nil {
		return nil, fail(version, ErrInternal, fmt.Errorf("random source: %w", err))
	}
	aad := Identity(s.schema, keyName, version)
	wrapped, kekVersion, err := kek.Wrap(ctx, dek, aad)
	if err != nil {
		return nil, fail(version, ErrKMS, err)
	}
	// A DEK whose wrap cannot be unwrapped would lose every value written
	// under it: prove the round trip before anything uses it.
	pt, _, err := kek.Unwrap(ctx, wrapped, aad)
	if err != nil {
		return nil, fail(version, ErrKMS, fmt.Errorf("verifying the new wrapped key: %w", err))
	}
	same := subtle.ConstantTimeCompare(pt, dek) == 1
	clear(pt)
	if !same {
		return nil, fail(version, ErrKMS, errors.New("verifying the new wrapped key: it unwraps to a different key"))
	}
	var id int32
	err = tx.QueryRow(ctx, "INSERT INTO "+s.table+" (key_name, dek_version, wrapped, kek_name, kek_version, state) "+
		"VALUES ($1, $2, $3, $4, $5, 'active') ON CONFLICT DO NOTHING RETURNING id",
		keyName, version, wrapped, kek.Name(), kekVersion).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		// Someone inserted without taking the lock (a tool, a DBA). Theirs
		// wins; use it.
		if err := tx.Rollback(ctx); err != nil {
			return nil, fail(version, ErrKeystore, err)
		}
		r, err := scanRow(s.pool.QueryRow(ctx, "SELECT "+rowColumns+" FROM "+s.table+" WHERE key_name = $1 AND state = 'active'", keyName))
		if err != nil {
			return nil, fail(version, ErrKeystore, fmt.Errorf("lost a creation race and cannot read the winner: %w", err))
		}
		return s.dek(ctx, "current", r)
	}
	if err != nil {
		return nil, fail(version, ErrKeystore, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fail(version, ErrKeystore, err)
	}
	k, err := crypto.NewKey(uint32(id), dek)
	if err != nil {
		return nil, fail(version, ErrCorrupt, err)
	}
	now := s.now().UnixNano()
	e := &entry[*crypto.Key]{v: k, expires: now + s.ttl}
	s.ids.put(k.ID(), e, now)
	s.live.remove(keyName)
	s.log.Info().Str("key", keyName).Int("dek_version", version).Uint32("dek_id", k.ID()).
		Str("kek_version", kekVersion).Msg("data key created")
	return e, nil
}

// loadLive unwraps every non-destroyed DEK of keyName, newest first.
func (s *Store) loadLive(ctx context.Context, keyName string) ([]*crypto.Key, error) {
	if err := checkKeyName("live", keyName); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT "+rowColumns+" FROM "+s.table+
		" WHERE key_name = $1 AND state <> 'destroyed' ORDER BY dek_version DESC", keyName)
	if err != nil {
		return nil, &Error{Op: "live", Key: keyName, Kind: ErrKeystore, Err: err}
	}
	rs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) { return scanRow(r) })
	if err != nil {
		return nil, asKeystoreErr("live", 0, err)
	}
	ks := make([]*crypto.Key, 0, len(rs))
	now := s.now().UnixNano()
	expires := now + s.ttl
	for _, r := range rs {
		e, err := s.dek(ctx, "live", r)
		if err != nil {
			return nil, err
		}
		if e.err != nil {
			return nil, e.err
		}
		ks = append(ks, e.v)
		expires = min(expires, e.expires)
	}
	if len(ks) > 0 {
		s.live.put(keyName, &entry[[]*crypto.Key]{v: ks, expires: expires}, now)
	}
	return ks, nil
}
