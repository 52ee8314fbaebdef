package route

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/jsonscan"
	"github.com/ferry-cdc/ferry/internal/outbox"
)

// Key strategies.
const (
	KeyTenant          = "tenant"
	KeyTenantAggregate = "tenant_aggregate"
)

// Envelopes.
const (
	EnvelopeRaw         = "raw"
	EnvelopeCloudEvents = "cloudevents"
)

// Header names on every record Ferry produces.
const (
	HeaderEventID       = "event_id"
	HeaderTenantID      = "tenant_id"
	HeaderEventType     = "event_type"
	HeaderAggregateType = "aggregate_type"
	HeaderAggregateID   = "aggregate_id"
	HeaderCommitLSN     = "commit_lsn"
	// HeaderError is set on dead-letter records: why the event was routed
	// aside.
	HeaderError = "ferry_error"
	// HeaderResync marks an event republished to resync a tenant for one
	// integration (its value); other integrations ignore it.
	HeaderResync = "ferry_resync"
	// HeaderContentType is the CloudEvents Kafka protocol binding's
	// content-type header: ContentTypeCloudEvents on a structured-mode
	// envelope, which the sink unwraps.
	HeaderContentType = "content-type"
)

// ContentTypeCloudEvents marks a record whose value is a structured-mode
// CloudEvents JSON envelope (CloudEvents Kafka protocol binding, 3.2).
const ContentTypeCloudEvents = "application/cloudevents+json; charset=UTF-8"

// traceHeaders are the outbox headers keys copied to Kafka headers: W3C
// trace context and baggage, and the resync mark.
var traceHeaders = [...]string{"traceparent", "tracestate", "baggage", HeaderResync, "deliver_by", "expires_at"}

// Config configures a Router.
type Config struct {
	// TopicTemplate is a text/template over the event's TenantID,
	// AggregateType, AggregateID and EventType. Default
	// "outbox.{{.AggregateType}}".
	TopicTemplate string `yaml:"topic_template"`
	// Key is "tenant" (default) or "tenant_aggregate" (tenant/aggregate
	// type/aggregate id: per-aggregate rather than per-tenant order).
	Key string `yaml:"key"`
	// Envelope is "raw" (default: the payload as written) or
	// "cloudevents" (a CloudEvents 1.0 structured JSON envelope).
	Envelope string `yaml:"envelope"`
	// Source is the CloudEvents source attribute. Default "/ferry".
	Source string `yaml:"source"`
}

// SetDefaults fills zero fields with their defaults.
func (c *Config) SetDefaults() {
	if c.TopicTemplate == "" {
		c.TopicTemplate = "outbox.{{.AggregateType}}"
	}
	if c.Key == "" {
		c.Key = KeyTenant
	}
	if c.Envelope == "" {
		c.Envelope = EnvelopeRaw
	}
	if c.Source == "" {
		c.Source = "/ferry"
	}
}

// Validate returns every problem with the config at once.
func (c *Config) Validate() error {
	var errs []error
	if _, err := template.New("topic").Option("missingkey=error").Parse(c.TopicTemplate); err != nil {
		errs = append(errs, fmt.Errorf("route.topic_template: %v: use Go template syntax, e.g. outbox.{{.AggregateType}}", err))
	}
	if c.Key != KeyTenant && c.Key != KeyTenantAggregate {
		errs = append(errs, fmt.Errorf("route.key: %q is not a key strategy: use %q or %q", c.Key, KeyTenant, KeyTenantAggregate))
	}
	if c.Envelope != EnvelopeRaw && c.Envelope != EnvelopeCloudEvents {
		errs = append(errs, fmt.Errorf("route.envelope: %q is not an envelope: use %q or %q", c.Envelope, EnvelopeRaw, EnvelopeCloudEvents))
	}
	return errors.Join(errs...)
}

// Router builds Kafka records from outbox events.
type Router struct {
	cfg Config
	tpl *template.Template
	// prefix/suffix is the fast path for templates of the form
	// "prefix{{.AggregateType}}suffix" (the default), which skips
	// template execution per record.
	fast           bool
	prefix, suffix string
	topics         sync.Map // aggregate type → checked topic, for the fast path
	cached         atomic.Int64
	bufs           sync.Pool
}

var aggOnly = regexp.MustCompile(`^([^{}]*)\{\{\s*\.AggregateType\s*\}\}([^{}]*)$`)

