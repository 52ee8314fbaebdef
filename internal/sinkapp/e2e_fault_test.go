package sinkapp

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/internal/pgtest"
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
		return e.parkedCount("bad") == 10
	})
	if code, stderr := stop(); code != 0 {
		t.Fatalf("sink exited %d: %s", code, stderr)
	}

	// The parked queue cannot be read while this transaction holds it
	// (on a connection of its own: pg_stat_activity below is read once
	// per transaction).
	tx := e.holdInTx(`LOCK TABLE ferry.parked_event IN ACCESS EXCLUSIVE MODE`)
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

// readyz returns the admin server's readiness status code and body.
func readyz(addr string) (int, string) {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body) // a partial body reads as a different reason
	return resp.StatusCode, string(b)
}

// A sink rides through its delivery-log database going away: down at
// start (it waits, not ready), stopped mid-run (lanes pause without
// calling the partner, counting an attempt or opening the breaker; one
// log line per outage; not ready meanwhile) and crash-restarted. It
// never exits, and every event arrives once, in order.
func TestGuarantee7_SinkRidesThroughPostgresOutages(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	e := newEnv(t, partnersim.Config{})
	if e.db, err = pgtest.CreateDatabase(ctx, c.URL, "ride"); err != nil {
		t.Fatal(err)
	}
	query := func(sql string, out ...any) error {
		conn, err := pgx.Connect(ctx, e.db)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		return conn.QueryRow(ctx, sql).Scan(out...)
	}
	admin := freeAddr(t)
	cfg := e.config("")
	next := 1
	produce := func(n int) {
		for ; n > 0; n-- {
			e.produce("acme", fmt.Sprintf("acme-%d", next), "product.updated", fmt.Sprintf(`{"n":%d}`, next))
			next++
		}
	}
	reconnects := func() float64 { return metric(admin, `ferry_sink_reconnects_total{target="postgres"}`) }

	// Down at start: the sink waits, not ready, and starts once it is up.
	if err := c.Down("fast"); err != nil {
		t.Fatal(err)
	}
	produce(5)
	stop := e.start("--config", cfg, "--admin-addr", admin)
	waitFor(t, time.Minute, "not ready while postgres is down at start", func() bool {
		code, why := readyz(admin)
		return code == http.StatusServiceUnavailable && strings.Contains(why, "postgres") && reconnects() >= 2
	})
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	// Recorded, not only applied: a stop between the partner's answer
	// and the log's write is a lost response (retried and counted as an
	// attempt), not the outage of an idle lane this part is about.
	succeeded := func(n int) func() bool {
		return func() bool {
			var got int
			return query(`SELECT count(*) FROM ferry.delivery WHERE integration = 'shop' AND state = 'succeeded'`, &got) == nil && got == n
		}
	}
	waitFor(t, time.Minute, "ready and delivering", func() bool {
		code, _ := readyz(admin)
		return code == http.StatusOK && len(e.delivered()["acme"]) == 5 && succeeded(5)()
	})

	// Stopped mid-run: nothing reaches the partner, nothing is counted.
	if err := c.Down("fast"); err != nil {
		t.Fatal(err)
	}
	before := reconnects()
	produce(5)
	waitFor(t, time.Minute, "not ready while the delivery log is down, and retrying", func() bool {
		code, why := readyz(admin)
		return code == http.StatusServiceUnavailable && strings.Contains(why, "delivery log") && reconnects() >= before+3
	})
	if got := len(e.sim.Requests("acme")); got != 5 {
		t.Fatalf("the partner was called %d times while the delivery log was down (want the 5 from before)", got)
	}
	if v := metric(admin, `ferry_sink_breaker_open{integration="shop"}`); v > 0 {
		t.Fatalf("breaker opened over a database outage: %v", v)
	}
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "delivery to resume", func() bool { return len(e.delivered()["acme"]) == 10 && succeeded(10)() })

	// A crash restart, then more events.
	if err := c.Restart(ctx, "immediate", 0); err != nil {
		t.Fatal(err)
	}
	produce(5)
	waitFor(t, time.Minute, "delivery after a crash restart", func() bool { return len(e.delivered()["acme"]) == 15 })
	checkInOrder(t, map[string][]int{"acme": e.delivered()["acme"]}, map[string]int{"acme": 15})
	var maxAttempts int
	if err := query(`SELECT max(attempts) FROM ferry.delivery WHERE integration = 'shop'`, &maxAttempts); err != nil || maxAttempts != 1 {
		t.Fatalf("attempts burned by the outages: max %d (%v), want 1", maxAttempts, err)
	}
	failed := reconnects()
	code, logs := stop()
	if code != 0 {
		t.Fatalf("sink exited %d:\n%s", code, logs)
	}
	// One line when the log is lost and one when it is back, per outage
	// (a few outages: the pool finds its dead connections one by one),
	// never one per lane or per attempt.
	lost := strings.Count(logs, "delivery log (postgres) lost")
	if lost == 0 || float64(lost) >= failed || strings.Contains(logs, "level=ERROR") {
		t.Fatalf("%d 'lost' lines for %v failed attempts; logs:\n%s", lost, failed, logs)
	}
	t.Logf("%d 'lost' lines, %v failed reconnect attempts", lost, failed)
}

