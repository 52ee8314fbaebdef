package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// A resync takes no lock on the outbox: while it waits for a transaction
// that was running at its low watermark, other transactions (the same
// tenant's and others') commit at once. Objects changed inside its window
// are not resynced: their own events, later in the stream, carry the
// newer state. (With the SHARE lock resync used to take, the inserts
// below queued behind its lock request until the open transaction ended.)
func TestResyncDoesNotBlockWriters(t *testing.T) {
	e := newEnv(t)
	e.setup()
	p := e.start()
	for i := 1; i <= 5; i++ {
		e.insert("acme", "product", fmt.Sprintf("p%d", i), "product.created", `{"v":1}`)
	}
	e.kafka.Consume(t, 30*time.Second, kafkatest.AtLeast(5), e.topic("product"))

	ctx := context.Background()
	open, err := pgx.Connect(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(ctx)
	tx, err := open.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
		VALUES ('acme', 'product', 'p1', 'product.updated', '{"v":99}')`); err != nil {
		t.Fatal(err)
	}

	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		var out, errb bytes.Buffer
		code := run(ctx, []string{"resync", "--postgres-url", e.db, "--integration", "shop", "--tenant", "acme", "--resync-chunk", "2"}, noenv, &out, &errb)
		done <- result{code, out.String(), errb.String()}
	}()
	waitFor(t, 30*time.Second, "the resync waiting for the open transaction", func() bool {
		var waiting bool
		_ = e.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_visible_in_snapshot%' AND pid <> pg_backend_pid())`).Scan(&waiting)
		return waiting
	})

	// Writers go on while the resync is under way.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for _, w := range [][3]string{{"globex", "g1", `{"v":1}`}, {"acme", "p2", `{"v":2}`}} {
		if _, err := e.conn.Exec(wctx, `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
			VALUES ($1, 'product', $2, 'product.updated', $3::jsonb)`, w[0], w[1], w[2]); err != nil {
			t.Fatalf("insert for %s during the resync: %v (a writer waited for the resync)", w[0], err)
		}
	}
	select {
	case r := <-done:
		t.Fatalf("resync finished before the transaction running at its low watermark ended: %d %s %s", r.code, r.out, r.err)
	default:
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("resync did not finish after the open transaction committed")
	}
	// The work set is read after p1's update committed: five objects.
	if r.code != 0 || !strings.Contains(r.out, "5 events of tenant acme") {
		t.Fatalf("resync: %d %s %s", r.code, r.out, r.err)
	}
	e.insert("acme", "product", "sentinel", "product.created", `{"v":1}`)
	// acme's records share one partition, in order: once its sentinel is
	// read, so is every acme record before it. (Globex's may be in another
	// partition and fetched after it: seen in a clean-clone run, where the
	// last record returned was not the sentinel though all 12 were there.)
	recs := e.kafka.Consume(t, 30*time.Second, func(rs []*kgo.Record) bool {
		return slices.ContainsFunc(rs, func(r *kgo.Record) bool { return kafkatest.Header(r, "aggregate_id") == "sentinel" })
	}, e.topic("product"))
	var resynced []string
	for _, r := range recs {
		if kafkatest.Header(r, "ferry_resync") == "shop" {
			resynced = append(resynced, kafkatest.Header(r, "aggregate_id"))
		}
	}
	if strings.Join(resynced, ",") != "p3,p4,p5" {
		t.Fatalf("resynced %v; want p3,p4,p5 (p1 and p2 changed inside the window: their own events are the newest)", resynced)
	}
	last := lastPerObject(t, recs, "acme")
	if last["p1"] != 99 || last["p2"] != 2 || last["p3"] != 1 {
		t.Fatalf("latest per object at the end of the topic: %v", last)
	}
	if got := p.metric(`ferry_cdc_resync_events_total{outcome="superseded"}`); got != 2 {
		t.Fatalf("superseded resync events: %v, want 2", got)
	}
}

// lastPerObject is, per aggregate of tenant in recs (in topic order), the
// "v" of its last record, normal or resync.
func lastPerObject(t *testing.T, recs []*kgo.Record, tenant string) map[string]int {
	t.Helper()
	last := map[string]int{}
	for _, r := range recs {
		if kafkatest.Header(r, "tenant_id") != tenant {
			continue
		}
		var v struct{ V int }
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Fatalf("record %s: %v", kafkatest.Header(r, "event_id"), err)
		}
		last[kafkatest.Header(r, "aggregate_id")] = v.V
	}
	return last
}

