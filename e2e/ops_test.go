package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// scrape returns the proxy's metrics as name{labels} → value.
func scrape(t *testing.T, p *proxyProc) map[string]float64 {
	t.Helper()
	body := httpGet(t, "http://"+p.cfg.Admin.Listen+"/metrics", 200)
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func httpGet(t *testing.T, url string, want int) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if want != 0 && resp.StatusCode != want {
		t.Fatalf("GET %s: %d, want %d\n%s", url, resp.StatusCode, want, body)
	}
	return string(body)
}

func statusOf(url string) int {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestMetricsHealthAndAudit(t *testing.T) {
	c := pgtest.New(t, pgtest.Options{})
	auditFile := filepath.Join(t.TempDir(), "audit.jsonl")
	e := startEncryptingOn(t, c, func(pc *proxyConfig) { pc.Audit.File = auditFile })
	const marker = "AUDIT-MARKER-41"
	ctx := ctxFor(t, 60*time.Second)
	conn := connect(t, e.p.DSN(pgtest.UserSCRAM, pgtest.Database))
	if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn, email) VALUES ($1, $2, $3)`, 1, marker+"-ssn", marker+"@x"); err != nil {
		t.Fatal(err)
	}
	var s string
	if err := conn.QueryRow(ctx, `SELECT ssn FROM `+e.users+` WHERE email = $1`, marker+"@x").Scan(&s); err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Exec(ctx, `SELECT id FROM `+e.users+` WHERE ssn = $1`, marker)
	_, _ = conn.Exec(ctx, `SELECT 1/0`)
	conn.Close(ctx)

	httpGet(t, "http://"+e.p.cfg.Admin.Listen+"/healthz", 200)
	httpGet(t, "http://"+e.p.cfg.Admin.Listen+"/readyz", 200)
	m := scrape(t, e.p)
	for name, min := range map[string]float64{
		`pgcrypt_statements_total{outcome="encrypted"}`: 2,
		`pgcrypt_statements_total{outcome="refused"}`:   1,
		`pgcrypt_values_encrypted_total`:                2,
		`pgcrypt_values_decrypted_total`:                1,
		`pgcrypt_dek_cache_hits_total`:                  1,
		`pgcrypt_dek_cache_misses_total`:                1,
	} {
		if m[name] < min {
			t.Errorf("%s = %v, want ≥ %v", name, m[name], min)
		}
	}
	var found bool
	for k, v := range m {
		if strings.HasPrefix(k, "pgcrypt_connections_accepted_total") && v >= 1 {
			found = true
		}
		if strings.Contains(k, marker) {
			t.Errorf("a metric carries the marker: %s", k)
		}
	}
	if !found {
		t.Errorf("no accepted connections counted: %v", m)
	}
	body := httpGet(t, "http://"+e.p.cfg.Admin.Listen+"/metrics", 200)
	if strings.Contains(body, marker) {
		t.Error("/metrics contains the marker")
	}

	// Readiness follows the upstream.
	if err := c.StopServer(ctx); err != nil {
		t.Fatal(err)
	}
	if !eventually(15*time.Second, func() bool { return statusOf("http://"+e.p.cfg.Admin.Listen+"/readyz") == 503 }) {
		t.Fatal("/readyz did not go unready with the upstream down")
	}
	if err := c.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	if !eventually(15*time.Second, func() bool { return statusOf("http://"+e.p.cfg.Admin.Listen+"/readyz") == 200 }) {
		t.Fatal("/readyz did not come back")
	}

	// The audit log records the read, the write and the refusal, without
	// values.
	e.p.stop()
	data, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), marker) {
		t.Fatalf("the audit log contains the marker:\n%s", data)
	}
	kinds := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		kind, _ := ev["kind"].(string)
		kinds[kind] = true
		if kind == "read" && !strings.Contains(line, "public."+e.users+".ssn") {
			t.Errorf("read event without its column: %s", line)
		}
		if kind == "refused" && ev["statement"] != "select" {
			t.Errorf("refused event without its statement kind: %s", line)
		}
		if ev["user"] != pgtest.UserSCRAM {
			t.Errorf("audit event without the user: %s", line)
		}
	}
	for _, k := range []string{"read", "write", "refused"} {
		if !kinds[k] {
			t.Errorf("no %s event in the audit log:\n%s", k, data)
		}
	}
}

// TestSoak opens and closes 2,000 connections (some mid-query, some during
// startup) while queries run, then checks the proxy's goroutines and heap
// are back near their baseline.
func TestSoak(t *testing.T) {
	e := startEncrypting(t, func(pc *proxyConfig) { pc.Log.Level = "info" })
	dsn := e.p.DSN(pgtest.UserSCRAM, pgtest.Database)
	ctx := ctxFor(t, 4*time.Minute)
	// Warm up, then take the baseline.
	for i := 0; i < 20; i++ {
		connect(t, dsn).Close(ctx)
	}
	time.Sleep(500 * time.Millisecond)
	base := scrape(t, e.p)
	load := healthyLoad(t, dsn)
	var wg sync.WaitGroup
	errs := make(chan error, 2000)
	sem := make(chan struct{}, 32)
	for i := 0; i < 2000; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			conn, err := tryConnect(t, dsn)
			if err != nil {
				errs <- err
				return
			}
			switch i % 4 {
			case 0:
				_, err = conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn) VALUES ($1, $2)`, i+1000, fmt.Sprint("soak-", i))
			case 1:
				var n int
				err = conn.QueryRow(ctx, `SELECT count(*) FROM `+e.users).Scan(&n)
			case 2:
				// Vanish without Terminate.
				conn.PgConn().Conn().Close()
			}
			if err != nil {
				errs <- err
			}
			conn.Close(ctx)
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("soak: %v", err)
		break
	}
	if n, err := load.stop(); err != nil || n == 0 {
		t.Fatalf("concurrent load: %d queries, %v", n, err)
	}
	var after map[string]float64
	ok := eventually(20*time.Second, func() bool {
		after = scrape(t, e.p)
		return after["go_goroutines"] <= base["go_goroutines"]+5
	})
	if !ok {
		t.Errorf("goroutines: %v before, %v after 2000 connections", base["go_goroutines"], after["go_goroutines"])
	}
	if after["go_memstats_heap_inuse_bytes"] > base["go_memstats_heap_inuse_bytes"]+32<<20 {
		t.Errorf("heap in use grew from %.0f to %.0f bytes", base["go_memstats_heap_inuse_bytes"], after["go_memstats_heap_inuse_bytes"])
	}
	t.Logf("goroutines %v → %v; heap in use %.1f → %.1f MiB", base["go_goroutines"], after["go_goroutines"],
		base["go_memstats_heap_inuse_bytes"]/(1<<20), after["go_memstats_heap_inuse_bytes"]/(1<<20))
	_ = context.Background
}
