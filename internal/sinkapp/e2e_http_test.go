package sinkapp

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// End-to-end tests of the declarative HTTP connector with the mapping
// store: real Postgres, kfake over TCP, partnersim over HTTP, and the
// connector configuration of examples/shop.yaml.

// shopConfig writes a sink config whose integration is examples/shop.yaml's,
// pointed at partnersim and this test's topics; extra is YAML added to
// the integration.
func (e *env) shopConfig(extra string) string {
	e.t.Helper()
	e.t.Setenv("SHOP_TOKEN", "test-token")
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "shop.yaml"))
	if err != nil {
		e.t.Fatal(err)
	}
	_, conn, ok := strings.Cut(string(b), "    connector:\n")
	if !ok {
		e.t.Fatal("examples/shop.yaml has no connector section")
	}
	conn = strings.Replace(conn, "base_url: http://127.0.0.1:8089", "base_url: "+e.simURL, 1)
	body := fmt.Sprintf(`postgres_url: %s
kafka:
  brokers: [%s]
admin_addr: off
log_format: text
integrations:
  - name: shop
    topics: [%soutbox.product, %soutbox.variant]
    workers: 16
    commit_interval: 100ms
    park_recheck: 100ms
    wait_recheck: 100ms
%s    connector:
%s`, e.db, strings.Join(e.kafka.Addrs, ","), e.kafka.TopicPrefix, e.kafka.TopicPrefix, extra, conn)
	p := filepath.Join(e.t.TempDir(), "sink.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) mappingOf(entity, tenant, local string) (remote, state string) {
	var r *string
	err := e.conn.QueryRow(context.Background(), `SELECT remote_id, state FROM ferry.mapping
		WHERE integration = 'shop' AND entity_type = $1 AND tenant_id = $2 AND local_id = $3`, entity, tenant, local).Scan(&r, &state)
	if err != nil {
		return "", "none"
	}
	if r != nil {
		remote = *r
	}
	return remote, state
}

// calls counts the partner requests (replays included) by "METHOD path
// prefix".
func (e *env) calls(tenant, method, pathPrefix string) (n, replayed int) {
	for _, r := range e.sim.Requests(tenant) {
		if r.Method == method && strings.HasPrefix(r.Path, pathPrefix) {
			n++
			if r.Replayed {
				replayed++
			}
		}
	}
	return n, replayed
}

func itemsOf(sim *partnersim.Server, tenant string) map[string]partnersim.Object {
	out := map[string]partnersim.Object{}
	for _, o := range sim.Objects("items") {
		if o.Tenant == tenant {
			out[o.ExternalID] = o
		}
	}
	return out
}

func product(name string, price int) string {
	return fmt.Sprintf(`{"name": %q, "price": %d, "currency": "EUR"}`, name, price)
}

func TestHTTP_CreateUpdateDeleteReachTheRightPartnerObject(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	for _, tenant := range []string{"acme", "globex"} {
		e.emit(tenant, tenant+"-c1", "product.created", "product", "p1", product(tenant+" lamp", 10))
		e.emit(tenant, tenant+"-c2", "product.created", "product", "p2", product(tenant+" desk", 20))
		e.emit(tenant, tenant+"-u1", "product.updated", "product", "p1", product(tenant+" lamp v2", 11))
		e.emit(tenant, tenant+"-d2", "product.deleted", "product", "p2", `{}`)
	}
	e.emit("acme", "acme-d9", "product.deleted", "product", "p9", `{}`) // never created
	e.start("--config", e.shopConfig(""))
	waitFor(t, time.Minute, "every event delivered", func() bool {
		for _, id := range []string{"acme-c1", "acme-c2", "acme-u1", "acme-d2", "acme-d9", "globex-c1", "globex-c2", "globex-u1", "globex-d2"} {
			if e.state(id) != "succeeded" {
				return false
			}
		}
		return true
	})
	for _, tenant := range []string{"acme", "globex"} {
		items := itemsOf(e.sim, tenant)
		remote, state := e.mappingOf("product", tenant, "p1")
		if len(items) != 1 || items["p1"].ID != remote || state != "active" || items["p1"].Fields["name"] != tenant+" lamp v2" || items["p1"].Version != 2 {
			t.Fatalf("%s: partner items %+v, mapping p1 = %s %s", tenant, items, remote, state)
		}
		if _, state := e.mappingOf("product", tenant, "p2"); state != "deleted" {
			t.Fatalf("%s: p2 mapping %s after its delete", tenant, state)
		}
		if prices := e.sim.Objects("prices"); len(prices) != 2 {
			t.Fatalf("prices %+v, want p1's for each tenant", prices)
		}
	}
	var reason string
	if err := e.conn.QueryRow(context.Background(), `SELECT reason FROM ferry.delivery WHERE event_id = 'acme-d9'`).Scan(&reason); err != nil ||
		!strings.Contains(reason, "no-op") {
		t.Fatalf("delete of an unmapped object: reason %q, %v", reason, err)
	}
}

