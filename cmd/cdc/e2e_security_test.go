package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/testutil"
)

// Ids that a partner's HTTP client would refuse (as X-Tenant-ID or in
// Idempotency-Key), or that no partner should have to store, are
// dead-lettered with the reason in the ferry_error header; the good
// events around them are published.
func TestHostileIDsAreDeadLettered(t *testing.T) {
	e := newEnv(t)
	e.setup()
	stop := e.inproc()
	good1 := e.insert("acme", "product", "p1", "product.created", `{"n":1}`)
	long := e.insert(strings.Repeat("t", 256), "product", "p1", "product.created", `{"n":2}`)
	crlf := e.insert("acme\r\nX-Injected: 1", "product", "p1", "product.created", `{"n":3}`)
	esc := e.insert("acme\x1b[2J", "product", "p1", "product.created", `{"n":4}`)
	e.exec(`SELECT pg_logical_emit_message(true, 'ferry.outbox', $1)`,
		`{"id":"evil\u0007id","tenant_id":"acme","aggregate_type":"product","aggregate_id":"p1","event_type":"product.created","payload":{}}`)
	e.exec(`SELECT pg_logical_emit_message(true, 'ferry.outbox', $1)`,
		fmt.Sprintf(`{"id":%q,"tenant_id":"acme","aggregate_type":"product","aggregate_id":"p1","event_type":"product.created","payload":{}}`, strings.Repeat("i", 300)))
	good2 := e.insert(strings.Repeat("t", 255), "product", "p1", "product.created", `{"n":5}`)

	main := e.kafka.Consume(t, time.Minute, hasIDs([]string{good1, good2}), e.topic("product"))
	if len(main) != 2 {
		t.Fatalf("main topic: want exactly %s and %s, got %v", good1, good2, eventIDs(main))
	}
	dead := e.kafka.Consume(t, time.Minute, kafkatest.AtLeast(5), e.kafka.TopicPrefix+"dead_letter")
	reasons := map[string]string{}
	for _, r := range dead {
		reasons[kafkatest.Header(r, "event_id")] = kafkatest.Header(r, "ferry_error")
	}
	for id, want := range map[string]string{
		long: "tenant_id is 256 bytes long (at most 255)", crlf: "tenant_id has a control character", esc: "tenant_id has a control character",
		"evil\aid": "event id has a control character", strings.Repeat("i", 300): "event id is 300 bytes long",
	} {
		if !strings.Contains(reasons[id], want) {
			t.Errorf("dead letter for %q: reason %q, want %q", id, reasons[id], want)
		}
	}
	if code, errOut := stop(); code != 0 {
		t.Fatalf("cdc exit %d:\n%s", code, errOut)
	}
}

// cdc's admin server takes FERRY_ADMIN_TOKEN for /tenants and the
// profiles, refuses a foreign Host (DNS rebinding) and another site, and
// will not listen off loopback without a token.
func TestAdminTokenAndBrowserChecks(t *testing.T) {
	e := newEnv(t)
	e.setup()
	addr := testutil.FreeAddr(t)
	const token = "cdc-admin-secret"
	ctx, cancel := context.WithCancel(context.Background())
	var stderr testutil.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, e.args("--admin-addr", addr), func(k string) string {
			if k == "FERRY_ADMIN_TOKEN" {
				return token
			}
			return ""
		}, io.Discard, &stderr)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("cdc exit %d:\n%s", code, stderr.String())
		}
	}()
	get := func(path, host, tok string, hdr ...string) int {
		req, err := http.NewRequest("GET", "http://"+addr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return -1
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor(t, 30*time.Second, "cdc ready", func() bool { return get("/readyz", "", "") == 200 })
	port := addr[strings.LastIndex(addr, ":")+1:]
	for _, c := range []struct {
		name, path, host, tok string
		hdr                   []string
		want                  int
	}{
		{"tenants without the token", "/tenants", "", "", nil, 401},
		{"tenants with a wrong token", "/tenants", "", "nope", nil, 401},
		{"tenants with the token", "/tenants", "", token, nil, 200},
		{"profiles without the token", "/debug/pprof/", "", "", nil, 401},
		{"tenants by a rebound name", "/tenants", "evil.example:" + port, token, nil, 403},
		{"metrics by a rebound name", "/metrics", "evil.example:" + port, "", nil, 403},
		{"tenants from another site", "/tenants", "", token, []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"tenants from a foreign origin", "/tenants", "", token, []string{"Origin", "http://evil.example"}, 403},
		{"metrics by localhost", "/metrics", "localhost:" + port, "", nil, 200},
		{"health by any name", "/healthz", "lb.example", "", nil, 200},
	} {
		if got := get(c.path, c.host, c.tok, c.hdr...); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}

	var out bytes.Buffer
	code := run(context.Background(), e.args("--admin-addr", "0.0.0.0:0"), noenv, io.Discard, &out)
	if code != 2 || !strings.Contains(out.String(), "FERRY_ADMIN_TOKEN") {
		t.Fatalf("off loopback without a token: exit %d: %s", code, out.String())
	}
	out.Reset()
	code = run(context.Background(), e.args("--admin-allowed-hosts", "http://x:1"), noenv, io.Discard, &out)
	if code != 2 || !strings.Contains(out.String(), "admin_allowed_hosts[0]") {
		t.Fatalf("bad allowed host: exit %d: %s", code, out.String())
	}
}

// cdc status prints tenant ids as they were written, but never a
// terminal escape sequence.
func TestStatusEscapesControlCharacters(t *testing.T) {
	e := newEnv(t)
	e.setup()
	e.exec(`INSERT INTO ferry.cdc_tenant (slot_name, tenant_id, last_commit_at, events) VALUES ($1, $2, now(), 1)`, e.slot, "evil\x1b]0;pwned\x07\x1b[2J")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"status", "--postgres-url", e.db, "--slot", e.slot}, noenv, &out, &errb); code != 0 {
		t.Fatalf("status: %d %s", code, errb.String())
	}
	if bytes.ContainsAny(out.Bytes(), "\x1b\x07") || !strings.Contains(out.String(), `evil\u001b]0;pwned\u0007\u001b[2J`) {
		t.Fatalf("status printed:\n%q", out.String())
	}
}
