package consume

import (
	"bytes"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// A detached record keeps its contents but no longer shares memory with
// the fetch response it was sliced from.
func TestDetachCopiesOutOfTheFetchBuffer(t *testing.T) {
	resp := []byte("keyvalue-of-the-recordhv1")
	r := &kgo.Record{Key: resp[0:3], Value: resp[3:22], Headers: []kgo.RecordHeader{{Key: "h", Value: resp[22:25]}, {Key: "empty"}}}
	size := recordSize(r)
	detach(r)
	for i := range resp {
		resp[i] = 'X' // the response buffer is reused or freed
	}
	if string(r.Key) != "key" || string(r.Value) != "value-of-the-record" || string(r.Headers[0].Value) != "hv1" || r.Headers[1].Value != nil {
		t.Fatalf("detached record changed with its fetch buffer: %q %q %+v", r.Key, r.Value, r.Headers)
	}
	if recordSize(r) != size {
		t.Fatalf("size %d, was %d", recordSize(r), size)
	}
	r.Value = append(r.Value, '!') // capacity is capped: no write into the header's bytes
	if !bytes.Equal(r.Headers[0].Value, []byte("hv1")) {
		t.Fatalf("append overwrote a header: %q", r.Headers[0].Value)
	}
}
