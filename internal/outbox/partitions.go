package outbox

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Daily partitions: <table>_pYYYYMMDD holds rows created that UTC day;
// <table>_default holds anything else.

// partitioned reports whether the outbox table is partitioned.
func partitioned(ctx context.Context, conn *pgx.Conn, cfg Config) (bool, error) {
	var p bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass($1))`, cfg.Table).Scan(&p)
	if err != nil {
		return false, fmt.Errorf("look up partitioning of %s: %w", cfg.Table, err)
	}
	return p, nil
}

func dayPartition(cfg Config, day time.Time) (schema, name string) {
	parts := splitTable(cfg.Table)
	return parts[0], parts[1] + "_p" + day.UTC().Format("20060102")
}

// EnsurePartitions creates the daily partitions for the days from..to
// (UTC) that are missing, when the outbox is partitioned; it returns how
// many it created. A day whose rows already sit in the default partition
// cannot get its own partition: that is reported, and those rows stay
// where they are (prune deletes them row by row).
func EnsurePartitions(ctx context.Context, conn *pgx.Conn, cfg Config, from, to time.Time) (int, error) {
	part, err := partitioned(ctx, conn, cfg)
	if err != nil || !part {
		return 0, err
	}
	n := 0
	for day := from.UTC().Truncate(24 * time.Hour); !day.After(to.UTC()); day = day.AddDate(0, 0, 1) {
		schema, name := dayPartition(cfg, day)
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, id(schema, name)).Scan(&exists); err != nil {
			return n, fmt.Errorf("partitions: look up %s: %w", name, err)
		}
		if exists {
			continue
		}
		_, err := conn.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s PARTITION OF %s FOR VALUES FROM ('%s') TO ('%s')`,
			id(schema, name), id(splitTable(cfg.Table)...), day.Format(time.RFC3339), day.AddDate(0, 0, 1).Format(time.RFC3339)))
		if err != nil {
			return n, fmt.Errorf("partitions: create %s for %s: %w (rows of that day in the default partition prevent it: prune them, or leave them there)",
				name, day.Format("2006-01-02"), err)
		}
		n++
	}
	return n, nil
}

// dropDays drops the daily partitions whose whole day is before cutoff,
// and returns how many and their estimated rows.
func dropDays(ctx context.Context, conn *pgx.Conn, cfg Config, cutoff time.Time) (int, int64, error) {
	parts := splitTable(cfg.Table)
	rows, err := conn.Query(ctx, `SELECT c.relname, GREATEST(c.reltuples, 0)::bigint FROM pg_inherits i
		JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1) ORDER BY c.relname`, cfg.Table)
	if err != nil {
		return 0, 0, fmt.Errorf("prune: list partitions of %s: %w", cfg.Table, err)
	}
	type day struct {
		name string
		rows int64
	}
	var drop []day
	prefix := parts[1] + "_p"
	for rows.Next() {
		var d day
		if err := rows.Scan(&d.name, &d.rows); err != nil {
			rows.Close()
			return 0, 0, err
		}
		date, ok := strings.CutPrefix(d.name, prefix)
		if !ok {
			continue
		}
		t, err := time.Parse("20060102", date)
		if err != nil {
			continue // not one of ours
		}
		if !t.AddDate(0, 0, 1).After(cutoff) {
			drop = append(drop, d)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, err
	}
	var est int64
	for _, d := range drop {
		if _, err := conn.Exec(ctx, "DROP TABLE "+id(parts[0], d.name)); err != nil {
			return 0, est, fmt.Errorf("prune: drop partition %s: %w", d.name, err)
		}
		est += d.rows
	}
	return len(drop), est, nil
}
