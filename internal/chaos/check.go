package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// truthRow is one committed outbox row.
type truthRow struct {
	tenant string
	seq    int64
}

// readTruth reads every row of the outbox table: what was committed.
func readTruth(ctx context.Context, url string) (map[string]truthRow, error) {
	var lastErr error
	for attempt := 0; attempt < 100 && ctx.Err() == nil; attempt++ {
		rows, err := func() (map[string]truthRow, error) {
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				return nil, err
			}
			defer conn.Close(ctx)
			rows, err := conn.Query(ctx, `SELECT id::text, tenant_id, (payload->>'seq')::bigint FROM outbox`)
			if err != nil {
				return nil, err
			}
			out := map[string]truthRow{}
			var id string
			var r truthRow
			_, err = pgx.ForEachRow(rows, []any{&id, &r.tenant, &r.seq}, func() error {
				out[id] = r
				return nil
			})
			return out, err
		}()
		if err == nil {
			return rows, nil
		}
		lastErr = err
		sleep(ctx, 200*time.Millisecond)
	}
	return nil, fmt.Errorf("chaos: read the outbox table: %w", lastErr)
}

// record is one Kafka record of the outbox topic, as the checks need it.
type record struct {
	id        string
	tenant    string
	seq       int64
	partition int32
	offset    int64
	lsn       string
}

func parseRecord(r *kgo.Record) (record, bool) {
	var p payload
	if json.Unmarshal(r.Value, &p) != nil || p.EventID == "" {
		return record{}, false
	}
	rec := record{id: p.EventID, tenant: p.Tenant, seq: p.Seq, partition: r.Partition, offset: r.Offset}
	for _, h := range r.Headers {
		if h.Key == "commit_lsn" {
			rec.lsn = string(h.Value)
		}
	}
	return rec, true
}

// readLog reads the whole topic from the start to its end offsets with a
// fresh client, in partition order.
func readLog(ctx context.Context, broker, topic string) ([]record, int, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		return nil, 0, fmt.Errorf("chaos: kafka client: %w", err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, 0, fmt.Errorf("chaos: list end offsets of %s: %w", topic, err)
	}
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			want[o.Partition] = o.Offset
		}
	})
	var out []record
	unparsed := 0
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, 0, fmt.Errorf("chaos: read %s to its end: %w (partitions left: %v)", topic, ctx.Err(), want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if rec, ok := parseRecord(r); ok {
				out = append(out, rec)
			} else {
				unparsed++
			}
			if end, ok := want[r.Partition]; ok && r.Offset+1 >= end {
				delete(want, r.Partition)
			}
		})
	}
	return out, unparsed, nil
}

// orderCheck is the Jepsen-style reader: it drops event ids it has seen and
// requires each tenant's remaining events in increasing sequence order.
type orderCheck struct {
	seen     map[string]bool
	last     map[string]record // tenant → highest-sequence event so far
	dups     int
	reorders int
	examples []string
}

func newOrderCheck() *orderCheck {
	return &orderCheck{seen: map[string]bool{}, last: map[string]record{}}
}

func (c *orderCheck) add(r record, where string) {
	if c.seen[r.id] {
		c.dups++
		return
	}
	c.seen[r.id] = true
	prev, ok := c.last[r.tenant]
	if ok && r.seq < prev.seq {
		c.reorders++
		if len(c.examples) < 10 {
			c.examples = append(c.examples, fmt.Sprintf("%s: tenant %s seq %d (event %s%s) first appears after seq %d (event %s%s)",
				where, r.tenant, r.seq, r.id, r.where(), prev.seq, prev.id, prev.where()))
		}
		return
	}
	c.last[r.tenant] = r
}

func (r record) where() string {
	if r.offset < 0 {
		return fmt.Sprintf(", partner call #%d", r.partition)
	}
	return fmt.Sprintf(", partition %d offset %d, commit_lsn %s", r.partition, r.offset, r.lsn)
}

// partnerRecords turns the simulator's request log into records, in
// arrival order, of events applied (2xx and not replayed) at the partner;
// replayed counts calls answered from the idempotency-key store.
func partnerRecords(sim *partnersim.Server) (applied []record, replayed, refused int) {
	for _, q := range sim.Requests("") {
		if q.Path != "/v1/events" || q.Method != http.MethodPost {
			continue
		}
		switch {
		case q.Status >= 300:
			refused++
			continue
		case q.Replayed:
			replayed++
			continue
		}
		var ev webhookEvent
		if json.Unmarshal([]byte(q.Body), &ev) != nil {
			continue
		}
		applied = append(applied, record{id: ev.EventID, tenant: ev.Tenant, seq: ev.Payload.Seq, partition: int32(q.Seq), offset: -1})
	}
	return applied, replayed, refused
}
