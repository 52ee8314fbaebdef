// Package sinkapp is the sink command: its flags, config, subcommands
// (run, status, failures, retry, ...) and the wiring of the delivery
// engine. cmd/sink is a thin main around Run.
package sinkapp

import (
	"context"
	"fmt"
	"io"
)

// Run runs the sink command line args and returns the process exit code:
// 0 on success, 2 for a usage or config error, 1 for a failure at run time.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return run(ctx, args, getenv, stdout, stderr)
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
