package delivery

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Group commit: many lanes write the log at once, and each write on its
// own would cost a round trip, a transaction and a statement. Batchers
// collect the writes that arrive within linger of the first one and run
// all writes of one kind (Begin, Checkpoint, Finish) as one statement
// over arrays (unnest), all kinds in one pipeline: one round trip, one
// implicit transaction, one statement per kind. If a batch fails, its
// writes are retried one by one, so one bad write never fails the
// others.

// maxBatch caps writes per batch.
const maxBatch = 256

// batchers is the number of batches in flight at once. A batcher takes
// what waits while the other one's batch runs, so fewer batchers make
// bigger batches and fewer commits (sinkbench: 8 batchers made batches
// of 3 writes and cost Postgres 40% more CPU than 2). Two rather than
// one, so a batch waiting for a row lock (an operator's open
// transaction) does not hold up every lane.
const batchers = 2

// linger is how long a batch waits for company after its first write:
// up to 1 ms more per write buys fewer, bigger batches, so less CPU in
// Postgres for the same work (sinkbench: 0 ms partner 18.0k → 20.6k
// deliveries/s; at the 20 ms partner, calls 0.3–0.6 ms quicker, as the
// cores are less busy).
const linger = time.Millisecond

// setStmt is a write over arrays: $1..$n are one array per column, one
// element per write. It returns a row for each write it applied, led by
// the write's key (integration, event_id); a write without a row was not
// applied (its condition did not hold).
type setStmt struct {
	name string // for errors
	sql  string
	// args builds the arrays from the writes' rows: typed slices, so
	// nothing is boxed per value.
	args func(ops []*op) []any
}

// op is one write waiting for a batch.
type op struct {
	stmt *setStmt
	key  [2]string // integration, event_id
	row  any       // the values after the key, a row type of stmt's
	out  []any     // where the returned columns after the key go
	// applied reports whether the statement returned the write's row.
	applied bool
	err     error
	done    chan struct{}
}

type batcher struct {
	pool *pgxpool.Pool
	// timeout bounds each batch (and each write retried on its own);
	// 0 means unbounded.
	timeout time.Duration
	ops     chan *op
	wg      sync.WaitGroup
	once    sync.Once
}

func newBatcher(pool *pgxpool.Pool, timeout time.Duration) *batcher {
	b := &batcher{pool: pool, timeout: timeout, ops: make(chan *op, 4*maxBatch)}
	for range batchers {
		b.wg.Add(1)
		go b.loop()
	}
	return b
}

// close stops the batchers after the waiting writes ran.
func (b *batcher) close() {
	b.once.Do(func() { close(b.ops) })
	b.wg.Wait()
}

// do runs one write through a batch and waits for it.
func (b *batcher) do(ctx context.Context, o *op) error {
	o.done = make(chan struct{})
	select {
	case b.ops <- o:
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued the write runs; wait for it even if ctx ends, so the
	// caller never acts on a write whose outcome it does not know.
	<-o.done
	return o.err
}

func (b *batcher) loop() {
	defer b.wg.Done()
	t := time.NewTimer(0)
	for first := range b.ops {
		batch := []*op{first}
		t.Reset(linger)
	fill:
		for len(batch) < maxBatch {
			select {
			case o, ok := <-b.ops:
				if !ok {
					break fill
				}
				batch = append(batch, o)
			case <-t.C:
				break fill
			}
		}
		b.run(batch)
	}
}

// group is the writes that run as one statement: one kind, distinct keys
// (a statement may not touch a row twice).
type group struct {
	stmt  *setStmt
	ops   []*op
	byKey map[[2]string]*op
}

func newGroup(o *op) *group {
	return &group{stmt: o.stmt, ops: []*op{o}, byKey: map[[2]string]*op{o.key: o}}
}

// groups splits ops into statements, in order of first appearance.
func groups(ops []*op) []*group {
	var gs []*group
next:
	for _, o := range ops {
		for _, g := range gs {
			if g.stmt == o.stmt && g.byKey[o.key] == nil {
				g.ops, g.byKey[o.key] = append(g.ops, o), o
				continue next
			}
		}
		gs = append(gs, newGroup(o))
	}
	return gs
}

// read records which writes the statement applied, and their results.
func (g *group) read(rows pgx.Rows) error {
	defer rows.Close()
	for rows.Next() {
		raw := rows.RawValues() // text columns: the same bytes in either format
		if len(raw) < 2 {
			return fmt.Errorf("delivery: %s returned %d columns", g.stmt.name, len(raw))
		}
		o := g.byKey[[2]string{string(raw[0]), string(raw[1])}]
		if o == nil {
			return fmt.Errorf("delivery: %s returned a row it was not given: %s/%s", g.stmt.name, raw[0], raw[1])
		}
		if err := rows.Scan(append([]any{nil, nil}, o.out...)...); err != nil {
			return fmt.Errorf("delivery: %s: read %s/%s: %w", g.stmt.name, raw[0], raw[1], err)
		}
		o.applied = true
	}
	return rows.Err()
}

// bound is a context for one statement (or pipeline) under the timeout.
func (b *batcher) bound() (context.Context, context.CancelFunc) {
	if b.timeout <= 0 {
		return context.Background(), func() {}
	}
	return context.WithTimeout(context.Background(), b.timeout)
}

func (b *batcher) run(ops []*op) {
	if len(ops) > 1 {
		gs := groups(ops)
		pb := &pgx.Batch{}
		for _, g := range gs {
			pb.Queue(g.stmt.sql, g.stmt.args(g.ops)...)
		}
		// One pipeline with one Sync: Postgres runs it as one implicit
		// transaction (all or nothing), in one round trip — no BEGIN and
		// COMMIT round trips around it.
		err := func() error {
			ctx, cancel := b.bound()
			defer cancel()
			br := b.pool.SendBatch(ctx, pb)
			for _, g := range gs {
				rows, err := br.Query()
				if err != nil {
					br.Close()
					return err
				}
				if err := g.read(rows); err != nil {
					br.Close()
					return err
				}
			}
			return br.Close()
		}()
		if err == nil {
			for _, o := range ops {
				close(o.done)
			}
			return
		}
		for _, o := range ops {
			o.applied = false
		}
	}
	// One write, or a failed batch: each on its own.
	for _, o := range ops {
		g := newGroup(o)
		ctx, cancel := b.bound()
		rows, err := b.pool.Query(ctx, g.stmt.sql, g.stmt.args(g.ops)...)
		if err == nil {
			err = g.read(rows)
		}
		cancel()
		o.err = err
		close(o.done)
	}
}
