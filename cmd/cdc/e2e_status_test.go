package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
)

// cdc status shows the slot, its confirmed LSN and lag, and the last
// event time per tenant; the admin API serves the same per tenant.
func TestStatusShowsSlotLagAndTenants(t *testing.T) {
	e := newEnv(t)
	status := func(args ...string) (int, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"status", "--postgres-url", e.db, "--slot", e.slot}, args...), noenv, &out, &errb)
		return code, out.String() + errb.String()
	}
	if _, out := status(); !strings.Contains(out, "cdc setup") {
		t.Fatalf("status before setup does not say to run cdc setup: %s", out)
	}
	e.setup()
	p := e.start()
	for i := 0; i < 3; i++ {
		e.insert("acme", "product", "p1", "product.updated", `{"n":1}`)
	}
	e.insert("globex", "product", "g1", "product.created", `{"n":1}`)
	target := e.walInsertLSN()
	waitFor(t, 30*time.Second, "slot confirmed", func() bool { return e.slotLSN() >= target })

	var st struct {
		Slot, ConfirmedLSN string
		Exists, Active     bool
		LagBytes           int64 `json:"lag_bytes"`
		Tenants            []struct {
			TenantID string    `json:"tenant_id"`
			Last     time.Time `json:"last_event_commit_time"`
			Events   int64     `json:"events_published"`
		}
	}
	waitFor(t, 30*time.Second, "per-tenant progress recorded", func() bool {
		code, out := status("--json")
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
			return false
		}
		return len(st.Tenants) == 2
	})
	got := map[string]int64{}
	for _, x := range st.Tenants {
		got[x.TenantID] = x.Events
		if time.Since(x.Last) > time.Minute {
			t.Errorf("tenant %s last event %v", x.TenantID, x.Last)
		}
	}
	if !st.Exists || !st.Active || got["acme"] != 3 || got["globex"] != 1 || st.Tenants[0].TenantID != "globex" {
		t.Fatalf("status: %+v", st)
	}
	code, out := status("--tenants", "1")
	if code != 0 || !strings.Contains(out, "confirmed_lsn") || !strings.Contains(out, "TENANT") || !strings.Contains(out, "globex") || strings.Contains(out, "acme") {
		t.Fatalf("status --tenants 1: %d\n%s", code, out)
	}
	if code, out := status("--tenants=-1"); code == 0 || !strings.Contains(out, "give 0 or more") {
		t.Fatalf("status --tenants -1: %d %s", code, out)
	}
	resp, err := http.Get("http://" + p.admin + "/tenants")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"tenant_id":"acme"`) {
		t.Fatalf("admin /tenants: %d %s", resp.StatusCode, b)
	}
}

// cdc resync republishes a tenant's latest event per aggregate, marked
// for one integration, through the slot: after the tenant's earlier
// events, with new event ids, and only that tenant's.
func TestResyncRepublishesEachAggregatesLatestEvent(t *testing.T) {
	e := newEnv(t)
	e.setup()
	stop := e.inproc()
	e.insert("acme", "product", "p1", "product.created", `{"v":1}`)
	e.insert("acme", "product", "p1", "product.updated", `{"v":2}`)
	p2 := e.insert("acme", "product", "p2", "product.created", `{"v":1}`)
	p1 := e.insert("acme", "product", "p1", "product.updated", `{"v":3}`)
	e.insert("globex", "product", "g1", "product.created", `{"v":1}`)
	e.kafka.Consume(t, 30*time.Second, kafkatest.AtLeast(5), e.topic("product"))

	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"resync", "--postgres-url", e.db, "--integration", "shop", "--tenant", "acme"}, noenv, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "2 events of tenant acme") {
		t.Fatalf("resync: %d %s %s", code, out.String(), errb.String())
	}
	recs := e.kafka.Consume(t, 30*time.Second, kafkatest.AtLeast(7), e.topic("product"))
	var resynced []string
	for _, r := range recs[5:] {
		if kafkatest.Header(r, "ferry_resync") != "shop" || kafkatest.Header(r, "tenant_id") != "acme" {
			t.Fatalf("record %s: resync %q tenant %q", kafkatest.Header(r, "event_id"), kafkatest.Header(r, "ferry_resync"), kafkatest.Header(r, "tenant_id"))
		}
		resynced = append(resynced, kafkatest.Header(r, "event_id")+" "+string(r.Value))
	}
	if len(resynced) != 2 || !strings.HasPrefix(resynced[0], p2+":resync:") || !strings.HasPrefix(resynced[1], p1+":resync:") ||
		!strings.Contains(resynced[1], `"v": 3`) {
		t.Fatalf("resynced %v; want p2's create then p1's latest update", resynced)
	}
	if code := run(context.Background(), []string{"resync", "--postgres-url", e.db, "--tenant", "acme"}, noenv, &out, &errb); code != 2 {
		t.Fatalf("resync without --integration: exit %d", code)
	}
	stop()
}
