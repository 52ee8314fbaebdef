package sinktest

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/outbox"
	"github.com/ferry-cdc/ferry/internal/pgtest"
	"github.com/ferry-cdc/ferry/internal/route"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

// Main runs the package's tests and then stops the shared PostgreSQL
// server: func TestMain(m *testing.M) { os.Exit(sinktest.Main(m)) }.
func Main(m *testing.M) int { return pgtest.Main(m) }

// Postgres returns the URL of a fresh database for t (wal_level=logical),
// dropped when t ends. The first call starts the package's server (about
// a second); it needs PostgreSQL's server binaries (initdb, postgres) on
// PATH or in pg_config --bindir, unless DATABASE_URL names a server.
func Postgres(t testing.TB) string {
	t.Helper()
	return pgtest.New(t)
}

// Broker is a Kafka-protocol broker for one test.
type Broker struct {
	// Brokers are its host:port addresses, for the sink's kafka.brokers.
	Brokers []string
	b       *kafkatest.Broker
	client  *kgo.Client
}

// Kafka starts a broker for t (three kfake brokers on 127.0.0.1, topics
// created on first use with four partitions), closed when t ends.
func Kafka(t testing.TB) *Broker {
	t.Helper()
	b := kafkatest.New(t)
	return &Broker{Brokers: b.Addrs, b: b, client: b.Client(t, kgo.AllowAutoTopicCreation())}
}

// Produce sends ev to topic as cdc does: keyed by its tenant (so one
// tenant's events keep their order), the payload as the value, and
// Ferry's headers (event_id, tenant_id, event_type, aggregate_type,
// aggregate_id). It fails t if the broker does not acknowledge it.
func (b *Broker) Produce(t testing.TB, topic string, ev connector.Event) {
	t.Helper()
	oe := &outbox.Event{ID: ev.ID, TenantID: ev.TenantID, AggregateType: ev.AggregateType, AggregateID: ev.AggregateID,
		EventType: ev.EventType, Payload: ev.Payload}
	rec := &kgo.Record{Topic: topic, Key: []byte(ev.TenantID), Value: ev.Payload, Headers: route.Headers(&outbox.Tx{}, oe)}
	for k, v := range ev.Headers {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.client.ProduceSync(ctx, rec).FirstErr(); err != nil {
		t.Fatalf("produce %s to %s: %v", ev.ID, topic, err)
	}
}
