package route

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// FuzzScanTrace: on any valid JSON, the scan finds the same trace
// headers as decoding the object into a map does.
func FuzzScanTrace(f *testing.F) {
	for _, s := range []string{
		`{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "other": 1}`,
		`{"tracestate":"ferry=bench","traceparent":"00-a1-b2-01"}`,
		`{"traceparent": "a", "traceparent": 1}`,
		`{"traceparent": 1, "traceparent": "b"}`,
		`{"x": {"traceparent": "inner"}, "baggage": "k=v", "deliver_by": ""}`,
		`{"x": [1, "]", {"a": "}"}], "expires_at": "2026-12-02T00:00:00Z"}`,
		`{"traceparent": "esc\"aped"}`,
		`{"ferry_resync": "crm", "y": null, "z": true, "n": -1.5e3}`,
		`[]`, `null`, `"traceparent"`, `{}`, ` { "baggage" : "a" } `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return
		}
		tx, e := sample()
		e.Headers = data
		fast, slow := headers(tx, e, true), headers(tx, e, false)
		eq := func(a, b kgo.RecordHeader) bool { return a.Key == b.Key && string(a.Value) == string(b.Value) }
		if !slices.EqualFunc(fast, slow, eq) {
			t.Fatalf("headers %s: scan found %v, json.Unmarshal %v", data, fast, slow)
		}
	})
}
