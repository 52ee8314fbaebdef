package sinkapp

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

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

// The tenants view reads at most delivery.TenantCounted of a tenant's
// deliveries: a tenant with more shows "over N" (no counts of some of
// its rows, no last update from them); the others keep their counts.
func TestTenantsViewReadsABoundedShareOfALargeTenant(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	if code, out, errOut := e.runCmd("status"); code != 0 { // applies the migrations
		t.Fatalf("status: %d %s %s", code, out, errOut)
	}
	old := delivery.TenantCounted
	delivery.TenantCounted = 5
	defer func() { delivery.TenantCounted = old }()
	// big has 5,000 deliveries; edge has 5, just at the limit; small 2;
	// and 3,000 more tenants (after them in the view's order) one each,
	// so that the statistics see many tenants, as a real log has.
	if _, err := e.conn.Exec(ctx, `INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, state)
		SELECT 'shop', t || n, t, 'product.updated', CASE WHEN n = 1 THEN 'rejected' ELSE 'succeeded' END
		FROM (VALUES ('big', 5000), ('edge', 5), ('small', 2)) v(t, k), generate_series(1, k) n
		UNION ALL SELECT 'shop', 'x' || n, 'x' || lpad(n::text, 4, '0'), 'product.updated', 'succeeded' FROM generate_series(1, 3000) n;
		ANALYZE ferry.delivery`); err != nil {
		t.Fatal(err)
	}
	var code int
	var out, errOut string
	rowsRead := e.deliveryRowsRead(func() { code, out, errOut = e.runCmd("tenants", "--limit", "3", "--json") })
	var ts []delivery.Tenant
	if code != 0 || json.Unmarshal([]byte(out), &ts) != nil || len(ts) != 3 {
		t.Fatalf("tenants: %d %s %s", code, out, errOut)
	}
	if rowsRead > 200 {
		t.Errorf("the page read %d rows of ferry.delivery; its three tenants' share is at most 6 each and an index probe per tenant", rowsRead)
	}
	big, edge, small := ts[0], ts[1], ts[2]
	if big.TenantID != "big" || big.DeliveriesOver != 5 || len(big.Deliveries) != 0 || big.LastUpdate != nil {
		t.Errorf("the tenant over the limit: %+v", big)
	}
	if edge.TenantID != "edge" || edge.DeliveriesOver != 0 || edge.Deliveries["succeeded"] != 4 || edge.Deliveries["rejected"] != 1 || edge.LastUpdate == nil {
		t.Errorf("the tenant at the limit: %+v", edge)
	}
	if small.DeliveriesOver != 0 || small.Deliveries["succeeded"] != 1 || small.Deliveries["rejected"] != 1 || small.LastUpdate == nil {
		t.Errorf("a small tenant: %+v", small)
	}
	code, out, _ = e.runCmd("tenants", "--limit", "3")
	if code != 0 || !strings.Contains(out, "over 5") || !strings.Contains(out, "rejected=1 succeeded=4") {
		t.Fatalf("tenants table:\n%s", out)
	}
}

// deliveryRowsRead returns how many rows of ferry.delivery run read, by
// any scan, from the table's statistics (a backend's counts reach them
// when it ends: a command's connections end with it).
func (e *env) deliveryRowsRead(run func()) int64 {
	e.t.Helper()
	read := func() (n int64) {
		if err := e.conn.QueryRow(context.Background(), `SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0)
			FROM pg_stat_user_tables WHERE relid = 'ferry.delivery'::regclass`).Scan(&n); err != nil {
			e.t.Fatal(err)
		}
		return n
	}
	before := read()
	run()
	waitFor(e.t, 10*time.Second, "the command's reads in the statistics", func() bool { return read() > before })
	time.Sleep(time.Second) // any backend of the command still ending
	return read() - before
}

// A later page of the failure listing reads about its own rows, as the
// first does: the planner, misjudging the cursor's row comparison, read
// every older problem through a bitmap and sorted them.
func TestFailurePagesReadAboutTheirOwnRows(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	if code, out, errOut := e.runCmd("status"); code != 0 { // applies the migrations
		t.Fatalf("status: %d %s %s", code, out, errOut)
	}
	// 200,000 deliveries, one in 125 a rejection, their times in no
	// relation to their order in the table (as when problems come and
	// go). Problems this rare make the planner count their share twice
	// (the cursor's comparison, the index's predicate): it expects one
	// row older than the cursor where there are 1,500.
	if _, err := e.conn.Exec(ctx, `INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, state, problem_at)
		SELECT 'shop', 'e' || g, 't' || (g % 5000), 'product.updated',
			CASE WHEN g % 125 = 0 THEN 'rejected' ELSE 'succeeded' END,
			CASE WHEN g % 125 = 0 THEN now() - make_interval(secs => g % 86400) END
		FROM generate_series(1, 200000) g;
		ANALYZE ferry.delivery`); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := e.runCmd("failures", "--limit", "100", "--json")
	var first, second []delivery.Failure
	_, cursor, ok := strings.Cut(errOut, "more: --cursor ")
	if code != 0 || !ok || json.Unmarshal([]byte(out), &first) != nil || len(first) != 100 {
		t.Fatalf("failures: %d %d rows\n%s", code, len(first), errOut)
	}
	rowsRead := e.deliveryRowsRead(func() {
		code, out, errOut = e.runCmd("failures", "--limit", "100", "--json", "--cursor", strings.TrimSpace(cursor))
	})
	if code != 0 || json.Unmarshal([]byte(out), &second) != nil || len(second) != 100 ||
		second[0].ProblemAt.After(first[99].ProblemAt) || second[0].EventID == first[99].EventID {
		t.Fatalf("second page: %d %d rows %s", code, len(second), errOut)
	}
	if rowsRead > 500 {
		t.Errorf("the second page of 100 read %d rows of ferry.delivery (of 1,600 problems)", rowsRead)
	}
}
