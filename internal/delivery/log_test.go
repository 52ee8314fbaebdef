package delivery

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferry-cdc/ferry/internal/pgdb"
	"github.com/ferry-cdc/ferry/internal/pgtest"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func newLog(t *testing.T) *Log {
	t.Helper()
	url := pgtest.New(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := pgdb.Migrate(ctx, conn); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	l, err := New(pool, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

var ev = connector.Event{ID: "e1", TenantID: "acme", EventType: "product.created", AggregateType: "product", AggregateID: "p1", Payload: []byte(`{}`)}

func TestRedeliveryOfSucceededIsNotClaimed(t *testing.T) {
	l, ctx := newLog(t), context.Background()
	a, err := l.Begin(ctx, "shop", ev, Source{Topic: "outbox.product", Offset: 7})
	if err != nil || a.Number != 1 {
		t.Fatalf("Begin = %+v, %v", a, err)
	}
	if err := l.Finish(ctx, a, Outcome{State: Succeeded, Status: 201, Calls: []connector.Call{{Method: "POST", Status: 201, RequestBody: strings.Repeat("x", 10000)}}}); err != nil {
		t.Fatal(err)
	}
	var nc *ErrNotClaimed
	if _, err := l.Begin(ctx, "shop", ev, Source{}); !errors.As(err, &nc) || nc.State != Succeeded {
		t.Fatalf("redelivery Begin = %v, want not claimed (succeeded)", err)
	}
	// Another integration delivers the same event independently.
	if _, err := l.Begin(ctx, "crm", ev, Source{}); err != nil {
		t.Fatalf("other integration: %v", err)
	}
	r, err := l.Get(ctx, "shop", "e1")
	if err != nil || r.Attempts != 1 || r.Status == nil || *r.Status != 201 {
		t.Fatalf("record %+v %v", r, err)
	}
}

func TestFinishIsFencedByAttempt(t *testing.T) {
	l, ctx := newLog(t), context.Background()
	first, err := l.Begin(ctx, "shop", ev, Source{})
	if err != nil {
		t.Fatal(err)
	}
	second, err := l.Begin(ctx, "shop", ev, Source{}) // a new owner takes over
	if err != nil || second.Number != 2 {
		t.Fatalf("takeover = %+v, %v", second, err)
	}
	if err := l.Finish(ctx, first, Outcome{State: Succeeded}); err == nil {
		t.Fatal("the old attempt moved the delivery forward")
	}
	if err := l.Finish(ctx, second, Outcome{State: Rejected, Status: 422, Reason: "bad sku",
		Calls: []connector.Call{{Method: "POST", Status: 422, RequestBody: strings.Repeat("x", 10000)}}}); err != nil {
		t.Fatal(err)
	}
	// A rejection keeps the bounded calls and the event for inspection.
	if r, err := l.Get(ctx, "shop", "e1"); err != nil || len(r.Calls) != 1 || len(r.Calls[0].RequestBody) > MaxCallBytes+20 || r.Calls[0].Status != 422 {
		t.Fatalf("rejected record %+v %v", r, err)
	}
	if took, err := l.Redrive(WithActor(ctx, "os:tester"), Selection{Integration: "shop", EventID: "e1"}, "fixed the sku"); err != nil ||
		len(took) != 1 || took[0].From != Rejected {
		t.Fatalf("redrive: %+v %v", took, err)
	}
	third, err := l.Begin(ctx, "shop", ev, Source{})
	if err != nil || third.Number != 3 {
		t.Fatalf("after retry: %+v %v", third, err)
	}
	if err := l.Finish(ctx, third, Outcome{State: Rejected, Status: 422, Reason: "still bad"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Skip(ctx, "shop", "e1", ""); err == nil {
		t.Fatal("skip without a reason accepted")
	}
	if err := l.Skip(ctx, "shop", "e1", "customer deleted the sku"); err != nil {
		t.Fatal(err)
	}
	var nc *ErrNotClaimed
	if _, err := l.Begin(ctx, "shop", ev, Source{}); !errors.As(err, &nc) || nc.State != Skipped {
		t.Fatalf("skipped delivery claimed again: %v", err)
	}
	var acts int
	if err := l.pool.QueryRow(ctx, `SELECT count(*) FROM ferry.operator_action WHERE event_id = 'e1'`).Scan(&acts); err != nil || acts != 2 {
		t.Fatalf("operator acts recorded: %d %v", acts, err)
	}
}
