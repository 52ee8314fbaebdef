package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// PruneResult is what Prune did.
type PruneResult struct {
	Deleted int64
	// DroppedPartitions is how many whole days were dropped (daily
	// partitions), holding about DroppedRows rows (planner estimate).
	DroppedPartitions int
	DroppedRows       int64
	// Cutoff is the created_at bound used: rows created before it went.
	Cutoff time.Time
}

// Prune deletes outbox rows created before now - olderThan, but never
// rows a lost-slot recovery could still need: the bound is also kept
// before the slot's last confirmed commit minus RecoverMargin. Deleting
// rows never loses streamed events (decoding reads WAL, and the
// publication is insert-only); the bound protects backfill. It deletes in
// batches so it does not hold long locks. With daily partitions, days
// wholly before the bound are dropped (DROP TABLE takes a brief
// exclusive lock on the outbox; inserts wait for it).
func Prune(ctx context.Context, conn *pgx.Conn, cfg Config, olderThan time.Duration) (PruneResult, error) {
	if olderThan <= 0 {
		return PruneResult{}, errors.New("prune: --older-than must be positive (e.g. 720h)")
	}
	var confirmed *time.Time
	err := conn.QueryRow(ctx, `SELECT confirmed_commit_time FROM ferry.cdc_slot WHERE slot_name = $1`, cfg.Slot).Scan(&confirmed)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && confirmed == nil) {
		return PruneResult{}, fmt.Errorf("prune: slot %s has confirmed nothing yet: refusing to delete rows cdc may not have published", cfg.Slot)
	}
	if err != nil {
		return PruneResult{}, fmt.Errorf("prune: read slot record (run `cdc setup`): %w", err)
	}
	cutoff := time.Now().Add(-olderThan)
	if bound := confirmed.Add(-cfg.RecoverMargin); bound.Before(cutoff) {
		cutoff = bound
	}
	res := PruneResult{Cutoff: cutoff}
	// Whole days first (daily partitions): a DROP, no row-by-row delete.
	if res.DroppedPartitions, res.DroppedRows, err = dropDays(ctx, conn, cfg, cutoff); err != nil {
		return res, err
	}
	// (tableoid, ctid): a ctid alone is not unique across partitions.
	q := fmt.Sprintf(`DELETE FROM %s WHERE (tableoid, ctid) IN (SELECT tableoid, ctid FROM %s WHERE %s < $1 LIMIT 10000)`,
		id(splitTable(cfg.Table)...), id(splitTable(cfg.Table)...), id(cfg.Columns.CreatedAt))
	for {
		tag, err := conn.Exec(ctx, q, cutoff)
		if err != nil {
			return res, fmt.Errorf("prune: delete from %s: %w", cfg.Table, err)
		}
		res.Deleted += tag.RowsAffected()
		if tag.RowsAffected() < 10000 {
			return res, nil
		}
	}
}