// The partner created the item, and Ferry could not write it down: the
// process died, or Postgres refused the write. Two points: before the
// step was recorded (every retry sends the same Idempotency-Key and the
// partner replays its first answer), and after the step was recorded but
// before the mapping (the retry writes the mapping from the recorded
// step, with no call). The sink is restarted in between. Either way the
// partner holds one item, and it is mapped.
func TestHTTP_CrashBetweenPartnerSuccessAndMappingWriteCreatesNoDuplicate(t *testing.T) {
	for _, c := range []struct {
		name, table, cond string
		stepRecorded      bool
	}{
		{"BeforeTheStepIsRecorded", "ferry.delivery", "NEW.steps IS NOT NULL AND OLD.steps IS NULL", false},
		{"BeforeTheMappingIsWritten", "ferry.mapping", "NEW.state = 'active'", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, partnersim.Config{})
			ctx := context.Background()
			stop := e.start("--config", e.shopConfig(""))
			waitFor(t, time.Minute, "migrations", func() bool {
				var ok bool
				_ = e.conn.QueryRow(ctx, `SELECT to_regclass('ferry.mapping') IS NOT NULL`).Scan(&ok)
				return ok
			})
			if _, err := e.conn.Exec(ctx, fmt.Sprintf(`CREATE FUNCTION lose() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN IF %s THEN RAISE EXCEPTION 'simulated crash'; END IF; RETURN NEW; END $$;
				CREATE TRIGGER lose BEFORE UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION lose();`, c.cond, c.table)); err != nil {
				t.Fatal(err)
			}
			e.emit("acme", "acme-c1", "product.created", "product", "p1", product("lamp", 10))
			waitFor(t, time.Minute, "the partner created the item and the write was lost", func() bool {
				return len(itemsOf(e.sim, "acme")) == 1 && e.state("acme-c1") == "failed"
			})
			stop()
			if _, state := e.mappingOf("product", "acme", "p1"); state != "creating" {
				t.Fatalf("mapping %s, want the intent (creating) left behind", state)
			}
			if _, err := e.conn.Exec(ctx, `DROP TRIGGER lose ON `+c.table); err != nil {
				t.Fatal(err)
			}
			e.start("--config", e.shopConfig(""))
			waitFor(t, time.Minute, "the event delivered after the restart", func() bool { return e.state("acme-c1") == "succeeded" })
			items := itemsOf(e.sim, "acme")
			remote, state := e.mappingOf("product", "acme", "p1")
			if len(items) != 1 || items["p1"].ID != remote || state != "active" {
				t.Fatalf("partner items %+v, mapping %s %s: want one item, mapped", items, remote, state)
			}
			n, replayed := e.calls("acme", "POST", "/v1/items")
			switch {
			case c.stepRecorded && n != 1:
				t.Fatalf("item POSTed %d times: the recorded step should have spared the retries", n)
			case !c.stepRecorded && (n < 2 || replayed != n-1):
				t.Fatalf("item creates: %d sent, %d replayed; want every retry replayed by its Idempotency-Key", n, replayed)
			}
		})
	}
}

