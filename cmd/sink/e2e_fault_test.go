package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// When a new owner cannot load a partition's parked records (here: the
// table is locked, so the load hits postgres_statement_timeout), the
// partition stays paused: the parked tenant's newer records never
// overtake its parked ones, and everything drains in order once the
// records load.
func TestGuarantee2_UnloadableParkedRecordsKeepThePartitionPaused(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	e.produce("bad", "bad-1", "product.updated", `{"n":1}`)
	e.sim.AddRule(partnersim.Rule{Tenant: "bad", Status: 503, Reason: "down for this tenant"})
	for n := 2; n <= 10; n++ {
		e.produce("bad", fmt.Sprintf("bad-%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
	}
	cfg := e.config("    park_after: 100ms\n    breaker: {failures: 100, window: 100}\n")
	stop := e.start("--config", cfg, "--postgres-statement-timeout", "300ms")
	waitFor(t, time.Minute, "the failing tenant parked", func() bool {
		var parked int
		err := e.conn.QueryRow(ctx, `SELECT count(*) FROM ferry.parked_event WHERE tenant_id = 'bad'`).Scan(&parked)
		return err == nil && parked == 10
	})
	if code, stderr := stop(); code != 0 {
		t.Fatalf("sink exited %d: %s", code, stderr)
	}

	// The parked queue cannot be read while this transaction holds it
	// (on a connection of its own: pg_stat_activity below is read once
	// per transaction).
	locker, err := pgx.Connect(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(ctx)
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // released below, or with the test
	if _, err := tx.Exec(ctx, `LOCK TABLE ferry.parked_event IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	e.sim.ClearRules()
	for n := 11; n <= 20; n++ {
		e.produce("bad", fmt.Sprintf("bad-%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
	}
	e.start("--config", cfg, "--postgres-statement-timeout", "300ms")
	waitFor(t, time.Minute, "the failed load to be reported", func() bool {
		return strings.Contains(e.logs.String(), "could not load parked records")
	})
	// Each load waits for the lock until its statement times out. Seeing
	// more loads than partitions means the background loader is
	// retrying: by then an unpaused partition would long have delivered
	// the newer records.
	loads := map[time.Time]bool{}
	waitFor(t, time.Minute, "the loader to retry", func() bool {
		rows, err := e.conn.Query(ctx, `SELECT query_start FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FROM ferry.parked_event%'`)
		if err != nil {
			return false
		}
		defer rows.Close()
		for rows.Next() {
			var at time.Time
			if rows.Scan(&at) == nil {
				loads[at] = true
			}
		}
		return len(loads) > 6
	})
	if got := e.delivered()["bad"]; len(got) != 0 {
		t.Fatalf("the parked tenant's newer records overtook its parked ones: applied %v", got)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the parked tenant to drain", func() bool { return len(e.delivered()["bad"]) >= 20 })
	checkInOrder(t, map[string][]int{"bad": e.delivered()["bad"]}, map[string]int{"bad": 20})
}
