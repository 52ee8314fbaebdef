// Package mapping records which partner object each of our objects is:
// (integration, entity type, tenant, our id) → partner id, with a state
// (creating, active, deleting, deleted), so updates and deletes reach the
// right partner object (guarantee 3). Store is the Postgres-backed store
// with a bounded cache; it is safe for concurrent use.
//
// Creates follow an intent protocol: Intend before the partner call
// (state creating, with the idempotency key), Activate with the partner id
// after it. A retry after a crash in between finds the intent and sends
// the same key.
package mapping

import (
	"context"
	"errors"
	"fmt"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferry-cdc/ferry/internal/groupcommit"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

// State is a mapping's state.
type State string

// Mapping states.
const (
	Creating State = "creating"
	Active   State = "active"
	Deleting State = "deleting"
	Deleted  State = "deleted"
)

// Key names one of our objects in one integration.
type Key struct {
	Integration, EntityType, TenantID, LocalID string
}

// Mapping is one row.
type Mapping struct {
	Key
	RemoteID       string
	State          State
	IdempotencyKey string
	UpdatedAt      time.Time
}

// ErrNotFound means no mapping exists for the key.
var ErrNotFound = errors.New("mapping: not found")

// Store is the Postgres-backed mapping store.
type Store struct {
	pool  *pgxpool.Pool
	b     *groupcommit.Batcher     // nil: each statement on its own
	cache *lru.Cache[Key, Mapping] // active mappings only
}

// Option configures a Store.
type Option func(*Store)

// WithGroupCommit runs the store's reads and writes of single mappings
// (Get's and Fresh's reads, Intend, Activate, MarkDeleting, MarkDeleted)
// in b's batches, with the other hot writes that join them (the delivery
// log's), instead of one statement and commit each (the default). Each
// call still returns only after its write committed, so the intent
// protocol holds as with single statements.
func WithGroupCommit(b *groupcommit.Batcher) Option { return func(s *Store) { s.b = b } }

// New returns a store caching up to size active mappings (0: 100,000).
func New(pool *pgxpool.Pool, size int, opts ...Option) (*Store, error) {
	if size == 0 {
		size = 100_000
	}
	c, err := lru.New[Key, Mapping](size)
	if err != nil {
		return nil, fmt.Errorf("mapping: cache: %w", err)
	}
	s := &Store{pool: pool, cache: c}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// The statements over arrays ($1..$4 the keys' columns, one element per
// mapping), so that many run as one in a group commit; a store without
// one runs them with one element each. Each returns the key columns of
// the rows it read or wrote first.
const keyArrays = `unnest($1::text[], $2::text[], $3::text[], $4::text[]`

// intentConflict ends an intent's INSERT: an intent on a deleted mapping
// starts over (new key, no partner id); on any other it leaves the row as
// it is and returns it.
const intentConflict = `ON CONFLICT (integration, entity_type, tenant_id, local_id) DO UPDATE
			SET state = CASE WHEN m.state = 'deleted' THEN 'creating' ELSE m.state END,
			    idempotency_key = CASE WHEN m.state = 'deleted' THEN EXCLUDED.idempotency_key ELSE m.idempotency_key END,
			    remote_id = CASE WHEN m.state = 'deleted' THEN NULL ELSE m.remote_id END,
			    updated_at = now()
		RETURNING m.integration, m.entity_type, m.tenant_id, m.local_id, m.remote_id, m.state, m.idempotency_key, m.updated_at`

var (
	freshStmt = &groupcommit.Stmt{Name: "mapping: get", Keys: 4, Args: keyArgs, SQL: `SELECT m.integration, m.entity_type, m.tenant_id, m.local_id,
			m.remote_id, m.state, m.idempotency_key, m.updated_at
		FROM ` + keyArrays + `) AS u(integration, entity_type, tenant_id, local_id)
		JOIN ferry.mapping m ON m.integration = u.integration AND m.entity_type = u.entity_type
			AND m.tenant_id = u.tenant_id AND m.local_id = u.local_id`}
	intendStmt = &groupcommit.Stmt{Name: "mapping: intend", Keys: 4, Args: valueArgs,
		SQL: `INSERT INTO ferry.mapping AS m (integration, entity_type, tenant_id, local_id, state, idempotency_key)
		SELECT u.integration, u.entity_type, u.tenant_id, u.local_id, 'creating', u.v
		FROM ` + keyArrays + `, $5::text[]) AS u(integration, entity_type, tenant_id, local_id, v)
		` + intentConflict}
	// The intent a claim carries (Deferred.IntendOnClaim): the same
	// write as intendStmt, made only when the delivery it is for ($6,
	// the event id) is in flight with no completed step and its first
	// idempotency key, as the claim in the same transaction leaves a
	// delivery whose first call is a create under that key. Otherwise
	// (a delivery that is final, resumes after steps, or was redriven
	// under a new key) it writes nothing, and the delivery writes its
	// own intent if it needs one. (A delivery in flight in another live
	// process, which the claim could not take, gets the intent that
	// process writes itself: the same key.)
	intendOnClaimStmt = &groupcommit.Stmt{Name: "mapping: intend on claim", Keys: 4, Args: intendOnClaimArgs,
		SQL: `INSERT INTO ferry.mapping AS m (integration, entity_type, tenant_id, local_id, state, idempotency_key)
		SELECT u.integration, u.entity_type, u.tenant_id, u.local_id, 'creating', u.v
		FROM ` + keyArrays + `, $5::text[], $6::text[]) AS u(integration, entity_type, tenant_id, local_id, v, event_id)
		JOIN ferry.delivery d ON d.integration = u.integration AND d.event_id = u.event_id
		WHERE d.state = 'in_flight' AND d.key_generation = 0 AND COALESCE(jsonb_array_length(d.steps), 0) = 0
		` + intentConflict}
	activateStmt = &groupcommit.Stmt{Name: "mapping: activate", Keys: 4, Args: valueArgs,
		SQL: `INSERT INTO ferry.mapping AS m (integration, entity_type, tenant_id, local_id, remote_id, state)
		SELECT u.integration, u.entity_type, u.tenant_id, u.local_id, u.v, 'active'
		FROM ` + keyArrays + `, $5::text[]) AS u(integration, entity_type, tenant_id, local_id, v)
		ON CONFLICT (integration, entity_type, tenant_id, local_id) DO UPDATE SET remote_id = EXCLUDED.remote_id, state = 'active', updated_at = now()
		RETURNING m.integration, m.entity_type, m.tenant_id, m.local_id, m.idempotency_key, m.updated_at`}
	markDeletingStmt = &groupcommit.Stmt{Name: "mapping: mark deleting", Keys: 4, Args: keyArgs, SQL: `UPDATE ferry.mapping AS m
		SET state = 'deleting', updated_at = now()
		FROM ` + keyArrays + `) AS u(integration, entity_type, tenant_id, local_id)
		WHERE m.integration = u.integration AND m.entity_type = u.entity_type AND m.tenant_id = u.tenant_id
			AND m.local_id = u.local_id AND m.state = 'active'
		RETURNING m.integration, m.entity_type, m.tenant_id, m.local_id`}
	markDeletedStmt = &groupcommit.Stmt{Name: "mapping: mark deleted", Keys: 4, Args: keyArgs, SQL: `UPDATE ferry.mapping AS m
		SET state = 'deleted', updated_at = now()
		FROM ` + keyArrays + `) AS u(integration, entity_type, tenant_id, local_id)
		WHERE m.integration = u.integration AND m.entity_type = u.entity_type AND m.tenant_id = u.tenant_id
			AND m.local_id = u.local_id AND m.state <> 'deleted'
		RETURNING m.integration, m.entity_type, m.tenant_id, m.local_id`}
)

func keyArgs(ops []*groupcommit.Op) []any {
	return []any{groupcommit.KeyColumn(ops, 0), groupcommit.KeyColumn(ops, 1), groupcommit.KeyColumn(ops, 2), groupcommit.KeyColumn(ops, 3)}
}

// valueArgs is the keys and one text value per mapping (the op's Row):
// the idempotency key of an intent, the partner id of an activation.
func valueArgs(ops []*groupcommit.Op) []any {
	v := make([]string, len(ops))
	for i, o := range ops {
		v[i] = o.Row.(string)
	}
	return append(keyArgs(ops), v)
}

// intendOnClaimArgs is valueArgs and the event ids of the deliveries.
func intendOnClaimArgs(ops []*groupcommit.Op) []any {
	v, ev := make([]string, len(ops)), make([]string, len(ops))
	for i, o := range ops {
		r := o.Row.(*claimIntent)
		v[i], ev[i] = r.key, r.eventID
	}
	return append(keyArgs(ops), v, ev)
}

func op(stmt *groupcommit.Stmt, k Key, row any, out ...any) *groupcommit.Op {
	return &groupcommit.Op{Stmt: stmt, Key: []string{k.Integration, k.EntityType, k.TenantID, k.LocalID}, Row: row, Out: out}
}

// do runs o in a group commit, or on its own without one.
func (s *Store) do(ctx context.Context, o *groupcommit.Op) error {
	if s.b != nil {
		return s.b.Do(ctx, o)
	}
	return groupcommit.Exec(ctx, s.pool, o)
}

// Get returns the mapping for k, or ErrNotFound. Active mappings are served
// from the cache; every write through this store updates or drops the
// cached entry, so a deleted mapping is never returned as active.
func (s *Store) Get(ctx context.Context, k Key) (Mapping, error) {
	if m, ok := s.cache.Get(k); ok {
		return m, nil
	}
	return s.Fresh(ctx, k)
}

// Fresh reads k from the database, bypassing the cache (and refreshing
// it): for mappings another process may have written.
func (s *Store) Fresh(ctx context.Context, k Key) (Mapping, error) {
	m := Mapping{Key: k}
	var remote *string
	o := op(freshStmt, k, nil, &remote, &m.State, &m.IdempotencyKey, &m.UpdatedAt)
	if err := s.do(ctx, o); err != nil {
		return Mapping{}, fmt.Errorf("mapping: get %+v: %w", k, err)
	}
	if !o.Applied {
		s.cache.Remove(k)
		return Mapping{}, ErrNotFound
	}
	if remote != nil {
		m.RemoteID = *remote
	}
	if m.State == Active {
		s.cache.Add(k, m)
	} else {
		s.cache.Remove(k)
	}
	return m, nil
}

// Intend records the intent to create k's partner object with the given
// idempotency key, and returns the mapping as it now stands: a new
// intent, or the existing row (an earlier intent keeps its key, so a
// retry sends the same one; an active mapping means nothing to create).
// When it returns nil the intent is committed.
func (s *Store) Intend(ctx context.Context, k Key, idempotencyKey string) (Mapping, error) {
	in := newIntent(intendStmt, k, idempotencyKey)
	if err := s.do(ctx, in.op); err != nil {
		return Mapping{}, fmt.Errorf("mapping: intend %+v: %w", k, err)
	}
	if !in.op.Applied {
		return Mapping{}, fmt.Errorf("mapping: intend %+v: no row returned", k)
	}
	s.cache.Remove(k)
	return in.mapping(), nil
}

// intent is an intent's write and the mapping it returns.
type intent struct {
	op     *groupcommit.Op
	m      Mapping
	remote *string
}

func newIntent(stmt *groupcommit.Stmt, k Key, row any) *intent {
	in := &intent{m: Mapping{Key: k}}
	in.op = op(stmt, k, row, &in.remote, &in.m.State, &in.m.IdempotencyKey, &in.m.UpdatedAt)
	return in
}

// mapping is the mapping the write returned.
func (in *intent) mapping() Mapping {
	m := in.m
	if in.remote != nil {
		m.RemoteID = *in.remote
	}
	return m
}

// Activate records the partner id of k after a successful create. When
// it returns nil the partner id is committed.
func (s *Store) Activate(ctx context.Context, k Key, remoteID string) (Mapping, error) {
	a, err := newActivation(k, remoteID)
	if err != nil {
		return Mapping{}, err
	}
	if err := s.do(ctx, a.op); err != nil {
		return Mapping{}, fmt.Errorf("mapping: activate %+v: %w", k, err)
	}
	if !a.op.Applied {
		return Mapping{}, fmt.Errorf("mapping: activate %+v: no row returned", k)
	}
	s.cache.Add(k, a.m)
	return a.m, nil
}

// activation is an Activate's write and the mapping it makes, filled by
// the write's returned row.
type activation struct {
	op *groupcommit.Op
	m  Mapping
}

func newActivation(k Key, remoteID string) (*activation, error) {
	if remoteID == "" {
		return nil, errors.New("mapping: activate needs the partner id")
	}
	a := &activation{m: Mapping{Key: k, RemoteID: remoteID, State: Active}}
	a.op = op(activateStmt, k, remoteID, &a.m.IdempotencyKey, &a.m.UpdatedAt)
	return a, nil
}

// MarkDeleted records that k's partner object was deleted. It reports
// false when there was nothing mapped (a recorded no-op for the caller).
func (s *Store) MarkDeleted(ctx context.Context, k Key) (bool, error) {
	s.cache.Remove(k) // first: never serve a deleted id, even if the write fails
	o := op(markDeletedStmt, k, nil)
	if err := s.do(ctx, o); err != nil {
		return false, fmt.Errorf("mapping: delete %+v: %w", k, err)
	}
	return o.Applied, nil
}

// MarkDeleting records that k's partner object is being deleted; the
// partner id stays for the retry.
func (s *Store) MarkDeleting(ctx context.Context, k Key) error {
	s.cache.Remove(k)
	if err := s.do(ctx, op(markDeletingStmt, k, nil)); err != nil {
		return fmt.Errorf("mapping: mark deleting %+v: %w", k, err)
	}
	return nil
}

// Purge empties the cache. The sink calls it when partition ownership
// changes: another process may have written mappings of tenants this one
// owned before.
func (s *Store) Purge() { s.cache.Purge() }

// PurgeTenant drops a tenant's cached mappings of one integration: the
// sink calls it when the tenant is switched on or off, since the
// rollback that goes with it writes from another process.
func (s *Store) PurgeTenant(integration, tenant string) {
	for _, k := range s.cache.Keys() {
		if k.Integration == integration && k.TenantID == tenant {
			s.cache.Remove(k)
		}
	}
}

// For returns the store scoped to one integration and tenant, as the
// connector contract's Mappings.
func (s *Store) For(integration, tenant string) connector.Mappings {
	return scoped{s: s, integration: integration, tenant: tenant}
}

// forTenantSQL reads a tenant's mappings of one integration ($1 the
// tenant, $2 the integration) by the primary key's leading columns.
const forTenantSQL = `SELECT entity_type, local_id, COALESCE(remote_id, ''), state, idempotency_key, updated_at
		FROM ferry.mapping WHERE tenant_id = $1 AND integration = $2 AND state IN ('creating', 'active', 'deleting')
		ORDER BY created_at DESC, entity_type, local_id`

// ForTenant lists a tenant's mappings of one integration that hold a
// partner object (creating, active or deleting), newest first: a rollback deletes
// children (created after their parents) before their parents.
func (s *Store) ForTenant(ctx context.Context, integration, tenant string) ([]Mapping, error) {
	rows, err := s.pool.Query(ctx, forTenantSQL, tenant, integration)
	if err != nil {
		return nil, fmt.Errorf("mapping: list %s/%s: %w", integration, tenant, err)
	}
	defer rows.Close()
	var out []Mapping
	for rows.Next() {
		m := Mapping{Key: Key{Integration: integration, TenantID: tenant}}
		if err := rows.Scan(&m.EntityType, &m.LocalID, &m.RemoteID, &m.State, &m.IdempotencyKey, &m.UpdatedAt); err != nil {
			return nil, fmt.Errorf("mapping: list %s/%s: %w", integration, tenant, err)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Deferred is the store scoped to one integration and tenant for one
// delivery, whose Activate is not written at once: the sink commits the
// partner ids with the delivery's outcome, in the same transaction
// (Pending, then Settle), instead of in a transaction of their own just
// before it. A create then costs one commit less, and a delivery is never
// recorded without the partner ids it produced, nor the ids without the
// delivery. Every other call writes what is pending first, so the
// delivery's own reads and writes stay in order. Without group commit
// Activate writes at once, as For's store does.
type Deferred struct {
	scoped
	pending []*activation
	claimed *claimIntent // written with the claim, for Intend to answer with
}

// claimIntent is an intent written in the transaction that claims its
// delivery.
type claimIntent struct {
	*intent
	key, eventID string
}

// IntendOnClaim returns the write of in, to run in the transaction that
// claims the delivery of event eventID (delivery.Log.Begin). It writes
// the intent only when the claim leaves a first attempt with nothing
// done, under the first attempt's key (see intendOnClaimStmt); the
// delivery's Intend with in's arguments is then answered by this write
// instead of writing again. Nil without group commit: the intent is
// written by Intend, on its own.
func (d *Deferred) IntendOnClaim(eventID string, in connector.Intent) *groupcommit.Op {
	if d.s.b == nil {
		return nil
	}
	c := &claimIntent{key: in.IdempotencyKey, eventID: eventID}
	c.intent = newIntent(intendOnClaimStmt, d.key(in.EntityType, in.LocalID), c)
	d.claimed = c
	return c.op
}

// Deferred returns a Deferred store for one delivery of the tenant.
func (s *Store) Deferred(integration, tenant string) *Deferred {
	return &Deferred{scoped: scoped{s: s, integration: integration, tenant: tenant}}
}

// Activate records the partner id, to be committed with Pending's writes.
func (d *Deferred) Activate(ctx context.Context, entityType, localID, remoteID string) error {
	if d.s.b == nil {
		return d.scoped.Activate(ctx, entityType, localID, remoteID)
	}
	a, err := newActivation(d.key(entityType, localID), remoteID)
	if err != nil {
		return err
	}
	d.pending = append(d.pending, a)
	return nil
}

// Pending are the writes Activate has not committed yet, for the
// delivery's outcome to carry (delivery.Log.Finish); call Settle once
// they ran.
func (d *Deferred) Pending() []*groupcommit.Op {
	ops := make([]*groupcommit.Op, len(d.pending))
	for i, p := range d.pending {
		ops[i] = p.op
	}
	return ops
}

// Settle caches the pending writes that committed and forgets them all.
func (d *Deferred) Settle() {
	for _, p := range d.pending {
		if p.op.Err == nil && p.op.Applied {
			d.s.cache.Add(p.m.Key, p.m)
		}
	}
	d.pending = nil
}

// Flush commits the pending writes now, in a transaction of their own.
func (d *Deferred) Flush(ctx context.Context) error {
	if len(d.pending) == 0 {
		return nil
	}
	ops := d.Pending()
	err := d.s.b.Do(ctx, ops...)
	for _, o := range ops {
		if err == nil && !o.Applied {
			err = errors.New("no row returned")
		}
	}
	d.Settle()
	if err != nil {
		return fmt.Errorf("mapping: activate (%d partner ids): %w", len(ops), err)
	}
	return nil
}

func (d *Deferred) Get(ctx context.Context, entityType, localID string) (connector.Mapping, error) {
	if err := d.Flush(ctx); err != nil {
		return connector.Mapping{}, err
	}
	return d.scoped.Get(ctx, entityType, localID)
}

// Cached reports false while writes are pending: the caller's next call
// (Intend, Get) writes them first.
func (d *Deferred) Cached(entityType, localID string) (connector.Mapping, bool) {
	if len(d.pending) > 0 {
		return connector.Mapping{}, false
	}
	return d.scoped.Cached(entityType, localID)
}

func (d *Deferred) Fresh(ctx context.Context, entityType, localID string) (connector.Mapping, error) {
	if err := d.Flush(ctx); err != nil {
		return connector.Mapping{}, err
	}
	return d.scoped.Fresh(ctx, entityType, localID)
}

// Intend answers with the intent written with the claim
// (IntendOnClaim) when that wrote this one; otherwise it writes it.
func (d *Deferred) Intend(ctx context.Context, entityType, localID, idempotencyKey string) (connector.Mapping, error) {
	if c := d.claimed; c != nil {
		d.claimed = nil // one delivery, one intent written first
		if c.op.Err == nil && c.op.Applied && c.key == idempotencyKey && c.m.Key == d.key(entityType, localID) {
			d.s.cache.Remove(c.m.Key)
			return conv(c.mapping()), nil
		}
	}
	if err := d.Flush(ctx); err != nil {
		return connector.Mapping{}, err
	}
	return d.scoped.Intend(ctx, entityType, localID, idempotencyKey)
}

func (d *Deferred) MarkDeleting(ctx context.Context, entityType, localID string) error {
	if err := d.Flush(ctx); err != nil {
		return err
	}
	return d.scoped.MarkDeleting(ctx, entityType, localID)
}

func (d *Deferred) MarkDeleted(ctx context.Context, entityType, localID string) (bool, error) {
	if err := d.Flush(ctx); err != nil {
		return false, err
	}
	return d.scoped.MarkDeleted(ctx, entityType, localID)
}

type scoped struct {
	s                   *Store
	integration, tenant string
}

func (c scoped) key(entityType, localID string) Key {
	return Key{Integration: c.integration, EntityType: entityType, TenantID: c.tenant, LocalID: localID}
}

func conv(m Mapping) connector.Mapping {
	return connector.Mapping{EntityType: m.EntityType, LocalID: m.LocalID, RemoteID: m.RemoteID, State: string(m.State), IdempotencyKey: m.IdempotencyKey}
}

func (c scoped) Get(ctx context.Context, entityType, localID string) (connector.Mapping, error) {
	m, err := c.s.Get(ctx, c.key(entityType, localID))
	if errors.Is(err, ErrNotFound) {
		return connector.Mapping{}, connector.ErrNoMapping
	}
	return conv(m), err
}

// Cached returns the mapping from the cache alone (an active mapping),
// false when the cache holds none: the HTTP connector's create writes its
// intent at once instead of reading first.
func (c scoped) Cached(entityType, localID string) (connector.Mapping, bool) {
	m, ok := c.s.cache.Get(c.key(entityType, localID))
	return conv(m), ok
}

func (c scoped) Fresh(ctx context.Context, entityType, localID string) (connector.Mapping, error) {
	m, err := c.s.Fresh(ctx, c.key(entityType, localID))
	if errors.Is(err, ErrNotFound) {
		return connector.Mapping{}, connector.ErrNoMapping
	}
	return conv(m), err
}

func (c scoped) Intend(ctx context.Context, entityType, localID, idempotencyKey string) (connector.Mapping, error) {
	m, err := c.s.Intend(ctx, c.key(entityType, localID), idempotencyKey)
	return conv(m), err
}

func (c scoped) Activate(ctx context.Context, entityType, localID, remoteID string) error {
	_, err := c.s.Activate(ctx, c.key(entityType, localID), remoteID)
	return err
}

func (c scoped) MarkDeleting(ctx context.Context, entityType, localID string) error {
	return c.s.MarkDeleting(ctx, c.key(entityType, localID))
}

func (c scoped) MarkDeleted(ctx context.Context, entityType, localID string) (bool, error) {
	return c.s.MarkDeleted(ctx, c.key(entityType, localID))
}
