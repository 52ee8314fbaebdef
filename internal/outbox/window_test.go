package outbox

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/internal/lsnack"
	"github.com/ferry-cdc/ferry/internal/metrics"
	"github.com/ferry-cdc/ferry/internal/pgtest"
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
// running when it started, and writes alive marks into the WAL while it
// waits (read back here through a test_decoding slot).
func TestWaitRunningWritesAliveMarks(t *testing.T) {
	db := pgtest.New(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	slot := conn.Config().Database + "_alive" // pgtest's names are valid slot name prefixes
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, slot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot) })
	if _, err := conn.Exec(ctx, `CREATE TABLE w (x int)`); err != nil {
		t.Fatal(err)
	}
	other, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO w VALUES (1)`); err != nil { // an xid: a running writer
		t.Fatal(err)
	}
	old := aliveEvery
	aliveEvery = 100 * time.Millisecond
	t.Cleanup(func() { aliveEvery = old })
	const held = 1500 * time.Millisecond
	type commit struct {
		at  time.Time // when the commit was sent
		err error
	}
	committed := make(chan commit, 1)
	go func() {
		time.Sleep(held)
		at := time.Now()
		committed <- commit{at, tx.Commit(context.Background())}
	}()
	alive := `{"mark":"alive","request":7,"attempt":1}`
	if err := waitRunning(ctx, conn, request{id: 7, tenant: "acme"}, slog.New(slog.NewTextHandler(io.Discard, nil)), alive); err != nil {
		t.Fatal(err)
	}
	returned := time.Now()
	c := <-committed
	if c.err != nil {
		t.Fatal(c.err)
	}
	if returned.Before(c.at) {
		t.Fatalf("waitRunning returned %v before the running transaction's commit was sent", c.at.Sub(returned))
	}
	var marks int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_logical_slot_peek_changes($1, NULL, NULL)
		WHERE data LIKE 'message: transactional: 0 prefix: ' || $2 || '%' AND data LIKE '%' || $3`, slot, WatermarkPrefix, alive).Scan(&marks); err != nil {
		t.Fatal(err)
	}
	// One every 100 ms over about 1.5 s; the bound leaves room for a
	// slow machine's polling.
	if marks < 3 {
		t.Fatalf("%d alive marks in the WAL during a %v wait, want one every %v", marks, held, aliveEvery)
	}
}
