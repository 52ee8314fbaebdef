package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// Bad rows go to the dead-letter topic with the reason and the event id;
// good rows around them arrive in order; cdc keeps running.
func TestGuarantee5_BadRowsAreDeadLetteredNotDropped(t *testing.T) {
	e := &env{t: t, db: pgtest.New(t),
		kafka: kafkatest.New(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "20000"}))}
	connectEnv(t, e)
	e.setup()
	p := e.start("--max-record-bytes", "20000")
	waitFor(t, 30*time.Second, "cdc ready", p.ready)

	good1 := e.insert("acme", "product", "p1", "product.created", `{"n":1}`)
	noTenant := e.insert("", "product", "p1", "product.updated", `{"n":2}`)
	// Random hex, so compression cannot shrink it under the broker's limit.
	var huge string
	if err := e.conn.QueryRow(context.Background(), `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
		SELECT 'acme', 'product', 'p1', 'product.updated', jsonb_build_object('blob', string_agg(md5(random()::text), ''))
		FROM generate_series(1, 3000) RETURNING id::text`).Scan(&huge); err != nil {
		t.Fatal(err)
	}
	badTopic := e.insert("acme", "bad type!", "p1", "x.created", `{}`)
	e.exec(`SELECT pg_logical_emit_message(true, 'ferry.outbox', 'this is not json')`)
	good2 := e.insert("acme", "product", "p1", "product.updated", `{"n":3}`)

	main := e.kafka.Consume(t, time.Minute, hasIDs([]string{good1, good2}), e.topic("product"))
	if len(main) != 2 || kafkatest.Header(main[0], "event_id") != good1 || kafkatest.Header(main[1], "event_id") != good2 {
		t.Fatalf("main topic: want exactly %s then %s, got %v", good1, good2, eventIDs(main))
	}
	dead := e.kafka.Consume(t, time.Minute, kafkatest.AtLeast(4), e.kafka.TopicPrefix+"dead_letter")
	reasons := map[string]string{}
	for _, r := range dead {
		reasons[kafkatest.Header(r, "event_id")] = kafkatest.Header(r, "ferry_error")
	}
	for id, want := range map[string]string{noTenant: "missing tenant_id", huge: "MESSAGE_TOO_LARGE", badTopic: "topic name", "": "not a JSON object"} {
		if !strings.Contains(reasons[id], want) {
			t.Errorf("dead letter for %q: reason %q, want it to mention %q (all: %v)", id, reasons[id], want, reasons)
		}
	}
	if p.exited() || !p.ready() {
		t.Fatalf("cdc stopped on bad rows:\n%s", p.stderr.String())
	}
	if got := p.metric(`ferry_cdc_events_total{outcome="dead_lettered"}`); got != 4 {
		t.Errorf("dead_lettered metric = %v, want 4", got)
	}
}

