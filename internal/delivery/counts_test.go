package delivery

import (
	"context"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// Counts of a small log count every delivery. Above CountedBelow rows it
// counts the deliveries that had a problem, through the delivery_problem
// index, so they stay exact and current, and estimates succeeded from
// the table's statistics, marked as an estimate.
func TestCountsOfALargeLogCountProblemsAndEstimateTheRest(t *testing.T) {
	l, ctx := newLog(t), context.Background()
	exec := func(sql string) {
		t.Helper()
		if _, err := l.pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	// add inserts n deliveries of an integration in a state; problem: with
	// problem_at set (every state but a first attempt's in_flight and
	// succeeded has it).
	add := func(integration, state string, n int, problem bool) {
		t.Helper()
		pa := "NULL"
		if problem {
			pa = "now()"
		}
		exec(`INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, state, problem_at)
			SELECT '` + integration + `', '` + state + `-' || g || '-' || random(), 't' || (g % 50), 'product.updated', '` + state + `', ` + pa + `
			FROM generate_series(1, ` + strconv.Itoa(n) + `) g`)
	}
	add("shop", "succeeded", 60000, false)
	add("shop", "succeeded", 5, true) // succeeded after a problem
	add("shop", "rejected", 2000, true)
	add("shop", "failed", 3, true)
	add("shop", "in_flight", 2, true) // a retry in flight
	add("crm", "succeeded", 10000, false)
	add("crm", "skipped", 4, true)
	// A sample of every row: the estimates below are then as close as
	// the statistics can make them.
	exec(`SET default_statistics_target = 1000; ANALYZE ferry.delivery`)

	read := func() map[string]Count {
		t.Helper()
		cs, _, err := l.Counts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]Count{}
		for _, c := range cs {
			m[c.Integration+"/"+string(c.State)] = c
		}
		return m
	}
	exact := map[string]int64{"shop/succeeded": 60005, "shop/rejected": 2000, "shop/failed": 3, "shop/in_flight": 2, "crm/succeeded": 10000, "crm/skipped": 4}
	got := read()
	for k, n := range exact {
		if got[k].Deliveries != n || got[k].Estimated {
			t.Errorf("small log: %s = %+v, want %d counted", k, got[k], n)
		}
	}
	if len(got) != len(exact) {
		t.Errorf("small log: %d counts, want %d: %v", len(got), len(exact), got)
	}

	old := CountedBelow
	CountedBelow = 1000
	t.Cleanup(func() { CountedBelow = old })
	add("shop", "rejected", 3, true) // after ANALYZE: counted all the same
	exact["shop/rejected"] = 2003
	got = read()
	for k, n := range exact {
		c := got[k]
		if c.State == Succeeded {
			// The statistics: the integration's share of the rows, less
			// its other states (which are more than the margin).
			if !c.Estimated || math.Abs(float64(c.Deliveries-n)) > 0.005*float64(n) {
				t.Errorf("large log: %s = %+v, want an estimate near %d", k, c, n)
			}
			continue
		}
		if c.Deliveries != n || c.Estimated {
			t.Errorf("large log: %s = %+v, want %d counted", k, c, n)
		}
	}
	if len(got) != len(exact) {
		t.Errorf("large log: %d counts, want %d: %v", len(got), len(exact), got)
	}

	// The problems are read through the partial index, not the table.
	tx, err := l.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	plan := strings.Join(pgtest.Texts(t, tx, `EXPLAIN `+countProblems), "\n")
	if !strings.Contains(plan, "delivery_problem") || strings.Contains(plan, "Seq Scan") {
		t.Fatalf("the problems are not counted through delivery_problem:\n%s", plan)
	}
}

// A failure listing with history holds one connection at a time: on a
// pool of one it returns instead of waiting for a second.
func TestFailuresWithHistoryOnAPoolOfOne(t *testing.T) {
	l, ctx := newLog(t), context.Background()
	a, err := l.Begin(ctx, "shop", ev, Source{Topic: "outbox.product"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Finish(ctx, a, Outcome{State: Rejected, Status: 422, Reason: "no"}); err != nil {
		t.Fatal(err)
	}
	cfg := l.pool.Config().Copy()
	cfg.MaxConns, cfg.MinConns = 1, 0
	one, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	lone, err := New(one, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lone.Close()
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rows, _, err := lone.Failures(tctx, Filter{History: true})
	if err != nil || len(rows) != 1 || len(rows[0].History) != 1 {
		t.Fatalf("failures with history on a pool of one: %v, %+v", err, rows)
	}
}
