// Package connectortest checks a connector against the contract of
// package connector, for any partner: give Run your connector and a
// description of its partner (its real handler in httptest, a recorded
// exchange with Replay, or a small in-memory fake of your own), and it
// checks that
//
//   - a success is classified as one, records its calls, and leaves every
//     mapping it wrote active with the partner's id;
//   - a redelivery (the same idempotency key, a later attempt) sends the
//     same idempotency keys and has no second effect;
//   - after a lost response (the partner applied the call, the answer
//     never arrived) the retry has no second effect;
//   - 5xx, timeouts and an unreachable partner are failures, a 429
//     carries its Retry-After, and the partner's refusal is a
//     *connector.Rejection with its status and calls;
//   - update and delete (when given) succeed, and a redelivered delete
//     changes nothing;
//   - Undo (a connector.Undoer) undoes a create once, and Probe (a
//     connector.Prober) tells a healthy partner from one in an outage;
//   - the intent a connector.Intender names for an event is the first
//     mapping write its Deliver makes, and it names one for the create.
//
// The suite plays the sink's part: one in-memory mapping store per
// check (MemMappings), steps recorded through Request.Checkpoint and
// handed to the next attempt, a stable idempotency key per event. Each
// check gets a fresh partner. Without Harness.Partner the suite runs
// against Ferry's partner simulator (its API is package
// internal/partnersim's: the built-in connectors speak it).
package connectortest

