package publish

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/ferry-cdc/ferry/internal/outbox"
	"github.com/ferry-cdc/ferry/internal/route"
)

// insertMessage is a pgoutput Insert of one outbox row as cdcbench writes
// it (headers column filled with trace context), as the walsender sends
// it: relation 7, text columns in the order of outboxRelation.
func insertMessage() []byte {
	cols := []string{"42", "0b5e3c1e-8a41-4c3e-9d55-3a3f1f0e2a11", "tenant-7", "product", "sku-42", "product.updated",
		`{"sku": "sku-42", "name": "Product number 42", "tags": ["a", "b", "c"], "price": 42, "currency": "EUR", "description": "lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum lorem ipsum "}`,
		`{"tracestate": "ferry=bench", "traceparent": "00-a1d0c6e83f027327d8461063f4ac58a6-6512bd43d9caa6e0-01"}`,
		"2026-12-02 01:00:00.123456+00"}
	b := []byte{'I', 0, 0, 0, 7, 'N', 0, byte(len(cols))}
	for _, c := range cols {
		b = append(b, 't')
		b = binary.BigEndian.AppendUint32(b, uint32(len(c)))
		b = append(b, c...)
	}
	return b
}

// BenchmarkEventPath is cdc's per-event work between the replication
// connection and franz-go: parsing the pgoutput Insert, decoding the
// outbox row (with the headers column filled) and building its Kafka
// record (topic, key, headers with trace context). go test -bench
// EventPath -cpuprofile shows where it goes.
func BenchmarkEventPath(b *testing.B) {
	d := outbox.NewDecoder("outbox", outbox.DefaultColumns(), "ferry.outbox")
	if _, err := d.Decode(relationMessage()); err != nil {
		b.Fatal(err)
	}
	st, err := d.Decode(beginMessage())
	if err != nil {
		b.Fatal(err)
	}
	tx := st.Begin
	r, err := route.New(route.Config{})
	if err != nil {
		b.Fatal(err)
	}
	msg := insertMessage()
	b.ReportAllocs()
	for b.Loop() {
		st, err := d.DecodeWAL(msg)
		if err != nil || st.Event == nil || st.Event.Invalid != "" {
			b.Fatal(st.Event, err)
		}
		if _, err := r.Record(tx, st.Event); err != nil {
			b.Fatal(err)
		}
	}
}

func relationMessage() *pglogrepl.RelationMessage {
	cols := []struct {
		name string
		oid  uint32
	}{{"seq", 20}, {"id", 2950}, {"tenant_id", 25}, {"aggregate_type", 25}, {"aggregate_id", 25}, {"event_type", 25}, {"payload", 3802}, {"headers", 3802}, {"created_at", 1184}}
	m := &pglogrepl.RelationMessage{RelationID: 7, Namespace: "public", RelationName: "outbox"}
	for _, c := range cols {
		m.Columns = append(m.Columns, &pglogrepl.RelationMessageColumn{Name: c.name, DataType: c.oid})
	}
	return m
}

func beginMessage() *pglogrepl.BeginMessage {
	return &pglogrepl.BeginMessage{Xid: 42, FinalLSN: 0x16B3748, CommitTime: time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)}
}
