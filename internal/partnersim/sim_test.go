package partnersim

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type client struct {
	t   *testing.T
	url string
}

func (c client) do(method, path, tenant, key, body string) (int, map[string]any, http.Header) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.url+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("X-Tenant-ID", tenant)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	var m map[string]any
	if len(b) > 0 {
		_ = json.Unmarshal(b, &m) // lists decode elsewhere
	}
	return resp.StatusCode, m, resp.Header
}

func TestCRUDAndIdempotencyAndLookup(t *testing.T) {
	sim := New(Config{})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	c := client{t, srv.URL}

	st, obj, _ := c.do("POST", "/v1/items", "acme", "k1", `{"name":"Anvil","external_id":"sku-1"}`)
	if st != 201 || obj["id"] == "" {
		t.Fatalf("create: %d %v", st, obj)
	}
	id := obj["id"].(string)
	st, again, _ := c.do("POST", "/v1/items", "acme", "k1", `{"name":"Anvil","external_id":"sku-1"}`)
	if st != 201 || again["id"] != id || len(sim.Objects("items")) != 1 {
		t.Fatalf("replayed create made %d objects (%d %v)", len(sim.Objects("items")), st, again)
	}
	if st, _, _ := c.do("PUT", "/v1/items/"+id, "acme", "k2", `{"name":"Anvil 2"}`); st != 200 {
		t.Fatalf("update: %d", st)
	}
	if st, _, _ := c.do("PUT", "/v1/items/"+id, "globex", "k3", `{"name":"x"}`); st != 404 {
		t.Fatalf("another tenant updated acme's object: %d", st)
	}
	st, found, _ := c.do("GET", "/v1/items?external_id=sku-1", "acme", "", "")
	if data, _ := found["data"].([]any); st != 200 || len(data) != 1 {
		t.Fatalf("lookup: %d %v", st, found)
	}
	if st, _, _ := c.do("DELETE", "/v1/items/"+id, "acme", "k4", ""); st != 204 {
		t.Fatalf("delete: %d", st)
	}
	if st, _, _ := c.do("GET", "/v1/items/"+id, "acme", "", ""); st != 404 {
		t.Fatalf("read after delete: %d", st)
	}
	log := sim.Requests("acme")
	if len(log) != 6 || !log[1].Replayed || log[0].Seq >= log[1].Seq {
		t.Fatalf("request log: %+v", log)
	}
}

func TestFaults(t *testing.T) {
	sim := New(Config{RetryAfter: 2 * time.Second})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	c := client{t, srv.URL}

	sim.AddRule(Rule{Tenant: "bad", Status: 422, Reason: "invalid sku", Times: 1})
	if st, body, _ := c.do("POST", "/v1/items", "bad", "", `{}`); st != 422 || body["error"] != "invalid sku" {
		t.Fatalf("rule: %d %v", st, body)
	}
	if st, _, _ := c.do("POST", "/v1/items", "bad", "", `{}`); st != 201 {
		t.Fatalf("rule with times=1 still applies: %d", st)
	}
	sim.Outage(time.Hour)
	if st, _, h := c.do("POST", "/v1/items", "acme", "", `{}`); st != 503 || h.Get("Retry-After") != "2" {
		t.Fatalf("outage: %d retry-after %q", st, h.Get("Retry-After"))
	}
	if resp, err := http.Get(srv.URL + "/healthz"); err != nil || resp.StatusCode != 503 {
		t.Fatalf("healthz during outage: %v %v", resp, err)
	}

	limited := httptest.NewServer(New(Config{RateLimit: 10}))
	defer limited.Close()
	lc := client{t, limited.URL}
	got429 := false
	for range 50 {
		if st, _, h := lc.do("POST", "/v1/items", "acme", "", `{}`); st == 429 && h.Get("Retry-After") != "" {
			got429 = true
			break
		}
	}
	if !got429 {
		t.Fatal("50 requests at once under a 10/s limit never got a 429 with Retry-After")
	}
}

func TestControlAPI(t *testing.T) {
	sim := New(Config{})
	srv := httptest.NewServer(sim)
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/_sim/rules", "application/json", strings.NewReader(`{"entity":"prices","status":500}`))
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("add rule: %v %v", resp, err)
	}
	c := client{t, srv.URL}
	if st, _, _ := c.do("POST", "/v1/prices", "acme", "", `{}`); st != 500 {
		t.Fatalf("rule from control API not applied: %d", st)
	}
	resp, err = http.Get(srv.URL + "/_sim/requests?tenant=acme")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var log []Request
	if err := json.NewDecoder(resp.Body).Decode(&log); err != nil || len(log) != 1 || log[0].Status != 500 {
		t.Fatalf("request log over HTTP: %v %v", log, err)
	}
}
