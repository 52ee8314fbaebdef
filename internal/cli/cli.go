// Package cli holds what both binaries' command lines share: loading the
// YAML config file strictly (unknown keys are errors naming their path),
// and building the slog logger. It is the one package that knows about
// flags and files; components take plain Config structs.
package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/alecthomas/kong"
	"go.yaml.in/yaml/v3"

	"github.com/ferry-cdc/ferry/internal/safe"
)

// LoadYAML decodes the file at path into out, rejecting unknown keys. An
// empty path does nothing.
func LoadYAML(path string, out any) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// FindConfigPath returns the --config value from args, or getenv's
// FERRY_CONFIG. It runs before flag parsing so the file can be applied
// first and flags override it.
func FindConfigPath(args []string, getenv func(string) string) string {
	for i, a := range args {
		switch {
		case a == "--config" && i+1 < len(args):
			return args[i+1]
		case strings.HasPrefix(a, "--config="):
			return strings.TrimPrefix(a, "--config=")
		}
	}
	return getenv("FERRY_CONFIG")
}

// Logger returns a slog logger writing to w: format "json" (default) or
// "text"; level "debug", "info" (default), "warn" or "error".
func Logger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log_level: %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "", "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log_format: %q: use json or text", format)
}

// EnvResolver makes kong read flags' env tags through getenv rather than
// the process environment, so tests can pass their own.
func EnvResolver(getenv func(string) string) kong.Resolver {
	return kong.ResolverFunc(func(_ *kong.Context, _ *kong.Path, fl *kong.Flag) (any, error) {
		for _, name := range fl.Envs {
			if v := getenv(name); v != "" {
				return v, nil
			}
		}
		return nil, nil
	})
}

// Override sets *dst to *v when the flag was given. Kong sets enum flags
// to their empty default even when not given, so an empty value never
// overrides the config file.
func Override(dst *string, v *string) {
	if v != nil && *v != "" {
		*dst = *v
	}
}

// Print runs fn on a buffer, then writes what it printed to w with
// control characters escaped (safe.Terminal): tenant ids, reasons and
// partner answers come from outside and must not drive the operator's
// terminal.
func Print(w io.Writer, fn func(io.Writer) error) error {
	var buf bytes.Buffer
	err := fn(&buf)
	if _, werr := w.Write(safe.Terminal(buf.Bytes())); werr != nil && err == nil {
		err = werr
	}
	return err
}
