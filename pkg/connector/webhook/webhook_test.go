package webhook

import (
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/connector/connectortest"
)

func TestConformance(t *testing.T) {
	connectortest.Run(t, connectortest.Harness{
		New: func(t testing.TB, baseURL string, timeout time.Duration) connector.Connector {
			c, err := New(Config{URL: baseURL + "/v1/events", Timeout: timeout})
			if err != nil {
				t.Fatal(err)
			}
			return c
		},
		Event: func(tenant string) connector.Event {
			return connector.Event{ID: "e-1", TenantID: tenant, EventType: "product.created", AggregateType: "product", AggregateID: "p1", Payload: []byte(`{"sku":"p1"}`)}
		},
	})
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{"": 0, "3": 3 * time.Second, "soon": 0, "Mon, 23 Nov 2026 12:00:10 GMT": 10 * time.Second} {
		if got := RetryAfter(v, now); got != want {
			t.Errorf("RetryAfter(%q) = %v, want %v", v, got, want)
		}
	}
}