// With on_bad_event=stop, cdc exits naming the event and the slot stays
// before it, so nothing is skipped.
func TestBadRowStopPolicyHoldsSlot(t *testing.T) {
	e := newEnv(t)
	e.setup()
	before := e.walInsertLSN()
	bad := e.insert("", "product", "p1", "product.updated", `{"n":2}`)
	code, stderr := e.runToExit("--on-bad-event", "stop")
	if code == 0 || !strings.Contains(stderr, bad) || !strings.Contains(stderr, "missing tenant_id") {
		t.Fatalf("exit %d, stderr:\n%s\nwant the event id %s and the reason", code, stderr, bad)
	}
	// The bad event's transaction is still ahead of the slot (its
	// confirmed position may move into the transaction's WAL, a keepalive
	// position, but not past its commit): the slot still decodes it.
	var held int
	waitFor(t, 30*time.Second, "the slot released by the exited cdc and peeked", func() bool {
		return e.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
			'proto_version', '1', 'publication_names', 'ferry_outbox')`, e.slot).Scan(&held) == nil
	})
	if held == 0 {
		t.Fatalf("slot at %s has nothing left to decode: it moved past the bad event's transaction (WAL at %s before it)", e.slotLSN(), before)
	}
}

// Table-less outbox events written with pg_logical_emit_message are routed
// like rows; a rolled-back one never appears.
func TestTableLessMessagesRoutedLikeRows(t *testing.T) {
	e := newEnv(t)
	e.setup()
	stop := e.inproc("--envelope", "cloudevents")
	ctx := context.Background()
	msg := `{"id":"%s","tenant_id":"acme","aggregate_type":"order","aggregate_id":"o1","event_type":"order.placed","payload":{"total":%d},"headers":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}`
	err := pgx.BeginFunc(ctx, e.conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `SELECT pg_logical_emit_message(true, 'ferry.outbox', $1)`, fmt.Sprintf(msg, "rolled-back", 0))
		if err != nil {
			return err
		}
		return fmt.Errorf("roll back on purpose")
	})
	if err == nil || !strings.Contains(err.Error(), "on purpose") {
		t.Fatal(err)
	}
	e.exec(`SELECT pg_logical_emit_message(true, 'ferry.outbox', $1)`, fmt.Sprintf(msg, "m-1", 10))
	row := e.insert("acme", "order", "o1", "order.paid", `{"total":10}`)
	recs := e.kafka.Consume(t, time.Minute, hasIDs([]string{"m-1", row}), e.topic("order"))
	if ids := eventIDs(recs); ids["rolled-back"] != 0 || len(recs) != 2 {
		t.Fatalf("got %v, want m-1 and the row only", ids)
	}
	r := recs[0]
	if string(r.Key) != "acme" || kafkatest.Header(r, "traceparent") == "" || !strings.Contains(string(r.Value), `"specversion":"1.0"`) ||
		!strings.Contains(string(r.Value), `"data":{"total":10}`) {
		t.Fatalf("message record: key %q headers %v value %s", r.Key, r.Headers, r.Value)
	}
	if code, stderr := stop(); code != 0 {
		t.Fatalf("cdc exited %d: %s", code, stderr)
	}
}

// kcat, an independent librdkafka client, reads a tenant's events in
// order, and its murmur2 partitioner (the Java client's) puts the tenant's
// key on the same partition Ferry did.
func TestKcatReadsTenantInOrderAndAgreesOnPartition(t *testing.T) {
	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat not installed: run `make deps` (apt-get install kcat)")
	}
	e := newEnv(t)
	e.setup()
	stop := e.inproc()
	var ids []string
	for i := 1; i <= 30; i++ {
		for _, tenant := range []string{"acme", "globex", "initech"} {
			ids = append(ids, e.insert(tenant, "product", "p1", "product.updated", fmt.Sprintf(`{"n":%d}`, i)))
		}
	}
	topic := e.topic("product")
	recs := e.kafka.Consume(t, time.Minute, hasIDs(ids), topic)
	ferryPartition := map[string]int32{}
	for _, r := range recs {
		ferryPartition[string(r.Key)] = r.Partition
	}

	out, err := exec.Command(kcat, "-b", e.kafka.Addrs[0], "-C", "-t", topic, "-o", "beginning", "-e", "-q",
		"-f", `%k %p %s\n`).CombinedOutput()
	if err != nil {
		t.Fatalf("kcat -C: %v\n%s", err, out)
	}
	next := 1
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var key string
		var part int32
		var n int
		if _, err := fmt.Sscanf(line, `%s %d {"n": %d}`, &key, &part, &n); err != nil {
			t.Fatalf("kcat line %q: %v", line, err)
		}
		if key != "acme" {
			continue
		}
		if n != next {
			t.Fatalf("kcat read acme's event %d, want %d", n, next)
		}
		next++
	}
	if next != 31 {
		t.Fatalf("kcat read %d acme events, want 30", next-1)
	}

	for key, want := range ferryPartition {
		cmd := exec.Command(kcat, "-b", e.kafka.Addrs[0], "-P", "-t", topic, "-K", ":", "-X", "topic.partitioner=murmur2_random")
		cmd.Stdin = strings.NewReader(key + `:{"n":0,"probe":true}` + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("kcat -P: %v\n%s", err, out)
		}
		probe := e.kafka.Consume(t, time.Minute, func(rs []*kgo.Record) bool {
			for _, r := range rs {
				if string(r.Key) == key && strings.Contains(string(r.Value), "probe") {
					return true
				}
			}
			return false
		}, topic)
		for _, r := range probe {
			if string(r.Key) == key && strings.Contains(string(r.Value), "probe") && r.Partition != want {
				t.Errorf("key %s: kcat (murmur2) chose partition %d, Ferry %d", key, r.Partition, want)
			}
		}
	}
	if code, stderr := stop(); code != 0 {
		t.Fatalf("cdc exited %d: %s", code, stderr)
	}
}
