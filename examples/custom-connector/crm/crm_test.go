package crm_test

import (
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/connector/connectortest"

	"example.com/crm-sink/crm"
	"example.com/crm-sink/fakecrm"
)

// The crm connector keeps the connector contract against the fake CRM:
// classification, idempotency keys, no double effect after a lost
// response, mappings, update, delete, probe.
func TestConformance(t *testing.T) {
	event := func(id, typ, tenant, payload string) connector.Event {
		return connector.Event{ID: id, TenantID: tenant, EventType: typ, AggregateType: "customer", AggregateID: "cu-1", Payload: []byte(payload)}
	}
	connectortest.Run(t, connectortest.Harness{
		New: func(_ testing.TB, baseURL string, timeout time.Duration) connector.Connector {
			return crm.NewConnector(baseURL, "test-key", timeout)
		},
		Event: func(tenant string) connector.Event {
			return event("e-1", "customer.created", tenant, `{"email": "ada@example.com", "name": "Ada"}`)
		},
		Update: func(tenant string) connector.Event {
			return event("e-2", "customer.updated", tenant, `{"email": "ada@example.com", "name": "Ada L."}`)
		},
		Delete: func(tenant string) connector.Event {
			return event("e-3", "customer.deleted", tenant, `{}`)
		},
		Partner: func(testing.TB) connectortest.Partner {
			f := fakecrm.New("test-key")
			return connectortest.Partner{Handler: f, Effects: f.Applied,
				Reject: connectortest.Answer{Status: 422, Body: `{"error": "invalid email"}`}}
		},
	})
}
