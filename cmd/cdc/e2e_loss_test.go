package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
)

// Kill -9 cdc after Kafka acknowledged records but before the slot was
// confirmed (a status interval of an hour holds confirmation back), while
// writes go on; the restarted cdc resends, and every event arrives with
// its event id — duplicates allowed, no loss, per-tenant order kept.
func TestGuarantee1_NoLossAcrossCrashBetweenAckAndConfirm(t *testing.T) {
	e := newEnv(t)
	e.setup()
	before := e.slotLSN()
	p1 := e.start("--status-interval", "1h")
	counts1 := writeOrdered(t, e, 10, 200, 3, 2)
	n1 := 0
	for _, n := range counts1 {
		n1 += n
	}
	e.kafka.Consume(t, time.Minute, kafkatest.AtLeast(n1), e.topic("product"))
	p1.kill() // acknowledged by Kafka, never confirmed to the slot
	if got := e.slotLSN(); got != before {
		t.Fatalf("slot moved from %s to %s with a status interval of 1h", before, got)
	}

	// More writes while cdc is down, then a normal cdc.
	counts := writeOrdered(t, e, 10, 200, 3, 2)
	total := 0
	for _, n := range counts {
		total += n
	}
	p2 := e.start()
	recs := e.kafka.Consume(t, time.Minute, func(rs []*kgo.Record) bool {
		return len(eventIDs(rs)) >= total
	}, e.topic("product"))
	got := checkTenantOrder(t, recs, true)
	for tenant, n := range counts {
		if got[tenant] != n {
			t.Errorf("tenant %s: last event %d, want %d", tenant, got[tenant], n)
		}
	}
	var rows int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if ids := eventIDs(recs); len(ids) != rows || len(recs) <= rows {
		t.Fatalf("%d distinct event ids in %d records for %d rows: want all rows, with the first run's resent", len(ids), len(recs), rows)
	}
	waitFor(t, 30*time.Second, "slot confirmed past the writes", func() bool { return e.slotLSN() > before })
	p2.kill()
}

// One transaction's partition refuses produce (retriably, for as long as
// the fault stays); later transactions on other topics are acknowledged;
// the slot must not be confirmed past the stuck one. Once the fault is
// removed, everything arrives and the slot moves on.
func TestGuarantee1_SlotNeverPassesUnackedTransaction(t *testing.T) {
	e := newEnv(t)
	if e.kafka.Cluster == nil {
		t.Skip("needs kfake fault injection") // containers backend only
	}
	e.setup()
	p := e.start()
	waitFor(t, 30*time.Second, "cdc ready", p.ready)

	fault := e.kafka.Cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: e.topic("stuck"),
		Err: kerr.NotLeaderForPartition, Count: -1})
	stuck := e.insert("t1", "stuck", "s1", "stuck.created", `{"n":1}`)
	stuckEnd := e.walInsertLSN()
	var later []string
	for i := range 20 {
		later = append(later, e.insert(fmt.Sprintf("t%d", i%3), "product", "p", "product.created", `{"n":1}`))
	}
	e.kafka.Consume(t, time.Minute, hasIDs(later), e.topic("product"))
	if err := fault.Wait(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	// A status update after the later transactions were acknowledged, with
	// the stuck one still in flight.
	waitFor(t, 30*time.Second, "status sent with the stuck transaction in flight", func() bool {
		return p.metric("ferry_cdc_transactions_total") >= 20 && p.metric("ferry_cdc_in_flight_transactions") == 1
	})
	if got := e.slotLSN(); got >= stuckEnd {
		t.Fatalf("slot confirmed %s, past the unacknowledged transaction ending before %s", got, stuckEnd)
	}
	fault.Remove()
	e.kafka.Consume(t, time.Minute, hasIDs([]string{stuck}), e.topic("stuck"))
	waitFor(t, 30*time.Second, "slot past the formerly stuck transaction", func() bool { return e.slotLSN() >= stuckEnd })
}
