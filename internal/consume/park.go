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

// spill parks a blocked lane's records in Postgres, in order (seq follows
// the lane's order: one transaction, statements in order, and a lane's
// later spills come later). The lane keeps only their count.
func (e *Engine) spill(tp lane.TP, items []*lane.Item) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// One COPY: all or nothing, rows numbered (seq) in the lane's order,
	// and each row encoded as it is sent, so a spill of 10,000 records
	// does not hold them all encoded at once.
	i := 0
	_, err := e.dlog.Pool().CopyFrom(ctx, pgx.Identifier{"ferry", "parked_event"},
		[]string{"integration", "tenant_id", "event_id", "topic", "kafka_partition", "kafka_offset", "lane_key", "record"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if i == len(items) {
				return nil, nil
			}
			it := items[i]
			i++
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
			return []any{e.cfg.Name, ev.TenantID, ev.ID, tp.Topic, tp.Partition, r.Offset, it.Key, body}, nil
		}))
	if err != nil {
		e.log.Error("could not park records durably; they stay in memory", "partition", tp.Partition, "reason", err.Error())
		return fmt.Errorf("park: %w", err)
	}
	e.log.Warn("lane blocked: records parked in Postgres, offsets move on", "tenant_id", items[0].Key, "partition", tp.Partition, "parked", len(items))
	return nil
}

// loadParked returns how many records each lane of a partition has
// parked (a new owner calls it before fetching the partition); the lanes
// read them back a page at a time (loadPage).
func (e *Engine) loadParked(ctx context.Context, tp lane.TP) (map[string]int, error) {
	ctx, cancel := e.dlog.Bound(ctx)
	defer cancel()
	rows, err := e.dlog.Pool().Query(ctx, `SELECT lane_key, count(*) FROM ferry.parked_event
		WHERE integration = $1 AND topic = $2 AND kafka_partition = $3 GROUP BY lane_key`, e.cfg.Name, tp.Topic, tp.Partition)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	counts := map[string]int{}
	for rows.Next() {
		var key string
		var n int
		if err := rows.Scan(&key, &n); err != nil {
			return nil, err
		}
		counts[key] = n
	}
	return counts, rows.Err()
}

// addParked gives the lanes of tp their parked counts; it returns the
// total.
func (e *Engine) addParked(tp lane.TP, counts map[string]int) int {
	total := 0
	for key, n := range counts {
		e.sched.AddSpilled(tp, key, n)
		total += n
	}
	return total
}

// loadPage reads the next n parked records of one lane, in order, after
// the reference after (nil: from its first), as references (the lane's
// LoadFunc). Delivered ones were deleted, so the lane's first parked row
// is always its next.
func (e *Engine) loadPage(ctx context.Context, tp lane.TP, key string, after *lane.Item, n int) ([]*lane.Item, error) {
	ctx, cancel := e.dlog.Bound(ctx)
	defer cancel()
	from := int64(0)
	if after != nil {
		from = after.Value.(parkedRef).seq
	}
	rows, err := e.dlog.Pool().Query(ctx, `SELECT seq, kafka_offset FROM ferry.parked_event
		WHERE integration = $1 AND topic = $2 AND kafka_partition = $3 AND lane_key = $4 AND seq > $5
		ORDER BY seq LIMIT $6`, e.cfg.Name, tp.Topic, tp.Partition, key, from, n)
	if err != nil {
		return nil, e.loadFailed(err)
	}
	defer rows.Close()
	items := make([]*lane.Item, 0, n)
	for rows.Next() {
		var seq, off int64
		if err := rows.Scan(&seq, &off); err != nil {
			return nil, e.loadFailed(err)
		}
		items = append(items, &lane.Item{Key: key, Offset: off, Value: parkedRef{seq: seq}, Spilled: true})
	}
	if err := rows.Err(); err != nil {
		return nil, e.loadFailed(err)
	}
	return items, nil
}

// loadFailed reports a failed read of parked records to the log watcher
// (the lane backs off and tries again).
func (e *Engine) loadFailed(err error) error {
	e.dbTrouble(err)
	return fmt.Errorf("load parked records: %w", err)
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
				n := e.addParked(tp, parked)
				if !e.paused[tp] {
					e.cl.ResumeFetchPartitions(map[string][]int32{tp.Topic: {tp.Partition}})
				}
				e.log.Info("parked records loaded; the partition is fetched again", "topic", tp.Topic, "partition", tp.Partition, "parked", n)
			}
			e.commitMu.Unlock()
		}
	}
}
