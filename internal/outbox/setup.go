package outbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/template"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/internal/retry"
	"github.com/ferry-cdc/ferry/schemas"
)

// ErrSlotLost means the replication slot was dropped, recreated or
// invalidated since cdc last confirmed a position: WAL in between was
// never read, so events may be missing from Kafka.
var ErrSlotLost = errors.New("replication slot lost")

// Setup checks the server and creates what is missing (when
// cfg.CreateObjects): the outbox table, the publication and the slot. It is
// idempotent. It does not check the slot guard; Prepare does.
func Setup(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return fmt.Errorf("setup: read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return retry.Permanent(fmt.Errorf("setup: wal_level is %q: set wal_level = logical in postgresql.conf (or -c wal_level=logical) and restart PostgreSQL", walLevel))
	}
	if err := ensureTable(ctx, conn, cfg); err != nil {
		return err
	}
	if _, err := EnsurePartitions(ctx, conn, cfg, time.Now(), time.Now().AddDate(0, 0, cfg.PartitionsAhead)); err != nil {
		return err
	}
	if err := ensurePublication(ctx, conn, cfg); err != nil {
		return err
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, cfg.Slot).Scan(&exists); err != nil {
		return fmt.Errorf("setup: look up slot: %w", err)
	}
	var known bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM ferry.cdc_slot WHERE slot_name = $1)`, cfg.Slot).Scan(&known); err != nil {
		return fmt.Errorf("setup: read ferry.cdc_slot (run migrations first): %w", err)
	}
	if !exists && !known {
		_, err := createSlot(ctx, conn, cfg, true)
		return err
	}
	return nil
}

func ensureTable(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, cfg.Table).Scan(&exists); err != nil {
		return fmt.Errorf("setup: look up outbox table %s: %w", cfg.Table, err)
	}
	if exists {
		if cfg.Partitions == "daily" {
			part, err := partitioned(ctx, conn, cfg)
			if err != nil {
				return err
			}
			if !part {
				return retry.Permanent(fmt.Errorf("setup: outbox.partitions is daily but %s exists and is not partitioned: partitioning an existing table is a migration of its own (docs/operations.md, Retention); or leave partitions empty", cfg.Table))
			}
		}
		return nil
	}
	if !cfg.CreateObjects {
		return retry.Permanent(fmt.Errorf("setup: outbox table %s does not exist and creating objects is off: create it (see schemas/outbox.sql.tmpl) or drop --no-create", cfg.Table))
	}
	tpl, err := template.New("outbox").Parse(schemas.OutboxTemplate)
	if err != nil {
		return fmt.Errorf("setup: outbox template: %w", err)
	}
	var b strings.Builder
	data := struct {
		Table, DefaultPartition string
		Daily                   bool
		Columns
	}{cfg.Table, cfg.Table + "_default", cfg.Partitions == "daily", cfg.Columns}
	if err := tpl.Execute(&b, data); err != nil {
		return fmt.Errorf("setup: outbox template: %w", err)
	}
	if _, err := conn.Exec(ctx, b.String()); err != nil {
		return fmt.Errorf("setup: create outbox table %s: %w", cfg.Table, err)
	}
	return nil
}

func ensurePublication(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	var pubExists, hasTable, insertOnly bool
	err := conn.QueryRow(ctx, `SELECT
			EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
			EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname || '.' || tablename = $2),
			COALESCE((SELECT pubinsert FROM pg_publication WHERE pubname = $1), false)`,
		cfg.Publication, cfg.Table).Scan(&pubExists, &hasTable, &insertOnly)
	if err != nil {
		return fmt.Errorf("setup: look up publication %s: %w", cfg.Publication, err)
	}
	switch {
	case !pubExists && !cfg.CreateObjects:
		return retry.Permanent(fmt.Errorf("setup: publication %s does not exist and creating objects is off: CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert', publish_via_partition_root = true)", cfg.Publication, cfg.Publication, cfg.Table))
	case !pubExists:
		_, err := conn.Exec(ctx, fmt.Sprintf(`CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert', publish_via_partition_root = true)`,
			pgx.Identifier{cfg.Publication}.Sanitize(), pgx.Identifier(strings.Split(cfg.Table, ".")).Sanitize()))
		if err != nil {
			return fmt.Errorf("setup: create publication %s (the role must own %s): %w", cfg.Publication, cfg.Table, err)
		}
	case !hasTable:
		return retry.Permanent(fmt.Errorf("setup: publication %s exists but does not include %s: ALTER PUBLICATION %s ADD TABLE %s", cfg.Publication, cfg.Table, cfg.Publication, cfg.Table))
	case !insertOnly:
		return retry.Permanent(fmt.Errorf("setup: publication %s does not publish inserts: ALTER PUBLICATION %s SET (publish = 'insert')", cfg.Publication, cfg.Publication))
	}
	return nil
}

