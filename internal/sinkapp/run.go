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
	return RunWith(ctx, Options{}, args, getenv, stdout, stderr)
}

// RunWith is Run with opts: connector types besides the built-in ones
// (pkg/sink).
func RunWith(ctx context.Context, opts Options, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c, err := parseWith(opts, args, getenv, stdout)
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

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return RunWith(ctx, Options{}, args, getenv, stdout, stderr)
}
