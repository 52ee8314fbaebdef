// Command partnersim serves the partner API simulator (see package
// internal/partnersim) for the demo, local development and benchmarks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("partnersim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8089", "listen address")
	var cfg partnersim.Config
	fs.DurationVar(&cfg.Latency, "latency", 0, "added to every API request")
	fs.DurationVar(&cfg.Jitter, "jitter", 0, "up to this much more latency, at random")
	fs.Float64Var(&cfg.ErrorRate, "error-rate", 0, "fraction of API requests answered 503 (0..1)")
	fs.Float64Var(&cfg.RateLimit, "rate-limit", 0, "requests per second before 429 (0 = unlimited)")
	fs.DurationVar(&cfg.RetryAfter, "retry-after", time.Second, "Retry-After sent with 429 and 503")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "seed for the random error draws")
	fs.BoolVar(&cfg.Discard, "discard", false, "answer API requests without storing objects or the request log (benchmarks)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if cfg.ErrorRate < 0 || cfg.ErrorRate > 1 {
		fmt.Fprintln(stderr, "partnersim: -error-rate must be between 0 and 1")
		return 2
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(stderr, "partnersim: %v (use -addr)\n", err)
		return 1
	}
	srv := &http.Server{Handler: partnersim.New(cfg), ReadHeaderTimeout: 5 * time.Second}
	fmt.Fprintf(stdout, "partnersim listening on http://%s\n", ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		fmt.Fprintf(stderr, "partnersim: %v\n", err)
		return 1
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		fmt.Fprintf(stderr, "partnersim: shutdown: %v\n", err)
		return 1
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "partnersim: %v\n", err)
		return 1
	}
	return 0
}
