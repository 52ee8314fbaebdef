package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/time/rate"

	"github.com/ferry-cdc/ferry/internal/retry"
)

// ResyncHeader is the outbox headers key that marks a resync event for
// one integration; the router copies it to the Kafka header of the same
// name (route.HeaderResync).
const ResyncHeader = "ferry_resync"

// Resync republishes a tenant for one integration (enabling the tenant
// at the partner): each of the tenant's aggregates' latest event is
// emitted again as a table-less outbox message, with a new event id
// (<id>:resync:<request id>) and the resync mark, in the order the events
// were written. It files the request in ferry.resync_request and serves it
// (see serve: no lock on the outbox, so writers never wait for it). It
// returns the request id and the number of events emitted; a running cdc
// publishes them, minus those of objects that changed meanwhile.
func Resync(ctx context.Context, conn *pgx.Conn, cfg Config, integration, tenant string, log *slog.Logger) (id int64, n int, err error) {
	// Filed and locked in one transaction: a cdc serving requests in the
	// same database never sees it unlocked.
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO ferry.resync_request (integration, tenant_id) VALUES ($1, $2) RETURNING id`,
			integration, tenant).Scan(&id); err != nil {
			return fmt.Errorf("resync: file request: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_lock(`+requestLock+`)`, id); err != nil {
			return fmt.Errorf("resync: lock request %d: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	defer unlock(conn, id)
	n, err = serve(ctx, conn, cfg, request{id: id, integration: integration, tenant: tenant}, logOrDiscard(log))
	return id, n, err
}

// requestLock is the advisory lock key ($1: the request id) a server holds
// while it serves a request, so two cdc processes never serve one at once.
const requestLock = `hashtextextended('ferry.resync/' || $1::bigint, 0)`

func unlock(conn *pgx.Conn, id int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = conn.Exec(ctx, `SELECT pg_advisory_unlock(`+requestLock+`)`, id) // a lost connection releases it too
}

type request struct {
	id                  int64
	integration, tenant string
}

// serve runs one attempt at a request, the DBLog way (the watermark
// approach Debezium's incremental snapshots take), with the reader's
// windows (window.go) on the other side of the slot:
//
//  1. A low watermark (a non-transactional logical message) opens the
//     request's window in the stream. cdc records, from there on, which of
//     the tenant's objects its own events change, and holds the slot's
//     confirmed position before the mark until the window closes.
//  2. It waits until every transaction running when the mark was written
//     has ended, so the reads below see every transaction that committed
//     before the mark (a commit is in the WAL a moment before readers see
//     it; longer under synchronous replication).
//  3. It reads the seq of each of the tenant's objects' latest event into
//     ferry.resync_work: one snapshot, no lock, writers go on.
//  4. A chunk at a time, one transaction each, it emits those events (a
//     chunk mark first). They reach cdc at the transaction's commit, after
//     every event committed before it; cdc drops any whose object changed
//     after the low mark: that object's own event, already in the stream
//     or still to come, carries the newer state. An object that did not
//     change has, in the stream, no event after the low mark, so the one
//     read is still its latest.
//  5. The last transaction writes the end mark and marks the request done.
//
// Per tenant the order is kept: a resync event reaches Kafka after every
// event committed before its chunk, and before every one after. A failed
// attempt is served again from the start; its events already published
// are duplicates by id.
func serve(ctx context.Context, conn *pgx.Conn, cfg Config, req request, log *slog.Logger) (int, error) {
	var attempt int
	if err := conn.QueryRow(ctx, `UPDATE ferry.resync_request SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts`, req.id).Scan(&attempt); err != nil {
		return 0, fmt.Errorf("resync %d: %w", req.id, err)
	}
	markOf := func(kind string) string {
		m := mark{Mark: kind, Request: req.id, Attempt: attempt}
		if kind == "low" {
			m.Tenant = req.tenant
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(false, $1, $2)`, WatermarkPrefix, markOf("low")); err != nil {
		return 0, fmt.Errorf("resync %d: write the low watermark: %w", req.id, err)
	}
	// From here until serve returns, alive marks keep the window open
	// through any long statement: the wait below, the work-set read, a
	// slow resync query.
	actx, stop := context.WithCancel(ctx)
	alive := make(chan struct{})
	go func() { defer close(alive); keepAlive(actx, conn.Config(), req, markOf("alive"), log) }()
	defer func() { stop(); <-alive }()
	if err := waitRunning(ctx, conn, req, log); err != nil {
		return 0, err
	}
	total, err := emitChunks(ctx, conn, cfg, req, markOf)
	if queryFault(err) {
		// A resync query that cannot run fails the same way every time:
		// the request is done, with the error, and its window closed.
		ferr := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, WatermarkPrefix, markOf("end")); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE ferry.resync_request SET done_at = now(), events = $2, error = $3 WHERE id = $1`, req.id, total, err.Error()); err != nil {
				return err
			}
			return clearWork(ctx, tx, req.id)
		})
		if ferr != nil {
			return 0, errors.Join(err, ferr)
		}
		return total, retry.Permanent(err)
	}
	return total, err
}