// A two-step create (item, then price) whose second step fails resumes
// at the price: the item is created once.
func TestHTTP_TwoStepEntityResumesAtTheFailedStep(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Entity: "prices", Status: 503, Reason: "price service down", Times: 3})
	e.emit("acme", "acme-c1", "product.created", "product", "p1", product("lamp", 10))
	e.start("--config", e.shopConfig("    retry: {initial: 50ms, max: 200ms}\n"))
	waitFor(t, time.Minute, "delivered", func() bool { return e.state("acme-c1") == "succeeded" })
	if n, _ := e.calls("acme", "POST", "/v1/items"); n != 1 {
		t.Fatalf("item POSTed %d times, want once", n)
	}
	if n, _ := e.calls("acme", "POST", "/v1/prices"); n != 4 {
		t.Fatalf("price POSTed %d times, want 3 failures and a success", n)
	}
	var steps []struct{ Name, RemoteID string }
	var raw []byte
	var attempts int
	if err := e.conn.QueryRow(context.Background(), `SELECT steps, attempts FROM ferry.delivery WHERE event_id = 'acme-c1'`).Scan(&raw, &attempts); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &steps); err != nil || len(steps) != 2 || steps[0].Name != "item" || steps[1].Name != "price" || attempts != 4 {
		t.Fatalf("recorded steps %s (attempts %d)", raw, attempts)
	}
	if _, state := e.mappingOf("product_price", "acme", "p1"); state != "active" {
		t.Fatalf("price mapping %s", state)
	}
}

// The price is rejected: the item created by step 1 is deleted again
// (compensation), every call is in the delivery log, and the lane parks.
func TestHTTP_RejectedStepUndoesTheCompletedOnes(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Entity: "prices", Status: 422, Reason: "amount must be positive"})
	e.emit("acme", "acme-c1", "product.created", "product", "p1", product("lamp", -5))
	e.emit("acme", "acme-c2", "product.created", "product", "p2", product("desk", 5))
	e.emit("globex", "globex-c1", "product.created", "product", "p1", product("chair", -1))
	e.start("--config", e.shopConfig(""))
	waitFor(t, time.Minute, "compensated", func() bool { return e.state("acme-c1") == "compensated" && e.state("globex-c1") == "compensated" })
	if items := e.sim.Objects("items"); len(items) != 0 {
		t.Fatalf("items left after compensation: %+v", items)
	}
	if _, state := e.mappingOf("product", "acme", "p1"); state != "deleted" {
		t.Fatalf("mapping %s after compensation", state)
	}
	code, out, errOut := e.runCmd("failures", "--integration", "shop", "--tenant", "acme", "--json")
	if code != 0 {
		t.Fatal(errOut)
	}
	var rows []struct {
		EventID string
		State   string
		Reason  string
		Calls   []struct {
			Method, URL string
			Status      int
		}
		Steps []struct{ Name string }
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("failures: %v %s", err, out)
	}
	r := rows[0]
	var trail []string
	for _, c := range r.Calls {
		trail = append(trail, fmt.Sprintf("%s %d", c.Method, c.Status))
	}
	if r.State != "compensated" || !strings.Contains(r.Reason, "amount must be positive") || strings.Join(trail, ",") != "POST 201,POST 422,DELETE 204" ||
		len(r.Steps) != 1 || r.Steps[0].Name != "item" {
		t.Fatalf("delivery log row: %+v (calls %v)", r, trail)
	}
	// The lane parks behind the rejection (on_reject: park): p2 waits.
	time.Sleep(500 * time.Millisecond)
	if s := e.state("acme-c2"); s != "none" {
		t.Fatalf("the next event of the parked tenant is %s", s)
	}
}

// A variant whose product is not at the partner yet waits (no attempts
// burned, no partner call) while other tenants flow, and is created as
// soon as its product is, with the product's partner id.
func TestHTTP_ChildWaitsForItsParent(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	// acme's product is slow to arrive: its create fails for a while.
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Entity: "items", Status: 503, Reason: "busy", Times: 6})
	e.emit("acme", "acme-p1", "product.created", "product", "p1", product("lamp", 10))
	e.emit("acme", "acme-v1", "variant.created", "variant", "v1", `{"product_id": "p1", "sku": "LAMP-RED"}`)
	e.emit("globex", "globex-p1", "product.created", "product", "p1", product("chair", 10))
	e.emit("globex", "globex-v1", "variant.created", "variant", "v1", `{"product_id": "p1", "sku": "CHAIR-RED"}`)
	e.start("--config", e.shopConfig("    retry: {initial: 300ms, max: 300ms}\n"))
	waitFor(t, time.Minute, "acme's variant waiting", func() bool { return e.state("acme-v1") == "waiting" })
	waitFor(t, time.Minute, "globex flows meanwhile", func() bool { return e.state("globex-v1") == "succeeded" })
	var attempts int
	if err := e.conn.QueryRow(context.Background(), `SELECT attempts FROM ferry.delivery WHERE event_id = 'acme-v1'`).Scan(&attempts); err != nil || attempts != 0 {
		t.Fatalf("a waiting delivery counted %d attempts (%v)", attempts, err)
	}
	if n, _ := e.calls("acme", "POST", "/v1/variants"); n != 0 {
		t.Fatalf("a waiting variant called the partner %d times", n)
	}
	waitFor(t, time.Minute, "acme's variant created after its product", func() bool { return e.state("acme-v1") == "succeeded" })
	remote, _ := e.mappingOf("product", "acme", "p1")
	var got string
	for _, v := range e.sim.Objects("variants") {
		if v.Tenant == "acme" {
			got, _ = v.Fields["item_id"].(string)
		}
	}
	if got == "" || got != remote {
		t.Fatalf("acme's variant points at item %q, want its product's %q", got, remote)
	}
}

