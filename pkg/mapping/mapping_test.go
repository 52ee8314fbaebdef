package mapping

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/groupcommit"
	"github.com/ferry-cdc/ferry/internal/pgdb"
	"github.com/ferry-cdc/ferry/internal/pgtest"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// modes runs a test against both kinds of store: one statement per
// call (an operator command's), and in a group commit (the sink's).
func modes(t *testing.T, test func(t *testing.T, newStore func(t *testing.T, url string) *Store)) {
	for _, gc := range []bool{false, true} {
		name := "Statements"
		if gc {
			name = "GroupCommit"
		}
		t.Run(name, func(t *testing.T) {
			test(t, func(t *testing.T, url string) *Store {
				t.Helper()
				pool, err := pgxpool.New(context.Background(), url)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(pool.Close)
				var opts []Option
				if gc {
					b, err := groupcommit.New(pool, 0)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(b.Close) // before the pool closes
					opts = append(opts, WithGroupCommit(b))
				}
				s, err := New(pool, 10, opts...)
				if err != nil {
					t.Fatal(err)
				}
				return s
			})
		})
	}
}

func migrated(t *testing.T) string {
	t.Helper()
	url := pgtest.New(t)
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := pgdb.Migrate(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
	return url
}

func TestIntentActivateDeleteAndRecreate(t *testing.T) {
	modes(t, func(t *testing.T, newStore func(t *testing.T, url string) *Store) {
		ctx := context.Background()
		s := newStore(t, migrated(t))
		k := Key{"shop", "product", "acme", "sku-1"}
		if _, err := s.Get(ctx, k); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get before anything = %v", err)
		}
		m, err := s.Intend(ctx, k, "shop:e1")
		if err != nil || m.State != Creating || m.IdempotencyKey != "shop:e1" {
			t.Fatalf("Intend = %+v, %v", m, err)
		}
		// A retry after a crash between the partner's success and our write
		// finds the intent and its key: the same key goes to the partner.
		if m, err := s.Intend(ctx, k, "shop:e1-retry"); err != nil || m.State != Creating || m.IdempotencyKey != "shop:e1" {
			t.Fatalf("second Intend = %+v, %v; want the first key kept", m, err)
		}
		if _, err := s.Activate(ctx, k, "item_42"); err != nil {
			t.Fatal(err)
		}
		if m, err := s.Get(ctx, k); err != nil || m.State != Active || m.RemoteID != "item_42" {
			t.Fatalf("Get after Activate = %+v, %v", m, err)
		}
		if m, err := s.Intend(ctx, k, "shop:e9"); err != nil || m.State != Active || m.RemoteID != "item_42" {
			t.Fatalf("Intend on an active mapping = %+v, %v; want it untouched", m, err)
		}
		if ok, err := s.MarkDeleted(ctx, k); err != nil || !ok {
			t.Fatalf("MarkDeleted = %v, %v", ok, err)
		}
		if m, err := s.Get(ctx, k); err != nil || m.State != Deleted {
			t.Fatalf("Get after delete = %+v, %v: a deleted mapping must not be served as active", m, err)
		}
		if ok, err := s.MarkDeleted(ctx, Key{"shop", "product", "acme", "never"}); err != nil || ok {
			t.Fatalf("delete of an unmapped object = %v, %v; want a no-op", ok, err)
		}
		if m, err := s.Intend(ctx, k, "shop:e20"); err != nil || m.State != Creating || m.RemoteID != "" || m.IdempotencyKey != "shop:e20" {
			t.Fatalf("Intend after delete = %+v, %v; want a fresh intent", m, err)
		}
	})
}

// Two processes: one's cache may hold a mapping the other deleted; Purge
// (called on partition ownership changes) makes it read the truth.
func TestPurgeDropsMappingsWrittenElsewhere(t *testing.T) {
	modes(t, func(t *testing.T, newStore func(t *testing.T, url string) *Store) {
		ctx := context.Background()
		url := migrated(t)
		a, b := newStore(t, url), newStore(t, url)
		k := Key{"shop", "product", "acme", "sku-1"}
		if _, err := a.Activate(ctx, k, "item_1"); err != nil {
			t.Fatal(err)
		}
		if m, err := a.Get(ctx, k); err != nil || m.State != Active {
			t.Fatal(m, err)
		}
		if _, err := b.MarkDeleted(ctx, k); err != nil {
			t.Fatal(err)
		}
		a.Purge()
		if m, err := a.Get(ctx, k); err != nil || m.State != Deleted {
			t.Fatalf("after Purge: %+v %v", m, err)
		}
	})
}

