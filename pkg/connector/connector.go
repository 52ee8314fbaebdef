package connector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Event is one outbox event as the sink received it from Kafka.
type Event struct {
	ID            string          `json:"event_id"`
	TenantID      string          `json:"tenant_id"`
	EventType     string          `json:"event_type"`
	AggregateType string          `json:"aggregate_type"`
	AggregateID   string          `json:"aggregate_id"`
	Payload       json.RawMessage `json:"payload"`
	// Headers are the record's other headers (trace context and the like).
	Headers map[string]string `json:"headers,omitempty"`
	// CloudEvent holds the attributes of a structured-mode CloudEvents
	// envelope the record carried (specversion, id, source, type, subject,
	// time, extensions such as tenantid), without its data: Payload is the
	// envelope's data. Nil for a record that was not an envelope.
	CloudEvent map[string]any `json:"cloudevent,omitempty"`
}

// Mapping is what the sink knows of one of our objects at the partner.
type Mapping struct {
	EntityType string `json:"entity_type"`
	LocalID    string `json:"local_id"`
	RemoteID   string `json:"remote_id,omitempty"`
	// State is creating (an intent: the create call may or may not have
	// reached the partner), active, deleting or deleted.
	State string `json:"state"`
	// IdempotencyKey is the key the create was (or is to be) sent with.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// Active reports whether the mapping holds a live partner object.
func (m Mapping) Active() bool { return m.State == "active" && m.RemoteID != "" }

// ErrNoMapping is returned by Mappings.Get when nothing was ever mapped.
var ErrNoMapping = errors.New("no mapping")

// Mappings is the mapping store, scoped to one integration and tenant.
// The sink provides it (backed by pkg/mapping); connectors that create
// partner objects use it to find partner ids and to record new ones.
type Mappings interface {
	// Get returns the mapping of one of our objects, or ErrNoMapping. It
	// may be served from a cache that this process keeps current for the
	// objects its lanes own (the event's own aggregate).
	Get(ctx context.Context, entityType, localID string) (Mapping, error)
	// Fresh is Get from the database, bypassing any cache: for objects
	// other lanes or processes write (a parent of another aggregate type).
	Fresh(ctx context.Context, entityType, localID string) (Mapping, error)
	// Intend records the intent to create the object before the partner
	// call, and returns the mapping as it now stands: an earlier intent
	// keeps its idempotency key, so a retry sends the same one. The
	// intent is committed when Intend returns.
	Intend(ctx context.Context, entityType, localID, idempotencyKey string) (Mapping, error)
	// Activate records the partner id after a successful create. The
	// sink commits it with the delivery's outcome, in one transaction
	// (any later call of the same delivery sees it); a delivery that
	// does not finish leaves the intent, and its retry sends the
	// intent's key again.
	Activate(ctx context.Context, entityType, localID, remoteID string) error
	// MarkDeleting records that the partner object is being deleted
	// (before the delete call), so a crash or failure mid-delete is
	// visible; the partner id is kept for the retry.
	MarkDeleting(ctx context.Context, entityType, localID string) error
	// MarkDeleted records that the partner object is gone; false when
	// nothing was mapped.
	MarkDeleted(ctx context.Context, entityType, localID string) (bool, error)
}

// Step is one completed call of a multi-step operation, as recorded in
// the delivery log: a retry resumes after the last recorded step, and
// compensation undoes them in reverse.
type Step struct {
	Name string `json:"name"`
	// RemoteID is the partner id the step's response carried, if any.
	RemoteID string `json:"remote_id,omitempty"`
	// Created marks a step that created the entity's own mapping.
	Created bool `json:"created,omitempty"`
	// Response is the step's response body (bounded), for later steps'
	// templates.
	Response string `json:"response,omitempty"`
}

// Request is one delivery attempt.
type Request struct {
	Integration string
	Event       Event
	// Mappings is the mapping store for this event's tenant; nil when the
	// sink runs without one.
	Mappings Mappings
	// Resync is set for a tenant's resync (enabling it): the event is its
	// aggregate's latest, and creates and updates become upserts.
	Resync bool
	// Delete asks to delete the event's aggregate at the partner whatever
	// its event type says (rolling back a disabled tenant).
	Delete bool
	// Steps are the steps completed by earlier attempts of this event.
	Steps []Step
	// Checkpoint records a completed step in the delivery log before the
	// next one starts; nil means steps are not recorded.
	Checkpoint func(ctx context.Context, s Step) error
	// IdempotencyKey is stable across every attempt of this event for this
	// integration; send it as the Idempotency-Key header.
	IdempotencyKey string
	// Attempt counts from 1.
	Attempt int
	// IntentState is the State of the intent the connector (a
	// connector.Intender) named for this attempt; nil when it named none.
	IntentState any
}

// Result is a successful delivery.
type Result struct {
	// Calls are the partner calls made, for the delivery log.
	Calls []Call
	// Note says what was done when it is not obvious ("nothing mapped:
	// delete is a no-op").
	Note string
	// RemoteID is the partner's id of the event's entity, when the
	// connector knows it ("" otherwise); it goes in the outcome record.
	RemoteID string
	// RemoteIDs are other partner ids the delivery recorded, by mapping
	// name; nil when none.
	RemoteIDs map[string]string
}

// Call is one partner request and its response, bounded for storage.
type Call struct {
	Method       string        `json:"method"`
	URL          string        `json:"url"`
	RequestBody  string        `json:"request_body,omitempty"`
	Status       int           `json:"status"`
	ResponseBody string        `json:"response_body,omitempty"`
	Duration     time.Duration `json:"duration_ns"`
	Error        string        `json:"error,omitempty"`
}

// Connector delivers events to one partner.
type Connector interface {
	// Deliver makes the partner reflect req.Event. It returns the Result,
	// or an error: a *Rejection when the partner refused the event for
	// good, a *Failure (or any other error) when a later attempt may
	// succeed. It must return when ctx ends (the sink's timeout).
	Deliver(ctx context.Context, req Request) (Result, error)
}

// Undoer is implemented by connectors that can compensate: undo what an
// earlier successful Deliver did (e.g. delete the object it created),
// after a later step or event was rejected.
type Undoer interface {
	// Undo undoes steps (completed by req's earlier attempt, the last
	// one first). It returns the calls made, or an error: a failure is
	// retried later, a rejection leaves the steps for an operator.
	Undo(ctx context.Context, req Request, steps []Step) ([]Call, error)
}

// ErrNothingToUndo is returned by Undo when none of the steps can be
// undone: the delivery stays rejected with its steps, and an operator
// retry resumes after them.
var ErrNothingToUndo = errors.New("nothing to undo: no completed step has an undo request")

// Intender is implemented by connectors whose delivery of a create
// starts by writing the intent (Mappings.Intend) without reading the
// mappings first. Intent names that intent before the sink claims the
// attempt, and the sink writes it in the claim's transaction: one commit
// less per create. The written intent is the one Deliver's Intend call
// then gets back, as if it had written it (committed, and the mapping as
// it stands).
//
// req is the request Deliver would see for a first attempt: Steps,
// Checkpoint and Attempt are not set yet, and IdempotencyKey is the
// first attempt's. The sink writes the intent only if the claim turns
// out to be that of such an attempt (a delivery with no completed steps
// whose key no redrive changed); otherwise Deliver writes its own. The
// intent must be exactly what Deliver would write first: an intent for
// a delivery that then writes none, or a different one, is an object
// marked as being created that no call creates.
type Intender interface {
	// Intent returns the intent, or false when Deliver would write none
	// first (not a create, or an object the cache says is mapped).
	Intent(req Request) (Intent, bool)
}

// Intent is an intent to create one of our objects at the partner under
// an idempotency key (Mappings.Intend's arguments).
type Intent struct {
	EntityType, LocalID, IdempotencyKey string
	// State is the connector's own: work Intent did that Deliver can
	// reuse (a decoded payload). The sink hands it back to the Deliver
	// of the same attempt in Request.IntentState, and never looks at it.
	State any
}

// Prober is implemented by connectors that can check the partner's
// health cheaply; the sink's circuit breaker calls it while open.
type Prober interface {
	Probe(ctx context.Context) error
}

// Rejection is a final refusal: retrying the same event cannot succeed.
type Rejection struct {
	Status int    // partner status code, 0 if none
	Reason string // what the partner said, for operators
	Calls  []Call // the calls made, the refused one last
	// Steps are the steps completed before the refused one (in this
	// attempt or earlier ones): the sink undoes them when the connector
	// is an Undoer.
	Steps []Step
}

func (r *Rejection) Error() string {
	if r.Status != 0 {
		return fmt.Sprintf("rejected by partner (HTTP %d): %s", r.Status, r.Reason)
	}
	return "rejected: " + r.Reason
}

// Unhandled means the connector has nothing to do with the event: no
// entity or operation is configured for it. It is a Rejection to callers
// that only know those (Classify), but the sink tells it apart and
// applies its on_unhandled policy (default: record the event as skipped,
// with Reason, and go on).
type Unhandled struct {
	Reason string
}

func (u *Unhandled) Error() string { return "unhandled: " + u.Reason }

// Failure is a temporary failure: timeout, network error, 5xx, 429.
type Failure struct {
	Status int
	Reason string
	// RetryAfter is the partner's Retry-After, or 0.
	RetryAfter time.Duration
	Calls      []Call
	Err        error
}

func (f *Failure) Error() string {
	msg := "partner call failed"
	if f.Status != 0 {
		msg = fmt.Sprintf("partner call failed (HTTP %d)", f.Status)
	}
	if f.Reason != "" {
		msg += ": " + f.Reason
	}
	if f.Err != nil {
		msg += ": " + f.Err.Error()
	}
	return msg
}

func (f *Failure) Unwrap() error { return f.Err }

// Waiting means the event needs another object's partner id that is not
// mapped yet (a price needs its product): the sink waits, without
// counting an attempt, and tries again shortly.
type Waiting struct {
	EntityType, LocalID string
}

func (w *Waiting) Error() string {
	return fmt.Sprintf("waiting for %s %s to be created at the partner first", w.EntityType, w.LocalID)
}

// Outcome classifies a Deliver error.
type Outcome int

// Outcomes of a delivery attempt.
const (
	Succeeded Outcome = iota
	Rejected
	Failed
	Waits // see Waiting
)

func (o Outcome) String() string {
	return [...]string{"succeeded", "rejected", "failed", "waiting"}[o]
}

// Classify tells what err means for the delivery: nil succeeded, a
// *Rejection rejected, a *Waiting waits, anything else failed (retry).
// It also returns the
// Retry-After of a *Failure.
func Classify(err error) (Outcome, time.Duration) {
	if err == nil {
		return Succeeded, 0
	}
	var rej *Rejection
	if errors.As(err, &rej) {
		return Rejected, 0
	}
	var unh *Unhandled
	if errors.As(err, &unh) {
		return Rejected, 0
	}
	var w *Waiting
	if errors.As(err, &w) {
		return Waits, 0
	}
	var f *Failure
	if errors.As(err, &f) {
		return Failed, f.RetryAfter
	}
	return Failed, 0
}
