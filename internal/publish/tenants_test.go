package publish

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/internal/pgdb"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// Idle tenants leave memory once their counts are in ferry.cdc_tenant;
// the table keeps the totals, and a tenant that comes back adds to them.
func TestTenantsEvictIdleTenantsAndKeepTotals(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := pgdb.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	clock := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tr := NewTenants()
	tr.now = func() time.Time { return clock }
	observe := func(tenants ...string) {
		for _, id := range tenants {
			tr.observe(id, clock)
		}
	}
	names := func() map[string]int64 {
		out := map[string]int64{}
		for _, s := range tr.Snapshot() {
			out[s.TenantID] = s.Events
		}
		return out
	}
	stored := func(id string) int64 {
		var n int64
		if err := conn.QueryRow(ctx, `SELECT events FROM ferry.cdc_tenant WHERE slot_name = 's' AND tenant_id = $1`, id).Scan(&n); err != nil {
			t.Fatalf("ferry.cdc_tenant %s: %v", id, err)
		}
		return n
	}

	observe("a", "a", "b")
	if err := tr.Flush(ctx, conn, "s"); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(11 * time.Minute)
	observe("c")
	if got := names(); len(got) != 3 {
		t.Fatalf("before the flush %v; want a, b and c", got)
	}
	if err := tr.Flush(ctx, conn, "s"); err != nil {
		t.Fatal(err)
	}
	if got := names(); len(got) != 1 || got["c"] != 1 {
		t.Fatalf("after the flush %v; want only the active c", got)
	}
	if stored("a") != 2 || stored("b") != 1 || stored("c") != 1 {
		t.Fatalf("stored a=%d b=%d c=%d; want 2, 1, 1", stored("a"), stored("b"), stored("c"))
	}
	// a comes back: counted on top of its stored total.
	observe("a")
	if err := tr.Flush(ctx, conn, "s"); err != nil {
		t.Fatal(err)
	}
	if stored("a") != 3 {
		t.Fatalf("a stored %d after coming back; want 3", stored("a"))
	}
	// A failed flush evicts nothing: the counts are not in the table.
	clock = clock.Add(time.Hour)
	observe("d")
	clock = clock.Add(time.Hour)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := tr.Flush(cctx, conn, "s"); err == nil {
		t.Fatal("flush on a cancelled context succeeded")
	}
	if _, ok := names()["d"]; !ok {
		t.Fatal("d evicted although its count never reached the table")
	}
}
