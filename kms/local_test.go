package kms

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func testMasterKey(t testing.TB, fill byte) MasterKey {
	t.Helper()
	k, err := NewMasterKey(bytes.Repeat([]byte{fill}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newLocal(t testing.TB, opts LocalOptions) *Local {
	t.Helper()
	if opts.Path == "" {
		opts.Path = filepath.Join(t.TempDir(), "keyring.json")
	}
	l, err := InitLocal(context.Background(), opts)
	if err != nil {
		t.Fatalf("InitLocal: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestLocalConformance(t *testing.T) {
	runConformance(t, func(t *testing.T) backend {
		return backend{
			kek:            newLocal(t, LocalOptions{MasterKey: testMasterKey(t, 7)}),
			destroyedState: StateDestroyed,
			finishDestroy:  func() {},
		}
	})
}

func TestLocalDevConformance(t *testing.T) {
	runConformance(t, func(t *testing.T) backend {
		return backend{
			kek:            newLocal(t, LocalOptions{Dev: true}),
			destroyedState: StateDestroyed,
			finishDestroy:  func() {},
		}
	})
}

func TestLocalInitAndFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "keyring.json")
	mk := testMasterKey(t, 1)
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	l, err := InitLocal(ctx, LocalOptions{Path: path, MasterKey: mk, KeyID: "prod-1", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if l.Name() != "local:prod-1" {
		t.Fatalf("Name = %q", l.Name())
	}
	if p, _ := l.Primary(ctx); p != "local:prod-1/cryptoKeyVersions/1" {
		t.Fatalf("Primary = %q", p)
	}
	vs, _ := l.Versions(ctx)
	if !vs[0].CreateTime.Equal(now) {
		t.Fatalf("CreateTime = %v, want %v", vs[0].CreateTime, now)
	}
	for _, f := range []string{path, path + ".lock"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", f, fi.Mode().Perm())
		}
	}
	if _, err := l.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode after rotate = %v", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "keyring.json,keyring.json.lock" {
		t.Fatalf("dir holds %v; want only the keyring and its lock (no temp files)", names)
	}

	data, _ := os.ReadFile(path)
	var f map[string]any
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if f["format"] != "pgcrypt-keyring" || f["format_version"] != 1.0 || f["key_id"] != "prod-1" ||
		f["dev"] != false || f["cipher"] != "AES-256-GCM" || f["keyring"] != nil || f["sealed"] == nil {
		t.Fatalf("unexpected file header: %s", data)
	}
	if bytes.Contains(data, []byte("ENABLED")) {
		t.Fatal("sealed keyring shows metadata in cleartext")
	}

	// Init refuses to overwrite, and leaves the file alone.
	_, err = InitLocal(ctx, LocalOptions{Path: path, MasterKey: mk})
	wantKind(t, err, ErrKeyringExists)
	if !strings.Contains(err.Error(), path) {
		t.Fatalf("error %q does not name the file", err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, data) {
		t.Fatal("refused Init changed the file")
	}

	// Reopen with the same master key: same versions.
	l2, err := OpenLocal(ctx, LocalOptions{Path: path, MasterKey: testMasterKey(t, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := l2.Primary(ctx); p != "local:prod-1/cryptoKeyVersions/2" {
		t.Fatalf("reopened Primary = %q", p)
	}
}

func TestLocalInitNeedsMasterKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.json")
	_, err := InitLocal(context.Background(), LocalOptions{Path: path})
	wantKind(t, err, ErrNoMasterKey)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("failed Init created the file")
	}
	_, err = InitLocal(context.Background(), LocalOptions{Path: path, MasterKey: testMasterKey(t, 1), KeyID: "bad id!"})
	wantKind(t, err, ErrInvalidArgument)
}

func TestLocalOpenMissing(t *testing.T) {
	_, err := OpenLocal(context.Background(), LocalOptions{Path: filepath.Join(t.TempDir(), "nope.json"), MasterKey: testMasterKey(t, 1)})
	wantKind(t, err, ErrNotFound)
}

func TestLocalWrongMasterKey(t *testing.T) {
	l := newLocal(t, LocalOptions{MasterKey: testMasterKey(t, 1)})
	before, _ := os.ReadFile(l.Path())
	wrong := bytes.Repeat([]byte{2}, 32)
	mk, _ := NewMasterKey(wrong)
	_, err := OpenLocal(context.Background(), LocalOptions{Path: l.Path(), MasterKey: mk})
	wantKind(t, err, ErrWrongMasterKey)
	want := "keyring " + l.Path() + ": master key does not decrypt it (wrong PGCRYPT_MASTER_KEY?)"
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not contain %q", err, want)
	}
	if strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(wrong)) {
		t.Fatal("error contains the master key")
	}
	_, err = OpenLocal(context.Background(), LocalOptions{Path: l.Path()})
	wantKind(t, err, ErrNoMasterKey)
	if after, _ := os.ReadFile(l.Path()); !bytes.Equal(before, after) {
		t.Fatal("file changed")
	}
}

// damage writes bad bytes over the keyring and checks that both opening it and
// a read-modify-write through an already open KEK fail with a clear error
// naming the file, without touching the file.
func checkDamaged(t *testing.T, l *Local, bad []byte, kinds ...error) {
	t.Helper()
	if err := os.WriteFile(l.Path(), bad, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenLocal(context.Background(), LocalOptions{Path: l.Path(), MasterKey: l.master})
	ok := false
	for _, k := range kinds {
		ok = ok || errors.Is(err, k)
	}
	if !ok {
		t.Fatalf("Open of damaged file: %v; want one of %v", err, kinds)
	}
	if !strings.Contains(err.Error(), "keyring "+l.Path()) {
		t.Fatalf("error %q does not name the file", err)
	}
	if _, err := l.Rotate(context.Background()); err == nil {
		t.Fatal("Rotate on a damaged file succeeded")
	}
	if after, _ := os.ReadFile(l.Path()); !bytes.Equal(after, bad) {
		t.Fatal("a failed operation rewrote the damaged file")
	}
}

func TestLocalTruncated(t *testing.T) {
	l := newLocal(t, LocalOptions{MasterKey: testMasterKey(t, 1)})
	if _, err := l.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(l.Path())
	content := bytes.TrimRight(good, "\n")
	for n := 0; n < len(content); n++ {
		checkDamaged(t, l, good[:n], ErrCorruptKeyring)
	}
}

func TestLocalBitFlips(t *testing.T) {
	l := newLocal(t, LocalOptions{MasterKey: testMasterKey(t, 1)})
	good, _ := os.ReadFile(l.Path())
	for i := range good {
		for bit := 0; bit < 8; bit++ {
			bad := bytes.Clone(good)
			bad[i] ^= 1 << bit
			// Every flip goes through the decoder; every 16th byte also
			// through the file, for the error text.
			_, kind, _ := decodeKeyring(bad, l.master, false)
			if kind != ErrCorruptKeyring && kind != ErrWrongMasterKey {
				t.Fatalf("byte %d bit %d: decode kind = %v; want corrupt or wrong master key", i, bit, kind)
			}
			if i%16 != 0 {
				continue
			}
			if err := os.WriteFile(l.Path(), bad, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := OpenLocal(context.Background(), LocalOptions{Path: l.Path(), MasterKey: l.master})
			if !errors.Is(err, kind) || !strings.Contains(err.Error(), "keyring "+l.Path()+": ") {
				t.Fatalf("byte %d bit %d: Open = %v; want kind %v naming the file", i, bit, err, kind)
			}
		}
	}
	// One full check through a mutating op, on a flip inside the sealed data.
	bad := bytes.Clone(good)
	i := bytes.Index(bad, []byte(`"sealed": "`)) + 20
	bad[i] ^= 0x01
	checkDamaged(t, l, bad, ErrCorruptKeyring)
	if err := os.WriteFile(l.Path(), good, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLocal(context.Background(), LocalOptions{Path: l.Path(), MasterKey: l.master}); err != nil {
		t.Fatalf("restored file: %v", err)
	}
}

func TestLocalBlobDamage(t *testing.T) {
	ctx := context.Background()
	l := newLocal(t, LocalOptions{MasterKey: testMasterKey(t, 1)})
	aad := []byte("row 1")
	blob, version, err := l.Wrap(ctx, make([]byte, 32), aad)
	if err != nil {
		t.Fatal(err)
	}
	if len(blob) != 32+blobOverhead {
		t.Fatalf("blob is %d bytes, want %d", len(blob), 32+blobOverhead)
	}
	if v, err := l.BlobVersion(blob); err != nil || v != version {
		t.Fatalf("BlobVersion = %q, %v; want %q", v, err, version)
	}
	for n := 0; n < len(blob); n++ {
		if _, _, err := l.Unwrap(ctx, blob[:n], aad); err == nil {
			t.Fatalf("truncated to %d bytes: Unwrap succeeded", n)
		}
	}
	for i := range blob {
		for bit := 0; bit < 8; bit++ {
			bad := bytes.Clone(blob)
			bad[i] ^= 1 << bit
			if _, _, err := l.Unwrap(ctx, bad, aad); err == nil {
				t.Fatalf("byte %d bit %d flipped: Unwrap succeeded", i, bit)
			}
		}
	}
}

func TestLocalDevMode(t *testing.T) {
	ctx := context.Background()
	l := newLocal(t, LocalOptions{Dev: true})
	data, _ := os.ReadFile(l.Path())
	if !bytes.Contains(data, []byte(`"dev": true`)) || !bytes.Contains(data, []byte(`"cipher": "none"`)) {
		t.Fatalf("dev keyring does not record dev mode:\n%s", data)
	}
	_, err := OpenLocal(ctx, LocalOptions{Path: l.Path()})
	wantKind(t, err, ErrDevKeyring)
	_, err = OpenLocal(ctx, LocalOptions{Path: l.Path(), MasterKey: testMasterKey(t, 1)})
	wantKind(t, err, ErrDevKeyring)
	l2, err := OpenLocal(ctx, LocalOptions{Path: l.Path(), Dev: true})
	if err != nil {
		t.Fatal(err)
	}
	blob, _, err := l.Wrap(ctx, []byte("dek"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := l2.Unwrap(ctx, blob, nil); err != nil || string(got) != "dek" {
		t.Fatalf("Unwrap = %q, %v", got, err)
	}

	// Destroy deletes the material from the file, keeping a tombstone.
	v1, _ := l.Primary(ctx)
	if _, err := l.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Destroy(ctx, v1); err != nil {
		t.Fatal(err)
	}
	var f keyringFile
	data, _ = os.ReadFile(l.Path())
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	e := f.Keyring.entry(1)
	if e == nil || e.State != StateDestroyed || e.Key != nil || e.DestroyTime == nil {
		t.Fatalf("tombstone = %+v", e)
	}

	// A sealed keyring with Dev set opens normally (dev only permits cleartext).
	s := newLocal(t, LocalOptions{MasterKey: testMasterKey(t, 3)})
	if _, err := OpenLocal(ctx, LocalOptions{Path: s.Path(), MasterKey: testMasterKey(t, 3), Dev: true}); err != nil {
		t.Fatal(err)
	}
}

func TestLocalSeesOtherProcessRotation(t *testing.T) {
	ctx := context.Background()
	a := newLocal(t, LocalOptions{MasterKey: testMasterKey(t, 1)})
	b, err := OpenLocal(ctx, LocalOptions{Path: a.Path(), MasterKey: testMasterKey(t, 1)})
	if err != nil {
		t.Fatal(err)
	}
	blob, _, _ := b.Wrap(ctx, []byte("k"), nil)
	v2, err := a.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := b.Primary(ctx); p != v2 {
		t.Fatalf("other instance sees primary %q, want %q", p, v2)
	}
	if _, used, err := b.Unwrap(ctx, blob, nil); err != nil || used {
		t.Fatalf("Unwrap old blob: used=%v err=%v", used, err)
	}
	if err := a.Disable(ctx, "1"); err != nil {
		t.Fatal(err)
	}
	_, _, err = b.Unwrap(ctx, blob, nil)
	wantKind(t, err, ErrVersionDisabled)
}

func TestLocalConcurrentRotate(t *testing.T) {
	ctx := context.Background()
	base := newLocal(t, LocalOptions{MasterKey: testMasterKey(t, 1)})
	const workers, each = 6, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers*each+1)
	seen := make(chan string, workers*each)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each worker is its own "process": a separate instance, so only
			// the file lock serializes them.
			l, err := OpenLocal(ctx, LocalOptions{Path: base.Path(), MasterKey: testMasterKey(t, 1)})
			if err != nil {
				errs <- err
				return
			}
			for i := 0; i < each; i++ {
				v, err := l.Rotate(ctx)
				if err != nil {
					errs <- err
					return
				}
				seen <- v
			}
		}()
	}
	// Meanwhile the shared instance keeps wrapping and unwrapping.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 20; i++ {
			blob, _, err := base.Wrap(ctx, []byte("dek"), []byte("aad"))
			if err == nil {
				_, _, err = base.Unwrap(ctx, blob, []byte("aad"))
			}
			if err != nil {
				errs <- fmt.Errorf("wrap/unwrap during rotation: %w", err)
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	close(seen)
	for err := range errs {
		t.Fatal(err)
	}
	uniq := map[string]bool{}
	for v := range seen {
		if uniq[v] {
			t.Fatalf("two rotations created %s", v)
		}
		uniq[v] = true
	}
	vs := mustVersions(t, base)
	if len(vs) != 1+workers*each {
		t.Fatalf("%d versions, want %d", len(vs), 1+workers*each)
	}
	for i, v := range vs {
		if v.ID() != strconv.Itoa(i+1) {
			t.Fatalf("version %d is %s", i, v.Name)
		}
	}
	if p, _ := base.Primary(ctx); VersionID(p) != strconv.Itoa(1+workers*each) {
		t.Fatalf("primary = %s", p)
	}
}

func TestLocalDeterministicRand(t *testing.T) {
	// Rand and Now are injectable: two keyrings from the same stream hold the
	// same key material.
	seed := make([]byte, 4096)
	if _, err := rand.Read(seed); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := newLocal(t, LocalOptions{Dev: true, KeyID: "x", Rand: bytes.NewReader(seed)})
	b := newLocal(t, LocalOptions{Dev: true, KeyID: "x", Rand: bytes.NewReader(seed)})
	blob, _, err := a.Wrap(ctx, []byte("dek"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Unwrap(ctx, blob, nil); err != nil {
		t.Fatalf("same randomness, different keys: %v", err)
	}
}

func TestMasterKeyLoading(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, 32)
	b64 := base64.StdEncoding.EncodeToString(raw)
	dir := t.TempDir()

	for _, s := range []string{b64, b64 + "\n", base64.RawStdEncoding.EncodeToString(raw), base64.URLEncoding.EncodeToString(raw)} {
		k, err := ParseMasterKey(s)
		if err != nil || !k.Equal(MasterKey{b: raw}) {
			t.Fatalf("ParseMasterKey(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", "not base64!", base64.StdEncoding.EncodeToString(raw[:16])} {
		if _, err := ParseMasterKey(s); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("ParseMasterKey(%q) = %v, want ErrInvalidArgument", s, err)
		}
	}

	rawFile := filepath.Join(dir, "raw")
	os.WriteFile(rawFile, raw, 0o600)
	b64File := filepath.Join(dir, "b64")
	os.WriteFile(b64File, []byte(b64+"\n"), 0o600)
	for _, f := range []string{rawFile, b64File} {
		k, err := MasterKeyFromFile(f)
		if err != nil || !k.Equal(MasterKey{b: raw}) {
			t.Fatalf("MasterKeyFromFile(%s) = %v", f, err)
		}
	}

	t.Setenv(EnvMasterKey, b64)
	k, err := LoadMasterKey("")
	if err != nil || !k.Equal(MasterKey{b: raw}) {
		t.Fatalf("LoadMasterKey from env: %v", err)
	}
	if _, err := LoadMasterKey(rawFile); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("env and file both set: %v", err)
	}
	t.Setenv(EnvMasterKey, "")
	if k, err := LoadMasterKey(""); err != nil || !k.IsZero() {
		t.Fatalf("nothing set: %v, zero=%v", err, k.IsZero())
	}
	t.Setenv(EnvMasterKey, "garbage")
	if _, err := MasterKeyFromEnv(); err == nil || !strings.Contains(err.Error(), EnvMasterKey) {
		t.Fatalf("bad env: %v", err)
	}

	mk := MasterKey{b: raw}
	js, _ := json.Marshal(struct{ K MasterKey }{mk})
	for _, s := range []string{
		fmt.Sprint(mk), fmt.Sprintf("%v %+v %#v %s %x %X %q %d", mk, mk, mk, mk, mk, mk, mk, mk),
		fmt.Sprintf("%v", LocalOptions{MasterKey: mk}), fmt.Sprintf("%+v", &LocalOptions{MasterKey: mk}), string(js),
	} {
		if strings.Contains(s, "ab") || strings.Contains(s, "AB") || strings.Contains(s, "171") || strings.Contains(s, b64[:8]) {
			t.Fatalf("master key printed: %s", s)
		}
	}
}

func TestVersionState(t *testing.T) {
	for _, s := range []VersionState{StateEnabled, StateDisabled, StateDestroyScheduled, StateDestroyed} {
		got, err := ParseVersionState(s.String())
		if err != nil || got != s {
			t.Fatalf("round trip of %s: %v %v", s, got, err)
		}
	}
	if StateDestroyScheduled.String() != "DESTROY_SCHEDULED" {
		t.Fatal(StateDestroyScheduled.String())
	}
	if _, err := ParseVersionState("STATE_UNKNOWN"); err == nil {
		t.Fatal("parsed STATE_UNKNOWN")
	}
	if k, id, ok := SplitVersionName("local:x/cryptoKeyVersions/12"); !ok || k != "local:x" || id != "12" {
		t.Fatal(k, id, ok)
	}
}

// FuzzDecodeKeyring: no input panics the keyring decoder, and whatever it
// accepts is a valid keyring.
func FuzzDecodeKeyring(f *testing.F) {
	mk, _ := NewMasterKey(bytes.Repeat([]byte{9}, 32))
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &keyring{KeyID: "fuzz", Primary: 2, UpdateTime: now, Versions: []*ringEntry{
		{Version: 1, State: StateDestroyed, CreateTime: now, DestroyTime: &now},
		{Version: 2, State: StateEnabled, CreateTime: now, Key: make([]byte, 32)},
	}}
	for _, m := range []MasterKey{mk, {}} {
		data, err := encodeKeyring(r, m, rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, m := range []MasterKey{mk, {}} {
			got, kind, _ := decodeKeyring(data, m, true)
			if kind == nil {
				if err := got.validate(); err != nil {
					t.Fatalf("accepted an invalid keyring: %v", err)
				}
			}
		}
	})
}
