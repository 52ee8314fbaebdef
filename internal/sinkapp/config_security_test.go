package sinkapp

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Settings that would panic or send secrets where they do not belong are
// refused at start-up, each with its key path, and no secret is quoted.
func TestConfigRefusesUnsafeValuesWithTheirPath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sink.yaml")
	err := os.WriteFile(p, []byte(`
postgres_url: postgres://x/y
postgres_max_conns: -1
kafka: {brokers: [127.0.0.1:9092]}
admin_allowed_hosts: ["http://ferry.internal"]
integrations:
  - name: hooks
    topics: [outbox.product]
    timeout: -1s
    park_recheck: -2s
    commit_interval: -1ms
    wait_recheck: -1s
    park_after: -1s
    breaker: {open_for: -1s}
    connector: {type: webhook, url_env: FERRY_TEST_UNSET_HOOK_URL}
  - name: shop
    topics: [outbox.product]
    connector:
      type: http
      base_url: https://user:hunter2@partner.example
      timeout: -1s
      entities:
        product:
          create: {path: "v1/items", id: $.id}
          update: {path: "/v1/items/{{.remote_id}}"}
          delete: {path: "/v1/items/{{.remote_id}}"}
  - name: hooks2
    topics: [outbox.product]
    connector: {type: webhook, url: "https://h.example/x?token=tok-in-file", timeout: -1s}
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	code := run(t.Context(), []string{"--config", p}, func(string) string { return "" }, io.Discard, &stderr)
	if code != 2 {
		t.Fatalf("exit %d, want 2: %s", code, stderr.String())
	}
	out := stderr.String()
	for _, want := range []string{
		"postgres_max_conns: -1",
		"admin_allowed_hosts[0]",
		"integrations[0].timeout: -1s",
		"integrations[0].park_recheck: -2s",
		"integrations[0].commit_interval: -1ms",
		"integrations[0].wait_recheck: -1s",
		"integrations[0].park_after: -1s",
		"integrations[0].breaker.open_for: -1s",
		"integrations[0].connector.url_env: environment variable FERRY_TEST_UNSET_HOOK_URL is not set",
		"integrations[1].connector.base_url: carries credentials",
		"integrations[1].connector.timeout: must not be negative",
		`integrations[1].connector.entities.product.create.path: "v1/items" must start with "/"`,
		"integrations[2].connector.timeout: -1s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("error lacks %q:\n%s", want, out)
		}
	}
	for _, secret := range []string{"hunter2", "tok-in-file"} {
		if strings.Contains(out, secret) {
			t.Errorf("the error quotes %q:\n%s", secret, out)
		}
	}
}
