package sinkapp

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/internal/pgdb"
)

// The intent protocol with the mapping writes in the delivery log's
// group commit: every create reaches the partner only after its intent
// is committed (the partner reads it from the database when the call
// arrives), and a sink killed with SIGKILL after the partner created an
// object, before the answer came back, is recovered by the next process
// from the intent: it sends the intent's Idempotency-Key again, the
// partner replays its answer, and the object exists once, mapped. Twenty
// tenants create at once, so the intents share batches. Each intent
// commits in the transaction that claimed its delivery (triggers record
// each row's transaction).
func TestHTTP_IntentCommittedBeforeTheCallAndRecoveredAfterAKill(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	if _, err := pgdb.Migrate(ctx, e.conn); err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn.Exec(ctx, `CREATE TABLE public.written_in (tbl text, key text, xid xid8);
		CREATE FUNCTION public.note_xid() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
			INSERT INTO public.written_in VALUES (TG_TABLE_NAME,
				COALESCE(to_jsonb(NEW)->>'event_id', concat_ws('/', NEW.tenant_id, to_jsonb(NEW)->>'entity_type', to_jsonb(NEW)->>'local_id')), pg_current_xact_id());
			RETURN NULL; END $$;
		CREATE TRIGGER note_xid AFTER INSERT ON ferry.delivery FOR EACH ROW EXECUTE FUNCTION public.note_xid();
		CREATE TRIGGER note_xid AFTER INSERT ON ferry.mapping FOR EACH ROW EXECUTE FUNCTION public.note_xid();`); err != nil {
		t.Fatal(err)
	}
	const tenants = 20
	var mu sync.Mutex
	var violations []string
	var firstKey string
	created := make(chan struct{})
	partnerDB, err := pgx.Connect(ctx, e.db) // the partner's own look at the database (mu)
	if err != nil {
		t.Fatal(err)
	}
	defer partnerDB.Close(ctx)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/items" {
			e.sim.ServeHTTP(w, r)
			return
		}
		key := r.Header.Get("Idempotency-Key")
		mu.Lock()
		var state string
		err := partnerDB.QueryRow(ctx, `SELECT state FROM ferry.mapping WHERE integration = 'shop' AND entity_type = 'product'
			AND idempotency_key = $1`, key).Scan(&state)
		if err != nil || state != "creating" {
			violations = append(violations, fmt.Sprintf("create with key %q arrived with its mapping %q (%v), want the intent committed", key, state, err))
		}
		hold := firstKey == "" && r.Header.Get("X-Tenant-ID") == "t00"
		if hold {
			firstKey = key
		}
		mu.Unlock()
		if !hold {
			e.sim.ServeHTTP(w, r)
			return
		}
		// The partner creates the item; the answer never reaches the
		// sink, which is killed meanwhile.
		e.sim.ServeHTTP(httptest.NewRecorder(), r)
		close(created)
		<-r.Context().Done()
	}))
	defer srv.Close()
	e.simURL = srv.URL
	args := []string{"--config", e.shopConfig("    timeout: 3s\n"), "--instance-id", "mapping-kill", "--session-timeout", "30s"}
	for i := range tenants {
		tenant := fmt.Sprintf("t%02d", i)
		e.emit(tenant, tenant+"-c1", "product.created", "product", "p1", product("lamp", 10))
	}
	p := e.startProcess(args...)
	select {
	case <-created:
	case <-time.After(time.Minute):
		p.kill()
		t.Fatalf("t00's create never reached the partner; sink stderr:\n%s", p.stderr.String())
	}
	p.kill()
	mu.Lock()
	key := firstKey
	mu.Unlock()
	var state, intentKey string
	if err := e.conn.QueryRow(ctx, `SELECT state, idempotency_key FROM ferry.mapping
		WHERE integration = 'shop' AND entity_type = 'product' AND tenant_id = 't00' AND local_id = 'p1'`).Scan(&state, &intentKey); err != nil ||
		state != "creating" || intentKey != key {
		t.Fatalf("after the kill: mapping %s with key %q (%v); want the intent with the key the partner got, %q", state, intentKey, err, key)
	}
	p = e.startProcess(args...)
	defer p.kill()
	waitFor(t, 2*time.Minute, "every create delivered after the restart", func() bool {
		for i := range tenants {
			if e.state(fmt.Sprintf("t%02d-c1", i)) != "succeeded" {
				return false
			}
		}
		return true
	})
	for i := range tenants {
		tenant := fmt.Sprintf("t%02d", i)
		items := itemsOf(e.sim, tenant)
		remote, state := e.mappingOf("product", tenant, "p1")
		if len(items) != 1 || items["p1"].ID != remote || state != "active" {
			t.Errorf("%s: partner items %+v, mapping %s %s: want one item, mapped", tenant, items, remote, state)
		}
	}
	if n, replayed := e.calls("t00", "POST", "/v1/items"); n != 2 || replayed != 1 {
		t.Errorf("t00's item: %d creates sent, %d replayed; want the lost one and its replay by the intent's key", n, replayed)
	}
	var apart int
	if err := e.conn.QueryRow(ctx, `SELECT count(*) FROM public.written_in d JOIN public.written_in m
		ON m.tbl = 'mapping' AND m.key = split_part(d.key, '-', 1) || '/product/p1'
		WHERE d.tbl = 'delivery' AND d.xid <> m.xid`).Scan(&apart); err != nil || apart != 0 {
		t.Errorf("%d intents committed apart from their delivery's claim (%v); want none", apart, err)
	}
	var pairs int
	if err := e.conn.QueryRow(ctx, `SELECT count(*) FROM public.written_in d JOIN public.written_in m
		ON m.tbl = 'mapping' AND m.key = split_part(d.key, '-', 1) || '/product/p1' AND m.xid = d.xid
		WHERE d.tbl = 'delivery'`).Scan(&pairs); err != nil || pairs != tenants {
		t.Errorf("%d intents written with their claims (%v); want %d", pairs, err, tenants)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, v := range violations {
		t.Error(v)
	}
}

