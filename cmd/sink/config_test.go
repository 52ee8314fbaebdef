package main

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
