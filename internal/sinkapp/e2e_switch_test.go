package sinkapp

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

var (
	cdcOnce sync.Once
	cdcBin  string
	cdcErr  error
)

// cdcBinary builds cmd/cdc once for the tests that run the whole pipeline.
func cdcBinary(t *testing.T) string {
	t.Helper()
	cdcOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ferry-sink-cdc-")
		if err != nil {
			cdcErr = err
			return
		}
		cdcBin = filepath.Join(dir, "cdc")
		if out, err := exec.Command("go", "build", "-o", cdcBin, "../../cmd/cdc").CombinedOutput(); err != nil {
			cdcErr = err
			t.Logf("%s", out)
		}
	})
	if cdcErr != nil {
		t.Fatalf("build cdc: %v", cdcErr)
	}
	return cdcBin
}

// startCDC runs the cdc binary on e's database and broker, with extra
// arguments.
func (e *env) startCDC(extra ...string) {
	e.t.Helper()
	cfg, err := pgx.ParseConfig(e.db)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(cdcBinary(e.t), "run", "--postgres-url", e.db, "--brokers", strings.Join(e.kafka.Addrs, ","),
		"--slot", cfg.Database, "--topic-template", e.kafka.TopicPrefix+"outbox.{{.AggregateType}}", "--admin-addr", "off", "--log-format", "text")
	cmd.Args = append(cmd.Args, extra...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if e.t.Failed() || os.Getenv("FERRY_TEST_VERBOSE") != "" {
			e.t.Logf("cdc stderr:\n%s", stderr.String())
		}
	})
}

