package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultFile is the config file read when --config is not given.
const DefaultFile = "pgcrypt-proxy.yaml"

// EnvPrefix prefixes every environment variable that sets a config field.
const EnvPrefix = "PGCRYPT_"

// Config is the whole configuration of pgcrypt-proxy. It is built once by
// Load and never modified afterwards.
type Config struct {
	Listen     string          `yaml:"listen"`
	Upstream   Upstream        `yaml:"upstream"`
	ClientTLS  ClientTLS       `yaml:"client_tls"`
	Keystore   Keystore        `yaml:"keystore"`
	KMS        map[string]*KMS `yaml:"kms"`
	PolicyFile string          `yaml:"policy_file"`
	// CatalogRefresh bounds how long a session trusts its catalog of policy
	// tables (their OIDs) before re-reading it for a statement on them.
	CatalogRefresh Duration `yaml:"catalog_refresh"`
	Rotation       Rotation `yaml:"rotation"`
	Admin          Admin    `yaml:"admin"`
	Log            Log      `yaml:"log"`
	Limits         Limits   `yaml:"limits"`
	Audit          Audit    `yaml:"audit"`
	ShutdownGrace  Duration `yaml:"shutdown_grace"`
	sourceFile     string
	sourceFileRead bool
}

// Upstream is the PostgreSQL server the proxy forwards to.
type Upstream struct {
	Address     string      `yaml:"address"`
	TLS         UpstreamTLS `yaml:"tls"`
	DialTimeout Duration    `yaml:"dial_timeout"`
}

