package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/testutil"
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

// Unreachable Kafka or Postgres is weather, not a reason to exit: cdc
// keeps retrying, and its one log line per outage says what to check
// (and never prints the password).
func TestUnreachableKafkaAndPostgresSayWhatToDo(t *testing.T) {
	dead := testutil.DeadAddr(t) // refuses connections
	e := newEnv(t)
	for _, c := range []struct{ pg, brokers, want string }{
		{e.db, dead, "cannot reach Kafka brokers"},
		{"postgres://x:secret@" + dead + "/db?connect_timeout=2", e.kafka.Addrs[0], "is PostgreSQL running"},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		var stderr syncBuffer
		done := make(chan int, 1)
		go func() {
			done <- run(ctx, []string{"run", "--postgres-url", c.pg, "--brokers", c.brokers, "--slot", e.slot, "--admin-addr", "off", "--reconnect-max", "500ms"}, noenv, &bytes.Buffer{}, &stderr)
		}()
		logged := testutil.Eventually(30*time.Second, func() bool { return strings.Contains(stderr.String(), c.want) })
		exited := false
		select {
		case <-done:
			exited = true
		default:
		}
		cancel()
		code := <-done
		if !logged {
			t.Fatalf("no %q logged in 30s; stderr:\n%s", c.want, stderr.String())
		}
		if exited || code != 0 || strings.Contains(stderr.String(), "secret") {
			t.Fatalf("exited by itself %v, code %d; want it running until stopped, then 0, and no password; stderr:\n%s", exited, code, stderr.String())
		}
		// One line per outage and connection, not one per attempt.
		seen := map[string]bool{}
		for _, line := range strings.Split(stderr.String(), "\n") {
			msg, _, _ := strings.Cut(line, `","reason"`)
			if _, m, ok := strings.Cut(msg, `"msg":"`); ok && strings.Contains(m, "reconnecting") {
				if seen[m] {
					t.Fatalf("%q logged twice in one outage; stderr:\n%s", m, stderr.String())
				}
				seen[m] = true
			}
		}
	}
}
