package main

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
)

// bigTxRows is the size of the large transaction (the 1,000,000-row run
// is a benchmark: bench/cdcbench -big-tx).
const (
	bigTxRows    = 200_000
	bigTxTenants = 20
)

// insertBigTx writes bigTxRows outbox rows of aggType in one transaction:
// tenant-<g%20>, each tenant's events numbered 1, 2, ... in insert order.
func insertBigTx(t *testing.T, e *env, aggType string) {
	t.Helper()
	e.exec(`INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
		SELECT 'tenant-' || (g % $2), $1, 'a' || g, $1 || '.created', jsonb_build_object('n', g / $2 + 1, 'pad', repeat('x', 200))
		FROM generate_series(0, $3 - 1) g`, aggType, bigTxTenants, bigTxRows)
}

// holdProduce lets produce requests through until they carried at least
// after records, then holds every produce request (kfake's SleepControl)
// until release is called: cdc is then stuck in the middle of a
// transaction, some of its records acknowledged, none confirmed. hit is
// closed when the hold begins.
func holdProduce(t *testing.T, c *kfake.Cluster, after int) (hit <-chan struct{}, release func()) {
	t.Helper()
	var (
		mu       sync.Mutex
		seen     int
		held     bool
		released bool
	)
	hitc, gate := make(chan struct{}), make(chan struct{})
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		mu.Lock()
		if released {
			mu.Unlock()
			return nil, nil, false
		}
		if seen >= after {
			if !held {
				held = true
				close(hitc)
			}
			mu.Unlock()
			c.SleepControl(func() { <-gate })
			return nil, nil, false
		}
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			for _, p := range tp.Partitions {
				var b kmsg.RecordBatch
				if err := b.ReadFrom(p.Records); err == nil {
					seen += int(b.NumRecords)
				}
			}
		}
		mu.Unlock()
		return nil, nil, false
	})
	var once sync.Once
	release = func() {
		once.Do(func() {
			mu.Lock()
			released = true
			mu.Unlock()
			close(gate)
		})
	}
	t.Cleanup(release)
	return hitc, release
}

// checkBigTx checks that recs hold every event of the big transaction,
// per tenant in commit order (a resent prefix allowed), and that some
// were sent twice when resent is true.
func checkBigTx(t *testing.T, recs []*kgo.Record, resent bool) {
	t.Helper()
	last := checkTenantOrder(t, recs, true)
	for i := range bigTxTenants {
		tenant := "tenant-" + strconv.Itoa(i)
		if want := bigTxRows / bigTxTenants; last[tenant] != want {
			t.Errorf("tenant %s: last event %d, want %d", tenant, last[tenant], want)
		}
	}
	if ids := eventIDs(recs); len(ids) != bigTxRows || (resent && len(recs) <= bigTxRows) {
		t.Fatalf("%d distinct event ids in %d records; want %d ids (resent: %v)", len(ids), len(recs), bigTxRows, resent)
	}
}

// A 200,000-row transaction is streamed while it is decoded; cdc is
// killed -9 in the middle of it (20,000 records acknowledged, the rest
// held at the broker), and the slot was never confirmed past its start.
// The next cdc resends the whole transaction: every event arrives, per
// tenant in commit order, and the slot then moves past it.
func TestLargeTransactionResentWholeAfterKillMidTransaction(t *testing.T) {
	e := newEnv(t)
	if e.kafka.Cluster == nil {
		t.Skip("needs kfake control hooks")
	}
	e.setup()
	hit, release := holdProduce(t, e.kafka.Cluster, 20_000)
	p1 := e.start()
	waitFor(t, 30*time.Second, "cdc ready", p1.ready)
	insertBigTx(t, e, "big")
	end := e.walInsertLSN()
	select {
	case <-hit:
	case <-time.After(2 * time.Minute):
		t.Fatal("cdc did not produce 20,000 records of the transaction within 2 minutes")
	}
	// Records of the transaction are in Kafka, the transaction is not
	// done: the slot must not have moved past it.
	e.kafka.Consume(t, time.Minute, kafkatest.AtLeast(20_000), e.topic("big"))
	if got := e.slotLSN(); got >= end {
		t.Fatalf("slot confirmed %s, past the end %s of a transaction still in flight", got, end)
	}
	p1.kill()
	release()

	p2 := e.start()
	recs := e.kafka.Consume(t, 3*time.Minute, func(rs []*kgo.Record) bool { return len(eventIDs(rs)) >= bigTxRows }, e.topic("big"))
	checkBigTx(t, recs, true)
	waitFor(t, 30*time.Second, "slot confirmed past the transaction", func() bool { return e.slotLSN() >= end })
	p2.kill()
}

// Postgres restarts (immediate: the slot may go back to its last
// checkpoint) while cdc is in the middle of streaming a 200,000-row
// transaction; cdc rides through, resends the transaction, and every
// event arrives per tenant in commit order.
func TestLargeTransactionResentWholeAfterPostgresRestart(t *testing.T) {
	e, cluster := faultEnv(t)
	if e.kafka.Cluster == nil {
		t.Skip("needs kfake control hooks")
	}
	ctx := context.Background()
	e.setup()
	hit, release := holdProduce(t, e.kafka.Cluster, 20_000)
	p := e.start("--topic-template", "faults.outbox.{{.AggregateType}}", "--reconnect-max", "1s")
	waitFor(t, 30*time.Second, "cdc ready", p.ready)
	insertBigTx(t, e, "product")
	end := e.walInsertLSN()
	select {
	case <-hit:
	case <-time.After(2 * time.Minute):
		t.Fatal("cdc did not produce 20,000 records of the transaction within 2 minutes")
	}
	if got := e.slotLSN(); got >= end {
		t.Fatalf("slot confirmed %s, past the end %s of a transaction still in flight", got, end)
	}
	e.conn.Close(ctx)
	if err := cluster.Down("immediate"); err != nil {
		t.Fatal(err)
	}
	release() // the ended session's records are answered (or abandoned): no wait for its close
	if err := cluster.Up(ctx); err != nil {
		t.Fatal(err)
	}
	connectEnv(t, e)
	waitFor(t, 60*time.Second, "cdc ready after the restart", p.ready)
	recs := e.kafka.Consume(t, 3*time.Minute, func(rs []*kgo.Record) bool { return len(eventIDs(rs)) >= bigTxRows }, faultTopic)
	checkBigTx(t, recs, true)
	waitFor(t, 30*time.Second, "slot confirmed past the transaction", func() bool { return e.slotLSN() >= end })
	if p.exited() {
		t.Fatalf("cdc exited:\n%s", p.stderr.String())
	}
}
