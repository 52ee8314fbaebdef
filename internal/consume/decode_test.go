package consume

import (
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/route"
)

func TestDecodeUnwrapsStructuredCloudEvents(t *testing.T) {
	ce := kgo.RecordHeader{Key: route.HeaderContentType, Value: []byte(route.ContentTypeCloudEvents)}
	hdr := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	for _, tc := range []struct {
		name    string
		rec     kgo.Record
		payload string
		id      string
		tenant  string
		typ     string
		attr    string // an attribute the event must carry ("" = none)
		bad     string // part of the reason, "" = good
	}{
		{name: "cdc's envelope: headers and data",
			rec: kgo.Record{Key: []byte("acme"), Headers: []kgo.RecordHeader{hdr("event_id", "e1"), hdr("tenant_id", "acme"), hdr("event_type", "product.created"), ce},
				Value: []byte(`{"specversion":"1.0","id":"e1","source":"/ferry","type":"product.created","subject":"p1","tenantid":"acme","data":{"name":"lamp"}}`)},
			payload: `{"name":"lamp"}`, id: "e1", tenant: "acme", typ: "product.created", attr: "source"},
		{name: "another producer's envelope: ids from attributes",
			rec:     kgo.Record{Headers: []kgo.RecordHeader{ce}, Value: []byte(`{"specversion":"1.0","id":"x9","source":"/crm","type":"order.placed","tenantid":"globex","data":[1,2]}`)},
			payload: `[1,2]`, id: "x9", tenant: "globex", typ: "order.placed", attr: "specversion"},
		{name: "no data",
			rec:     kgo.Record{Key: []byte("acme"), Headers: []kgo.RecordHeader{hdr("event_id", "e2"), ce}, Value: []byte(`{"specversion":"1.0","id":"e2","type":"ping"}`)},
			payload: `null`, id: "e2", tenant: "acme", typ: "ping"},
		{name: "raw record is left alone",
			rec:     kgo.Record{Key: []byte("acme"), Headers: []kgo.RecordHeader{hdr("event_id", "e3")}, Value: []byte(`{"specversion":"1.0","data":{}}`)},
			payload: `{"specversion":"1.0","data":{}}`, id: "e3", tenant: "acme"},
		{name: "binary data", rec: kgo.Record{Key: []byte("acme"), Headers: []kgo.RecordHeader{hdr("event_id", "e4"), ce}, Value: []byte(`{"specversion":"1.0","data_base64":"AA=="}`)},
			bad: "data_base64"},
		{name: "not an envelope", rec: kgo.Record{Key: []byte("acme"), Headers: []kgo.RecordHeader{hdr("event_id", "e5"), ce}, Value: []byte(`{"data":{}}`)},
			bad: "no specversion"},
		{name: "not JSON", rec: kgo.Record{Key: []byte("acme"), Headers: []kgo.RecordHeader{hdr("event_id", "e6"), ce}, Value: []byte(`nope`)},
			bad: "not a JSON object"},
		{name: "no tenant anywhere", rec: kgo.Record{Headers: []kgo.RecordHeader{ce}, Value: []byte(`{"specversion":"1.0","id":"e7","data":{}}`)},
			bad: "no tenant"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, _, bad := decode(&tc.rec)
			if tc.bad != "" {
				if !strings.Contains(bad, tc.bad) {
					t.Fatalf("bad = %q; want it to say %q", bad, tc.bad)
				}
				return
			}
			if bad != "" {
				t.Fatalf("bad input: %s", bad)
			}
			if string(ev.Payload) != tc.payload || ev.ID != tc.id || ev.TenantID != tc.tenant || ev.EventType != tc.typ {
				t.Fatalf("event %+v; want payload %s id %s tenant %s type %s", ev, tc.payload, tc.id, tc.tenant, tc.typ)
			}
			if _, ok := ev.CloudEvent["data"]; ok {
				t.Fatal("attributes carry the data")
			}
			if tc.attr != "" && ev.CloudEvent[tc.attr] == nil {
				t.Fatalf("attribute %s missing from %v", tc.attr, ev.CloudEvent)
			}
		})
	}
}
