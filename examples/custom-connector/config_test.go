package main

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/ferry-cdc/ferry/pkg/sink"

	"example.com/crm-sink/crm"
)

// crm.yaml, the example config, is valid: the sink validates it and,
// given a context already ended, stops at once with exit code 0 (a bad
// config exits 2 before anything starts).
func TestExampleConfigIsValid(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	env := map[string]string{"CRM_API_KEY": "k"}
	var stderr strings.Builder
	code := sink.Run(ctx, []string{"--config", "crm.yaml", "--admin-addr", "off"}, func(k string) string { return env[k] },
		io.Discard, &stderr, sink.Connector("crm", crm.New))
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr.String())
	}
	// Without the key it is not.
	stderr.Reset()
	code = sink.Run(ctx, []string{"--config", "crm.yaml", "--admin-addr", "off"}, func(string) string { return "" },
		io.Discard, &stderr, sink.Connector("crm", crm.New))
	if code != 2 || !strings.Contains(stderr.String(), "integrations[0].connector.api_key_env: environment variable CRM_API_KEY is not set") {
		t.Fatalf("exit %d without CRM_API_KEY:\n%s", code, stderr.String())
	}
}