// UpstreamTLS configures the proxy→PostgreSQL leg.
type UpstreamTLS struct {
	// Mode is disable, require, verify-ca or verify-full (libpq's meanings).
	Mode       string `yaml:"mode"`
	CAFile     string `yaml:"ca_file"`
	ServerName string `yaml:"server_name"`
	// CertFile and KeyFile are an optional client certificate for the
	// upstream (PostgreSQL cert authentication of the proxy itself).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// ClientTLS configures the client→proxy leg.
type ClientTLS struct {
	// Mode is disable, allow or require.
	Mode     string `yaml:"mode"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Keystore is where wrapped data keys live.
type Keystore struct {
	DSN    Secret `yaml:"dsn"`
	Schema string `yaml:"schema"`
}

// KMS is one named key-encryption-key backend.
type KMS struct {
	Type          string `yaml:"type"`
	Keyring       string `yaml:"keyring"`
	MasterKeyFile string `yaml:"master_key_file"`
	Dev           bool   `yaml:"dev"`
	Key           string `yaml:"key"`
	Endpoint      string `yaml:"endpoint"`
}

// Rotation configures the KEK rotation worker.
type Rotation struct {
	Interval Duration `yaml:"interval"`
	// RetireVersions lets serve's passes disable (and, with
	// DestroyRetiredVersions, destroy) KEK versions no DEK references;
	// false leaves that to a privileged `pgcrypt-proxy rotate` job.
	RetireVersions         bool     `yaml:"retire_versions"`
	DestroyRetiredVersions bool     `yaml:"destroy_retired_versions"`
	DestroyGrace           Duration `yaml:"destroy_grace"`
}

// Admin is the HTTP listener for /metrics, /healthz and /readyz.
type Admin struct {
	Listen string `yaml:"listen"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// Audit is the optional audit log: who read or wrote which policy
// columns, never values.
type Audit struct {
	// File is a path (appended, 0600, reopened on SIGHUP), "-" for stderr,
	// or "" for no audit log.
	File string `yaml:"file"`
	// Buffer is how many events may wait to be written; past it events
	// are dropped (and counted), never blocking the proxy.
	Buffer int `yaml:"buffer"`
}

// Limits bound what one client can hold.
type Limits struct {
	MaxConnections int      `yaml:"max_connections"`
	StartupTimeout Duration `yaml:"startup_timeout"`
	IdleTimeout    Duration `yaml:"idle_timeout"`
}

// Default returns the configuration used for every field that the file,
// the environment and the flags leave unset.
func Default() Config {
	return Config{
		Listen: "127.0.0.1:6432",
		Upstream: Upstream{
			Address:     "127.0.0.1:5432",
			TLS:         UpstreamTLS{Mode: "verify-full"},
			DialTimeout: Duration(10 * time.Second),
		},
		ClientTLS:  ClientTLS{Mode: "require"},
		Keystore:   Keystore{Schema: "pgcrypt"},
		PolicyFile: "",
		Rotation: Rotation{
			Interval:               Duration(time.Hour),
			RetireVersions:         true,
			DestroyRetiredVersions: true,
			DestroyGrace:           Duration(720 * time.Hour),
		},
		Admin:          Admin{Listen: "127.0.0.1:9187"},
		Log:            Log{Level: "info", Format: "json"},
		Limits:         Limits{MaxConnections: 1000, StartupTimeout: Duration(30 * time.Second)},
		ShutdownGrace:  Duration(30 * time.Second),
		CatalogRefresh: Duration(30 * time.Second),
	}
}

// Source says where the configuration came from, for logs.
func (c *Config) Source() string {
	if c.sourceFileRead {
		return c.sourceFile
	}
	return "defaults (no file " + c.sourceFile + ")"
}

// Duration is a time.Duration written as "1h30m" in YAML, flags and env.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML accepts Go duration strings ("90s", "720h").
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (use e.g. 30s, 1h)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// Secret is a string that never prints: connection strings carry passwords.
type Secret string

// Value returns the secret itself; call it only where the secret is used.
func (s Secret) Value() string { return string(s) }

// String redacts any password in a URL or key=value connection string.
func (s Secret) String() string { return RedactDSN(string(s)) }

// GoString redacts too, so %#v does not leak.
func (s Secret) GoString() string { return s.String() }

// RedactDSN replaces the password of a PostgreSQL connection string with
// "xxxxx".
func RedactDSN(dsn string) string {
	if dsn == "" {
		return ""
	}
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	fields := strings.Fields(dsn)
	for i, f := range fields {
		if strings.HasPrefix(f, "password=") {
			fields[i] = "password=xxxxx"
		}
	}
	return strings.Join(fields, " ")
}

// Load builds the configuration: defaults, then the YAML file (path may be
// empty for DefaultFile; a missing default file is not an error, a missing
// named file is), then PGCRYPT_* environment variables, then overrides
// (flag name → value, e.g. "upstream.tls.mode" → "disable"). Every problem is
// reported at once.
func Load(path string, explicit bool, env []string, overrides map[string]string) (*Config, error) {
	cfg := Default()
	if path == "" {
		path = DefaultFile
	}
	cfg.sourceFile = path
	lines := map[string]int{}
	var errs []error

	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		cfg.sourceFileRead = true
		if err := decodeFile(data, &cfg, lines); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	case errors.Is(err, os.ErrNotExist) && !explicit:
	default:
		errs = append(errs, fmt.Errorf("config: %w", err))
	}

	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, EnvPrefix) {
			continue
		}
		name, ok := envToField(&cfg, strings.TrimPrefix(k, EnvPrefix))
		if !ok {
			continue // PGCRYPT_MASTER_KEY and friends are not config fields
		}
		if err := Set(&cfg, name, v); err != nil {
			errs = append(errs, fmt.Errorf("env %s: %w", k, err))
		}
	}
	keys := make([]string, 0, len(overrides))
	for k := range overrides {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := Set(&cfg, k, overrides[k]); err != nil {
			errs = append(errs, fmt.Errorf("flag --%s: %w", k, err))
		}
	}
	if len(errs) == 0 {
		errs = append(errs, cfg.validate(path, lines)...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &cfg, nil
}

func decodeFile(data []byte, cfg *Config, lines map[string]int) error {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		return err
	}
	if len(root.Content) == 0 {
		return nil
	}
	recordLines(root.Content[0], "", lines)
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(cfg); err != nil {
		return err
	}
	return nil
}

func recordLines(n *yaml.Node, prefix string, lines map[string]int) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p := k.Value
		if prefix != "" {
			p = prefix + "." + k.Value
		}
		lines[p] = k.Line
		recordLines(v, p, lines)
	}
}

