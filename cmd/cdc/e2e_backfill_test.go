package main

import (
	"github.com/ferry-cdc/ferry/internal/outbox"

	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// Rows written before the slot existed are never streamed; `cdc backfill`
// publishes them — all, one tenant, or since a time — in table order.
func TestBackfillPublishesRowsWrittenBeforeTheSlot(t *testing.T) {
	e := newEnv(t)
	e.setup()
	e.exec(`SELECT pg_drop_replication_slot($1)`, e.slot) // as if the rows predate cdc
	e.exec(`DELETE FROM ferry.cdc_slot`)
	old := e.insert("acme", "product", "p1", "product.created", `{"n":1}`)
	e.exec(`UPDATE outbox SET created_at = now() - interval '2 days' WHERE id = $1`, old)
	a2 := e.insert("acme", "product", "p1", "product.updated", `{"n":2}`)
	g1 := e.insert("globex", "product", "p9", "product.created", `{"n":1}`)

	backfill := func(extra ...string) string {
		args := append([]string{"backfill", "--postgres-url", e.db, "--brokers", strings.Join(e.kafka.Addrs, ","),
			"--topic-template", e.kafka.TopicPrefix + "outbox.{{.AggregateType}}"}, extra...)
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, noenv, &out, &errb); code != 0 {
			t.Fatalf("cdc %v exited %d: %s", extra, code, errb.String())
		}
		return out.String()
	}
	if out := backfill("--tenant", "acme", "--since", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)); !strings.Contains(out, "backfilled 1 events") {
		t.Fatalf("tenant+since backfill printed %q, want 1 event (acme's recent one)", out)
	}
	recs := e.kafka.Consume(t, time.Minute, hasIDs([]string{a2}), e.topic("product"))
	if ids := eventIDs(recs); len(ids) != 1 {
		t.Fatalf("tenant+since backfill published %v", ids)
	}
	if out := backfill(); !strings.Contains(out, "backfilled 3 events") {
		t.Fatalf("full backfill printed %q", out)
	}
	recs = e.kafka.Consume(t, time.Minute, func(rs []*kgo.Record) bool { return len(rs) >= 4 }, e.topic("product"))
	// acme's partition holds the first backfill's event, then the full
	// backfill's two in table order; other partitions interleave freely.
	var acme []string
	for _, r := range recs {
		if string(r.Key) == "acme" {
			acme = append(acme, kafkatest.Header(r, "event_id"))
		}
	}
	if len(acme) != 3 || acme[0] != a2 || acme[1] != old || acme[2] != a2 {
		t.Fatalf("acme's partition: %v, want [%s %s %s]", acme, a2, old, a2)
	}
	if ids := eventIDs(recs); ids[g1] != 1 {
		t.Fatalf("globex event missing: %v", ids)
	}
}

// A slot invalidated by max_slot_wal_keep_size is refused with a clear
// reason. The setting is cluster-wide, so it is restored afterwards.
func TestInvalidatedSlotIsDetected(t *testing.T) {
	e := newEnv(t)
	e.setup()
	admin, err := pgx.Connect(context.Background(), pgtest.ServerURL(t))
	if err != nil {
		t.Fatal(err)
	}

	exec := func(sql string) {
		if _, err := admin.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`)
	exec(`SELECT pg_reload_conf()`)
	t.Cleanup(func() {
		exec(`ALTER SYSTEM RESET max_slot_wal_keep_size`)
		exec(`SELECT pg_reload_conf()`)
		admin.Close(context.Background())
	})
	e.exec(`CREATE TABLE filler (pad text)`)
	waitFor(t, time.Minute, "the slot to be invalidated", func() bool {
		e.exec(`INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)`)
		e.exec(`SELECT pg_switch_wal()`)
		e.exec(`CHECKPOINT`)
		var status string
		err := e.conn.QueryRow(context.Background(), `SELECT COALESCE(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&status)
		return err == nil && status == "lost"
	})
	code, stderr := e.runToExit()
	if code == 0 || !strings.Contains(stderr, "invalidated") || !strings.Contains(stderr, "--recover-lost-slot") {
		t.Fatalf("cdc on an invalidated slot: exit %d, stderr:\n%s", code, stderr)
	}
}

