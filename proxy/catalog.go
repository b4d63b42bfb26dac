package proxy

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcrypt/pgcrypt-proxy/policy"
)

// catalog maps the upstream database's table OIDs and attribute numbers to
// policy columns, so result columns are recognised from RowDescription. It
// is loaded on the session's own connection (one query, with the client's
// privileges, right after authentication and again after DDL on a policy
// table or a policy reload) and replaced whole, never modified.
type catalog struct {
	pol     *policy.Policy
	columns map[catKey]*policy.Column
	// searchPath is current_schemas(false) when the catalog was loaded.
	searchPath []string
	// tableColumns lists, for each policy table present in the database,
	// all its columns in attribute order (COPY without a column list).
	tableColumns map[[2]string][]string
	// tableTypes holds the type OIDs of tableColumns' columns.
	tableTypes map[[2]string][]uint32
	// tables are the policy tables found in the database.
	tables map[*policy.Table]bool
	// loaded is when the catalog was read.
	loaded time.Time
}

// knows reports whether the catalog found policy table t in the database.
func (c *catalog) knows(t policy.TableName) bool {
	for pt := range c.tables {
		if pt.Name == t {
			return true
		}
	}
	return false
}

// columnsOf returns the columns of the policy table as a statement names
// it (schema "" resolved through the search path).
func (c *catalog) columnsOf(schema, name string, searchPath []string) []string {
	cols, _ := c.columnTypesOf(schema, name, searchPath)
	return cols
}

// columnTypesOf is columnsOf with each column's type OID.
func (c *catalog) columnTypesOf(schema, name string, searchPath []string) ([]string, []uint32) {
	if c == nil {
		return nil, nil
	}
	if schema != "" {
		k := [2]string{schema, name}
		return c.tableColumns[k], c.tableTypes[k]
	}
	for _, s := range searchPath {
		k := [2]string{s, name}
		if cols, ok := c.tableColumns[k]; ok {
			return cols, c.tableTypes[k]
		}
	}
	return nil, nil
}

type catKey struct {
	table  uint32
	attnum int16
}

func (c *catalog) lookup(table uint32, attnum uint16) *policy.Column {
	if c == nil || table == 0 {
		return nil
	}
	return c.columns[catKey{table, int16(attnum)}]
}

// catalogQuery returns the query that loads the catalog for pol: one row
// per attribute of every table whose name a policy table has, and the
// session's search path.
func catalogQuery(pol *policy.Policy) string {
	var b strings.Builder
	b.WriteString(`SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname, a.atttypid, a.attgenerated <> '' FROM pg_catalog.pg_class c ` +
		`JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ` +
		`JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ` +
		`WHERE c.relkind IN ('r', 'p', 'f') AND c.relname = ANY (ARRAY[`)
	for i, n := range pol.TableNames() {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("'" + strings.ReplaceAll(n, "'", "''") + "'")
	}
	b.WriteString(`]::text[]) ORDER BY c.oid, a.attnum; SELECT pg_catalog.array_to_string(pg_catalog.current_schemas(false), ',')`)
	return b.String()
}

// catalogLoader accumulates the injected catalog query's replies.
type catalogLoader struct {
	pol      *policy.Policy
	cat      *catalog
	result   int // which statement's rows are arriving
	failed   error
	mismatch []string // policy columns that are not bytea in the database
}

func newCatalogLoader(pol *policy.Policy) *catalogLoader {
	return &catalogLoader{pol: pol, cat: &catalog{pol: pol, columns: map[catKey]*policy.Column{}, tableColumns: map[[2]string][]string{}, tableTypes: map[[2]string][]uint32{}, tables: map[*policy.Table]bool{}, loaded: time.Now()}}
}

// handle consumes one server message of the catalog query's reply and
// reports when its ReadyForQuery has arrived.
func (l *catalogLoader) handle(typ byte, msg []byte) (done bool) {
	switch typ {
	case 'D':
		var row pgproto3.DataRow
		if err := row.Decode(msg[5:]); err != nil {
			l.failed = err
			return false
		}
		if l.result == 0 && len(row.Values) == 7 {
			oid, err1 := strconv.ParseUint(string(row.Values[0]), 10, 32)
			attnum, err2 := strconv.ParseInt(string(row.Values[3]), 10, 16)
			typ, err3 := strconv.ParseUint(string(row.Values[5]), 10, 32)
			if err1 != nil || err2 != nil || err3 != nil {
				l.failed = fmt.Errorf("malformed catalog row")
				return false
			}
			t := l.pol.Table(string(row.Values[1]), string(row.Values[2]), nil)
			if t != nil {
				l.cat.tables[t] = true
			}
			// COPY without a column list leaves out generated columns.
			if t != nil && string(row.Values[6]) != "t" {
				k := [2]string{string(row.Values[1]), string(row.Values[2])}
				l.cat.tableColumns[k] = append(l.cat.tableColumns[k], string(row.Values[4]))
				l.cat.tableTypes[k] = append(l.cat.tableTypes[k], uint32(typ))
			}
			if col := t.Column(string(row.Values[4])); col != nil {
				l.cat.columns[catKey{uint32(oid), int16(attnum)}] = col
				if typ != byteaOID {
					l.mismatch = append(l.mismatch, col.String())
				}
			}
		} else if l.result == 1 && len(row.Values) == 1 {
			if sp := string(row.Values[0]); sp != "" {
				l.cat.searchPath = strings.Split(sp, ",")
			}
		}
	case 'C':
		l.result++
	case 'E':
		var er pgproto3.ErrorResponse
		_ = er.Decode(msg[5:])
		l.failed = fmt.Errorf("catalog query failed: %s (SQLSTATE %s)", er.Message, er.Code)
	case 'Z':
		return true
	}
	return false
}
