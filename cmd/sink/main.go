// Command sink consumes Ferry's outbox topics and delivers each tenant's
// events to partner APIs in order, isolating failing tenants; see
// README.md and docs/config.md.
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

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c, err := parse(args, getenv, stdout)
	if err != nil {
		if err == errHelp {
			return 0
		}
		fmt.Fprintf(stderr, "sink: %v\n", err)
		return 2
	}
	if err := c.exec(ctx, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "sink: %v\n", err)
		return 1
	}
	return 0
}
