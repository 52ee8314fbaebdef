package outbox

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pglogrepl"

	"github.com/ferry-cdc/ferry/internal/jsonscan"
	"github.com/ferry-cdc/ferry/internal/safe"
)

// Columns names the outbox table's columns. Defaults match schemas/.
type Columns struct {
	ID            string `yaml:"id"`
	TenantID      string `yaml:"tenant_id"`
	AggregateType string `yaml:"aggregate_type"`
	AggregateID   string `yaml:"aggregate_id"`
	EventType     string `yaml:"event_type"`
	Payload       string `yaml:"payload"`
	Headers       string `yaml:"headers"`
	CreatedAt     string `yaml:"created_at"`
	// Seq orders rows for backfill (an identity column).
	Seq string `yaml:"seq"`
}

// DefaultColumns are the column names of the table schemas/ creates.
func DefaultColumns() Columns {
	return Columns{ID: "id", TenantID: "tenant_id", AggregateType: "aggregate_type", AggregateID: "aggregate_id",
		EventType: "event_type", Payload: "payload", Headers: "headers", CreatedAt: "created_at", Seq: "seq"}
}

// Postgres type OIDs whose text is guaranteed to be valid JSON.
const (
	oidJSON  = 114
	oidJSONB = 3802
)

// relation is a decoded outbox relation: the tuple index of each column.
type relation struct {
	outbox                                                  bool
	id, tenant, aggType, aggID, evType, payload, hdrs, crAt int
	payloadIsJSON, headersIsJSON                            bool
}

// Decoder turns pgoutput messages into outbox transactions, one message
// at a time: a transaction's events come out as they are decoded, not
// held until its Commit (with protocol 1 every transaction decoded has
// committed already). It is not safe for concurrent use; the reader owns
// it.
type Decoder struct {
	table         string // "schema.name"
	cols          Columns
	messagePrefix string
	relations     map[uint32]*relation
	tx            *Tx
}

// NewDecoder returns a decoder for the outbox table (schema-qualified)
// and the prefix of table-less outbox messages.
func NewDecoder(table string, cols Columns, messagePrefix string) *Decoder {
	if !strings.Contains(table, ".") {
		table = "public." + table
	}
	return &Decoder{table: table, cols: cols, messagePrefix: messagePrefix, relations: map[uint32]*relation{}}
}

// InTx reports whether a transaction has begun and not yet committed.
func (d *Decoder) InTx() bool { return d.tx != nil }

// Step is what one pgoutput message meant for the outbox: at most one
// field is set; none for messages that carry no outbox event (Relation,
// another table's rows, another prefix's messages, Type, Origin).
type Step struct {
	// Begin is a transaction that began: Xid, CommitLSN, CommitLSNText
	// and CommitTime are set (pgoutput's Begin carries the commit's LSN
	// and time), EndLSN and Events are not.
	Begin *Tx
	// Event is an outbox event of the transaction begun, in the order
	// written.
	Event *Event
	// Commit is the transaction begun (the same *Tx as Begin), now with
	// its EndLSN (the only field the Commit sets: the header may be read
	// by other goroutines): every one of its events came before it.
	Commit *Tx
	// Message is a non-transactional logical message (heartbeats, resync
	// low watermarks) or a transactional one with WatermarkPrefix (resync
	// chunk and end marks), its content copied.
	Message *pglogrepl.LogicalDecodingMessage
}

