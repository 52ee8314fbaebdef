package httpconn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/connector/connectortest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var testEnv = map[string]string{"SHOP_TOKEN": "s3cret-token", "PAYMENTS_API_KEY": "pk_test_123"}

func getenv(k string) string { return testEnv[k] }

// example returns the connector section of examples/<name>.yaml.
func example(t testing.TB, name string) Config {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "examples", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Integrations []struct {
			Connector struct {
				Type   string `yaml:"type"`
				Config `yaml:",inline"`
			} `yaml:"connector"`
		} `yaml:"integrations"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f.Integrations[0].Connector.Config
}

func newConn(t testing.TB, cfg Config, baseURL string) *Connector {
	t.Helper()
	cfg.BaseURL = baseURL
	c, err := newWithEnv(cfg, "connector", getenv)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sim(t testing.TB) (*partnersim.Server, string) {
	s := partnersim.New(partnersim.Config{})
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return s, srv.URL
}

func event(id, typ, aggType, aggID, payload string) connector.Event {
	return connector.Event{ID: id, TenantID: "acme", EventType: typ, AggregateType: aggType, AggregateID: aggID, Payload: []byte(payload)}
}

func req(ev connector.Event, m connector.Mappings) connector.Request {
	return connector.Request{Integration: "shop", Event: ev, Mappings: m, IdempotencyKey: "shop:" + ev.ID, Attempt: 1}
}

func TestConformance(t *testing.T) {
	cfg := example(t, "shop")
	connectortest.Run(t, connectortest.Harness{
		New: func(t testing.TB, baseURL string, timeout time.Duration) connector.Connector {
			c := cfg
			c.Timeout = timeout
			return newConn(t, c, baseURL)
		},
		Event: func(tenant string) connector.Event {
			ev := event("e-1", "product.created", "product", "p1", `{"name": "Lamp", "price": 25, "currency": "EUR"}`)
			ev.TenantID = tenant
			return ev
		},
		Update: func(tenant string) connector.Event {
			ev := event("e-2", "product.updated", "product", "p1", `{"name": "Desk lamp", "price": 30, "currency": "EUR"}`)
			ev.TenantID = tenant
			return ev
		},
		Delete: func(tenant string) connector.Event {
			ev := event("e-3", "product.deleted", "product", "p1", `{}`)
			ev.TenantID = tenant
			return ev
		},
	})
}

// TestConfigErrorsAllAtOnce: every problem is reported at start-up, each
// with its field path and what to do.
func TestConfigErrorsAllAtOnce(t *testing.T) {
	var cfg Config
	err := yaml.Unmarshal([]byte(`
base_url: ftp://partner
auth: {type: bearer, token_env: NOT_SET_ANYWHERE}
operations: {"product.created": make}
entities:
  product:
    create:
      path: /v1/items/{{.nme}}
      body: '{"name": {{.payload.name}'
    update:
      path: /v1/items/{{.remote_id}}
      id: "$["
      method: FETCH
  variant:
    parents: {widget: "{{.payload.widget_id}}"}
    create:
      path: /v1/variants
      body: '{"p": {{.parents.product}}}'
      id: $.id
    update:
      path: /v1/variants/{{.remote_id}}
    delete:
      path: /v1/variants/{{.remote_id}}
`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = newWithEnv(cfg, "integrations[1].connector", getenv)
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{
		`integrations[1].connector.base_url: "ftp://partner": give the partner's http(s) URL`,
		`integrations[1].connector.auth.token_env: environment variable NOT_SET_ANYWHERE is not set`,
		`integrations[1].connector.operations.product.created: "make": use create, update, upsert or delete`,
		`integrations[1].connector.entities.product.create.path: unknown field "nme"`,
		`integrations[1].connector.entities.product.create.body: template does not parse`,
		`integrations[1].connector.entities.product.update.method: "FETCH"`,
		`integrations[1].connector.entities.product.update.id: "$[" is not a JSON path`,
		`integrations[1].connector.entities.product.delete: required`,
		`integrations[1].connector.entities.product.create: no step has an id`,
		`integrations[1].connector.entities.variant.create.body: unknown parent "product"`,
		`integrations[1].connector.entities.variant.parents.widget: not an entity of this connector`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q; got:\n%v", want, err)
		}
	}
}

// recorder is a partner that records every request (for golden files)
// and answers like partnersim.
type recorder struct {
	mu   sync.Mutex
	reqs []string
	sim  *partnersim.Server
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, q *http.Request) {
	body, _ := io.ReadAll(q.Body)
	q.Body = io.NopCloser(bytes.NewReader(body))
	var hs []string
	for _, h := range []string{"Authorization", "Idempotency-Key", "X-Tenant-Id", "X-Api-Key", "Content-Type", "X-Source"} {
		if v := q.Header.Get(h); v != "" {
			hs = append(hs, h+": "+v)
		}
	}
	r.mu.Lock()
	r.reqs = append(r.reqs, fmt.Sprintf("%s %s\n%s\n%s\n", q.Method, q.URL.RequestURI(), strings.Join(hs, "\n"), body))
	r.mu.Unlock()
	r.sim.ServeHTTP(w, q)
}

