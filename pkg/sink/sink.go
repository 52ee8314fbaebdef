package sink

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-cdc/ferry/internal/sinkapp"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

// A Factory builds the connector of one integration from its connector
// block. It is called once per integration to validate the config (by
// every command, status and failures included) and again by run, so it
// must be cheap and free of side effects: no partner calls, no
// goroutines. Return every problem at once (errors.Join); an error whose
// text starts with Block.Path is reported as it is, any other is
// prefixed with the block's path.
type Factory func(b *Block) (connector.Connector, error)

// Block is one integration's connector block, as its factory sees it.
type Block struct {
	b sinkapp.Block
}

// Integration is the integration's name (its name key).
func (b *Block) Integration() string { return b.b.Integration }

// Path is where the block is in the config file, e.g.
// "integrations[2].connector". Start an error's text with
// Path()+".key" to name one of the block's keys.
func (b *Block) Path() string { return b.b.Path }

// Decode decodes the block, without its type key, into v: a pointer to
// a struct whose fields have yaml tags (go.yaml.in/yaml/v3 rules). It is
// strict like the rest of the config: an unknown key is an error naming
// its path, its line and the keys v takes. Every problem is returned at
// once, each starting with its path.
func (b *Block) Decode(v any) error { return b.b.Decode(v) }

// Getenv returns an environment variable: the environment Run was given,
// then the process's. Read secrets with it, never from the block: the
// config file is not the place for them.
func (b *Block) Getenv(key string) string { return b.b.Getenv(key) }

// Logger is the sink's logger (log_format, log_level); while the config
// is only being validated it discards.
func (b *Block) Logger() *slog.Logger { return b.b.Log }

// An Option adds to the stock sink.
type Option func(*options)

type options struct {
	connectors map[string]Factory
	errs       []error
}

// Connector registers a connector type: integrations whose connector
// block says "type: typeName" are built by f. A name registered twice,
// or one of the built-in types (http, webhook), is refused at start-up.
func Connector(typeName string, f Factory) Option {
	return func(o *options) {
		if _, dup := o.connectors[typeName]; dup {
			o.errs = append(o.errs, fmt.Errorf("connector type %q is registered twice", typeName))
			return
		}
		o.connectors[typeName] = f
	}
}

// Main runs the sink command line (os.Args) with the built-in connector
// types and those opts register, until SIGINT or SIGTERM, then exits the
// process: code 0 on success, 2 for a usage or config error, 1 for a
// failure at run time.
func Main(opts ...Option) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, opts...)
	stop()
	os.Exit(code)
}

// Run is Main for tests and embedding: it runs the command line args
// (without the program name) until ctx ends and returns the exit code.
// getenv resolves the FERRY_* settings (and Block.Getenv); stdout gets
// command output, stderr logs and errors.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, opts ...Option) int {
	o := options{connectors: map[string]Factory{}}
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.errs) > 0 {
		for _, err := range o.errs {
			fmt.Fprintf(stderr, "sink: %v\n", err)
		}
		return 2
	}
	so := sinkapp.Options{Connectors: map[string]sinkapp.Factory{}}
	for name, f := range o.connectors {
		if f == nil {
			so.Connectors[name] = nil // refused by the registry, with its name
			continue
		}
		so.Connectors[name] = func(b sinkapp.Block) (connector.Connector, error) { return f(&Block{b: b}) }
	}
	return sinkapp.RunWith(ctx, so, args, getenv, stdout, stderr)
}
