package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// SlotStatus is what `cdc status` reports of a slot: Postgres's view of
// it (pg_replication_slots) and cdc's own record (ferry.cdc_slot,
// ferry.cdc_tenant).
type SlotStatus struct {
	Slot   string `json:"slot"`
	Exists bool   `json:"exists"`
	Active bool   `json:"active"`
	// WALStatus is pg_replication_slots.wal_status (reserved, extended,
	// unreserved, lost).
	WALStatus    string `json:"wal_status"`
	ConfirmedLSN string `json:"confirmed_lsn"`
	// LagBytes is the WAL between the server's current position and the
	// slot's confirmed one.
	LagBytes int64 `json:"lag_bytes"`
	// LagSeconds is the age of the last confirmed commit while the slot
	// is behind by more than CaughtUpBytes (the reader's metric uses the
	// same rule), else 0.
	LagSeconds    float64    `json:"lag_seconds"`
	LastConfirmed *time.Time `json:"last_confirmed_commit,omitempty"`
	// RecordedLSN is the position cdc recorded in ferry.cdc_slot.
	RecordedLSN string `json:"recorded_lsn,omitempty"`
	// SafeWALSizeBytes is how much more WAL the slot may fall behind
	// before max_slot_wal_keep_size invalidates it; -1 when unlimited.
	SafeWALSizeBytes int64 `json:"safe_wal_size_bytes"`
	// Tenants are the tenants with the newest published events (up to
	// the limit Status was given), from ferry.cdc_tenant.
	Tenants []TenantStatus `json:"tenants"`
}

// TenantStatus is one tenant's publishing progress.
type TenantStatus struct {
	TenantID     string    `json:"tenant_id"`
	LastCommitAt time.Time `json:"last_event_commit_time"`
	Events       int64     `json:"events_published"`
}

// Status reads the slot's state and its tenants with the newest
// published events (at most tenants of them). A slot that does not exist
// is reported with Exists false, not as an error.
func Status(ctx context.Context, conn *pgx.Conn, slot string, tenants int) (SlotStatus, error) {
	s := SlotStatus{Slot: slot}
	var lsn pglogrepl.LSN
	err := conn.QueryRow(ctx, `SELECT active, COALESCE(wal_status, ''), confirmed_flush_lsn,
			COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint, COALESCE(safe_wal_size, -1)
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&s.Active, &s.WALStatus, &lsn, &s.LagBytes, &s.SafeWALSizeBytes)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return s, fmt.Errorf("status: read slot: %w", err)
	default:
		s.Exists = true
		s.ConfirmedLSN = lsn.String()
	}
	var rec pglogrepl.LSN
	err = conn.QueryRow(ctx, `SELECT confirmed_lsn, confirmed_commit_time FROM ferry.cdc_slot WHERE slot_name = $1`, slot).Scan(&rec, &s.LastConfirmed)
	if err == nil {
		s.RecordedLSN = rec.String()
		if s.LastConfirmed != nil && s.LagBytes > CaughtUpBytes {
			s.LagSeconds = time.Since(*s.LastConfirmed).Seconds()
		}
	} else if !errors.Is(err, pgx.ErrNoRows) {
		return s, fmt.Errorf("status: read ferry.cdc_slot (run `cdc setup`): %w", err)
	}
	rows, err := conn.Query(ctx, `SELECT tenant_id, last_commit_at, events FROM ferry.cdc_tenant WHERE slot_name = $1
		ORDER BY last_commit_at DESC, tenant_id LIMIT $2`, slot, tenants)
	if err != nil {
		return s, fmt.Errorf("status: read ferry.cdc_tenant (run `cdc setup`): %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var t TenantStatus
		if err := rows.Scan(&t.TenantID, &t.LastCommitAt, &t.Events); err != nil {
			return s, fmt.Errorf("status: read ferry.cdc_tenant: %w", err)
		}
		s.Tenants = append(s.Tenants, t)
	}
	if err := rows.Err(); err != nil {
		return s, fmt.Errorf("status: read ferry.cdc_tenant: %w", err)
	}
	return s, nil
}
