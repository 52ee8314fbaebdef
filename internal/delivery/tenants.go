package delivery

import (
	"context"
	"fmt"
)

// TenantKey orders the tenants view: by tenant, then integration.
type TenantKey struct {
	TenantID    string
	Integration string
}

// TenantCounted is how many of a tenant's deliveries the tenants view
// reads for its counts and last update: a tenant with more shows
// DeliveriesOver instead, so that a page costs at most limit ×
// TenantCounted rows however large its tenants are (the page asks every
// 5 s). `sink failures --tenant` lists a large tenant's problems. A
// variable for tests.
var TenantCounted = 10_000

// TenantsPage lists up to limit tenants of an integration (or all when
// ""), after the key after (zero: from the first), in (tenant_id,
// integration) order, with the same columns as Tenants; next is the key
// to ask the following page from, nil after the last.
//
// Every part reads an index in that order and stops after limit tenants
// (docs/internals.md): the tenants with deliveries are found by a loose
// index scan of delivery_tenant (one index probe per tenant, however many
// deliveries each has), the switch, pauses and parked events by their
// (tenant_id, integration) indexes. The counts read only the page's
// tenants' rows, at most TenantCounted each.
func (l *Log) TenantsPage(ctx context.Context, integration string, after TenantKey, limit int) (ts []Tenant, next *TenantKey, err error) {
	rows, err := l.pool.Query(ctx, `
		WITH RECURSIVE d(tenant_id, integration) AS (
			(SELECT tenant_id, integration FROM ferry.delivery
				WHERE (tenant_id, integration) > ($2, $3) AND ($1 = '' OR integration = $1)
				ORDER BY tenant_id, integration LIMIT 1)
			UNION ALL
			SELECT n.tenant_id, n.integration FROM d, LATERAL (
				SELECT tenant_id, integration FROM ferry.delivery x
				WHERE (x.tenant_id, x.integration) > (d.tenant_id, d.integration) AND ($1 = '' OR x.integration = $1)
				ORDER BY tenant_id, integration LIMIT 1) n),
		t AS (
			(SELECT tenant_id, integration FROM d LIMIT $4)
			UNION (SELECT tenant_id, integration FROM ferry.tenant_switch
				WHERE (tenant_id, integration) > ($2, $3) AND ($1 = '' OR integration = $1) ORDER BY 1, 2 LIMIT $4)
			UNION (SELECT tenant_id, integration FROM ferry.pause
				WHERE tenant_id <> '' AND (tenant_id, integration) > ($2, $3) AND ($1 = '' OR integration = $1) ORDER BY 1, 2 LIMIT $4)
			UNION (SELECT DISTINCT tenant_id, integration FROM ferry.parked_event
				WHERE (tenant_id, integration) > ($2, $3) AND ($1 = '' OR integration = $1) ORDER BY 1, 2 LIMIT $4)),
		page AS (SELECT * FROM t ORDER BY tenant_id, integration LIMIT $4)
		SELECT t.integration, t.tenant_id,
			COALESCE((SELECT enabled FROM ferry.tenant_switch s WHERE s.integration = t.integration AND s.tenant_id = t.tenant_id), true),
			EXISTS (SELECT 1 FROM ferry.pause p WHERE p.integration = t.integration AND p.tenant_id IN (t.tenant_id, '')),
			COALESCE(dl.by_state, '{}'::jsonb),
			(SELECT count(*) FROM ferry.parked_event q WHERE q.integration = t.integration AND q.tenant_id = t.tenant_id),
			dl.last_update,
			COALESCE((SELECT CASE WHEN done_at IS NULL THEN 'requested' WHEN error IS NOT NULL THEN 'failed' ELSE 'done' END FROM ferry.resync_request r
				WHERE r.integration = t.integration AND r.tenant_id = t.tenant_id ORDER BY id DESC LIMIT 1), '')
		FROM page t
		-- The counts and the last update from one read of (at most $5
		-- of) the tenant's deliveries.
		LEFT JOIN LATERAL (SELECT jsonb_object_agg(state, n) AS by_state, max(last) AS last_update
			FROM (SELECT state, count(*) AS n, max(updated_at) AS last FROM (SELECT state, updated_at FROM ferry.delivery d
				WHERE d.tenant_id = t.tenant_id AND d.integration = t.integration LIMIT $5) x GROUP BY state) c) dl ON true
		ORDER BY t.tenant_id, t.integration`, integration, after.TenantID, after.Integration, limit, TenantCounted+1)
	if err != nil {
		return nil, nil, fmt.Errorf("delivery: list tenants: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var t Tenant
		if err := rows.Scan(&t.Integration, &t.TenantID, &t.Enabled, &t.Paused, &t.Deliveries, &t.Parked, &t.LastUpdate, &t.Resync); err != nil {
			return nil, nil, fmt.Errorf("delivery: read tenants: %w", err)
		}
		n := 0
		for _, c := range t.Deliveries {
			n += c
		}
		if n > TenantCounted {
			// Counts and last update of some of its rows would mislead.
			t.Deliveries, t.LastUpdate, t.DeliveriesOver = map[string]int{}, nil, TenantCounted
		}
		ts = append(ts, t)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("delivery: read tenants: %w", err)
	}
	if len(ts) == limit {
		last := ts[len(ts)-1]
		next = &TenantKey{TenantID: last.TenantID, Integration: last.Integration}
	}
	return ts, next, nil
}