// A create's partner id commits with the delivery's outcome, in one
// transaction. Here the variant's outcome waits on a lock the test
// holds, and the sink is killed with SIGKILL while it waits: neither the
// outcome nor the partner id is in the database after the kill (the
// mapping is still the intent written before the call, and no step is
// recorded: a one-step create has no checkpoint), and the next process
// sends the create again under the intent's key, which the partner
// replays: one variant at the partner, mapped to the id of the first
// answer, and no update sent.
func TestHTTP_CreateKilledWhileItsOutcomeCommitsIsRecoveredByItsIntent(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
	args := []string{"--config", e.shopConfig(""), "--instance-id", "mapping-finish-kill", "--session-timeout", "30s"}
	p := e.startProcess(args...)
	defer func() { p.kill() }()
	e.emit("acme", "p1-c1", "product.created", "product", "p1", product("lamp", 10))
	waitFor(t, time.Minute, "the parent product delivered", func() bool { return e.state("p1-c1") == "succeeded" })

	// The variant's Finish (its row turning succeeded) waits on advisory
	// lock 4242 while the test holds it.
	if _, err := e.conn.Exec(ctx, `CREATE FUNCTION hold_finish() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.event_id = 'v1-c1' AND NEW.state = 'succeeded' THEN PERFORM pg_advisory_xact_lock(4242); END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER hold_finish BEFORE UPDATE ON ferry.delivery FOR EACH ROW EXECUTE FUNCTION hold_finish()`); err != nil {
		t.Fatal(err)
	}
	lock := e.holdInTx(`SELECT pg_advisory_xact_lock(4242)`)
	e.emit("acme", "v1-c1", "variant.created", "variant", "v1", `{"product_id": "p1", "sku": "NOVA-RED"}`)
	waitFor(t, time.Minute, "the variant's outcome waiting to commit", func() bool {
		var waiting bool
		err := e.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory')`).Scan(&waiting)
		return err == nil && waiting
	})
	created := e.sim.Objects("variants")
	if len(created) != 1 {
		t.Fatalf("%d variants at the partner while the outcome waits, want 1", len(created))
	}
	p.kill()
	// The killed process' statement still waits in its backend: end it,
	// so its transaction rolls back, as a crash before the commit would.
	if _, err := e.conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'`); err != nil {
		t.Fatal(err)
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn.Exec(ctx, `DROP TRIGGER hold_finish ON ferry.delivery`); err != nil {
		t.Fatal(err)
	}
	if s := e.state("v1-c1"); s != "in_flight" {
		t.Fatalf("after the kill the variant's delivery is %s, want in_flight (its outcome never committed)", s)
	}
	if r, s := e.mappingOf("variant", "acme", "v1"); s != "creating" || r != "" {
		t.Fatalf("after the kill the variant's mapping is %s %q, want the intent alone (the partner id commits with the outcome)", s, r)
	}
	var steps *string
	if err := e.conn.QueryRow(ctx, `SELECT steps::text FROM ferry.delivery WHERE event_id = 'v1-c1'`).Scan(&steps); err != nil || steps != nil {
		t.Fatalf("the variant's recorded steps: %v (%v); want none", steps, err)
	}
	p = e.startProcess(args...)
	waitFor(t, time.Minute, "the variant delivered after the restart", func() bool { return e.state("v1-c1") == "succeeded" })
	if posts, replayed := e.calls("acme", "POST", "/v1/variants"); posts != 2 || replayed != 1 {
		t.Errorf("%d variant creates sent, %d replayed; want the first and its replay under the intent's key", posts, replayed)
	}
	if puts, _ := e.calls("acme", "PUT", "/v1/variants"); puts != 0 {
		t.Errorf("%d variant updates sent after the restart, want none", puts)
	}
	if got := e.sim.Objects("variants"); len(got) != 1 || got[0].ID != created[0].ID {
		t.Errorf("variants at the partner after the restart: %+v; want only %s", got, created[0].ID)
	}
	if r, s := e.mappingOf("variant", "acme", "v1"); r != created[0].ID || s != "active" {
		t.Errorf("variant mapping %s %s after the restart, want %s active", r, s, created[0].ID)
	}
}