// TestGoldenRequests renders the shop example's create (two steps),
// update, a variant create (with its parent's partner id) and delete,
// and compares every request with testdata/shop.golden.
func TestGoldenRequests(t *testing.T) {
	rec := &recorder{sim: partnersim.New(partnersim.Config{})}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	c := newConn(t, example(t, "shop"), srv.URL)
	m := connectortest.NewMemMappings()
	ctx := context.Background()
	for _, ev := range []connector.Event{
		event("e1", "product.created", "product", "p/1", `{"name": "Lamp \"Nova\"", "price": 25.50, "currency": "EUR"}`),
		event("e2", "product.updated", "product", "p/1", `{"name": "Lamp Nova ✓", "price": 27, "currency": "EUR"}`),
		event("e3", "variant.created", "variant", "v1", `{"product_id": "p/1", "sku": "NOVA-RED"}`),
		event("e4", "variant.deleted", "variant", "v1", `{}`),
		event("e5", "product.deleted", "product", "p/1", `{}`),
	} {
		if _, err := c.Deliver(ctx, req(ev, m)); err != nil {
			t.Fatalf("%s: %v", ev.EventType, err)
		}
	}
	got := strings.Join(rec.reqs, "---\n")
	golden := filepath.Join("testdata", "shop.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestGoldenRequests -update to write it)", err)
	}
	if got != string(want) {
		t.Errorf("rendered requests differ from %s:\n%s", golden, got)
	}
	if n := rec.sim.ObjectCount(); n != 0 {
		t.Errorf("%d partner objects left after the deletes", n)
	}
}

