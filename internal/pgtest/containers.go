//go:build containers

package pgtest

import (
	"context"
	"fmt"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/modules/postgres"
)

// startContainer runs postgres:15 with wal_level=logical in Docker.
func startContainer(ctx context.Context) (string, func() error, error) {
	c, err := postgres.Run(ctx, "postgres:15-alpine",
		postgres.WithDatabase("postgres"),
		postgres.WithUsername("postgres"),
		postgres.WithPassword("postgres"),
		postgres.BasicWaitStrategies(),
		testcontainers.WithCmd("postgres", "-c", "wal_level=logical",
			"-c", "max_replication_slots=64", "-c", "max_wal_senders=64", "-c", "max_connections=200",
			"-c", "fsync=off", "-c", "synchronous_commit=off"),
	)
	if err != nil {
		return "", nil, fmt.Errorf("pgtest: start postgres container (is a Docker engine running?): %w", err)
	}
	url, err := c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		return "", nil, fmt.Errorf("pgtest: container connection string: %w", err)
	}
	return url, func() error { return testcontainers.TerminateContainer(c) }, nil
}