// Kafka down at start is weather too: the sink waits, not ready, and
// consumes once the broker is up.
func TestGuarantee7_SinkWaitsForKafkaAtStart(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	admin := freeAddr(t)
	cfg := e.config("")
	e.kafka.Stop(t)
	e.start("--config", cfg, "--admin-addr", admin)
	waitFor(t, time.Minute, "not ready while Kafka is down", func() bool {
		code, why := readyz(admin)
		return code == http.StatusServiceUnavailable && strings.Contains(why, "kafka") &&
			metric(admin, `ferry_sink_reconnects_total{target="kafka"}`) >= 2
	})
	e.kafka.Start(t)
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	waitFor(t, time.Minute, "delivery once Kafka is up", func() bool {
		code, _ := readyz(admin)
		return code == http.StatusOK && len(e.delivered()["acme"]) == 1
	})
}

// A delivery-log statement blocked by a row lock (an operator's open
// transaction) fails at postgres_statement_timeout: the lane backs off
// and tries again instead of hanging, other tenants go on, and the event
// is delivered once the lock is gone.
func TestBlockedStatementTimesOutAndTheLaneBacksOff(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	e.start("--config", e.config(""), "--postgres-statement-timeout", "300ms")
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	waitFor(t, time.Minute, "the first delivery", func() bool { return len(e.delivered()["acme"]) == 1 })

	if _, err := e.conn.Exec(ctx, `INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, aggregate_type,
		aggregate_id, topic, kafka_partition, kafka_offset, state) VALUES ('shop', 'acme-2', 'acme', 'product.updated', 'product', 'p1', $1, 0, 0, 'pending')`, e.topic); err != nil {
		t.Fatal(err)
	}
	tx := e.holdInTx(`SELECT 1 FROM ferry.delivery WHERE event_id = 'acme-2' FOR UPDATE`)
	e.produce("acme", "acme-2", "product.updated", `{"n":2}`)
	e.produce("globex", "globex-1", "product.updated", `{"n":1}`)
	waitFor(t, time.Minute, "the blocked statement to time out, and another tenant to be delivered", func() bool {
		logs := e.logs.String()
		return strings.Contains(logs, "delivery-log statement failed") && strings.Contains(logs, "begin acme-2") &&
			len(e.delivered()["globex"]) == 1
	})
	if got := e.delivered()["acme"]; len(got) != 1 {
		t.Fatalf("acme-2 delivered through a locked row: %v", got)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "acme-2 once the lock is gone", func() bool { return len(e.delivered()["acme"]) == 2 })
	checkInOrder(t, map[string][]int{"acme": e.delivered()["acme"]}, map[string]int{"acme": 2})
}

// A delivery another process holds in flight (here a previous partition
// owner, still alive: its lease in ferry.sink_process is current) is not
// sent again, and its lane does not move on, until that process's lease
// expires; then it is taken over and the lane goes on in order.
func TestGuarantee3_InFlightDeliveryOfALiveProcessIsNotTakenOver(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	e.start("--config", e.config(""), "--log-level", "debug")
	e.produce("acme", "acme-0", "product.updated", `{"n":1}`) // creates the tables
	waitFor(t, time.Minute, "the first delivery", func() bool { return len(e.delivered()["acme"]) == 1 })

	// The previous owner: alive for another minute, with acme-1 in flight.
	if _, err := e.conn.Exec(ctx, `INSERT INTO ferry.sink_process (process_id, integration, consumer_group, started_at, lease_until)
		VALUES ('elsewhere/1/1', 'shop', 'ferry-sink-shop', now(), now() + interval '1 minute')`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn.Exec(ctx, `INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, aggregate_type,
		aggregate_id, topic, kafka_partition, kafka_offset, state, attempts, holder)
		VALUES ('shop', 'acme-1', 'acme', 'product.updated', 'product', 'p1', $1, 0, 0, 'in_flight', 1, 'elsewhere/1/1')`, e.topic); err != nil {
		t.Fatal(err)
	}
	e.produce("acme", "acme-1", "product.updated", `{"n":2}`)
	e.produce("acme", "acme-2", "product.updated", `{"n":3}`)
	e.produce("globex", "globex-1", "product.updated", `{"n":1}`)
	waitFor(t, time.Minute, "the lane to wait for the holder, and others to flow", func() bool {
		return strings.Count(e.logs.String(), "delivery held by another process") >= 3 && len(e.delivered()["globex"]) == 1
	})
	if got := e.sim.Requests("acme"); len(got) != 1 {
		t.Fatalf("the partner was called for acme while a live process held acme-1: %d calls", len(got))
	}
	if s := e.state("acme-2"); s != "none" {
		t.Fatalf("acme-2 was attempted (%s) behind a held delivery", s)
	}
	// The holder's lease runs out: its delivery is taken over.
	if _, err := e.conn.Exec(ctx, `UPDATE ferry.sink_process SET lease_until = now() WHERE process_id = 'elsewhere/1/1'`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the takeover", func() bool { return len(e.delivered()["acme"]) == 3 })
	checkInOrder(t, map[string][]int{"acme": e.delivered()["acme"]}, map[string]int{"acme": 3})
}
