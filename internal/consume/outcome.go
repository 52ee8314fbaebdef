package consume

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/retry"
	"github.com/ferry-cdc/ferry/internal/route"
)

// The outcome relay: the delivery log writes each final state's outcome
// row in the same statement (delivery/outcome.go); relayLoop produces
// them to Kafka and deletes them once acknowledged. It runs in every
// engine whether or not outcomes are switched on now, so rows written
// before a switch-off still go out.

// Header names of outcome records (event_id and tenant_id as on the
// records cdc produces).
const HeaderState = "state"

const (
	// outcomeBatch caps the outcomes one relay round produces.
	outcomeBatch = 500
	// outcomeIdle is how long the relay waits after a round that found
	// less than a full batch: the outcome's latency when idle.
	outcomeIdle = 100 * time.Millisecond
	// outcomeProduceTimeout bounds one round's produce; the round is
	// retried after it.
	outcomeProduceTimeout = 30 * time.Second
)

// newOutcomeProducer is the relay's Kafka producer: idempotent, acks
// from all in-sync replicas, murmur2 keys (a tenant's outcomes land on
// the partition the Java client would pick), records of one partition
// in order.
func (e *Engine) newOutcomeProducer() (*kgo.Client, error) {
	cl, err := kgo.NewClient(append(e.kafka.Opts(), // brokers, TLS, SASL
		kgo.ClientID("ferry-sink-"+e.cfg.Name+"-outcomes"),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.AllowAutoTopicCreation(),
		kgo.ProducerLinger(0),
	)...)
	if err != nil {
		return nil, retry.Permanent(fmt.Errorf("%s: kafka producer for outcomes: %w", e.cfg.Name, err))
	}
	return cl, nil
}

// relayLoop produces the integration's pending outcomes until ctx ends;
// Kafka or the log unreachable is weather (one log line per outage).
func (e *Engine) relayLoop(ctx context.Context, cl *kgo.Client) error {
	r := retry.Reconnect{What: "outcome relay", Log: e.log, Policy: retry.Policy{Initial: 200 * time.Millisecond, Max: 5 * time.Second},
		OnRetry: func(error) { e.m.Reconnects.WithLabelValues("outcomes").Inc() }}
	return r.Run(ctx, func(ctx context.Context, up func()) error {
		for {
			n, err := e.dlog.RelayOutcomes(ctx, e.cfg.Name, outcomeBatch, func(ctx context.Context, batch []delivery.PendingOutcome) error {
				return e.produceOutcomes(ctx, cl, batch)
			})
			if err != nil {
				return err
			}
			up()
			if n == outcomeBatch {
				continue
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(outcomeIdle):
			}
		}
	})
}

// produceOutcomes produces batch, in order, and waits for every ack.
func (e *Engine) produceOutcomes(ctx context.Context, cl *kgo.Client, batch []delivery.PendingOutcome) error {
	recs := make([]*kgo.Record, len(batch))
	for i, p := range batch {
		v, err := json.Marshal(p.Record)
		if err != nil {
			return fmt.Errorf("encode outcome of %s: %w", p.Record.EventID, err)
		}
		recs[i] = &kgo.Record{Topic: p.Topic, Key: []byte(p.Record.TenantID), Value: v, Headers: []kgo.RecordHeader{
			{Key: route.HeaderEventID, Value: []byte(p.Record.EventID)},
			{Key: route.HeaderTenantID, Value: []byte(p.Record.TenantID)},
			{Key: HeaderState, Value: []byte(p.Record.State)},
		}}
	}
	pctx, cancel := context.WithTimeout(ctx, outcomeProduceTimeout)
	defer cancel()
	if err := cl.ProduceSync(pctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("produce %d outcomes: %w", len(recs), err)
	}
	e.m.Outcomes.WithLabelValues(e.cfg.Name).Add(float64(len(recs)))
	return nil
}
