package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// send makes one raw request to the admin server: host, when not empty,
// replaces the Host header (a DNS-rebound page's request carries the
// attacker's name).
func send(t *testing.T, addr, method, path, host string, header map[string]string, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A web page in the operator's browser attacks the sink's admin API on
// its default loopback address, which has no token: the no-preflight
// cross-site POST (text/plain) to /api/v1/tenants/disable, the same
// request made to look like JSON from another site, and a DNS-rebound
// read of /failures. Each is refused; the tenant stays enabled and
// nothing is deleted at the partner. The same disable sent the way an
// operator's client sends it (JSON, no browser headers) then works,
// which shows the refused requests would have done harm.
func TestAdmin_BrowserAttacksAreRefused(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.emit("acme", "acme-p1", "product.created", "product", "p1", product("lamp", 10))
	addr := freeAddr(t)
	e.start("--config", e.shopConfig(""), "--admin-addr", addr)
	waitFor(t, time.Minute, "acme's product created", func() bool { return e.state("acme-p1") == "succeeded" })
	if len(itemsOf(e.sim, "acme")) != 1 {
		t.Fatalf("partner items: %+v", itemsOf(e.sim, "acme"))
	}
	disable := `{"integration":"shop","tenant":"acme","reason":"pwned"}`
	for _, c := range []struct {
		name   string
		host   string
		header map[string]string
		want   int
	}{
		{"browser form-style POST from another site", "", map[string]string{"Content-Type": "text/plain;charset=UTF-8",
			"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, 403},
		{"text/plain without browser headers", "", map[string]string{"Content-Type": "text/plain"}, 415},
		{"no content type", "", nil, 415},
		{"form encoded", "", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415},
		{"JSON marked cross-site", "", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403},
		{"JSON marked same-site", "", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403},
		{"JSON from a foreign Origin", "", map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example"}, 403},
		{"JSON from a null Origin", "", map[string]string{"Content-Type": "application/json", "Origin": "null"}, 403},
		{"JSON through DNS rebinding", "evil.example:" + strings.Split(addr, ":")[1], map[string]string{"Content-Type": "application/json"}, 403},
	} {
		code, body := send(t, addr, "POST", "/api/v1/tenants/disable", c.host, c.header, disable)
		if code != c.want || !strings.Contains(body, `"error"`) {
			t.Errorf("%s: %d %s; want %d", c.name, code, body, c.want)
		}
	}
	// DNS rebinding: the page's origin now resolves to 127.0.0.1, and its
	// requests carry its own name.
	port := strings.Split(addr, ":")[1]
	for _, path := range []string{"/api/v1/failures", "/api/v1/status", "/metrics", "/debug/pprof/"} {
		if code, body := send(t, addr, "GET", path, "rebind.evil.example:"+port, nil, ""); code != 403 || !strings.Contains(body, "admin_allowed_hosts") {
			t.Errorf("GET %s with a foreign Host: %d %s", path, code, body)
		}
	}
	if code, _ := send(t, addr, "GET", "/api/v1/failures", "", map[string]string{"Sec-Fetch-Site": "cross-site"}, ""); code != 403 {
		t.Errorf("cross-site read of /failures: %d", code)
	}
	// The page's own calls: same origin, by address or localhost.
	for _, host := range []string{"", "localhost:" + port} {
		if code, body := send(t, addr, "GET", "/api/v1/failures", host, map[string]string{"Sec-Fetch-Site": "same-origin"}, ""); code != 200 {
			t.Errorf("same-origin read via %q: %d %s", host, code, body)
		}
	}
	// Nothing happened.
	var ts []struct {
		TenantID string `json:"tenant_id"`
		Enabled  bool   `json:"enabled"`
	}
	if code := api(t, addr, "", "GET", "/api/v1/tenants?integration=shop", "", &ts); code != 200 || len(ts) != 1 || !ts[0].Enabled {
		t.Fatalf("tenants after the attacks: %d %+v", code, ts)
	}
	if n, _ := e.calls("acme", "DELETE", "/"); n != 0 || len(itemsOf(e.sim, "acme")) != 1 {
		t.Fatalf("the partner saw %d DELETEs; acme's items: %+v", n, itemsOf(e.sim, "acme"))
	}
	// The operator's request: the same body, as JSON, without browser
	// headers.
	var res map[string]any
	if code := api(t, addr, "", "POST", "/api/v1/tenants/disable", disable, &res); code != 200 {
		t.Fatalf("operator's disable: %d %v", code, res)
	}
	if n, _ := e.calls("acme", "DELETE", "/"); n == 0 || len(itemsOf(e.sim, "acme")) != 0 {
		t.Fatalf("the operator's disable deleted nothing (%d DELETEs): the refused requests proved nothing", n)
	}
}
