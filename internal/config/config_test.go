package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAreValidAndSafe(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"), false, nil, map[string]string{
		"upstream.tls.ca_file": "/dev/null", "client_tls.cert_file": "/dev/null", "client_tls.key_file": "/dev/null",
	})
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if d.ClientTLS.Mode != "require" || d.Upstream.TLS.Mode != "verify-full" {
		t.Fatalf("defaults are not the safe ones: client %s upstream %s", d.ClientTLS.Mode, d.Upstream.TLS.Mode)
	}
}

func TestExampleConfigLoads(t *testing.T) {
	// The example names certificate files that do not exist here; every
	// other problem would be a defect in the example.
	_, err := Load("../../config.example.yaml", true, nil, nil)
	if err == nil {
		t.Fatal("example loaded without its certificate files")
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		if !strings.Contains(line, "cannot read") {
			t.Errorf("unexpected problem in config.example.yaml: %s", line)
		}
	}
}

func TestPrecedence(t *testing.T) {
	p := writeFile(t, "listen: 127.0.0.1:1111\nupstream: {address: 'db:5432', tls: {mode: disable}}\nclient_tls: {mode: disable}\nlog: {level: warn}\n")
	env := []string{"PGCRYPT_LISTEN=127.0.0.1:2222", "PGCRYPT_LOG_LEVEL=debug", "PGCRYPT_MASTER_KEY=ignored", "PGCRYPT_KMS_LOCAL_KEYRING=/k.json", "PGCRYPT_KMS_LOCAL_TYPE=local", "HOME=/root"}
	cfg, err := Load(p, true, env, map[string]string{"listen": "127.0.0.1:3333", "limits.idle_timeout": "5m"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:3333" {
		t.Errorf("flag did not win: listen %s", cfg.Listen)
	}
	if cfg.Log.Level != "debug" {
		t.Errorf("env did not override file: level %s", cfg.Log.Level)
	}
	if cfg.Upstream.Address != "db:5432" {
		t.Errorf("file value lost: %s", cfg.Upstream.Address)
	}
	if cfg.Limits.IdleTimeout.D() != 5*time.Minute {
		t.Errorf("idle timeout %s", cfg.Limits.IdleTimeout)
	}
	if k := cfg.KMS["local"]; k == nil || k.Keyring != "/k.json" || k.Type != "local" {
		t.Errorf("kms.local from env: %+v", k)
	}
}

func TestEveryProblemReportedWithLine(t *testing.T) {
	p := writeFile(t, `listen: nonsense
upstream:
  address: 127.0.0.1:5432
  tls: {mode: verify-all}
client_tls: {mode: require}
log: {level: loud, format: json}
kms:
  a: {type: vault}
`)
	_, err := Load(p, true, nil, nil)
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		p + ":1: listen", "upstream.tls.mode", "verify-all", "client_tls.cert_file", p + ":6: log.level", "kms.a.type",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %q:\n%s", want, msg)
		}
	}
}

func TestUnknownKeyRefused(t *testing.T) {
	p := writeFile(t, "listen: 127.0.0.1:1\nupstream: {adress: x}\n")
	_, err := Load(p, true, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "adress") || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("typo not reported with its line: %v", err)
	}
}

func TestMissingNamedFile(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), true, nil, nil); err == nil {
		t.Fatal("missing --config file accepted")
	}
}

func TestSecretRedaction(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:hunter2@h:5432/db":           "postgres://u:xxxxx@h:5432/db",
		"postgres://u@h/db?password=hunter2":       "postgres://u@h/db?password=xxxxx",
		"host=h user=u password=hunter2 dbname=db": "host=h user=u password=xxxxx dbname=db",
		"postgres://u@h/db":                        "postgres://u@h/db",
	} {
		s := Secret(in)
		for _, got := range []string{s.String(), s.GoString()} {
			if got != want || strings.Contains(got, "hunter2") {
				t.Errorf("%q redacted to %q, want %q", in, got, want)
			}
		}
		if s.Value() != in {
			t.Errorf("Value() changed the secret")
		}
	}
}

func TestBadValuesFromEnvAndFlags(t *testing.T) {
	_, err := Load("", false, []string{"PGCRYPT_LIMITS_MAX_CONNECTIONS=many"}, map[string]string{"rotation.interval": "soon", "nosuch": "1"})
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"PGCRYPT_LIMITS_MAX_CONNECTIONS", "--rotation.interval", "--nosuch"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}