// TestCreateUpdateDeleteReachTheRightObject: the update and the delete go
// to the object the create made, found through the mapping.
func TestCreateUpdateDeleteReachTheRightObject(t *testing.T) {
	s, base := sim(t)
	c := newConn(t, example(t, "shop"), base)
	m := connectortest.NewMemMappings()
	ctx := context.Background()
	for _, id := range []string{"p1", "p2"} {
		if _, err := c.Deliver(ctx, req(event("c-"+id, "product.created", "product", id, `{"name": "`+id+`", "price": 1, "currency": "EUR"}`), m)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Deliver(ctx, req(event("u-p2", "product.updated", "product", "p2", `{"name": "p2 renamed", "price": 2, "currency": "EUR"}`), m)); err != nil {
		t.Fatal(err)
	}
	p2, _ := m.Get(ctx, "product", "p2")
	items := map[string]partnersim.Object{}
	for _, o := range s.Objects("items") {
		items[o.ID] = o
	}
	if o := items[p2.RemoteID]; o.Fields["name"] != "p2 renamed" || o.Version != 2 {
		t.Fatalf("update did not reach p2's item %s: %+v", p2.RemoteID, o)
	}
	if _, err := c.Deliver(ctx, req(event("d-p1", "product.deleted", "product", "p1", `{}`), m)); err != nil {
		t.Fatal(err)
	}
	if got := s.Objects("items"); len(got) != 1 || got[0].ID != p2.RemoteID {
		t.Fatalf("after deleting p1 the partner holds %+v, want only p2's item %s", got, p2.RemoteID)
	}
	if p1, _ := m.Get(ctx, "product", "p1"); p1.State != "deleted" {
		t.Fatalf("p1's mapping is %s after the delete", p1.State)
	}
	// Deleting it again is a recorded no-op.
	res, err := c.Deliver(ctx, req(event("d-p1b", "product.deleted", "product", "p1", `{}`), m))
	if err != nil || !strings.Contains(res.Note, "no-op") || len(res.Calls) != 0 {
		t.Fatalf("second delete: %+v, %v", res, err)
	}
}

// TestResumeAtFailedStep: step 2 fails; the retry does not repeat step 1.
func TestResumeAtFailedStep(t *testing.T) {
	s, base := sim(t)
	c := newConn(t, example(t, "shop"), base)
	m := connectortest.NewMemMappings()
	ctx := context.Background()
	s.AddRule(partnersim.Rule{Entity: "prices", Status: 503, Times: 1})
	r := req(event("e1", "product.created", "product", "p1", `{"name": "Lamp", "price": 25, "currency": "EUR"}`), m)
	var recorded []connector.Step
	r.Checkpoint = func(_ context.Context, s connector.Step) error { recorded = append(recorded, s); return nil }
	_, err := c.Deliver(ctx, r)
	if out, _ := connector.Classify(err); out != connector.Failed {
		t.Fatalf("first attempt: %v", err)
	}
	if len(recorded) != 1 || recorded[0].Name != "item" || recorded[0].RemoteID == "" {
		t.Fatalf("recorded steps %+v", recorded)
	}
	r.Steps, r.Attempt = recorded, 2
	res, err := c.Deliver(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Calls) != 1 || !strings.HasSuffix(res.Calls[0].URL, "/v1/prices") {
		t.Fatalf("retry made %+v, want only the price call", res.Calls)
	}
	if n := len(s.Objects("items")); n != 1 {
		t.Fatalf("%d items at the partner, want 1", n)
	}
	if pm, _ := m.Get(ctx, "product_price", "p1"); !pm.Active() {
		t.Fatalf("price mapping %+v", pm)
	}
}

// TestCreateRecordedByItsMapping: a create of one step records no step
// in the delivery log (its mapping, written under the event's intent key,
// is the record), and an attempt after the mapping was written but before
// the delivery finished (a crash between the two) sends nothing again:
// no second create, no update. Another event's create of the same object
// is an update, as before. A two-step create still records its first
// step, and its last step too, as that one maps another entity.
func TestCreateRecordedByItsMapping(t *testing.T) {
	s, base := sim(t)
	c := newConn(t, example(t, "shop"), base)
	m := connectortest.NewMemMappings()
	ctx := context.Background()
	var recorded []connector.Step
	record := func(_ context.Context, s connector.Step) error { recorded = append(recorded, s); return nil }
	r := req(event("c-p1", "product.created", "product", "p1", `{"name": "Lamp", "price": 25, "currency": "EUR"}`), m)
	r.Checkpoint = record
	if _, err := c.Deliver(ctx, r); err != nil {
		t.Fatal(err)
	}
	if len(recorded) != 2 || recorded[0].Name != "item" || recorded[1].Name != "price" {
		t.Fatalf("two-step create recorded %+v, want both steps", recorded)
	}
	recorded = nil
	r = req(event("c-v1", "variant.created", "variant", "v1", `{"product_id": "p1", "sku": "NOVA-RED"}`), m)
	r.Checkpoint = record
	first, err := c.Deliver(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(recorded) != 0 || len(first.Calls) != 1 || first.RemoteID == "" {
		t.Fatalf("one-step create: recorded %+v, result %+v; want no step recorded, one call", recorded, first)
	}
	r.Attempt = 2 // the same event again, the mapping written, no step recorded
	again, err := c.Deliver(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Calls) != 0 || again.RemoteID != first.RemoteID || len(recorded) != 0 {
		t.Fatalf("the same create again: %+v (recorded %+v); want no call and partner id %s", again, recorded, first.RemoteID)
	}
	if n := len(s.Objects("variants")); n != 1 {
		t.Fatalf("%d variants at the partner, want 1", n)
	}
	other, err := c.Deliver(ctx, req(event("c-v1-again", "variant.created", "variant", "v1", `{"product_id": "p1", "sku": "NOVA-BLUE"}`), m))
	if err != nil {
		t.Fatal(err)
	}
	if len(other.Calls) != 1 || other.Calls[0].Method != http.MethodPut {
		t.Fatalf("another event's create of v1 made %+v, want one update", other.Calls)
	}
}

// TestRejectedStepUndoesEarlierSteps: the price is rejected; Undo deletes
// the item and its mapping.
func TestRejectedStepUndoesEarlierSteps(t *testing.T) {
	s, base := sim(t)
	c := newConn(t, example(t, "shop"), base)
	m := connectortest.NewMemMappings()
	ctx := context.Background()
	s.AddRule(partnersim.Rule{Entity: "prices", Status: 422, Reason: "amount must be positive"})
	r := req(event("e1", "product.created", "product", "p1", `{"name": "Lamp", "price": -1, "currency": "EUR"}`), m)
	_, err := c.Deliver(ctx, r)
	var rej *connector.Rejection
	if !errors.As(err, &rej) || len(rej.Steps) != 1 || rej.Status != 422 {
		t.Fatalf("want a 422 rejection after step item: %#v", err)
	}
	if n := len(s.Objects("items")); n != 1 {
		t.Fatalf("%d items before undo", n)
	}
	calls, err := c.Undo(ctx, r, rej.Steps)
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || calls[0].Method != http.MethodDelete || calls[0].Status != 204 {
		t.Fatalf("undo calls %+v", calls)
	}
	if n := len(s.Objects("items")); n != 0 {
		t.Fatalf("%d items after undo", n)
	}
	if pm, _ := m.Get(ctx, "product", "p1"); pm.State != "deleted" {
		t.Fatalf("mapping after undo: %+v", pm)
	}
}

// TestChildWaitsForParent: a variant whose product is not mapped waits.
func TestChildWaitsForParent(t *testing.T) {
	s, base := sim(t)
	c := newConn(t, example(t, "shop"), base)
	m := connectortest.NewMemMappings()
	ctx := context.Background()
	v := req(event("v", "variant.created", "variant", "v1", `{"product_id": "p1", "sku": "RED"}`), m)
	_, err := c.Deliver(ctx, v)
	var w *connector.Waiting
	if !errors.As(err, &w) || w.EntityType != "product" || w.LocalID != "p1" {
		t.Fatalf("want waiting for product p1: %v", err)
	}
	if n := len(s.Requests("acme")); n != 0 {
		t.Fatalf("a waiting child called the partner %d times", n)
	}
	if _, err := c.Deliver(ctx, req(event("p", "product.created", "product", "p1", `{"name": "Lamp", "price": 1, "currency": "EUR"}`), m)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Deliver(ctx, v); err != nil {
		t.Fatal(err)
	}
	p, _ := m.Get(ctx, "product", "p1")
	vs := s.Objects("variants")
	if len(vs) != 1 || vs[0].Fields["item_id"] != p.RemoteID {
		t.Fatalf("variant %+v, want item_id %s", vs, p.RemoteID)
	}
}

// TestCrashAfterCreateRecoversByLookup: the partner created the item but
// the mapping was never written (an intent was). The next event finds the
// item by our id instead of creating a second one.
func TestCrashAfterCreateRecoversByLookup(t *testing.T) {
	s, base := sim(t)
	c := newConn(t, example(t, "shop"), base)
	ctx := context.Background()
	m := connectortest.NewMemMappings()
	// The create's partner call succeeds, the mapping write is lost.
	lossy := &losingActivate{MemMappings: m}
	_, err := c.Deliver(ctx, req(event("e1", "product.created", "product", "p1", `{"name": "Lamp", "price": 1, "currency": "EUR"}`), lossy))
	if err == nil {
		t.Fatal("the lost mapping write was not reported")
	}
	if mm, _ := m.Get(ctx, "product", "p1"); mm.State != "creating" {
		t.Fatalf("intent not kept: %+v", mm)
	}
	// A different event (an update) arrives: upsert must find the item.
	if _, err := c.Deliver(ctx, req(event("e2", "product.updated", "product", "p1", `{"name": "Lamp 2", "price": 2, "currency": "EUR"}`), m)); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Objects("items")); n != 1 {
		t.Fatalf("%d items at the partner, want 1: %+v", n, s.Objects("items"))
	}
}

type losingActivate struct{ *connectortest.MemMappings }

func (l *losingActivate) Activate(context.Context, string, string, string) error {
	return errors.New("connection lost")
}

// TestSameKeyReplaysWithoutLookup: with no lookup configured, the intent's
// idempotency key makes the partner replay its first answer.
func TestSameKeyReplaysWithoutLookup(t *testing.T) {
	s, base := sim(t)
	cfg := example(t, "payments")
	c := newConn(t, cfg, base)
	ctx := context.Background()
	m := connectortest.NewMemMappings()
	ev := event("o1-placed", "order.placed", "order", "o1", `{"total": 10, "currency": "EUR", "card": "4242"}`)
	ev.AggregateType = "order"
	if _, err := c.Deliver(ctx, req(ev, &losingActivate{MemMappings: m})); err == nil {
		t.Fatal("lost write not reported")
	}
	// The retry of the same event sends the same key.
	r := req(ev, m)
	r.Attempt = 2
	if _, err := c.Deliver(ctx, r); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Objects("authorizations")); n != 1 {
		t.Fatalf("%d authorizations, want 1", n)
	}
	var replayed int
	for _, q := range s.Requests("acme") {
		if q.Replayed {
			replayed++
		}
	}
	if replayed != 1 {
		t.Fatalf("%d replayed answers, want 1", replayed)
	}
}

// TestPaymentsExample: authorized, declined (402/422 reject), errors retry.
func TestPaymentsExample(t *testing.T) {
	s := partnersim.New(partnersim.Config{})
	rec := &recorder{sim: s}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	c := newConn(t, example(t, "payments"), srv.URL)
	ctx := context.Background()
	m := connectortest.NewMemMappings()
	s.AddRule(partnersim.Rule{BodyContains: "4000000000000002", Status: 402, Reason: "card_declined"})
	s.AddRule(partnersim.Rule{BodyContains: "4000000000000119", Status: 503, Reason: "processing_error", Times: 1})
	order := func(id, card string) connector.Request {
		return req(event(id+"-placed", "order.placed", "order", id, `{"total": 10, "currency": "EUR", "card": "`+card+`"}`), m)
	}
	if _, err := c.Deliver(ctx, order("o1", "4242424242424242")); err != nil {
		t.Fatalf("authorize: %v", err)
	}
	_, err := c.Deliver(ctx, order("o2", "4000000000000002"))
	var rej *connector.Rejection
	if !errors.As(err, &rej) || rej.Status != 402 || !strings.Contains(rej.Reason, "card_declined") {
		t.Fatalf("declined card: %v", err)
	}
	_, err = c.Deliver(ctx, order("o3", "4000000000000119"))
	if out, _ := connector.Classify(err); out != connector.Failed {
		t.Fatalf("processing error: %v, want failed (retried)", err)
	}
	if _, err := c.Deliver(ctx, order("o3", "4000000000000119")); err != nil {
		t.Fatalf("retry: %v", err)
	}
	// Auth is the API-key header from the environment, on every call.
	for _, q := range rec.reqs {
		if !strings.Contains(q, "X-Api-Key: pk_test_123") {
			t.Fatalf("call without the API key: %s", q)
		}
	}
	if o1, _ := m.Get(ctx, "order", "o1"); !o1.Active() {
		t.Fatalf("o1 not mapped: %+v", o1)
	}
	// A cancelled order voids its authorization.
	if _, err := c.Deliver(ctx, req(event("o1-cancelled", "order.cancelled", "order", "o1", `{}`), m)); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Objects("authorizations")); n != 1 {
		t.Fatalf("%d authorizations left, want o3's", n)
	}
}

// A delete that fails leaves the mapping deleting, with the partner id;
// the retry deletes the right object.
func TestFailedDeleteIsRetriedOnTheSameObject(t *testing.T) {
	s, base := sim(t)
	c := newConn(t, example(t, "payments"), base)
	ctx := context.Background()
	m := connectortest.NewMemMappings()
	if _, err := c.Deliver(ctx, req(event("o1-placed", "order.placed", "order", "o1", `{"total": 10, "currency": "EUR", "card": "4242"}`), m)); err != nil {
		t.Fatal(err)
	}
	s.AddRule(partnersim.Rule{Method: "DELETE", Status: 503, Times: 1})
	cancel := req(event("o1-cancelled", "order.cancelled", "order", "o1", `{}`), m)
	if _, err := c.Deliver(ctx, cancel); err == nil {
		t.Fatal("the 503 was not reported")
	}
	if mm, _ := m.Get(ctx, "order", "o1"); mm.State != "deleting" || mm.RemoteID == "" {
		t.Fatalf("mapping after a failed delete: %+v", mm)
	}
	cancel.Attempt = 2
	if _, err := c.Deliver(ctx, cancel); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Objects("authorizations")); n != 0 {
		t.Fatalf("%d authorizations left", n)
	}
	if mm, _ := m.Get(ctx, "order", "o1"); mm.State != "deleted" {
		t.Fatalf("mapping %+v", mm)
	}
}