// Retention: prune deletes old rows, but refuses before cdc confirmed
// anything and never goes past the slot's last confirmed commit minus the
// recovery margin.
func TestPruneDeletesOnlyOldRowsBehindTheSlot(t *testing.T) {
	e := newEnv(t)
	e.setup()
	prune := func(olderThan string) (int, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), []string{"prune", "--postgres-url", e.db, "--slot", e.slot, "--older-than", olderThan}, noenv, &out, &errb)
		return code, out.String() + errb.String()
	}
	if code, out := prune("48h"); code != 1 || !strings.Contains(out, "confirmed nothing yet") {
		t.Fatalf("prune before any confirm: %d %s", code, out)
	}
	old := e.insert("acme", "product", "p1", "product.created", `{"n":1}`)
	recent := e.insert("acme", "product", "p1", "product.updated", `{"n":2}`)
	e.exec(`UPDATE outbox SET created_at = now() - interval '72 hours' WHERE id = $1`, old)
	e.exec(`UPDATE outbox SET created_at = now() - interval '24 hours' WHERE id = $1`, recent)
	stop := e.inproc()
	fresh := e.insert("acme", "product", "p1", "product.updated", `{"n":3}`)
	target := e.walInsertLSN()
	waitFor(t, 30*time.Second, "slot confirmed", func() bool { return e.slotLSN() >= target })
	if code, stderr := stop(); code != 0 {
		t.Fatalf("cdc: %d %s", code, stderr)
	}
	if code, out := prune("48h"); code != 0 || !strings.Contains(out, "pruned 1 rows") {
		t.Fatalf("prune 48h: %d %s", code, out)
	}
	var left []string
	rows, err := e.conn.Query(context.Background(), `SELECT id::text FROM outbox ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		left = append(left, id)
	}
	if len(left) != 2 || left[0] != recent || left[1] != fresh {
		t.Fatalf("rows left %v, want [%s %s]", left, recent, fresh)
	}
	// The bound: with the last confirmed commit pushed two days back, a
	// 1h retention still keeps what a recovery backfill could need.
	e.exec(`UPDATE ferry.cdc_slot SET confirmed_commit_time = now() - interval '48 hours'`)
	if code, out := prune("1h"); code != 0 || !strings.Contains(out, "pruned 0 rows") {
		t.Fatalf("prune past the slot: %d %s", code, out)
	}
}

// Daily partitions: cdc streams a partitioned outbox (published via its
// root), keeps days ahead, and prune drops whole old days — still never
// past the slot's last confirmed commit minus the recovery margin.
func TestDailyPartitionsAreDroppedWhole(t *testing.T) {
	e := newEnv(t)
	args := e.args("--partitions", "daily")
	args[0] = "setup"
	var out, errb bytes.Buffer
	if code := run(context.Background(), args, noenv, &out, &errb); code != 0 {
		t.Fatalf("setup: %d %s", code, errb.String())
	}
	cfg := outbox.Config{Table: "public.outbox", Partitions: "daily"}
	cfg.SetDefaults()
	now := time.Now().UTC()
	// Past days get partitions too (as if cdc had run for a week).
	if _, err := outbox.EnsurePartitions(context.Background(), e.conn, cfg, now.AddDate(0, 0, -6), now); err != nil {
		t.Fatal(err)
	}
	var parts int
	e.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.outbox'::regclass`).Scan(&parts)
	if parts != 6+1+7+1 { // six past days, today, seven ahead, default
		t.Fatalf("%d partitions after setup", parts)
	}
	old4 := e.insert("acme", "product", "p1", "product.created", `{"n":1}`)
	old3 := e.insert("acme", "product", "p1", "product.updated", `{"n":2}`)
	e.exec(`UPDATE outbox SET created_at = now() - interval '4 days' WHERE id = $1`, old4) // moves the row to that day's partition
	e.exec(`UPDATE outbox SET created_at = now() - interval '3 days' WHERE id = $1`, old3)
	stop := e.inproc("--partitions", "daily")
	fresh := e.insert("acme", "product", "p1", "product.updated", `{"n":3}`)
	e.kafka.Consume(t, 30*time.Second, hasIDs([]string{old4, old3, fresh}), e.topic("product"))
	target := e.walInsertLSN()
	waitFor(t, 30*time.Second, "slot confirmed", func() bool { return e.slotLSN() >= target })
	if code, stderr := stop(); code != 0 {
		t.Fatalf("cdc: %d %s", code, stderr)
	}
	out.Reset()
	errb.Reset()
	code := run(context.Background(), []string{"prune", "--postgres-url", e.db, "--slot", e.slot, "--older-than", "48h", "--partitions", "daily"}, noenv, &out, &errb)
	// Days ending at least 48h ago go: today-6 .. today-3 (four days).
	if code != 0 || !strings.Contains(out.String(), "dropped 4 daily partitions") {
		t.Fatalf("prune: %d %s %s", code, out.String(), errb.String())
	}
	var left int
	e.conn.QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&left)
	e.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.outbox'::regclass`).Scan(&parts)
	if left != 1 || parts != 2+1+7+1 {
		t.Fatalf("after prune: %d rows, %d partitions; want the fresh row and 11 partitions", left, parts)
	}
}
