package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// faultTopic is the topic of the fault tests' own broker (no other test
// shares it, so it needs no prefix, and it is seeded so that its records
// survive a broker restart).
const faultTopic = "faults.outbox.product"

// faultEnv is an env whose Postgres cluster and Kafka broker belong to the
// test alone, so the test can restart them.
func faultEnv(t *testing.T) (*env, *pgtest.Cluster) {
	t.Helper()
	if pgtest.Backend() == "containers" {
		t.Skip("restarts need a cluster of the test's own")
	}
	ctx := context.Background()
	cl, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.Stop(); err != nil {
			t.Errorf("stop postgres: %v", err)
		}
	})
	db, err := pgtest.CreateDatabase(ctx, cl.URL, "faults")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, db: db, kafka: kafkatest.New(t, kfake.DataDir(t.TempDir()), kfake.SeedTopics(4, faultTopic))}
	connectEnv(t, e)
	return e, cl
}

// writer commits transactions of random tenants' events (writeEvents:
// per-tenant numbers in commit order) until stopped, riding through
// Postgres restarts: a failed transaction is retried, and the database
// says afterwards what committed.
type writer struct {
	stop   context.CancelFunc
	done   chan struct{}
	commit atomic.Int64
}

func startWriter(t *testing.T, e *env, tenants, perTx int) *writer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e.exec(`CREATE TABLE IF NOT EXISTS tenant_counter (tenant text PRIMARY KEY, n int NOT NULL)`)
	for i := range tenants {
		e.exec(`INSERT INTO tenant_counter VALUES ($1, 0) ON CONFLICT DO NOTHING`, fmt.Sprintf("tenant-%02d", i))
	}
	pool, err := pgxpool.New(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	w := &writer{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer pool.Close()
		rng := rand.New(rand.NewPCG(1, 2))
		for ctx.Err() == nil {
			picks := make([]string, perTx)
			for i := range picks {
				picks[i] = fmt.Sprintf("tenant-%02d", rng.IntN(tenants))
			}
			slices.Sort(picks)
			if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return writeEvents(ctx, tx, picks) }); err != nil {
				// Postgres is restarting: try again shortly (pacing, not an
				// assertion).
				select {
				case <-ctx.Done():
				case <-time.After(20 * time.Millisecond):
				}
				continue
			}
			w.commit.Add(1)
		}
	}()
	t.Cleanup(w.halt)
	return w
}

func (w *writer) halt() { w.stop(); <-w.done }

