package sinkapp

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-cdc/ferry/pkg/connector"
)

type crmBlock struct {
	Endpoint string   `yaml:"endpoint"`
	Lists    []string `yaml:"lists"`
	Retries  struct {
		Max int `yaml:"max"`
	} `yaml:"retries"`
}

type nopConnector struct{ blk crmBlock }

func (nopConnector) Deliver(context.Context, connector.Request) (connector.Result, error) {
	return connector.Result{}, nil
}

func crmFactory(b Block) (connector.Connector, error) {
	var blk crmBlock
	if err := b.Decode(&blk); err != nil {
		return nil, err
	}
	var errs []error
	if blk.Endpoint == "" {
		errs = append(errs, errors.New("endpoint: required")) // the sink adds the path
	}
	if blk.Retries.Max < 0 {
		errs = append(errs, errors.New(b.Path+".retries.max: must not be negative"))
	}
	return nopConnector{blk}, errors.Join(errs...)
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sink.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A registered connector type's block is decoded and validated by its
// factory, strictly, and its problems are reported with their paths
// together with the rest of the config's.
func TestRegisteredConnectorTypeErrorsCarryTheirPaths(t *testing.T) {
	p := writeConfig(t, `
postgres_url: postgres://x/y
kafka: {brokers: [127.0.0.1:9092]}
session_timeout: 1s
integrations:
  - name: crm
    topics: [outbox.customer]
    connector:
      type: crm
      lists: [a, b]
      retries: {max: -1, maxx: 2}
      endpont: http://x
  - name: other
    topics: [outbox.customer]
    connector: {type: crm, endpoint: http://crm, retries: {max: nope}}
  - name: typo
    topics: [outbox.customer]
    connector: {type: crn}
  - name: hooks
    topics: [outbox.customer]
    connector: {type: webhook, url: http://127.0.0.1:1/h, base_url: http://x}
  - name: semantic
    topics: [outbox.customer]
    connector: {type: crm, retries: {max: -1}}
`)
	var stderr strings.Builder
	opts := Options{Connectors: map[string]Factory{"crm": crmFactory}}
	code := RunWith(t.Context(), opts, []string{"--config", p}, func(string) string { return "" }, io.Discard, &stderr)
	if code != 2 {
		t.Fatalf("exit %d, want 2: %s", code, stderr.String())
	}
	out := stderr.String()
	for _, want := range []string{
		"session_timeout: 1s", // the rest of the config, in the same report
		"integrations[0].connector.endpont: unknown key (line 12): use one of endpoint, lists, retries",
		"integrations[0].connector.retries.maxx: unknown key (line 11): use one of max",
		"integrations[4].connector: endpoint: required",
		"integrations[4].connector.retries.max: must not be negative",
		"integrations[1].connector: line 15: cannot unmarshal !!str `nope` into int",
		`integrations[2].connector.type: "crn": use crm, http, webhook`,
		"integrations[3].connector.base_url: unknown key (line 21): use one of signing_secrets_env, timeout, url, url_env",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("error lacks %q:\n%s", want, out)
		}
	}
	// Without the registration, the type is unknown.
	stderr.Reset()
	if code := run(t.Context(), []string{"--config", p}, func(string) string { return "" }, io.Discard, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), `integrations[0].connector.type: "crm": use http, webhook`) {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

// A valid block reaches the factory decoded, with the integration's name.
func TestRegisteredConnectorTypeGetsItsBlock(t *testing.T) {
	p := writeConfig(t, `
postgres_url: postgres://x/y
kafka: {brokers: [127.0.0.1:9092]}
integrations:
  - name: crm-eu
    topics: [outbox.customer]
    connector: {type: crm, endpoint: http://crm, lists: [vip], retries: {max: 3}}
`)
	var got []Block
	var built []crmBlock
	opts := Options{Connectors: map[string]Factory{"crm": func(b Block) (connector.Connector, error) {
		got = append(got, b)
		c, err := crmFactory(b)
		if err == nil {
			built = append(built, c.(nopConnector).blk)
		}
		return c, err
	}}}
	c, err := parseWith(opts, []string{"--config", p}, func(k string) string { return map[string]string{"CRM_KEY": "k1"}[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Integration != "crm-eu" || got[0].Path != "integrations[0].connector" || got[0].Getenv("CRM_KEY") != "k1" {
		t.Fatalf("factory got %+v", got)
	}
	if b := built[0]; b.Endpoint != "http://crm" || len(b.Lists) != 1 || b.Retries.Max != 3 {
		t.Fatalf("decoded %+v", b)
	}
	conn, errs := c.reg.build(0, c.cfg.Integrations[0], c.getenv, nil)
	if len(errs) > 0 || conn == nil {
		t.Fatalf("build: %v", errs)
	}
}

// A type registered twice, or over a built-in, is refused.
func TestConnectorTypeRegisteredTwiceIsRefused(t *testing.T) {
	for _, name := range []string{"http", "webhook", ""} {
		if _, err := newRegistry(Options{Connectors: map[string]Factory{name: crmFactory}}); err == nil {
			t.Errorf("registering %q was accepted", name)
		}
	}
}

// The http type's block is strict down to its steps (httpconn.Steps
// takes one step or a list): a misspelt key anywhere is reported with its
// path, where yaml.v3 alone would drop it.
func TestHTTPBlockIsStrictDownToItsSteps(t *testing.T) {
	p := writeConfig(t, `
postgres_url: postgres://x/y
kafka: {brokers: [127.0.0.1:9092]}
integrations:
  - name: shop
    topics: [outbox.product]
    connector:
      type: http
      base_url: http://partner
      auth: {type: bearer, tokn_env: X}
      entities:
        product:
          lookpu: {path: /x}
          create: {path: /v1/items, id: $.id, bodyy: "{}"}
          update: [{path: "/v1/items/{{.remote_id}}", undo: {paht: /y}}]
          delete: {path: "/v1/items/{{.remote_id}}"}
`)
	_, err := parse([]string{"--config", p}, func(string) string { return "" }, io.Discard)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		"integrations[0].connector.auth.tokn_env: unknown key (line 10)",
		"integrations[0].connector.entities.product.lookpu: unknown key (line 13)",
		"integrations[0].connector.entities.product.create.bodyy: unknown key (line 14)",
		"integrations[0].connector.entities.product.update[0].undo.paht: unknown key (line 15)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}