// Guarantee 2 through a resync under load and faults: writers keep
// changing the tenant's objects while it is resynced a few objects per
// chunk; in some rounds cdc is killed (kill -9) and restarted in the
// middle, in one the resync command itself is killed, in one Postgres
// restarts (immediate: a crash) and the running cdc serves the request
// again. Every round, each object's last record in the topic carries its
// latest committed state, and every object is there (the objects were
// written before the slot existed: only the resync, or an update inside
// it, brings them).
func TestResyncUnderWritesAndKillsEndsAtEachObjectsLatestState(t *testing.T) {
	for round, fault := range []string{"none", "kill cdc", "kill resync", "restart postgres", "kill cdc"} {
		t.Run(fmt.Sprintf("%d_%s", round, strings.ReplaceAll(fault, " ", "_")), func(t *testing.T) {
			resyncUnderWrites(t, fault, int64(round))
		})
	}
}

func resyncUnderWrites(t *testing.T, fault string, seed int64) {
	var e *env
	var cl *pgtest.Cluster
	if fault == "restart postgres" {
		e, cl = faultEnv(t)
	} else {
		e = newEnv(t)
	}
	ctx := context.Background()
	const objects = 2000
	// The objects are written before the slot exists, so the resync is
	// the only way they reach the topic: one it loses is missing there.
	e.exec(`CREATE TABLE outbox (seq bigint GENERATED ALWAYS AS IDENTITY, id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
		tenant_id text, aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL,
		payload jsonb, headers jsonb, created_at timestamptz NOT NULL DEFAULT now())`)
	e.exec(`CREATE INDEX ON outbox (tenant_id, seq)`)
	if _, err := e.conn.Exec(ctx, `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
		SELECT 'acme', 'product', 'p' || i, 'product.created', jsonb_build_object('v', i) FROM generate_series(1, $1) i`, objects); err != nil {
		t.Fatal(err)
	}
	e.setup()
	cdc := e.start("--resync-chunk", "3")

	// Writers: each update carries a version larger than any before it,
	// taken and written under one lock, so versions commit in order per
	// object. A write whose outcome a restart hides is judged by what the
	// database holds in the end.
	var version atomic.Int64
	version.Store(objects)
	var mu sync.Mutex
	wctx, stopWriters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(seed), uint64(w)))
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(ctx)
				}
			}()
			for wctx.Err() == nil {
				if conn == nil || conn.IsClosed() {
					c, err := pgx.Connect(ctx, e.db)
					if err != nil { // Postgres is restarting
						time.Sleep(50 * time.Millisecond)
						continue
					}
					conn = c
				}
				obj := fmt.Sprintf("p%d", 1+rng.IntN(objects))
				tenant := "acme"
				if rng.IntN(4) == 0 {
					tenant = "globex"
				}
				mu.Lock()
				_, err := conn.Exec(ctx, `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
					VALUES ($1, 'product', $2, 'product.updated', jsonb_build_object('v', $3::bigint))`, tenant, obj, version.Add(1))
				mu.Unlock()
				if err != nil && fault != "restart postgres" {
					t.Error(err)
					return
				}
				time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
			}
		}()
	}

	// The resync, as its own process (it can be killed).
	chunk, published, settle := "3", 300.0, 300*time.Millisecond
	switch fault { // slower, so the fault strikes before it ends
	case "kill resync":
		chunk, published, settle = "1", 30, 0
	case "restart postgres":
		chunk = "1"
	}
	resync := exec.Command(cdcBinary, "resync", "--postgres-url", e.db, "--integration", "shop", "--tenant", "acme", "--resync-chunk", chunk, "--log-format", "text")
	var rout, rerr syncBuffer
	resync.Stdout, resync.Stderr = &rout, &rerr
	resync.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := resync.Start(); err != nil {
		t.Fatal(err)
	}
	resyncDone := make(chan error, 1)
	go func() { resyncDone <- resync.Wait() }()
	// Faults strike once the resync has emitted some chunks, and cdc has
	// had time to confirm positions past its low watermark, were it not
	// held there.
	waitFor(t, time.Minute, "resync events published", func() bool {
		return cdc.metric(`ferry_cdc_resync_events_total{outcome="published"}`) >= published
	})
	time.Sleep(settle)
	switch fault {
	case "kill cdc":
		cdc.kill()
		cdc = e.start("--resync-chunk", "3")
	case "kill resync":
		_ = resync.Process.Signal(syscall.SIGKILL)
	case "restart postgres":
		if err := cl.Restart(ctx, "immediate", 0); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-resyncDone:
		if fault == "none" || fault == "kill cdc" {
			if err != nil {
				t.Fatalf("resync: %v\n%s%s", err, rout.String(), rerr.String())
			}
		} else if err == nil {
			t.Fatalf("the resync finished before the fault (%s): the round tests nothing", fault)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("resync did not finish\n%s", rerr.String())
	}
	conn, err := pgx.Connect(ctx, e.db) // e.conn does not survive a restart
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Cut short, the request is served again by the running cdc.
	waitFor(t, 2*time.Minute, "the request done", func() bool {
		var done bool
		_ = conn.QueryRow(ctx, `SELECT done_at IS NOT NULL FROM ferry.resync_request`).Scan(&done)
		return done
	})
	stopWriters()
	wg.Wait()
	if t.Failed() {
		return
	}
	if _, err := conn.Exec(ctx, `INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
		VALUES ('acme', 'product', 'sentinel', 'product.created', '{"v":0}')`); err != nil {
		t.Fatal(err)
	}
	recs := e.kafka.Consume(t, time.Minute, func(rs []*kgo.Record) bool {
		for _, r := range rs {
			if kafkatest.Header(r, "aggregate_id") == "sentinel" {
				return true
			}
		}
		return false
	}, e.topic("product"))
	last := lastPerObject(t, recs, "acme")
	resynced := 0
	for _, r := range recs {
		if kafkatest.Header(r, "ferry_resync") == "shop" {
			resynced++
		}
	}
	var attempts int
	_ = conn.QueryRow(ctx, `SELECT attempts FROM ferry.resync_request`).Scan(&attempts)
	t.Logf("%s: %d versions written, %d resync records, %d attempts, superseded %v, dropped %v", fault, version.Load()-objects, resynced, attempts,
		cdc.metric(`ferry_cdc_resync_events_total{outcome="superseded"}`), cdc.metric(`ferry_cdc_resync_events_total{outcome="dropped"}`))
	if (fault == "kill resync" || fault == "restart postgres") && attempts < 2 {
		t.Fatalf("the resync cut short was not served again: %d attempts", attempts)
	}
	if resynced == 0 {
		t.Fatal("no resync records")
	}
	rows, err := conn.Query(ctx, `SELECT aggregate_id, max((payload->>'v')::bigint) FROM outbox
		WHERE tenant_id = 'acme' AND aggregate_id <> 'sentinel' GROUP BY aggregate_id`)
	if err != nil {
		t.Fatal(err)
	}
	latest := map[string]int64{}
	for rows.Next() {
		var obj string
		var v int64
		if err := rows.Scan(&obj, &v); err != nil {
			t.Fatal(err)
		}
		latest[obj] = v
	}
	if rows.Err() != nil || len(latest) != objects {
		t.Fatalf("read the latest versions: %v (%d objects)", rows.Err(), len(latest))
	}
	wrong := 0
	for obj, v := range latest {
		if int64(last[obj]) != v {
			if wrong < 10 {
				t.Errorf("%s: last record carries v %d, latest written %d", obj, last[obj], v)
			}
			wrong++
		}
	}
	if wrong > 0 {
		t.Fatalf("%d of %d objects end at a stale state", wrong, objects)
	}
}