// createSlot creates the slot, records it when record is set, and returns
// the slot's consistent point.
func createSlot(ctx context.Context, conn *pgx.Conn, cfg Config, record bool) (pglogrepl.LSN, error) {
	if !cfg.CreateObjects {
		return 0, retry.Permanent(fmt.Errorf("setup: replication slot %s does not exist and creating objects is off: run `cdc setup`, or drop --no-create", cfg.Slot))
	}
	var lsn pglogrepl.LSN
	err := conn.QueryRow(ctx, `SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')`, cfg.Slot).Scan(&lsn)
	if err != nil {
		return 0, fmt.Errorf("setup: create replication slot %s (the role needs REPLICATION; max_replication_slots may be full): %w", cfg.Slot, err)
	}
	if !record {
		return lsn, nil
	}
	_, err = conn.Exec(ctx, `INSERT INTO ferry.cdc_slot (slot_name, created_lsn, confirmed_lsn) VALUES ($1, $2, $2)
		ON CONFLICT (slot_name) DO UPDATE SET created_lsn = $2, confirmed_lsn = $2, updated_at = now()`, cfg.Slot, lsn)
	if err != nil {
		return 0, fmt.Errorf("setup: record slot %s: %w", cfg.Slot, err)
	}
	return lsn, nil
}

// slotState is what Prepare decided.
type slotState struct {
	start pglogrepl.LSN
	// recoverSince is set when the slot was lost and recovery was asked
	// for: rows created since then must be backfilled.
	recoverSince *time.Time
}