// Basic auth and API-key headers carry the secrets from the environment.
func TestAuthTypes(t *testing.T) {
	for _, c := range []struct {
		auth Auth
		want string
	}{
		{Auth{Type: "basic", UsernameEnv: "U", PasswordEnv: "P"}, "Authorization: Basic dXNlcjpwYXNz"},
		{Auth{Type: "header", Header: "X-Api-Key", ValueEnv: "K"}, "X-Api-Key: key-1"},
		{Auth{Type: "bearer", TokenEnv: "T"}, "Authorization: Bearer tok"},
	} {
		rec := &recorder{sim: partnersim.New(partnersim.Config{})}
		srv := httptest.NewServer(rec)
		cfg := example(t, "payments")
		cfg.Auth, cfg.BaseURL = c.auth, srv.URL
		vars := map[string]string{"U": "user", "P": "pass", "K": "key-1", "T": "tok"}
		conn, err := newWithEnv(cfg, "connector", func(k string) string { return vars[k] })
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Deliver(context.Background(), req(event("o", "order.placed", "order", "o1", `{"total": 1, "currency": "EUR", "card": "1"}`), connectortest.NewMemMappings())); err != nil {
			t.Fatal(err)
		}
		srv.Close()
		if len(rec.reqs) != 1 || !strings.Contains(rec.reqs[0], c.want) {
			t.Fatalf("%s: request %q lacks %q", c.auth.Type, rec.reqs, c.want)
		}
	}
}

