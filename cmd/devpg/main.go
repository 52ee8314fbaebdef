// Command devpg runs a throwaway PostgreSQL cluster (wal_level=logical)
// from the system's server binaries for the demo and benchmarks, with no
// Docker: as the unprivileged "postgres" user when started as root. It
// prints the connection URL (and writes it to --url-file), runs until
// interrupted, then removes the cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-cdc/ferry/internal/pgtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devpg", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.Int("port", 0, "TCP port on 127.0.0.1 (0 picks a free one)")
	urlFile := fs.String("url-file", "", "also write the URL to this file once the server is ready")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c, err := pgtest.Start(ctx, pgtest.Options{Port: *port})
	if err != nil {
		fmt.Fprintf(stderr, "devpg: %v\n", err)
		return 1
	}
	if *urlFile != "" {
		if err := os.WriteFile(*urlFile, []byte(c.URL+"\n"), 0o644); err != nil {
			fmt.Fprintf(stderr, "devpg: %v\n", err)
			_ = c.Stop() // exiting with the write error
			return 1
		}
	}
	fmt.Fprintln(stdout, c.URL)
	<-ctx.Done()
	if err := c.Stop(); err != nil {
		fmt.Fprintf(stderr, "devpg: %v\n", err)
		return 1
	}
	return 0
}
