// Package deploy_test checks that the example deployment in this directory
// loads as it is: the config and policy that docker-compose.yml mounts, with
// the environment that docker-compose.yml gives the proxy in each of its
// setups, and the demo's schema against the policy.
package deploy_test

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
	"gopkg.in/yaml.v3"

	"github.com/pgcrypt/pgcrypt-proxy/internal/config"
	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

type composeFile struct {
	Services map[string]struct {
		Profiles    []string          `yaml:"profiles"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Ports       []string          `yaml:"ports"`
		User        string            `yaml:"user"`
		ReadOnly    bool              `yaml:"read_only"`
	} `yaml:"services"`
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	b, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

// readEnvFile reads KEY=VALUE lines as docker compose does (no quotes used
// in ours).
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: bad line %q", path, line)
		}
		env[k] = v
	}
	return env
}

var interp = regexp.MustCompile(`\$\{([A-Z_]+)(?::([-?])([^}]*))?\}`)

// interpolate resolves ${VAR}, ${VAR:-default} and ${VAR:?message} as
// docker compose does.
func interpolate(t *testing.T, s string, env map[string]string) string {
	return interp.ReplaceAllStringFunc(s, func(m string) string {
		p := interp.FindStringSubmatch(m)
		v := env[p[1]]
		switch {
		case v != "":
			return v
		case p[2] == "-":
			return p[3]
		case p[2] == "?":
			t.Errorf("%s is required: %s", p[1], p[3])
		}
		return ""
	})
}

// etcDir builds what the proxy container sees at /etc/pgcrypt-proxy (its
// working directory): deploy/etc's config and policy, byte for byte, and
// stand-ins for the certificates that the operator or the demo supplies
// (config.Load checks that they exist).
func etcDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"pgcrypt-proxy.yaml", "policy.yaml"} {
		b, err := os.ReadFile(filepath.Join("etc", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "certs"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"upstream-ca.pem", "proxy.crt", "proxy.key"} {
		if err := os.WriteFile(filepath.Join(dir, "certs", f), []byte("stand-in\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestConfigAndPolicyLoad(t *testing.T) {
	compose := loadCompose(t)
	proxy, ok := compose.Services["proxy"]
	if !ok {
		t.Fatal("docker-compose.yml has no proxy service")
	}
	for _, setup := range []struct {
		name, envFile string
	}{
		{"default", "example.env"},
		{"demo", "demo/demo.env"},
	} {
		t.Run(setup.name, func(t *testing.T) {
			vars := readEnvFile(t, setup.envFile)
			var env []string
			for k, v := range proxy.Environment {
				env = append(env, k+"="+interpolate(t, v, vars))
			}
			t.Chdir(etcDir(t))
			cfg, err := config.Load(config.DefaultFile, true, env, nil)
			if err != nil {
				t.Fatalf("the config does not load with the %s environment:\n%v", setup.name, err)
			}
			if cfg.Upstream.Address != vars["UPSTREAM_ADDRESS"] {
				t.Errorf("upstream.address = %q, want UPSTREAM_ADDRESS %q", cfg.Upstream.Address, vars["UPSTREAM_ADDRESS"])
			}
			if cfg.Keystore.DSN.Value() != vars["KEYSTORE_DSN"] {
				t.Error("keystore.dsn is not KEYSTORE_DSN")
			}
			if cfg.Admin.Listen == "" || cfg.ClientTLS.Mode != "require" || cfg.Upstream.TLS.Mode != "verify-full" {
				t.Errorf("admin %q, client_tls %q, upstream tls %q: want admin on, require, verify-full",
					cfg.Admin.Listen, cfg.ClientTLS.Mode, cfg.Upstream.TLS.Mode)
			}
			pol, err := policy.Load(cfg.PolicyFile)
			if err != nil {
				t.Fatalf("policy_file %s does not load: %v", cfg.PolicyFile, err)
			}
			if len(pol.Columns()) == 0 {
				t.Error("the example policy encrypts nothing")
			}
			for _, k := range pol.Keys {
				if _, ok := cfg.KMS[k.KMS]; !ok {
					t.Errorf("policy key %q uses kms %q, which the config does not define", k.Name, k.KMS)
				}
			}
			if local := cfg.KMS["local"]; local == nil || local.MasterKeyFile != "/run/secrets/master_key" ||
				!strings.HasPrefix(local.Keyring, "/var/lib/pgcrypt-proxy/") {
				t.Errorf("kms.local = %+v: want the keyring in the state volume and the master key from the compose secret", local)
			}
		})
	}
}

// TestComposeEnvNamesConfigFields: config.Load ignores PGCRYPT_ variables
// that name no setting, so a typo in docker-compose.yml would be silent.
func TestComposeEnvNamesConfigFields(t *testing.T) {
	fields := map[string]bool{}
	for _, f := range config.Fields() {
		fields[config.EnvPrefix+strings.ToUpper(strings.ReplaceAll(f, ".", "_"))] = true
	}
	for name, svc := range loadCompose(t).Services {
		for k := range svc.Environment {
			if strings.HasPrefix(k, config.EnvPrefix) && !fields[k] {
				t.Errorf("service %s sets %s, which is no config setting", name, k)
			}
		}
	}
}

func TestComposeShape(t *testing.T) {
	c := loadCompose(t)
	proxy := c.Services["proxy"]
	if len(proxy.Profiles) != 0 {
		t.Errorf("proxy has profiles %v: it must run in the default setup", proxy.Profiles)
	}
	for _, demo := range []string{"postgres", "demo-init"} {
		if !slices.Equal(c.Services[demo].Profiles, []string{"demo"}) {
			t.Errorf("%s profiles = %v, want [demo]", demo, c.Services[demo].Profiles)
		}
	}
	if !slices.Contains(proxy.Volumes, "./deploy/etc:/etc/pgcrypt-proxy:ro") {
		t.Errorf("proxy does not mount deploy/etc read-only at its working directory: %v", proxy.Volumes)
	}
	for _, p := range proxy.Ports {
		if strings.HasSuffix(p, ":9187") && !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("admin port published beyond loopback: %s (it has no authentication)", p)
		}
	}
	if !proxy.ReadOnly || proxy.User != "" {
		t.Errorf("proxy read_only %v user %q: want a read-only root and the image's non-root user", proxy.ReadOnly, proxy.User)
	}
}

// TestDemoSchemaMatchesPolicy: every policy column exists in the demo's
// table and is bytea there, as the proxy requires.
func TestDemoSchemaMatchesPolicy(t *testing.T) {
	pol, err := policy.Load("etc/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sql, err := os.ReadFile("demo/initdb/01-users.sql")
	if err != nil {
		t.Fatal(err)
	}
	tree, err := pg.Parse(string(sql))
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]string{} // schema.table.column → last type name
	for _, st := range tree.Stmts {
		cs := st.Stmt.GetCreateStmt()
		if cs == nil {
			continue
		}
		for _, elt := range cs.TableElts {
			cd := elt.GetColumnDef()
			if cd == nil {
				continue
			}
			names := cd.TypeName.Names
			typ := names[len(names)-1].GetString_().Sval
			types[cs.Relation.Schemaname+"."+cs.Relation.Relname+"."+cd.Colname] = typ
		}
	}
	for _, col := range pol.Columns() {
		typ, ok := types[col.Identity()]
		if !ok {
			t.Errorf("policy column %s is not in the demo schema", col)
			continue
		}
		if typ != "bytea" {
			t.Errorf("demo column %s is %s; policy columns must be bytea", col, typ)
		}
	}
}