func TestOperationPrecedence(t *testing.T) {
	c := Config{Operations: map[string]string{"*.deleted": "delete", "product.*": "upsert", "product.deleted": "update", "*": "create"}}
	for typ, want := range map[string]string{"product.deleted": "update", "price.deleted": "delete", "product.renamed": "upsert", "x": "create"} {
		if got := c.operation(typ); got != want {
			t.Errorf("operation(%q) = %q, want %q", typ, got, want)
		}
	}
	if got := (&Config{}).operation("order.updated"); got != "update" {
		t.Errorf("default operations: %q", got)
	}
}

// TestOperationCached: the connector answers an event type's operation
// from its cache as the configuration does, twice, and caches at most
// maxCachedOps types (the outbox's writers name them).
func TestOperationCached(t *testing.T) {
	cfg := Config{Operations: map[string]string{"*.deleted": "delete", "product.*": "upsert", "product.deleted": "update"}}
	c := &Connector{cfg: cfg}
	for i := 0; i < maxCachedOps+100; i++ {
		typ := fmt.Sprintf("t%d.deleted", i)
		if i%3 == 0 {
			typ = fmt.Sprintf("product.t%d", i)
		}
		for range 2 {
			ev := connector.Event{EventType: typ}
			if got, want := c.operation(connector.Request{Event: ev}), cfg.operation(typ); got != want {
				t.Fatalf("operation(%q) = %q, want %q", typ, got, want)
			}
		}
	}
	for typ, want := range map[string]string{"product.deleted": "update", "x.y": ""} {
		for range 2 {
			if got := c.operation(connector.Request{Event: connector.Event{EventType: typ}}); got != want {
				t.Errorf("operation(%q) = %q, want %q", typ, got, want)
			}
		}
	}
	n := 0
	c.ops.Range(func(any, any) bool { n++; return true })
	if n != maxCachedOps || c.nops.Load() != maxCachedOps {
		t.Errorf("%d event types cached (counted %d), want at most %d", n, c.nops.Load(), maxCachedOps)
	}
}

// FuzzBodyEscaping: whatever a payload string holds, the rendered body is
// JSON and carries the value unchanged, in and outside a JSON string.
func FuzzBodyEscaping(f *testing.F) {
	for _, s := range []string{"plain", `quo"te`, `back\slash`, "new\nline", "</script>", "\u2028", "{{.x}}", "\x00"} {
		f.Add(s)
	}
	whole, err := compile("body", `{"v": {{.payload.v}}, "s": "pre-{{.payload.v}}-post"}`, bodyKind, scope{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, v string) {
		out, err := render(whole, map[string]any{"payload": map[string]any{"v": v}})
		if err != nil {
			return // invalid UTF-8 is reported, not sent
		}
		var got struct{ V, S string }
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("body %q is not JSON: %v", out, err)
		}
		// Invalid UTF-8 becomes U+FFFD, as encoding/json writes it.
		var want string
		b, _ := json.Marshal(v)
		_ = json.Unmarshal(b, &want)
		if got.V != want || got.S != "pre-"+want+"-post" {
			t.Fatalf("value %q came out as %q / %q", v, got.V, got.S)
		}
	})
}