// Disabling a tenant deletes everything its mappings hold at the partner
// (children first) and skips its new events, recorded; other tenants flow.
func TestHTTP_DisableRollsTheTenantBack(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	cfg := e.shopConfig("")
	for _, tenant := range []string{"acme", "globex"} {
		e.emit(tenant, tenant+"-p1", "product.created", "product", "p1", product("lamp", 10))
		e.emit(tenant, tenant+"-p2", "product.created", "product", "p2", product("desk", 10))
		e.emit(tenant, tenant+"-v1", "variant.created", "variant", "v1", `{"product_id": "p1", "sku": "RED"}`)
	}
	e.start("--config", cfg)
	waitFor(t, time.Minute, "all created", func() bool { return e.state("acme-v1") == "succeeded" && e.state("globex-v1") == "succeeded" })

	code, out, errOut := e.runCmd("tenants", "disable", "--integration", "shop", "--tenant", "acme", "--reason", "contract ended", "--config", cfg)
	if code != 0 {
		t.Fatalf("disable: %d %s %s", code, out, errOut)
	}
	if !strings.Contains(out, "rollback: 3 partner objects deleted") {
		t.Fatalf("disable said: %s", out)
	}
	for _, entity := range []string{"items", "prices", "variants"} {
		for _, o := range e.sim.Objects(entity) {
			if o.Tenant == "acme" {
				t.Fatalf("acme's %s %s left after the rollback", entity, o.ID)
			}
		}
	}
	if len(itemsOf(e.sim, "globex")) != 2 {
		t.Fatal("globex was touched by acme's rollback")
	}
	// Children go first: the variant's DELETE precedes its product's.
	p1, _ := e.mappingOf("product", "acme", "p1")
	var order []string
	for _, r := range e.sim.Requests("acme") {
		if r.Method == "DELETE" {
			order = append(order, r.Path)
		}
	}
	if i, j := slices.IndexFunc(order, func(p string) bool { return strings.HasPrefix(p, "/v1/variants/") }),
		slices.Index(order, "/v1/items/"+p1); i < 0 || j < 0 || i > j {
		t.Fatalf("rollback order %v: the variant must go before its product's item %s", order, p1)
	}
	if _, state := e.mappingOf("product", "acme", "p1"); state != "deleted" {
		t.Fatalf("acme p1 mapping %s", state)
	}
	// New events: acme's recorded as skipped by the switch, globex's flow.
	e.emit("acme", "acme-p3", "product.created", "product", "p3", product("sofa", 10))
	e.emit("globex", "globex-p3", "product.created", "product", "p3", product("sofa", 10))
	waitFor(t, time.Minute, "globex delivered, acme skipped", func() bool {
		return e.state("globex-p3") == "succeeded" && e.state("acme-p3") == "skipped"
	})
	code, out, _ = e.runCmd("tenants", "--json")
	var ts []struct {
		TenantID string `json:"tenant_id"`
		Enabled  bool   `json:"enabled"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &ts) != nil {
		t.Fatalf("tenants: %d %s", code, out)
	}
	enabled := map[string]bool{}
	for _, x := range ts {
		enabled[x.TenantID] = x.Enabled
	}
	if enabled["acme"] || !enabled["globex"] {
		t.Fatalf("tenants: %s", out)
	}
	if code, _, errOut := e.runCmd("tenants", "disable", "--integration", "nope", "--tenant", "acme", "--config", cfg); code == 0 || !strings.Contains(errOut, "not in the --config") {
		t.Fatalf("disable of an unknown integration: %d %s", code, errOut)
	}
}
