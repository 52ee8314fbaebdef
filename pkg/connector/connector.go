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
}

// Mapping is what the sink knows of one of our objects at the partner.
type Mapping struct {
	EntityType string `json:"entity_type"`
	LocalID    string `json:"local_id"`
	RemoteID   string `json:"remote_id"`
}

// Request is one delivery attempt.
type Request struct {
	Integration string
	Event       Event
	// Mappings are the partner ids already recorded for this event's
	// objects (the aggregate, and parents it refers to), keyed by entity
	// type. Empty when nothing is mapped yet.
	Mappings map[string]Mapping
	// IdempotencyKey is stable across every attempt of this event for this
	// integration; send it as the Idempotency-Key header.
	IdempotencyKey string
	// Attempt counts from 1.
	Attempt int
}

// Result is a successful delivery.
type Result struct {
	// Mappings are partner ids to record (created or confirmed objects),
	// keyed by entity type.
	Mappings map[string]Mapping
	// Deleted lists entity types whose mapping the partner no longer holds.
	Deleted []string
	// Calls are the partner calls made, for the delivery log.
	Calls []Call
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
	Undo(ctx context.Context, req Request, done Result) (Result, error)
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
}

func (r *Rejection) Error() string {
	if r.Status != 0 {
		return fmt.Sprintf("rejected by partner (HTTP %d): %s", r.Status, r.Reason)
	}
	return "rejected: " + r.Reason
}

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

// Outcome classifies a Deliver error.
type Outcome int

// Outcomes of a delivery attempt.
const (
	Succeeded Outcome = iota
	Rejected
	Failed
)

func (o Outcome) String() string {
	return [...]string{"succeeded", "rejected", "failed"}[o]
}

// Classify tells what err means for the delivery: nil succeeded, a
// *Rejection rejected, anything else failed (retry). It also returns the
// Retry-After of a *Failure.
func Classify(err error) (Outcome, time.Duration) {
	if err == nil {
		return Succeeded, 0
	}
	var rej *Rejection
	if errors.As(err, &rej) {
		return Rejected, 0
	}
	var f *Failure
	if errors.As(err, &f) {
		return Failed, f.RetryAfter
	}
	return Failed, 0
}
