package sinkapp

import (
	"context"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// cdc writes CloudEvents envelopes (--envelope cloudevents); the sink
// unwraps them, so the HTTP connector's templates see the event's data
// as .payload, exactly as with raw records: the partner gets the
// product's fields, not the envelope.
func TestPipeline_CloudEventsEnvelopeIsUnwrapped(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	e.startCDC("--envelope", "cloudevents")
	waitFor(t, time.Minute, "cdc streaming", func() bool {
		var ok bool
		_ = e.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE database = current_database() AND active)`).Scan(&ok)
		return ok
	})
	e.start("--config", e.shopConfig(""))
	e.write([4]string{"acme", "product.created", "p1", product("lamp", 10)},
		[4]string{"acme", "product.updated", "p1", product("lamp v2", 12)})
	// Both deliveries finished (the item is renamed by the update's first
	// step, before its price step and its final state).
	waitFor(t, time.Minute, "both deliveries finished", func() bool {
		var open int
		err := e.conn.QueryRow(ctx, `SELECT count(*) FROM ferry.delivery WHERE integration = 'shop' AND state NOT IN ('succeeded', 'rejected', 'skipped')`).Scan(&open)
		it, ok := itemsOf(e.sim, "acme")["p1"]
		return err == nil && open == 0 && ok && it.Fields["name"] == "lamp v2"
	})
	it := itemsOf(e.sim, "acme")["p1"]
	if _, leaked := it.Fields["specversion"]; leaked || it.Version != 2 {
		t.Fatalf("partner item %+v: want the unwrapped data, updated once", it)
	}
	// The delivery log records the outcome after the partner answered.
	waitFor(t, time.Minute, "both deliveries recorded as succeeded", func() bool {
		var n int
		err := e.conn.QueryRow(ctx, `SELECT count(*) FROM ferry.delivery WHERE integration = 'shop' AND state = 'succeeded'`).Scan(&n)
		return err == nil && n == 2
	})
}
