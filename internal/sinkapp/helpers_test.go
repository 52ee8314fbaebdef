package sinkapp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/internal/pgtest"
	"github.com/ferry-cdc/ferry/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

var instanceSeq atomic.Int64

type env struct {
	t      *testing.T
	db     string
	kafka  *kafkatest.Broker
	sim    *partnersim.Server
	simURL string
	prod   *kgo.Client
	topic  string
	conn   *pgx.Conn
	// vars is the environment the sink sees (start).
	vars map[string]string
	// logs is the stderr of the sink started last (start).
	logs *syncBuffer
}

func newEnv(t *testing.T, simCfg partnersim.Config) *env {
	t.Helper()
	return newEnvWith(t, simCfg)
}

// newEnvWith is newEnv with options for the kfake broker.
func newEnvWith(t *testing.T, simCfg partnersim.Config, kafkaOpts ...kfake.Opt) *env {
	t.Helper()
	e := &env{t: t, db: pgtest.New(t), kafka: kafkatest.New(t, kafkaOpts...), sim: partnersim.New(simCfg)}
	srv := httptest.NewServer(e.sim)
	t.Cleanup(srv.Close)
	e.simURL = srv.URL
	e.topic = e.kafka.TopicPrefix + "outbox.product"
	e.prod = e.kafka.Client(t, kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), kgo.AllowAutoTopicCreation())
	var err error
	if e.conn, err = pgx.Connect(context.Background(), e.db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close(context.Background()) })
	return e
}

// holdInTx runs sql (a lock) in a transaction on a connection of its
// own and returns it: its Rollback releases the lock, and the test's
// end does if the test does not.
func (e *env) holdInTx(sql string) pgx.Tx {
	e.t.Helper()
	ctx := context.Background()
	locker, err := pgx.Connect(ctx, e.db)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { locker.Close(ctx) })
	tx, err := locker.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = tx.Rollback(ctx) })
	if _, err := tx.Exec(ctx, sql); err != nil {
		e.t.Fatal(err)
	}
	return tx
}

// produce sends a product event of aggregate p1 as cdc would (headers,
// tenant key) and returns the partition it landed on.
func (e *env) produce(tenant, eventID, eventType string, payload string) int32 {
	e.t.Helper()
	return e.emit(tenant, eventID, eventType, "product", "p1", payload)
}

// badBesideGood produces "bad"'s first event (n 1), finds a healthy
// tenant whose events land in the same partition (each probe produces
// an event n 0 for its tenant) and makes the partner fail every call of
// "bad" (503). It returns the healthy tenant and the partition.
func (e *env) badBesideGood() (good string, part int32) {
	e.t.Helper()
	part = e.produce("bad", "bad-1", "product.updated", `{"n":1}`)
	for i := 0; good == ""; i++ {
		name := fmt.Sprintf("good-%d", i)
		if e.produce(name, name+"-probe", "product.updated", `{"n":0}`) == part {
			good = name
		}
	}
	e.sim.AddRule(partnersim.Rule{Tenant: "bad", Status: 503, Reason: "down for this tenant"})
	return good, part
}

// emit produces an event as cdc would, on outbox.<aggregate type>, with
// any extra headers, and returns the partition it landed on.
func (e *env) emit(tenant, eventID, eventType, aggType, aggID, payload string, extra ...kgo.RecordHeader) int32 {
	e.t.Helper()
	rec := &kgo.Record{Topic: e.kafka.TopicPrefix + "outbox." + aggType, Key: []byte(tenant), Value: []byte(payload), Headers: append([]kgo.RecordHeader{
		{Key: "event_id", Value: []byte(eventID)}, {Key: "tenant_id", Value: []byte(tenant)},
		{Key: "event_type", Value: []byte(eventType)}, {Key: "aggregate_type", Value: []byte(aggType)},
		{Key: "aggregate_id", Value: []byte(aggID)}, {Key: "commit_lsn", Value: []byte("0/16B3748")},
	}, extra...)}
	res := e.prod.ProduceSync(context.Background(), rec)
	if err := res.FirstErr(); err != nil {
		e.t.Fatalf("produce: %v", err)
	}
	return res[0].Record.Partition
}

// config writes a sink config file; extra is YAML appended to the
// integration.
func (e *env) config(extra string) string {
	e.t.Helper()
	// Defaults the test may override (the strict YAML loader rejects a
	// key given twice).
	defaults := ""
	for key, line := range map[string]string{"commit_interval:": "    commit_interval: 100ms\n", "retry:": "    retry: {initial: 50ms, max: 500ms}\n",
		"park_recheck:": "    park_recheck: 100ms\n"} {
		if !strings.Contains(extra, key) {
			defaults += line
		}
	}
	body := fmt.Sprintf(`postgres_url: %s
kafka:
  brokers: [%s]
admin_addr: off
log_format: text
integrations:
  - name: shop
    topics: [%s]
    workers: 16
%s
    connector:
      type: webhook
      url: %s/v1/events
      timeout: 2s
%s`, e.db, strings.Join(e.kafka.Addrs, ","), e.topic, defaults, e.simURL, extra)
	p := filepath.Join(e.t.TempDir(), "sink.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// start runs the sink in this process until stop is called.
//
// Each start is its own process as far as the consumer group knows (a
// static instance id of its own) unless args or the environment name one.
func (e *env) start(args ...string) (stop func() (int, string)) {
	if !slices.Contains(args, "--instance-id") && e.vars["FERRY_INSTANCE_ID"] == "" {
		args = append(args, "--instance-id", fmt.Sprintf("test-%d", instanceSeq.Add(1)))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	e.logs = &stderr
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, func(k string) string { return e.vars[k] }, io.Discard, &stderr) }()
	var once sync.Once
	var code int
	stop = func() (int, string) {
		once.Do(func() { cancel(); code = <-done })
		return code, stderr.String()
	}
	e.t.Cleanup(func() {
		if c, s := stop(); c != 0 || e.t.Failed() {
			e.t.Logf("sink exit %d:\n%s", c, s)
		}
	})
	return stop
}

// delivered returns, per tenant, the payload "n" values the partner
// applied (replays excluded), in arrival order.
func (e *env) delivered() map[string][]int {
	out := map[string][]int{}
	for _, r := range e.sim.Requests("") {
		if r.Replayed || r.Status >= 300 {
			continue
		}
		var ev struct {
			Payload struct{ N int } `json:"payload"`
		}
		if err := json.Unmarshal([]byte(r.Body), &ev); err != nil {
			e.t.Fatalf("partner got %q: %v", r.Body, err)
		}
		out[r.Tenant] = append(out[r.Tenant], ev.Payload.N)
	}
	return out
}

func (e *env) state(eventID string) string {
	var s string
	err := e.conn.QueryRow(context.Background(), `SELECT state FROM ferry.delivery WHERE integration = 'shop' AND event_id = $1`, eventID).Scan(&s)
	if err != nil {
		return "none"
	}
	return s
}

// metric returns one series' value from a process's /metrics, or -1
// when absent.
func metric(addr, series string) float64 {
	f, err := metrics.Scrape("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	if v, ok := f.Value(series); ok {
		return v
	}
	return -1
}

// Shared helpers (internal/testutil), under the names the tests use.
var (
	waitFor  = testutil.WaitFor
	freeAddr = testutil.FreeAddr
)

type syncBuffer = testutil.SyncBuffer
