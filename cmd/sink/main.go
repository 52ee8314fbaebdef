// Command sink consumes Ferry's outbox topics and delivers each tenant's
// events to partner APIs in order, isolating failing tenants; see
// README.md and docs/config.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-cdc/ferry/internal/sinkapp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := sinkapp.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