import (
	"context"
	"errors"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

// Harness adapts a connector and its partner to the suite.
type Harness struct {
	// New returns the connector under test, talking to the partner at
	// baseURL (e.g. "http://127.0.0.1:41234") with per-call timeout.
	New func(t testing.TB, baseURL string, timeout time.Duration) connector.Connector
	// Event returns an event the connector handles by creating an object
	// at the partner, for tenant.
	Event func(tenant string) connector.Event
	// Update and Delete, when set, return a later event of the same
	// object (same aggregate) that updates it, and one that deletes it.
	Update, Delete func(tenant string) connector.Event
	// Partner returns a fresh partner for one check. Default: Ferry's
	// partner simulator.
	Partner func(t testing.TB) Partner
}

// Timeout is the per-call timeout the suite gives Harness.New.
const Timeout = 500 * time.Millisecond

// Run runs the suite, each check a subtest.
func Run(t *testing.T, h Harness) {
	if h.Partner == nil {
		h.Partner = simPartner
	}
	start := func(t *testing.T) (*check, *front) {
		p := h.Partner(t)
		if p.Handler == nil || p.Effects == nil {
			t.Fatal("Harness.Partner: Handler and Effects are required")
		}
		if p.Reject.Status == 0 {
			p.Reject = Answer{Status: 422, Body: `{"error": "rejected by the conformance suite"}`}
		}
		if p.IdempotencyHeader == "" {
			p.IdempotencyHeader = "Idempotency-Key"
		}
		f := &front{inner: p.Handler, header: p.IdempotencyHeader}
		srv := httptest.NewServer(f)
		t.Cleanup(srv.Close)
		return &check{t: t, c: h.New(t, srv.URL, Timeout), p: p, maps: NewMemMappings(), steps: map[string][]connector.Step{}}, f
	}

	t.Run("SuccessRecordsCallsAndMappings", func(t *testing.T) {
		c, _ := start(t)
		res := c.must(h.Event("acme"), 1, connector.Succeeded)
		if len(res.Calls) == 0 || res.Calls[len(res.Calls)-1].Status < 200 || res.Calls[len(res.Calls)-1].Status > 299 {
			t.Fatalf("the calls made are not recorded (Result.Calls, the last one the 2xx): %+v", res.Calls)
		}
		if c.p.Effects() == 0 {
			t.Fatal("the partner applied nothing (Effects is 0 after a successful create)")
		}
		c.mappingsSettled(res)
	})
	t.Run("RedeliveryHasNoSecondEffect", func(t *testing.T) {
		c, f := start(t)
		ev := h.Event("acme")
		c.must(ev, 1, connector.Succeeded)
		once, keys := c.p.Effects(), f.seenKeys()
		c.must(ev, 2, connector.Succeeded)
		if got := c.p.Effects(); got != once {
			t.Fatalf("the redelivery changed the partner: %d effects, then %d", once, got)
		}
		for _, k := range f.seenKeys()[len(keys):] {
			if !slices.Contains(keys, k) {
				t.Fatalf("the redelivery sent idempotency key %q, the first delivery sent %q", k, keys)
			}
		}
		for _, k := range keys {
			if f.header != "-" && k == "" {
				t.Fatalf("a call other than GET had no %s header (keys sent: %q)", f.header, keys)
			}
		}
	})
	t.Run("LostResponseHasNoSecondEffect", func(t *testing.T) {
		ref, _ := start(t) // the effects of one clean create
		ref.must(h.Event("acme"), 1, connector.Succeeded)
		want := ref.p.Effects()

		c, f := start(t)
		ev := h.Event("acme")
		f.set(loseFault, 1, Answer{}, 0)
		res, err := c.deliver(ev, 1)
		// net/http may resend a request with an Idempotency-Key by itself
		// when its connection dies: then the first attempt succeeds.
		for attempt := 2; err != nil && attempt <= 5; attempt++ {
			if got, _ := connector.Classify(err); got != connector.Failed {
				t.Fatalf("attempt %d after a lost response: %v (%v), want failed (the partner may have applied it)", attempt-1, got, err)
			}
			res, err = c.deliver(ev, attempt)
		}
		c.expect(res, err, connector.Succeeded)
		if got := c.p.Effects(); got != want {
			t.Fatalf("after a lost response and a retry the partner has %d effects, a single delivery makes %d", got, want)
		}
		c.mappingsSettled(res)
	})
	t.Run("ServerErrorIsFailure", func(t *testing.T) {
		c, f := start(t)
		f.set(answerFault, 0, Answer{Status: 503, Body: `{"error": "maintenance"}`}, 0)
		c.must(h.Event("acme"), 1, connector.Failed)
	})
	t.Run("TooManyRequestsCarriesRetryAfter", func(t *testing.T) {
		c, f := start(t)
		f.set(answerFault, 0, Answer{Status: 429, Header: map[string]string{"Retry-After": "7"}, Body: `{"error": "slow down"}`}, 0)
		_, err := c.deliver(h.Event("acme"), 1)
		if got, after := connector.Classify(err); got != connector.Failed || after != 7*time.Second {
			t.Fatalf("429 with Retry-After 7: %v, Retry-After %v (%v); want failed, 7s", got, after, err)
		}
	})
	t.Run("RefusalIsRejection", func(t *testing.T) {
		c, f := start(t)
		f.set(answerFault, 0, c.p.Reject, 0)
		_, err := c.deliver(h.Event("acme"), 1)
		c.expect(connector.Result{}, err, connector.Rejected)
		var rej *connector.Rejection
		if !errors.As(err, &rej) || rej.Status != c.p.Reject.Status || len(rej.Calls) == 0 {
			t.Fatalf("the rejection lacks the partner's status (%d) or the calls made: %#v", c.p.Reject.Status, err)
		}
		if got := c.p.Effects(); got != 0 {
			t.Fatalf("a refused event changed the partner (%d effects)", got)
		}
	})
	t.Run("TimeoutIsFailure", func(t *testing.T) {
		c, f := start(t)
		f.set(slowFault, 0, Answer{}, 6*Timeout)
		began := time.Now()
		c.must(h.Event("acme"), 1, connector.Failed)
		if d := time.Since(began); d > 5*Timeout {
			t.Fatalf("Deliver took %s with a %s timeout", d, Timeout)
		}
	})
	t.Run("UnreachablePartnerIsFailure", func(t *testing.T) {
		url, err := unreachable()
		if err != nil {
			t.Fatal(err)
		}
		c := &check{t: t, c: h.New(t, url, Timeout), maps: NewMemMappings(), steps: map[string][]connector.Step{}}
		c.must(h.Event("acme"), 1, connector.Failed)
	})
	if h.Update != nil {
		t.Run("UpdateAfterCreate", func(t *testing.T) {
			c, _ := start(t)
			c.must(h.Event("acme"), 1, connector.Succeeded)
			before := c.p.Effects()
			ev := h.Update("acme")
			c.must(ev, 1, connector.Succeeded)
			after := c.p.Effects()
			if after == before {
				t.Fatal("the update changed nothing at the partner")
			}
			c.must(ev, 2, connector.Succeeded)
			if got := c.p.Effects(); got != after {
				t.Fatalf("the redelivered update changed the partner again: %d effects, then %d", after, got)
			}
		})
	}
	if h.Delete != nil {
		t.Run("DeleteAfterCreate", func(t *testing.T) {
			c, _ := start(t)
			c.must(h.Event("acme"), 1, connector.Succeeded)
			before := c.p.Effects()
			ev := h.Delete("acme")
			c.must(ev, 1, connector.Succeeded)
			after := c.p.Effects()
			if after == before {
				t.Fatal("the delete changed nothing at the partner")
			}
			for _, m := range c.maps.All() {
				if m.Active() {
					t.Fatalf("mapping %s/%s still active after the delete", m.EntityType, m.LocalID)
				}
			}
			c.must(ev, 2, connector.Succeeded)
			if got := c.p.Effects(); got != after {
				t.Fatalf("the redelivered delete changed the partner again: %d effects, then %d", after, got)
			}
		})
	}
	// The checks of the optional interfaces run for connectors that
	// implement them.
	kind := h.New(t, "http://127.0.0.1:9", Timeout)
	_, undoer := kind.(connector.Undoer)
	_, intender := kind.(connector.Intender)
	_, prober := kind.(connector.Prober)
	if undoer {
		t.Run("UndoUndoesOnce", func(t *testing.T) {
			c, _ := start(t)
			u := c.c.(connector.Undoer)
			ev := h.Event("acme")
			c.must(ev, 1, connector.Succeeded)
			before := c.p.Effects()
			r := c.request(ev, 2)
			calls, err := u.Undo(context.Background(), r, r.Steps)
			if errors.Is(err, connector.ErrNothingToUndo) {
				t.Skip("the create has no undo")
			}
			if err != nil {
				t.Fatalf("Undo: %v", err)
			}
			after := c.p.Effects()
			if after == before || len(calls) == 0 {
				t.Fatalf("Undo changed nothing at the partner (%d effects, then %d) or recorded no call (%d)", before, after, len(calls))
			}
			if _, err := u.Undo(context.Background(), r, r.Steps); err != nil && !errors.Is(err, connector.ErrNothingToUndo) {
				if got, _ := connector.Classify(err); got != connector.Failed {
					t.Fatalf("Undo again (a retry of the compensation): %v", err)
				}
			}
			if got := c.p.Effects(); got != after {
				t.Fatalf("Undo again changed the partner again: %d effects, then %d", after, got)
			}
		})
	}
	if intender {
		t.Run("IntentIsTheFirstWrite", func(t *testing.T) {
			c, _ := start(t)
			in := c.c.(connector.Intender)
			rec := &writeRecorder{MemMappings: c.maps}
			evs := []connector.Event{h.Event("acme")}
			for _, e := range []func(string) connector.Event{h.Update, h.Delete} {
				if e != nil {
					evs = append(evs, e("acme"))
				}
			}
			named := 0
			for _, ev := range evs {
				r := c.request(ev, 1)
				r.Mappings = rec
				want, ok := in.Intent(r)
				r.IntentState, want.State = want.State, nil // as the sink hands it back
				rec.writes = nil
				if _, err := c.c.Deliver(context.Background(), r); err != nil {
					t.Fatalf("%s: %v", ev.EventType, err)
				}
				if !ok {
					continue
				}
				named++
				if len(rec.writes) == 0 || rec.writes[0] != (write{"Intend", want}) {
					t.Fatalf("%s: Intent named %+v, but Deliver's mapping writes were %+v; the intent must be the first", ev.EventType, want, rec.writes)
				}
			}
			if named == 0 {
				t.Fatal("Intent named no intent, not even for the create (with a store whose cache holds nothing)")
			}
		})
	}
	if prober {
		t.Run("ProbeTellsOutage", func(t *testing.T) {
			c, f := start(t)
			p := c.c.(connector.Prober)
			if err := p.Probe(context.Background()); err != nil {
				t.Fatalf("Probe of a healthy partner: %v", err)
			}
			f.set(outageFault, 0, Answer{}, 0)
			if err := p.Probe(context.Background()); err == nil {
				t.Fatal("Probe of a partner answering 503 to everything reported it healthy")
			}
		})
	}
}

// check is one connector against one partner, with the sink's state
// for it: mappings and the steps each event completed.
type check struct {
	t     *testing.T
	c     connector.Connector
	p     Partner
	maps  *MemMappings
	steps map[string][]connector.Step // by event id
}

func (c *check) request(ev connector.Event, attempt int) connector.Request {
	return connector.Request{Integration: "conformance", Event: ev, Mappings: c.maps, IdempotencyKey: "conformance:" + ev.ID,
		Attempt: attempt, Steps: slices.Clone(c.steps[ev.ID]), Checkpoint: func(_ context.Context, s connector.Step) error {
			c.steps[ev.ID] = append(c.steps[ev.ID], s)
			return nil
		}}
}

func (c *check) deliver(ev connector.Event, attempt int) (connector.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*Timeout)
	defer cancel()
	return c.c.Deliver(ctx, c.request(ev, attempt))
}

