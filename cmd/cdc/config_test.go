package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cdc.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func noenv(string) string { return "" }

func TestConfigFileThenEnvThenFlags(t *testing.T) {
	path := writeFile(t, `
postgres_url: postgres://file@127.0.0.1/app
kafka:
  brokers: [file:9092]
  dead_letter_topic: dlq.file
outbox:
  slot: file_slot
  heartbeat_interval: 3s
route:
  key: tenant_aggregate
`)
	env := map[string]string{"FERRY_SLOT": "env_slot", "FERRY_KAFKA_BROKERS": "env:9092,env2:9092"}
	c, err := parse([]string{"run", "--config", path, "--dead-letter-topic", "dlq.flag"}, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.cfg
	if cfg.PostgresURL != "postgres://file@127.0.0.1/app" || cfg.Outbox.Slot != "env_slot" ||
		strings.Join(cfg.Kafka.Brokers, ",") != "env:9092,env2:9092" || cfg.Kafka.DeadLetterTopic != "dlq.flag" ||
		cfg.Outbox.HeartbeatInterval != 3*time.Second || cfg.Route.Key != "tenant_aggregate" || cfg.Route.Envelope != "raw" {
		t.Fatalf("merged config wrong: %+v", cfg)
	}
}

func TestConfigUnknownKeyNamesPath(t *testing.T) {
	path := writeFile(t, "outbox:\n  slto: x\n")
	_, err := parse([]string{"run", "--config", path}, noenv, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "slto") {
		t.Fatalf("err = %v, want the unknown key named", err)
	}
}

func TestConfigReportsEveryProblemAtOnce(t *testing.T) {
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"run", "--brokers", "nocolon", "--slot", "Bad-Slot", "--topic-template", "{{"}, noenv, &bytes.Buffer{}, &stderr)
	if code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	for _, want := range []string{"postgres_url", "kafka.brokers[0]", "outbox.slot", "route.topic_template"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

func TestHelpExplainsSettings(t *testing.T) {
	var stdout bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, noenv, &stdout, &bytes.Buffer{}); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"--postgres-url", "FERRY_POSTGRES_URL", "--brokers", "FERRY_KAFKA_BROKERS", "--topic-template", "--recover-lost-slot", "backfill"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestUnreachableKafkaAndPostgresSayWhatToDo(t *testing.T) {
	dead := freeAddr(t) // nothing listens there
	var stderr bytes.Buffer
	code := run(context.Background(), []string{"run", "--postgres-url", "postgres://x@" + dead + "/db?connect_timeout=2", "--brokers", dead}, noenv, &bytes.Buffer{}, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "cannot reach Kafka brokers") || !strings.Contains(stderr.String(), "--brokers") {
		t.Fatalf("exit %d, stderr: %s", code, stderr.String())
	}
	e := newEnv(t)
	stderr.Reset()
	code = run(context.Background(), []string{"run", "--postgres-url", "postgres://x:secret@" + dead + "/db?connect_timeout=2", "--brokers", e.kafka.Addrs[0]}, noenv, &bytes.Buffer{}, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "is PostgreSQL running") || strings.Contains(stderr.String(), "secret") {
		t.Fatalf("exit %d, stderr: %s (want a hint and no password)", code, stderr.String())
	}
}
