package delivery

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Begin takes over a delivery another process holds only when that
// process is known to be gone (guarantee 3: two processes never call the
// partner for one event at once). Each scenario sets the delivery's row
// and the holder's lease as they would be, then claims as "me".
func TestBeginTakesOverOnlyFromAGoneHolder(t *testing.T) {
	base := newLog(t)
	ctx := context.Background()
	l, err := New(base.Pool(), Options{Holder: "me"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	const live, expired = "now() + interval '1 minute'", "now() - interval '1 second'"
	for i, tc := range []struct {
		name   string
		state  string // "" = no row yet
		holder string // "" = NULL
		leases map[string]string
		claim  bool
	}{
		{name: "new delivery", claim: true},
		{name: "pending", state: "pending", claim: true},
		{name: "failed, backing off", state: "failed", claim: true},
		{name: "waiting for a parent", state: "waiting", claim: true},
		{name: "in flight without a holder (before migration 0009)", state: "in_flight", claim: true},
		{name: "in flight in this process (its Finish failed)", state: "in_flight", holder: "me", leases: map[string]string{"me": live}, claim: true},
		{name: "in flight in a live process", state: "in_flight", holder: "other", leases: map[string]string{"other": live}},
		{name: "in flight in a process whose lease expired", state: "in_flight", holder: "other", leases: map[string]string{"other": expired}, claim: true},
		{name: "in flight in a process that stopped (row removed)", state: "in_flight", holder: "other", claim: true},
		{name: "in flight in a process alive for another integration only", state: "in_flight", holder: "other",
			leases: map[string]string{"other@crm": live}, claim: true},
		{name: "compensating in a live process", state: "compensating", holder: "other", leases: map[string]string{"other": live}},
		{name: "compensating, resting (undo to retry)", state: "compensating", claim: true},
		{name: "succeeded", state: "succeeded"},
		{name: "rejected", state: "rejected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ev
			e.ID = fmt.Sprintf("lease-%d", i)
			pool := l.Pool()
			exec(t, pool, `DELETE FROM ferry.sink_process`)
			for who, until := range tc.leases {
				in := "shop"
				if who == "other@crm" {
					who, in = "other", "crm"
				}
				exec(t, pool, `INSERT INTO ferry.sink_process (process_id, integration, consumer_group, started_at, lease_until)
					VALUES ($1, $2, 'g', now(), `+until+`)`, who, in)
			}
			if tc.state != "" {
				var holder *string
				if tc.holder != "" {
					holder = &tc.holder
				}
				exec(t, pool, `INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, aggregate_type, aggregate_id,
					topic, kafka_partition, kafka_offset, state, attempts, holder) VALUES ('shop', $1, 'acme', 'product.created', 'product', 'p1',
					'outbox.product', 0, 1, $2, 1, $3)`, e.ID, tc.state, holder)
			}
			a, err := l.Begin(ctx, "shop", e, Source{Topic: "outbox.product", Offset: 1})
			var nc *ErrNotClaimed
			switch {
			case tc.claim && err != nil:
				t.Fatalf("not claimed: %v", err)
			case tc.claim:
				var holder *string
				if err := pool.QueryRow(ctx, `SELECT holder FROM ferry.delivery WHERE integration = 'shop' AND event_id = $1`, e.ID).Scan(&holder); err != nil {
					t.Fatal(err)
				}
				if holder == nil || *holder != "me" {
					t.Fatalf("claimed, but the holder is %v, want me", holder)
				}
				if err := l.Finish(ctx, a, Outcome{State: Succeeded}); err != nil {
					t.Fatal(err)
				}
				if err := pool.QueryRow(ctx, `SELECT holder FROM ferry.delivery WHERE integration = 'shop' AND event_id = $1`, e.ID).Scan(&holder); err != nil || holder != nil {
					t.Fatalf("after Finish the holder is %v (%v), want none", holder, err)
				}
			case !errors.As(err, &nc):
				t.Fatalf("claimed (err %v), want not claimed", err)
			case nc.Held() != (tc.holder != ""):
				t.Fatalf("%v: held %v, want %v", nc, nc.Held(), tc.holder != "")
			}
		})
	}
}

func exec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatal(err)
	}
}
