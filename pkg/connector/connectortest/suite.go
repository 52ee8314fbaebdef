// Package connectortest is the conformance suite every connector must
// pass: it runs a connector against the partner simulator over real HTTP
// and checks the contract of package connector — success records its
// calls, a redelivery with the same idempotency key has no second effect,
// 5xx and timeouts and unreachable partners are failures, 429 carries its
// Retry-After, and 4xx rejections are rejections.
package connectortest

import (
	"context"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

// Harness adapts a connector to the suite.
type Harness struct {
	// New returns the connector under test, talking to the partner
	// simulator at baseURL (e.g. "http://127.0.0.1:41234"; its API is
	// documented in package partnersim) with per-call timeout.
	New func(t testing.TB, baseURL string, timeout time.Duration) connector.Connector
	// Event returns an event the connector handles, for tenant.
	Event func(tenant string) connector.Event
}

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	start := func(t *testing.T, cfg partnersim.Config) (*partnersim.Server, connector.Connector) {
		sim := partnersim.New(cfg)
		srv := httptest.NewServer(sim)
		t.Cleanup(srv.Close)
		return sim, h.New(t, srv.URL, 500*time.Millisecond)
	}
	req := func(tenant string) connector.Request {
		ev := h.Event(tenant)
		return connector.Request{Integration: "conformance", Event: ev, Mappings: NewMemMappings(), IdempotencyKey: "conformance:" + ev.ID, Attempt: 1}
	}
	expect := func(t *testing.T, err error, want connector.Outcome) {
		t.Helper()
		if got, _ := connector.Classify(err); got != want {
			t.Fatalf("outcome %v (%v), want %v", got, err, want)
		}
	}

	t.Run("SuccessRecordsCalls", func(t *testing.T) {
		sim, c := start(t, partnersim.Config{})
		res, err := c.Deliver(context.Background(), req("acme"))
		expect(t, err, connector.Succeeded)
		if len(res.Calls) == 0 || res.Calls[0].Status < 200 || res.Calls[0].Status > 299 {
			t.Fatalf("calls not recorded: %+v", res.Calls)
		}
		if got := sim.Requests("acme"); len(got) == 0 {
			t.Fatal("partner saw no request carrying the tenant (X-Tenant-ID)")
		}
	})
	t.Run("RedeliveryHasNoSecondEffect", func(t *testing.T) {
		sim, c := start(t, partnersim.Config{})
		r := req("acme")
		_, err := c.Deliver(context.Background(), r)
		expect(t, err, connector.Succeeded)
		after1 := sim.ObjectCount()
		r.Attempt = 2
		_, err = c.Deliver(context.Background(), r)
		expect(t, err, connector.Succeeded)
		if after2 := sim.ObjectCount(); after2 != after1 {
			t.Fatalf("redelivery changed the partner's objects: %d → %d", after1, after2)
		}
	})
	t.Run("ServerErrorIsFailure", func(t *testing.T) {
		sim, c := start(t, partnersim.Config{})
		sim.AddRule(partnersim.Rule{Status: 503, Reason: "maintenance"})
		_, err := c.Deliver(context.Background(), req("acme"))
		expect(t, err, connector.Failed)
	})
	t.Run("TooManyRequestsCarriesRetryAfter", func(t *testing.T) {
		sim, c := start(t, partnersim.Config{})
		sim.AddRule(partnersim.Rule{Status: 429, RetryAfterSeconds: 7})
		_, err := c.Deliver(context.Background(), req("acme"))
		if got, after := connector.Classify(err); got != connector.Failed || after != 7*time.Second {
			t.Fatalf("429: %v, Retry-After %v; want failed, 7s", got, after)
		}
	})
	t.Run("ClientErrorIsRejection", func(t *testing.T) {
		sim, c := start(t, partnersim.Config{})
		sim.AddRule(partnersim.Rule{Status: 422, Reason: "price must be positive"})
		_, err := c.Deliver(context.Background(), req("acme"))
		expect(t, err, connector.Rejected)
		rej, _ := err.(*connector.Rejection) // Classify said it is one
		if rej == nil || rej.Status != 422 || len(rej.Calls) == 0 {
			t.Fatalf("rejection lacks status or calls: %#v", err)
		}
	})
	t.Run("TimeoutIsFailure", func(t *testing.T) {
		_, c := start(t, partnersim.Config{Latency: 3 * time.Second})
		startAt := time.Now()
		_, err := c.Deliver(context.Background(), req("acme"))
		expect(t, err, connector.Failed)
		if time.Since(startAt) > 2500*time.Millisecond {
			t.Fatalf("Deliver took %s with a 500ms timeout", time.Since(startAt))
		}
	})
	t.Run("UnreachablePartnerIsFailure", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close() // nothing listens there now
		c := h.New(t, "http://"+addr, 500*time.Millisecond)
		_, err = c.Deliver(context.Background(), req("acme"))
		expect(t, err, connector.Failed)
	})
}