// Decode consumes one pgoutput message.
func (d *Decoder) Decode(msg pglogrepl.Message) (Step, error) {
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		d.relations[m.RelationID] = d.relation(m)
	case *pglogrepl.BeginMessage:
		if d.tx != nil {
			return Step{}, fmt.Errorf("decode: Begin of xid %d inside xid %d", m.Xid, d.tx.Xid)
		}
		d.tx = &Tx{Xid: m.Xid, CommitLSN: m.FinalLSN, CommitTime: m.CommitTime}
		if m.FinalLSN != 0 {
			d.tx.CommitLSNText = lsnText(m.FinalLSN)
		}
		return Step{Begin: d.tx}, nil
	case *pglogrepl.InsertMessage:
		rel, ok := d.relations[m.RelationID]
		if !ok {
			return Step{}, fmt.Errorf("decode: Insert for relation %d before its Relation message", m.RelationID)
		}
		if !rel.outbox {
			return Step{}, nil
		}
		if d.tx == nil {
			return Step{}, fmt.Errorf("decode: Insert outside a transaction")
		}
		return Step{Event: rel.event(m.Tuple)}, nil
	case *pglogrepl.LogicalDecodingMessage:
		if m.Transactional && m.Prefix == WatermarkPrefix && d.tx == nil {
			return Step{}, fmt.Errorf("decode: transactional message outside a transaction")
		}
		if !m.Transactional || m.Prefix == WatermarkPrefix {
			// Content aliases the receive buffer: copy before keeping it.
			c := *m
			c.Content = append([]byte(nil), m.Content...)
			return Step{Message: &c}, nil
		}
		if m.Prefix != d.messagePrefix {
			return Step{}, nil
		}
		if d.tx == nil {
			return Step{}, fmt.Errorf("decode: transactional message outside a transaction")
		}
		return Step{Event: messageEvent(m.Content)}, nil
	case *pglogrepl.CommitMessage:
		if d.tx == nil {
			return Step{}, fmt.Errorf("decode: Commit without Begin")
		}
		tx := d.tx
		d.tx = nil
		if m.CommitLSN != tx.CommitLSN {
			return Step{}, fmt.Errorf("decode: Commit at %s of xid %d that began with commit LSN %s", m.CommitLSN, tx.Xid, tx.CommitLSN)
		}
		// Only EndLSN is written: the rest of the header (the commit time
		// is Begin's too) is read by producer callbacks meanwhile.
		tx.EndLSN = m.TransactionEndLSN
		return Step{Commit: tx}, nil
	}
	// Type, Origin, Update, Delete, Truncate: not outbox events (the
	// publication is insert-only; others may share the slot's database).
	return Step{}, nil
}

// DecodeWAL is Decode for one pgoutput message's bytes. An Insert into
// the outbox table, the message cdc sees most, is decoded straight from
// them into its Event with three allocations (pglogrepl allocates twice
// per column: half of cdc's per-event CPU went there). Anything else,
// and any Insert the fast path does not take (another table's, outside
// a transaction, malformed), goes through Parse and Decode, which report
// what is wrong. A parse error is returned as ParseError.
func (d *Decoder) DecodeWAL(data []byte) (Step, error) {
	if len(data) > 0 && data[0] == 'I' {
		if st, ok := d.insert(data); ok {
			return st, nil
		}
	}
	m, err := Parse(data)
	if err != nil {
		return Step{}, &ParseError{err}
	}
	return d.Decode(m)
}

// ParseError is a pgoutput message that could not be parsed.
type ParseError struct{ Err error }

func (e *ParseError) Error() string { return "parse pgoutput: " + e.Err.Error() }
func (e *ParseError) Unwrap() error { return e.Err }

// insert decodes a well-formed pgoutput Insert (protocol 1: 'I', relation
// OID, 'N', then the tuple: column count, and per column 'n' null, 'u'
// unchanged TOAST, or 't' with a length and text) of a known relation
// inside a transaction; ok is false for anything else.
func (d *Decoder) insert(data []byte) (st Step, ok bool) {
	if len(data) < 9 || data[5] != 'N' || d.tx == nil { // 9: pglogrepl refuses a tuple with no columns
		return Step{}, false
	}
	rel, known := d.relations[binary.BigEndian.Uint32(data[1:5])]
	if !known || !rel.outbox {
		return Step{}, false
	}
	n := int(binary.BigEndian.Uint16(data[6:8]))
	// The columns' text, by tuple index; nil for null, unchanged or absent.
	var cols [maxIndexed]struct{ start, end int }
	idx := [...]int{rel.id, rel.tenant, rel.aggType, rel.aggID, rel.evType, rel.crAt, rel.payload, rel.hdrs}
	want := func(i int) int {
		for k, c := range idx {
			if c == i {
				return k
			}
		}
		return -1
	}
	pos := 8
	for i := range n {
		if pos >= len(data) {
			return Step{}, false
		}
		kind := data[pos]
		pos++
		switch kind {
		case 'n', 'u':
			continue
		case 't':
		default:
			return Step{}, false // 'b' (binary) is protocol 2 and up; pglogrepl says what is wrong
		}
		if pos+4 > len(data) {
			return Step{}, false
		}
		l := int(binary.BigEndian.Uint32(data[pos:]))
		pos += 4
		if l < 0 || l > len(data)-pos {
			return Step{}, false
		}
		if k := want(i); k >= 0 {
			cols[k] = struct{ start, end int }{pos, pos + l}
		}
		pos += l
	}
	if pos != len(data) {
		return Step{}, false // trailing bytes: let pglogrepl judge
	}
	// One string holds the text columns, one slice payload and headers.
	strLen := 0
	for k := range 6 {
		strLen += cols[k].end - cols[k].start
	}
	sb := make([]byte, 0, strLen)
	var bounds [6][2]int
	for k := range 6 {
		bounds[k][0] = len(sb)
		sb = append(sb, data[cols[k].start:cols[k].end]...)
		bounds[k][1] = len(sb)
	}
	str := string(sb)
	field := func(k int) string { return str[bounds[k][0]:bounds[k][1]] }
	var bs []byte
	if pl, hl := cols[6].end-cols[6].start, cols[7].end-cols[7].start; pl+hl > 0 {
		bs = make([]byte, 0, pl+hl)
	}
	bytesOf := func(k int) []byte {
		if cols[k].end == 0 {
			return nil // null, unchanged or not in the tuple
		}
		start := len(bs)
		bs = append(bs, data[cols[k].start:cols[k].end]...)
		return bs[start:len(bs):len(bs)]
	}
	e := &Event{ID: field(0), TenantID: field(1), AggregateType: field(2), AggregateID: field(3), EventType: field(4), CreatedAt: field(5)}
	e.Payload = bytesOf(6)
	e.Headers = bytesOf(7)
	if e.Payload == nil && cols[6].end != 0 {
		e.Payload = []byte{} // present and empty: not null
	}
	if e.Headers == nil && cols[7].end != 0 {
		e.Headers = []byte{}
	}
	e.Invalid = validate(e, !rel.payloadIsJSON, !rel.headersIsJSON)
	return Step{Event: e}, true
}

