package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Outcomes close the loop (design.md guarantee 6): each delivery that
// reaches a final state (State.Final) gets one row in ferry.outcome,
// written by the same statement (or transaction) that writes the final
// state, so a crash between the delivery-log write and the produce to
// Kafka cannot lose it. The engine's relay (RelayOutcomes) produces the
// pending rows of its integration in seq order and deletes them once
// Kafka acknowledged them. A tenant's deliveries finish one after the
// other (its lane waits for each), so seq order is the tenant's order.

// OutcomeSchema names the version of the outcome record's JSON Schema
// (schemas/outcome.v1.schema.json).
const OutcomeSchema = "ferry.outcome.v1"

// outcomeColumns are the columns of ferry.outcome written with a final
// state.
const outcomeColumns = `integration, topic, event_id, tenant_id, event_type, aggregate_type, aggregate_id, state,
	remote_id, remote_ids, last_status, reason, attempts, first_attempt_at, last_attempt_at`

// finalStates is State.Final in SQL.
const finalStates = `('succeeded', 'rejected', 'skipped', 'compensated', 'expired', 'compensation_failed')`

// outcomeValues selects outcomeColumns from x, a delivery row (after
// its update), with the topic and partner ids given as SQL expressions.
// created_at is the first attempt's time (Begin inserts the row), unless
// there was no attempt.
func outcomeValues(x, topic, remoteID, remoteIDs string) string {
	return x + `.integration, ` + topic + `, ` + x + `.event_id, ` + x + `.tenant_id, ` + x + `.event_type, ` +
		x + `.aggregate_type, ` + x + `.aggregate_id, ` + x + `.state, ` + remoteID + `, ` + remoteIDs + `, ` +
		x + `.last_status, COALESCE(` + x + `.reason, ''), ` + x + `.attempts, CASE WHEN ` + x + `.attempts > 0 THEN ` +
		x + `.created_at END, CASE WHEN ` + x + `.attempts > 0 THEN ` + x + `.last_attempt_at END`
}

