package sinkapp

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/internal/route"
)

// Under on_reject: skip the lane has moved on past a rejected event; an
// operator's retry delivers it again from its stored copy, through the
// tenant's lane, after the events already delivered, and says so. The
// same holds for a delivery an operator skipped, for bulk retries by
// state and time (an expired delivery gets a fresh give-up budget), and
// each redriven delivery produces its new outcome. A retry with nothing
// to retry says so and fails. Every act names its OS user and reason.
func TestRedriveUnderSkipPolicyDeliversAfterTheLane(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", BodyContains: `"n":1`, Status: 422, Reason: "price must be positive"})
	e.sim.AddRule(partnersim.Rule{Tenant: "globex", BodyContains: `"bad"`, Status: 422, Reason: "unknown sku"})
	e.sim.AddRule(partnersim.Rule{Tenant: "initech", Status: 503, Reason: "maintenance"})
	for n := 1; n <= 3; n++ {
		e.produce("acme", fmt.Sprintf("acme-%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
	}
	e.produce("globex", "globex-1", "product.updated", `{"n":1,"bad":1}`)
	e.produce("globex", "globex-2", "product.updated", `{"n":2,"bad":1}`)
	e.produce("globex", "globex-3", "product.updated", `{"n":3}`)
	e.produce("initech", "initech-1", "product.updated", `{"n":1}`)
	topic := e.kafka.TopicPrefix + "ferry.outcomes"
	e.start("--config", e.config("    on_reject: skip\n    retry: {initial: 50ms, max: 100ms, max_attempts: 2}\n    outcomes: {topic: "+topic+"}\n"))
	waitFor(t, time.Minute, "the lanes to move on past the rejections and the give-up", func() bool {
		return e.state("acme-3") == "succeeded" && e.state("globex-3") == "succeeded" && e.state("initech-1") == "expired"
	})
	if e.state("acme-1") != "rejected" || e.state("globex-1") != "rejected" || e.state("globex-2") != "rejected" {
		t.Fatalf("states: %s %s %s", e.state("acme-1"), e.state("globex-1"), e.state("globex-2"))
	}
	e.sim.ClearRules()

	// One event: delivered after acme-2 and acme-3, and the output says
	// where it goes in the order.
	code, out, errOut := e.runCmd("retry", "--integration", "shop", "--event", "acme-1", "--reason", "price fixed at the source")
	if code != 0 || !strings.Contains(out, "retrying 1 deliveries") || !strings.Contains(out, "AFTER the events that lane has already delivered") ||
		!strings.Contains(out, "acme-1 (tenant acme, was rejected): now succeeded") {
		t.Fatalf("retry: %d\n%s\n%s", code, out, errOut)
	}
	if got := e.delivered()["acme"]; fmt.Sprint(got) != "[2 3 1]" {
		t.Fatalf("acme at the partner: %v, want [2 3 1] (the redrive after the events already delivered)", got)
	}
	// Nothing to retry: said, and not a success.
	if code, out, errOut := e.runCmd("retry", "--integration", "shop", "--event", "acme-1"); code != 1 || !strings.Contains(errOut, "nothing to retry") {
		t.Fatalf("retry of a succeeded delivery: %d %s %s", code, out, errOut)
	}
	if code, out, errOut := e.runCmd("retry", "--integration", "shop", "--tenant", "nobody"); code != 1 || !strings.Contains(errOut, "nothing to retry") {
		t.Fatalf("bulk retry matching nothing: %d %s %s", code, out, errOut)
	}
	if code, _, errOut := e.runCmd("retry", "--integration", "shop"); code != 1 || !strings.Contains(errOut, "give exactly one of event, or a selection") {
		t.Fatalf("retry without a selection: %d %s", code, errOut)
	}

	// Bulk by state and time: both of globex's rejections, in their
	// order, after globex-3; the expired one with a fresh budget.
	code, out, errOut = e.runCmd("retry", "--integration", "shop", "--state", "rejected,expired", "--since", "1h", "--reason", "partner fixed")
	if code != 0 || !strings.Contains(out, "retrying 3 deliveries") || !strings.Contains(out, "globex-1 (tenant globex, was rejected): now succeeded") ||
		!strings.Contains(out, "initech-1 (tenant initech, was expired): now succeeded") {
		t.Fatalf("bulk retry: %d\n%s\n%s", code, out, errOut)
	}
	if got := e.delivered()["globex"]; fmt.Sprint(got) != "[3 1 2]" {
		t.Fatalf("globex at the partner: %v, want [3 1 2]", got)
	}

	// A delivery an operator skipped can be driven again too.
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", BodyContains: `"n":4`, Status: 422, Reason: "no"})
	e.produce("acme", "acme-4", "product.updated", `{"n":4}`)
	waitFor(t, time.Minute, "acme-4 rejected", func() bool { return e.state("acme-4") == "rejected" })
	if code, _, errOut := e.runCmd("skip", "--integration", "shop", "--event", "acme-4", "--reason", "later"); code != 0 {
		t.Fatal(errOut)
	}
	e.sim.ClearRules()
	if code, out, errOut := e.runCmd("retry", "--integration", "shop", "--event", "acme-4"); code != 0 || !strings.Contains(out, "was skipped): now succeeded") {
		t.Fatalf("retry of a skipped delivery: %d %s %s", code, out, errOut)
	}

	// Each final state produced its outcome; the redriven ones a second.
	want := map[string]string{"acme-1": "rejected,succeeded", "globex-1": "rejected,succeeded", "globex-2": "rejected,succeeded",
		"initech-1": "expired,succeeded", "acme-4": "rejected,skipped,succeeded"}
	var outcomes map[string][]outcome
	waitFor(t, time.Minute, "the redriven deliveries' outcomes", func() bool {
		outcomes = byEvent(e.readOutcomes(topic, 14))
		for id, w := range want {
			var got []string
			for _, o := range outcomes[id] {
				got = append(got, string(o.State))
			}
			if strings.Join(got, ",") != w {
				return false
			}
		}
		return true
	})
	if o := outcomes["initech-1"][1]; o.State != delivery.Succeeded || o.Attempts != 3 {
		t.Fatalf("initech-1's outcome after the redrive: %+v", o)
	}

	// Every act: who, when, why.
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	rows, err := e.conn.Query(context.Background(), `SELECT event_id, action, reason, actor FROM ferry.operator_action
		WHERE event_id IN ('acme-1', 'initech-1') ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var acts []string
	for rows.Next() {
		var id, action, reason, actor string
		if err := rows.Scan(&id, &action, &reason, &actor); err != nil {
			t.Fatal(err)
		}
		acts = append(acts, strings.Join([]string{id, action, reason, actor}, "|"))
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	wantActs := "acme-1|retry|price fixed at the source|os:" + u.Username + ";initech-1|retry|partner fixed|os:" + u.Username
	if strings.Join(acts, ";") != wantActs {
		t.Fatalf("operator acts:\n%s\nwant\n%s", strings.Join(acts, ";"), wantActs)
	}
	var open int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.redrive`).Scan(&open); err != nil || open != 0 {
		t.Fatalf("open redrive requests left: %d %v", open, err)
	}
}

// Under on_reject: park the lane waits on the rejected event; the retry
// wakes it at once (park_recheck is an hour here) and the event is
// delivered in its place, before the tenant's later events. A failed
// delivery backing off for an hour is woken the same way, and a
// compensating one is retried (its undo) rather than refused.
func TestRedriveUnderParkPolicyDeliversInPlaceAtOnce(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", BodyContains: `"n":1`, Status: 422, Reason: "price must be positive"})
	e.sim.AddRule(partnersim.Rule{Tenant: "globex", Status: 503, Reason: "maintenance"})
	for n := 1; n <= 3; n++ {
		e.produce("acme", fmt.Sprintf("acme-%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
		e.produce("globex", fmt.Sprintf("globex-%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
	}
	e.start("--config", e.config("    park_recheck: 1h\n    retry: {initial: 1h, max: 1h}\n"))
	waitFor(t, time.Minute, "acme parked and globex backing off", func() bool {
		return e.state("acme-1") == "rejected" && e.state("globex-1") == "failed"
	})
	e.sim.ClearRules()
	code, out, errOut := e.runCmd("retry", "--integration", "shop", "--tenant", "acme", "--wait", "20s")
	if code != 0 || !strings.Contains(out, "acme-1 (tenant acme, was rejected): now succeeded") {
		t.Fatalf("retry: %d\n%s\n%s", code, out, errOut)
	}
	waitFor(t, time.Minute, "acme's lane to go on", func() bool { return e.state("acme-3") == "succeeded" })
	code, out, errOut = e.runCmd("retry", "--integration", "shop", "--event", "globex-1", "--wait", "20s")
	if code != 0 || !strings.Contains(out, "globex-1 (tenant globex, was failed): now succeeded") {
		t.Fatalf("retry of a failed delivery: %d\n%s\n%s", code, out, errOut)
	}
	waitFor(t, time.Minute, "globex's lane to go on", func() bool { return e.state("globex-3") == "succeeded" })
	checkInOrder(t, e.delivered(), map[string]int{"acme": 3, "globex": 3})
}

// A compensating delivery (its undo failed and backs off for an hour)
// can be retried: the undo runs again at once.
func TestRedriveRetriesACompensatingUndo(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Entity: "prices", Status: 422, Reason: "amount must be positive"})
	e.sim.AddRule(partnersim.Rule{Entity: "items", Method: "DELETE", Status: 503, Reason: "busy"})
	e.emit("globex", "globex-c1", "product.created", "product", "p1", product("chair", -1))
	e.start("--config", e.shopConfig("    retry: {initial: 1h, max: 1h}\n"))
	waitFor(t, time.Minute, "the undo to fail", func() bool { return e.state("globex-c1") == "compensating" })
	e.sim.ClearRules()
	code, out, errOut := e.runCmd("retry", "--integration", "shop", "--event", "globex-c1", "--wait", "20s")
	if code != 0 || !strings.Contains(out, "globex-c1 (tenant globex, was compensating): now compensated") {
		t.Fatalf("retry of a compensating delivery: %d\n%s\n%s", code, out, errOut)
	}
	if n, _ := e.calls("globex", "DELETE", "/v1/items"); n != 2 {
		t.Fatalf("%d undo calls, want 2 (the failed one and the operator's retry)", n)
	}
}

// A partner may keep its refusal under the request's Idempotency-Key
// and replay it for the same key (Stripe does, for a 4xx): a redrive of
// a rejected delivery goes out under a new key, so the fixed event is
// applied instead of refused again; an expired one, whose lost answers
// may have been applied, keeps its key.
func TestRedriveOfARejectionUsesANewIdempotencyKey(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Status: 422, Reason: "price must be positive", Stored: true})
	e.sim.AddRule(partnersim.Rule{Tenant: "initech", Status: 503, Reason: "maintenance"})
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	e.produce("initech", "initech-1", "product.updated", `{"n":1}`)
	e.start("--config", e.config("    on_reject: skip\n    retry: {initial: 50ms, max: 100ms, max_attempts: 2}\n"))
	waitFor(t, time.Minute, "rejected and expired", func() bool {
		return e.state("acme-1") == "rejected" && e.state("initech-1") == "expired"
	})
	e.sim.ClearRules() // the partner's data is fixed; its stored refusal stays

	if code, out, errOut := e.runCmd("retry", "--integration", "shop", "--state", "rejected,expired", "--reason", "fixed"); code != 0 ||
		!strings.Contains(out, "acme-1 (tenant acme, was rejected): now succeeded") ||
		!strings.Contains(out, "initech-1 (tenant initech, was expired): now succeeded") {
		t.Fatalf("retry: %d\n%s\n%s", code, out, errOut)
	}
	keys := map[string][]string{}
	for _, r := range e.sim.Requests("") {
		keys[r.Tenant] = append(keys[r.Tenant], fmt.Sprintf("%s %d replayed=%v", r.IdempotencyKey, r.Status, r.Replayed))
	}
	if got := fmt.Sprint(keys["acme"]); got != "[shop:acme-1 422 replayed=false shop:acme-1:r1 201 replayed=false]" {
		t.Errorf("acme's requests: %s, want the refusal under shop:acme-1 and the redrive applied under shop:acme-1:r1", got)
	}
	if got := keys["initech"]; len(got) != 3 || !strings.HasPrefix(got[2], "shop:initech-1 201") {
		t.Errorf("initech's requests: %v, want two 503s and the redrive under the same key shop:initech-1", got)
	}
}

// A resync event's stored copy keeps its resync marker: rejected, then
// retried by an operator, it is delivered as a resync event again (an
// upsert), not as the plain update its event type names. With no_upsert
// set the difference shows: an update of an object with no mapping is
// refused, while the resync's upsert creates it. The same holds for a
// resync event skipped by the tenant switch and retried once the tenant
// is on again.
func TestRedriveOfAResyncEventIsAResyncAgain(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Method: "POST", Status: 422, Reason: "name taken"})
	cfg := e.shopConfig("    on_reject: skip\n")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	withNoUpsert := strings.Replace(string(b), "      timeout: 5s\n", "      timeout: 5s\n      no_upsert: true\n", 1)
	if withNoUpsert == string(b) {
		t.Fatal("examples/shop.yaml's connector has no 'timeout: 5s' line to put no_upsert after")
	}
	if err := os.WriteFile(cfg, []byte(withNoUpsert), 0o600); err != nil {
		t.Fatal(err)
	}
	resync := kgo.RecordHeader{Key: route.HeaderResync, Value: []byte("shop")}
	e.emit("acme", "acme-7:resync:1", "product.updated", "product", "p1", product("lamp", 10), resync)
	// A plain update of an unmapped object: refused under no_upsert (the
	// test's control: the marker is what makes the difference).
	e.emit("acme", "acme-8", "product.updated", "product", "p2", product("desk", 20))
	e.start("--config", cfg)
	waitFor(t, time.Minute, "the resync event rejected by the partner, the plain update by no_upsert", func() bool {
		return e.state("acme-7:resync:1") == "rejected" && e.state("acme-8") == "rejected"
	})
	e.sim.ClearRules()

	code, out, errOut := e.runCmd("retry", "--integration", "shop", "--event", "acme-7:resync:1", "--reason", "name freed")
	if code != 0 || !strings.Contains(out, "acme-7:resync:1 (tenant acme, was rejected): now succeeded") {
		t.Fatalf("retry of the resync event: %d\n%s\n%s", code, out, errOut)
	}
	if it, ok := itemsOf(e.sim, "acme")["p1"]; !ok || it.Fields["name"] != "lamp" {
		t.Fatalf("p1 at the partner after the redrive: %+v (present %v), want created by the resync's upsert", it, ok)
	}
	if remote, state := e.mappingOf("product", "acme", "p1"); state != "active" || remote == "" {
		t.Fatalf("p1's mapping: %q %s", remote, state)
	}
	code, out, errOut = e.runCmd("retry", "--integration", "shop", "--event", "acme-8")
	if !strings.Contains(out, "acme-8 (tenant acme, was rejected): now rejected") {
		t.Fatalf("retry of the plain update: %d\n%s\n%s, want refused again under no_upsert", code, out, errOut)
	}

	// Skipped by the switch, retried once the tenant is on: still a resync.
	if code, out, errOut := e.runCmd("tenants", "disable", "--integration", "shop", "--tenant", "globex", "--config", cfg); code != 0 {
		t.Fatalf("disable: %s %s", out, errOut)
	}
	e.emit("globex", "globex-3:resync:2", "product.updated", "product", "p3", product("sofa", 30), resync)
	waitFor(t, time.Minute, "the resync event skipped by the switch", func() bool { return e.state("globex-3:resync:2") == "skipped" })
	// (No cdc runs here: the resync request enabling files stays unserved.)
	if code, out, errOut := e.runCmd("tenants", "enable", "--integration", "shop", "--tenant", "globex", "--wait", "0s"); code != 0 {
		t.Fatalf("enable: %d %s %s", code, out, errOut)
	}
	code, out, errOut = e.runCmd("retry", "--integration", "shop", "--event", "globex-3:resync:2", "--wait", "20s")
	if code != 0 || !strings.Contains(out, "globex-3:resync:2 (tenant globex, was skipped): now succeeded") {
		t.Fatalf("retry of the skipped resync event: %d\n%s\n%s", code, out, errOut)
	}
	if it, ok := itemsOf(e.sim, "globex")["p3"]; !ok || it.Fields["name"] != "sofa" {
		t.Fatalf("p3 at the partner: %+v (present %v)", it, ok)
	}
}