// FuzzPathEscaping: a value in a path stays one segment and round-trips,
// or, when it is empty, "." or "..", the path is refused; the URL always
// keeps base_url's scheme, host and port.
func FuzzPathEscaping(f *testing.F) {
	for _, s := range []string{"p1", "a/b", "../admin", "x?y=z", "spa ce", "%2F", "#frag", "", ".", "..", "@evil.example",
		".evil.example", "//evil.example", "\ue000", "\ue001..", "%2e%2e"} {
		f.Add(s)
	}
	p, err := compile("path", `/v1/items/{{.local_id}}/x?q={{.local_id}}`, pathKind, scope{})
	if err != nil {
		f.Fatal(err)
	}
	c := &Connector{base: "https://api.partner.example:8443/base"}
	c.origin, _ = url.Parse(c.base)
	f.Fuzz(func(t *testing.T, v string) {
		out, err := renderPath(p, map[string]any{"local_id": v})
		if v == "" || v == "." || v == ".." {
			if err == nil {
				t.Fatalf("value %q rendered %q: want it refused", v, out)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.ContainsAny(out, "\ue000\ue001") {
			t.Fatalf("a marker leaked into %q", out)
		}
		target, err := url.Parse(c.base + out)
		if err == nil {
			err = c.sameOrigin(target)
		}
		if err != nil {
			t.Fatalf("value %q: %v", v, err)
		}
		u, err := url.Parse("http://h" + out)
		if err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		seg := strings.Split(u.EscapedPath(), "/")
		if len(seg) != 5 {
			t.Fatalf("value %q split the path: %q", v, out)
		}
		if got, _ := url.PathUnescape(seg[3]); got != v {
			t.Fatalf("segment %q, want %q", got, v)
		}
		if got := u.Query().Get("q"); got != v {
			t.Fatalf("query %q, want %q", got, v)
		}
	})
}

// FuzzExtractID: any answer and path: an id or an error, never a panic;
// and for a "$.name" path, read in place (memberID), the same id or
// error as the decoded answer gives.
func FuzzExtractID(f *testing.F) {
	f.Add(`{"id": "x1"}`, "$.id")
	f.Add(`{"data": [{"id": 42}]}`, "$.data[0].id")
	f.Add(`[1, {"a": null}]`, "$..a")
	f.Add(`not json`, "$.id")
	f.Add(`{"id": "a", "id": "b"}`, "$.id")
	f.Add(`{"i\u0064": "esc", "id": "x"}`, "$.id")
	f.Add(`{"id": "caf\u00e9"}`, "$.id")
	f.Add("{\"id\": \"\xff\"}", "$.id")
	f.Add(`{"id": -1.5e3}`, "$.id")
	f.Add(`{"id": ""}`, "$.id")
	f.Add(`{"ID": "upper"}`, "$.id")
	f.Add(`{"x": {"id": "inner"}, "id": null}`, "$.id")
	f.Fuzz(func(t *testing.T, body, path string) {
		p, err := parseIDPath(path)
		if err != nil {
			return
		}
		id, err := extractID(p, []byte(body))
		if err == nil && id == "" {
			t.Fatalf("empty id without an error for %q at %q", body, path)
		}
		if fast, ferr, ok := p.memberID([]byte(body)); ok {
			slow, serr := extractID(&idPath{Path: p.Path}, []byte(body))
			if fast != slow || fmt.Sprint(ferr) != fmt.Sprint(serr) {
				t.Fatalf("%q at %q: read in place %q, %v; decoded %q, %v", body, path, fast, ferr, slow, serr)
			}
		}
	})
}

func TestExtractID(t *testing.T) {
	for _, c := range []struct{ body, path, want string }{
		{`{"id": "x1"}`, "$.id", "x1"},
		{`{"data": [{"id": 12345678901234567890}]}`, "$.data[0].id", "12345678901234567890"},
		{`{"data": []}`, "$.data[0].id", ""},
		{`{"id": {"n": 1}}`, "$.id", ""},
	} {
		p, _ := parseIDPath(c.path)
		if _, _, ok := p.memberID([]byte(c.body)); ok != (c.path == "$.id" && c.body == `{"id": "x1"}`) {
			t.Errorf("memberID(%s, %s) read in place: %v", c.body, c.path, ok)
		}
		got, err := extractID(p, []byte(c.body))
		if got != c.want || (c.want == "") != (err != nil) {
			t.Errorf("extractID(%s, %s) = %q, %v; want %q", c.body, c.path, got, err, c.want)
		}
	}
}

func TestSecretsNeverRecorded(t *testing.T) {
	_, base := sim(t)
	c := newConn(t, example(t, "shop"), base)
	res, err := c.Deliver(context.Background(), req(event("e1", "product.created", "product", "p1", `{"name": "Lamp", "price": 1, "currency": "EUR"}`), connectortest.NewMemMappings()))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res)
	if strings.Contains(string(b), testEnv["SHOP_TOKEN"]) {
		t.Fatalf("the token is in the recorded calls: %s", b)
	}
	keys := make([]string, 0)
	for k := range c.entities {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if fmt.Sprint(keys) != "[product variant]" {
		t.Fatalf("entities %v", keys)
	}
}

// Templates see a CloudEvents envelope's attributes as .cloudevent (its
// data is .payload); without an envelope a template naming one is a
// rejection, not a call.
func TestCloudEventAttributesInTemplates(t *testing.T) {
	rec := &recorder{sim: partnersim.New(partnersim.Config{})}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	cfg := example(t, "payments")
	cfg.BaseURL = srv.URL
	cfg.Headers = map[string]string{"X-Source": "{{.cloudevent.source}}"}
	conn, err := newWithEnv(cfg, "connector", getenv)
	if err != nil {
		t.Fatal(err)
	}
	ev := event("o", "order.placed", "order", "o1", `{"total": 1, "currency": "EUR", "card": "1"}`)
	ev.CloudEvent = map[string]any{"specversion": "1.0", "source": "/ferry/shop"}
	if _, err := conn.Deliver(context.Background(), req(ev, connectortest.NewMemMappings())); err != nil {
		t.Fatal(err)
	}
	if len(rec.reqs) != 1 || !strings.Contains(rec.reqs[0], "X-Source: /ferry/shop") {
		t.Fatalf("requests %q lack the envelope's source", rec.reqs)
	}
	ev.CloudEvent = nil
	_, err = conn.Deliver(context.Background(), req(ev, connectortest.NewMemMappings()))
	if out, _ := connector.Classify(err); out != connector.Rejected || len(rec.reqs) != 1 {
		t.Fatalf("no envelope: %v (%v), %d requests; want a rejection and no call", out, err, len(rec.reqs))
	}
}

// coldCache is the sink's store as a process sees it that has cached
// nothing (just started, or its partitions just reassigned): Cached
// always misses. It counts the reads of products' own mappings (the
// price's, a create step's, is read to fill .ids).
type coldCache struct {
	*connectortest.MemMappings
	gets int
}

func (c *coldCache) Cached(string, string) (connector.Mapping, bool) {
	return connector.Mapping{}, false
}

func (c *coldCache) Get(ctx context.Context, entityType, localID string) (connector.Mapping, error) {
	if entityType == "product" {
		c.gets++
	}
	return c.MemMappings.Get(ctx, entityType, localID)
}

// With a store that caches, a create that finds nothing cached writes
// its intent without reading first, and the intent's answer decides as
// the read did: a new object is created; an object already mapped (a
// second create, another process's cache) is updated, not created
// twice; an intent an earlier event left behind is recovered by lookup.
func TestCreateWritesTheIntentWithoutReadingFirst(t *testing.T) {
	s, base := sim(t)
	c := newConn(t, example(t, "shop"), base)
	ctx := context.Background()
	m := &coldCache{MemMappings: connectortest.NewMemMappings()}
	lamp := `{"name": "Lamp", "price": 1, "currency": "EUR"}`
	if _, err := c.Deliver(ctx, req(event("c1", "product.created", "product", "p1", lamp), m)); err != nil {
		t.Fatal(err)
	}
	p1, _ := m.MemMappings.Get(ctx, "product", "p1")
	if !p1.Active() || p1.IdempotencyKey != "shop:c1:item" || len(s.Objects("items")) != 1 {
		t.Fatalf("create: mapping %+v, items %+v", p1, s.Objects("items"))
	}
	if _, err := c.Deliver(ctx, req(event("c2", "product.created", "product", "p1", `{"name": "Lamp 2", "price": 1, "currency": "EUR"}`), m)); err != nil {
		t.Fatal(err)
	}
	if items := s.Objects("items"); len(items) != 1 || items[0].ID != p1.RemoteID || items[0].Fields["name"] != "Lamp 2" {
		t.Fatalf("a second create of a mapped object: items %+v, want %s updated", items, p1.RemoteID)
	}
	if m.gets != 0 {
		t.Fatalf("the creates read the product mapping %d times, want none", m.gets)
	}
	// The partner created p2, and the mapping write was lost; a later
	// create event (a resync's would be an upsert) finds the intent.
	if _, err := c.Deliver(ctx, req(event("c3", "product.created", "product", "p2", lamp), &losingActivate{MemMappings: m.MemMappings})); err == nil {
		t.Fatal("the lost mapping write was not reported")
	}
	if _, err := c.Deliver(ctx, req(event("c4", "product.created", "product", "p2", lamp), m)); err != nil {
		t.Fatal(err)
	}
	p2, _ := m.MemMappings.Get(ctx, "product", "p2")
	if n := len(s.Objects("items")); n != 2 || !p2.Active() {
		t.Fatalf("%d items at the partner (want 2), p2 mapped %+v", n, p2)
	}
}

// TestPlannedTemplatesRenderAsTextTemplate: a template with a plan
// renders what text/template renders from it, value or error, for every
// template kind and the shapes of data events have.
func TestPlannedTemplatesRenderAsTextTemplate(t *testing.T) {
	templates := []struct {
		k       kind
		src     string
		planned bool
	}{
		{bodyKind, `{"external_id": {{.local_id}}, "name": {{.payload.name}}, "s": "x-{{.payload.name}}"}`, true},
		{bodyKind, `{"n": {{.payload.n | raw}}, "deep": {{.payload.a.b}}, "all": {{.payload}}}`, true},
		{pathKind, `/v1/items/{{.remote_id}}/sub/{{.payload.name}}?q={{.payload.name}}&t={{.tenant_id}}`, true},
		{headerKind, `{{.tenant_id}}-{{.payload.name}}`, true},
		{headerKind, `plain text`, true},
		{bodyKind, `{{if .payload.name}}{"n": {{.payload.name}}}{{end}}`, false},
		{bodyKind, `{{printf "%v" .payload.name}}`, false},
	}
	datas := []map[string]any{
		{"local_id": "L1", "remote_id": "R/1", "tenant_id": "t", "payload": map[string]any{"name": `a "b"`, "n": json.Number("12"),
			"a": map[string]any{"b": []any{1.5, "x", nil}}}},
		{"local_id": "", "remote_id": "..", "tenant_id": "t\nx", "payload": map[string]any{"name": nil, "n": true, "a": map[string]any{"b": nil}}},
		{"local_id": "L", "remote_id": "r", "tenant_id": "t", "payload": map[string]any{"name": "\xff", "a": "not a map"}},
		{"local_id": "L", "remote_id": "r", "tenant_id": "t", "payload": map[string]any{}},
		{"local_id": "L", "remote_id": "r", "tenant_id": "t", "payload": nil},
	}
	for _, tc := range templates {
		planned, err := compile("t", tc.src, tc.k, scope{})
		if err != nil {
			t.Fatal(err)
		}
		if (planned.plan != nil) != tc.planned {
			t.Fatalf("%s: plan %v, want planned=%v", tc.src, planned.plan, tc.planned)
		}
		plain := &tmpl{Template: planned.Template}
		for i, data := range datas {
			renderFn := render
			if tc.k == pathKind {
				renderFn = renderPath
			}
			got, gotErr := renderFn(planned, data)
			want, wantErr := renderFn(plain, data)
			if got != want || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
				t.Errorf("%s, data %d:\nplan          %q, %v\ntext/template %q, %v", tc.src, i, got, gotErr, want, wantErr)
			}
		}
	}
}

// intentRecorder records the intents Deliver writes.
type intentRecorder struct {
	*coldCache
	intents []connector.Intent
}

func (r *intentRecorder) Intend(ctx context.Context, entityType, localID, key string) (connector.Mapping, error) {
	r.intents = append(r.intents, connector.Intent{EntityType: entityType, LocalID: localID, IdempotencyKey: key})
	return r.coldCache.Intend(ctx, entityType, localID, key)
}

// Intent (connector.Intender) names the intent Deliver then writes
// first, and nothing where Deliver writes none first: an update, a
// resync's upsert, a delete, a child (it checks its parent first), an
// object the cache holds, a store without a cache.
func TestIntentIsTheOneDeliverWritesFirst(t *testing.T) {
	s, base := sim(t)
	c := newConn(t, example(t, "shop"), base)
	ctx := context.Background()
	lamp := `{"name": "Lamp", "price": 1, "currency": "EUR"}`
	rec := &intentRecorder{coldCache: &coldCache{MemMappings: connectortest.NewMemMappings()}}

	r := req(event("c1", "product.created", "product", "p1", lamp), rec)
	in, ok := c.Intent(r)
	want := connector.Intent{EntityType: "product", LocalID: "p1", IdempotencyKey: "shop:c1:item"}
	if !ok || in.State == nil || (connector.Intent{EntityType: in.EntityType, LocalID: in.LocalID, IdempotencyKey: in.IdempotencyKey}) != want {
		t.Fatalf("Intent of a create = %+v, %v; want %+v", in, ok, want)
	}
	r.IntentState = in.State // as the sink hands it back
	if _, err := c.Deliver(ctx, r); err != nil {
		t.Fatal(err)
	}
	in.State = nil
	if len(rec.intents) == 0 || rec.intents[0] != in {
		t.Fatalf("Deliver wrote the intents %+v; want %+v first", rec.intents, in)
	}
	// The state Intent hands Deliver follows the claimed attempt: a
	// redriven delivery's new key is the one written and sent. Undo of
	// the same request starts afresh.
	r = req(event("c2", "product.created", "product", "p2", lamp), rec)
	in, _ = c.Intent(r)
	r.IdempotencyKey, r.IntentState = "shop:c2:r1", in.State
	rec.intents = nil
	if _, err := c.Deliver(ctx, r); err != nil {
		t.Fatal(err)
	}
	if len(rec.intents) == 0 || rec.intents[0].IdempotencyKey != "shop:c2:r1:item" {
		t.Fatalf("after a redrive, Deliver wrote the intents %+v; want the new key shop:c2:r1:item first", rec.intents)
	}
	var sent []string
	for _, q := range s.Requests("") {
		if q.Method == "POST" && strings.Contains(q.Body, `"p2"`) {
			sent = append(sent, q.IdempotencyKey)
		}
	}
	if len(sent) != 1 || sent[0] != "shop:c2:r1:item" {
		t.Fatalf("the partner got the keys %q for p2; want shop:c2:r1:item", sent)
	}
	if d, ok := fromIntent(r); ok {
		t.Fatalf("Intent's delivery %p handed out twice", d)
	}

	variant := req(event("c2", "variant.created", "variant", "v1", `{"product_id": "p1", "sku": "L-1"}`), rec)
	resync := req(event("c3", "product.created", "product", "p3", lamp), rec)
	resync.Resync = true
	del := req(event("c4", "product.created", "product", "p1", lamp), rec)
	del.Delete = true
	steps := req(event("c5", "product.created", "product", "p5", lamp), rec)
	steps.Steps = []connector.Step{{Name: "item", RemoteID: "x"}}
	warm := connectortest.NewMemMappings()
	if err := warm.Activate(ctx, "product", "p1", "item-1"); err != nil {
		t.Fatal(err)
	}
	cached := req(event("c6", "product.created", "product", "p1", lamp), &warmCache{warm})
	for name, r := range map[string]connector.Request{
		"an update":               req(event("c7", "product.updated", "product", "p1", lamp), rec),
		"a child":                 variant,
		"a resync":                resync,
		"a delete":                del,
		"an attempt after a step": steps,
		"a cached object":         cached,
		"a store without a cache": req(event("c8", "product.created", "product", "p8", lamp), connectortest.NewMemMappings()),
		"an unknown entity":       req(event("c9", "thing.created", "thing", "t1", `{}`), rec),
	} {
		if in, ok := c.Intent(r); ok {
			t.Errorf("Intent of %s = %+v; want none", name, in)
		}
	}
}

// warmCache is a store whose cache holds every mapping it has.
type warmCache struct{ *connectortest.MemMappings }

func (w *warmCache) Cached(entityType, localID string) (connector.Mapping, bool) {
	m, err := w.Get(context.Background(), entityType, localID)
	return m, err == nil && m.Active()
}