// A delete in progress keeps the partner id (for the retry) and is never
// served from the cache; the scoped store and ForTenant see it.
func TestDeletingKeepsThePartnerIDAndLeavesTheCache(t *testing.T) {
	modes(t, func(t *testing.T, newStore func(t *testing.T, url string) *Store) {
		ctx := context.Background()
		s := newStore(t, migrated(t))
		m := s.For("shop", "acme")
		if err := m.Activate(ctx, "product", "p1", "items_7"); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Get(ctx, "product", "p1"); err != nil { // cached now
			t.Fatal(err)
		}
		if err := m.MarkDeleting(ctx, "product", "p1"); err != nil {
			t.Fatal(err)
		}
		got, err := m.Get(ctx, "product", "p1")
		if err != nil || got.State != "deleting" || got.RemoteID != "items_7" || got.Active() {
			t.Fatalf("after MarkDeleting: %+v, %v", got, err)
		}
		list, err := s.ForTenant(ctx, "shop", "acme")
		if err != nil || len(list) != 1 || list[0].State != Deleting {
			t.Fatalf("ForTenant: %+v, %v", list, err)
		}
		if ok, err := m.MarkDeleted(ctx, "product", "p1"); !ok || err != nil {
			t.Fatalf("MarkDeleted: %v %v", ok, err)
		}
		if list, _ := s.ForTenant(ctx, "shop", "acme"); len(list) != 0 {
			t.Fatalf("a deleted mapping is still listed: %+v", list)
		}
		if _, err := m.Get(ctx, "product", "nope"); !errors.Is(err, connector.ErrNoMapping) {
			t.Fatalf("missing mapping: %v", err)
		}
	})
}

