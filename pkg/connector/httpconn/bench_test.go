package httpconn

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/ferry-cdc/ferry/bench/benchutil"
	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/connector/connectortest"
	"github.com/ferry-cdc/ferry/pkg/connector/webhook"
)

const benchPayload = `{"sku":"sku-1","name":"Product","description":"lorem ipsum lorem ipsum","price":100,"currency":"EUR"}`

// benchPartner answers every call at once: a create with a new id.
func benchPartner(b *testing.B) string {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, `{"id":"items_`+strconv.FormatInt(n.Add(1), 10)+`","entity":"items","external_id":"x"}`)
			return
		}
		_, _ = io.WriteString(w, `{"id":"items_1","version":2}`)
	}))
	b.Cleanup(srv.Close)
	return srv.URL
}

func benchEvent(i int, typ string) connector.Event {
	return connector.Event{ID: "e-" + strconv.Itoa(i), TenantID: "tenant-" + strconv.Itoa(i%1000), EventType: typ,
		AggregateType: "product", AggregateID: "p-" + strconv.Itoa(i), Payload: []byte(benchPayload)}
}

// BenchmarkDeliver compares one event's cost in the webhook connector
// with the HTTP connector's create and update of an object (the sink's
// mapped run, sinkbench -only mapped, without the sink around them).
func BenchmarkDeliver(b *testing.B) {
	ctx := context.Background()
	b.Run("webhook", func(b *testing.B) {
		c, err := webhook.New(webhook.Config{URL: benchPartner(b) + "/hook"})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			req := connector.Request{Integration: "bench", Event: benchEvent(i, "product.updated"), IdempotencyKey: "bench:e", Attempt: 1}
			if _, err := c.Deliver(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	var cfg Config
	if err := yaml.Unmarshal([]byte(benchutil.MappedOperations+"\n"+benchutil.MappedEntities), &cfg); err != nil {
		b.Fatal(err)
	}
	// A create as the sink makes it: its cache holds nothing for a new
	// object; with its intent named first (connector.Intender), whose
	// work Deliver takes over, or without.
	for _, typ := range []string{"product.created", "product.created, intent named first", "product.updated"} {
		b.Run(typ, func(b *testing.B) {
			c := newConn(b, cfg, benchPartner(b))
			var m connector.Mappings = &coldCache{MemMappings: connectortest.NewMemMappings()}
			named := typ == "product.created, intent named first"
			if named {
				typ = "product.created"
			}
			if typ == "product.updated" {
				m = connectortest.NewMemMappings()
				if err := m.Activate(ctx, "product", "p-0", "items_1"); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				ev := benchEvent(i, typ)
				if typ == "product.updated" {
					ev.AggregateID = "p-0"
				}
				req := connector.Request{Integration: "bench", Event: ev, Mappings: m, IdempotencyKey: "bench:" + ev.ID, Attempt: 1}
				if named {
					in, ok := c.Intent(req)
					if !ok {
						b.Fatal("no intent named for a create")
					}
					req.IntentState = in.State
				}
				if _, err := c.Deliver(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
