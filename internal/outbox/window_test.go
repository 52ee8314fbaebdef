package outbox

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/internal/lsnack"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/pgdb"
	"github.com/ferry-cdc/ferry/internal/pgtest"
	"github.com/ferry-cdc/ferry/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// A window sees no chunk while its server waits for a long transaction.
// Without marks for windowIdle the reader gives it up, and the chunks
// after are dropped; the server's alive marks keep it open, so they are
// published. An alive mark of an older attempt does not.
func TestAliveMarksKeepAWaitingWindowOpen(t *testing.T) {
	for _, tc := range []struct {
		name      string
		alive     bool
		attempt   int // of the alive marks
		published bool
	}{
		{"alive marks", true, 1, true},
		{"no marks", false, 1, false},
		{"an older attempt's marks", true, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Unix(1_700_000_000, 0)
			w := newWindows(slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.NewCDC(), lsnack.New(0))
			w.now = func() time.Time { return now }
			msg := func(transactional bool, m mark) {
				b, err := json.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				w.message(&pglogrepl.LogicalDecodingMessage{Transactional: transactional, Prefix: WatermarkPrefix, Content: b})
			}
			msg(false, mark{Mark: "low", Request: 7, Attempt: 1, Tenant: "acme"})
			// Two hours of other tenants' transactions, a sweep each
			// minute, and an alive mark every aliveEvery.
			for elapsed := time.Duration(0); elapsed < 2*time.Hour; elapsed += time.Minute {
				now = now.Add(time.Minute)
				if tc.alive && elapsed%aliveEvery == 0 {
					msg(false, mark{Mark: "alive", Request: 7, Attempt: tc.attempt})
				}
				w.event(&Event{TenantID: "globex", AggregateType: "product", AggregateID: "g1"})
				w.commit(nil)
			}
			msg(true, mark{Mark: "chunk", Request: 7, Attempt: 1})
			got := w.event(&Event{TenantID: "acme", AggregateType: "product", AggregateID: "p1"})
			w.commit(nil)
			if got != tc.published {
				t.Fatalf("the chunk's event published: %v, want %v (windows open: %d)", got, tc.published, len(w.open))
			}
		})
	}
}