// groupCommitted is a store in a group commit over a fresh migrated
// database, with its batcher and pool.
func groupCommitted(t *testing.T) (*Store, *groupcommit.Batcher, *pgxpool.Pool, string) {
	t.Helper()
	url := migrated(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	b, err := groupcommit.New(pool, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close) // before the pool closes
	s, err := New(pool, 10, WithGroupCommit(b))
	if err != nil {
		t.Fatal(err)
	}
	return s, b, pool, url
}

// probeStmt writes to outcome_probe (probeTable): an outcome that
// commits, or with id "bad" one the database refuses.
var probeStmt = &groupcommit.Stmt{Name: "probe", Keys: 1, Args: func(ops []*groupcommit.Op) []any { return []any{groupcommit.KeyColumn(ops, 0)} },
	SQL: `INSERT INTO outcome_probe SELECT * FROM unnest($1::text[]) RETURNING id`}

const probeTable = `CREATE TABLE outcome_probe (id text PRIMARY KEY CHECK (id <> 'bad'))`

// In a group commit, many lanes' intents and partner ids share batches,
// and each is committed when its call returns: another connection reads
// it at once (the intent must be in the database before the partner
// call). A write that fails fails alone: its batch's others still land.
func TestGroupCommitWritesAreCommittedWhenTheCallReturns(t *testing.T) {
	ctx := context.Background()
	s, _, pool, url := groupCommitted(t)
	other, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	var otherMu sync.Mutex
	read := func(k Key) (state, key, remote string, err error) {
		otherMu.Lock()
		defer otherMu.Unlock()
		err = other.QueryRow(ctx, `SELECT state, idempotency_key, COALESCE(remote_id, '') FROM ferry.mapping
			WHERE integration = $1 AND entity_type = $2 AND tenant_id = $3 AND local_id = $4`,
			k.Integration, k.EntityType, k.TenantID, k.LocalID).Scan(&state, &key, &remote)
		return state, key, remote, err
	}
	if _, err := pool.Exec(ctx, `CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.local_id = 'bad' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER refuse BEFORE INSERT ON ferry.mapping FOR EACH ROW EXECUTE FUNCTION refuse();`); err != nil {
		t.Fatal(err)
	}
	const n = 64
	errs := make(chan error, n+1)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			k := Key{"shop", "product", fmt.Sprintf("t%d", i%8), fmt.Sprintf("p%d", i)}
			idem := fmt.Sprintf("shop:e%d:item", i)
			if m, err := s.Intend(ctx, k, idem); err != nil || m.State != Creating || m.IdempotencyKey != idem {
				errs <- fmt.Errorf("intend %v: %+v, %v", k, m, err)
				return
			}
			if state, key, _, err := read(k); err != nil || state != "creating" || key != idem {
				errs <- fmt.Errorf("%v right after Intend returned: %s %s %v; want the intent committed", k, state, key, err)
				return
			}
			if _, err := s.Activate(ctx, k, fmt.Sprintf("item_%d", i)); err != nil {
				errs <- err
				return
			}
			if state, _, remote, err := read(k); err != nil || state != "active" || remote != fmt.Sprintf("item_%d", i) {
				errs <- fmt.Errorf("%v right after Activate returned: %s %s %v; want it active", k, state, remote, err)
			}
		})
	}
	wg.Go(func() {
		if _, err := s.Intend(ctx, Key{"shop", "product", "t0", "bad"}, "shop:bad"); err == nil {
			errs <- errors.New("an intent the database refused succeeded")
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A Deferred store's Activate is written with the writes the caller
// runs its Pending ops with (the delivery's outcome), in one transaction:
// nothing before, and nothing if that transaction fails; any other call
// writes it first, so the delivery's own reads see it.
func TestDeferredActivateCommitsWithTheOutcome(t *testing.T) {
	ctx := context.Background()
	s, b, pool, _ := groupCommitted(t)
	state := func(local string) string {
		var st string
		if err := pool.QueryRow(ctx, `SELECT state FROM ferry.mapping WHERE integration = 'shop' AND local_id = $1`, local).Scan(&st); err != nil {
			return "none"
		}
		return st
	}
	if _, err := pool.Exec(ctx, probeTable); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		local, outcome, want string
	}{{"p1", "ok", "active"}, {"p2", "bad", "creating"}} {
		d := s.Deferred("shop", "acme")
		if _, err := d.Intend(ctx, "product", c.local, "shop:e:"+c.local); err != nil {
			t.Fatal(err)
		}
		if err := d.Activate(ctx, "product", c.local, "item-"+c.local); err != nil {
			t.Fatal(err)
		}
		if st := state(c.local); st != "creating" {
			t.Fatalf("%s after Activate, before the outcome: %s; want the intent only", c.local, st)
		}
		if _, ok := d.Cached("product", c.local); ok {
			t.Fatalf("%s cached before its partner id committed", c.local)
		}
		err := b.Do(ctx, append([]*groupcommit.Op{{Stmt: probeStmt, Key: []string{c.outcome}}}, d.Pending()...)...)
		d.Settle()
		if (err == nil) != (c.outcome == "ok") {
			t.Fatalf("outcome %s: %v", c.outcome, err)
		}
		if st := state(c.local); st != c.want {
			t.Fatalf("%s after an outcome that %s: %s; want %s", c.local, map[bool]string{true: "committed", false: "failed"}[err == nil], st, c.want)
		}
		if _, ok := d.Cached("product", c.local); ok != (c.want == "active") {
			t.Fatalf("%s cached: %v after the outcome; want %v", c.local, ok, c.want == "active")
		}
	}

	// Any other call writes the pending id first.
	d := s.Deferred("shop", "acme")
	if _, err := d.Intend(ctx, "product", "p3", "shop:e:p3"); err != nil {
		t.Fatal(err)
	}
	if err := d.Activate(ctx, "product", "p3", "item-p3"); err != nil {
		t.Fatal(err)
	}
	if ok, err := d.MarkDeleted(ctx, "product", "p3"); err != nil || !ok {
		t.Fatalf("MarkDeleted after a pending Activate = %v, %v", ok, err)
	}
	if st := state("p3"); st != "deleted" {
		t.Fatalf("p3 is %s, want deleted (activated first, then deleted)", st)
	}
	if len(d.Pending()) != 0 {
		t.Fatalf("%d writes still pending after a call that writes them", len(d.Pending()))
	}
}

// A batch whose one unit fails runs again unit by unit: the others
// commit whole, the failing one not at all.
func TestDeferredActivateInAFailingBatch(t *testing.T) {
	ctx := context.Background()
	s, b, pool, _ := groupCommitted(t)
	if _, err := pool.Exec(ctx, probeTable); err != nil {
		t.Fatal(err)
	}
	unit := func(outcome, local string) []*groupcommit.Op {
		d := s.Deferred("shop", "acme")
		if _, err := d.Intend(ctx, "product", local, "shop:e:"+local); err != nil {
			t.Fatal(err)
		}
		if err := d.Activate(ctx, "product", local, "item-"+local); err != nil {
			t.Fatal(err)
		}
		return append([]*groupcommit.Op{{Stmt: probeStmt, Key: []string{outcome}}}, d.Pending()...)
	}
	good, bad, alone := unit("u1", "p4"), unit("bad", "p5"), []*groupcommit.Op{{Stmt: probeStmt, Key: []string{"u2"}}}
	b.RunUnits(good, bad, alone)
	for _, o := range append(append(good, alone...), bad...) {
		want := o.Key[len(o.Key)-1] != "bad" && o.Key[len(o.Key)-1] != "p5"
		if (o.Err == nil && o.Applied) != want {
			t.Errorf("%v: applied %v, err %v; want applied %v", o.Key, o.Applied, o.Err, want)
		}
	}
	var states string
	if err := pool.QueryRow(ctx, `SELECT string_agg(local_id || '=' || state, ',' ORDER BY local_id) FROM ferry.mapping`).Scan(&states); err != nil || states != "p4=active,p5=creating" {
		t.Fatalf("mappings %s (%v); want p4 active, p5 still an intent", states, err)
	}
	var probes string
	if err := pool.QueryRow(ctx, `SELECT string_agg(id, ',' ORDER BY id) FROM outcome_probe`).Scan(&probes); err != nil || probes != "u1,u2" {
		t.Fatalf("outcomes %s (%v); want u1 and u2", probes, err)
	}
}

// A create's intent written with its delivery's claim (what the sink
// does for the HTTP connector): written only when the claim is a first
// attempt with nothing done under the first key, and then the
// delivery's Intend is answered by it, not written again.
func TestIntentWrittenWithTheClaim(t *testing.T) {
	ctx := context.Background()
	s, _, pool, _ := groupCommitted(t)
	log, err := delivery.New(pool, delivery.Options{Holder: "sink-1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(log.Close)
	key := func(id string) string { return "shop:" + id + ":item" } // the first attempt's key and the step
	intent := func(local string) (state, idemKey string) {
		if err := pool.QueryRow(ctx, `SELECT state, idempotency_key FROM ferry.mapping WHERE integration = 'shop' AND local_id = $1`, local).Scan(&state, &idemKey); err != nil {
			return "none", ""
		}
		return state, idemKey
	}
	event := func(id, local string) connector.Event {
		return connector.Event{ID: id, TenantID: "acme", EventType: "product.created", AggregateType: "product", AggregateID: local, Payload: []byte(`{}`)}
	}
	// claim begins the delivery of id with the intent of local, as the
	// sink does.
	claim := func(id, local string) (*Deferred, delivery.Attempt, error) {
		d := s.Deferred("shop", "acme")
		o := d.IntendOnClaim(id, connector.Intent{EntityType: "product", LocalID: local, IdempotencyKey: key(id)})
		if o == nil {
			t.Fatal("IntendOnClaim = nil with group commit")
		}
		a, err := log.Begin(ctx, "shop", event(id, local), delivery.Source{Topic: "t", Offset: 1}, o)
		return d, a, err
	}

	// A first attempt: the intent commits with the claim.
	d, a, err := claim("e1", "p1")
	if err != nil || a.Number != 1 {
		t.Fatalf("Begin = %+v, %v", a, err)
	}
	if st, k := intent("p1"); st != "creating" || k != key("e1") {
		t.Fatalf("p1 after the claim: %s %q; want creating under %q", st, k, key("e1"))
	}
	// Intend is answered by that write: with the row gone behind the
	// store's back, it still answers with the intent, and writes nothing.
	if _, err := pool.Exec(ctx, `DELETE FROM ferry.mapping WHERE local_id = 'p1'`); err != nil {
		t.Fatal(err)
	}
	m, err := d.Intend(ctx, "product", "p1", key("e1"))
	if err != nil || m.State != "creating" || m.IdempotencyKey != key("e1") {
		t.Fatalf("Intend after the claim = %+v, %v", m, err)
	}
	if st, _ := intent("p1"); st != "none" {
		t.Fatalf("Intend wrote the intent again (p1 is %s)", st)
	}
	// Once only: a second Intend writes.
	if _, err := d.Intend(ctx, "product", "p1", key("e1")); err != nil {
		t.Fatal(err)
	}
	if st, _ := intent("p1"); st != "creating" {
		t.Fatalf("second Intend: p1 is %s, want creating", st)
	}
	if err := log.Finish(ctx, a, delivery.Outcome{State: delivery.Succeeded, Status: 201}); err != nil {
		t.Fatal(err)
	}

	// A redelivery of a final delivery is not claimed: no intent.
	var nc *delivery.ErrNotClaimed
	if _, _, err := claim("e1", "p2"); !errors.As(err, &nc) {
		t.Fatalf("redelivery Begin = %v, want not claimed", err)
	}
	if st, _ := intent("p2"); st != "none" {
		t.Fatalf("a redelivery that was not claimed wrote an intent (p2 %s)", st)
	}

	// firstAttempt claims a first attempt, then removes the intent it
	// wrote, so that what a later claim writes shows.
	firstAttempt := func(id, local string) delivery.Attempt {
		t.Helper()
		_, a, err := claim(id, local)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `DELETE FROM ferry.mapping WHERE local_id = $1`, local); err != nil {
			t.Fatal(err)
		}
		return a
	}

	// An attempt that resumes after a completed step: no intent.
	a = firstAttempt("e3", "p3")
	if err := log.Checkpoint(ctx, a, connector.Step{Name: "item", RemoteID: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := log.Finish(ctx, a, delivery.Outcome{State: delivery.Failed, Reason: "503"}); err != nil {
		t.Fatal(err)
	}
	if _, a, err = claim("e3", "p3"); err != nil || len(a.Steps) != 1 {
		t.Fatalf("second attempt = %+v, %v; want it to resume after one step", a, err)
	}
	if st, _ := intent("p3"); st != "none" {
		t.Fatalf("an attempt resuming after a step wrote an intent (p3 %s)", st)
	}

	// A rejected delivery redriven under a new key: the claim writes no
	// intent under the first key; Intend writes the new one.
	a = firstAttempt("e4", "p4")
	if err := log.Finish(ctx, a, delivery.Outcome{State: delivery.Rejected, Status: 422, Reason: "no"}); err != nil {
		t.Fatal(err)
	}
	if _, err := log.Redrive(ctx, delivery.Selection{Integration: "shop", EventID: "e4"}, "fixed"); err != nil {
		t.Fatal(err)
	}
	d, a, err = claim("e4", "p4")
	if err != nil || a.KeyGeneration != 1 {
		t.Fatalf("redriven attempt = %+v, %v; want key generation 1", a, err)
	}
	if st, _ := intent("p4"); st != "none" {
		t.Fatalf("a redriven attempt's claim wrote an intent under the first key (p4 %s)", st)
	}
	newKey := a.IdempotencyKey() + ":item"
	if m, err := d.Intend(ctx, "product", "p4", newKey); err != nil || m.IdempotencyKey != newKey {
		t.Fatalf("Intend after a redrive = %+v, %v; want the new key %q", m, err, newKey)
	}
	if st, k := intent("p4"); st != "creating" || k != newKey {
		t.Fatalf("p4 after Intend: %s %q; want creating under %q", st, k, newKey)
	}
}

// The mapping table has one index, its primary key, which every intent
// writes; a tenant's rollback reads its mappings by the key's leading
// columns instead of a second index or the whole table.
func TestOneIndexServesWritesAndATenantsRollback(t *testing.T) {
	s, _, pool, _ := groupCommitted(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO ferry.mapping (integration, entity_type, tenant_id, local_id, remote_id, state)
		SELECT 'shop', 'product', 't' || i % 1000, 'p' || i, 'r' || i, 'active' FROM generate_series(1, 20000) i; ANALYZE ferry.mapping`); err != nil {
		t.Fatal(err)
	}
	indexes := pgtest.Texts(t, pool, `SELECT indexname FROM pg_indexes WHERE schemaname = 'ferry' AND tablename = 'mapping' ORDER BY 1`)
	if fmt.Sprint(indexes) != "[mapping_pkey]" {
		t.Fatalf("ferry.mapping's indexes: %v, want the primary key alone", indexes)
	}
	plan := strings.Join(pgtest.Texts(t, pool, "EXPLAIN "+forTenantSQL, "t7", "shop"), "\n")
	if !strings.Contains(plan, "mapping_pkey") || strings.Contains(plan, "Seq Scan") {
		t.Fatalf("a tenant's mappings are not read by the primary key:\n%s", plan)
	}
	ms, err := s.ForTenant(ctx, "shop", "t7")
	if err != nil || len(ms) != 20 {
		t.Fatalf("ForTenant(t7): %d mappings, %v; want 20", len(ms), err)
	}
}
