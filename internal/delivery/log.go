package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferry-cdc/ferry/pkg/connector"
)

// State is a delivery's state.
type State string

// Delivery states.
const (
	Pending   State = "pending"
	InFlight  State = "in_flight"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Rejected  State = "rejected"
	Waiting   State = "waiting"
	Skipped   State = "skipped"
)

// Final reports whether a delivery in state s is never sent again by the
// engine (an operator may still retry a rejected one).
func (s State) Final() bool { return s == Succeeded || s == Rejected || s == Skipped }

// Source is where the event came from in Kafka.
type Source struct {
	Topic     string
	Partition int32
	Offset    int64
}

// MaxCallBytes bounds each request and response body kept in the log.
const MaxCallBytes = 4096

// Log is the delivery log.
type Log struct {
	pool *pgxpool.Pool
	b    *batcher
}

// New returns a Log on pool (migrations applied). Close it to stop its
// batchers.
func New(pool *pgxpool.Pool) *Log { return &Log{pool: pool, b: newBatcher(pool)} }

// Close waits for statements in progress and stops the batchers.
func (l *Log) Close() { l.b.close() }

// Attempt is one claimed delivery attempt: Finish must be called with its
// outcome.
type Attempt struct {
	Integration string
	EventID     string
	// Number counts from 1; it fences Finish.
	Number int
	event  connector.Event // stored with a failure or rejection
}

// ErrNotClaimed means the delivery is final, or another process moved it
// since: the engine must not send it.
type ErrNotClaimed struct{ State State }

func (e *ErrNotClaimed) Error() string {
	return fmt.Sprintf("delivery not claimed: it is %s", e.State)
}

// Begin claims the next attempt of ev for integration: inserts the row
// (pending → in_flight) or moves failed/in_flight → in_flight. It returns
// *ErrNotClaimed when the delivery is already final (a redelivery).
func (l *Log) Begin(ctx context.Context, integration string, ev connector.Event, src Source) (Attempt, error) {
	var n int
	var state State
	// in_flight → in_flight takes over an attempt a dead process left
	// behind; partition ownership keeps live processes apart.
	err := l.b.do(ctx, &op{sql: `INSERT INTO ferry.delivery AS d (integration, event_id, tenant_id, event_type, aggregate_type,
			aggregate_id, topic, kafka_partition, kafka_offset, state, attempts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'in_flight', 1)
		ON CONFLICT (integration, event_id) DO UPDATE SET state = 'in_flight', attempts = d.attempts + 1, updated_at = now()
			WHERE d.state IN ('pending', 'failed', 'in_flight', 'waiting')
		RETURNING attempts, state`,
		args: []any{integration, ev.ID, ev.TenantID, ev.EventType, ev.AggregateType, ev.AggregateID, src.Topic, src.Partition, src.Offset},
		scan: func(r pgx.Row) error { return r.Scan(&n, &state) }})
	if errors.Is(err, pgx.ErrNoRows) {
		if err := l.pool.QueryRow(ctx, `SELECT state FROM ferry.delivery WHERE integration = $1 AND event_id = $2`, integration, ev.ID).Scan(&state); err != nil {
			return Attempt{}, fmt.Errorf("delivery: read %s: %w", ev.ID, err)
		}
		return Attempt{}, &ErrNotClaimed{State: state}
	}
	if err != nil {
		return Attempt{}, fmt.Errorf("delivery: begin %s: %w", ev.ID, err)
	}
	return Attempt{Integration: integration, EventID: ev.ID, Number: n, event: ev}, nil
}

// Outcome is what an attempt ended with.
type Outcome struct {
	State     State // Succeeded, Failed or Rejected
	Status    int
	Reason    string
	Calls     []connector.Call
	NextRetry time.Time // for Failed
}

// Finish records the attempt's outcome. It fails when the delivery moved
// since Begin (fenced by the attempt number).
func (l *Log) Finish(ctx context.Context, a Attempt, o Outcome) error {
	// Calls (bounded bodies) and the event are kept for failures and
	// rejections, which operators inspect and retry; a success keeps its
	// status code.
	var calls []byte
	var err error
	if o.State != Succeeded {
		if calls, err = json.Marshal(bound(o.Calls)); err != nil {
			return fmt.Errorf("delivery: encode calls: %w", err)
		}
	}
	var next *time.Time
	if !o.NextRetry.IsZero() {
		next = &o.NextRetry
	}
	var status *int
	if o.Status != 0 {
		status = &o.Status
	}
	var event []byte
	if o.State != Succeeded {
		if event, err = json.Marshal(a.event); err != nil {
			return fmt.Errorf("delivery: encode event %s: %w", a.EventID, err)
		}
	}
	fin := &op{sql: `UPDATE ferry.delivery SET state = $4, last_status = $5, reason = NULLIF($6, ''),
			calls = $7, next_attempt_at = $8, event = COALESCE($9, event), updated_at = now()
		WHERE integration = $1 AND event_id = $2 AND attempts = $3 AND state = 'in_flight'`,
		args: []any{a.Integration, a.EventID, a.Number, o.State, status, o.Reason, calls, next, event}}
	if err := l.b.do(ctx, fin); err != nil {
		return fmt.Errorf("delivery: finish %s: %w", a.EventID, err)
	}
	if fin.tag.RowsAffected() != 1 {
		return fmt.Errorf("delivery: finish %s attempt %d: the delivery moved on since (another process, or an operator)", a.EventID, a.Number)
	}
	return nil
}

