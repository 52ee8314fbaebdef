package delivery

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SetTenant turns a tenant of an integration on or off, and records the
// act. Enabling also files a resync request (ferry.resync_request) and
// returns its id; cdc serves it when it shares this database.
func (l *Log) SetTenant(ctx context.Context, integration, tenant string, enabled bool, reason string) (int64, error) {
	if integration == "" || tenant == "" {
		return 0, fmt.Errorf("delivery: the switch needs an integration and a tenant")
	}
	var id int64
	err := pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO ferry.tenant_switch (integration, tenant_id, enabled, reason) VALUES ($1, $2, $3, $4)
			ON CONFLICT (integration, tenant_id) DO UPDATE SET enabled = $3, reason = $4, updated_at = now()`,
			integration, tenant, enabled, reason); err != nil {
			return err
		}
		action := "disable"
		if enabled {
			action = "enable"
			if err := tx.QueryRow(ctx, `INSERT INTO ferry.resync_request (integration, tenant_id) VALUES ($1, $2) RETURNING id`,
				integration, tenant).Scan(&id); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO ferry.operator_action (integration, tenant_id, action, reason, actor) VALUES ($1, $2, $3, $4, $5)`,
			integration, tenant, action, reason, ActorOf(ctx))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("delivery: switch %s/%s: %w", integration, tenant, err)
	}
	return id, nil
}

// Disabled returns the tenants of an integration that are switched off.
func (l *Log) Disabled(ctx context.Context, integration string) (map[string]bool, error) {
	d, err := l.tenantSet(ctx, `SELECT tenant_id FROM ferry.tenant_switch WHERE integration = $1 AND NOT enabled`, integration)
	if err != nil {
		return nil, fmt.Errorf("delivery: read the tenant switch: %w", err)
	}
	return d, nil
}

// InFlight counts a tenant's deliveries being attempted right now.
func (l *Log) InFlight(ctx context.Context, integration, tenant string) (int, error) {
	var n int
	err := l.pool.QueryRow(ctx, `SELECT count(*) FROM ferry.delivery WHERE tenant_id = $2 AND integration = $1 AND state IN ('in_flight', 'compensating')`,
		integration, tenant).Scan(&n)
	return n, err
}

// Tenant is one tenant of an integration, for operators.
type Tenant struct {
	Integration string         `json:"integration"`
	TenantID    string         `json:"tenant_id"`
	Enabled     bool           `json:"enabled"`
	Paused      bool           `json:"paused"`
	Deliveries  map[string]int `json:"deliveries"` // by state
	// DeliveriesOver is set (to TenantCounted) when the tenant has more
	// deliveries than the tenants view reads; Deliveries and LastUpdate
	// are then empty.
	DeliveriesOver int        `json:"deliveries_over,omitempty"`
	Parked         int        `json:"parked"` // events in the durable queue
	LastUpdate     *time.Time `json:"last_update,omitempty"`
	// Resync is the state of the newest resync request: "", "requested"
	// or "done".
	Resync string `json:"resync,omitempty"`
}

// Tenants lists the tenants of an integration (or all when "") that have
// deliveries, a switch, a pause or parked events.
func (l *Log) Tenants(ctx context.Context, integration string) ([]Tenant, error) {
	rows, err := l.pool.Query(ctx, `
		WITH t AS (
			SELECT integration, tenant_id FROM ferry.delivery WHERE $1 = '' OR integration = $1
			UNION SELECT integration, tenant_id FROM ferry.tenant_switch WHERE $1 = '' OR integration = $1
			UNION SELECT integration, tenant_id FROM ferry.pause WHERE tenant_id <> '' AND ($1 = '' OR integration = $1)
			UNION SELECT integration, tenant_id FROM ferry.parked_event WHERE $1 = '' OR integration = $1)
		SELECT t.integration, t.tenant_id,
			COALESCE((SELECT enabled FROM ferry.tenant_switch s WHERE s.integration = t.integration AND s.tenant_id = t.tenant_id), true),
			EXISTS (SELECT 1 FROM ferry.pause p WHERE p.integration = t.integration AND p.tenant_id IN (t.tenant_id, '')),
			COALESCE((SELECT jsonb_object_agg(state, n) FROM (SELECT state, count(*) AS n FROM ferry.delivery d
				WHERE d.tenant_id = t.tenant_id AND d.integration = t.integration GROUP BY state) c), '{}'::jsonb),
			(SELECT count(*) FROM ferry.parked_event q WHERE q.integration = t.integration AND q.tenant_id = t.tenant_id),
			(SELECT max(updated_at) FROM ferry.delivery d WHERE d.tenant_id = t.tenant_id AND d.integration = t.integration),
			COALESCE((SELECT CASE WHEN done_at IS NULL THEN 'requested' WHEN error IS NOT NULL THEN 'failed' ELSE 'done' END FROM ferry.resync_request r
				WHERE r.integration = t.integration AND r.tenant_id = t.tenant_id ORDER BY id DESC LIMIT 1), '')
		FROM t ORDER BY 1, 2`, integration)
	if err != nil {
		return nil, fmt.Errorf("delivery: list tenants: %w", err)
	}
	defer rows.Close()
	var out []Tenant
	for rows.Next() {
		var t Tenant
		if err := rows.Scan(&t.Integration, &t.TenantID, &t.Enabled, &t.Paused, &t.Deliveries, &t.Parked, &t.LastUpdate, &t.Resync); err != nil {
			return nil, fmt.Errorf("delivery: read tenants: %w", err)
		}
		out = append(out, t)
	}
	return out, rows.Err()
}
