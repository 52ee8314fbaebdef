package consume

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/lane"
)

// parkedRef is the in-memory stand-in of a parked record.
type parkedRef struct{ seq int64 }

// storedRecord is a Kafka record as kept in ferry.parked_event.
type storedRecord struct {
	Topic     string            `json:"topic"`
	Partition int32             `json:"partition"`
	Offset    int64             `json:"offset"`
	Key       []byte            `json:"key"`
	Value     []byte            `json:"value"`
	Headers   map[string][]byte `json:"headers"`
	Order     []string          `json:"header_order"`
}

// spill parks a blocked lane's records in Postgres, in order, and returns
// references to them.
func (e *Engine) spill(tp lane.TP, items []*lane.Item) ([]*lane.Item, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	batch := &pgx.Batch{}
	for _, it := range items {
		r := it.Value.(*kgo.Record)
		sr := storedRecord{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Key: r.Key, Value: r.Value, Headers: map[string][]byte{}}
		for _, h := range r.Headers {
			sr.Headers[h.Key] = h.Value
			sr.Order = append(sr.Order, h.Key)
		}
		body, err := json.Marshal(sr)
		if err != nil {
			return nil, err
		}
		ev, _, _ := decode(r) // only for the ids kept beside the record
		batch.Queue(`INSERT INTO ferry.parked_event (integration, tenant_id, event_id, topic, kafka_partition, kafka_offset, lane_key, record)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq`, e.cfg.Name, ev.TenantID, ev.ID, tp.Topic, tp.Partition, r.Offset, it.Key, body)
	}
	refs := make([]*lane.Item, len(items))
	// One transaction, statements in order: seq follows the lane's order.
	err := pgx.BeginFunc(ctx, e.dlog.Pool(), func(tx pgx.Tx) error {
		br := tx.SendBatch(ctx, batch)
		for i, it := range items {
			var seq int64
			if err := br.QueryRow().Scan(&seq); err != nil {
				br.Close()
				return err
			}
			refs[i] = &lane.Item{Key: it.Key, Offset: it.Offset, Value: parkedRef{seq: seq}}
		}
		return br.Close()
	})
	if err != nil {
		e.log.Error("could not park records durably; they stay in memory", "partition", tp.Partition, "reason", err.Error())
		return nil, fmt.Errorf("park: %w", err)
	}
	e.log.Warn("lane blocked: records parked in Postgres, offsets move on", "tenant_id", items[0].Key, "partition", tp.Partition, "parked", len(items))
	return refs, nil
}

// loadParked returns the parked records of a partition, in order, as
// references (a new owner calls it before fetching the partition).
func (e *Engine) loadParked(ctx context.Context, tp lane.TP) ([]*lane.Item, error) {
	ctx, cancel := e.dlog.Bound(ctx)
	defer cancel()
	rows, err := e.dlog.Pool().Query(ctx, `SELECT seq, lane_key, kafka_offset FROM ferry.parked_event
		WHERE integration = $1 AND topic = $2 AND kafka_partition = $3 ORDER BY seq`, e.cfg.Name, tp.Topic, tp.Partition)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var items []*lane.Item
	for rows.Next() {
		var seq, off int64
		var key string
		if err := rows.Scan(&seq, &key, &off); err != nil {
			return nil, err
		}
		items = append(items, &lane.Item{Key: key, Offset: off, Value: parkedRef{seq: seq}, Spilled: true})
	}
	return items, rows.Err()
}

// unpark reads a parked record back.
func (e *Engine) unpark(ctx context.Context, ref parkedRef) (*kgo.Record, error) {
	ctx, cancel := e.dlog.Bound(ctx)
	defer cancel()
	var body []byte
	if err := e.dlog.Pool().QueryRow(ctx, `SELECT record FROM ferry.parked_event WHERE integration = $1 AND seq = $2`, e.cfg.Name, ref.seq).Scan(&body); err != nil {
		return nil, err
	}
	var sr storedRecord
	if err := json.Unmarshal(body, &sr); err != nil {
		return nil, err
	}
	r := &kgo.Record{Topic: sr.Topic, Partition: sr.Partition, Offset: sr.Offset, Key: sr.Key, Value: sr.Value}
	for _, k := range sr.Order {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: sr.Headers[k]})
	}
	return r, nil
}

func (e *Engine) dropParked(ctx context.Context, ref parkedRef) error {
	ctx, cancel := e.dlog.Bound(ctx)
	defer cancel()
	_, err := e.dlog.Pool().Exec(ctx, `DELETE FROM ferry.parked_event WHERE integration = $1 AND seq = $2`, e.cfg.Name, ref.seq)
	return err
}

// loadLoop retries loading the parked records of partitions whose load
// failed at assignment (they are paused meanwhile). Loaded records go
// first in their lanes, then the partition is fetched again.
func (e *Engine) loadLoop(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		e.commitMu.Lock()
		todo := make(map[lane.TP]*struct{}, len(e.unloaded))
		for tp, gen := range e.unloaded {
			todo[tp] = gen
		}
		e.commitMu.Unlock()
		for tp, gen := range todo {
			parked, err := e.loadParked(ctx, tp)
			if err != nil {
				continue // still failing: it stays paused; the assignment logged why
			}
			e.commitMu.Lock()
			if e.unloaded[tp] == gen { // still owned, by the same assignment
				delete(e.unloaded, tp)
				if len(parked) > 0 {
					e.sched.AddSpilled(tp, parked...)
				}
				if !e.paused[tp] {
					e.cl.ResumeFetchPartitions(map[string][]int32{tp.Topic: {tp.Partition}})
				}
				e.log.Info("parked records loaded; the partition is fetched again", "topic", tp.Topic, "partition", tp.Partition, "parked", len(parked))
			}
			e.commitMu.Unlock()
		}
	}
}