// New returns a Router for a validated config.
func New(cfg Config) (*Router, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tpl, err := template.New("topic").Option("missingkey=error").Parse(cfg.TopicTemplate)
	if err != nil {
		return nil, err // Validate parsed it already
	}
	r := &Router{cfg: cfg, tpl: tpl, bufs: sync.Pool{New: func() any { return new(bytes.Buffer) }}}
	if m := aggOnly.FindStringSubmatch(cfg.TopicTemplate); m != nil {
		r.fast, r.prefix, r.suffix = true, m[1], m[2]
	}
	return r, nil
}

// topicFields is what the topic template sees.
type topicFields struct {
	TenantID, AggregateType, AggregateID, EventType string
}

// Topic renders the topic for e and checks it is a legal Kafka topic name.
func (r *Router) Topic(e *outbox.Event) (string, error) {
	if r.fast {
		if t, ok := r.topics.Load(e.AggregateType); ok {
			return t.(string), nil
		}
		topic := r.prefix + e.AggregateType + r.suffix
		if err := ValidTopic(topic); err != nil {
			return "", err
		}
		// Aggregate types are few; a cap guards against an unbounded set.
		if r.cached.Add(1) <= 10000 {
			r.topics.Store(e.AggregateType, topic)
		}
		return topic, nil
	}
	buf := r.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	err := r.tpl.Execute(buf, topicFields{e.TenantID, e.AggregateType, e.AggregateID, e.EventType})
	topic := buf.String()
	r.bufs.Put(buf)
	if err != nil {
		return "", fmt.Errorf("topic template: %w", err)
	}
	if err := ValidTopic(topic); err != nil {
		return "", err
	}
	return topic, nil
}

// ValidTopic reports whether name is a legal Kafka topic name.
func ValidTopic(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > 249 {
		return fmt.Errorf("topic name %q is empty, '.', '..' or longer than 249 characters", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("topic name %q has %q: Kafka allows only letters, digits, '.', '_' and '-'", name, c)
		}
	}
	return nil
}

// Key returns the record key for e.
func (r *Router) Key(e *outbox.Event) []byte {
	if r.cfg.Key == KeyTenantAggregate {
		return []byte(e.TenantID + "/" + e.AggregateType + "/" + e.AggregateID)
	}
	return []byte(e.TenantID)
}

// Record builds the record for a valid event of tx. It returns an error
// (the reason to dead-letter it) when the topic cannot be rendered.
func (r *Router) Record(tx *outbox.Tx, e *outbox.Event) (*kgo.Record, error) {
	topic, err := r.Topic(e)
	if err != nil {
		return nil, err
	}
	// A valid event's headers column is valid JSON (Postgres' json or
	// jsonb, or checked by the decoder): the fast scan applies.
	value, headers := e.Payload, headers(tx, e, true)
	if r.cfg.Envelope == EnvelopeCloudEvents {
		if value, err = r.cloudEvent(tx, e, headers); err != nil {
			return nil, err
		}
		headers = append(headers, kgo.RecordHeader{Key: HeaderContentType, Value: []byte(ContentTypeCloudEvents)})
	}
	// The record's timestamp is the commit time: the sink's retry.max_age
	// counts from it.
	return &kgo.Record{Topic: topic, Key: r.Key(e), Value: value, Headers: headers, Timestamp: tx.CommitTime}, nil
}

// DeadLetter builds the dead-letter record for e: same key and headers
// plus the reason, and the payload when it is at most maxValue bytes (the
// outbox row keeps the whole of it).
func (r *Router) DeadLetter(topic string, tx *outbox.Tx, e *outbox.Event, reason string, maxValue int) *kgo.Record {
	key := r.Key(e)
	if e.TenantID == "" {
		key = []byte(e.ID)
	}
	rec := &kgo.Record{Topic: topic, Key: key, Headers: append(headers(tx, e, false), kgo.RecordHeader{Key: HeaderError, Value: []byte(reason)})}
	if len(e.Payload) <= maxValue {
		rec.Value = e.Payload
	}
	return rec
}

// Headers returns the Ferry headers for e. All values share one buffer:
// this runs once per event on the hot path.
func Headers(tx *outbox.Tx, e *outbox.Event) []kgo.RecordHeader { return headers(tx, e, false) }

