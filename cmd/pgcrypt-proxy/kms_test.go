package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgcrypt/pgcrypt-proxy/kms"
)

// runCmd runs the CLI in-process.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// mustRun runs the CLI and fails unless it exits with want.
func mustRun(t *testing.T, want int, args ...string) (stdout, stderr string) {
	t.Helper()
	code, stdout, stderr := runCmd(t, args...)
	if code != want {
		t.Fatalf("pgcrypt-proxy %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, stdout, stderr)
	}
	return stdout, stderr
}

func testMasterKey(fill byte) string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, kms.MasterKeySize))
}

type kekVersionOut struct {
	Version   string  `json:"version"`
	Name      string  `json:"name"`
	State     string  `json:"state"`
	Primary   bool    `json:"primary"`
	Created   string  `json:"created"`
	Destroyed *string `json:"destroyed"`
}

func listVersions(t *testing.T, keyring string, extra ...string) []kekVersionOut {
	t.Helper()
	out, _ := mustRun(t, 0, append([]string{"kms", "local", "list", "--json", "--keyring", keyring}, extra...)...)
	var vs []kekVersionOut
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	return vs
}

// summary renders versions as "1:ENABLED* 2:DISABLED" (* marks the primary).
func summary(vs []kekVersionOut) string {
	var parts []string
	for _, v := range vs {
		s := v.Version + ":" + v.State
		if v.Primary {
			s += "*"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func TestKMSLocalFlow(t *testing.T) {
	t.Setenv(kms.EnvMasterKey, testMasterKey(1))
	t.Setenv("PGCRYPT_CONFIG", "")
	keyring := filepath.Join(t.TempDir(), "keyring.json")

	out, stderr := mustRun(t, 0, "kms", "local", "init", "--keyring", keyring, "--key-id", "test-1")
	if !strings.Contains(out, "local:test-1") || !strings.Contains(stderr, "losing it loses all encrypted data") {
		t.Fatalf("init: %q %q", out, stderr)
	}
	orig, err := os.ReadFile(keyring)
	if err != nil {
		t.Fatal(err)
	}
	_, stderr = mustRun(t, 1, "kms", "local", "init", "--keyring", keyring)
	if !strings.Contains(stderr, "already exists") {
		t.Fatalf("second init: %q", stderr)
	}
	if now, _ := os.ReadFile(keyring); !bytes.Equal(now, orig) {
		t.Fatal("second init changed the keyring")
	}
	vs := listVersions(t, keyring)
	if got := summary(vs); got != "1:ENABLED*" {
		t.Fatalf("after init: %s", got)
	}
	if vs[0].Name != "local:test-1/cryptoKeyVersions/1" || vs[0].Created == "" || vs[0].Destroyed != nil {
		t.Fatalf("list: %+v", vs[0])
	}

	out, _ = mustRun(t, 0, "kms", "local", "rotate", "--keyring", keyring)
	if !strings.Contains(out, "version 2 is now the primary") {
		t.Fatalf("rotate: %q", out)
	}
	mustRun(t, 0, "kms", "local", "rotate", "--keyring", keyring)
	mustRun(t, 0, "kms", "local", "disable", "1", "--keyring", keyring)
	mustRun(t, 0, "kms", "local", "disable", "--keyring", keyring, "local:test-1/cryptoKeyVersions/2")
	mustRun(t, 0, "kms", "local", "enable", "2", "--keyring", keyring)
	if got := summary(listVersions(t, keyring)); got != "1:DISABLED 2:ENABLED 3:ENABLED*" {
		t.Fatalf("after rotate, disable, enable: %s", got)
	}

	// destroy needs --yes, and never takes the primary.
	_, stderr = mustRun(t, 2, "kms", "local", "destroy", "1", "--keyring", keyring)
	if !strings.Contains(stderr, "--yes") {
		t.Fatalf("destroy without --yes: %q", stderr)
	}
	_, stderr = mustRun(t, 1, "kms", "local", "destroy", "3", "--yes", "--keyring", keyring)
	if !strings.Contains(stderr, "primary") {
		t.Fatalf("destroy primary: %q", stderr)
	}
	_, stderr = mustRun(t, 1, "kms", "local", "disable", "3", "--keyring", keyring)
	if !strings.Contains(stderr, "primary") {
		t.Fatalf("disable primary: %q", stderr)
	}
	if got := summary(listVersions(t, keyring)); got != "1:DISABLED 2:ENABLED 3:ENABLED*" {
		t.Fatalf("refused commands changed the keyring: %s", got)
	}
	_, stderr = mustRun(t, 0, "kms", "local", "destroy", "1", "--yes", "--keyring", keyring)
	if !strings.Contains(stderr, "not checked against a keystore") {
		t.Fatalf("destroy without --config: %q", stderr)
	}
	vs = listVersions(t, keyring)
	if got := summary(vs); got != "1:DESTROYED 2:ENABLED 3:ENABLED*" || vs[0].Destroyed == nil {
		t.Fatalf("after destroy: %s %+v", got, vs[0])
	}
	mustRun(t, 0, "kms", "local", "destroy", "1", "--yes", "--keyring", keyring) // idempotent
	_, stderr = mustRun(t, 1, "kms", "local", "enable", "1", "--keyring", keyring)
	if !strings.Contains(stderr, "destroyed") {
		t.Fatalf("enable destroyed: %q", stderr)
	}

	out, _ = mustRun(t, 0, "kms", "local", "list", "--keyring", keyring)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "VERSION") || !strings.Contains(lines[1], "DESTROYED") ||
		!strings.Contains(lines[3], "yes") {
		t.Fatalf("list table:\n%s", out)
	}

	// A wrong master key is named as such, and nothing is written.
	t.Setenv(kms.EnvMasterKey, testMasterKey(2))
	before, _ := os.ReadFile(keyring)
	_, stderr = mustRun(t, 1, "kms", "local", "rotate", "--keyring", keyring)
	if !strings.Contains(stderr, "master key does not decrypt it") {
		t.Fatalf("wrong master key: %q", stderr)
	}
	if after, _ := os.ReadFile(keyring); !bytes.Equal(before, after) {
		t.Fatal("keyring changed under a wrong master key")
	}

	// A master key file works, and setting both is refused.
	mkFile := filepath.Join(t.TempDir(), "master.key")
	if err := os.WriteFile(mkFile, []byte(testMasterKey(1)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr = mustRun(t, 1, "kms", "local", "list", "--keyring", keyring, "--master-key-file", mkFile)
	if !strings.Contains(stderr, "set only one") {
		t.Fatalf("both master keys: %q", stderr)
	}
	t.Setenv(kms.EnvMasterKey, "")
	if got := summary(listVersions(t, keyring, "--master-key-file", mkFile)); got != "1:DESTROYED 2:ENABLED 3:ENABLED*" {
		t.Fatalf("with master key file: %s", got)
	}
	_, stderr = mustRun(t, 1, "kms", "local", "list", "--keyring", keyring)
	if !strings.Contains(stderr, "no master key") {
		t.Fatalf("no master key: %q", stderr)
	}
}

func TestKMSLocalDev(t *testing.T) {
	t.Setenv(kms.EnvMasterKey, "")
	keyring := filepath.Join(t.TempDir(), "keyring.json")
	_, stderr := mustRun(t, 0, "kms", "local", "init", "--dev", "--keyring", keyring)
	if !strings.Contains(stderr, "NOT encrypted") {
		t.Fatalf("dev init: %q", stderr)
	}
	if got := summary(listVersions(t, keyring, "--dev")); got != "1:ENABLED*" {
		t.Fatalf("dev list: %s", got)
	}
	t.Setenv(kms.EnvMasterKey, testMasterKey(1))
	_, stderr = mustRun(t, 1, "kms", "local", "list", "--keyring", keyring)
	if !strings.Contains(stderr, "dev-mode") {
		t.Fatalf("dev keyring opened without --dev: %q", stderr)
	}
}

func TestKMSUsage(t *testing.T) {
	keyring := filepath.Join(t.TempDir(), "keyring.json")
	for _, args := range [][]string{
		{"kms"},
		{"kms", "cloud", "list"},
		{"kms", "local"},
		{"kms", "local", "bogus", "--keyring", keyring},
		{"kms", "local", "list"},
		{"kms", "local", "list", "--keyring", keyring, "extra"},
		{"kms", "local", "disable", "--keyring", keyring},
		{"kms", "local", "destroy", "1", "2", "--yes", "--keyring", keyring},
		{"kms", "local", "rotate", "--json", "--keyring", keyring},
		{"kms", "local", "list", "--nope", "--keyring", keyring},
	} {
		if code, _, _ := runCmd(t, args...); code != 2 {
			t.Errorf("pgcrypt-proxy %s: exit %d, want 2", strings.Join(args, " "), code)
		}
	}
	if code, out, _ := runCmd(t, "kms", "--help"); code != 0 || !strings.Contains(out, "LOSING THE MASTER KEY") {
		t.Errorf("kms --help: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(keyring); err == nil {
		t.Error("a usage error created the keyring")
	}
}