// write inserts outbox rows, one transaction per call.
func (e *env) write(rows ...[4]string) {
	e.t.Helper()
	err := pgx.BeginFunc(context.Background(), e.conn, func(tx pgx.Tx) error {
		for _, r := range rows { // tenant, event type, aggregate id, payload
			aggType, _, _ := strings.Cut(r[1], ".")
			if _, err := tx.Exec(context.Background(), `INSERT INTO public.outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
				VALUES ($1, $2, $3, $4, $5)`, r[0], aggType, r[2], r[1], r[3]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatalf("write outbox: %v", err)
	}
}

// The whole pipeline (cdc binary, sink, partnersim): a disabled tenant is
// rolled back; enabling it resyncs every object it has, at its latest
// state, through cdc and the tenant's lane, while another tenant flows.
// An object deleted while the tenant was off stays deleted.
func TestPipeline_EnableResyncsAndDisableRollsBack(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	e.startCDC()
	// Rows written before the slot exists are not streamed (that is what
	// backfill is for): wait until cdc streams from its slot.
	waitFor(t, time.Minute, "cdc streaming", func() bool {
		var ok bool
		_ = e.conn.QueryRow(ctx, `SELECT to_regclass('ferry.resync_request') IS NOT NULL
			AND EXISTS (SELECT 1 FROM pg_replication_slots WHERE database = current_database() AND active)`).Scan(&ok)
		return ok
	})
	t.Cleanup(func() {
		if t.Failed() { // what the database was doing, for a stuck pipeline
			rows, err := e.conn.Query(context.Background(), `SELECT pid, state, wait_event_type, wait_event, backend_type, left(query, 120)
				FROM pg_stat_activity WHERE pid <> pg_backend_pid()`)
			if err == nil {
				for rows.Next() {
					vals, _ := rows.Values()
					t.Logf("pg_stat_activity: %v", vals)
				}
				rows.Close()
			}
		}
	})
	cfg := e.shopConfig("")
	e.start("--config", cfg)
	for _, tenant := range []string{"acme", "globex"} {
		e.write([4]string{tenant, "product.created", "p1", product("lamp", 10)},
			[4]string{tenant, "product.created", "p2", product("desk", 20)},
			[4]string{tenant, "product.updated", "p1", product("lamp v2", 12)})
	}
	waitFor(t, time.Minute, "both tenants at the partner", func() bool {
		a, g := itemsOf(e.sim, "acme"), itemsOf(e.sim, "globex")
		return len(a) == 2 && len(g) == 2 && a["p1"].Fields["name"] == "lamp v2" && g["p1"].Fields["name"] == "lamp v2"
	})

	if code, out, errOut := e.runCmd("tenants", "disable", "--integration", "shop", "--tenant", "acme", "--config", cfg); code != 0 {
		t.Fatalf("disable: %s %s", out, errOut)
	}
	if n := len(itemsOf(e.sim, "acme")); n != 0 {
		t.Fatalf("%d acme items after the rollback", n)
	}
	// While acme is off: p1 changes, p2 is deleted, p3 is new. globex flows.
	e.write([4]string{"acme", "product.updated", "p1", product("lamp v3", 13)},
		[4]string{"acme", "product.deleted", "p2", `{}`},
		[4]string{"acme", "product.created", "p3", product("sofa", 30)},
		[4]string{"globex", "product.created", "p3", product("sofa", 30)})
	waitFor(t, time.Minute, "globex's p3 delivered", func() bool { return len(itemsOf(e.sim, "globex")) == 3 })
	waitFor(t, time.Minute, "acme's events recorded as skipped by the switch", func() bool {
		var n int
		_ = e.conn.QueryRow(ctx, `SELECT count(*) FROM ferry.delivery WHERE tenant_id = 'acme' AND state = 'skipped' AND reason LIKE 'skipped by switch%'`).Scan(&n)
		return n == 3
	})
	if n := len(itemsOf(e.sim, "acme")); n != 0 {
		t.Fatalf("a disabled tenant reached the partner: %d items", n)
	}

	code, out, errOut := e.runCmd("tenants", "enable", "--integration", "shop", "--tenant", "acme", "--wait", "20s")
	if code != 0 || !strings.Contains(out, "resync published 3 events") {
		t.Fatalf("enable: %d\n%s%s", code, out, errOut)
	}
	waitFor(t, time.Minute, "acme resynced", func() bool {
		a := itemsOf(e.sim, "acme")
		return len(a) == 2 && a["p1"].Fields["name"] == "lamp v3" && a["p3"].Fields["name"] == "sofa"
	})
	if _, ok := itemsOf(e.sim, "acme")["p2"]; ok {
		t.Fatal("p2, deleted while acme was off, came back")
	}
	// Each resync event is a delivery of its own, visible in the log.
	// (p2's resync is its delete: a recorded no-op, maybe still on its way.)
	waitFor(t, time.Minute, "three resync deliveries recorded", func() bool {
		var n int
		err := e.conn.QueryRow(ctx, `SELECT count(*) FROM ferry.delivery WHERE tenant_id = 'acme' AND event_id LIKE '%:resync:%' AND state = 'succeeded'`).Scan(&n)
		return err == nil && n == 3
	})
	// globex saw nothing of it.
	if len(itemsOf(e.sim, "globex")) != 3 {
		t.Fatal("globex changed")
	}
}

// A resync cdc cannot serve (an outbox.resync_queries query that does not
// run) is reported, not waited for forever: sink tenants enable exits
// non-zero with cdc's error and what to do, and sink tenants shows the
// resync as failed.
func TestEnableReportsAResyncThatFailed(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	bad := filepath.Join(t.TempDir(), "cdc.yaml")
	if err := os.WriteFile(bad, []byte(`outbox:
  resync_queries:
    - aggregate_type: product
      event_type: product.updated
      query: SELECT nope AS aggregate_id, '{}' AS payload FROM public.outbox WHERE tenant_id = $1
`), 0o600); err != nil {
		t.Fatal(err)
	}
	e.startCDC("--config", bad)
	waitFor(t, time.Minute, "cdc streaming", func() bool {
		var ok bool
		_ = e.conn.QueryRow(ctx, `SELECT to_regclass('ferry.resync_request') IS NOT NULL
			AND EXISTS (SELECT 1 FROM pg_replication_slots WHERE database = current_database() AND active)`).Scan(&ok)
		return ok
	})
	cfg := e.shopConfig("")
	code, out, errOut := e.runCmd("tenants", "enable", "--integration", "shop", "--tenant", "acme", "--wait", "30s", "--config", cfg)
	if code == 0 || !strings.Contains(errOut, "failed") || !strings.Contains(errOut, `column "nope" does not exist`) || !strings.Contains(errOut, "resync_queries") {
		t.Fatalf("enable with a resync cdc cannot serve: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = e.runCmd("tenants", "--integration", "shop", "--config", cfg)
	if code != 0 || !strings.Contains(out, "acme") || !strings.Contains(out, "failed") {
		t.Fatalf("tenants: %d\n%s%s", code, out, errOut)
	}
}