// prepare runs the slot guard: it compares the slot with cdc's record of
// it, and refuses (ErrSlotLost) or recovers when WAL was skipped.
func prepare(ctx context.Context, conn *pgx.Conn, cfg Config) (slotState, error) {
	if err := Setup(ctx, conn, cfg); err != nil {
		return slotState{}, err
	}
	var (
		slotExists bool
		slotLSN    pglogrepl.LSN
		walStatus  string
		plugin, db string
		recLSN     pglogrepl.LSN
		recTime    *time.Time
		recExists  bool
		currentDB  string
	)
	err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&currentDB)
	if err != nil {
		return slotState{}, fmt.Errorf("slot guard: %w", err)
	}
	err = conn.QueryRow(ctx, `SELECT confirmed_flush_lsn, COALESCE(wal_status, ''), plugin, database
		FROM pg_replication_slots WHERE slot_name = $1`, cfg.Slot).Scan(&slotLSN, &walStatus, &plugin, &db)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return slotState{}, fmt.Errorf("slot guard: read slot %s: %w", cfg.Slot, err)
	default:
		slotExists = true
	}
	err = conn.QueryRow(ctx, `SELECT confirmed_lsn, confirmed_commit_time FROM ferry.cdc_slot WHERE slot_name = $1`, cfg.Slot).Scan(&recLSN, &recTime)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return slotState{}, fmt.Errorf("slot guard: read ferry.cdc_slot: %w", err)
	default:
		recExists = true
	}
	if slotExists && (plugin != "pgoutput" || db != currentDB) {
		return slotState{}, retry.Permanent(fmt.Errorf("slot guard: slot %s belongs to database %q with plugin %q, not %q with pgoutput: choose another --slot", cfg.Slot, db, plugin, currentDB))
	}

	var problem string
	switch {
	case !slotExists && !recExists:
		lsn, err := createSlot(ctx, conn, cfg, true)
		return slotState{start: lsn}, err
	case !slotExists:
		problem = fmt.Sprintf("replication slot %s was dropped after cdc confirmed %s", cfg.Slot, recLSN)
	case walStatus == "lost":
		problem = fmt.Sprintf("replication slot %s was invalidated (wal_status=lost: max_slot_wal_keep_size was exceeded) after cdc confirmed %s", cfg.Slot, recLSN)
	case !recExists:
		// A slot made by hand or by an older setup: adopt it as it is.
		_, err := conn.Exec(ctx, `INSERT INTO ferry.cdc_slot (slot_name, created_lsn, confirmed_lsn) VALUES ($1, $2, $2)`, cfg.Slot, slotLSN)
		if err != nil {
			return slotState{}, fmt.Errorf("slot guard: record slot %s: %w", cfg.Slot, err)
		}
		return slotState{start: slotLSN}, nil
	case slotLSN > recLSN:
		problem = fmt.Sprintf("replication slot %s is at %s, ahead of the %s cdc confirmed: it was recreated or advanced by another consumer, and the WAL in between was never read", cfg.Slot, slotLSN, recLSN)
	default:
		// The record may be ahead of the slot: the slot's confirmed
		// position reaches disk only at checkpoints, and a crash restart
		// of Postgres forgets what was confirmed since. The record is
		// written before each confirmation, with the position Kafka
		// acknowledged, so starting there is as safe as the confirmation
		// itself, and Postgres skips the transactions that committed
		// before it instead of cdc resending them.
		return slotState{start: max(slotLSN, recLSN)}, nil
	}

	since := time.Time{}
	if recTime != nil {
		since = recTime.Add(-cfg.RecoverMargin)
	}
	if !cfg.RecoverLostSlot {
		hint := "all rows"
		if recTime != nil {
			hint = fmt.Sprintf("rows created since %s", since.UTC().Format(time.RFC3339))
		}
		return slotState{}, retry.Permanent(fmt.Errorf("%w: %s; events committed in that gap may be missing from Kafka. Restart with --recover-lost-slot to create a new slot and backfill %s (duplicates carry the same event id), or run `cdc backfill` yourself and then --recover-lost-slot", ErrSlotLost, problem, hint))
	}
	if slotExists && walStatus == "lost" {
		if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, cfg.Slot); err != nil {
			return slotState{}, fmt.Errorf("slot guard: drop invalidated slot %s: %w", cfg.Slot, err)
		}
		slotExists = false
	}
	// The record keeps the old position until the backfill has succeeded
	// (adoptSlot), so a crash mid-recovery is caught again next start.
	start := slotLSN
	if !slotExists {
		if start, err = createSlot(ctx, conn, cfg, false); err != nil {
			return slotState{}, err
		}
	}
	return slotState{start: start, recoverSince: &since}, nil
}

// adoptSlot records the slot's position as cdc's own after a recovery
// backfill.
func adoptSlot(ctx context.Context, conn *pgx.Conn, cfg Config, lsn pglogrepl.LSN) error {
	_, err := conn.Exec(ctx, `INSERT INTO ferry.cdc_slot (slot_name, created_lsn, confirmed_lsn) VALUES ($1, $2, $2)
		ON CONFLICT (slot_name) DO UPDATE SET created_lsn = $2, confirmed_lsn = $2, updated_at = now()`, cfg.Slot, lsn)
	if err != nil {
		return fmt.Errorf("slot guard: adopt slot %s after recovery: %w", cfg.Slot, err)
	}
	return nil
}
