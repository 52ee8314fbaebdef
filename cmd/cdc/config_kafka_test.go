package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// Every FERRY_KAFKA_* variable reaches the config; flags override the
// file and the environment; the password comes from the environment.
func TestKafkaSecuritySettingsFromFileEnvAndFlags(t *testing.T) {
	path := writeFile(t, `
postgres_url: postgres://file@127.0.0.1/app
kafka:
  brokers: [file:9092]
  tls: {enabled: false, server_name: file.example}
  sasl: {mechanism: PLAIN, username: file-user, password: file-pass}
`)
	env := map[string]string{
		"FERRY_KAFKA_TLS": "true", "FERRY_KAFKA_TLS_CA_FILE": "", "FERRY_KAFKA_TLS_SERVER_NAME": "env.example",
		"FERRY_KAFKA_SASL_MECHANISM": "scram-sha-512", "FERRY_KAFKA_SASL_USERNAME": "env-user", "FERRY_KAFKA_SASL_PASSWORD": "env-pass",
	}
	c, err := parse([]string{"run", "--config", path, "--kafka-sasl-username", "flag-user"}, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	k := c.cfg.Kafka.Config
	if !k.TLS.Enabled || k.TLS.ServerName != "env.example" || k.SASL.Mechanism != "SCRAM-SHA-512" || k.SASL.Username != "flag-user" || k.SASL.Password.Reveal() != "env-pass" {
		t.Fatalf("kafka settings: %+v", k)
	}
	// FERRY_KAFKA_TLS=false turns off what the file turned on.
	path = writeFile(t, "postgres_url: postgres://x/y\nkafka: {brokers: [b:9092], tls: {enabled: true}}\n")
	c, err = parse([]string{"run", "--config", path}, func(k string) string { return map[string]string{"FERRY_KAFKA_TLS": "false"}[k] }, &bytes.Buffer{})
	if err != nil || c.cfg.Kafka.TLS.Enabled {
		t.Fatalf("FERRY_KAFKA_TLS=false: %v, enabled %v", err, c != nil && c.cfg.Kafka.TLS.Enabled)
	}
}

// PLAIN without TLS is refused at start-up (exit 2) with the key path and
// the explicit way out; with that allow flag it is accepted.
func TestPlainWithoutTLSIsRefused(t *testing.T) {
	env := map[string]string{"FERRY_KAFKA_SASL_MECHANISM": "PLAIN", "FERRY_KAFKA_SASL_USERNAME": "u", "FERRY_KAFKA_SASL_PASSWORD": "p"}
	getenv := func(k string) string { return env[k] }
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"run", "--postgres-url", "postgres://x/y", "--brokers", "127.0.0.1:9092"}, getenv, &bytes.Buffer{}, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "kafka.sasl.mechanism: PLAIN without TLS") || !strings.Contains(stderr.String(), "FERRY_KAFKA_SASL_ALLOW_PLAINTEXT") {
		t.Fatalf("exit %d, stderr: %s", code, stderr.String())
	}
	if _, err := parse([]string{"run", "--postgres-url", "postgres://x/y", "--brokers", "127.0.0.1:9092", "--kafka-sasl-allow-plaintext"}, getenv, &bytes.Buffer{}); err != nil {
		t.Fatalf("explicitly allowed: %v", err)
	}
}

func TestHelpListsKafkaSecuritySettings(t *testing.T) {
	var stdout bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, noenv, &stdout, &bytes.Buffer{}); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"FERRY_KAFKA_TLS", "FERRY_KAFKA_TLS_CA_FILE", "FERRY_KAFKA_TLS_CERT_FILE", "FERRY_KAFKA_TLS_KEY_FILE", "FERRY_KAFKA_TLS_SERVER_NAME",
		"FERRY_KAFKA_SASL_MECHANISM", "FERRY_KAFKA_SASL_USERNAME", "FERRY_KAFKA_SASL_PASSWORD", "--kafka-sasl-allow-plaintext"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}
