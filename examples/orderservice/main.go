// Command orderservice is the order service of `make demo`: the system
// that writes the outbox events (an order and its order.placed event in
// one transaction) and closes the loop by consuming Ferry's outcome
// records (topic ferry.outcomes, schemas/outcome.v1.schema.json). A
// payment partner's answer moves each order on: an authorization that
// succeeded makes it paid (with the partner's authorization id), one that
// was declined (rejected), expired or skipped makes it declined (with the
// reason).
//
// It is a small example of a consumer, not part of Ferry: it knows only
// the outcome record's published JSON. An outcome may arrive twice (the
// relay sends again after a crash): the same event id and state, so the
// update is idempotent. A redriven order (sink retry) that succeeds
// later moves from declined to paid.
//
//	orderservice --brokers 127.0.0.1:9092 --postgres-url postgres://... [--integration payments]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
)

// outcome is the part of an outcome record (outcome.v1) the order
// service reads.
type outcome struct {
	EventID       string `json:"event_id"`
	TenantID      string `json:"tenant_id"`
	Integration   string `json:"integration"`
	AggregateType string `json:"aggregate_type"`
	AggregateID   string `json:"aggregate_id"`
	EventType     string `json:"event_type"`
	State         string `json:"state"`
	Partner       struct {
		RemoteID string `json:"remote_id"`
	} `json:"partner"`
	Reason string `json:"reason"`
}

// schema is the orders table the demo writes orders to.
const schema = `CREATE TABLE IF NOT EXISTS orders (
    tenant_id  text NOT NULL,
    id         text NOT NULL,
    total      numeric NOT NULL,
    status     text NOT NULL DEFAULT 'authorizing' CHECK (status IN ('authorizing', 'paid', 'declined')),
    payment_id text,
    reason     text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id))`

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "orderservice:", err)
		os.Exit(1)
	}
}

func run() error {
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka brokers, comma-separated")
	pgURL := flag.String("postgres-url", os.Getenv("DATABASE_URL"), "the order service's database")
	topic := flag.String("topic", "ferry.outcomes", "the outcome topic")
	integration := flag.String("integration", "payments", "the Ferry integration whose outcomes move orders")
	group := flag.String("group", "orderservice", "consumer group")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	db, err := pgxpool.New(ctx, *pgURL)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.Exec(ctx, schema); err != nil {
		return fmt.Errorf("create orders table: %w", err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(*brokers, ",")...), kgo.ConsumerGroup(*group),
		kgo.ConsumeTopics(*topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
	if err != nil {
		return err
	}
	defer cl.Close()
	fmt.Printf("consuming %s for integration %s\n", *topic, *integration)
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err := fs.Err0(); err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "orderservice: fetch:", err)
		}
		var apply error
		fs.EachRecord(func(r *kgo.Record) {
			if apply == nil {
				apply = handle(ctx, db, *integration, r.Value)
			}
		})
		if apply != nil {
			return apply // not committed: read again after a restart
		}
		if err := cl.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
			return fmt.Errorf("commit: %w", err)
		}
	}
}

// handle moves one order on from an outcome record.
func handle(ctx context.Context, db *pgxpool.Pool, integration string, value []byte) error {
	var o outcome
	if err := json.Unmarshal(value, &o); err != nil {
		fmt.Fprintf(os.Stderr, "orderservice: not an outcome record, ignored: %v\n", err)
		return nil
	}
	if o.Integration != integration || o.AggregateType != "order" || o.EventType != "order.placed" {
		return nil
	}
	status := ""
	switch o.State {
	case "succeeded":
		status = "paid"
	case "rejected", "expired", "skipped", "compensated", "compensation_failed":
		status = "declined"
	default:
		return nil
	}
	// Paid wins over declined (a redriven authorization that succeeded
	// later); declined applies only to an order still authorizing.
	tag, err := db.Exec(ctx, `UPDATE orders SET status = $3, payment_id = NULLIF($4, ''), reason = NULLIF($5, ''), updated_at = now()
		WHERE tenant_id = $1 AND id = $2 AND (status = 'authorizing' OR ($3 = 'paid' AND status <> 'paid'))`,
		o.TenantID, o.AggregateID, status, o.Partner.RemoteID, o.Reason)
	if err != nil {
		return fmt.Errorf("order %s/%s: %w", o.TenantID, o.AggregateID, err)
	}
	if tag.RowsAffected() > 0 {
		fmt.Printf("order %s/%s: %s (event %s, %s)\n", o.TenantID, o.AggregateID, status, o.EventID, orReason(o))
	}
	return nil
}

func orReason(o outcome) string {
	if o.State == "succeeded" {
		return "payment " + o.Partner.RemoteID
	}
	return o.Reason
}
