package sinkapp

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/schemas"
)

// outcomeSchema compiles schemas/outcome.v1.schema.json with an
// independent JSON Schema implementation (formats asserted).
func outcomeSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schemas.OutcomeV1))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	const url = "https://ferry-cdc.github.io/schemas/outcome.v1.schema.json"
	if err := c.AddResource(url, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(url)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// outcome is one outcome record as read from Kafka, checked against the
// schema and its headers.
type outcome struct {
	delivery.OutcomeRecord
	key string
}

// readOutcomes consumes topic until n outcome records arrived, checks
// each against the JSON Schema and its headers and key, and returns
// them in order of arrival.
func (e *env) readOutcomes(topic string, n int) []outcome {
	e.t.Helper()
	sch := outcomeSchema(e.t)
	var out []outcome
	for _, r := range e.kafka.Consume(e.t, time.Minute, kafkatest.AtLeast(n), topic) {
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(r.Value))
		if err != nil {
			e.t.Fatalf("outcome %s is not JSON: %v", r.Value, err)
		}
		if err := sch.Validate(inst); err != nil {
			e.t.Fatalf("outcome %s does not match schemas/outcome.v1.schema.json: %v", r.Value, err)
		}
		var o outcome
		if err := json.Unmarshal(r.Value, &o.OutcomeRecord); err != nil {
			e.t.Fatal(err)
		}
		o.key = string(r.Key)
		if o.key != o.TenantID || kafkatest.Header(r, "tenant_id") != o.TenantID || kafkatest.Header(r, "event_id") != o.EventID ||
			kafkatest.Header(r, "state") != string(o.State) {
			e.t.Fatalf("outcome %s: key %q, headers %v", r.Value, r.Key, r.Headers)
		}
		out = append(out, o)
	}
	return out
}

func byEvent(os []outcome) map[string][]outcome {
	m := map[string][]outcome{}
	for _, o := range os {
		m[o.EventID] = append(m[o.EventID], o)
	}
	return m
}

// Every final state a delivery reaches here (succeeded, skipped for no
// handler, rejected, compensated, then skipped by an operator) produces
// one outcome record on the integration's topic, keyed by tenant, in
// the tenant's order, valid against the published JSON Schema, with the
// partner's ids for a success.
func TestGuarantee6_EachFinalStateProducesAnOutcome(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Tenant: "globex", Entity: "prices", Status: 422, Reason: "amount must be positive"})
	e.sim.AddRule(partnersim.Rule{Tenant: "initech", Entity: "items", Status: 422, Reason: "account closed"})
	e.emit("acme", "acme-c1", "product.created", "product", "p1", product("lamp", 10))
	e.emit("acme", "acme-c2", "product.created", "product", "p2", product("desk", 20))
	e.emit("acme", "acme-x", "order.placed", "product", "p1", `{}`)
	e.emit("acme", "acme-u1", "product.updated", "product", "p1", product("lamp", 12))
	e.emit("globex", "globex-c1", "product.created", "product", "p1", product("chair", -1))
	e.emit("initech", "initech-c1", "product.created", "product", "p1", product("stool", 3))
	topic := e.kafka.TopicPrefix + "ferry.outcomes"
	e.start("--config", e.shopConfig("    on_reject: skip\n    event_types: [\"product.*\"]\n    outcomes: {topic: "+topic+"}\n"))

	got := e.readOutcomes(topic, 6)
	if len(got) != 6 {
		t.Fatalf("%d outcomes, want 6: %+v", len(got), got)
	}
	var acme []string
	for _, o := range got {
		if o.TenantID == "acme" {
			acme = append(acme, o.EventID+":"+string(o.State))
		}
	}
	if strings.Join(acme, ",") != "acme-c1:succeeded,acme-c2:succeeded,acme-x:skipped,acme-u1:succeeded" {
		t.Fatalf("acme's outcomes, in order: %v", acme)
	}
	m := byEvent(got)
	c1 := m["acme-c1"][0]
	item, _ := e.mappingOf("product", "acme", "p1")
	price, _ := e.mappingOf("product_price", "acme", "p1")
	if c1.Integration != "shop" || c1.AggregateType != "product" || c1.AggregateID != "p1" || c1.EventType != "product.created" ||
		c1.Partner.RemoteID == "" || c1.Partner.RemoteID != item || c1.Partner.IDs["product_price"] != price ||
		c1.Attempts != 1 || c1.FirstAttemptAt == nil || c1.LastAttemptAt == nil || c1.LastStatus == nil || *c1.LastStatus != 201 {
		t.Fatalf("success outcome %+v (mappings: item %q, price %q)", c1, item, price)
	}
	if u1 := m["acme-u1"][0]; u1.Partner.RemoteID != item || u1.Partner.IDs["product_price"] != price {
		t.Fatalf("update outcome %+v", u1)
	}
	if x := m["acme-x"][0]; !strings.Contains(x.Reason, "no handler for event type order.placed") || x.Attempts != 0 ||
		x.FirstAttemptAt != nil || x.LastStatus != nil {
		t.Fatalf("skipped outcome %+v", x)
	}
	if g := m["globex-c1"][0]; g.State != delivery.Compensated || !strings.Contains(g.Reason, "amount must be positive") {
		t.Fatalf("compensated outcome %+v", g)
	}
	rej := m["initech-c1"][0]
	if rej.State != delivery.Rejected || rej.LastStatus == nil || *rej.LastStatus != 422 || !strings.Contains(rej.Reason, "account closed") {
		t.Fatalf("rejected outcome %+v", rej)
	}

	// An operator's skip (a CLI run without the sink's config) is a final
	// state too.
	if code, _, errOut := e.runCmd("skip", "--integration", "shop", "--event", "initech-c1", "--reason", "customer cancelled"); code != 0 {
		t.Fatal(errOut)
	}
	// (Partitions interleave in any order; one tenant's records do not.)
	ini := byEvent(e.readOutcomes(topic, 7))["initech-c1"]
	if len(ini) != 2 || ini[0].State != delivery.Rejected || ini[1].State != delivery.Skipped || !strings.Contains(ini[1].Reason, "customer cancelled") {
		t.Fatalf("initech-c1's outcomes after the operator's skip: %+v", ini)
	}
}

