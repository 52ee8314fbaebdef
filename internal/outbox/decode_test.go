package outbox

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

func outboxRelation() *pglogrepl.RelationMessage {
	cols := []struct {
		name string
		oid  uint32
	}{{"seq", 20}, {"id", 2950}, {"tenant_id", 25}, {"aggregate_type", 25}, {"aggregate_id", 25}, {"event_type", 25}, {"payload", oidJSONB}, {"headers", oidJSONB}, {"created_at", 1184}}
	m := &pglogrepl.RelationMessage{RelationID: 7, Namespace: "public", RelationName: "outbox"}
	for _, c := range cols {
		m.Columns = append(m.Columns, &pglogrepl.RelationMessageColumn{Name: c.name, DataType: c.oid})
	}
	return m
}

func insert(vals ...string) *pglogrepl.InsertMessage {
	t := &pglogrepl.TupleData{}
	for _, v := range vals {
		if v == "<null>" {
			t.Columns = append(t.Columns, &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeNull})
			continue
		}
		t.Columns = append(t.Columns, &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeText, Data: []byte(v)})
	}
	return &pglogrepl.InsertMessage{RelationID: 7, Tuple: t}
}

func TestDecodeTransaction(t *testing.T) {
	d := NewDecoder("outbox", DefaultColumns(), "ferry.outbox")
	commit := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	steps := []pglogrepl.Message{
		outboxRelation(),
		&pglogrepl.BeginMessage{Xid: 42, FinalLSN: 0x100, CommitTime: commit},
		insert("1", "e1", "acme", "product", "p1", "product.created", `{"a": 1}`, "<null>", "2026-11-23 12:00:00+00"),
		insert("2", "e2", "<null>", "product", "p1", "product.updated", `{"a": 2}`, "<null>", "2026-11-23 12:00:00+00"),
		&pglogrepl.LogicalDecodingMessage{Transactional: true, Prefix: "ferry.outbox", Content: []byte(`{"id":"m1","tenant_id":"acme","aggregate_type":"order","aggregate_id":"o1","event_type":"order.placed","payload":{"t":1}}`)},
		&pglogrepl.LogicalDecodingMessage{Transactional: true, Prefix: "other.app", Content: []byte(`ignored`)},
		&pglogrepl.LogicalDecodingMessage{Transactional: true, Prefix: "ferry.outbox", Content: []byte(`not json`)},
	}
	var begun *Tx
	var events []*Event
	for _, m := range steps {
		st, err := d.Decode(m)
		if err != nil || st.Commit != nil || st.Message != nil {
			t.Fatalf("Decode(%T) = %+v, %v before commit", m, st, err)
		}
		if st.Begin != nil {
			begun = st.Begin
		}
		if st.Event != nil {
			// Streamed: each event comes out as it is decoded, not at
			// the Commit.
			events = append(events, st.Event)
		}
	}
	if !d.InTx() {
		t.Fatal("InTx false inside a transaction")
	}
	if begun == nil || begun.Xid != 42 || begun.CommitLSN != 0x100 || begun.CommitLSNText != "0/100" {
		t.Fatalf("Begin = %+v; want xid 42 and the commit LSN from Begin's final LSN", begun)
	}
	st, err := d.Decode(&pglogrepl.CommitMessage{CommitLSN: 0x100, TransactionEndLSN: 0x130, CommitTime: commit})
	if err != nil || st.Commit != begun {
		t.Fatalf("commit: %+v %v", st, err)
	}
	if tx := st.Commit; tx.EndLSN != 0x130 || tx.CommitLSN != 0x100 || tx.Xid != 42 || len(events) != 4 || !tx.CommitTime.Equal(commit) {
		t.Fatalf("tx = %+v, %d events", tx, len(events))
	}
	want := []struct{ id, tenant, invalid string }{{"e1", "acme", ""}, {"e2", "", "missing tenant_id"}, {"m1", "acme", ""}, {"", "", "not a JSON object"}}
	for i, w := range want {
		e := events[i]
		if e.ID != w.id || e.TenantID != w.tenant || !strings.Contains(e.Invalid, w.invalid) || (w.invalid == "") != (e.Invalid == "") {
			t.Errorf("event %d = %+v, want id %q tenant %q invalid ~%q", i, e, w.id, w.tenant, w.invalid)
		}
	}
	if string(events[2].Payload) != `{"t":1}` {
		t.Errorf("message payload %s", events[2].Payload)
	}
}

