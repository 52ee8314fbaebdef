package groupcommit

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

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

// Stmt is a write over arrays: $1..$n are one array per column, one
// element per write, the Keys key columns first. It returns a row for
// each write it applied, led by the write's key columns; a write without
// a row was not applied (its condition did not hold, or, for a read,
// nothing matched).
type Stmt struct {
	Name string // for errors
	SQL  string
	// Keys is the number of key columns (at least 1). Writes with the
	// same key never share a statement: a statement may not touch a row
	// twice.
	Keys int
	// Args builds the arrays from the writes' rows: typed slices, so
	// nothing is boxed per value. KeyColumn gives the key columns.
	Args func(ops []*Op) []any
}

// Op is one write waiting for a batch.
type Op struct {
	Stmt *Stmt
	Key  []string // Stmt.Keys values; no NUL bytes (Postgres text has none)
	Row  any      // the values after the key, a row type of Stmt's
	Out  []any    // where the returned columns after the key go
	// Applied reports whether the statement returned the write's row.
	Applied bool
	// Err is the write's error, once done.
	Err  error
	done chan struct{}
}

func (o *Op) key() string { return strings.Join(o.Key, "\x00") }

// KeyColumn is part k of the ops' keys as a column (an array argument).
func KeyColumn(ops []*Op, k int) []string {
	col := make([]string, len(ops))
	for i, o := range ops {
		col[i] = o.Key[k]
	}
	return col
}

// Batcher runs writes in group commits on connections of its own.
type Batcher struct {
	pool *pgxpool.Pool
	// timeout bounds each batch (and each write retried on its own);
	// 0 means unbounded.
	timeout time.Duration
	units   chan []*Op // each Do's writes, to run in one transaction
	wg      sync.WaitGroup
	once    sync.Once
}

// New starts a Batcher whose batches run on connections of their own to
// pool's database (see writePool), each batch bounded by timeout (0:
// unbounded). Close it to stop its goroutines and close its connections.
func New(pool *pgxpool.Pool, timeout time.Duration) (*Batcher, error) {
	if timeout < 0 {
		return nil, fmt.Errorf("groupcommit: statement timeout %s is negative", timeout)
	}
	wp, err := writePool(pool)
	if err != nil {
		return nil, fmt.Errorf("groupcommit: connections for the batched writes: %w", err)
	}
	b := &Batcher{pool: wp, timeout: timeout, units: make(chan []*Op, 4*maxBatch)}
	for range batchers {
		b.wg.Add(1)
		go b.loop()
	}
	return b, nil
}

// writePool makes the connections the batched writes run on. They join
// each batch's rows to their table by primary key, one index lookup per
// row (microseconds). Before autovacuum has analyzed a new or
// fast-growing table (the delivery log, the mappings), the planner
// guesses a hash join over a scan of the whole table instead
// (milliseconds per batch, growing with the table: found by sinkbench).
// The batched writes are the only statements on these connections, so
// table scans, and the hash and merge joins that would use them, are
// switched off for them alone.
func writePool(pool *pgxpool.Pool) (*pgxpool.Pool, error) {
	cfg := pool.Config() // a copy
	cfg.MaxConns, cfg.MinConns = batchers, 0
	if cfg.ConnConfig.RuntimeParams == nil {
		cfg.ConnConfig.RuntimeParams = map[string]string{}
	}
	for _, p := range []string{"enable_seqscan", "enable_hashjoin", "enable_mergejoin"} {
		cfg.ConnConfig.RuntimeParams[p] = "off"
	}
	return pgxpool.NewWithConfig(context.Background(), cfg)
}

// Pool is the batches' connection pool (for tests: EXPLAIN a statement
// as a batch would run it).
func (b *Batcher) Pool() *pgxpool.Pool { return b.pool }

// Close runs the writes still waiting, stops the batchers and closes
// their connections.
func (b *Batcher) Close() {
	b.once.Do(func() { close(b.units) })
	b.wg.Wait()
	b.pool.Close()
}

