package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// ResyncHeader is the outbox headers key that marks a resync event for
// one integration; the router copies it to the Kafka header of the same
// name (route.HeaderResync).
const ResyncHeader = "ferry_resync"

// Resync republishes a tenant for one integration (enabling the tenant
// at the partner): each of the tenant's aggregates' latest event is
// emitted again as a table-less outbox message, with a new event id
// (<id>:resync:<request id>) and the resync mark. It files the request
// in ferry.resync_request and serves it in one transaction, which holds
// a SHARE lock on the outbox table: inserts wait for it, so no event of
// the tenant commits between the snapshot and the messages, and the
// messages reach Kafka through the slot in WAL order — after every
// earlier event, before every later one, in the same lanes. It returns
// the request id and the number of events emitted.
func Resync(ctx context.Context, conn *pgx.Conn, cfg Config, integration, tenant string) (id int64, n int, err error) {
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO ferry.resync_request (integration, tenant_id) VALUES ($1, $2) RETURNING id`,
			integration, tenant).Scan(&id); err != nil {
			return fmt.Errorf("resync: file request: %w", err)
		}
		if n, err = resync(ctx, tx, cfg, integration, tenant, id); err != nil {
			return err
		}
		return done(ctx, tx, id, n)
	})
	return id, n, err
}

func done(ctx context.Context, tx pgx.Tx, id int64, n int) error {
	if _, err := tx.Exec(ctx, `UPDATE ferry.resync_request SET done_at = now(), events = $2 WHERE id = $1`, id, n); err != nil {
		return fmt.Errorf("resync: mark request %d done: %w", id, err)
	}
	return nil
}

func resync(ctx context.Context, tx pgx.Tx, cfg Config, integration, tenant string, requestID int64) (int, error) {
	c := cfg.Columns
	table := id(splitTable(cfg.Table)...)
	if _, err := tx.Exec(ctx, "LOCK TABLE "+table+" IN SHARE MODE"); err != nil {
		return 0, fmt.Errorf("resync: lock %s: %w", cfg.Table, err)
	}
	q := fmt.Sprintf(`SELECT count(pg_logical_emit_message(true, $3, json_build_object(
			'id', x.id || ':resync:' || $4::text, 'tenant_id', x.tenant, 'aggregate_type', x.atype,
			'aggregate_id', x.aid, 'event_type', x.etype, 'payload', x.payload,
			'headers', json_build_object('%s', $1::text))::text))
		FROM (SELECT * FROM (
			SELECT DISTINCT ON (%[3]s, %[4]s) %[2]s::text AS id, %[5]s AS tenant, %[3]s AS atype, %[4]s AS aid,
				%[6]s AS etype, %[7]s AS payload, %[8]s AS seq
			FROM %[9]s WHERE %[5]s = $2 ORDER BY %[3]s, %[4]s, %[8]s DESC) latest ORDER BY seq) x`,
		ResyncHeader, id(c.ID), id(c.AggregateType), id(c.AggregateID), id(c.TenantID), id(c.EventType), id(c.Payload), id(c.Seq), table)
	var n int
	if err := tx.QueryRow(ctx, q, integration, tenant, cfg.MessagePrefix, strconv.FormatInt(requestID, 10)).Scan(&n); err != nil {
		return 0, fmt.Errorf("resync: emit %s's latest events: %w", tenant, err)
	}
	return n, nil
}

// ServeResyncs serves the open resync requests (ferry.resync_request,
// filed by `sink tenants enable` in the same database) every interval
// until ctx ends. Each request is done in the transaction that emits its
// events, so it is served exactly once even with several cdc processes.
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
	served := false
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var reqID int64
		var integration, tenant string
		err := tx.QueryRow(ctx, `SELECT id, integration, tenant_id FROM ferry.resync_request WHERE done_at IS NULL
			ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`).Scan(&reqID, &integration, &tenant)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("resync: read requests: %w", err)
		}
		n, err := resync(ctx, tx, cfg, integration, tenant, reqID)
		if err != nil {
			return err
		}
		if err := done(ctx, tx, reqID, n); err != nil {
			return err
		}
		log.Info("resync published", "integration", integration, "tenant_id", tenant, "request", reqID, "events", n)
		served = true
		return nil
	})
	return served, err
}
