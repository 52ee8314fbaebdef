package sinkapp

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// The tenants view pages: following each page's cursor lists every
// tenant of every source (deliveries, pauses, parked events) exactly
// once, in (tenant, integration) order, with its own counts; a bad
// cursor or limit is refused.
func TestTenantsViewPagesWithACursor(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	if code, out, errOut := e.runCmd("pause", "--integration", "shop", "--tenant", "p-only", "--reason", "test"); code != 0 {
		t.Fatalf("pause: %d %s %s", code, out, errOut)
	}
	if _, err := e.conn.Exec(ctx, `INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, state)
		SELECT i, 'e' || t || '-' || n, 't' || lpad(t::text, 2, '0'), 'product.updated', 'succeeded'
		FROM generate_series(1, 30) t, generate_series(1, 3) n, unnest(ARRAY['crm', 'shop']) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn.Exec(ctx, `INSERT INTO ferry.parked_event (integration, tenant_id, event_id, topic, kafka_partition, kafka_offset, lane_key, record)
		VALUES ('shop', 'zz-parked', 'x', 'outbox.product', 0, 0, 'zz-parked', '{}')`); err != nil {
		t.Fatal(err)
	}
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 20 {
			t.Fatalf("no last page after %d pages: %v", pages, got)
		}
		args := []string{"tenants", "--limit", "7"}
		if after != "" {
			args = append(args, "--after", after)
		}
		code, out, errOut := e.runCmd(args...)
		if code != 0 {
			t.Fatalf("tenants: %d %s %s", code, out, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		after = ""
		if last := lines[len(lines)-1]; strings.HasPrefix(last, "more: --after ") {
			after = strings.TrimPrefix(last, "more: --after ")
			lines = lines[:len(lines)-1]
		}
		if len(lines)-1 > 7 {
			t.Fatalf("page of %d rows, limit 7:\n%s", len(lines)-1, out)
		}
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			got = append(got, f[1]+"/"+f[0])
			if strings.HasPrefix(f[1], "t") && !strings.Contains(l, "succeeded=3") {
				t.Errorf("row without its 3 deliveries: %s", l)
			}
		}
		if after == "" {
			break
		}
	}
	var want []string
	for i := 1; i <= 30; i++ {
		want = append(want, fmt.Sprintf("t%02d/crm", i), fmt.Sprintf("t%02d/shop", i))
	}
	want = append([]string{"p-only/shop"}, append(want, "zz-parked/shop")...)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("pages listed\n%v\nwant\n%v", got, want)
	}

	code, out, _ := e.runCmd("tenants", "--integration", "crm", "--limit", "100", "--json")
	var ts []delivery.Tenant
	if code != 0 || json.Unmarshal([]byte(out), &ts) != nil || len(ts) != 30 || ts[0].Integration != "crm" {
		t.Fatalf("one integration's tenants: %d %d %s", code, len(ts), out)
	}
	// With --json, stdout is one JSON array and the cursor goes to stderr.
	code, out, errOut := e.runCmd("tenants", "--integration", "crm", "--limit", "10", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &ts) != nil || len(ts) != 10 || !strings.HasPrefix(errOut, "more: --after ") {
		t.Fatalf("a JSON page: %d %d\n%s%s", code, len(ts), out, errOut)
	}
	code, out, _ = e.runCmd("tenants", "--integration", "crm", "--limit", "100", "--json", "--after", strings.TrimSpace(strings.TrimPrefix(errOut, "more: --after ")))
	if code != 0 || json.Unmarshal([]byte(out), &ts) != nil || len(ts) != 20 || ts[0].TenantID != "t11" {
		t.Fatalf("the JSON page after it: %d %d %s", code, len(ts), out)
	}
	if code, _, errOut := e.runCmd("tenants", "--after", "nonsense!"); code == 0 || !strings.Contains(errOut, "not a cursor") {
		t.Fatalf("bad cursor: %d %s", code, errOut)
	}
	if code, _, errOut := e.runCmd("tenants", "--limit", "0"); code == 0 || !strings.Contains(errOut, "limit") {
		t.Fatalf("limit 0: %d %s", code, errOut)
	}
}

// sink status names the tenants with the most parked events, not every
// one: with many parked tenants it shows the top ones, the total, and how
// many more there are.
func TestStatusNamesTheTenantsWithTheMostParkedEvents(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	if code, out, errOut := e.runCmd("status"); code != 0 { // applies the migrations
		t.Fatalf("status: %d %s %s", code, out, errOut)
	}
	// Tenant tNN has NN parked events.
	if _, err := e.conn.Exec(ctx, `INSERT INTO ferry.parked_event (integration, tenant_id, event_id, topic, kafka_partition, kafka_offset, lane_key, record)
		SELECT 'shop', 't' || lpad(t::text, 2, '0'), 'e' || t || '-' || n, 'outbox.product', 0, t * 100 + n, 't' || t, '{}'
		FROM generate_series(1, 25) t, generate_series(1, t) n`); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := e.runCmd("status")
	if code != 0 {
		t.Fatalf("status: %d %s %s", code, out, errOut)
	}
	var named []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "shop" && strings.HasPrefix(f[1], "t") {
			named = append(named, f[1]+"="+f[2])
		}
	}
	if len(named) != delivery.ParkedTop || named[0] != "t25=25" || named[len(named)-1] != "t06=6" {
		t.Fatalf("parked tenants named: %v\n%s", named, out)
	}
	if !strings.Contains(out, "(5 more tenants)") || !strings.Contains(out, "325 in all") {
		t.Fatalf("no line for the tenants not named:\n%s", out)
	}
	code, out, _ = e.runCmd("status", "--json")
	var sts []struct {
		Name          string           `json:"integration"`
		Parked        map[string]int64 `json:"parked"`
		ParkedTotal   int64            `json:"parked_total"`
		ParkedTenants int64            `json:"parked_tenants"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &sts) != nil {
		t.Fatalf("status --json: %d %s", code, out)
	}
	for _, s := range sts {
		if s.Name == "shop" && (len(s.Parked) != delivery.ParkedTop || s.ParkedTotal != 325 || s.ParkedTenants != 25) {
			t.Fatalf("status --json for shop: %+v", s)
		}
	}
}
