package sinkapp

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// Records that are not outbox events, and event types the integration does
// not handle, are recorded with a clear reason; the sink neither crashes
// nor drops them silently, and other tenants flow.
func TestGuarantee5_BadRecordsAreRecordedNotDropped(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	// No event_id header, tenant in the key.
	if err := e.prod.ProduceSync(ctx, &kgo.Record{Topic: e.topic, Key: []byte("acme"), Value: []byte(`{"n":1}`)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	// Payload that is not JSON.
	if err := e.prod.ProduceSync(ctx, &kgo.Record{Topic: e.topic, Key: []byte("initech"), Value: []byte(`<xml/>`),
		Headers: []kgo.RecordHeader{{Key: "event_id", Value: []byte("ini-1")}, {Key: "event_type", Value: []byte("product.updated")}}}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	e.produce("globex", "globex-1", "invoice.paid", `{"n":1}`) // not handled by this integration
	e.produce("globex", "globex-2", "product.updated", `{"n":2}`)
	e.start("--config", e.config("    event_types: [\"product.*\"]\n"))
	waitFor(t, time.Minute, "all four records settled", func() bool {
		var n int
		err := e.conn.QueryRow(ctx, `SELECT count(*) FROM ferry.delivery WHERE state IN ('succeeded', 'rejected', 'skipped')`).Scan(&n)
		return err == nil && n == 4 && len(e.delivered()["globex"]) == 1
	})
	rows, err := e.conn.Query(ctx, `SELECT event_id, state, reason FROM ferry.delivery ORDER BY event_id`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for rows.Next() {
		var id, state string
		var reason *string
		if err := rows.Scan(&id, &state, &reason); err != nil {
			t.Fatal(err)
		}
		r := ""
		if reason != nil {
			r = *reason
		}
		got[id] = state + ": " + r
	}
	for id, want := range map[string][2]string{"ini-1": {"rejected: ", "bad input: [payload is not JSON]"},
		"globex-1": {"skipped: ", "no handler for event type invoice.paid"}, "globex-2": {"succeeded: ", ""}} {
		if !strings.HasPrefix(got[id], want[0]) || !strings.Contains(got[id], want[1]) {
			t.Errorf("%s: %q, want state %q and reason with %q", id, got[id], want[0], want[1])
		}
	}
	var noID string
	for id, v := range got {
		if strings.HasPrefix(id, "bad:") {
			noID = v
		}
	}
	if !strings.Contains(noID, "no event_id header") {
		t.Errorf("record without event id: %q (all: %v)", noID, got)
	}
}

// A 429 with Retry-After: the next attempt waits at least that long.
func TestRetryAfterIsHonoured(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Status: 429, RetryAfterSeconds: 2, Times: 1})
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	// retry.max above the Retry-After: the partner's wait is honoured.
	e.start("--config", e.config("    retry: {initial: 50ms, max: 5s}\n"))
	waitFor(t, time.Minute, "acme-1 delivered", func() bool { return len(e.delivered()["acme"]) == 1 })
	reqs := e.sim.Requests("acme")
	if len(reqs) != 2 || reqs[0].Status != 429 {
		t.Fatalf("requests: %+v", reqs)
	}
	if gap := reqs[1].Time.Sub(reqs[0].Time); gap < 2*time.Second {
		t.Fatalf("retried after %s, before the partner's Retry-After of 2s", gap)
	}
}

// A partner asking for an hour does not stall the lane past retry.max
// (500ms here): the retry comes within the ceiling, long before the hour.
func TestRetryAfterIsCappedAtRetryMax(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Status: 429, RetryAfterSeconds: 3600, Times: 1})
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	e.start("--config", e.config("    retry: {initial: 50ms, max: 500ms}\n"))
	waitFor(t, time.Minute, "acme-1 delivered despite a Retry-After of an hour", func() bool { return len(e.delivered()["acme"]) == 1 })
	if reqs := e.sim.Requests("acme"); len(reqs) != 2 || reqs[0].Status != 429 {
		t.Fatalf("requests: %+v", reqs)
	}
}