// errQuery marks a failure of an outbox.resync_queries query.
var errQuery = errors.New("resync query")

// queryFault reports whether err is a resync query's own fault, which
// fails the same way every time: SQL that does not parse or names what
// does not exist (class 42), data it cannot convert (22), a constraint it
// breaks such as a null aggregate_id (23), a subquery of several rows
// (21), something unsupported (0A).
func queryFault(err error) bool {
	var pe *pgconn.PgError
	if !errors.Is(err, errQuery) || !errors.As(err, &pe) || len(pe.Code) < 2 {
		return false
	}
	switch pe.Code[:2] {
	case "42", "22", "23", "21", "0A":
		return true
	}
	return false
}

// emitChunks builds the request's work set and emits it a chunk per
// transaction; the last one carries the end mark and marks the request
// done. It returns how many events it emitted.
func emitChunks(ctx context.Context, conn *pgx.Conn, cfg Config, req request, markOf func(string) string) (int, error) {
	c := cfg.Columns
	table := id(splitTable(cfg.Table)...)
	queried := []string{} // not nil: a NULL array would match no row
	for _, q := range cfg.ResyncQueries {
		queried = append(queried, q.AggregateType)
	}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if err := clearWork(ctx, tx, req.id); err != nil {
			return err
		}
		for i, q := range cfg.ResyncQueries {
			// $1 is the query's own (the tenant id); ord keeps the
			// queries in the order listed.
			_, err := tx.Exec(ctx, `INSERT INTO ferry.resync_state (request_id, ord, aggregate_type, aggregate_id, event_type, payload)
				SELECT $2::bigint, $3::bigint + row_number() OVER (), $4::text, q.aggregate_id::text, $5::text, q.payload::jsonb
				FROM (`+q.Query+`) q`, req.tenant, req.id, int64(i)<<40, q.AggregateType, q.EventType)
			if err != nil {
				return fmt.Errorf("%w for %s (outbox.resync_queries[%d]): %w", errQuery, q.AggregateType, i, err)
			}
		}
		_, err := tx.Exec(ctx, fmt.Sprintf(`INSERT INTO ferry.resync_work (request_id, seq)
			SELECT DISTINCT ON (%[1]s, %[2]s) $1::bigint, %[3]s FROM %[4]s WHERE %[5]s = $2 AND %[1]s <> ALL($3::text[])
			ORDER BY %[1]s, %[2]s, %[3]s DESC`,
			id(c.AggregateType), id(c.AggregateID), id(c.Seq), table, id(c.TenantID)), req.id, req.tenant, queried)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("resync %d: read %s's objects: %w", req.id, req.tenant, err)
	}
	// Both sources are emitted the same way: the next chunk's bounds in
	// the work set, then its events, under a chunk mark.
	headers := fmt.Sprintf(`json_build_object('%s', $7::text)`, ResyncHeader)
	sources := []struct{ name, next, emit string }{{
		name: "state read by resync_queries",
		next: `SELECT max(ord) FROM (SELECT ord FROM ferry.resync_state WHERE request_id = $1 AND ord > $2 ORDER BY ord LIMIT $3) c`,
		emit: `SELECT count(pg_logical_emit_message(true, $5, json_build_object(
				'id', 'resync-' || $6::text || '-' || md5(s.aggregate_type || '/' || s.aggregate_id), 'tenant_id', $1::text,
				'aggregate_type', s.aggregate_type, 'aggregate_id', s.aggregate_id, 'event_type', s.event_type,
				'payload', s.payload, 'headers', ` + headers + `)::text))
			FROM (SELECT * FROM ferry.resync_state WHERE request_id = $4 AND ord > $2 AND ord <= $3 ORDER BY ord) s`,
	}, {
		name: "latest outbox events",
		next: `SELECT max(seq) FROM (SELECT seq FROM ferry.resync_work WHERE request_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) c`,
		emit: fmt.Sprintf(`SELECT count(pg_logical_emit_message(true, $5, json_build_object(
				'id', x.id || ':resync:' || $6::text, 'tenant_id', x.tenant, 'aggregate_type', x.atype,
				'aggregate_id', x.aid, 'event_type', x.etype, 'payload', x.payload, 'headers', %[1]s)::text))
			FROM (SELECT %[2]s::text AS id, %[5]s AS tenant, %[3]s AS atype, %[4]s AS aid, %[6]s AS etype, %[7]s AS payload
				FROM %[9]s o WHERE %[5]s = $1 AND %[8]s > $2 AND %[8]s <= $3
					AND %[8]s IN (SELECT seq FROM ferry.resync_work WHERE request_id = $4 AND seq > $2 AND seq <= $3)
				ORDER BY %[8]s) x`,
			headers, id(c.ID), id(c.AggregateType), id(c.AggregateID), id(c.TenantID), id(c.EventType), id(c.Payload), id(c.Seq), table),
	}}
	total := 0
	chunk, limit := resyncPace(cfg)
	for _, src := range sources {
		for cursor := int64(math.MinInt64); ; {
			// The work set does not change during an attempt: the next
			// chunk's bound is read outside its transaction.
			var hi *int64
			if err := conn.QueryRow(ctx, src.next, req.id, cursor, chunk).Scan(&hi); err != nil {
				return total, fmt.Errorf("resync %d: read the next chunk of %s's %s: %w", req.id, req.tenant, src.name, err)
			}
			if hi == nil {
				break
			}
			if err := limit.WaitN(ctx, chunk); err != nil {
				return total, err
			}
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, WatermarkPrefix, markOf("chunk")); err != nil {
					return err
				}
				var n int
				if err := tx.QueryRow(ctx, src.emit, req.tenant, cursor, *hi, req.id, cfg.MessagePrefix, strconv.FormatInt(req.id, 10), req.integration).Scan(&n); err != nil {
					return err
				}
				total += n
				return nil
			})
			if err != nil {
				return total, fmt.Errorf("resync %d: emit %s's %s after %d: %w", req.id, req.tenant, src.name, cursor, err)
			}
			cursor = *hi
		}
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, WatermarkPrefix, markOf("end")); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE ferry.resync_request SET done_at = now(), events = $2, error = NULL WHERE id = $1`, req.id, total); err != nil {
			return err
		}
		return clearWork(ctx, tx, req.id)
	})
	if err != nil {
		return total, fmt.Errorf("resync %d: finish: %w", req.id, err)
	}
	return total, nil
}

// resyncPace returns the objects per chunk and the limiter a resync
// waits on before each chunk. Capped, a chunk holds at most a twentieth
// of a second's objects: a chunk is a burst of work for Postgres, the
// walsender, cdc and the broker, and many short bursts leave the
// application's writes less to wait behind than a few long ones.
func resyncPace(cfg Config) (int, *rate.Limiter) {
	if cfg.ResyncRate <= 0 {
		return cfg.ResyncChunk, rate.NewLimiter(rate.Inf, 0)
	}
	chunk := min(cfg.ResyncChunk, max(1, int(cfg.ResyncRate/20)))
	return chunk, rate.NewLimiter(rate.Limit(cfg.ResyncRate), chunk)
}

func clearWork(ctx context.Context, tx pgx.Tx, request int64) error {
	if _, err := tx.Exec(ctx, `DELETE FROM ferry.resync_work WHERE request_id = $1`, request); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM ferry.resync_state WHERE request_id = $1`, request)
	return err
}

