package sinkapp

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The sink reads the same FERRY_KAFKA_* variables and kafka.tls/kafka.sasl
// keys as cdc, validates them for run and for the commands that read lag
// from Kafka, and refuses PLAIN without TLS.
func TestKafkaSecuritySettingsSameAsCDC(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sink.yaml")
	if err := os.WriteFile(p, []byte(`
postgres_url: postgres://x/y
kafka:
  brokers: [127.0.0.1:9092]
  tls: {enabled: true, server_name: file.example}
  sasl: {mechanism: SCRAM-SHA-256, username: file-user}
integrations:
  - name: hooks
    topics: [outbox.product]
    connector: {type: webhook, url: http://127.0.0.1:1/hooks}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"FERRY_KAFKA_TLS_SERVER_NAME": "env.example", "FERRY_KAFKA_SASL_USERNAME": "env-user", "FERRY_KAFKA_SASL_PASSWORD": "env-pass"}
	c, err := parse([]string{"--config", p}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	k := c.cfg.Kafka
	if !k.TLS.Enabled || k.TLS.ServerName != "env.example" || k.SASL.Mechanism != "SCRAM-SHA-256" || k.SASL.Username != "env-user" || k.SASL.Password.Reveal() != "env-pass" {
		t.Fatalf("kafka settings: %+v", k)
	}

	plain := map[string]string{"FERRY_KAFKA_TLS": "false", "FERRY_KAFKA_SASL_MECHANISM": "PLAIN", "FERRY_KAFKA_SASL_PASSWORD": "p"}
	for _, args := range [][]string{{"--config", p}, {"status", "--config", p}} {
		var stderr bytes.Buffer
		code := run(context.Background(), args, func(k string) string { return plain[k] }, &bytes.Buffer{}, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "kafka.sasl.mechanism: PLAIN without TLS") {
			t.Errorf("%v: exit %d, stderr: %s", args, code, stderr.String())
		}
	}
	var stdout bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, func(string) string { return "" }, &stdout, io.Discard); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, want := range []string{"FERRY_KAFKA_TLS", "FERRY_KAFKA_TLS_CA_FILE", "FERRY_KAFKA_TLS_CERT_FILE", "FERRY_KAFKA_TLS_KEY_FILE", "FERRY_KAFKA_TLS_SERVER_NAME",
		"FERRY_KAFKA_SASL_MECHANISM", "FERRY_KAFKA_SASL_USERNAME", "FERRY_KAFKA_SASL_PASSWORD", "--kafka-sasl-allow-plaintext"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}
