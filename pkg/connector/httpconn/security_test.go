package httpconn

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/internal/testutil"
	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/connector/connectortest"
)

// Paths that do not start with "/" (base_url + "@attacker.example"
// changes the host), static dot segments, a base_url with credentials or
// a query, and a health_path without "/" are refused at start-up, each
// with its key path.
func TestConfigRefusesURLsThatCouldLeaveThePartner(t *testing.T) {
	cfg := example(t, "shop")
	cfg.BaseURL = "https://user:hunter2@api.partner.example"
	cfg.HealthPath = "health"
	product := cfg.Entities["product"]
	product.Update = Steps{{Call: Call{Path: "{{.remote_id}}.attacker.example/x"}}}
	product.Delete = Steps{{Call: Call{Path: "/v1/items/../admin"}}}
	cfg.Entities["product"] = product
	_, err := newWithEnv(cfg, "integrations[0].connector", getenv)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{
		`integrations[0].connector.base_url: carries credentials`,
		`integrations[0].connector.health_path: "health" must start with "/"`,
		`integrations[0].connector.entities.product.update.path: "{{.remote_id}}.attacker.example/x" must start with "/"`,
		`integrations[0].connector.entities.product.delete.path: "/v1/items/../admin" has a "." or ".." segment`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q; got:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "hunter2") {
		t.Errorf("the error quotes the password:\n%s", msg)
	}
	cfg = example(t, "shop")
	cfg.BaseURL = "https://api.partner.example/?api_key=k1"
	if _, err := newWithEnv(cfg, "c", getenv); err == nil || !strings.Contains(err.Error(), "c.base_url:") || strings.Contains(err.Error(), "k1") {
		t.Errorf("base_url with a query: %v", err)
	}
}

// Values from the event that would aim a call at another object (an
// empty remote id, ".", "..") make the delivery a rejection naming the
// reason; nothing is sent. Values that try to change the host stay in
// the path.
func TestHostileValuesNeverLeaveThePath(t *testing.T) {
	var calls atomic.Int32
	s := partnersim.New(partnersim.Config{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		s.ServeHTTP(w, r)
	}))
	defer srv.Close()
	c := newConn(t, example(t, "shop"), srv.URL)
	ctx := context.Background()
	for _, id := range []string{"..", "."} {
		m := connectortest.NewMemMappings()
		before := calls.Load()
		// A variant's parent is found by the payload's product_id.
		_, err := c.Deliver(ctx, req(event("e-"+id, "variant.created", "variant", id, `{"product_id": "p1", "sku": "x"}`), m))
		var w *connector.Waiting
		if !errors.As(err, &w) {
			t.Fatalf("variant %q: %v", id, err)
		}
		// The remote id is the dot segment: a mapped product whose partner
		// id is "..".
		if err := m.Activate(ctx, "product", "p1", id); err != nil {
			t.Fatal(err)
		}
		_, err = c.Deliver(ctx, req(event("d-"+id, "product.deleted", "product", "p1", `{}`), m))
		var rej *connector.Rejection
		if !errors.As(err, &rej) || !strings.Contains(rej.Reason, "path segment") || !strings.Contains(rej.Reason, "bad input") {
			t.Fatalf("delete of remote id %q: %v", id, err)
		}
		if n := calls.Load() - before; n != 0 {
			t.Fatalf("remote id %q: %d calls sent", id, n)
		}
	}
	// An empty value: DELETE /v1/items/ would hit the collection.
	cfg := example(t, "shop")
	product := cfg.Entities["product"]
	product.Delete = Steps{{Call: Call{Path: "/v1/items/{{.payload.code}}"}}}
	cfg.Entities["product"] = product
	ce := newConn(t, cfg, srv.URL)
	m := connectortest.NewMemMappings()
	if err := m.Activate(ctx, "product", "p2", "r2"); err != nil {
		t.Fatal(err)
	}
	before := calls.Load()
	_, err := ce.Deliver(ctx, req(event("d-empty", "product.deleted", "product", "p2", `{"code": ""}`), m))
	var rej *connector.Rejection
	if !errors.As(err, &rej) || !strings.Contains(rej.Reason, `path segment 3 is ""`) || calls.Load() != before {
		t.Fatalf("delete with an empty value: %v (%d calls)", err, calls.Load()-before)
	}
	// Host-changing values are escaped into one segment.
	for _, id := range []string{"@attacker.example", ".attacker.example", "//attacker.example", "x/../../admin", "%2e%2e"} {
		before := calls.Load()
		m := connectortest.NewMemMappings()
		if err := m.Activate(ctx, "product", "p3", id); err != nil {
			t.Fatal(err)
		}
		res, err := c.Deliver(ctx, req(event("u-"+id, "product.updated", "product", "p3", `{"name": "n", "price": 1, "currency": "EUR"}`), m))
		var calls0 []connector.Call
		var rej *connector.Rejection
		var fail *connector.Failure
		switch {
		case err == nil:
			calls0 = res.Calls
		case errors.As(err, &rej):
			calls0 = rej.Calls
		case errors.As(err, &fail):
			calls0 = fail.Calls
		}
		for _, cl := range calls0 {
			u, perr := url.Parse(cl.URL)
			if perr != nil || u.Host != strings.TrimPrefix(srv.URL, "http://") || strings.Contains(u.EscapedPath(), "/../") {
				t.Fatalf("value %q made a call to %s", id, cl.URL)
			}
		}
		if calls.Load()-before != int32(len(calls0)) {
			t.Fatalf("value %q: %d calls recorded, %d sent", id, len(calls0), calls.Load()-before)
		}
	}
}