// caughtUp waits until cdc confirmed everything written so far: each
// fault then finds cdc in its steady state, and the duplicates counted
// are what the faults cost.
func caughtUp(t *testing.T, e *env, p *proc) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.db) // e.conn did not survive the restarts
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var lsn pglogrepl.LSN
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()`).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "cdc confirmed what was written", func() bool { return p.metric("ferry_cdc_confirmed_lsn") >= float64(lsn) })
}

// committedAfter waits until the writer committed n more transactions.
func (w *writer) committedAfter(t *testing.T, n int64) {
	t.Helper()
	target := w.commit.Load() + n
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more transactions committed", n), func() bool { return w.commit.Load() >= target })
}

// consumeAll reads faultTopic until every outbox row's event id was seen,
// checks per-tenant commit order with seen ids dropped, and returns the
// records.
func consumeAll(t *testing.T, e *env) []*kgo.Record {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, e.db) // e.conn did not survive the restarts
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	recs := e.kafka.Consume(t, time.Minute, func(rs []*kgo.Record) bool { return len(eventIDs(rs)) >= rows }, faultTopic)
	counts := tenantCounts(t, ctx, pool)
	got := checkTenantOrder(t, recs, true)
	for tenant, n := range counts {
		if got[tenant] != n {
			t.Errorf("tenant %s: last event %d in Kafka, %d committed", tenant, got[tenant], n)
		}
	}
	if ids := eventIDs(recs); len(ids) != rows {
		t.Fatalf("%d distinct event ids in Kafka for %d outbox rows", len(ids), rows)
	}
	return recs
}

// labelled returns the value of a labelled metric line, e.g.
// ferry_cdc_reconnects_total{what="postgres"}.
func (p *proc) labelled(name, label, value string) float64 {
	return p.metric(fmt.Sprintf(`%s{%s=%q}`, name, label, value))
}

// Guarantee 7: cdc rides through a broker that is down at start, Postgres
// restarts of every kind (fast, immediate, kill of the postmaster) and
// broker outages while writes go on across many tenants: it never exits,
// /readyz goes false and comes back each time, the reconnects counter
// rises, and the consumer (dropping seen event ids) gets every event in
// per-tenant commit order.
func TestGuarantee7_CDCRidesThroughPostgresRestartsAndBrokerOutages(t *testing.T) {
	e, cluster := faultEnv(t)
	ctx := context.Background()
	e.setup()

	// A broker that is down at start.
	e.kafka.Stop(t)
	p := e.start("--topic-template", "faults.outbox.{{.AggregateType}}", "--reconnect-max", "1s")
	waitFor(t, 30*time.Second, "kafka reconnects counted while the broker is down", func() bool {
		return p.labelled("ferry_cdc_reconnects_total", "what", "kafka") >= 1
	})
	if code, body := p.readyz(); code == 200 {
		t.Fatalf("readyz %d %q with the broker down", code, body)
	}
	e.kafka.Start(t)
	waitFor(t, 30*time.Second, "cdc ready once the broker is up", p.ready)

	w := startWriter(t, e, 30, 3)
	w.committedAfter(t, 50)
	caughtUp(t, e, p)
	for round := range 3 {
		for _, mode := range []string{"fast", "immediate", "kill"} {
			if err := cluster.Down(mode); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 30*time.Second, "readyz false while postgres is down ("+mode+")", func() bool { return !p.ready() })
			if err := cluster.Up(ctx); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 30*time.Second, "readyz true after postgres restart ("+mode+")", p.ready)
			if p.exited() {
				t.Fatalf("cdc exited after postgres restart %d (%s)", round, mode)
			}
			w.committedAfter(t, 20)
			caughtUp(t, e, p)
		}
	}
	for range 2 {
		e.kafka.Stop(t)
		waitFor(t, 30*time.Second, "readyz false while the broker is down", func() bool { return !p.ready() })
		e.kafka.Start(t)
		waitFor(t, 30*time.Second, "readyz true after the broker is back", p.ready)
		w.committedAfter(t, 20)
		caughtUp(t, e, p)
	}
	w.halt()
	recs := consumeAll(t, e)
	if p.exited() {
		t.Fatalf("cdc exited: %v", p.cmd.ProcessState)
	}
	pgRe, kRe := p.labelled("ferry_cdc_reconnects_total", "what", "postgres"), p.labelled("ferry_cdc_reconnects_total", "what", "kafka")
	if pgRe < 9 || kRe < 2 {
		t.Fatalf("reconnects: postgres %v (want >= 9), kafka %v (want >= 2)", pgRe, kRe)
	}
	rows := len(eventIDs(recs))
	t.Logf("9 postgres restarts, 3 broker outages: %d events, %d records, %d duplicates; reconnects postgres %v, kafka %v",
		rows, len(recs), len(recs)-rows, pgRe, kRe)
	if f := os.Getenv("FERRY_FAULT_REPORT"); f != "" {
		fh, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintf(fh, "restarts events=%d records=%d duplicates=%d\n", rows, len(recs), len(recs)-rows)
			fh.Close()
		}
	}
}

// A record that Kafka refuses for good (a non-retriable produce error on
// one partition) while later transactions keep coming: franz-go fails it
// and every record buffered behind it, and bumps the producer epoch. No
// record produced after the failure may reach Kafka before the failed one
// is resent, or a consumer dropping seen ids would see a tenant out of
// order: the session ends, cdc resends from the slot, and the order holds.
func TestOrderingHoldsWhenARecordFailsWhileLaterTransactionsFlow(t *testing.T) {
	e, _ := faultEnv(t)
	e.setup()
	p := e.start("--topic-template", "faults.outbox.{{.AggregateType}}", "--reconnect-max", "500ms")
	waitFor(t, 30*time.Second, "cdc ready", p.ready)
	w := startWriter(t, e, 30, 3)
	w.committedAfter(t, 30)
	for i := range 3 {
		fault := e.kafka.Live().Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: faultTopic,
			Partitions: []int32{int32(i)}, Err: kerr.PolicyViolation, Count: 1})
		if err := fault.Wait(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		w.committedAfter(t, 30)
	}
	waitFor(t, 30*time.Second, "cdc ready after the failures", p.ready)
	w.halt()
	recs := consumeAll(t, e)
	if p.exited() {
		t.Fatalf("cdc exited on a failed record: %v", p.cmd.ProcessState)
	}
	if n := p.labelled("ferry_cdc_reconnects_total", "what", "kafka"); n < 3 {
		t.Fatalf("kafka reconnects %v: want a new session per failed record (3)", n)
	}
	t.Logf("3 refused produce requests: %d events, %d records", len(eventIDs(recs)), len(recs))
}
