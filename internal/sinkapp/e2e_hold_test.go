package sinkapp

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// parkedCount returns the rows in ferry.parked_event, of tenant alone
// unless it is "" (-1 when the query fails).
func (e *env) parkedCount(tenant string) int {
	var n int
	err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.parked_event WHERE $1 = '' OR tenant_id = $1`, tenant).Scan(&n)
	if err != nil {
		return -1
	}
	return n
}

// produceBacklog writes perTenant events for each of tenants tenants,
// round-robin, and returns how many it wrote.
func (e *env) produceBacklog(tenants, perTenant int) int {
	e.t.Helper()
	for n := 1; n <= perTenant; n++ {
		for i := range tenants {
			tenant := fmt.Sprintf("t%d", i)
			e.produce(tenant, fmt.Sprintf("%s-%d", tenant, n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
		}
	}
	return tenants * perTenant
}

// An open breaker pauses fetching: the topic's backlog waits in Kafka
// instead of moving into the parked queue (park_after is 1 s, so lanes
// blocked on their own would park everything within the 3 s watched),
// and once the partner is back everything arrives, in order, with
// nothing parked. Retries come fast, so the breaker opens well before
// any lane has been blocked for park_after on its own failures (with
// park_after 100 ms and 500 ms backoffs, two lanes parked their 60
// events before the breaker opened once in a clean-clone make test run:
// right, as the breaker was still closed, but not what this tests).
func TestBreakerOpenPausesFetchingInsteadOfParking(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	admin := freeAddr(t)
	e.sim.Outage(time.Hour)
	const tenants, perTenant = 10, 60
	total := e.produceBacklog(tenants, perTenant)
	e.start("--config", e.config("    park_after: 1s\n    retry: {initial: 20ms, max: 100ms}\n    breaker: {failures: 3, window: 10, open_for: 300ms}\n"),
		"--admin-addr", admin, "--max-buffered-bytes", "4KiB")
	waitFor(t, time.Minute, "breaker open, fetching held for it", func() bool {
		return metric(admin, `ferry_sink_breaker_open{integration="shop"}`) == 1 &&
			metric(admin, `ferry_sink_fetch_held{integration="shop",reason="breaker_open"}`) == 1
	})
	// A while with the breaker open: probes fail, lanes wait.
	for range 30 {
		time.Sleep(100 * time.Millisecond)
		if n := e.parkedCount(""); n < 0 || n > total/10 {
			t.Fatalf("%d of %d events parked with the breaker open: the backlog moved into Postgres", n, total)
		}
	}
	e.sim.Outage(0)
	waitFor(t, time.Minute, "all delivered after recovery", func() bool {
		got := 0
		for _, s := range e.delivered() {
			got += len(s)
		}
		return got == total
	})
	want := map[string]int{}
	for i := range tenants {
		want[fmt.Sprintf("t%d", i)] = perTenant
	}
	checkInOrder(t, e.delivered(), want)
	waitFor(t, 10*time.Second, "the parked queue empty", func() bool { return e.parkedCount("") == 0 })
}

// A paused integration pauses fetching too: nothing is parked however
// long the pause, no partner call is made, and resuming delivers the
// backlog in order.
func TestPausedIntegrationPausesFetchingInsteadOfParking(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	if code, out, errOut := e.runCmd("pause", "--integration", "shop", "--reason", "partner maintenance"); code != 0 {
		t.Fatalf("pause: %d %s %s", code, out, errOut)
	}
	const tenants, perTenant = 5, 40
	total := e.produceBacklog(tenants, perTenant)
	admin := freeAddr(t)
	e.start("--config", e.config("    park_after: 100ms\n"), "--admin-addr", admin, "--max-buffered-bytes", "4KiB")
	// Fetching may pause before the first fetch (then no lane holds
	// anything) or after it (lanes wait, paused).
	waitFor(t, time.Minute, "fetching paused", func() bool {
		return metric(admin, `ferry_sink_fetch_held{integration="shop",reason="paused"}`) == 1
	})
	for range 20 {
		time.Sleep(100 * time.Millisecond)
		if n := e.parkedCount(""); n != 0 {
			t.Fatalf("%d events parked while the integration is paused", n)
		}
	}
	if n := len(e.sim.Requests("")); n != 0 {
		t.Fatalf("%d partner calls while paused", n)
	}
	if code, out, errOut := e.runCmd("resume", "--integration", "shop"); code != 0 {
		t.Fatalf("resume: %d %s %s", code, out, errOut)
	}
	waitFor(t, time.Minute, "fetching no longer held for the pause", func() bool {
		return metric(admin, `ferry_sink_fetch_held{integration="shop",reason="paused"}`) == 0
	})
	waitFor(t, time.Minute, "all delivered after resume", func() bool {
		got := 0
		for _, s := range e.delivered() {
			got += len(s)
		}
		return got == total
	})
	want := map[string]int{}
	for i := range tenants {
		want[fmt.Sprintf("t%d", i)] = perTenant
	}
	checkInOrder(t, e.delivered(), want)
}

// A record larger than the whole byte budget is still fetched and
// delivered (no deadlock), and so is everything after it.
func TestRecordLargerThanTheBudgetIsDelivered(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	big := fmt.Sprintf(`{"n":2,"blob":"%0*d"}`, 64<<10, 0)
	e.produce("a", "a-1", "product.updated", `{"n":1}`)
	e.produce("a", "a-2", "product.updated", big)
	e.produce("a", "a-3", "product.updated", `{"n":3}`)
	e.start("--config", e.config(""), "--max-buffered-bytes", "1KiB")
	waitFor(t, time.Minute, "all three delivered", func() bool { return len(e.delivered()["a"]) == 3 })
	checkInOrder(t, e.delivered(), map[string]int{"a": 3})
}