func (c *check) expect(res connector.Result, err error, want connector.Outcome) connector.Result {
	c.t.Helper()
	if got, _ := connector.Classify(err); got != want {
		c.t.Fatalf("outcome %v (%v), want %v", got, err, want)
	}
	return res
}

// mappingsSettled: a success leaves no intent behind, and the partner id
// it reports is one it mapped.
func (c *check) mappingsSettled(res connector.Result) {
	c.t.Helper()
	ids := []string{}
	for _, m := range c.maps.All() {
		if !m.Active() {
			c.t.Fatalf("after a success, mapping %s/%s is %q with partner id %q; want active with the partner's id", m.EntityType, m.LocalID, m.State, m.RemoteID)
		}
		ids = append(ids, m.RemoteID)
	}
	if res.RemoteID != "" && len(ids) > 0 && !slices.Contains(ids, res.RemoteID) {
		c.t.Fatalf("Result.RemoteID %q is none of the mapped partner ids %q", res.RemoteID, ids)
	}
}

// simPartner is Ferry's partner simulator: Effects counts the requests
// it applied (2xx, not replayed, not GET).
func simPartner(testing.TB) Partner {
	sim := partnersim.New(partnersim.Config{})
	return Partner{Handler: sim, Effects: func() int {
		n := 0
		for _, r := range sim.Requests("") {
			if r.Status < 300 && !r.Replayed && r.Method != "GET" {
				n++
			}
		}
		return n
	}}
}

