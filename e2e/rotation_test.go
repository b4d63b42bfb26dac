package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgcrypt/pgcrypt-proxy/internal/pgtest"
)

// TestKEKRotationUnderTraffic rotates the local keyring's KEK and runs a
// rotation pass with the CLI while clients read and write through the
// proxy: no client sees an error, every data key ends up wrapped under the
// new primary, and every value still reads back.
func TestKEKRotationUnderTraffic(t *testing.T) {
	e := startEncrypting(t)
	ctx := ctxFor(t, 2*time.Minute)
	dsn := e.p.DSN(pgtest.UserSCRAM, pgtest.Database)
	conn := connect(t, dsn)
	defer conn.Close(ctx)
	for i := 1; i <= 50; i++ {
		if _, err := conn.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn, email) VALUES ($1, $2, $3)`, i, "ssn-"+itoa(i), "u"+itoa(i)+"@x"); err != nil {
			t.Fatal(err)
		}
	}
	// The CLI reads the same configuration as the proxy.
	cfgFile := filepath.Join(t.TempDir(), "cli.yaml")
	data, err := yaml.Marshal(&e.p.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cli := func(args ...string) string {
		t.Helper()
		out, err := runBinary(ctx, []string{e.masterKey}, args...)
		if err != nil {
			t.Fatalf("pgcrypt-proxy %v: %v\n%s", args, err, out)
		}
		return out
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	var ops atomic.Int64
	errs := make(chan error, 4)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c, err := tryConnect(t, dsn)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(ctx)
			for i := 0; !stop.Load(); i++ {
				id := 1 + (i*7+w)%50
				var ssn string
				if err := c.QueryRow(ctx, `SELECT ssn FROM `+e.users+` WHERE email = $1`, "u"+itoa(id)+"@x").Scan(&ssn); err != nil || ssn != "ssn-"+itoa(id) {
					errs <- err
					return
				}
				if _, err := c.Exec(ctx, `INSERT INTO `+e.users+` (id, ssn, email) VALUES ($1, $2, $3)`, 1000+w*100000+i, "new", "n@x"); err != nil {
					errs <- err
					return
				}
				ops.Add(2)
			}
		}(w)
	}
	time.Sleep(300 * time.Millisecond)
	cli("kms", "local", "rotate", "--keyring", e.keyring)
	out := cli("rotate", "--config", cfgFile, "--json")
	var summary map[string]any
	if err := json.Unmarshal([]byte(out), &summary); err != nil {
		t.Fatalf("rotate --json: %v\n%s", err, out)
	}
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a client saw an error during rotation: %v", err)
	}
	if ops.Load() == 0 {
		t.Fatal("no traffic ran during the rotation")
	}
	var deks []map[string]any
	if err := json.Unmarshal([]byte(cli("keys", "list", "--json", "--config", cfgFile)), &deks); err != nil {
		t.Fatal(err)
	}
	if len(deks) == 0 {
		t.Fatal("no data keys listed")
	}
	for _, d := range deks {
		if v, _ := d["kek_version"].(string); filepath.Base(v) != "2" {
			t.Fatalf("data key %v still wrapped under %v after the pass\n%s", d["key"], v, out)
		}
	}
	for i := 1; i <= 50; i++ {
		var ssn string
		if err := conn.QueryRow(ctx, `SELECT ssn FROM `+e.users+` WHERE id = $1`, i).Scan(&ssn); err != nil || ssn != "ssn-"+itoa(i) {
			t.Fatalf("row %d after rotation: %q %v", i, ssn, err)
		}
	}
	t.Logf("%d operations through the proxy during the rotation; pass: %s", ops.Load(), out)
}

// runBinary runs the built pgcrypt-proxy with args, with env added to a
// clean environment, and returns its combined output.
func runBinary(ctx context.Context, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, proxyBin, args...)
	cmd.Env = append(cleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
