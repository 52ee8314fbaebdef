package outbox

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// BackfillFilter selects the rows a backfill publishes. The zero value
// selects every row.
type BackfillFilter struct {
	// TenantID limits the backfill to one tenant ("" = all tenants).
	TenantID string
	// Since limits it to rows created at or after this time (zero = all).
	Since time.Time
}

// backfillBatch is the number of rows read and published per round trip.
const backfillBatch = 1000

// Backfill publishes rows already in the outbox table — written before the
// slot existed, lost with a dropped slot, or one tenant's resync — through
// h, in the table's seq order, waiting for Kafka to acknowledge each batch.
// Consumers dedup by event id. It returns the number of rows published.
func Backfill(ctx context.Context, conn *pgx.Conn, cfg Config, f BackfillFilter, h Handler) (int, error) {
	c := cfg.Columns
	q := fmt.Sprintf(`SELECT %s::text, %s, %s, %s, %s, %s::text, %s::text, %s::text, %s FROM %s
		WHERE %s > $1 AND ($2 = '' OR %s = $2) AND ($3::timestamptz IS NULL OR %s >= $3)
		ORDER BY %s LIMIT %d`,
		id(c.ID), id(c.TenantID), id(c.AggregateType), id(c.AggregateID), id(c.EventType), id(c.Payload), id(c.Headers),
		id(c.CreatedAt), id(c.Seq), id(splitTable(cfg.Table)...),
		id(c.Seq), id(c.TenantID), id(c.CreatedAt), id(c.Seq), backfillBatch)
	var since *time.Time
	if !f.Since.IsZero() {
		since = &f.Since
	}
	var last int64
	total := 0
	for {
		rows, err := conn.Query(ctx, q, last, f.TenantID, since)
		if err != nil {
			return total, fmt.Errorf("backfill: read %s (it needs the %s column): %w", cfg.Table, c.Seq, err)
		}
		tx := &Tx{}
		for rows.Next() {
			var e Event
			var tenant, aggType, aggID, evType, payload, headers *string
			if err := rows.Scan(&e.ID, &tenant, &aggType, &aggID, &evType, &payload, &headers, &e.CreatedAt, &last); err != nil {
				rows.Close()
				return total, fmt.Errorf("backfill: scan row: %w", err)
			}
			e.TenantID, e.AggregateType, e.AggregateID, e.EventType = deref(tenant), deref(aggType), deref(aggID), deref(evType)
			if payload != nil {
				e.Payload = []byte(*payload)
			}
			if headers != nil {
				e.Headers = []byte(*headers)
			}
			e.Invalid = validate(&e, true, true)
			tx.Events = append(tx.Events, e)
		}
		if err := rows.Err(); err != nil {
			return total, fmt.Errorf("backfill: read rows: %w", err)
		}
		if len(tx.Events) == 0 {
			return total, nil
		}
		done := make(chan error, 1)
		if err := h.HandleTx(ctx, tx, func(err error) { done <- err }); err != nil {
			return total, err
		}
		select {
		case err := <-done:
			if err != nil {
				return total, fmt.Errorf("backfill: %w", err)
			}
		case <-ctx.Done():
			return total, ctx.Err()
		}
		total += len(tx.Events)
	}
}

func id(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

func splitTable(table string) []string { return strings.Split(table, ".") }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