// maxIndexed is the number of outbox columns an event is built from.
const maxIndexed = 8

func (d *Decoder) relation(m *pglogrepl.RelationMessage) *relation {
	r := &relation{id: -1, tenant: -1, aggType: -1, aggID: -1, evType: -1, payload: -1, hdrs: -1, crAt: -1}
	if m.Namespace+"."+m.RelationName != d.table {
		return r
	}
	r.outbox = true
	for i, c := range m.Columns {
		switch c.Name {
		case d.cols.ID:
			r.id = i
		case d.cols.TenantID:
			r.tenant = i
		case d.cols.AggregateType:
			r.aggType = i
		case d.cols.AggregateID:
			r.aggID = i
		case d.cols.EventType:
			r.evType = i
		case d.cols.Payload:
			r.payload = i
			r.payloadIsJSON = c.DataType == oidJSON || c.DataType == oidJSONB
		case d.cols.Headers:
			r.hdrs = i
			r.headersIsJSON = c.DataType == oidJSON || c.DataType == oidJSONB
		case d.cols.CreatedAt:
			r.crAt = i
		}
	}
	return r
}

func (r *relation) event(t *pglogrepl.TupleData) *Event {
	col := func(i int) []byte {
		if i < 0 || i >= len(t.Columns) || t.Columns[i].DataType != pglogrepl.TupleDataTypeText {
			return nil
		}
		return t.Columns[i].Data // already a copy, safe to keep
	}
	e := &Event{
		ID:            string(col(r.id)),
		TenantID:      string(col(r.tenant)),
		AggregateType: string(col(r.aggType)),
		AggregateID:   string(col(r.aggID)),
		EventType:     string(col(r.evType)),
		Payload:       col(r.payload),
		Headers:       col(r.hdrs),
		CreatedAt:     string(col(r.crAt)),
	}
	e.Invalid = validate(e, !r.payloadIsJSON, !r.headersIsJSON)
	return e
}

// message is the JSON body of a table-less outbox message.
type message struct {
	ID            string          `json:"id"`
	TenantID      string          `json:"tenant_id"`
	AggregateType string          `json:"aggregate_type"`
	AggregateID   string          `json:"aggregate_id"`
	EventType     string          `json:"event_type"`
	Payload       json.RawMessage `json:"payload"`
	Headers       json.RawMessage `json:"headers"`
}

// messageEvent parses a table-less outbox message. Resync sends every
// object this way, so the common shape (an object of the known keys,
// string values without escapes) is read in one pass over bytes that
// json.Valid has checked; anything else takes encoding/json, which
// decides what the fast path would not (FuzzMessageEventFastPath holds
// the two to the same result).
func messageEvent(content []byte) *Event {
	if e := messageEventFast(content); e != nil {
		return e
	}
	return messageEventJSON(content)
}

// messageKeys are message's JSON keys, in field order.
var messageKeys = [...]string{"id", "tenant_id", "aggregate_type", "aggregate_id", "event_type", "payload", "headers"}

