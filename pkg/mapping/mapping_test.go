package mapping

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferry-cdc/ferry/internal/pgdb"
	"github.com/ferry-cdc/ferry/internal/pgtest"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func newStore(t *testing.T, url string) *Store {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s, err := New(pool, 10)
	if err != nil {
		t.Fatal(err)
	}
	return s
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
}

// Two processes: one's cache may hold a mapping the other deleted; Purge
// (called on partition ownership changes) makes it read the truth.
func TestPurgeDropsMappingsWrittenElsewhere(t *testing.T) {
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
}

// A delete in progress keeps the partner id (for the retry) and is never
// served from the cache; the scoped store and ForTenant see it.
func TestDeletingKeepsThePartnerIDAndLeavesTheCache(t *testing.T) {
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
}
