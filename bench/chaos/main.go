// Command chaos runs Ferry's fault suite (make chaos; see internal/chaos):
// the pipeline under load from many tenants, with the broker killed and
// restarted, retriable produce errors, PostgreSQL fast and immediate
// restarts and cdc and sink killed, checked for lost, reordered and twice
// applied events. It prints figures and exits 1 when a guarantee broke.
//
//	go run ./bench/chaos -bin bin -runs 20 -seed 1
//	go run ./bench/chaos -bin bin -runs 5 -seed 6 -out results.jsonl   # runs 6-10, appended
//	go run ./bench/chaos -summarize results.jsonl                      # the report of all of them
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ferry-cdc/ferry/internal/chaos"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg chaos.Config
	fs.StringVar(&cfg.Bin, "bin", "bin", "folder with the cdc, sink and devbroker binaries (make build)")
	seed := fs.Uint64("seed", 0, "first run's seed; run i uses seed+i (0 = from the clock, printed)")
	fs.IntVar(&cfg.Runs, "runs", 20, "fault-mix iterations")
	fs.IntVar(&cfg.Faults, "faults", 8, "faults per run (each kind once, the rest at random; fewer than 6 take turns over runs)")
	fs.IntVar(&cfg.Tenants, "tenants", 100, "tenants writing events")
	fs.IntVar(&cfg.Writers, "writers", 4, "application connections writing the outbox")
	fs.IntVar(&cfg.Rate, "rate", 800, "events per second over all writers")
	fs.BoolVar(&cfg.SyncWrites, "sync-writes", false, "the broker fsyncs every batch (devbroker --sync-writes): tells broker loss apart from Ferry's")
	fs.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "load before the first fault")
	fs.DurationVar(&cfg.Gap, "gap", 3*time.Second, "most load between a fault's recovery and the next fault")
	fs.DurationVar(&cfg.RecoveryCeiling, "recovery-ceiling", 60*time.Second, "longest wait for a fault's recovery before the next fault")
	fs.DurationVar(&cfg.Drain, "drain", 120*time.Second, "longest wait after the last fault for every event to arrive; what has not is lost")
	fs.StringVar(&cfg.Work, "work", "", "folder for the runs' logs and broker data (default: the temporary folder); failed runs' folders are kept")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep every run's folder")
	out := fs.String("out", "", "append each run's figures to this file as JSON lines")
	summarize := fs.String("summarize", "", "print the report of a file written with -out, and run nothing")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *summarize != "" {
		f, err := os.Open(*summarize)
		if err != nil {
			fmt.Fprintf(stderr, "chaos: %v\n", err)
			return 2
		}
		defer f.Close()
		rs, err := chaos.ReadJSON(f)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
		s := chaos.Summarize(rs)
		s.Print(stdout)
		if !s.OK() {
			return 1
		}
		return 0
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano()%1_000_000 + 1)
	}
	cfg.Seed = *seed
	cfg.Log = stdout
	fmt.Fprintf(stdout, "chaos: seed %d, %d runs, %d faults each (rerun one: -seed %d+i -runs 1)\n", cfg.Seed, cfg.Runs, cfg.Faults, cfg.Seed)
	rs, err := chaos.Run(ctx, cfg)
	if *out != "" && len(rs) > 0 {
		f, ferr := os.OpenFile(*out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if ferr == nil {
			ferr = chaos.WriteJSON(f, rs)
			if cerr := f.Close(); ferr == nil {
				ferr = cerr
			}
		}
		if ferr != nil {
			fmt.Fprintf(stderr, "chaos: %v\n", ferr)
		}
	}
	if len(rs) > 0 {
		s := chaos.Summarize(rs)
		fmt.Fprintln(stdout)
		s.Print(stdout)
		if !s.OK() {
			return 1
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "chaos: %v\n", err)
		return 2
	}
	return 0
}
