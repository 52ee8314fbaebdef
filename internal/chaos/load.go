package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/time/rate"
)

// Stages an event is seen at.
const (
	atKafka = iota
	atPartner
)

// payload is what each outbox row carries: its own event id and its
// tenant's sequence number (commit order within the tenant).
type payload struct {
	EventID string `json:"eid"`
	Tenant  string `json:"tenant"`
	Seq     int64  `json:"seq"`
	Pad     string `json:"pad"`
}

// evState is what the harness knows of one event it wrote.
type evState struct {
	tenant string
	seq    int64
	start  time.Time    // the writer began its transaction (before commit)
	acked  bool         // COMMIT returned success
	first  [2]time.Time // first seen at each stage
}

type arrival struct{ at, start time.Time }

// tracker records every written event and when it first reached Kafka (the
// live reader) and the partner. It is safe for concurrent use.
type tracker struct {
	mu       sync.Mutex
	ev       map[string]*evState
	arrivals [2][]arrival
}

func newTracker() *tracker { return &tracker{ev: map[string]*evState{}} }

func (t *tracker) add(id string, e *evState) {
	t.mu.Lock()
	t.ev[id] = e
	t.mu.Unlock()
}

func (t *tracker) ack(ids []string) {
	t.mu.Lock()
	for _, id := range ids {
		t.ev[id].acked = true
	}
	t.mu.Unlock()
}

// arrive notes that event id reached stage at the given time; only the
// first arrival counts.
func (t *tracker) arrive(stage int, id string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.ev[id]
	if e == nil || !e.first[stage].IsZero() {
		return
	}
	e.first[stage] = at
	t.arrivals[stage] = append(t.arrivals[stage], arrival{at, e.start})
}

// mark returns a position in a stage's arrivals to search from later.
func (t *tracker) mark(stage int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.arrivals[stage])
}

// firstAfter returns the earliest arrival at stage, among those recorded
// since mark, of an event whose transaction began after since.
func (t *tracker) firstAfter(stage, mark int, since time.Time) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var best time.Time
	for _, a := range t.arrivals[stage][mark:] {
		if a.start.After(since) && (best.IsZero() || a.at.Before(best)) {
			best = a.at
		}
	}
	return best, !best.IsZero()
}

// seen reports whether every id has reached stage; missing counts those
// that have not.
func (t *tracker) missing(stage int, ids []string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, id := range ids {
		if e := t.ev[id]; e == nil || e.first[stage].IsZero() {
			n++
		}
	}
	return n
}

// load is the application: writers inserting outbox rows for many
// tenants. Each tenant belongs to one writer, which commits its
// transactions one after another, so a tenant's sequence numbers are its
// commit order.
type load struct {
	url     string
	tenants int
	writers int
	limiter *rate.Limiter
	tr      *tracker
	seed    uint64

	mu     sync.Mutex
	txs    int
	failed int // transactions that returned an error (their outcome may be unknown)
}

func (l *load) run(ctx context.Context) {
	var wg sync.WaitGroup
	for w := range l.writers {
		var own []string
		for t := w; t < l.tenants; t += l.writers {
			own = append(own, fmt.Sprintf("t%03d", t))
		}
		wg.Go(func() { l.writer(ctx, w, own) })
	}
	wg.Wait()
}

const insertSQL = `INSERT INTO outbox (id, tenant_id, aggregate_type, aggregate_id, event_type, payload)
VALUES ($1, $2, 'order', $3, 'order.updated', $4)`

func (l *load) writer(ctx context.Context, w int, tenants []string) {
	rng := rand.New(rand.NewPCG(l.seed, uint64(w)+1))
	next := map[string]int64{}
	pad := strings.Repeat("x", 200)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			c, err := pgx.Connect(ctx, l.url)
			if err != nil {
				sleep(ctx, 100*time.Millisecond) // the database is restarting
				continue
			}
			conn = c
		}
		// 1-5 events over 1-3 of this writer's tenants; a third of the
		// transactions are single events.
		n := 1
		if rng.IntN(3) > 0 {
			n = 2 + rng.IntN(4)
		}
		if l.limiter.WaitN(ctx, n) != nil {
			return
		}
		picked := make([]string, 1+rng.IntN(3))
		for i := range picked {
			picked[i] = tenants[rng.IntN(len(tenants))]
		}
		batch := &pgx.Batch{}
		ids := make([]string, n)
		start := time.Now()
		for i := range n {
			tenant := picked[rng.IntN(len(picked))]
			next[tenant]++
			id := uuid(rng)
			ids[i] = id
			l.tr.add(id, &evState{tenant: tenant, seq: next[tenant], start: start})
			body, _ := json.Marshal(payload{EventID: id, Tenant: tenant, Seq: next[tenant], Pad: pad}) // plain strings and ints marshal
			batch.Queue(insertSQL, id, tenant, fmt.Sprintf("order-%s-%d", tenant, rng.IntN(20)), body)
		}
		err := l.commit(ctx, conn, batch)
		l.mu.Lock()
		l.txs++
		if err != nil {
			l.failed++
		}
		l.mu.Unlock()
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			sleep(ctx, 50*time.Millisecond)
			continue
		}
		l.tr.ack(ids)
	}
}

func (l *load) commit(ctx context.Context, conn *pgx.Conn, batch *pgx.Batch) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		_ = tx.Rollback(ctx) // the connection is dropped anyway
		return err
	}
	return tx.Commit(ctx)
}

func uuid(rng *rand.Rand) string {
	a, b := rng.Uint64(), rng.Uint64()
	a = a&^0xf000 | 0x4000               // version 4
	b = b&^(0xc000<<48) | (0x8000 << 48) // variant 10
	return fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", a>>32, (a>>16)&0xffff, a&0xffff, b>>48, b&0xffffffffffff)
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
