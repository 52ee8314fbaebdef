package sinkapp

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// retry.max_attempts gives a failing delivery up: it becomes expired
// (final, not attempted again), its outcome says so, and under on_reject:
// skip the tenant's lane goes on. An event whose own deliver_by deadline
// has passed, or one older than retry.max_age, expires without a
// partner call.
func TestGiveUp_MaxAttemptsAndDeadlineExpire(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", BodyContains: "doomed", Status: 503})
	e.produce("acme", "acme-1", "product.updated", `{"n": 1, "doomed": true}`)
	e.produce("acme", "acme-2", "product.updated", `{"n": 2}`)
	late := &kgo.Record{Topic: e.topic, Key: []byte("globex"), Value: []byte(`{"n": 1}`), Headers: []kgo.RecordHeader{
		{Key: "event_id", Value: []byte("globex-1")}, {Key: "tenant_id", Value: []byte("globex")},
		{Key: "event_type", Value: []byte("product.updated")}, {Key: "aggregate_type", Value: []byte("product")},
		{Key: "aggregate_id", Value: []byte("p1")}, {Key: "deliver_by", Value: []byte(time.Now().Add(-time.Minute).UTC().Format(time.RFC3339))},
	}}
	// Committed two hours ago (cdc stamps records with the commit time).
	old := &kgo.Record{Topic: e.topic, Key: []byte("initech"), Value: []byte(`{"n": 1}`), Timestamp: time.Now().Add(-2 * time.Hour), Headers: []kgo.RecordHeader{
		{Key: "event_id", Value: []byte("initech-1")}, {Key: "tenant_id", Value: []byte("initech")},
		{Key: "event_type", Value: []byte("product.updated")}, {Key: "aggregate_type", Value: []byte("product")},
	}}
	if err := e.prod.ProduceSync(context.Background(), late, old).FirstErr(); err != nil {
		t.Fatal(err)
	}
	topic := e.kafka.TopicPrefix + "ferry.outcomes"
	e.start("--config", e.config("    on_reject: skip\n    retry: {initial: 50ms, max: 200ms, max_attempts: 3, max_age: 1h}\n    outcomes: {topic: "+topic+"}\n"))
	got := byEvent(e.readOutcomes(topic, 4))
	x := got["acme-1"]
	if len(x) != 1 || x[0].State != delivery.Expired || x[0].Attempts != 3 || !strings.Contains(x[0].Reason, "gave up after 3 failed attempts") ||
		x[0].LastStatus == nil || *x[0].LastStatus != 503 {
		t.Fatalf("acme-1's outcome: %+v", x)
	}
	if s := got["acme-2"]; len(s) != 1 || s[0].State != delivery.Succeeded {
		t.Fatalf("acme-2 after the give-up: %+v", s)
	}
	g := got["globex-1"]
	if len(g) != 1 || g[0].State != delivery.Expired || !strings.Contains(g[0].Reason, "deliver_by deadline") {
		t.Fatalf("globex-1's outcome: %+v", g)
	}
	if o := got["initech-1"]; len(o) != 1 || o[0].State != delivery.Expired || !strings.Contains(o[0].Reason, "past retry.max_age 1h0m0s") {
		t.Fatalf("initech-1's outcome: %+v", o)
	}
	if n := len(e.sim.Requests("globex")) + len(e.sim.Requests("initech")); n != 0 {
		t.Fatalf("the partner got %d requests for an event past its deadline", n)
	}
	if n := len(e.sim.Requests("acme")); n != 4 {
		t.Fatalf("the partner got %d requests from acme, want 3 attempts of acme-1 and 1 of acme-2", n)
	}
	if e.state("acme-1") != "expired" {
		t.Fatalf("acme-1 is %s", e.state("acme-1"))
	}
}

// An event the HTTP connector has no operation for is recorded as
// skipped with the reason (on_unhandled: skip, the default), with an
// outcome, and the tenant's next event goes on; with on_unhandled: park
// it is a rejection.
func TestUnhandledEventIsSkippedByDefault(t *testing.T) {
	for _, policy := range []string{"", "park"} {
		t.Run("on_unhandled="+policy, func(t *testing.T) {
			e := newEnv(t, partnersim.Config{})
			e.emit("acme", "acme-a", "product.archived", "product", "p1", product("lamp", 10))
			e.emit("acme", "acme-c", "product.created", "product", "p2", product("desk", 20))
			topic := e.kafka.TopicPrefix + "ferry.outcomes"
			extra := "    on_reject: skip\n    outcomes: {topic: " + topic + "}\n"
			want := delivery.Skipped
			if policy != "" {
				extra += "    on_unhandled: " + policy + "\n"
				want = delivery.Rejected
			}
			e.start("--config", e.shopConfig(extra))
			got := e.readOutcomes(topic, 2)
			if got[0].EventID != "acme-a" || got[0].State != want || !strings.Contains(got[0].Reason, "product.archived maps to no operation") ||
				got[1].EventID != "acme-c" || got[1].State != delivery.Succeeded {
				t.Fatalf("outcomes: %+v", got)
			}
		})
	}
}
