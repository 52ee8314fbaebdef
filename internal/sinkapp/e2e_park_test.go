package sinkapp

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// A tenant blocked longer than park_after has its records moved to
// Postgres: the partition's committed offset moves past them while the
// tenant still fails, other tenants in the partition flow, a restarted
// sink picks the parked records up, and once the partner recovers they
// arrive in order, followed by later ones.
func TestGuarantee4_DurableParkingKeepsOrderAndLetsOffsetsAdvance(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	good, badPart := e.badBesideGood()
	for n := 2; n <= 40; n++ {
		e.produce("bad", fmt.Sprintf("bad-%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
	}
	var last int64
	for n := 1; n <= 40; n++ {
		e.produce(good, fmt.Sprintf("%s-%d", good, n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
	}
	cfg := e.config("    park_after: 100ms\n")
	stop := e.start("--config", cfg)

	waitFor(t, time.Minute, "healthy tenant delivered and the blocked one parked", func() bool {
		return e.parkedCount("bad") == 40 && len(e.delivered()[good]) == 41
	})
	// Every offset of the partition is committed although bad fails still.
	adm := kadm.NewClient(e.kafka.Client(t))
	ends, err := adm.ListEndOffsets(ctx, e.topic)
	if err != nil {
		t.Fatal(err)
	}
	end, _ := ends.Lookup(e.topic, badPart)
	last = end.Offset
	waitFor(t, time.Minute, "the committed offset to pass the parked records", func() bool {
		offs, err := adm.FetchOffsets(ctx, "ferry-sink-shop")
		if err != nil {
			return false
		}
		o, ok := offs.Lookup(e.topic, badPart)
		return ok && o.At == last
	})
	if got := len(e.delivered()["bad"]); got != 0 {
		t.Fatalf("blocked tenant had %d applied", got)
	}
	if code, stderr := stop(); code != 0 {
		t.Fatalf("sink exited %d: %s", code, stderr)
	}

	// A new process, a recovered partner, and a later event.
	e.sim.ClearRules()
	e.produce("bad", "bad-41", "product.updated", `{"n":41}`)
	e.start("--config", cfg)
	waitFor(t, time.Minute, "the parked tenant to drain in order", func() bool { return len(e.delivered()["bad"]) >= 41 })
	checkInOrder(t, map[string][]int{"bad": e.delivered()["bad"]}, map[string]int{"bad": 41})
	if parked := e.parkedCount(""); parked != 0 {
		t.Fatalf("parked rows left: %d (-1: the count failed)", parked)
	}
}

// A tenant whose next attempt is minutes away (its backoff) still parks
// what keeps arriving for it, as it arrives: the partition's cap
// (max_buffered_per_partition) is never spent on its records, so the
// healthy tenant behind them in the same partition flows now instead of
// at the blocked tenant's next attempt. Nothing is lost and the blocked
// tenant's events come back in order.
func TestBlockedTenantParksArrivalsWithoutWaitingForItsNextAttempt(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	good, _ := e.badBesideGood()
	cfg := e.config("    retry: {initial: 3m, max: 3m}\n    park_after: 100ms\n    max_buffered_per_partition: 20\n")
	stop := e.start("--config", cfg)
	waitFor(t, time.Minute, "the blocked tenant's first attempt", func() bool { return len(e.sim.Requests("bad")) > 0 })
	time.Sleep(200 * time.Millisecond) // past park_after
	const n = 300
	for i := 2; i <= n; i++ {
		e.produce("bad", fmt.Sprintf("bad-%d", i), "product.updated", fmt.Sprintf(`{"n":%d}`, i))
	}
	for i := 1; i <= 20; i++ {
		e.produce(good, fmt.Sprintf("%s-%d", good, i), "product.updated", fmt.Sprintf(`{"n":%d}`, i))
	}
	// The blocked tenant's next attempt is 3 minutes away.
	waitFor(t, time.Minute, "the healthy tenant behind the blocked one delivered", func() bool { return len(e.delivered()[good]) == 21 })
	waitFor(t, time.Minute, "the blocked tenant's arrivals parked", func() bool {
		return e.parkedCount("bad") >= n-10
	})
	if got := len(e.delivered()["bad"]); got != 0 {
		t.Fatalf("blocked tenant had %d applied", got)
	}
	if code, stderr := stop(); code != 0 {
		t.Fatalf("sink exited %d: %s", code, stderr)
	}
	e.sim.ClearRules()
	e.start("--config", e.config("    park_after: 100ms\n"))
	waitFor(t, time.Minute, "the blocked tenant to drain in order", func() bool { return len(e.delivered()["bad"]) >= n })
	checkInOrder(t, map[string][]int{"bad": e.delivered()["bad"]}, map[string]int{"bad": n})
}