// The mapping protocol under repeated SIGKILL: tenants create products
// (two steps: item, then price) and variants (one step, waiting for
// their product), then update both, while the sink is killed four times
// mid-load and restarted. Afterwards every object exists once at the
// partner, carries its update, and is mapped to that object: no create
// went out twice under different keys, no update reached another object
// or was lost.
func TestHTTP_SinkKilledRepeatedlyCreatesEachObjectOnce(t *testing.T) {
	e := newEnv(t, partnersim.Config{Latency: 3 * time.Millisecond, Jitter: 4 * time.Millisecond})
	const tenants, objects, kills = 10, 20, 4
	// Every object's create, then every object's update.
	for _, ph := range []struct {
		id, typ, name, sku string
		price              int
	}{
		{"c", "created", "lamp ", "", 10},
		{"u", "updated", "renamed ", "-2", 20},
	} {
		for i := range objects {
			for ti := range tenants {
				tenant := fmt.Sprintf("t%02d", ti)
				p, v := fmt.Sprintf("p%02d", i), fmt.Sprintf("v%02d", i)
				e.emit(tenant, tenant+"-"+p+"-"+ph.id, "product."+ph.typ, "product", p, product(ph.name+p, ph.price+i))
				e.emit(tenant, tenant+"-"+v+"-"+ph.id, "variant."+ph.typ, "variant", v, fmt.Sprintf(`{"product_id": %q, "sku": "sku-%s%s"}`, p, v, ph.sku))
			}
		}
	}
	const total = tenants * objects * 4
	succeeded := func() int {
		var n int
		_ = e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.delivery WHERE state = 'succeeded'`).Scan(&n)
		return n
	}
	args := []string{"--config", e.shopConfig("    timeout: 3s\n"), "--instance-id", "mapping-kills", "--session-timeout", "30s"}
	p := e.startProcess(args...)
	defer func() {
		p.kill()
		if t.Failed() {
			t.Logf("last sink's stderr:\n%s", p.stderr.String())
		}
	}()
	for k := range kills {
		before := succeeded()
		waitFor(t, 2*time.Minute, fmt.Sprintf("deliveries before kill %d", k+1), func() bool { return succeeded() >= before+total/(2*kills) })
		p.kill()
		p = e.startProcess(args...)
	}
	waitFor(t, 3*time.Minute, "every event delivered", func() bool { return succeeded() == total })

	type key struct{ tenant, local string }
	count := map[key]int{}
	byID := map[string]partnersim.Object{}
	for _, entity := range []string{"items", "variants"} {
		for _, o := range e.sim.Objects(entity) {
			count[key{o.Tenant, o.ExternalID}]++
			byID[o.ID] = o
		}
	}
	replayed := 0
	for ti := range tenants {
		for _, r := range e.sim.Requests(fmt.Sprintf("t%02d", ti)) {
			if r.Replayed {
				replayed++
			}
		}
	}
	// How often a kill hit a create, for the record.
	t.Logf("%d creates replayed by their idempotency key after the kills", replayed)
	prices := map[string]int{} // by item id
	for _, o := range e.sim.Objects("prices") {
		prices[fmt.Sprint(o.Fields["item_id"])]++
	}
	for ti := range tenants {
		tenant := fmt.Sprintf("t%02d", ti)
		for i := range objects {
			p, v := fmt.Sprintf("p%02d", i), fmt.Sprintf("v%02d", i)
			for _, c := range []struct{ entity, local, field, want string }{
				{"product", p, "name", "renamed " + p},
				{"variant", v, "sku", "sku-" + v + "-2"},
			} {
				if n := count[key{tenant, c.local}]; n != 1 {
					t.Errorf("%s %s: %d objects at the partner, want 1", tenant, c.local, n)
				}
				remote, state := e.mappingOf(c.entity, tenant, c.local)
				o, ok := byID[remote]
				if state != "active" || !ok || o.Tenant != tenant || o.ExternalID != c.local || fmt.Sprint(o.Fields[c.field]) != c.want {
					t.Errorf("%s %s: mapping %s %s → %+v; want it active on the object with %s %q", tenant, c.local, state, remote, o, c.field, c.want)
				}
			}
			item, _ := e.mappingOf("product", tenant, p)
			if prices[item] != 1 {
				t.Errorf("%s %s: %d prices for item %s, want 1", tenant, p, prices[item], item)
			}
		}
	}
}
