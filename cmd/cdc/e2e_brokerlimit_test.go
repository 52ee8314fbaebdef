package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// A broker whose message.max.bytes is below cdc's max_record_bytes
// refuses a record that cdc let through: the record is dead-lettered
// with the broker's reason, the events around it arrive once and in
// order, and cdc does not restart its session over it again and again.
func TestGuarantee5_RecordOverTheBrokersLimitIsDeadLetteredOnce(t *testing.T) {
	e := &env{t: t, db: pgtest.New(t),
		kafka: kafkatest.New(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "20000"}))}
	connectEnv(t, e)
	e.setup()
	p := e.start() // max_record_bytes stays at its default, 1,000,000
	waitFor(t, 30*time.Second, "cdc ready", p.ready)

	good1 := e.insert("acme", "product", "p1", "product.created", `{"n":1}`)
	var huge string
	if err := e.conn.QueryRow(context.Background(), `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
		SELECT 'acme', 'product', 'p1', 'product.updated', jsonb_build_object('blob', string_agg(md5(random()::text), ''))
		FROM generate_series(1, 3000) RETURNING id::text`).Scan(&huge); err != nil {
		t.Fatal(err)
	}
	good2 := e.insert("acme", "product", "p1", "product.updated", `{"n":3}`)

	main := e.kafka.Consume(t, time.Minute, hasIDs([]string{good1, good2}), e.topic("product"))
	time.Sleep(2 * time.Second) // room for a resend, were there one
	main = e.kafka.Consume(t, time.Minute, kafkatest.AtLeast(len(main)), e.topic("product"))
	if len(main) != 2 || kafkatest.Header(main[0], "event_id") != good1 || kafkatest.Header(main[1], "event_id") != good2 {
		t.Fatalf("main topic: want exactly %s then %s, got %v", good1, good2, eventIDs(main))
	}
	dead := e.kafka.Consume(t, time.Minute, kafkatest.AtLeast(1), e.kafka.TopicPrefix+"dead_letter")
	if len(dead) != 1 || kafkatest.Header(dead[0], "event_id") != huge || !strings.Contains(kafkatest.Header(dead[0], "ferry_error"), "MESSAGE_TOO_LARGE") {
		t.Fatalf("dead letters: want one for %s naming MESSAGE_TOO_LARGE, got %v", huge, eventIDs(dead))
	}
	if got := p.metric(`ferry_cdc_reconnects_total{what="kafka"}`); got > 0 {
		t.Errorf("cdc restarted its Kafka session %v times over one oversized record", got)
	}
	if p.exited() || !p.ready() {
		t.Fatalf("cdc stopped:\n%s", p.stderr.String())
	}
}

// A topic whose max.message.bytes is below what the broker and cdc allow
// refuses a batch the client thought fine; every record buffered for the
// partition fails with it, so no record can be blamed and none is
// dead-lettered: cdc exits non-zero saying which setting to change, and
// the slot stays before the refused transaction, so nothing is skipped
// (a cdc started once the limit is raised sends it).
func TestTopicLimitBelowMaxRecordBytesStopsWithTheSlotBeforeIt(t *testing.T) {
	e := newEnv(t)
	e.setup()
	adm := kadm.NewClient(e.kafka.Client(t))
	limit := "20000"
	if _, err := adm.CreateTopic(context.Background(), 1, 1, map[string]*string{"max.message.bytes": &limit}, e.topic("product")); err != nil {
		t.Fatal(err)
	}
	var huge string
	if err := e.conn.QueryRow(context.Background(), `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
		SELECT 'acme', 'product', 'p1', 'product.updated', jsonb_build_object('blob', string_agg(md5(random()::text), ''))
		FROM generate_series(1, 1000) RETURNING id::text`).Scan(&huge); err != nil {
		t.Fatal(err)
	}
	code, stderr := e.runToExit()
	if code == 0 || !strings.Contains(stderr, "max.message.bytes") || !strings.Contains(stderr, e.topic("product")) {
		t.Fatalf("exit %d, want non-zero naming the topic and max.message.bytes; stderr:\n%s", code, stderr)
	}
	// Nothing was skipped: with the topic's limit raised, the next cdc
	// sends the refused event.
	raised := "2000000"
	if _, err := adm.AlterTopicConfigs(context.Background(), []kadm.AlterConfig{{Name: "max.message.bytes", Value: &raised}}, e.topic("product")); err != nil {
		t.Fatal(err)
	}
	e.inproc()
	e.kafka.Consume(t, time.Minute, hasIDs([]string{huge}), e.topic("product"))
	ends, err := adm.ListEndOffsets(context.Background(), e.kafka.TopicPrefix+"dead_letter")
	if err != nil {
		t.Fatal(err)
	}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil && o.Offset > 0 {
			t.Errorf("%d records dead-lettered in partition %d; the refused batch names no culprit", o.Offset, o.Partition)
		}
	})
}