// outbox.resync_queries: a resync reads the current state of a tenant's
// objects of an aggregate type from the application's own tables, so
// objects whose outbox rows are gone are resynced too, with the event
// type configured; other aggregate types still come from the outbox. A
// query that cannot run fails the request once, with its error recorded,
// instead of being tried forever, and closes its window.
func TestResyncQueriesReadTheApplicationsOwnTables(t *testing.T) {
	e := newEnv(t)
	e.setup()
	p := e.start()
	e.exec(`CREATE TABLE customers (tenant_id text NOT NULL, id text NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, id))`)
	e.exec(`INSERT INTO customers VALUES ('acme', 'c1', 'Ann'), ('acme', 'c2', 'Bob'), ('acme', 'c3', 'Cyd'), ('globex', 'g1', 'Gus')`)
	c1 := e.insert("acme", "customer", "c1", "customer.created", `{"name":"Ann (old)"}`) // c2 and c3 have no outbox rows left
	e.insert("acme", "product", "p1", "product.created", `{"v":1}`)
	e.kafka.Consume(t, 30*time.Second, kafkatest.AtLeast(2), e.topic("customer"), e.topic("product"))

	good := writeFile(t, `outbox:
  resync_queries:
    - aggregate_type: customer
      event_type: customer.updated
      query: SELECT id AS aggregate_id, jsonb_build_object('name', name) AS payload FROM customers WHERE tenant_id = $1 ORDER BY id
`)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"resync", "--config", good, "--postgres-url", e.db, "--integration", "shop", "--tenant", "acme"}, noenv, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "4 events of tenant acme") {
		t.Fatalf("resync: %d %s %s", code, out.String(), errb.String())
	}
	recs := e.kafka.Consume(t, 30*time.Second, func(rs []*kgo.Record) bool {
		n := 0
		for _, r := range rs {
			if kafkatest.Header(r, "ferry_resync") == "shop" {
				n++
			}
		}
		return n == 4
	}, e.topic("customer"), e.topic("product"))
	var customers []string
	for _, r := range recs {
		if kafkatest.Header(r, "ferry_resync") != "shop" {
			continue
		}
		id := kafkatest.Header(r, "event_id")
		switch kafkatest.Header(r, "aggregate_type") {
		case "customer":
			if kafkatest.Header(r, "event_type") != "customer.updated" || !strings.HasPrefix(id, "resync-") || strings.Contains(id, c1) {
				t.Fatalf("customer resync record %s of type %s: want the configured type and an id of the request's", id, kafkatest.Header(r, "event_type"))
			}
			customers = append(customers, kafkatest.Header(r, "aggregate_id")+"="+string(r.Value))
		case "product":
			if !strings.HasSuffix(id, ":resync:1") {
				t.Fatalf("product resync record %s: want the outbox event's id", id)
			}
		}
	}
	if got := strings.Join(customers, " "); got != `c1={"name": "Ann"} c2={"name": "Bob"} c3={"name": "Cyd"}` {
		t.Fatalf("customers resynced: %s; want each one's current row, in the query's order", got)
	}

	bad := writeFile(t, `outbox:
  resync_queries:
    - aggregate_type: customer
      event_type: customer.updated
      query: SELECT nope AS aggregate_id, '{}' AS payload FROM customers WHERE tenant_id = $1
`)
	out.Reset()
	errb.Reset()
	code = run(context.Background(), []string{"resync", "--config", bad, "--postgres-url", e.db, "--integration", "shop", "--tenant", "acme"}, noenv, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "outbox.resync_queries[0]") || !strings.Contains(errb.String(), `column "nope" does not exist`) {
		t.Fatalf("resync with a bad query: exit %d\n%s%s", code, out.String(), errb.String())
	}
	var why string
	if err := e.conn.QueryRow(context.Background(), `SELECT error FROM ferry.resync_request WHERE id = 2 AND done_at IS NOT NULL`).Scan(&why); err != nil || !strings.Contains(why, "nope") {
		t.Fatalf("failed request: error %q (%v)", why, err)
	}
	waitFor(t, 30*time.Second, "the failed request's window closed", func() bool { return p.metric("ferry_cdc_resync_windows") == 0 })

	bad = writeFile(t, "outbox:\n  resync_queries:\n    - aggregate_type: customer\n      query: SELECT 1\n")
	errb.Reset()
	code = run(context.Background(), []string{"resync", "--config", bad, "--postgres-url", e.db, "--integration", "shop", "--tenant", "acme"}, noenv, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), "outbox.resync_queries[0].event_type: not set") || !strings.Contains(errb.String(), "outbox.resync_queries[0].query") {
		t.Fatalf("resync with an incomplete query: exit %d\n%s", code, errb.String())
	}
}