// Do runs writes through a batch and waits for them: when it returns
// nil, their transaction has committed, and each op's Applied and Out
// hold its result. Writes given together commit together or not at all
// (the delivery log's outcome with the partner ids it records), even
// when their batch fails and is retried write by write.
func (b *Batcher) Do(ctx context.Context, ops ...*Op) error {
	for _, o := range ops {
		o.done, o.Applied, o.Err = make(chan struct{}), false, nil
	}
	select {
	case b.units <- ops:
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued the writes run; wait for them even if ctx ends, so the
	// caller never acts on a write whose outcome it does not know.
	for _, o := range ops {
		<-o.done
	}
	// Every op is done before any is read: the batcher writes each until
	// it marks it done.
	for _, o := range ops {
		if o.Err != nil {
			return o.Err
		}
	}
	return nil
}

func (b *Batcher) loop() {
	defer b.wg.Done()
	t := time.NewTimer(0)
	for first := range b.units {
		units, n := [][]*Op{first}, len(first)
		t.Reset(linger)
	fill:
		for n < maxBatch {
			select {
			case u, ok := <-b.units:
				if !ok {
					break fill
				}
				units, n = append(units, u), n+len(u)
			case <-t.C:
				break fill
			}
		}
		b.RunUnits(units...)
	}
}

// Group is the writes that run as one statement: one kind, distinct keys
// (a statement may not touch a row twice).
type Group struct {
	Stmt  *Stmt
	Ops   []*Op
	byKey map[string]*Op
}

func newGroup(o *Op) *Group {
	return &Group{Stmt: o.Stmt, Ops: []*Op{o}, byKey: map[string]*Op{o.key(): o}}
}

// Groups splits ops into statements, in order of first appearance.
func Groups(ops []*Op) []*Group {
	var gs []*Group
next:
	for _, o := range ops {
		k := o.key()
		for _, g := range gs {
			if g.Stmt == o.Stmt && g.byKey[k] == nil {
				g.Ops, g.byKey[k] = append(g.Ops, o), o
				continue next
			}
		}
		gs = append(gs, newGroup(o))
	}
	return gs
}

// read records which writes the statement applied, and their results.
func (g *Group) read(rows pgx.Rows) error {
	defer rows.Close()
	n := g.Stmt.Keys
	for rows.Next() {
		raw := rows.RawValues() // text columns: the same bytes in either format
		if len(raw) < n {
			return fmt.Errorf("%s returned %d columns", g.Stmt.Name, len(raw))
		}
		parts := make([]string, n)
		for i := range n {
			parts[i] = string(raw[i])
		}
		k := strings.Join(parts, "\x00")
		o := g.byKey[k]
		if o == nil {
			return fmt.Errorf("%s returned a row it was not given: %s", g.Stmt.Name, strings.Join(parts, "/"))
		}
		if err := rows.Scan(append(make([]any, n), o.Out...)...); err != nil {
			return fmt.Errorf("%s: read %s: %w", g.Stmt.Name, strings.Join(parts, "/"), err)
		}
		o.Applied = true
	}
	return rows.Err()
}

// bound is a context for one statement (or pipeline) under the timeout.
func (b *Batcher) bound() (context.Context, context.CancelFunc) {
	if b.timeout <= 0 {
		return context.Background(), func() {}
	}
	return context.WithTimeout(context.Background(), b.timeout)
}

// Run runs ops as one batch now, each write a unit of its own, and
// marks each done: for tests, to drive a batch by hand.
func (b *Batcher) Run(ops []*Op) {
	units := make([][]*Op, len(ops))
	for i, o := range ops {
		units[i] = []*Op{o}
	}
	b.RunUnits(units...)
}

// RunUnits runs the units' writes as one batch now and marks each done,
// as the batchers do with whatever Do calls are waiting (a unit is one
// Do's writes). If the batch fails, each unit runs on its own, so one
// bad write fails only its unit, and all of it.
func (b *Batcher) RunUnits(units ...[]*Op) {
	var ops []*Op
	for _, u := range units {
		for _, o := range u {
			if o.done == nil {
				o.done = make(chan struct{})
			}
		}
		ops = append(ops, u...)
	}
	if len(units) > 1 {
		if err := b.pipeline(ops); err == nil {
			for _, o := range ops {
				close(o.done)
			}
			return
		}
	}
	// One unit, or a failed batch: each unit on its own.
	for _, u := range units {
		err := b.pipeline(u)
		for _, o := range u {
			o.Err = err
			close(o.done)
		}
	}
}

// pipeline runs ops as one statement per group in one pipeline with one
// Sync: Postgres runs it as one implicit transaction (all or nothing),
// in one round trip — no BEGIN and COMMIT round trips around it. On an
// error no write is applied.
func (b *Batcher) pipeline(ops []*Op) error {
	gs := Groups(ops)
	pb := &pgx.Batch{}
	for _, g := range gs {
		pb.Queue(g.Stmt.SQL, g.Stmt.Args(g.Ops)...)
	}
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
	if err != nil {
		for _, o := range ops {
			o.Applied = false
		}
	}
	return err
}

// Exec runs one write as a statement of its own on pool, outside any
// batch: for writers that share a Stmt between a Batcher and a process
// without one (an operator command). It sets o.Applied and o.Out as a
// batch does.
func Exec(ctx context.Context, pool *pgxpool.Pool, o *Op) error {
	g := newGroup(o)
	rows, err := pool.Query(ctx, o.Stmt.SQL, o.Stmt.Args(g.Ops)...)
	if err == nil {
		err = g.read(rows)
	}
	o.Err = err
	return err
}
