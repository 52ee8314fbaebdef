package pgdb

import (
	"context"
	"fmt"
	"io/fs"
	"sort"

	"github.com/jackc/pgx/v5"

	"github.com/ferry-cdc/ferry/schemas"
)

// migrateLockKey serialises concurrent Migrate calls across processes.
const migrateLockKey = 0x6665727279 // "ferry"

// Migrate applies every embedded migration that the database has not yet
// recorded in ferry.schema_migrations, each in its own transaction, in file
// name order. It returns the names it applied.
func Migrate(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	names, err := fs.Glob(schemas.Migrations, "migrations/*.sql")
	if err != nil {
		return nil, fmt.Errorf("migrate: list migrations: %w", err)
	}
	sort.Strings(names)
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrateLockKey); err != nil {
		return nil, fmt.Errorf("migrate: take lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrateLockKey) //nolint:errcheck // released with the session anyway
	if _, err := conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS ferry;
		CREATE TABLE IF NOT EXISTS ferry.schema_migrations (
			name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("migrate: create ferry schema (the role needs CREATE on the database): %w", err)
	}
	var applied []string
	for _, name := range names {
		var done bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM ferry.schema_migrations WHERE name = $1)`, name).Scan(&done); err != nil {
			return applied, fmt.Errorf("migrate: %s: %w", name, err)
		}
		if done {
			continue
		}
		sql, err := fs.ReadFile(schemas.Migrations, name)
		if err != nil {
			return applied, fmt.Errorf("migrate: read %s: %w", name, err)
		}
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, string(sql)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO ferry.schema_migrations (name) VALUES ($1)`, name)
			return err
		})
		if err != nil {
			return applied, fmt.Errorf("migrate: apply %s: %w", name, err)
		}
		applied = append(applied, name)
	}
	return applied, nil
}