// outcomes: {enabled: false} writes no outcome rows and produces none.
func TestOutcomesSwitchedOff(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.produce("acme", "e1", "product.created", `{"n": 1}`)
	e.start("--config", e.config("    outcomes: {enabled: false}\n"))
	waitFor(t, time.Minute, "delivered", func() bool { return e.state("e1") == "succeeded" })
	var rows int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.outcome`).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("outcome rows with outcomes off: %d (%v)", rows, err)
	}
	var topic string
	if err := e.conn.QueryRow(context.Background(), `SELECT topic FROM ferry.outcome_route WHERE integration = 'shop'`).Scan(&topic); err != nil || topic != "" {
		t.Fatalf("outcome route %q (%v), want \"\" (off)", topic, err)
	}
}

// A sink killed after a final state is written but before its outcome
// reached Kafka (the broker refuses the outcome topic's produce requests
// meanwhile) produces it after a restart: the outcome row was written
// with the final state.
func TestGuarantee6_OutcomeSurvivesACrashBeforeTheProduce(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	topic := e.kafka.TopicPrefix + "ferry.outcomes"
	e.produce("acme", "e1", "product.created", `{"n": 1}`)
	refuse := refuseProduce(e.kafka)
	cfg := e.config("    outcomes: {topic: " + topic + "}\n")
	p := e.startProcess("--config", cfg, "--instance-id", "crash-1")
	waitFor(t, time.Minute, "delivered", func() bool { return e.state("e1") == "succeeded" })
	waitFor(t, time.Minute, "a refused produce", func() bool { return refuse.refused() > 0 })
	p.kill()
	if strings.Contains(p.stderr.String(), "panic") {
		t.Fatalf("the sink crashed on its own:\n%s", p.stderr.String())
	}
	var pending int
	if err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.outcome WHERE event_id = 'e1'`).Scan(&pending); err != nil || pending != 1 {
		t.Fatalf("pending outcome rows after the crash: %d (%v)", pending, err)
	}
	refuse.stop()
	p2 := e.startProcess("--config", cfg, "--instance-id", "crash-2")
	defer p2.kill()
	got := e.readOutcomes(topic, 1)
	if got[0].EventID != "e1" || got[0].State != delivery.Succeeded {
		t.Fatalf("outcome after the restart: %+v", got[0])
	}
	waitFor(t, time.Minute, "the relayed row deleted", func() bool {
		err := e.conn.QueryRow(context.Background(), `SELECT count(*) FROM ferry.outcome`).Scan(&pending)
		return err == nil && pending == 0
	})
}

// produceRefusal makes the broker answer every produce request with a
// retriable error until stop (the test's own events are produced before).
type produceRefusal struct {
	n       atomic.Int64
	stopped atomic.Bool
}

func (r *produceRefusal) refused() int64 { return r.n.Load() }
func (r *produceRefusal) stop()          { r.stopped.Store(true) }

func refuseProduce(b *kafkatest.Broker) *produceRefusal {
	r := &produceRefusal{}
	c := b.Cluster
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if r.stopped.Load() {
			c.DropControl()
			return nil, nil, false
		}
		c.KeepControl()
		r.n.Add(1)
		pr := req.(*kmsg.ProduceRequest)
		resp := pr.ResponseKind().(*kmsg.ProduceResponse)
		for _, t := range pr.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition = p.Partition
				rp.ErrorCode = kerr.NotEnoughReplicas.Code
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, nil, true
	})
	return r
}

// A rejected undo ends in compensation_failed: final (not retried), with
// an outcome; and an operator can skip it.
func TestRejectedUndoEndsInCompensationFailed(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	e.sim.AddRule(partnersim.Rule{Entity: "prices", Status: 422, Reason: "amount must be positive"})
	e.sim.AddRule(partnersim.Rule{Entity: "items", Method: "DELETE", Status: 409, Reason: "item is locked"})
	e.emit("globex", "globex-c1", "product.created", "product", "p1", product("chair", -1))
	topic := e.kafka.TopicPrefix + "ferry.outcomes"
	e.start("--config", e.shopConfig("    outcomes: {topic: "+topic+"}\n"))
	got := e.readOutcomes(topic, 1)
	if got[0].State != delivery.CompensationFailed || !strings.Contains(got[0].Reason, "undo rejected") || !strings.Contains(got[0].Reason, "item is locked") {
		t.Fatalf("outcome %+v", got[0])
	}
	if n, _ := e.calls("globex", "DELETE", "/v1/items"); n != 1 {
		t.Fatalf("%d undo calls, want 1 (compensation_failed is final)", n)
	}
	if code, _, errOut := e.runCmd("skip", "--integration", "shop", "--event", "globex-c1", "--reason", "deleted by hand"); code != 0 {
		t.Fatal(errOut)
	}
	if s := e.state("globex-c1"); s != "skipped" {
		t.Fatalf("after skip: %s", s)
	}
}
