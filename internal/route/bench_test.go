package route

import "testing"

// BenchmarkRecord measures building one Kafka record from a decoded event
// (the per-event work cdc adds on top of decoding and producing).
func BenchmarkRecord(b *testing.B) {
	r, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	tx, e := sample()
	e.Headers = nil
	for b.Loop() {
		if _, err := r.Record(tx, e); err != nil {
			b.Fatal(err)
		}
	}
}
