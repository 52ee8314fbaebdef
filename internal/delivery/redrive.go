package delivery

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/pkg/connector"
)

// Redrive: an operator delivers a delivery again from its stored copy
// (the event kept with every delivery that did not succeed), through
// its tenant's lane, after the events that lane already delivered. The
// log sets the delivery pending (a compensating one stays compensating:
// its undo is retried) and files a request in ferry.redrive; the engine
// that owns the delivery's partition appends it to the lane and calls
// DoneRedrive once the lane is done with it (migration 0011).

// actorKey is the context key of the operator's name.
type actorKey struct{}

// WithActor returns ctx naming who acts: operator acts recorded under
// it (ferry.operator_action.actor) name them. The CLI gives the OS
// user, the admin API the token's name.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorOf returns the actor WithActor put on ctx, or "unknown".
func ActorOf(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "unknown"
}

// Retryable are the states an operator may redrive one delivery from.
var Retryable = []State{Rejected, Failed, Expired, Skipped, Compensated, CompensationFailed, Compensating}

// BulkRetryable are the states a bulk redrive takes when none are named:
// the problems, not an operator's own skips nor an undo under way.
var BulkRetryable = []State{Rejected, Failed, Expired, Compensated, CompensationFailed}

// Selection picks the deliveries of one integration to redrive: one
// event, or every delivery matching the tenant, states and time.
type Selection struct {
	Integration string
	EventID     string    // "" = any
	TenantID    string    // "" = any
	States      []State   // empty: Retryable for one event, BulkRetryable otherwise
	Since       time.Time // zero = any time; else updated at or after
}

// Redriven is one delivery a redrive took.
type Redriven struct {
	EventID  string `json:"event_id"`
	TenantID string `json:"tenant_id"`
	// From is the state it was in.
	From State `json:"from"`
}

// Redrive makes the selected deliveries pending again and files their
// redrive requests, in their Kafka order, recording one operator act
// per delivery (the actor WithActor put on ctx, and reason). A
// delivery without a stored copy, or compensating with its undo running
// right now, is not taken. It returns what it took, in order.
func (l *Log) Redrive(ctx context.Context, sel Selection, reason string) ([]Redriven, error) {
	states := sel.States
	if len(states) == 0 {
		states = BulkRetryable
		if sel.EventID != "" {
			states = Retryable
		}
	}
	var since *time.Time
	if !sel.Since.IsZero() {
		since = &sel.Since
	}
	var out []Redriven
	err := pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		// Row locks first (in key order, so two bulk redrives never
		// deadlock), then one update; old states come from the locked rows.
		rows, err := tx.Query(ctx, `WITH old AS (
				SELECT integration, event_id, state FROM ferry.delivery
				WHERE integration = $1 AND ($2 = '' OR event_id = $2) AND ($3 = '' OR tenant_id = $3) AND state = ANY($4)
					AND ($5::timestamptz IS NULL OR updated_at >= $5) AND event IS NOT NULL
					AND NOT (state = 'compensating' AND holder IS NOT NULL)
				ORDER BY event_id FOR UPDATE),
			upd AS (UPDATE ferry.delivery AS d
				SET state = CASE WHEN d.state = 'compensating' THEN 'compensating' ELSE 'pending' END,
					steps = CASE WHEN d.state = 'compensated' THEN NULL ELSE d.steps END,
					next_attempt_at = NULL, redriven_at = now(), attempts_base = d.attempts, updated_at = now(), problem_at = now(),
					key_generation = d.key_generation + CASE WHEN d.state IN ('rejected', 'compensated') THEN 1 ELSE 0 END
				FROM old WHERE d.integration = old.integration AND d.event_id = old.event_id
				RETURNING d.event_id, d.tenant_id, old.state, d.topic, d.kafka_partition, d.kafka_offset,
					COALESCE(d.lane_key, d.tenant_id) AS lane_key),
			req AS (INSERT INTO ferry.redrive (integration, event_id, tenant_id, topic, kafka_partition, lane_key)
				SELECT $1, event_id, tenant_id, topic, kafka_partition, lane_key FROM upd
				ORDER BY topic, kafka_partition, kafka_offset
				ON CONFLICT (event_id, integration) DO UPDATE SET requested_at = now()),
			act AS (INSERT INTO ferry.operator_action (integration, tenant_id, event_id, action, reason, actor)
				SELECT $1, tenant_id, event_id, 'retry', $6, $7 FROM upd)
			SELECT event_id, tenant_id, state FROM upd ORDER BY topic, kafka_partition, kafka_offset`,
			sel.Integration, sel.EventID, sel.TenantID, states, since, reason, ActorOf(ctx))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r Redriven
			if err := rows.Scan(&r.EventID, &r.TenantID, &r.From); err != nil {
				return err
			}
			out = append(out, r)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("delivery: redrive %s: %w", sel.Integration, err)
	}
	if len(out) == 0 && sel.EventID != "" {
		var state State
		var stored, held bool
		err := l.pool.QueryRow(ctx, `SELECT state, event IS NOT NULL, holder IS NOT NULL FROM ferry.delivery WHERE integration = $1 AND event_id = $2`,
			sel.Integration, sel.EventID).Scan(&state, &stored, &held)
		switch {
		case err == pgx.ErrNoRows:
			return nil, fmt.Errorf("delivery: %s/%s is not in the delivery log: nothing to retry: %w", sel.Integration, sel.EventID, ErrState)
		case err != nil:
			return nil, fmt.Errorf("delivery: read %s/%s: %w", sel.Integration, sel.EventID, err)
		case !stored:
			return nil, fmt.Errorf("delivery: %s/%s is %s and has no stored copy to deliver again: nothing to retry: %w", sel.Integration, sel.EventID, state, ErrState)
		case state == Compensating && held:
			return nil, fmt.Errorf("delivery: %s/%s is compensating and its undo is running now: try again when it ends: %w", sel.Integration, sel.EventID, ErrState)
		default:
			return nil, fmt.Errorf("delivery: %s/%s is %s, not one of %v: nothing to retry: %w", sel.Integration, sel.EventID, state, states, ErrState)
		}
	}
	return out, nil
}

