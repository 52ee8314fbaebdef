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
)

// The intent protocol with the mapping writes in the delivery log's
// group commit: every create reaches the partner only after its intent
// is committed (the partner reads it from the database when the call
// arrives), and a sink killed with SIGKILL after the partner created an
// object, before the answer came back, is recovered by the next process
// from the intent: it sends the intent's Idempotency-Key again, the
// partner replays its answer, and the object exists once, mapped. Twenty
// tenants create at once, so the intents share batches.
func TestHTTP_IntentCommittedBeforeTheCallAndRecoveredAfterAKill(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	ctx := context.Background()
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
	mu.Lock()
	defer mu.Unlock()
	for _, v := range violations {
		t.Error(v)
	}
}
