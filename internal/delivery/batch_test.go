package delivery

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/groupcommit"
	"github.com/ferry-cdc/ferry/internal/pgtest"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

// run drives one batch by hand, as a batcher does with whatever writes
// are waiting.
func run(l *Log, ops ...*groupcommit.Op) {
	l.b.Run(ops)
}

func event(i int) connector.Event {
	e := ev
	e.ID = fmt.Sprintf("e%d", i)
	return e
}

// A batch runs each kind of write as one statement over arrays; writes
// to one delivery in one batch still apply one after the other; and a
// write that fails in a batch fails alone.
func TestBatchWritesEachKindAsOneStatement(t *testing.T) {
	l, ctx := newLog(t), context.Background()
	rs := make([]begun, 6)
	var begins []*groupcommit.Op
	for i := 1; i <= 5; i++ {
		begins = append(begins, beginOp("shop", event(i), Source{Topic: "outbox.product", Offset: int64(i)}, "", &rs[i]))
	}
	again := beginOp("shop", event(1), Source{Topic: "outbox.product", Offset: 1}, "", &rs[0]) // the same delivery twice
	if gs := groupcommit.Groups(append(begins, again)); len(gs) != 2 || len(gs[0].Ops) != 5 || len(gs[1].Ops) != 1 {
		t.Fatalf("6 begins, one of them twice, make %d statements, want 2 (5 + 1)", len(gs))
	}
	run(l, append(begins, again)...)
	for i, o := range append(begins, again) {
		if o.Err != nil || !o.Applied {
			t.Fatalf("begin %d: applied %v, %v", i, o.Applied, o.Err)
		}
	}
	if rs[1].n+rs[0].n != 3 || rs[2].n != 1 || rs[2].state != InFlight {
		t.Fatalf("attempts: e1 %d and %d (want 1 and 2), e2 %d %s", rs[1].n, rs[0].n, rs[2].n, rs[2].state)
	}

	at := func(i, n int) Attempt {
		return Attempt{Integration: "shop", EventID: event(i).ID, Number: n, event: event(i)}
	}
	next := time.Now().Add(time.Minute).Truncate(time.Millisecond)
	ok, _ := l.finishOp(at(2, 1), Outcome{State: Succeeded, Status: 201})
	failed, _ := l.finishOp(at(3, 1), Outcome{State: Failed, Status: 503, Reason: "partner 503", NextRetry: next,
		Calls: []connector.Call{{Method: "POST", Status: 503}}})
	bad, _ := l.finishOp(at(4, 1), Outcome{State: "bogus"}) // violates the state CHECK
	stale, _ := l.finishOp(at(5, 7), Outcome{State: Succeeded})
	step := &groupcommit.Op{Stmt: checkpointStmt, Key: []string{"shop", "e1"}, Row: &checkpointRow{attempt: 2 /* begun twice */, step: []byte(`[{"name":"price"}]`)}}
	run(l, ok, failed, bad, stale, step)
	if step.Err != nil || !step.Applied {
		t.Fatalf("checkpoint of e1's attempt 2: applied %v, %v", step.Applied, step.Err)
	}
	if ok.Err != nil || !ok.Applied || failed.Err != nil || !failed.Applied {
		t.Fatalf("finish: ok %v %v, failed %v %v", ok.Applied, ok.Err, failed.Applied, failed.Err)
	}
	if bad.Err == nil {
		t.Fatal("a finish to a state that does not exist succeeded")
	}
	if stale.Err != nil || stale.Applied {
		t.Fatalf("a finish of a stale attempt: applied %v, %v", stale.Applied, stale.Err)
	}

	var nulls bool
	if err := l.pool.QueryRow(ctx, `SELECT calls IS NULL AND event IS NULL AND next_attempt_at IS NULL AND reason IS NULL
		AND last_status = 201 AND state = 'succeeded' FROM ferry.delivery WHERE event_id = 'e2'`).Scan(&nulls); err != nil || !nulls {
		t.Fatalf("succeeded row: %v %v (want state, status and NULL calls, event, next attempt, reason)", nulls, err)
	}
	var state, reason string
	var status int
	var at3 time.Time
	var method string
	if err := l.pool.QueryRow(ctx, `SELECT state, reason, last_status, next_attempt_at, calls->0->>'method'
		FROM ferry.delivery WHERE event_id = 'e3' AND event->>'event_id' = 'e3'`).Scan(&state, &reason, &status, &at3, &method); err != nil {
		t.Fatal(err)
	}
	if state != "failed" || reason != "partner 503" || status != 503 || !at3.Equal(next) || method != "POST" {
		t.Fatalf("failed row: %s %q %d %v %s", state, reason, status, at3, method)
	}
	var steps string
	if err := l.pool.QueryRow(ctx, `SELECT steps::text FROM ferry.delivery WHERE event_id = 'e1'`).Scan(&steps); err != nil || steps != `[{"name": "price"}]` {
		t.Fatalf("e1 steps %s %v", steps, err)
	}
	for _, id := range []string{"e4", "e5"} {
		if err := l.pool.QueryRow(ctx, `SELECT state FROM ferry.delivery WHERE event_id = $1`, id).Scan(&state); err != nil || state != "in_flight" {
			t.Fatalf("%s: %s %v, want still in_flight", id, state, err)
		}
	}
}

// The batched updates find their rows by primary key even in a log that
// was never analyzed (a new one, or one that grew fast), where the
// planner would otherwise scan the whole table for every batch.
func TestBatchedUpdatesUseThePrimaryKey(t *testing.T) {
	l, ctx := newLog(t), context.Background()
	if _, err := l.pool.Exec(ctx, `INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, state, attempts)
		SELECT 'shop', 'e' || i, 't' || i % 1000, 'product.updated', 'succeeded', 1 FROM generate_series(1, 20000) i`); err != nil {
		t.Fatal(err)
	}
	var ops []*groupcommit.Op
	for i := range 200 {
		a := Attempt{Integration: "shop", EventID: event(i * 7).ID, Number: 1, event: event(i * 7)}
		fin, _ := l.finishOp(a, Outcome{State: Failed, Status: 503})
		ops = append(ops, fin, &groupcommit.Op{Stmt: checkpointStmt, Key: fin.Key, Row: &checkpointRow{attempt: 1, step: []byte(`[]`)}})
	}
	var seqscan string
	if err := l.pool.QueryRow(ctx, `SHOW enable_seqscan`).Scan(&seqscan); err != nil || seqscan != "on" {
		t.Fatalf("the log's other connections plan with enable_seqscan %q (%v), want on", seqscan, err)
	}
	for _, g := range groupcommit.Groups(ops) {
		text := strings.Join(pgtest.Texts(t, l.b.Pool(), "EXPLAIN "+g.Stmt.SQL, g.Stmt.Args(g.Ops)...), "\n")
		if !strings.Contains(text, "Index Scan using delivery_pkey") || strings.Contains(text, "Seq Scan on delivery") {
			t.Fatalf("%s plans a scan of the log:\n%s", g.Stmt.Name, text)
		}
	}
}
