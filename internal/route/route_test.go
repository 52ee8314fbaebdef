package route

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/outbox"
)

var update = flag.Bool("update", false, "rewrite golden files")

func sample() (*outbox.Tx, *outbox.Event) {
	tx := &outbox.Tx{CommitLSN: 0x16B3748, CommitLSNText: "0/16B3748", CommitTime: time.Date(2026, 11, 23, 12, 0, 1, 0, time.UTC)}
	e := &outbox.Event{ID: "0b5e3c1e-8a41-4c3e-9d55-3a3f1f0e2a11", TenantID: "acme", AggregateType: "product", AggregateID: "sku-1",
		EventType: "product.created", Payload: []byte(`{"name": "Anvil", "price": 100}`),
		Headers:   []byte(`{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "other": 1}`),
		CreatedAt: "2026-11-23 12:00:00.123456+00"}
	return tx, e
}

// golden compares got with testdata/name, rewriting it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs:\n got: %s\nwant: %s", name, got, want)
	}
}

func TestCloudEventsEnvelopeGolden(t *testing.T) {
	r, err := New(Config{Envelope: EnvelopeCloudEvents, Source: "/ferry/shop"})
	if err != nil {
		t.Fatal(err)
	}
	tx, e := sample()
	rec, err := r.Record(tx, e)
	if err != nil {
		t.Fatal(err)
	}
	var pretty map[string]any
	if err := json.Unmarshal(rec.Value, &pretty); err != nil {
		t.Fatalf("envelope is not JSON: %v", err)
	}
	out, _ := json.MarshalIndent(pretty, "", "  ") // a map of JSON values always marshals
	golden(t, "cloudevents.json", append(out, '\n'))
	// Structured mode is announced by the binding's content-type header,
	// which is what the sink unwraps on.
	if got := HeaderValue(rec, HeaderContentType); got != ContentTypeCloudEvents {
		t.Fatalf("content-type header %q; want %q", got, ContentTypeCloudEvents)
	}
}

func TestRawRecordKeyAndHeadersGolden(t *testing.T) {
	r, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	tx, e := sample()
	rec, err := r.Record(tx, e)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("topic=" + rec.Topic + "\nkey=" + string(rec.Key) + "\nvalue=" + string(rec.Value) + "\n")
	for _, h := range rec.Headers {
		b.WriteString("header " + h.Key + "=" + string(h.Value) + "\n")
	}
	golden(t, "raw_record.txt", []byte(b.String()))
}

func TestTopicTemplateAndKeys(t *testing.T) {
	_, e := sample()
	for _, c := range []struct {
		cfg       Config
		topic     string
		key       string
		wantError string
	}{
		{Config{}, "outbox.product", "acme", ""},
		{Config{TopicTemplate: "{{.TenantID}}.{{.EventType}}"}, "acme.product.created", "acme", ""},
		{Config{TopicTemplate: "events", Key: KeyTenantAggregate}, "events", "acme/product/sku-1", ""},
		{Config{TopicTemplate: "x.{{.AggregateId}}"}, "", "", "topic template"},
		{Config{TopicTemplate: "bad topic"}, "", "", "Kafka allows only"},
	} {
		r, err := New(c.cfg)
		if err != nil {
			t.Fatal(err)
		}
		topic, err := r.Topic(e)
		if c.wantError != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantError) {
				t.Errorf("%q: error %v, want %q", c.cfg.TopicTemplate, err, c.wantError)
			}
			continue
		}
		if err != nil || topic != c.topic || string(r.Key(e)) != c.key {
			t.Errorf("%+v: topic %q key %q err %v; want %q %q", c.cfg, topic, r.Key(e), err, c.topic, c.key)
		}
	}
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	c := Config{TopicTemplate: "{{", Key: "tenant_id", Envelope: "avro"}
	err := c.Validate()
	for _, want := range []string{"route.topic_template", "route.key", "route.envelope"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to name %s", err, want)
		}
	}
}

func FuzzTopicTemplate(f *testing.F) {
	f.Add("outbox.{{.AggregateType}}", "product")
	f.Add("{{.TenantID}}-{{.EventType}}", "a b")
	f.Fuzz(func(t *testing.T, tpl, value string) {
		r, err := New(Config{TopicTemplate: tpl})
		if err != nil {
			return
		}
		topic, err := r.Topic(&outbox.Event{TenantID: value, AggregateType: value, AggregateID: value, EventType: value})
		if err == nil && ValidTopic(topic) != nil {
			t.Fatalf("returned illegal topic %q", topic)
		}
	})
}