// must delivers ev and fails the test unless the outcome is want.
func (c *check) must(ev connector.Event, attempt int, want connector.Outcome) connector.Result {
	c.t.Helper()
	res, err := c.deliver(ev, attempt)
	return c.expect(res, err, want)
}

// write is one mapping write a delivery made: Intend's arguments, or
// the object another write was of.
type write struct {
	Call   string
	Intent connector.Intent
}

// writeRecorder records the mapping writes, in order, over a store
// whose cache (the sink's, which a connector may ask first) holds
// nothing, as after a restart.
type writeRecorder struct {
	*MemMappings
	writes []write
}

func (r *writeRecorder) Cached(string, string) (connector.Mapping, bool) {
	return connector.Mapping{}, false
}

func (r *writeRecorder) Intend(ctx context.Context, entityType, localID, key string) (connector.Mapping, error) {
	r.writes = append(r.writes, write{"Intend", connector.Intent{EntityType: entityType, LocalID: localID, IdempotencyKey: key}})
	return r.MemMappings.Intend(ctx, entityType, localID, key)
}

func (r *writeRecorder) Activate(ctx context.Context, entityType, localID, remoteID string) error {
	r.writes = append(r.writes, write{"Activate", connector.Intent{EntityType: entityType, LocalID: localID}})
	return r.MemMappings.Activate(ctx, entityType, localID, remoteID)
}

func (r *writeRecorder) MarkDeleting(ctx context.Context, entityType, localID string) error {
	r.writes = append(r.writes, write{"MarkDeleting", connector.Intent{EntityType: entityType, LocalID: localID}})
	return r.MemMappings.MarkDeleting(ctx, entityType, localID)
}

func (r *writeRecorder) MarkDeleted(ctx context.Context, entityType, localID string) (bool, error) {
	r.writes = append(r.writes, write{"MarkDeleted", connector.Intent{EntityType: entityType, LocalID: localID}})
	return r.MemMappings.MarkDeleted(ctx, entityType, localID)
}
