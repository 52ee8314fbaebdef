package consume

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferry-cdc/ferry/internal/retry"
)

// kafkaCheckInterval is how often the engine checks that a broker
// answers, for readiness.
const kafkaCheckInterval = 2 * time.Second

// Ready reports whether the engine is working: started, its delivery
// log reachable and a Kafka broker answering; otherwise why not.
func (e *Engine) Ready() (bool, string) {
	switch {
	case !e.kafkaUp.Load():
		return false, e.cfg.Name + ": kafka unreachable"
	case !e.dbUp.Load():
		return false, e.cfg.Name + ": delivery log (postgres) unreachable; lanes wait"
	}
	return true, ""
}

// reconnect is the engine's reconnect loop for target ("postgres",
// "kafka"): one log line per outage, a reconnects count per failed
// attempt, readiness false meanwhile.
func (e *Engine) reconnect(target string) retry.Reconnect {
	up := &e.kafkaUp
	what := "kafka"
	if target == "postgres" {
		up, what = &e.dbUp, "delivery log (postgres)"
	}
	return retry.Reconnect{What: what, Log: e.log, Policy: retry.Policy{Initial: 200 * time.Millisecond, Max: 5 * time.Second},
		OnRetry: func(error) { e.m.Reconnects.WithLabelValues(target).Inc() },
		OnState: up.Store}
}

// pingKafka checks that a broker answers.
func (e *Engine) pingKafka(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.kafka.Ping(pctx, e.cl); err != nil {
		if retry.IsPermanent(err) { // rejected credentials or certificate: the error says which
			return err
		}
		return fmt.Errorf("cannot reach Kafka brokers %v: %w (check --brokers / FERRY_KAFKA_BROKERS)", e.kafka.Brokers, err)
	}
	return nil
}

// watchKafka keeps kafkaUp current until ctx ends. (franz-go itself
// reconnects; this is for readiness and the log.)
func (e *Engine) watchKafka(ctx context.Context) error {
	return e.reconnect("kafka").Run(ctx, func(ctx context.Context, up func()) error {
		t := time.NewTicker(kafkaCheckInterval)
		defer t.Stop()
		for {
			if err := e.pingKafka(ctx); err != nil {
				return err
			}
			up()
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
}

// watchDB checks that the delivery log answers whenever a lane's
// statement failed (dbTrouble); while it does not, lanes wait, and it
// is probed with backoff until it answers.
func (e *Engine) watchDB(ctx context.Context) error {
	return e.reconnect("postgres").Run(ctx, func(ctx context.Context, up func()) error {
		for {
			pctx, cancel := e.dlog.Bound(ctx)
			err := e.dlog.Pool().Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("delivery log: %w", err)
			}
			if !e.dbUp.Load() {
				up()
			}
			select {
			case <-ctx.Done():
				return nil
			case <-e.dbCheck:
			}
		}
	})
}

// leave takes a static member out of its group when the engine stops
// cleanly (ctx ended), after the client closed and committed: closing
// does not leave for a static member, and its partitions would idle
// until the session timeout. A crashed process sends nothing, and its
// restart with the same instance id takes its partitions back at once.
func (e *Engine) leave(ctx context.Context) {
	if e.cfg.InstanceID == "" || ctx.Err() == nil {
		return // not static, or not a clean stop (fenced: another process holds the id)
	}
	cl, err := kgo.NewClient(e.kafka.Opts()...) // brokers, TLS, SASL
	if err != nil {
		return
	}
	defer cl.Close()
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	req := kmsg.NewPtrLeaveGroupRequest()
	req.Group = e.cfg.Group
	m := kmsg.NewLeaveGroupRequestMember()
	m.InstanceID = &e.cfg.InstanceID
	m.Reason = kmsg.StringPtr("ferry sink stopping")
	req.Members = append(req.Members, m)
	resp, err := req.RequestWith(lctx, cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.ErrorCode)
		for _, mr := range resp.Members {
			if err == nil {
				err = kerr.ErrorForCode(mr.ErrorCode)
			}
		}
	}
	if err != nil {
		e.log.Warn("could not leave the consumer group; its partitions move once the session times out", "instance_id", e.cfg.InstanceID, "reason", err.Error())
		return
	}
	e.log.Info("left the consumer group", "instance_id", e.cfg.InstanceID)
}