// headers is Headers; validJSON says e.Headers is known to be valid JSON,
// which lets the trace context be found by a scan instead of decoding the
// whole object into a map (a third of cdc's per-event CPU before).
func headers(tx *outbox.Tx, e *outbox.Event, validJSON bool) []kgo.RecordHeader {
	lsn := tx.CommitLSNText
	if lsn == "" && tx.CommitLSN != 0 {
		lsn = tx.CommitLSN.String()
	}
	vals := [...]string{e.ID, e.TenantID, e.EventType, e.AggregateType, e.AggregateID, lsn}
	keys := [...]string{HeaderEventID, HeaderTenantID, HeaderEventType, HeaderAggregateType, HeaderAggregateID, HeaderCommitLSN}
	n := 0
	for _, v := range vals {
		n += len(v)
	}
	buf := make([]byte, 0, n)
	h := make([]kgo.RecordHeader, 0, 8)
	for i, v := range vals {
		if keys[i] == HeaderCommitLSN && v == "" {
			continue
		}
		start := len(buf)
		buf = append(buf, v...)
		h = append(h, kgo.RecordHeader{Key: keys[i], Value: buf[start:len(buf):len(buf)]})
	}
	if len(e.Headers) == 0 {
		return h
	}
	var found [len(traceHeaders)][]byte
	if validJSON && scanTrace(e.Headers, &found) {
		for i, v := range found {
			if len(v) > 0 {
				// Aliases e.Headers, which nothing writes to once decoded.
				h = append(h, kgo.RecordHeader{Key: traceHeaders[i], Value: v[:len(v):len(v)]})
			}
		}
		return h
	}
	var m map[string]any
	if json.Unmarshal(e.Headers, &m) == nil { // a headers value that is not an object carries no trace context
		for _, k := range traceHeaders {
			if s, ok := m[k].(string); ok && s != "" {
				h = append(h, kgo.RecordHeader{Key: k, Value: []byte(s)})
			}
		}
	}
	return h
}

// scanTrace finds, in b (valid JSON), the string values of the
// traceHeaders keys of a top-level object, as json.Unmarshal into a map
// would (the last of duplicate keys wins; a value that is not a string
// counts as absent). It reports false, leaving the work to
// json.Unmarshal, when b has a backslash anywhere (escapes would need
// decoding) or a value it wants is not valid UTF-8.
func scanTrace(b []byte, found *[len(traceHeaders)][]byte) bool {
	if jsonscan.HasEscape(b) {
		return false
	}
	isObject, done := jsonscan.Object(b, func(key, v []byte) bool {
		slot := slices.Index(traceHeaders[:], string(key))
		if slot < 0 {
			return true
		}
		found[slot] = nil
		if v[0] == '"' {
			found[slot] = v[1 : len(v)-1]
			return utf8.Valid(found[slot]) // json.Unmarshal replaces invalid bytes with U+FFFD
		}
		return true
	})
	return !isObject || done // null, an array, a scalar: no trace context
}

// cloudEvent is a CloudEvents 1.0 structured-mode JSON envelope; Ferry's
// own attributes are extensions (lowercase alphanumerics, per the spec).
type cloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject,omitempty"`
	Time            string          `json:"time,omitempty"`
	DataContentType string          `json:"datacontenttype"`
	TenantID        string          `json:"tenantid"`
	AggregateType   string          `json:"aggregatetype"`
	CommitLSN       string          `json:"commitlsn,omitempty"`
	TraceParent     string          `json:"traceparent,omitempty"`
	Data            json.RawMessage `json:"data"`
}

func (r *Router) cloudEvent(tx *outbox.Tx, e *outbox.Event, headers []kgo.RecordHeader) ([]byte, error) {
	ce := cloudEvent{SpecVersion: "1.0", ID: e.ID, Source: r.cfg.Source, Type: e.EventType, Subject: e.AggregateID,
		DataContentType: "application/json", TenantID: e.TenantID, AggregateType: e.AggregateType, Data: e.Payload}
	if tx.CommitLSN != 0 {
		ce.CommitLSN = tx.CommitLSN.String() // once per event, and only for envelopes
	}
	ce.Time = eventTime(e.CreatedAt, tx.CommitTime)
	for _, h := range headers {
		if h.Key == "traceparent" {
			ce.TraceParent = string(h.Value)
		}
	}
	b, err := json.Marshal(ce)
	if err != nil {
		return nil, fmt.Errorf("cloudevents envelope: %w", err)
	}
	return b, nil
}

// eventTime turns Postgres' timestamptz text ("2026-11-23 20:54:34.123+00")
// into RFC 3339, falling back to the commit time.
func eventTime(created string, commit time.Time) string {
	if created != "" {
		for _, layout := range []string{"2006-01-02 15:04:05.999999999-07", "2006-01-02 15:04:05.999999999-07:00", "2006-01-02 15:04:05.999999999-07:00:00"} {
			if t, err := time.Parse(layout, created); err == nil {
				return t.UTC().Format(time.RFC3339Nano)
			}
		}
		return strings.Replace(created, " ", "T", 1)
	}
	if !commit.IsZero() {
		return commit.UTC().Format(time.RFC3339Nano)
	}
	return ""
}

// HeaderValue returns the value of a record header, or "".
func HeaderValue(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
