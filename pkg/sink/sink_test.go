package sink_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-cdc/ferry/pkg/connector"
	"github.com/ferry-cdc/ferry/pkg/sink"
)

type nop struct{}

func (nop) Deliver(context.Context, connector.Request) (connector.Result, error) {
	return connector.Result{}, nil
}

func config(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sink.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A factory is given its integration's name, the block's path, the
// environment Run was given and a logger; with the config valid and the
// context already ended, Run stops at once with exit code 0.
func TestFactoryGetsItsBlock(t *testing.T) {
	p := config(t, `
postgres_url: postgres://x/y
kafka: {brokers: ["127.0.0.1:9092"]}
admin_addr: "off"
integrations:
  - name: eu
    topics: [outbox.customer]
    connector: {type: webhook, url: "http://127.0.0.1:1/h"}
  - name: crm-us
    topics: [outbox.customer]
    connector: {type: crm, region: us}
`)
	type seen struct{ integration, path, key, region string }
	var got []seen
	f := func(b *sink.Block) (connector.Connector, error) {
		var cfg struct {
			Region string `yaml:"region"`
		}
		if err := b.Decode(&cfg); err != nil {
			return nil, err
		}
		if b.Logger() == nil {
			t.Error("Logger is nil")
		}
		got = append(got, seen{b.Integration(), b.Path(), b.Getenv("CRM_KEY"), cfg.Region})
		return nop{}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stderr strings.Builder
	code := sink.Run(ctx, []string{"--config", p}, func(k string) string { return map[string]string{"CRM_KEY": "k1"}[k] },
		io.Discard, &stderr, sink.Connector("crm", f))
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr.String())
	}
	want := seen{"crm-us", "integrations[1].connector", "k1", "us"}
	if len(got) == 0 || got[0] != want {
		t.Fatalf("factory saw %+v, want %+v", got, want)
	}
}

// A type registered twice, or over a built-in, or without a factory, is
// refused at start-up with exit code 2.
func TestBadRegistrationsAreRefused(t *testing.T) {
	f := func(*sink.Block) (connector.Connector, error) { return nop{}, nil }
	for name, opts := range map[string][]sink.Option{
		`"crm" is registered twice`:             {sink.Connector("crm", f), sink.Connector("crm", f)},
		`"http" is registered twice`:            {sink.Connector("http", f)},
		`"crm" is registered without a factory`: {sink.Connector("crm", nil)},
	} {
		var stderr strings.Builder
		code := sink.Run(context.Background(), []string{"status"}, func(string) string { return "" }, io.Discard, &stderr, opts...)
		if code != 2 || !strings.Contains(stderr.String(), name) {
			t.Errorf("%s: exit %d:\n%s", name, code, stderr.String())
		}
	}
}