// The partner goes down: the breaker opens for the whole integration
// (few calls while down), then probes it back and everything arrives.
func TestBreakerOpensAndCloses(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	admin := freeAddr(t)
	e.sim.Outage(time.Hour)
	for n := 1; n <= 20; n++ {
		for i := range 10 {
			tenant := fmt.Sprintf("t%d", i)
			e.produce(tenant, fmt.Sprintf("%s-%d", tenant, n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
		}
	}
	e.start("--config", e.config("    breaker: {failures: 5, window: 10, open_for: 300ms}\n"), "--admin-addr", admin)
	waitFor(t, time.Minute, "breaker open", func() bool {
		return metric(admin, `ferry_sink_breaker_open{integration="shop"}`) == 1
	})
	count := func() (deliveries, probes int) {
		for _, r := range e.sim.Requests("") {
			if r.Method == "HEAD" {
				probes++
			} else {
				deliveries++
			}
		}
		return
	}
	d0, p0 := count()
	time.Sleep(time.Second) // let the breaker hold calls back for a while
	d1, p1 := count()
	// Without a breaker, 10 lanes retrying every 50-500ms would make
	// dozens of calls a second; open, only the connector's health probes
	// (HEAD) reach the partner, and no event is spent on probing.
	if d1 != d0 || p1 == p0 || p1-p0 > 5 {
		t.Fatalf("with the breaker open for a second: %d deliveries, %d probes", d1-d0, p1-p0)
	}
	e.sim.Outage(0)
	waitFor(t, time.Minute, "all delivered after recovery", func() bool {
		total := 0
		for _, s := range e.delivered() {
			total += len(s)
		}
		return total == 200
	})
	waitFor(t, 10*time.Second, "breaker closed", func() bool {
		return metric(admin, `ferry_sink_breaker_open{integration="shop"}`) == 0
	})
	want := map[string]int{}
	for i := range 10 {
		want[fmt.Sprintf("t%d", i)] = 20
	}
	checkInOrder(t, e.delivered(), want)
}

// Three sink processes share one group while they join and leave during a
// stream of events: every tenant's events reach the partner once each, in
// order.
func TestThreeProcessGroupWithRebalances(t *testing.T) {
	e := newEnv(t, partnersim.Config{Jitter: 3 * time.Millisecond})
	cfg := e.config("")
	const tenants, perTenant = 16, 60
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; n <= perTenant; n++ {
			for i := range tenants {
				tenant := fmt.Sprintf("t%02d", i)
				e.produce(tenant, fmt.Sprintf("%s-%d", tenant, n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
			}
			time.Sleep(5 * time.Millisecond) // a stream, so rebalances happen mid-way
		}
	}()
	total := func() int {
		n := 0
		for _, s := range e.delivered() {
			n += len(s)
		}
		return n
	}
	a := e.start("--config", cfg)
	waitFor(t, time.Minute, "first deliveries", func() bool { return total() > 50 })
	b := e.start("--config", cfg)
	waitFor(t, time.Minute, "more deliveries", func() bool { return total() > 200 })
	e.start("--config", cfg)
	waitFor(t, time.Minute, "more deliveries", func() bool { return total() > 400 })
	if code, stderr := a(); code != 0 {
		t.Fatalf("sink a: %d %s", code, stderr)
	}
	waitFor(t, time.Minute, "more deliveries", func() bool { return total() > 600 })
	if code, stderr := b(); code != 0 {
		t.Fatalf("sink b: %d %s", code, stderr)
	}
	wg.Wait()
	waitFor(t, 2*time.Minute, "every event", func() bool { return total() >= tenants*perTenant })
	want := map[string]int{}
	for i := range tenants {
		want[fmt.Sprintf("t%02d", i)] = perTenant
	}
	checkInOrder(t, e.delivered(), want)
}

// JSON logs carry the fields that find an event: event_id, tenant_id,
// integration, partition, offset and the commit lsn.
func TestJSONLogsCarryEventFields(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Status: 422, Reason: "no"})
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	stop := e.start("--config", e.config(""), "--log-format", "json")
	waitFor(t, time.Minute, "the rejection", func() bool { return e.state("acme-1") == "rejected" })
	_, logs := stop()
	for _, line := range strings.Split(logs, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "delivery rejected" {
			continue
		}
		for _, k := range []string{"event_id", "tenant_id", "integration", "partition", "offset", "lsn"} {
			if v, ok := rec[k]; !ok || v == "" {
				t.Fatalf("log line lacks %s: %s", k, line)
			}
		}
		if rec["lsn"] != "0/16B3748" || rec["event_id"] != "acme-1" || rec["integration"] != "shop" {
			t.Fatalf("log line: %s", line)
		}
		return
	}
	t.Fatalf("no JSON 'delivery rejected' line in:\n%s", logs)
}
