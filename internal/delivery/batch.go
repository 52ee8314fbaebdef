package delivery

import (
	"context"
	"errors"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Group commit: many lanes write the log at once; each statement on its
// own would cost a round trip and a commit. Batchers pipeline whatever
// statements are waiting as one pgx.Batch — one round trip, one implicit
// transaction. If a batch fails, its statements are retried one by one,
// so one bad statement never fails the others.

// maxBatch caps statements per batch.
const maxBatch = 256

// batchers is the number of batches in flight at once.
const batchers = 8

// op is one statement waiting for a batch.
type op struct {
	sql  string
	args []any
	// scan reads a row (QueryRow); nil means Exec.
	scan func(pgx.Row) error
	tag  pgconn.CommandTag
	err  error
	done chan struct{}
}

type batcher struct {
	pool *pgxpool.Pool
	ops  chan *op
	wg   sync.WaitGroup
	once sync.Once
}

func newBatcher(pool *pgxpool.Pool) *batcher {
	b := &batcher{pool: pool, ops: make(chan *op, 4*maxBatch)}
	for range batchers {
		b.wg.Add(1)
		go b.loop()
	}
	return b
}

// close stops the batchers after the waiting statements ran.
func (b *batcher) close() {
	b.once.Do(func() { close(b.ops) })
	b.wg.Wait()
}

// do runs one statement through a batch and waits for it.
func (b *batcher) do(ctx context.Context, o *op) error {
	o.done = make(chan struct{})
	select {
	case b.ops <- o:
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued the statement runs; wait for it even if ctx ends, so
	// the caller never acts on a write whose outcome it does not know.
	<-o.done
	return o.err
}

func (b *batcher) loop() {
	defer b.wg.Done()
	for first := range b.ops {
		batch := []*op{first}
	fill:
		for len(batch) < maxBatch {
			select {
			case o, ok := <-b.ops:
				if !ok {
					break fill
				}
				batch = append(batch, o)
			default:
				break fill
			}
		}
		b.run(batch)
	}
}

func (b *batcher) run(ops []*op) {
	ctx := context.Background()
	if len(ops) > 1 {
		pb := &pgx.Batch{}
		for _, o := range ops {
			pb.Queue(o.sql, o.args...)
		}
		// A batch is one pipeline with one Sync: Postgres runs it as one
		// implicit transaction (all or nothing), in one round trip — no
		// BEGIN and COMMIT round trips around it (found by profiling
		// sinkbench: they cost a third of the log's CPU).
		err := func() error {
			br := b.pool.SendBatch(ctx, pb)
			for _, o := range ops {
				if o.scan != nil {
					o.err = o.scan(br.QueryRow())
				} else {
					o.tag, o.err = br.Exec()
				}
				// ErrNoRows is an answer, not a failure of the batch.
				if o.err != nil && !errors.Is(o.err, pgx.ErrNoRows) {
					br.Close()
					return o.err
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
	}
	// One statement, or a failed batch: each on its own.
	for _, o := range ops {
		if o.scan != nil {
			o.err = o.scan(b.pool.QueryRow(ctx, o.sql, o.args...))
		} else {
			o.tag, o.err = b.pool.Exec(ctx, o.sql, o.args...)
		}
		close(o.done)
	}
}