// Request is an open redrive request.
type Request struct {
	Seq         int64
	EventID     string
	TenantID    string
	Topic       string
	Partition   int32
	LaneKey     string
	RequestedAt time.Time
}

// Requests returns an integration's open redrive requests, in order.
func (l *Log) Requests(ctx context.Context, integration string) ([]Request, error) {
	ctx, cancel := l.Bound(ctx)
	defer cancel()
	rows, err := l.pool.Query(ctx, `SELECT seq, event_id, tenant_id, topic, kafka_partition, lane_key, requested_at
		FROM ferry.redrive WHERE integration = $1 ORDER BY seq`, integration)
	if err != nil {
		return nil, fmt.Errorf("delivery: read redrive requests: %w", err)
	}
	defer rows.Close()
	var out []Request
	for rows.Next() {
		var r Request
		if err := rows.Scan(&r.Seq, &r.EventID, &r.TenantID, &r.Topic, &r.Partition, &r.LaneKey, &r.RequestedAt); err != nil {
			return nil, fmt.Errorf("delivery: read redrive requests: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Stored returns a delivery's stored copy of its event and where it
// came from in Kafka; ok is false when there is none.
func (l *Log) Stored(ctx context.Context, integration, eventID string) (ev connector.Event, src Source, ok bool, err error) {
	ctx, cancel := l.Bound(ctx)
	defer cancel()
	var body []byte
	var key *string
	err = l.pool.QueryRow(ctx, `SELECT event, topic, kafka_partition, kafka_offset, COALESCE(lane_key, tenant_id)
		FROM ferry.delivery WHERE integration = $1 AND event_id = $2`, integration, eventID).
		Scan(&body, &src.Topic, &src.Partition, &src.Offset, &key)
	if err == pgx.ErrNoRows {
		return ev, src, false, nil
	}
	if err != nil {
		return ev, src, false, fmt.Errorf("delivery: read stored %s: %w", eventID, err)
	}
	if key != nil {
		src.Key = *key
	}
	if len(body) == 0 {
		return ev, src, false, nil
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		return ev, src, false, fmt.Errorf("delivery: decode stored %s: %w", eventID, err)
	}
	return ev, src, true, nil
}

// DoneRedrive removes a redrive request once its lane is done with it.
func (l *Log) DoneRedrive(ctx context.Context, integration string, seq int64) error {
	ctx, cancel := l.Bound(ctx)
	defer cancel()
	if _, err := l.pool.Exec(ctx, `DELETE FROM ferry.redrive WHERE integration = $1 AND seq = $2`, integration, seq); err != nil {
		return fmt.Errorf("delivery: close redrive request %d: %w", seq, err)
	}
	return nil
}

// States returns the current state of each event (absent: not in the
// log).
func (l *Log) States(ctx context.Context, integration string, eventIDs []string) (map[string]State, error) {
	rows, err := l.pool.Query(ctx, `SELECT event_id, state FROM ferry.delivery WHERE integration = $1 AND event_id = ANY($2)`, integration, eventIDs)
	if err != nil {
		return nil, fmt.Errorf("delivery: read states: %w", err)
	}
	defer rows.Close()
	out := map[string]State{}
	for rows.Next() {
		var id string
		var s State
		if err := rows.Scan(&id, &s); err != nil {
			return nil, err
		}
		out[id] = s
	}
	return out, rows.Err()
}