// A tenant id the HTTP client would refuse is a rejection (bad input),
// not a failure retried forever.
func TestUnbuildableRequestIsARejection(t *testing.T) {
	_, base := sim(t)
	c := newConn(t, example(t, "shop"), base)
	ev := event("e1", "product.created", "product", "p1", `{"name": "Lamp", "price": 1, "currency": "EUR"}`)
	ev.TenantID = "acme\r\nX-Evil: 1"
	_, err := c.Deliver(context.Background(), req(ev, connectortest.NewMemMappings()))
	if out, _ := connector.Classify(err); out != connector.Rejected || !strings.Contains(err.Error(), "X-Tenant-Id has a control character") {
		t.Fatalf("got %v (%v)", out, err)
	}
}

// Redirects are not followed: the API key would go along to another
// host. The 3xx is a failure that says so.
func TestRedirectsAreNotFollowed(t *testing.T) {
	var stolen atomic.Int32
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" || r.Header.Get("X-Api-Key") != "" {
			stolen.Add(1)
		}
		w.WriteHeader(201)
		_, _ = w.Write([]byte(`{"id": "x"}`))
	}))
	defer evil.Close()
	partner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, evil.URL+r.URL.Path+"?token=leak", http.StatusTemporaryRedirect)
	}))
	defer partner.Close()
	c := newConn(t, example(t, "shop"), partner.URL)
	_, err := c.Deliver(context.Background(), req(event("e1", "product.created", "product", "p1", `{"name": "Lamp", "price": 1, "currency": "EUR"}`), connectortest.NewMemMappings()))
	var fail *connector.Failure
	if !errors.As(err, &fail) || fail.Status != 307 || !strings.Contains(fail.Reason, "redirects are not followed") || strings.Contains(fail.Reason, "leak") {
		t.Fatalf("got %v", err)
	}
	if stolen.Load() != 0 {
		t.Fatal("the credentials went to the redirect's host")
	}
}

// Transport errors are stored without their URL (it may carry a token).
func TestTransportErrorsCarryNoURL(t *testing.T) {
	base := "http://" + testutil.DeadAddr(t) // refuses connections
	cfg := example(t, "shop")
	c := newConn(t, cfg, base)
	_, err := c.Deliver(context.Background(), req(event("e1", "product.created", "product", "p1", `{"name": "Lamp", "price": 1, "currency": "EUR"}`), connectortest.NewMemMappings()))
	var fail *connector.Failure
	if !errors.As(err, &fail) || len(fail.Calls) != 1 {
		t.Fatalf("got %v", err)
	}
	if strings.Contains(err.Error(), "http://") || strings.Contains(fail.Calls[0].Error, "http://") || fail.Calls[0].Error == "" {
		t.Fatalf("error %q / call error %q quote the URL", err, fail.Calls[0].Error)
	}
	if err := c.Probe(context.Background()); err == nil || strings.Contains(err.Error(), "http://") {
		t.Fatalf("probe error %v", err)
	}
}