// Fields lists every settable field name ("upstream.tls.mode"), for flags
// and help. Map-valued sections (kms) are listed as "kms.NAME.field".
func Fields() []string {
	var out []string
	walkFields(reflect.TypeOf(Config{}), "", func(name string, _ reflect.Type) { out = append(out, name) })
	return out
}

func walkFields(t reflect.Type, prefix string, fn func(string, reflect.Type)) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		name := tag
		if prefix != "" {
			name = prefix + "." + tag
		}
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Map:
			walkFields(ft.Elem().Elem(), name+".NAME", fn)
		case ft.Kind() == reflect.Struct && ft != reflect.TypeOf(Duration(0)):
			walkFields(ft, name, fn)
		default:
			fn(name, ft)
		}
	}
}

// envToField maps UPSTREAM_TLS_MODE to upstream.tls.mode, and
// KMS_LOCAL_KEYRING to kms.local.keyring.
func envToField(cfg *Config, suffix string) (string, bool) {
	suffix = strings.ToLower(suffix)
	for _, f := range Fields() {
		if strings.Contains(f, ".NAME.") {
			pre, post, _ := strings.Cut(f, ".NAME.")
			p := strings.ReplaceAll(pre, ".", "_") + "_"
			s := "_" + strings.ReplaceAll(post, ".", "_")
			if strings.HasPrefix(suffix, p) && strings.HasSuffix(suffix, s) && len(suffix) > len(p)+len(s) {
				return pre + "." + suffix[len(p):len(suffix)-len(s)] + "." + post, true
			}
			continue
		}
		if strings.ReplaceAll(f, ".", "_") == suffix {
			return f, true
		}
	}
	return "", false
}

// Set assigns one field by its dotted name, parsing value for the field's
// type.
func Set(cfg *Config, name, value string) error {
	parts := strings.Split(name, ".")
	v := reflect.ValueOf(cfg).Elem()
	for i := 0; i < len(parts); i++ {
		if v.Kind() == reflect.Map {
			if v.IsNil() {
				v.Set(reflect.MakeMap(v.Type()))
			}
			key := reflect.ValueOf(parts[i])
			elem := v.MapIndex(key)
			if !elem.IsValid() || elem.IsNil() {
				elem = reflect.New(v.Type().Elem().Elem())
				v.SetMapIndex(key, elem)
			}
			v = elem.Elem()
			continue
		}
		f, ok := fieldByTag(v, parts[i])
		if !ok {
			return fmt.Errorf("unknown setting %q", name)
		}
		v = f
	}
	switch v.Interface().(type) {
	case Duration:
		d, err := time.ParseDuration(value)
		if err != nil {
			return fmt.Errorf("%q is not a duration (use e.g. 30s, 1h)", value)
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(value)
	case reflect.Bool:
		b, err := strconv.ParseBool(value)
		if err != nil {
			return fmt.Errorf("%q is not true or false", value)
		}
		v.SetBool(b)
	case reflect.Int:
		n, err := strconv.Atoi(value)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", value)
		}
		v.SetInt(int64(n))
	default:
		return fmt.Errorf("%q is a section, not a setting", name)
	}
	return nil
}

