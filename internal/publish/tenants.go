package publish

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Tenants tracks, per tenant, the commit time of its newest published
// event and how many were published, for `cdc status` and the admin API.
// Memory is bounded by the tenants active lately, not by every tenant
// ever seen: a tenant idle for IdleAfter whose counts are in
// ferry.cdc_tenant is dropped at the next successful Flush (the table
// keeps its totals; it comes back if it publishes again). Safe for
// concurrent use.
type Tenants struct {
	mu sync.Mutex
	m  map[string]*TenantStat
	// IdleAfter is how long a flushed tenant stays in memory without
	// publishing. Default 10m.
	IdleAfter time.Duration
	now       func() time.Time
}

// TenantStat is one tenant's published events.
type TenantStat struct {
	TenantID     string    `json:"tenant_id"`
	LastCommitAt time.Time `json:"last_commit_at"`
	Events       int64     `json:"events"`
	dirty        bool
	flushed      int64     // Events already added to ferry.cdc_tenant
	seen         time.Time // when this process last published for the tenant
}

// NewTenants returns an empty tracker.
func NewTenants() *Tenants {
	return &Tenants{m: map[string]*TenantStat{}, IdleAfter: 10 * time.Minute, now: time.Now}
}

// observe records one event of tenant, committed at commit, that Kafka
// acknowledged (called from franz-go's promise goroutine). Invalid events
// are dead-lettered, not observed.
func (t *Tenants) observe(tenant string, commit time.Time) {
	if tenant == "" {
		return
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[tenant]
	if s == nil {
		s = &TenantStat{TenantID: tenant}
		t.m[tenant] = s
	}
	if commit.After(s.LastCommitAt) {
		s.LastCommitAt = commit
	}
	s.dirty, s.seen = true, now
	s.Events++
}

// Snapshot returns the tenants active lately (see Tenants), newest first.
func (t *Tenants) Snapshot() []TenantStat {
	t.mu.Lock()
	out := make([]TenantStat, 0, len(t.m))
	for _, s := range t.m {
		out = append(out, *s)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].LastCommitAt.After(out[j].LastCommitAt) })
	return out
}

// Flush writes the tenants changed since the last flush to
// ferry.cdc_tenant for slot. After a failed flush the next one writes
// the same changes again.
func (t *Tenants) Flush(ctx context.Context, conn *pgx.Conn, slot string) error {
	type change struct {
		id    string
		last  time.Time
		delta int64
		upto  int64
	}
	t.mu.Lock()
	var changed []change
	for _, s := range t.m {
		if s.dirty {
			changed = append(changed, change{s.TenantID, s.LastCommitAt, s.Events - s.flushed, s.Events})
			s.dirty = false
		}
	}
	t.mu.Unlock()
	if len(changed) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, c := range changed {
		b.Queue(`INSERT INTO ferry.cdc_tenant (slot_name, tenant_id, last_commit_at, events) VALUES ($1, $2, $3, $4)
			ON CONFLICT (slot_name, tenant_id) DO UPDATE SET last_commit_at = GREATEST(ferry.cdc_tenant.last_commit_at, $3),
				events = ferry.cdc_tenant.events + $4, updated_at = now()`, slot, c.id, c.last, c.delta)
	}
	err := conn.SendBatch(ctx, b).Close()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range changed {
		s := t.m[c.id]
		if err != nil {
			s.dirty = true
		} else {
			s.flushed = c.upto
		}
	}
	if err == nil {
		t.evictLocked()
	}
	return err
}

// evictLocked drops tenants whose counts are all in the table and that
// have been idle for IdleAfter.
func (t *Tenants) evictLocked() {
	cutoff := t.now().Add(-t.IdleAfter)
	for id, s := range t.m {
		if !s.dirty && s.flushed == s.Events && s.seen.Before(cutoff) {
			delete(t.m, id)
		}
	}
}