// messageEventFast returns nil when content is not valid JSON or not
// the common shape: a key that differs from a known one only in case,
// a key seen twice, an escape in a key or string value, or a string
// field that is not a string, or one that is not valid UTF-8 (which
// encoding/json replaces).
func messageEventFast(content []byte) *Event {
	if !json.Valid(content) {
		return nil
	}
	c := append([]byte(nil), content...) // content aliases the receive buffer
	var vals [len(messageKeys)][]byte
	isObject, done := jsonscan.Object(c, func(key, v []byte) bool {
		if jsonscan.HasEscape(key) {
			return false
		}
		k := slices.Index(messageKeys[:], string(key))
		if k < 0 {
			for _, name := range messageKeys {
				if strings.EqualFold(string(key), name) {
					return false // encoding/json matches keys without case
				}
			}
			for _, b := range key {
				if b >= utf8.RuneSelf {
					return false // nor leave folding of other scripts to it
				}
			}
			return true
		}
		if vals[k] != nil {
			return false
		}
		vals[k] = v
		return true
	})
	if !isObject || !done {
		return nil
	}
	e := &Event{}
	strs := [...]*string{&e.ID, &e.TenantID, &e.AggregateType, &e.AggregateID, &e.EventType}
	for j, dst := range strs {
		v := vals[j]
		switch {
		case v == nil || string(v) == "null":
		case v[0] == '"' && !jsonscan.HasEscape(v) && utf8.Valid(v):
			*dst = string(v[1 : len(v)-1])
		default:
			return nil
		}
	}
	if p := vals[5]; p != nil && string(p) != "null" {
		e.Payload = p
	}
	if h := vals[6]; h != nil && string(h) != "null" {
		e.Headers = h
	}
	e.Invalid = validate(e, false, false)
	return e
}

func messageEventJSON(content []byte) *Event {
	var m message
	if err := json.Unmarshal(content, &m); err != nil {
		// Keep the raw content so the dead-letter record carries it.
		return &Event{Payload: append([]byte(nil), content...),
			Invalid: fmt.Sprintf("outbox message is not a JSON object with id, tenant_id, aggregate_type, aggregate_id, event_type, payload: %v", err)}
	}
	e := &Event{ID: m.ID, TenantID: m.TenantID, AggregateType: m.AggregateType, AggregateID: m.AggregateID,
		EventType: m.EventType, Payload: m.Payload}
	if len(m.Headers) > 0 && string(m.Headers) != "null" {
		e.Headers = m.Headers
	}
	if string(e.Payload) == "null" {
		e.Payload = nil
	}
	e.Invalid = validate(e, false, false)
	return e
}

// validate returns why e cannot be published normally, or "".
func validate(e *Event, checkPayload, checkHeaders bool) string {
	var problems []string
	// Ids become HTTP headers at partners (X-Tenant-ID, Idempotency-Key):
	// one a client refuses would fail there forever.
	switch why := safe.ID(e.ID); {
	case e.ID == "":
		problems = append(problems, "missing event id")
	case why != "":
		problems = append(problems, "event id "+why)
	}
	switch why := safe.ID(e.TenantID); {
	case e.TenantID == "":
		problems = append(problems, "missing tenant_id")
	case why != "":
		problems = append(problems, "tenant_id "+why)
	}
	if e.AggregateType == "" {
		problems = append(problems, "missing aggregate_type")
	}
	if e.EventType == "" {
		problems = append(problems, "missing event_type")
	}
	switch {
	case e.Payload == nil:
		problems = append(problems, "payload is null")
	case checkPayload && !json.Valid(e.Payload):
		problems = append(problems, "payload is not valid JSON")
	}
	if e.Headers != nil && checkHeaders && !json.Valid(e.Headers) {
		problems = append(problems, "headers are not valid JSON")
	}
	return strings.Join(problems, "; ")
}

// Parse parses one pgoutput message. Unlike pglogrepl.Parse, which
// panics on some malformed input (found by FuzzDecode), it returns an
// error for anything it cannot parse.
func Parse(data []byte) (m pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("empty pgoutput message")
	}
	defer func() {
		if r := recover(); r != nil {
			m, err = nil, fmt.Errorf("malformed pgoutput message %q: %v", data[0], r)
		}
	}()
	return pglogrepl.Parse(data)
}

// lsnText is lsn.String() ("%X/%X") without fmt: it runs once per
// transaction, and fmt.Sprintf took 5% of cdc's CPU on single-row
// transactions.
func lsnText(lsn pglogrepl.LSN) string {
	var b [17]byte // two 8-digit halves and the slash
	out := appendUpperHex(b[:0], uint64(lsn)>>32)
	out = append(out, '/')
	out = appendUpperHex(out, uint64(lsn)&0xFFFFFFFF)
	return string(out)
}

func appendUpperHex(b []byte, v uint64) []byte {
	start := len(b)
	b = strconv.AppendUint(b, v, 16)
	for i := start; i < len(b); i++ {
		if b[i] >= 'a' {
			b[i] -= 'a' - 'A'
		}
	}
	return b
}