// waitRunning, against a real server, waits for a transaction that was
// running when it started (its id above the snapshot's xmax on an
// otherwise idle server: the case the in-progress list alone missed).
func TestWaitRunningWaitsForARunningWriter(t *testing.T) {
	ctx := context.Background()
	conn, other := connPair(t)
	if _, err := conn.Exec(ctx, `CREATE TABLE w (x int)`); err != nil {
		t.Fatal(err)
	}
	commitAt := holdWriter(t, other, 1500*time.Millisecond)
	if err := waitRunning(ctx, conn, request{id: 7, tenant: "acme"}, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	returned := time.Now()
	c := <-commitAt
	if c.err != nil {
		t.Fatal(c.err)
	}
	if returned.Before(c.at) {
		t.Fatalf("waitRunning returned %v before the running transaction's commit was sent", c.at.Sub(returned))
	}
}

// While a resync is served, its alive marks reach the WAL through each
// long statement, not only between them: the wait for a writer running
// at the low mark, and the work set's read (here a resync query that
// takes 1.5 s). Read back, in decoding order, through a test_decoding
// slot: the writer's commit ends the wait; the read runs from the
// query's own message to the first chunk mark.
func TestServeWritesAliveMarksThroughLongStatements(t *testing.T) {
	ctx := context.Background()
	conn, other := connPair(t)
	if _, err := pgdb.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	cfg := Config{CreateObjects: true, ResyncQueries: []ResyncQuery{{
		AggregateType: "customer", EventType: "customer.updated",
		// It writes a message of its own as it starts (a mark in the
		// WAL), then sleeps.
		Query: `SELECT 'c1' AS aggregate_id, '{}'::jsonb AS payload
			FROM (SELECT pg_logical_emit_message(false, 'test', 'reading')::text AS l) m
			WHERE pg_sleep(1.5 + 0 * length(m.l)) IS NOT NULL AND $1::text <> ''`,
	}}}
	cfg.SetDefaults()
	if err := ensureTable(ctx, conn, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsurePartitions(ctx, conn, cfg, time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE w (x int)`); err != nil {
		t.Fatal(err)
	}
	slot := decodingSlot(t, conn, "_alive")
	markEvery(t, 100*time.Millisecond)

	var id int64
	if err := conn.QueryRow(ctx, `INSERT INTO ferry.resync_request (integration, tenant_id) VALUES ('crm', 'acme') RETURNING id`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	commitAt := holdWriter(t, other, 1500*time.Millisecond)
	n, err := serve(ctx, conn, cfg, request{id: id, integration: "crm", tenant: "acme"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || n != 1 {
		t.Fatalf("serve: %d events, %v; want the query's one", n, err)
	}
	if c := <-commitAt; c.err != nil {
		t.Fatal(c.err)
	}

	markOf := func(data string) string {
		_, content, ok := strings.Cut(data, "content:")
		var m mark
		if !ok || !strings.Contains(data, "prefix: "+WatermarkPrefix+",") || json.Unmarshal([]byte(content), &m) != nil || m.Request != id {
			return ""
		}
		return m.Mark
	}
	// Commits are asynchronous (synchronous_commit off): decoding reads
	// up to what is flushed, so read until the end mark is there.
	var changes []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		rows, err := conn.Query(ctx, `SELECT data FROM pg_logical_slot_peek_changes($1, NULL, NULL)`, slot)
		if err != nil {
			t.Fatal(err)
		}
		if changes, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(changes, func(d string) bool { return markOf(d) == "end" }) || time.Now().After(deadline) {
			break
		}
	}
	// phase: 0 before the low mark, 1 waiting (until the writer's row),
	// 2 until the query starts, 3 reading (until the first chunk mark),
	// 4 after.
	phase, alive := 0, [5]int{}
	for _, data := range changes {
		switch {
		case phase == 0 && markOf(data) == "low":
			phase = 1
		case phase == 1 && strings.HasPrefix(data, "table public.w: INSERT"):
			phase = 2
		case phase == 2 && strings.HasPrefix(data, "message: transactional: 0 prefix: test,"):
			phase = 3
		case phase == 3 && markOf(data) == "chunk":
			phase = 4
		case markOf(data) == "alive":
			if !strings.Contains(data, "transactional: 0") {
				t.Fatalf("a transactional alive mark: %s", data)
			}
			alive[phase]++
		}
	}
	// One every 100 ms over about 1.5 s each; the bound leaves room for
	// a slow machine.
	if phase != 4 || alive[1] < 3 || alive[3] < 3 {
		t.Fatalf("alive marks while waiting %d, while reading %d (phases seen: %d of 4); want some in each, one every %v:\n%s",
			alive[1], alive[3], phase, aliveEvery, strings.Join(changes, "\n"))
	}
}

// keepAlive goes on after its connection is lost: the failed mark is
// logged, and the next tick connects again.
func TestKeepAliveReconnectsAfterItsConnectionIsLost(t *testing.T) {
	ctx := context.Background()
	conn, _ := connPair(t)
	slot := decodingSlot(t, conn, "_keep")
	markEvery(t, 50*time.Millisecond)

	alive := `{"mark":"alive","request":9,"attempt":1}`
	marks := func() int {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_logical_slot_peek_changes($1, NULL, NULL)
			WHERE data LIKE 'message: transactional: 0 prefix: ' || $2 || '%' AND data LIKE '%' || $3`, slot, WatermarkPrefix, alive).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s within 10 s", what)
			}
		}
	}
	var logs testutil.SyncBuffer
	kctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		keepAlive(kctx, conn.Config(), request{id: 9, tenant: "acme"}, alive, slog.New(slog.NewTextHandler(&logs, nil)))
	}()
	waitFor("first mark", func() bool { return marks() > 0 })
	var killed int
	if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%pg_logical_emit_message%'`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d mark connections (%v), want 1", killed, err)
	}
	after := marks()
	waitFor("marks after the connection was lost", func() bool { return marks() >= after+3 })
	stop()
	<-done
	if !strings.Contains(logs.String(), "could not write an alive mark") {
		t.Fatalf("the lost connection was not logged:\n%s", logs.String())
	}
}

// decodingSlot creates a test_decoding slot named after conn's database
// (pgtest's names are valid slot name prefixes) and suffix, dropped at
// the test's end.
func decodingSlot(t *testing.T, conn *pgx.Conn, suffix string) string {
	t.Helper()
	slot := conn.Config().Database + suffix
	if _, err := conn.Exec(context.Background(), `SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, slot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot) })
	return slot
}

// markEvery sets aliveEvery for the test.
func markEvery(t *testing.T, d time.Duration) {
	old := aliveEvery
	aliveEvery = d
	t.Cleanup(func() { aliveEvery = old })
}

// connPair connects twice to a new database.
func connPair(t *testing.T) (*pgx.Conn, *pgx.Conn) {
	t.Helper()
	db := pgtest.New(t)
	var conns [2]*pgx.Conn
	for i := range conns {
		c, err := pgx.Connect(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		conns[i] = c
	}
	return conns[0], conns[1]
}

// holdWriter begins a transaction on conn that writes a row of w (so it
// has an id) and commits it after held; the channel gets the time the
// commit was sent and its error, once it is done (read by the test: a
// goroutine must not report to a test that may have ended).
func holdWriter(t *testing.T, conn *pgx.Conn, held time.Duration) <-chan commit {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO w VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	done, finished := make(chan commit, 1), make(chan struct{})
	t.Cleanup(func() { <-finished }) // before conn's own cleanup closes it
	go func() {
		defer close(finished)
		time.Sleep(held)
		sent := time.Now()
		done <- commit{sent, tx.Commit(context.Background())}
	}()
	return done
}

// commit is when holdWriter sent its commit, and how it ended.
type commit struct {
	at  time.Time
	err error
}
