package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Writes elsewhere in the database grow the WAL while the outbox is idle;
// cdc confirms keepalive positions, so the slot does not pin that WAL.
func TestIdleOutboxSlotAdvances(t *testing.T) {
	e := newEnv(t)
	e.setup()
	p := e.start()
	waitFor(t, 30*time.Second, "cdc ready", p.ready)
	e.exec(`CREATE TABLE noise (id serial, pad text)`)
	for range 20 {
		e.exec(`INSERT INTO noise (pad) SELECT repeat('x', 200) FROM generate_series(1, 500)`)
	}
	target := e.walInsertLSN()
	waitFor(t, 60*time.Second, "slot to confirm past writes to other tables", func() bool { return e.slotLSN() >= target })
}

// Heartbeats written with pg_logical_emit_message come back through the
// slot; readiness depends on it.
func TestHeartbeatComesBackThroughSlot(t *testing.T) {
	e := newEnv(t)
	e.setup()
	p := e.start("--heartbeat-interval", "200ms")
	waitFor(t, 30*time.Second, "heartbeat received", func() bool {
		age := p.metric("ferry_cdc_heartbeat_age_seconds")
		return age >= 0 && p.ready()
	})
	var n int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active`, e.slot).Scan(&n); err != nil || n != 1 {
		t.Fatalf("slot not active: %d %v", n, err)
	}
}

// The slot is dropped and recreated while cdc is down, and an event is
// written in the gap: cdc refuses to start and says what to do; with
// --recover-lost-slot it backfills, and the gap event arrives.
func TestSlotRecreatedIsDetectedAndRecovered(t *testing.T) {
	e := newEnv(t)
	e.setup()
	stop := e.inproc()
	first := e.insert("acme", "product", "p1", "product.created", `{"n":1}`)
	e.kafka.Consume(t, time.Minute, hasIDs([]string{first}), e.topic("product"))
	target := e.walInsertLSN()
	waitFor(t, 30*time.Second, "slot confirmed", func() bool { return e.slotLSN() >= target })
	if code, stderr := stop(); code != 0 {
		t.Fatalf("cdc exited %d: %s", code, stderr)
	}

	// The stopped cdc's walsender exits on its own time; a slot still
	// active cannot be dropped (SQLSTATE 55006, seen under load).
	waitFor(t, 30*time.Second, "slot released by the stopped cdc", func() bool {
		var active bool
		err := e.conn.QueryRow(context.Background(), `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, e.slot).Scan(&active)
		return err == nil && !active
	})
	e.exec(`SELECT pg_drop_replication_slot($1)`, e.slot)
	gap := e.insert("acme", "product", "p1", "product.updated", `{"n":2}`)
	e.exec(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, e.slot)
	after := e.insert("acme", "product", "p1", "product.updated", `{"n":3}`)

	code, stderr := e.runToExit()
	if code == 0 || !strings.Contains(stderr, "replication slot lost") || !strings.Contains(stderr, "--recover-lost-slot") {
		t.Fatalf("cdc on a recreated slot: exit %d, stderr:\n%s\nwant a refusal naming --recover-lost-slot", code, stderr)
	}

	stop = e.inproc("--recover-lost-slot")
	recs := e.kafka.Consume(t, time.Minute, hasIDs([]string{gap, after}), e.topic("product"))
	if ids := eventIDs(recs); ids[gap] == 0 {
		t.Fatalf("gap event %s missing", gap)
	}
	// Recovery is recorded once the backfill is acknowledged (an
	// interrupted recovery is refused again at the next start); after it,
	// a normal restart is accepted.
	waitFor(t, 30*time.Second, "recovery recorded", func() bool {
		var ok bool
		err := e.conn.QueryRow(context.Background(), `SELECT r.confirmed_lsn >= s.confirmed_flush_lsn
			FROM ferry.cdc_slot r JOIN pg_replication_slots s USING (slot_name) WHERE slot_name = $1`, e.slot).Scan(&ok)
		return err == nil && ok
	})
	if code, stderr := stop(); code != 0 {
		t.Fatalf("recovering cdc exited %d: %s", code, stderr)
	}
	stop = e.inproc()
	t.Cleanup(func() {
		if t.Failed() {
			_, stderr := stop()
			t.Logf("cdc after recovery:\n%s", stderr)
		}
	})
	last := e.insert("acme", "product", "p1", "product.updated", `{"n":4}`)
	e.kafka.Consume(t, 30*time.Second, hasIDs([]string{last}), e.topic("product"))
	if code, stderr := stop(); code != 0 {
		t.Fatalf("cdc after recovery exited %d: %s", code, stderr)
	}
}

func TestSlotDroppedIsDetected(t *testing.T) {
	e := newEnv(t)
	e.setup()
	e.exec(`SELECT pg_drop_replication_slot($1)`, e.slot)
	code, stderr := e.runToExit()
	if code == 0 || !strings.Contains(stderr, "was dropped") {
		t.Fatalf("cdc on a dropped slot: exit %d, stderr:\n%s", code, stderr)
	}
}

// A second cdc waits as a standby (not ready) while the first streams,
// and takes over when the first is killed; nothing is lost.
func TestFailoverStandbyTakesOver(t *testing.T) {
	e := newEnv(t)
	e.setup()
	p1 := e.start()
	waitFor(t, 30*time.Second, "first cdc ready", p1.ready)
	p2 := e.start()
	waitFor(t, 30*time.Second, "second cdc reports standby", func() bool {
		code, body := p2.readyz()
		return code == 503 && strings.Contains(body, "standby")
	})
	var ids []string
	for range 10 {
		ids = append(ids, e.insert("acme", "product", "p1", "product.updated", `{"n":1}`))
	}
	e.kafka.Consume(t, time.Minute, hasIDs(ids), e.topic("product"))
	p1.kill()
	for range 10 {
		ids = append(ids, e.insert("acme", "product", "p1", "product.updated", `{"n":1}`))
	}
	waitFor(t, 60*time.Second, "standby takes over", p2.ready)
	e.kafka.Consume(t, time.Minute, hasIDs(ids), e.topic("product"))
	if p2.exited() {
		t.Fatalf("standby exited:\n%s", p2.stderr.String())
	}
}

// On SIGTERM (context cancel) cdc confirms what Kafka acknowledged, so a
// planned restart resends nothing. The status interval of an hour leaves
// the final update as the only one.
func TestCleanShutdownConfirmsAcknowledged(t *testing.T) {
	e := newEnv(t)
	e.setup()
	stop := e.inproc("--status-interval", "1h")
	id := e.insert("acme", "product", "p1", "product.created", `{"n":1}`)
	target := e.walInsertLSN()
	e.kafka.Consume(t, time.Minute, hasIDs([]string{id}), e.topic("product"))
	if code, stderr := stop(); code != 0 {
		t.Fatalf("cdc exited %d: %s", code, stderr)
	}
	if got := e.slotLSN(); got < target {
		t.Fatalf("slot at %s after a clean stop, want past the acknowledged transaction (%s)", got, target)
	}
}