// aliveEvery is how often a resync being served writes an alive mark
// (non-transactional, like the low mark): the reader keeps the window
// open while it sees them, so a statement running longer than windowIdle
// (a long transaction to wait for, the work set of a very large tenant,
// a slow resync query) delays the resync but does not make the reader
// give its window up (and drop its events).
var aliveEvery = windowIdle / 6

// keepAlive writes alive, the request's alive mark, every aliveEvery
// until ctx ends. It uses a connection of its own, opened for the first
// mark (a resync shorter than aliveEvery opens none): serve's connection
// runs one statement at a time. A mark that cannot be written is logged
// and tried again at the next tick; should none get through for
// windowIdle, the reader gives the window up, as for a server that died.
func keepAlive(ctx context.Context, cfg *pgx.ConnConfig, req request, alive string, log *slog.Logger) {
	var mc *pgx.Conn
	defer func() {
		if mc != nil {
			mc.Close(context.Background())
		}
	}()
	start := time.Now()
	t := time.NewTicker(aliveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var err error
		if mc == nil {
			mc, err = pgx.ConnectConfig(ctx, cfg)
		}
		if err == nil {
			_, err = mc.Exec(ctx, `SELECT pg_logical_emit_message(false, $1, $2)`, WatermarkPrefix, alive)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			log.Warn("resync could not write an alive mark; will try again (cdc gives a resync's window up after "+windowIdle.String()+" without one)",
				"request", req.id, "tenant_id", req.tenant, "reason", err.Error())
			if mc != nil {
				mc.Close(context.Background())
				mc = nil
			}
			continue
		}
		log.Info("resync still running; alive mark written", "request", req.id, "tenant_id", req.tenant,
			"running", time.Since(start).Round(time.Second).String())
	}
}

