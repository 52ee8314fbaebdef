package delivery

import (
	"context"
	"fmt"
	"time"
)

// pruneBatch is how many deliveries one prune statement removes: each
// batch is its own short transaction, so a large prune never holds
// locks for long.
const pruneBatch = 5000

// Pruned is what Prune removed.
type Pruned struct {
	Deliveries int64 `json:"deliveries"`
	Attempts   int64 `json:"attempts"`
}

// Prune removes the finished deliveries last updated before before,
// with their kept attempts, in batches: succeeded and skipped ones, and
// rejected, expired, compensated and compensation_failed ones whose lane
// has moved past them (a later event of the same aggregate, in the same
// partition, has a delivery): under on_reject: park a lane waits on such
// a delivery, and pruning it would let the lane send the event again.
// It never removes an unfinished delivery (pending, in flight, failed,
// waiting, compensating), nor one with an open redrive request; each
// row's state and time are checked again under its lock, so a delivery
// an operator redrives meanwhile stays. Outcome rows not yet relayed to Kafka stay
// too (the relay deletes them). The act is recorded (action "prune").
//
// The delivery log is what deduplicates redeliveries: an event whose
// row was pruned and that is read from Kafka again (a replay, an offset
// reset) is delivered again. Keep before older than the topics'
// retention.
func (l *Log) Prune(ctx context.Context, before time.Time) (Pruned, error) {
	var total Pruned
	for {
		var n Pruned
		err := l.pool.QueryRow(ctx, `WITH pick AS (
				SELECT integration, event_id FROM ferry.delivery AS p
				WHERE p.state IN `+finalStates+` AND p.updated_at < $1
					AND NOT EXISTS (SELECT 1 FROM ferry.redrive r WHERE r.integration = p.integration AND r.event_id = p.event_id)
					AND (p.state IN ('succeeded', 'skipped') OR EXISTS (SELECT 1 FROM ferry.delivery n
						WHERE n.tenant_id = p.tenant_id AND n.integration = p.integration AND n.topic = p.topic
							AND n.kafka_partition = p.kafka_partition AND n.kafka_offset > p.kafka_offset
							AND n.aggregate_type = p.aggregate_type AND n.aggregate_id = p.aggregate_id))
				LIMIT $2 FOR UPDATE SKIP LOCKED),
			d AS (DELETE FROM ferry.delivery AS x USING pick
				WHERE x.integration = pick.integration AND x.event_id = pick.event_id
					AND x.state IN `+finalStates+` AND x.updated_at < $1
				RETURNING x.integration, x.event_id),
			a AS (DELETE FROM ferry.delivery_attempt AS t USING d
				WHERE t.integration = d.integration AND t.event_id = d.event_id RETURNING 1)
			SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM a)`, before, pruneBatch).Scan(&n.Deliveries, &n.Attempts)
		if err != nil {
			return total, fmt.Errorf("delivery: prune before %s: %w", before.UTC().Format(time.RFC3339), err)
		}
		total.Deliveries += n.Deliveries
		total.Attempts += n.Attempts
		if n.Deliveries < pruneBatch {
			break
		}
	}
	if _, err := l.pool.Exec(ctx, `INSERT INTO ferry.operator_action (integration, action, reason, actor) VALUES ('', 'prune', $1, $2)`,
		fmt.Sprintf("finished deliveries last updated before %s: %d deliveries, %d attempts removed",
			before.UTC().Format(time.RFC3339), total.Deliveries, total.Attempts), ActorOf(ctx)); err != nil {
		return total, fmt.Errorf("delivery: record the prune: %w", err)
	}
	return total, nil
}
