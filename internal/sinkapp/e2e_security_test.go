package sinkapp

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/internal/testutil"
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

// A pipeline run with every kind of configured secret: the partner's
// bearer token, a webhook URL's token (url_env), the admin token and a
// password-like database URL parameter. A partner rejection, successes
// and transport failures are recorded. No log line, stored row, admin
// API answer, page or CLI output holds any of the secrets.
func TestSecrets_NeverStoredLoggedOrShown(t *testing.T) {
	const (
		partnerSecret = "partner-bearer-5b1e0c"
		hookSecret    = "hook-token-9d2f44"
		deadSecret    = "deadhook-sig-71aa03"
		adminSecret   = "admin-token-c4e8b2"
		dbSecret      = "db-pass-0f6e19"
	)
	secrets := []string{partnerSecret, hookSecret, deadSecret, adminSecret, dbSecret}
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "acme", Status: 422, Reason: "acme is not welcome"})
	cfgPath := e.shopConfig("")
	t.Setenv("SHOP_TOKEN", partnerSecret)
	dead := "http://" + testutil.DeadAddr(t) // every call is a transport error
	t.Setenv("FERRY_TEST_HOOK_URL", e.simURL+"/v1/events?token="+hookSecret)
	t.Setenv("FERRY_TEST_DEAD_HOOK_URL", dead+"/hook?sig="+deadSecret)
	sep := "?"
	if strings.Contains(e.db, "?") {
		sep = "&"
	}
	dbURL := e.db + sep + "password=" + dbSecret
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Replace(string(b), "postgres_url: "+e.db+"\n", "postgres_url: "+dbURL+"\n", 1)
	if body == string(b) {
		t.Fatal("the config's postgres_url was not replaced")
	}
	topic := e.kafka.TopicPrefix + "outbox.product"
	for _, name := range []string{"hooks", "deadhooks"} {
		env := map[string]string{"hooks": "FERRY_TEST_HOOK_URL", "deadhooks": "FERRY_TEST_DEAD_HOOK_URL"}[name]
		body += fmt.Sprintf("  - name: %s\n    topics: [%s]\n    commit_interval: 100ms\n    retry: {initial: 50ms, max: 200ms}\n"+
			"    connector: {type: webhook, url_env: %s, timeout: 2s}\n", name, topic, env)
	}
	if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	e.emit("acme", "acme-p1", "product.created", "product", "p1", product("lamp", 10))
	e.emit("globex", "globex-p1", "product.created", "product", "p1", product("desk", 20))
	addr := freeAddr(t)
	e.vars = map[string]string{"FERRY_ADMIN_TOKEN": adminSecret}
	stop := e.start("--config", cfgPath, "--admin-addr", addr, "--log-level", "debug")
	stateOf := func(integration, id string) (state string, attempts int) {
		_ = e.conn.QueryRow(t.Context(), `SELECT state, attempts FROM ferry.delivery WHERE integration = $1 AND event_id = $2`, integration, id).Scan(&state, &attempts)
		return state, attempts
	}
	waitFor(t, time.Minute, "rejections, successes and transport failures recorded", func() bool {
		s1, _ := stateOf("shop", "acme-p1")
		s2, _ := stateOf("hooks", "acme-p1")
		s3, _ := stateOf("shop", "globex-p1")
		s4, _ := stateOf("hooks", "globex-p1")
		s5, n5 := stateOf("deadhooks", "globex-p1")
		return s1 == "rejected" && s2 == "rejected" && s3 == "succeeded" && s4 == "succeeded" && s5 == "failed" && n5 >= 2
	})

	// What there is to search: the admin API, the page, the metrics, the
	// CLI, every row Ferry stores, and (after stopping) every log line.
	var seen strings.Builder
	for _, path := range []string{"/", "/api/v1/status", "/api/v1/tenants", "/metrics",
		"/api/v1/failures?state=failed,rejected,succeeded,in_flight,pending&limit=1000",
		"/api/v1/failures?integration=hooks&state=rejected", "/api/v1/failures?integration=deadhooks&state=failed"} {
		code, body := send(t, addr, "GET", path, "", map[string]string{"Authorization": "Bearer " + adminSecret}, "")
		if code != 200 {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		fmt.Fprintf(&seen, "== GET %s\n%s\n", path, body)
	}
	for _, args := range [][]string{{"failures", "--calls"}, {"failures", "--calls", "--json"}, {"status"}, {"tenants"},
		{"failures", "--calls", "--integration", "deadhooks", "--state", "failed"}} {
		var out, errb bytes.Buffer
		code := run(t.Context(), append(args, "--config", cfgPath, "--postgres-url", dbURL), func(string) string { return "" }, &out, &errb)
		if code != 0 {
			t.Fatalf("sink %v: %d %s", args, code, errb.String())
		}
		fmt.Fprintf(&seen, "== sink %v\n%s%s\n", args, out.String(), errb.String())
	}
	rows, err := e.conn.Query(t.Context(), `SELECT table_name FROM information_schema.tables WHERE table_schema = 'ferry' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	rows.Close()
	for _, tbl := range tables {
		var dump *string
		if err := e.conn.QueryRow(t.Context(), fmt.Sprintf(`SELECT string_agg(x::text, E'\n') FROM ferry.%q x`, tbl)).Scan(&dump); err != nil {
			t.Fatalf("dump ferry.%s: %v", tbl, err)
		}
		if dump != nil {
			fmt.Fprintf(&seen, "== ferry.%s\n%s\n", tbl, *dump)
		}
	}
	code, logs := stop()
	if code != 0 {
		t.Fatalf("sink exit %d", code)
	}
	fmt.Fprintf(&seen, "== logs\n%s", logs)

	all := seen.String()
	// The search would find them: the calls are there, redacted.
	for _, want := range []string{"token=REDACTED", "sig=REDACTED", "acme is not welcome", "connection refused", "level=WARN", "== ferry.delivery"} {
		if !strings.Contains(all, want) {
			t.Errorf("nothing to search: the output lacks %q", want)
		}
	}
	for _, s := range secrets {
		for i, line := range strings.Split(all, "\n") {
			if strings.Contains(line, s) {
				t.Errorf("secret %q found at line %d: %s", s, i+1, line)
			}
		}
	}
	if t.Failed() {
		t.Logf("searched:\n%s", all)
	}
}

// A record whose tenant id the HTTP client would refuse (produced to
// Ferry's topic directly, not through cdc) is rejected as bad input,
// never sent and never retried; the operator's commands print the id
// with its escape sequences made visible, not executed.
func TestHostileTenantIsRejectedAndPrintedSafely(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	const evil = "evil\x1b]0;pwned\x07\x1b[2J"
	e.produce(evil, "evil-1", "product.updated", `{"n":1}`)
	e.produce("acme", "acme-1", "product.updated", `{"n":1}`)
	e.start("--config", e.config(""))
	waitFor(t, time.Minute, "the hostile event rejected, acme's delivered", func() bool {
		return e.state("evil-1") == "rejected" && e.state("acme-1") == "succeeded"
	})
	var reason string
	var attempts int
	if err := e.conn.QueryRow(t.Context(), `SELECT reason, attempts FROM ferry.delivery WHERE event_id = 'evil-1'`).Scan(&reason, &attempts); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(reason, "bad input") || !strings.Contains(reason, "X-Tenant-Id") || attempts != 1 {
		t.Fatalf("reason %q after %d attempts", reason, attempts)
	}
	for _, r := range e.sim.Requests("") {
		if strings.HasPrefix(r.Tenant, "evil") {
			t.Fatalf("the partner got the hostile event: %+v", r)
		}
	}
	for _, args := range [][]string{{"failures", "--calls"}, {"failures", "--json"}, {"tenants"}, {"status"}} {
		code, out, errOut := e.runCmd(args...)
		if code != 0 {
			t.Fatalf("sink %v: %d %s", args, code, errOut)
		}
		if strings.ContainsAny(out, "\x1b\x07") {
			t.Errorf("sink %v printed a raw escape sequence: %q", args, out)
		}
		if args[0] != "status" && !strings.Contains(out, `evil\u001b]0;pwned\u0007\u001b[2J`) {
			t.Errorf("sink %v does not show the tenant escaped:\n%s", args, out)
		}
	}
}