// waitRunning waits until every transaction running now has ended.
func waitRunning(ctx context.Context, conn *pgx.Conn, req request, log *slog.Logger) error {
	// The snapshot's in-progress list leaves out running transactions
	// whose ids are at or above its xmax (xmax is one past the latest
	// completed id, not the next id to assign): an id taken in the same
	// statement bounds them.
	var snap string
	var next int64
	if err := conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text, pg_current_xact_id()::text::bigint`).Scan(&snap, &next); err != nil {
		return fmt.Errorf("resync %d: read the running transactions: %w", req.id, err)
	}
	start, wait, logged := time.Now(), 5*time.Millisecond, time.Now()
	for {
		var running int
		var oldest *string
		if err := conn.QueryRow(ctx, `SELECT count(*), min(x::text) FROM (
				SELECT x FROM pg_snapshot_xip($1::pg_snapshot) x
				UNION ALL
				SELECT s::text::xid8 FROM generate_series(pg_snapshot_xmax($1::pg_snapshot)::text::bigint, $2::bigint - 1) s) r
			WHERE NOT pg_visible_in_snapshot(x, pg_current_snapshot())`, snap, next).Scan(&running, &oldest); err != nil {
			return fmt.Errorf("resync %d: check the running transactions: %w", req.id, err)
		}
		if running == 0 {
			return nil
		}
		if time.Since(logged) > 10*time.Second {
			log.Warn("resync waits for transactions that were running at its low watermark to end", "request", req.id,
				"tenant_id", req.tenant, "running", running, "xid", deref(oldest), "waited", time.Since(start).Round(time.Second).String())
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, time.Second)
	}
}

// ServeResyncs serves the open resync requests (ferry.resync_request,
// filed by `sink tenants enable` in the same database) every interval
// until ctx ends. A server holds a request's advisory lock while it
// serves it, so with several cdc processes each request is served by one
// at a time; the request is done in the transaction of its end mark.
func ServeResyncs(ctx context.Context, conn *pgx.Conn, cfg Config, interval time.Duration, log *slog.Logger) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for {
			served, err := serveOne(ctx, conn, cfg, log)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if conn.IsClosed() {
					return fmt.Errorf("resync: %w", err) // the caller reconnects
				}
				log.Warn("resync request failed; will try again", "reason", err.Error())
				break
			}
			if !served {
				break
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func serveOne(ctx context.Context, conn *pgx.Conn, cfg Config, log *slog.Logger) (bool, error) {
	rows, err := conn.Query(ctx, `SELECT id, integration, tenant_id FROM ferry.resync_request WHERE done_at IS NULL ORDER BY id LIMIT 100`)
	if err != nil {
		return false, fmt.Errorf("resync: read requests: %w", err)
	}
	open, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (request, error) {
		var q request
		return q, r.Scan(&q.id, &q.integration, &q.tenant)
	})
	if err != nil {
		return false, fmt.Errorf("resync: read requests: %w", err)
	}
	for _, req := range open {
		var mine bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(`+requestLock+`)`, req.id).Scan(&mine); err != nil {
			return false, fmt.Errorf("resync: lock request %d: %w", req.id, err)
		}
		if !mine {
			continue // another cdc serves it
		}
		var isDone bool
		err := conn.QueryRow(ctx, `SELECT done_at IS NOT NULL FROM ferry.resync_request WHERE id = $1`, req.id).Scan(&isDone)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && isDone) {
			unlock(conn, req.id) // served (or removed) since the list was read
			continue
		}
		if err != nil {
			unlock(conn, req.id)
			return false, fmt.Errorf("resync: read request %d: %w", req.id, err)
		}
		start := time.Now()
		n, err := serve(ctx, conn, cfg, req, log)
		unlock(conn, req.id)
		if retry.IsPermanent(err) {
			log.Error("resync failed; the request is done with its error (sink tenants shows it): fix outbox.resync_queries and enable the tenant again",
				"integration", req.integration, "tenant_id", req.tenant, "request", req.id, "reason", err.Error())
			return true, nil
		}
		if err != nil {
			return false, err
		}
		log.Info("resync published", "integration", req.integration, "tenant_id", req.tenant, "request", req.id,
			"events", n, "took", time.Since(start).Round(time.Millisecond).String())
		return true, nil
	}
	return false, nil
}

func logOrDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return log
}