func fieldByTag(v reflect.Value, tag string) (reflect.Value, bool) {
	if v.Kind() != reflect.Struct {
		return reflect.Value{}, false
	}
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		if strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0] == tag {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

func (c *Config) validate(file string, lines map[string]int) []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		where := field
		if l, ok := lines[field]; ok {
			where = fmt.Sprintf("%s:%d: %s", file, l, field)
		}
		errs = append(errs, fmt.Errorf("%s: %s", where, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(field, addr string, required bool) {
		if addr == "" {
			if required {
				bad(field, "is required (host:port)")
			}
			return
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(field, "%q is not host:port", addr)
		}
	}
	checkAddr("listen", c.Listen, true)
	checkAddr("upstream.address", c.Upstream.Address, true)
	checkAddr("admin.listen", c.Admin.Listen, false)

	switch c.Upstream.TLS.Mode {
	case "disable", "require":
	case "verify-ca", "verify-full":
		if c.Upstream.TLS.CAFile == "" {
			bad("upstream.tls.ca_file", "is required when upstream.tls.mode is %s", c.Upstream.TLS.Mode)
		}
	default:
		bad("upstream.tls.mode", "%q is not one of disable, require, verify-ca, verify-full", c.Upstream.TLS.Mode)
	}
	if (c.Upstream.TLS.CertFile == "") != (c.Upstream.TLS.KeyFile == "") {
		bad("upstream.tls.cert_file", "cert_file and key_file go together")
	}
	switch c.ClientTLS.Mode {
	case "disable":
	case "allow", "require":
		if c.ClientTLS.CertFile == "" {
			bad("client_tls.cert_file", "is required when client_tls.mode is %s", c.ClientTLS.Mode)
		}
		if c.ClientTLS.KeyFile == "" {
			bad("client_tls.key_file", "is required when client_tls.mode is %s", c.ClientTLS.Mode)
		}
	default:
		bad("client_tls.mode", "%q is not one of disable, allow, require", c.ClientTLS.Mode)
	}
	for _, f := range []struct{ field, path string }{
		{"upstream.tls.ca_file", c.Upstream.TLS.CAFile},
		{"upstream.tls.cert_file", c.Upstream.TLS.CertFile},
		{"upstream.tls.key_file", c.Upstream.TLS.KeyFile},
		{"client_tls.cert_file", c.ClientTLS.CertFile},
		{"client_tls.key_file", c.ClientTLS.KeyFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			bad(f.field, "cannot read %s: %v", f.path, errors.Unwrap(err))
		}
	}
	names := make([]string, 0, len(c.KMS))
	for n := range c.KMS {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		k := c.KMS[n]
		field := "kms." + n
		if k == nil {
			bad(field, "is empty")
			continue
		}
		switch k.Type {
		case "local":
			if k.Keyring == "" {
				bad(field+".keyring", "is required for a local KMS")
			}
		case "gcp":
			if !strings.HasPrefix(k.Key, "projects/") || !strings.Contains(k.Key, "/cryptoKeys/") {
				bad(field+".key", "%q is not a Cloud KMS key name (projects/P/locations/L/keyRings/R/cryptoKeys/K)", k.Key)
			}
		default:
			bad(field+".type", "%q is not one of local, gcp", k.Type)
		}
	}
	if c.Keystore.Schema == "" || !isIdent(c.Keystore.Schema) {
		bad("keystore.schema", "%q is not a plain SQL identifier", c.Keystore.Schema)
	}
	if c.Rotation.Interval.D() < time.Minute {
		bad("rotation.interval", "%s is shorter than 1m", c.Rotation.Interval)
	}
	if c.Rotation.DestroyGrace.D() < 0 {
		bad("rotation.destroy_grace", "must not be negative")
	}
	switch c.Log.Level {
	case "trace", "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not one of trace, debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		bad("log.format", "%q is not one of json, console", c.Log.Format)
	}
	if c.Audit.Buffer < 0 {
		bad("audit.buffer", "must not be negative")
	}
	if c.Limits.MaxConnections < 1 {
		bad("limits.max_connections", "must be at least 1")
	}
	if c.Limits.StartupTimeout.D() <= 0 {
		bad("limits.startup_timeout", "must be positive")
	}
	if c.Limits.IdleTimeout.D() < 0 {
		bad("limits.idle_timeout", "must not be negative (0 means no limit)")
	}
	if c.Upstream.DialTimeout.D() <= 0 {
		bad("upstream.dial_timeout", "must be positive")
	}
	if c.CatalogRefresh.D() <= 0 {
		bad("catalog_refresh", "must be positive")
	}
	if c.ShutdownGrace.D() < 0 {
		bad("shutdown_grace", "must not be negative")
	}
	return errs
}

func isIdent(s string) bool {
	for i, r := range s {
		switch {
		case r == '_' || (r >= 'a' && r <= 'z'):
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return s != ""
}
