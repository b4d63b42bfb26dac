package policy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Mode is how a column's values are encrypted.
type Mode uint8

const (
	// Randomized encryption (AES-256-GCM): equal plaintexts give different
	// ciphertexts; the column can be stored and read, not searched.
	Randomized Mode = iota + 1
	// Deterministic encryption (AES-SIV): equal plaintexts give equal
	// ciphertexts under the same data key, so equality search works.
	Deterministic
)

func (m Mode) String() string {
	switch m {
	case Randomized:
		return "randomized"
	case Deterministic:
		return "deterministic"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Type is a plaintext type a policy column can declare: what clients see
// in RowDescription and ParameterDescription.
type Type struct {
	Name string // canonical PostgreSQL name: "int4", "text", …
	OID  uint32 // the type's OID in pg_type
	// Equality says whether equal values always have one canonical binary
	// encoding, which deterministic mode needs for equality search to
	// match what PostgreSQL would consider equal.
	Equality bool
}

// types are the declarable plaintext types, by canonical name.
var types = map[string]Type{
	"text":        {"text", 25, true},
	"varchar":     {"varchar", 1043, true},
	"int2":        {"int2", 21, true},
	"int4":        {"int4", 23, true},
	"int8":        {"int8", 20, true},
	"numeric":     {"numeric", 1700, false}, // 1.0 and 1.00 are equal but encode differently
	"float8":      {"float8", 701, false},   // 0 and -0, NaN
	"bool":        {"bool", 16, true},
	"date":        {"date", 1082, true},
	"timestamp":   {"timestamp", 1114, true},
	"timestamptz": {"timestamptz", 1184, true},
	"uuid":        {"uuid", 2950, true},
	"jsonb":       {"jsonb", 3802, false}, // key order and spacing are not canonical on the wire
	"bytea":       {"bytea", 17, true},
}

// typeAliases maps the SQL spellings to canonical names.
var typeAliases = map[string]string{
	"character varying":           "varchar",
	"smallint":                    "int2",
	"integer":                     "int4",
	"int":                         "int4",
	"bigint":                      "int8",
	"decimal":                     "numeric",
	"double precision":            "float8",
	"boolean":                     "bool",
	"timestamp without time zone": "timestamp",
	"timestamp with time zone":    "timestamptz",
}

// LookupType returns the declarable type with this name or alias.
func LookupType(name string) (Type, bool) {
	n := strings.ToLower(strings.TrimSpace(name))
	if a, ok := typeAliases[n]; ok {
		n = a
	}
	t, ok := types[n]
	return t, ok
}

// TypeByOID returns the declarable type with this OID.
func TypeByOID(oid uint32) (Type, bool) {
	for _, t := range types {
		if t.OID == oid {
			return t, true
		}
	}
	return Type{}, false
}

// TableName is a table as the policy names it. Schema is "" for an
// unqualified name, which matches the table in any schema.
type TableName struct {
	Schema string
	Name   string
}

func (t TableName) String() string {
	if t.Schema == "" {
		return quoteIdent(t.Name)
	}
	return quoteIdent(t.Schema) + "." + quoteIdent(t.Name)
}

// Key is one data-key family: every column that names it is encrypted with
// its current data key.
type Key struct {
	Name string
	KMS  string // name of the KMS backend in the config's kms section
}

// Column is one policy column. Immutable.
type Column struct {
	Table TableName
	Name  string
	Key   string
	Type  Type
	Mode  Mode
	// Migrating columns accept legacy plaintext on reads (told apart from
	// ciphertext by the envelope's magic and authentication) while every
	// new write is encrypted.
	Migrating bool
	line      int
	aad       []byte
}

// AAD is Identity as bytes, computed once: the associated data of every
// ciphertext of the column. Callers must not modify it.
func (c *Column) AAD() []byte {
	if c.aad == nil {
		return []byte(c.Identity())
	}
	return c.aad
}

// Identity is the column's identity bound into every ciphertext as
// associated data, so a value copied into another column fails to decrypt.
// It is schema.table.column with the schema as the policy wrote it ("" for
// an unqualified table); changing a table's policy name changes it.
func (c *Column) Identity() string {
	return c.Table.Schema + "." + c.Table.Name + "." + c.Name
}

func (c *Column) String() string { return c.Table.String() + "." + quoteIdent(c.Name) }

// Table is a policy table and its encrypted columns.
type Table struct {
	Name    TableName
	Columns map[string]*Column // by column name
}

// Column returns the named policy column or nil.
func (t *Table) Column(name string) *Column {
	if t == nil {
		return nil
	}
	return t.Columns[name]
}

// Policy is a loaded, validated policy. Immutable and safe for concurrent
// use; a reload builds a new one.
type Policy struct {
	Version int
	Keys    map[string]Key
	// tables by name; an unqualified policy table has Schema "".
	tables map[TableName]*Table
	// byName indexes tables by their bare name, for the fast "might this
	// statement touch a policy table" test and unqualified lookups.
	byName map[string][]*Table
	// Source is the file the policy was read from.
	Source string
	// Digest identifies the policy's content, for logs and metrics.
	Digest string
}

// Empty is a policy with no tables: the proxy is a pure pass-through.
func Empty() *Policy {
	return &Policy{Version: 1, Keys: map[string]Key{}, tables: map[TableName]*Table{}, byName: map[string][]*Table{}}
}

// Table finds the policy table for a table reference as a statement or the
// catalog names it. schema "" means the statement did not qualify the name;
// searchPath lists the schemas PostgreSQL would look in. A policy table
// without a schema matches the name in any schema.
func (p *Policy) Table(schema, name string, searchPath []string) *Table {
	cands := p.byName[name]
	if len(cands) == 0 {
		return nil
	}
	if schema != "" {
		if t := p.tables[TableName{schema, name}]; t != nil {
			return t
		}
		return p.tables[TableName{"", name}]
	}
	for _, s := range searchPath {
		if t := p.tables[TableName{s, name}]; t != nil {
			return t
		}
	}
	return p.tables[TableName{"", name}]
}

// Tables lists the policy's tables in a stable order.
func (p *Policy) Tables() []*Table {
	out := make([]*Table, 0, len(p.tables))
	for _, t := range p.tables {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name.String() < out[j].Name.String() })
	return out
}

// Columns lists every policy column in a stable order.
func (p *Policy) Columns() []*Column {
	var out []*Column
	for _, t := range p.Tables() {
		names := make([]string, 0, len(t.Columns))
		for n := range t.Columns {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			out = append(out, t.Columns[n])
		}
	}
	return out
}

// TableNames returns every bare table name in the policy, lower-cased as
// PostgreSQL folds unquoted identifiers, plus the names as written.
func (p *Policy) TableNames() []string {
	out := make([]string, 0, len(p.byName))
	for n := range p.byName {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// MayTouch reports whether sql could name a policy table: a cheap
// case-insensitive substring test that lets statements which cannot touch
// a policy table skip parsing. False positives are fine; false negatives
// are not, so any identifier escape (U&"…") counts as a possible match.
func (p *Policy) MayTouch(sql string) bool {
	if len(p.byName) == 0 {
		return false
	}
	lower := strings.ToLower(sql)
	if strings.Contains(lower, "u&\"") {
		return true
	}
	for n := range p.byName {
		if strings.Contains(lower, strings.ToLower(n)) {
			return true
		}
	}
	return false
}

// Load reads and validates a policy file.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return Parse(data, path)
}

// file is the YAML shape of a policy (DESIGN.md, "Contracts").
type file struct {
	Version int                `yaml:"version"`
	Keys    map[string]fileKey `yaml:"keys"`
	Tables  yaml.Node          `yaml:"tables"`
}

type fileKey struct {
	KMS string `yaml:"kms"`
}

type fileColumn struct {
	Key       string `yaml:"key"`
	Type      string `yaml:"type"`
	Mode      string `yaml:"mode"`
	Migrating bool   `yaml:"migrating"`
}

// Problem is one thing wrong with a policy, with its line.
type Problem struct {
	File string
	Line int
	Msg  string
}

func (p Problem) Error() string {
	if p.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
	}
	return fmt.Sprintf("%s: %s", p.File, p.Msg)
}

// Parse validates policy YAML; name is used in error messages. Every
// problem is reported at once, each with its line.
func Parse(data []byte, name string) (*Policy, error) {
	var probs []error
	bad := func(line int, format string, args ...any) {
		probs = append(probs, Problem{File: name, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if f.Version != 1 {
		bad(0, "version is %d; this proxy understands version: 1", f.Version)
	}
	p := Empty()
	p.Version = f.Version
	p.Source = name
	for k, v := range f.Keys {
		if v.KMS == "" {
			bad(0, "keys.%s: kms is required (the name of a kms backend in the config)", k)
		}
		p.Keys[k] = Key{Name: k, KMS: v.KMS}
	}
	if f.Tables.Kind != 0 && f.Tables.Kind != yaml.MappingNode {
		bad(f.Tables.Line, "tables must be a mapping of table name to columns")
	}
	for i := 0; i+1 < len(f.Tables.Content); i += 2 {
		tk, tv := f.Tables.Content[i], f.Tables.Content[i+1]
		tn, err := parseTableName(tk.Value)
		if err != nil {
			bad(tk.Line, "table %q: %v", tk.Value, err)
			continue
		}
		if p.tables[tn] != nil {
			bad(tk.Line, "table %s is listed twice", tn)
			continue
		}
		t := &Table{Name: tn, Columns: map[string]*Column{}}
		if tv.Kind != yaml.MappingNode || len(tv.Content) == 0 {
			bad(tv.Line, "table %s: list its encrypted columns", tn)
			continue
		}
		for j := 0; j+1 < len(tv.Content); j += 2 {
			ck, cv := tv.Content[j], tv.Content[j+1]
			cname, err := parseIdent(ck.Value)
			if err != nil {
				bad(ck.Line, "column %q of %s: %v", ck.Value, tn, err)
				continue
			}
			if t.Columns[cname] != nil {
				bad(ck.Line, "column %s.%s is listed twice", tn, quoteIdent(cname))
				continue
			}
			var fc fileColumn
			if cv.Kind == yaml.MappingNode {
				for k := 0; k+1 < len(cv.Content); k += 2 {
					switch f := cv.Content[k].Value; f {
					case "key", "type", "mode", "migrating":
					default:
						bad(cv.Content[k].Line, "column %s.%s: unknown field %q (key, type, mode, migrating)", tn, quoteIdent(cname), f)
					}
				}
			}
			if err := cv.Decode(&fc); err != nil {
				bad(cv.Line, "column %s.%s: %v", tn, quoteIdent(cname), err)
				continue
			}
			col := &Column{Table: tn, Name: cname, Key: fc.Key, Migrating: fc.Migrating, line: ck.Line}
			where := fmt.Sprintf("column %s.%s", tn, quoteIdent(cname))
			if fc.Key == "" {
				bad(cv.Line, "%s: key is required", where)
			} else if _, ok := p.Keys[fc.Key]; !ok {
				bad(cv.Line, "%s: key %q is not defined under keys:", where, fc.Key)
			}
			typ, ok := LookupType(fc.Type)
			switch {
			case fc.Type == "":
				bad(cv.Line, "%s: type is required (one of %s)", where, typeList())
			case !ok:
				bad(cv.Line, "%s: unknown type %q (one of %s)", where, fc.Type, typeList())
			}
			col.Type = typ
			switch strings.ToLower(fc.Mode) {
			case "", "randomized":
				col.Mode = Randomized
			case "deterministic":
				col.Mode = Deterministic
				if ok && !typ.Equality {
					bad(cv.Line, "%s: deterministic mode needs a type with one canonical encoding; %s has several for equal values (use randomized)", where, typ.Name)
				}
			default:
				bad(cv.Line, "%s: unknown mode %q (randomized or deterministic)", where, fc.Mode)
			}
			col.aad = []byte(col.Identity())
			t.Columns[cname] = col
		}
		p.tables[tn] = t
		p.byName[tn.Name] = append(p.byName[tn.Name], t)
	}
	for _, t := range p.tables {
		if t.Name.Schema == "" {
			for _, other := range p.byName[t.Name.Name] {
				if other != t {
					bad(0, "table %s is listed both unqualified and as %s; qualify every occurrence", t.Name, other.Name)
				}
			}
		}
	}
	if len(probs) > 0 {
		return nil, errors.Join(probs...)
	}
	p.Digest = digest(data)
	return p, nil
}

func typeList() string {
	names := make([]string, 0, len(types))
	for n := range types {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// parseTableName splits "schema.table" with SQL identifier rules: unquoted
// parts fold to lower case, "Quoted" parts keep their case and may hold
// dots.
func parseTableName(s string) (TableName, error) {
	parts, err := splitIdents(s)
	if err != nil {
		return TableName{}, err
	}
	switch len(parts) {
	case 1:
		return TableName{Name: parts[0]}, nil
	case 2:
		return TableName{Schema: parts[0], Name: parts[1]}, nil
	}
	return TableName{}, errors.New("use table or schema.table")
}

func parseIdent(s string) (string, error) {
	parts, err := splitIdents(s)
	if err != nil {
		return "", err
	}
	if len(parts) != 1 {
		return "", errors.New("a column name has no dots (quote it: '\"a.b\"')")
	}
	return parts[0], nil
}

func splitIdents(s string) ([]string, error) {
	var parts []string
	for i := 0; i <= len(s); {
		if i == len(s) {
			return nil, errors.New("empty name")
		}
		var part string
		if s[i] == '"' {
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, errors.New("unterminated quoted identifier")
				}
				if s[j] == '"' {
					if j+1 < len(s) && s[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			part = b.String()
			i = j + 1
		} else {
			j := strings.IndexByte(s[i:], '.')
			if j < 0 {
				j = len(s) - i
			}
			part = strings.ToLower(strings.TrimSpace(s[i : i+j]))
			if strings.ContainsAny(part, "\" \t") {
				return nil, fmt.Errorf("%q is not a plain identifier (quote it)", s[i:i+j])
			}
			i += j
		}
		if part == "" {
			return nil, errors.New("empty name")
		}
		parts = append(parts, part)
		if i == len(s) {
			return parts, nil
		}
		if s[i] != '.' {
			return nil, fmt.Errorf("unexpected %q after identifier", s[i])
		}
		i++
	}
	return parts, nil
}

// quoteIdent quotes an identifier when PostgreSQL would need it.
func quoteIdent(s string) string {
	plain := s != ""
	for i, r := range s {
		if !(r == '_' || (r >= 'a' && r <= 'z') || (i > 0 && r >= '0' && r <= '9')) {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
