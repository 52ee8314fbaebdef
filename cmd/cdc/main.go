// Command cdc streams a PostgreSQL transactional outbox into tenant-keyed
// Kafka topics by logical replication, losing nothing: see README.md and
// docs/config.md.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole program; main only supplies the process's context,
// arguments, environment and streams. It returns the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c, err := parse(args, getenv, stdout)
	if err != nil {
		if err == errHelp {
			return 0
		}
		fmt.Fprintf(stderr, "cdc: %v\n", err)
		return 2
	}
	if err := c.exec(ctx, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "cdc: %v\n", err)
		return 1
	}
	return 0
}