// Skip marks a delivery skipped by an operator, with a reason, and
// records the act.
func (l *Log) Skip(ctx context.Context, integration, eventID, reason string) error {
	if reason == "" {
		return errors.New("delivery: skip needs a reason")
	}
	return pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		var tenant string
		err := tx.QueryRow(ctx, `UPDATE ferry.delivery SET state = 'skipped', reason = $3, updated_at = now()
			WHERE integration = $1 AND event_id = $2 AND state IN ('rejected', 'failed', 'pending', 'waiting') RETURNING tenant_id`,
			integration, eventID, "skipped by operator: "+reason).Scan(&tenant)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("delivery: %s/%s is not rejected, failed, pending or waiting: nothing to skip", integration, eventID)
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO ferry.operator_action (integration, tenant_id, event_id, action, reason) VALUES ($1, $2, $3, 'skip', $4)`,
			integration, tenant, eventID, reason)
		return err
	})
}

// Retry makes a rejected delivery retryable again (an operator act).
func (l *Log) Retry(ctx context.Context, integration, eventID string) error {
	return pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		var tenant string
		err := tx.QueryRow(ctx, `UPDATE ferry.delivery SET state = 'pending', updated_at = now()
			WHERE integration = $1 AND event_id = $2 AND state IN ('rejected', 'failed') RETURNING tenant_id`, integration, eventID).Scan(&tenant)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("delivery: %s/%s is not rejected or failed: nothing to retry", integration, eventID)
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO ferry.operator_action (integration, tenant_id, event_id, action) VALUES ($1, $2, $3, 'retry')`,
			integration, tenant, eventID)
		return err
	})
}

// Record is one row of the log, for inspection.
type Record struct {
	EventID   string
	TenantID  string
	State     State
	Attempts  int
	Status    *int
	Reason    *string
	Calls     []connector.Call
	UpdatedAt time.Time
}

// Get returns one delivery.
func (l *Log) Get(ctx context.Context, integration, eventID string) (Record, error) {
	var r Record
	var calls []byte
	err := l.pool.QueryRow(ctx, `SELECT event_id, tenant_id, state, attempts, last_status, reason, calls, updated_at
		FROM ferry.delivery WHERE integration = $1 AND event_id = $2`, integration, eventID).
		Scan(&r.EventID, &r.TenantID, &r.State, &r.Attempts, &r.Status, &r.Reason, &calls, &r.UpdatedAt)
	if err != nil {
		return r, fmt.Errorf("delivery: get %s/%s: %w", integration, eventID, err)
	}
	if len(calls) > 0 {
		if err := json.Unmarshal(calls, &r.Calls); err != nil {
			return r, fmt.Errorf("delivery: decode calls: %w", err)
		}
	}
	return r, nil
}

func bound(calls []connector.Call) []connector.Call {
	out := make([]connector.Call, len(calls))
	for i, c := range calls {
		c.RequestBody, c.ResponseBody = truncate(c.RequestBody), truncate(c.ResponseBody)
		out[i] = c
	}
	return out
}

func truncate(s string) string {
	if len(s) <= MaxCallBytes {
		return s
	}
	return s[:MaxCallBytes] + "…(truncated)"
}

// Ignore records an event the integration does not handle as skipped,
// with the reason, so it is visible rather than silently dropped.
func (l *Log) Ignore(ctx context.Context, integration string, ev connector.Event, src Source, reason string) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("delivery: encode event %s: %w", ev.ID, err)
	}
	_, err = l.pool.Exec(ctx, `INSERT INTO ferry.delivery (integration, event_id, tenant_id, event_type, aggregate_type,
			aggregate_id, topic, kafka_partition, kafka_offset, state, reason, event)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'skipped', $10, $11) ON CONFLICT (integration, event_id) DO NOTHING`,
		integration, ev.ID, ev.TenantID, ev.EventType, ev.AggregateType, ev.AggregateID, src.Topic, src.Partition, src.Offset, reason, body)
	if err != nil {
		return fmt.Errorf("delivery: record ignored %s: %w", ev.ID, err)
	}
	return nil
}

// Pool is the log's connection pool, for the engine's parked queue.
func (l *Log) Pool() *pgxpool.Pool { return l.pool }