func TestDecodeIgnoresOtherTables(t *testing.T) {
	d := NewDecoder("public.outbox", DefaultColumns(), "ferry.outbox")
	rel := outboxRelation()
	rel.RelationName = "orders"
	for _, m := range []pglogrepl.Message{rel, &pglogrepl.BeginMessage{Xid: 1}, insert("x")} {
		if st, err := d.Decode(m); err != nil || st.Event != nil {
			t.Fatal(st, err)
		}
	}
	st, err := d.Decode(&pglogrepl.CommitMessage{TransactionEndLSN: 5})
	if err != nil || st.Commit == nil || st.Commit.EndLSN != 5 {
		t.Fatalf("step %+v err %v: want an empty transaction (still confirmed in order)", st, err)
	}
}

func TestDecodeProtocolErrors(t *testing.T) {
	for name, msgs := range map[string][]pglogrepl.Message{
		"insert before relation": {&pglogrepl.BeginMessage{}, &pglogrepl.InsertMessage{RelationID: 9, Tuple: &pglogrepl.TupleData{}}},
		"commit without begin":   {&pglogrepl.CommitMessage{}},
		"nested begin":           {&pglogrepl.BeginMessage{}, &pglogrepl.BeginMessage{}},
		"commit of another LSN":  {&pglogrepl.BeginMessage{FinalLSN: 0x100}, &pglogrepl.CommitMessage{CommitLSN: 0x200}},
	} {
		d := NewDecoder("outbox", DefaultColumns(), "ferry.outbox")
		var err error
		for _, m := range msgs {
			if _, err = d.Decode(m); err != nil {
				break
			}
		}
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestNonTransactionalMessageIsCopied(t *testing.T) {
	d := NewDecoder("outbox", DefaultColumns(), "ferry.outbox")
	buf := []byte("slot:1")
	st, err := d.Decode(&pglogrepl.LogicalDecodingMessage{Prefix: HeartbeatPrefix, Content: buf})
	lm := st.Message
	if err != nil || lm == nil {
		t.Fatal(lm, err)
	}
	buf[0] = 'X' // the receive buffer is reused
	if string(lm.Content) != "slot:1" {
		t.Fatalf("content aliases the receive buffer: %q", lm.Content)
	}
}

// FuzzDecode feeds arbitrary bytes through pgoutput parsing and the
// decoder: it may return errors, never panic.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("B\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x2a"))
	f.Add([]byte("M\x01\x00\x00\x00\x00\x00\x00\x00\x01ferry.outbox\x00\x00\x00\x00\x02{}"))
	f.Add([]byte("I\x00\x00\x00\x07N\x00\x01t\x00\x00\x00\x01x"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d := NewDecoder("outbox", DefaultColumns(), "ferry.outbox")
		if _, err := d.Decode(outboxRelation()); err != nil {
			t.Fatal(err)
		}
		m, err := Parse(data)
		if err != nil {
			return
		}
		_, _ = d.Decode(m) // errors are fine; panics are not
	})
}

func FuzzMessageEvent(f *testing.F) {
	f.Add([]byte(`{"id":"1","tenant_id":"a","aggregate_type":"t","aggregate_id":"x","event_type":"e","payload":{}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e := messageEvent(data)
		if e.Invalid == "" && (e.ID == "" || e.TenantID == "" || e.Payload == nil) {
			t.Fatalf("accepted an event missing required fields: %+v", e)
		}
	})
}

// TestResyncMessageTakesTheFastPath: a message as resync's
// json_build_object prints it is read without encoding/json.
func TestResyncMessageTakesTheFastPath(t *testing.T) {
	msg := `{"id" : "42:resync:7", "tenant_id" : "big", "aggregate_type" : "product", "aggregate_id" : "sku-1", ` +
		`"event_type" : "product.updated", "payload" : {"sku": "sku-1", "name": "Product \"one\"", "price": 1}, "headers" : {"ferry_resync" : "crm"}}`
	e := messageEventFast([]byte(msg))
	if e == nil {
		t.Fatal("fast path declined a resync message")
	}
	want := &Event{ID: "42:resync:7", TenantID: "big", AggregateType: "product", AggregateID: "sku-1", EventType: "product.updated",
		Payload: []byte(`{"sku": "sku-1", "name": "Product \"one\"", "price": 1}`), Headers: []byte(`{"ferry_resync" : "crm"}`)}
	if !reflect.DeepEqual(e, want) {
		t.Fatalf("got %+v\nwant %+v", e, want)
	}
}

// FuzzMessageEventFastPath: the one-pass parse of a message gives
// what encoding/json gives, or leaves the message to it.
func FuzzMessageEventFastPath(f *testing.F) {
	for _, s := range []string{
		`{"id":"1","tenant_id":"a","aggregate_type":"t","aggregate_id":"x","event_type":"e","payload":{"a":[1,{"b":"}"}]},"headers":{"ferry_resync":"i"}}`,
		` { "id" : "1" , "tenant_id":"a", "payload" : "s\\"q" , "extra": [1,2,{"x":null}], "headers": null } `,
		`{"ID":"1","tenant_id":"a"}`,
		`{"id":"1","id":"2"}`,
		`{"id":5,"tenant_id":"a","payload":true}`,
		`{"id":"\u0041","tenant_id":"a","payload":1.5e3}`,
		`{}`, `[]`, `null`, `{"payload":}`, "{\"id\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast := messageEventFast(data)
		if fast == nil {
			return
		}
		if slow := messageEventJSON(data); !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q:\nfast %+v\njson %+v", data, fast, slow)
		}
	})
}

// FuzzDecodeWAL: the fast path for outbox Inserts decodes exactly what
// pglogrepl's Parse and Decode do, or leaves the message to them.
func FuzzDecodeWAL(f *testing.F) {
	wire := func(cols ...string) []byte {
		b := []byte{'I', 0, 0, 0, 7, 'N', 0, byte(len(cols))}
		for _, c := range cols {
			switch c {
			case "<null>":
				b = append(b, 'n')
			case "<toast>":
				b = append(b, 'u')
			default:
				b = append(b, 't', 0, 0, byte(len(c)>>8), byte(len(c)))
				b = append(b, c...)
			}
		}
		return b
	}
	f.Add(wire("1", "e1", "acme", "product", "p1", "product.created", `{"a": 1}`, `{"traceparent": "x"}`, "2026-11-23 12:00:00+00"))
	f.Add(wire("1", "e1", "<null>", "product", "p1", "product.created", `{"a": 1}`, "<null>", "2026-11-23 12:00:00+00"))
	f.Add(wire("1", "", "acme", "product", "", "product.created", ``, "<toast>"))
	f.Add(wire("1", "e1", "acme"))
	f.Add(append(wire("1", "e1"), 'x'))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || data[0] != 'I' {
			return
		}
		fast, slow := NewDecoder("outbox", DefaultColumns(), "ferry.outbox"), NewDecoder("outbox", DefaultColumns(), "ferry.outbox")
		for _, d := range []*Decoder{fast, slow} {
			for _, m := range []pglogrepl.Message{outboxRelation(), &pglogrepl.BeginMessage{Xid: 1}} {
				if _, err := d.Decode(m); err != nil {
					t.Fatal(err)
				}
			}
		}
		// Where the fast path declines, DecodeWAL is Parse+Decode by
		// construction (and Parse of a random length field may allocate
		// gigabytes): compare where it decodes.
		got, ok := fast.insert(data)
		if !ok {
			return
		}
		m, err := Parse(data)
		if err != nil {
			t.Fatalf("% x: fast path decoded what Parse refuses: %v", data, err)
		}
		want, err := slow.Decode(m)
		if err != nil || want.Event == nil || !reflect.DeepEqual(*got.Event, *want.Event) {
			t.Fatalf("% x: fast path %+v, Parse+Decode %+v (%v)", data, got.Event, want.Event, err)
		}
	})
}

// lsnText writes an LSN as pglogrepl (and Postgres) do: upper-case hex
// halves without leading zeros.
func FuzzLSNText(f *testing.F) {
	for _, v := range []uint64{0, 1, 0xA, 0x16B3748, 0xFFFFFFFF, 0x1_00000000, 0xABCDEF01_23456789, ^uint64(0)} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v uint64) {
		if got, want := lsnText(pglogrepl.LSN(v)), pglogrepl.LSN(v).String(); got != want {
			t.Fatalf("lsnText(%#x) = %q, want %q", v, got, want)
		}
	})
}
