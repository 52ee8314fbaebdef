package kafkatest

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
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

	opts  []kfake.Opt // what the cluster was started with, for Restart
	ports []int
	mu    sync.Mutex
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
	return startKfake(t, prefix, opts)
}

// startKfake starts a kfake cluster with the defaults and opts, closed
// when the test ends.
func startKfake(t testing.TB, prefix string, opts []kfake.Opt) *Broker {
	t.Helper()
	base := []kfake.Opt{kfake.NumBrokers(3), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(4)}
	opts = append(base, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	b := &Broker{Addrs: c.ListenAddrs(), Cluster: c, TopicPrefix: prefix, opts: opts}
	for _, a := range b.Addrs {
		_, port, _ := net.SplitHostPort(a)
		n, _ := strconv.Atoi(port)
		b.ports = append(b.ports, n)
	}
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.Cluster != nil {
			b.Cluster.Close()
		}
	})
	return b
}

// Stop closes the kfake cluster, as a broker outage: clients see their
// connections refused until Start. Records survive only when the broker
// was created with kfake.DataDir (and, for topics created after start, a
// clean shutdown: see docs/internals.md).
func (b *Broker) Stop(t testing.TB) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Cluster == nil {
		return
	}
	b.Cluster.Close()
	b.Cluster = nil
}

// Start starts a broker stopped by Stop again on the same ports with the
// same options.
func (b *Broker) Start(t testing.TB) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Cluster != nil {
		return
	}
	var err error
	for attempt := 0; attempt < 40; attempt++ { // the old listeners may take a moment to go
		var c *kfake.Cluster
		if c, err = kfake.NewCluster(append(b.opts, kfake.Ports(b.ports...))...); err == nil {
			b.Cluster = c
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("restart kfake on ports %v: %v", b.ports, err)
}

// Live returns the running kfake cluster, or nil while it is stopped.
func (b *Broker) Live() *kfake.Cluster {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Cluster
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
