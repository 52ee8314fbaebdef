package kafkatest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/route"
)

// Broker is a Kafka-protocol broker for one test.
type Broker struct {
	// Addrs are host:port seed brokers.
	Addrs []string
	// Cluster is the kfake cluster, for fault injection; nil when the
	// broker is a container.
	Cluster *kfake.Cluster
	// TopicPrefix is unique per test; tests put it in front of the topics
	// they produce to, so tests sharing one container never see each
	// other's records.
	TopicPrefix string
	// ClientOpts are added to every client Client and Consume make (TLS
	// and SASL for a secured broker).
	ClientOpts []kgo.Opt
}

var (
	seq       atomic.Int64
	container struct {
		once  sync.Once
		addrs []string
		err   error
	}
)

// New starts a broker for the test and closes it when the test ends. The
// kfake cluster auto-creates topics with 4 partitions unless opts say
// otherwise.
func New(t testing.TB, opts ...kfake.Opt) *Broker {
	t.Helper()
	prefix := nextPrefix()
	if os.Getenv("FERRY_TEST_BACKEND") == "containers" {
		container.once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			container.addrs, container.err = startContainer(ctx)
		})
		if container.err != nil {
			t.Fatalf("start Kafka: %v", container.err)
		}
		return &Broker{Addrs: container.addrs, TopicPrefix: prefix}
	}
	base := []kfake.Opt{kfake.NumBrokers(3), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(4)}
	c, err := kfake.NewCluster(append(base, opts...)...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return &Broker{Addrs: c.ListenAddrs(), Cluster: c, TopicPrefix: prefix}
}

func nextPrefix() string { return fmt.Sprintf("t%d.", seq.Add(1)) }

// Client returns a client for the broker, closed when the test ends.
func (b *Broker) Client(t testing.TB, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	base := append([]kgo.Opt{kgo.SeedBrokers(b.Addrs...)}, b.ClientOpts...)
	cl, err := kgo.NewClient(append(base, opts...)...)
	if err != nil {
		t.Fatalf("kafka client: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// Consume reads topics from the start until stop says it has seen enough
// or the ceiling passes, and returns every record read. It fails the test
// on a fetch error or when the ceiling passes first.
func (b *Broker) Consume(t testing.TB, ceiling time.Duration, stop func([]*kgo.Record) bool, topics ...string) []*kgo.Record {
	t.Helper()
	cl := b.Client(t, kgo.ConsumeTopics(topics...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), ceiling)
	defer cancel()
	var got []*kgo.Record
	for !stop(got) {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consume %v: gave up after %s with %d records", topics, ceiling, len(got))
		}
		for _, e := range fs.Errors() {
			// Topics that do not exist yet are retried by the client.
			t.Logf("fetch %s/%d: %v", e.Topic, e.Partition, e.Err)
		}
		got = append(got, fs.Records()...)
	}
	return got
}

// AtLeast is a Consume stop condition: at least n records.
func AtLeast(n int) func([]*kgo.Record) bool {
	return func(rs []*kgo.Record) bool { return len(rs) >= n }
}

// Header returns the value of a record header, or "".
func Header(r *kgo.Record, key string) string { return route.HeaderValue(r, key) }
