package sinkapp

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The shipped examples load with the strict loader and validate.
func TestExamplesAreValidConfigs(t *testing.T) {
	env := map[string]string{"SHOP_TOKEN": "t", "PAYMENTS_API_KEY": "k"}
	for k, v := range env {
		t.Setenv(k, v)
	}
	for _, name := range []string{"shop.yaml", "payments.yaml"} {
		args := []string{"--config", filepath.Join("..", "..", "examples", name), "--postgres-url", "postgres://x/y", "--brokers", "127.0.0.1:9092"}
		if _, err := parse(args, func(string) string { return "" }, io.Discard); err != nil {
			t.Errorf("examples/%s: %v", name, err)
		}
	}
}

// A bad HTTP connector config is refused at start-up with every problem,
// each with its path and what to do, and exit code 2.
func TestBadConnectorConfigReportsEveryProblem(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sink.yaml")
	err := os.WriteFile(p, []byte(`
postgres_url: postgres://x/y
kafka: {brokers: [127.0.0.1:9092]}
integrations:
  - name: hooks
    topics: [outbox.product]
    connector: {type: webhook, url: http://127.0.0.1:1/hooks}
  - name: shop
    topics: [outbox.product]
    connector:
      type: http
      base_url: http://partner
      auth: {type: bearer, token_env: FERRY_TEST_UNSET_TOKEN}
      entities:
        product:
          create:
            path: /v1/items/{{.nme}}
            id: $.id
          update: {path: "/v1/items/{{.remote_id}}"}
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	code := run(t.Context(), []string{"--config", p}, func(string) string { return "" }, io.Discard, &stderr)
	if code != 2 {
		t.Fatalf("exit %d, want 2: %s", code, stderr.String())
	}
	for _, want := range []string{
		`integrations[1].connector.entities.product.create.path: unknown field "nme"`,
		`integrations[1].connector.auth.token_env: environment variable FERRY_TEST_UNSET_TOKEN is not set`,
		`integrations[1].connector.entities.product.delete: required`,
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("error lacks %q:\n%s", want, stderr.String())
		}
	}
}

// The recovery settings are validated with their paths: a negative
// statement timeout, a session timeout brokers refuse, an instance id
// Kafka does not accept.
func TestRecoverySettingsAreValidated(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sink.yaml")
	err := os.WriteFile(p, []byte(`
postgres_url: postgres://x/y
kafka: {brokers: [127.0.0.1:9092]}
postgres_statement_timeout: -1s
session_timeout: 2s
instance_id: "a b"
integrations:
  - name: hooks
    topics: [outbox.product]
    connector: {type: webhook, url: http://127.0.0.1:1/hooks}
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	if code := run(t.Context(), []string{"--config", p}, func(string) string { return "" }, io.Discard, &stderr); code != 2 {
		t.Fatalf("exit %d, want 2: %s", code, stderr.String())
	}
	for _, want := range []string{"postgres_statement_timeout: -1s", "session_timeout: 2s", `instance_id: "a b"`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("error lacks %q:\n%s", want, stderr.String())
		}
	}
	// Flags and environment override the file; the default instance id
	// is valid on this host.
	c, err := parse([]string{"--config", p, "--session-timeout", "10s", "--postgres-statement-timeout", "5s"},
		func(k string) string { return map[string]string{"FERRY_INSTANCE_ID": "sink-0"}[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.SessionTimeout.String() != "10s" || c.cfg.PostgresStatementTimeout.String() != "5s" || c.cfg.Integrations[0].InstanceID != "sink-0" {
		t.Fatalf("overrides not applied: %+v", c.cfg)
	}
	if id := defaultInstanceID(); !validInstanceID(id) {
		t.Fatalf("default instance id %q is not valid", id)
	}
}

// The operator commands work with a config `sink run` would refuse (an
// operator's shell may lack a connector's secrets), but say first what
// is wrong with it, with the paths, so a misspelt key is never silently
// dropped by any command.
func TestOperatorCommandsWarnOfWhatRunWouldRefuse(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sink.yaml")
	if err := os.WriteFile(p, []byte(`
postgres_url: postgres://x/y
kafka: {brokers: [127.0.0.1:9092]}
integrations:
  - name: hooks
    topics: [outbox.product]
    connector: {type: webhook, url: http://127.0.0.1:1/hooks, bogus_key: 1}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := parse([]string{"status", "--config", p}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatalf("status refused the config: %v", err)
	}
	if c.warning == nil || !strings.Contains(c.warning.Error(), "integrations[0].connector.bogus_key: unknown key") {
		t.Fatalf("warning %v, want the unknown key with its path", c.warning)
	}
	if _, err := parse([]string{"run", "--config", p}, func(string) string { return "" }, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "integrations[0].connector.bogus_key") {
		t.Fatalf("run: %v, want the unknown key refused", err)
	}
}