// resync_rate caps how fast a resync emits its objects (so a busy
// database keeps CPU and WAL bandwidth for its own writes): 40 objects at
// 20 objects/s (chunks of one: a twentieth of a second's objects, under
// resync_chunk 10) take at least 1.5 s, and all 40 are published. A
// negative rate lifts the cap.
func TestResyncRateCapsObjectsPerSecond(t *testing.T) {
	e := newEnv(t)
	e.setup()
	stop := e.inproc()
	defer stop()
	e.exec(`INSERT INTO outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
		SELECT 'acme', 'product', 'p' || i, 'product.created', '{"v":1}' FROM generate_series(1, 40) i`)
	var out, errb bytes.Buffer
	start := time.Now()
	code := run(context.Background(), []string{"resync", "--postgres-url", e.db, "--integration", "shop", "--tenant", "acme",
		"--resync-chunk", "10", "--resync-rate", "20"}, noenv, &out, &errb)
	took := time.Since(start)
	if code != 0 || !strings.Contains(out.String(), "40 events of tenant acme") {
		t.Fatalf("resync: %d %s %s", code, out.String(), errb.String())
	}
	if took < 1500*time.Millisecond {
		t.Fatalf("40 objects at 20/s took %s, want at least 1.5 s", took)
	}
	e.kafka.Consume(t, 30*time.Second, func(rs []*kgo.Record) bool {
		n := 0
		for _, r := range rs {
			if kafkatest.Header(r, "ferry_resync") == "shop" {
				n++
			}
		}
		return n == 40
	}, e.topic("product"))
	out.Reset()
	if code := run(context.Background(), []string{"resync", "--postgres-url", e.db, "--integration", "shop", "--tenant", "acme", "--resync-rate=-1"}, noenv, &out, &errb); code != 0 || !strings.Contains(out.String(), "40 events of tenant acme") {
		t.Fatalf("no cap: exit %d %s %s", code, out.String(), errb.String())
	}
}
