package publish

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ferry-cdc/ferry/internal/kafkaconf"
	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/outbox"
	"github.com/ferry-cdc/ferry/internal/route"
)

func streamSession(t *testing.T, cfg Config) *Session {
	t.Helper()
	b := kafkatest.New(t, kfake.SeedTopics(4, "stream.product"))
	rcfg := route.Config{TopicTemplate: "stream.{{.AggregateType}}"}
	router, err := route.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Config = kafkaconf.Config{Brokers: b.Addrs}
	pub, err := New(cfg, router, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.NewCDC())
	if err != nil {
		t.Fatal(err)
	}
	s, err := pub.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s.(*Session)
}

func event(i int) *outbox.Event {
	return &outbox.Event{ID: strconv.Itoa(i), TenantID: "t" + strconv.Itoa(i%7), AggregateType: "product", AggregateID: "a",
		EventType: "product.updated", Payload: []byte(`{"n":"0123456789"}`)}
}

// A streamed transaction is acknowledged only after its Commit, however
// long after its records; more records than max_buffered_records and
// max_buffered_bytes allow at once pass through (the caps wait, they do
// not refuse); a transaction begun and never committed gets an error
// from Close, so the reader never confirms it.
func TestStreamedTransactionAcknowledgedOnlyAfterCommit(t *testing.T) {
	s := streamSession(t, Config{MaxBufferedRecords: 50, MaxBufferedBytes: 4096})
	ctx := context.Background()
	acks := make(chan error, 2)
	s.Begin(&outbox.Tx{CommitLSN: 0x10, CommitLSNText: "0/10", CommitTime: time.Now()}, func(err error) { acks <- err })
	for i := range 2000 {
		if err := s.Publish(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Every record can be acknowledged by now; the transaction is not
	// done until its Commit.
	if err := s.bytes.Acquire(ctx, s.p.cfg.MaxBufferedBytes); err != nil { // waits until every record was answered
		t.Fatal(err)
	}
	s.bytes.Release(s.p.cfg.MaxBufferedBytes)
	select {
	case err := <-acks:
		t.Fatalf("ack %v before the Commit", err)
	default:
	}
	s.Commit()
	select {
	case err := <-acks:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("no ack a minute after the Commit")
	}

	// Begun, some records sent, never committed: Close fails it.
	s.Begin(&outbox.Tx{CommitLSN: 0x20, CommitLSNText: "0/20", CommitTime: time.Now()}, func(err error) { acks <- err })
	for i := range 10 {
		if err := s.Publish(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	select {
	case err := <-acks:
		if !errors.Is(err, errSessionEnded) {
			t.Fatalf("ack of an uncommitted transaction at Close: %v, want the session's end", err)
		}
	default:
		t.Fatal("Close returned without acking the transaction begun")
	}
}