// writeOutcome writes the outcome of a delivery that an operator (or
// the engine, outside the batched writes) just moved to a final state,
// in tx, the transaction that moved it.
func (l *Log) writeOutcome(ctx context.Context, tx pgx.Tx, integration, eventID string) error {
	topic, ok := l.outcomes[integration]
	if !ok {
		// Not configured here (an operator command run without the
		// sink's config): as the running sink last set it.
		err := tx.QueryRow(ctx, `SELECT topic FROM ferry.outcome_route WHERE integration = $1`, integration).Scan(&topic)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("delivery: read the outcome topic of %s: %w", integration, err)
		}
	}
	if topic == "" {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO ferry.outcome (`+outcomeColumns+`) SELECT `+outcomeValues("d", "$3", "''", "NULL")+`
		FROM ferry.delivery d WHERE d.integration = $1 AND d.event_id = $2 AND d.state IN `+finalStates,
		integration, eventID, topic)
	if err != nil {
		return fmt.Errorf("delivery: record the outcome of %s/%s: %w", integration, eventID, err)
	}
	return nil
}

// OutcomeRecord is an outcome record's JSON value, as the JSON Schema
// schemas/outcome.v1.schema.json describes it.
type OutcomeRecord struct {
	Schema        string `json:"schema"` // OutcomeSchema
	EventID       string `json:"event_id"`
	TenantID      string `json:"tenant_id"`
	Integration   string `json:"integration"`
	AggregateType string `json:"aggregate_type"`
	AggregateID   string `json:"aggregate_id"`
	EventType     string `json:"event_type"`
	State         State  `json:"state"`
	// Partner holds the partner ids the delivery produced.
	Partner PartnerIDs `json:"partner"`
	// LastStatus is the HTTP status of the last partner call; nil when
	// none was made.
	LastStatus *int   `json:"last_status"`
	Reason     string `json:"reason"`
	Attempts   int    `json:"attempts"`
	// FirstAttemptAt and LastAttemptAt are nil when no attempt was made
	// (an event nothing handles, a switched-off tenant).
	FirstAttemptAt *time.Time `json:"first_attempt_at"`
	LastAttemptAt  *time.Time `json:"last_attempt_at"`
	// At is when the final state was recorded.
	At time.Time `json:"at"`
}

// PartnerIDs are the partner's ids of a delivered entity.
type PartnerIDs struct {
	// RemoteID is the partner's id of the event's entity ("" if none).
	RemoteID string `json:"remote_id"`
	// IDs are other partner ids, by mapping name (never nil).
	IDs map[string]string `json:"ids"`
}

// PendingOutcome is one outcome waiting for the relay.
type PendingOutcome struct {
	Seq    int64
	Topic  string
	Record OutcomeRecord
}

// RelayOutcomes hands up to limit of integration's pending outcomes,
// oldest first, to send, and deletes them once send returned nil; it
// returns how many it relayed. One process relays an integration's
// outcomes at a time (a transaction-scoped advisory lock, held while
// send runs, so two relays never interleave a tenant's outcomes); the
// others relay nothing (0, nil) until it lets go. When send fails, or
// the process dies before the delete commits, the same rows are sent
// again later, with the same contents.
func (l *Log) RelayOutcomes(ctx context.Context, integration string, limit int, send func(context.Context, []PendingOutcome) error) (int, error) {
	var pending bool
	qctx, cancel := l.Bound(ctx)
	err := l.pool.QueryRow(qctx, `SELECT EXISTS (SELECT 1 FROM ferry.outcome WHERE integration = $1)`, integration).Scan(&pending)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("delivery: look for outcomes to relay: %w", err)
	}
	if !pending {
		return 0, nil
	}
	n := 0
	err = pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended('ferry.outcome/' || $1, 0))`, integration).Scan(&locked); err != nil {
			return err
		}
		if !locked {
			return nil // another process relays this integration's outcomes
		}
		rows, err := tx.Query(ctx, `SELECT seq, topic, event_id, tenant_id, aggregate_type, aggregate_id, event_type, state,
				remote_id, remote_ids, last_status, reason, attempts, first_attempt_at, last_attempt_at, at
			FROM ferry.outcome WHERE integration = $1 ORDER BY seq LIMIT $2`, integration, limit)
		if err != nil {
			return err
		}
		var batch []PendingOutcome
		var seqs []int64
		for rows.Next() {
			p := PendingOutcome{Record: OutcomeRecord{Schema: OutcomeSchema, Integration: integration}}
			r := &p.Record
			var ids []byte
			if err := rows.Scan(&p.Seq, &p.Topic, &r.EventID, &r.TenantID, &r.AggregateType, &r.AggregateID, &r.EventType, &r.State,
				&r.Partner.RemoteID, &ids, &r.LastStatus, &r.Reason, &r.Attempts, &r.FirstAttemptAt, &r.LastAttemptAt, &r.At); err != nil {
				rows.Close()
				return err
			}
			r.Partner.IDs = map[string]string{}
			if len(ids) > 0 {
				if err := json.Unmarshal(ids, &r.Partner.IDs); err != nil {
					rows.Close()
					return fmt.Errorf("decode partner ids of %s: %w", r.EventID, err)
				}
			}
			batch = append(batch, p)
			seqs = append(seqs, p.Seq)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(batch) == 0 {
			return nil
		}
		if err := send(ctx, batch); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM ferry.outcome WHERE seq = ANY($1)`, seqs); err != nil {
			return err
		}
		n = len(batch)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("delivery: relay outcomes of %s: %w", integration, err)
	}
	return n, nil
}

// SetOutcomeTopic records integration's outcome topic ("" = off) for
// operator commands run without the sink's configuration (see
// writeOutcome). The engine calls it at start.
func (l *Log) SetOutcomeTopic(ctx context.Context, integration, topic string) error {
	ctx, cancel := l.Bound(ctx)
	defer cancel()
	_, err := l.pool.Exec(ctx, `INSERT INTO ferry.outcome_route (integration, topic) VALUES ($1, $2)
		ON CONFLICT (integration) DO UPDATE SET topic = $2, updated_at = now() WHERE ferry.outcome_route.topic <> $2`, integration, topic)
	if err != nil {
		return fmt.Errorf("delivery: record the outcome topic of %s: %w", integration, err)
	}
	return nil
}
