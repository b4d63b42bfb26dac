package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/pgcrypt/pgcrypt-proxy/migrate"
)

func TestMigrateProgressBar(t *testing.T) {
	var buf bytes.Buffer
	b := &migrateProgressBar{w: &buf}
	b.update(migrate.Progress{Table: "public.users", Done: 25_000, Total: 100_000, Rate: 50_000})
	b.update(migrate.Progress{Table: "public.users", Done: 50_000, Total: 100_000, Rate: 50_000}) // within 100ms: not drawn
	b.finish()
	out := buf.String()
	for _, want := range []string{"\r\033[Kpublic.users [", " 25% 25,000/100,000 rows  50,000 rows/s ETA 2s",
		" 50% 50,000/100,000 rows  50,000 rows/s ETA 1s\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("bar %q lacks %q", out, want)
		}
	}
	if strings.Count(out, "\r") != 2 {
		t.Errorf("bar drawn %d times, want 2 (first update, finish): %q", strings.Count(out, "\r"), out)
	}
}

func TestMigrateProgressLog(t *testing.T) {
	var buf bytes.Buffer
	log := zerolog.New(&buf)
	p := migrateProgressLog(log, time.Hour)
	p(migrate.Progress{Table: "public.users", Done: 1000, Total: 3000, Rate: 12_345.6})
	p(migrate.Progress{Table: "public.users", Done: 2000, Total: 3000}) // within the interval
	p(migrate.Progress{Table: "public.users", Done: 3000, Total: 3000}) // the end is always logged
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("progress log:\n%s", buf.String())
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if first["message"] != "encrypt-existing progress" || first["rows_done"] != 1000.0 || first["percent"] != 33.3 ||
		first["rows_per_second"] != 12345.0 || first["table"] != "public.users" {
		t.Fatalf("progress entry %v", first)
	}
}

func TestPrintMigrateReport(t *testing.T) {
	r := &migrate.Report{Table: "public.users", Complete: true, RowsScanned: 1234567, RowsUpdated: 1000, Elapsed: 2 * time.Second,
		RowsPerSecond: 617283.5, Columns: []*migrate.ColumnReport{{Column: "ssn", Key: "pii", Mode: "randomized", Plaintext: 10,
			OldKey: 3, Current: 5, Undecryptable: 2, Encrypted: 10, Reencrypted: 3, CurrentKeyID: 9,
			OldKeys: map[uint32]int64{4: 1, 2: 2}, Reasons: map[string]int64{"authentication_failed": 2}}}}
	var buf bytes.Buffer
	printMigrateReport(&buf, r)
	out := buf.String()
	for _, want := range []string{"public.users: 1,234,567 rows scanned in 2s (617,283 rows/s), 1,000 updated, 0 skipped; pass complete",
		"ssn: old-key values: 2 under data key id 2, 1 under data key id 4 (active: id 9)",
		"ssn: left alone: 2 authentication_failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
