package publish

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-cdc/ferry/internal/kafkaconf"
	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/outbox"
	"github.com/ferry-cdc/ferry/internal/route"
)

// The failure latch: once a record of a session has failed, no record the
// session was given afterwards may be written, or the restart's resend of
// the failed one would land behind it. One tenant (one partition) gets a
// stream of single-event transactions as fast as HandleTx takes them; the
// broker refuses the first produce request for good. franz-go then fails
// every record buffered for the partition and bumps the producer epoch;
// a session without the latch writes the later records under the new
// epoch. Nothing at or after the first failed record may be in Kafka.
func TestSessionWritesNothingAfterAFailedRecord(t *testing.T) {
	for round := range 5 {
		t.Run(strconv.Itoa(round), func(t *testing.T) {
			b := kafkatest.New(t, kfake.SeedTopics(4, "latch.product"))
			if b.Cluster == nil {
				t.Skip("needs kfake fault injection")
			}
			rcfg := route.Config{TopicTemplate: "latch.{{.AggregateType}}"}
			rcfg.SetDefaults()
			router, err := route.New(rcfg)
			if err != nil {
				t.Fatal(err)
			}
			pub, err := New(Config{Config: kafkaconf.Config{Brokers: b.Addrs}}, router, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.NewCDC())
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			s, err := pub.Open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			fault := b.Cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "latch.product", Err: kerr.PolicyViolation})

			var mu sync.Mutex
			firstFailed := -1
			const n = 3000
			for i := range n {
				tx := &outbox.Tx{EndLSN: 1, CommitTime: time.Now(), Events: []outbox.Event{{ID: strconv.Itoa(i), TenantID: "t1",
					AggregateType: "product", AggregateID: "a", EventType: "product.updated", Payload: []byte(`{}`)}}}
				if err := s.HandleTx(ctx, tx, func(err error) {
					if err != nil {
						mu.Lock()
						if firstFailed < 0 || i < firstFailed {
							firstFailed = i
						}
						mu.Unlock()
					}
				}); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			fault.Remove() // if the session ended before it fired (any rewind ends it), the sentinel must not meet it
			if firstFailed < 0 {
				t.Fatal("no record failed: the fault did not apply")
			}

			// A sentinel from a new session marks the end of what was written.
			s2, err := pub.Open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			if err := s2.HandleTx(ctx, &outbox.Tx{EndLSN: 2, Events: []outbox.Event{{ID: "sentinel", TenantID: "t1",
				AggregateType: "product", AggregateID: "a", EventType: "product.updated", Payload: []byte(`{}`)}}}, func(err error) { done <- err }); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("sentinel: %v", err)
			}
			s2.Close()
			recs := b.Consume(t, time.Minute, func(rs []*kgo.Record) bool {
				return len(rs) > 0 && kafkatest.Header(rs[len(rs)-1], route.HeaderEventID) == "sentinel"
			}, "latch.product")
			written := 0
			for _, r := range recs[:len(recs)-1] {
				i, err := strconv.Atoi(kafkatest.Header(r, route.HeaderEventID))
				if err != nil {
					t.Fatal(err)
				}
				if i >= firstFailed {
					t.Fatalf("record %d written (offset %d) although record %d of the same session failed before it", i, r.Offset, firstFailed)
				}
				written++
			}
			t.Logf("first failed record %d of %d; %d written before it", firstFailed, n, written)
		})
	}
}
