package sinkapp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/kafkaconf"
	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/ops"
	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// securedEnv is an env whose broker speaks only TLS and requires SASL:
// cdc signs in with SCRAM-SHA-512 (environment variables only), the sink
// with PLAIN over TLS (kafka.tls and kafka.sasl in its YAML, the password
// from FERRY_KAFKA_SASL_PASSWORD).
type securedEnv struct {
	*env
	certs *kafkatest.Certs
}

const (
	scramUser, scramPass = "ferry-cdc", "scram-secret"
	plainUser, plainPass = "ferry-sink", "plain-secret"
)

func newSecuredEnv(t *testing.T) *securedEnv {
	t.Helper()
	certs := kafkatest.NewCerts(t)
	b := kafkatest.NewSecured(t, certs, kfake.EnableSASL(),
		kfake.Superuser(kafkaconf.MechanismSCRAMSHA512, scramUser, scramPass),
		kfake.Superuser(kafkaconf.MechanismPlain, plainUser, plainPass))
	kc := kafkaconf.Config{Brokers: b.Addrs, TLS: kafkaconf.TLS{Enabled: true, CAFile: certs.CAFile},
		SASL: kafkaconf.SASL{Mechanism: kafkaconf.MechanismSCRAMSHA512, Username: scramUser, Password: scramPass}}
	b.ClientOpts = kc.Opts() // the test's own producer and readers sign in too
	e := &env{t: t, db: pgtest.New(t), kafka: b, sim: partnersim.New(partnersim.Config{}),
		vars: map[string]string{kafkaconf.PasswordEnv: plainPass}}
	srv := httptest.NewServer(e.sim)
	t.Cleanup(srv.Close)
	e.simURL = srv.URL
	e.topic = b.TopicPrefix + "outbox.product"
	e.prod = b.Client(t, kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), kgo.AllowAutoTopicCreation())
	var err error
	if e.conn, err = pgx.Connect(context.Background(), e.db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close(context.Background()) })
	return &securedEnv{env: e, certs: certs}
}

// sinkConfig is e.config with the broker's TLS and SASL settings.
func (s *securedEnv) sinkConfig() string {
	s.t.Helper()
	p := s.config("")
	b, err := os.ReadFile(p)
	if err != nil {
		s.t.Fatal(err)
	}
	body := strings.Replace(string(b), "kafka:\n", fmt.Sprintf("kafka:\n  tls: {enabled: true, ca_file: %s}\n  sasl: {mechanism: PLAIN, username: %s}\n", s.certs.CAFile, plainUser), 1)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// cdc starts the cdc binary against the secured broker with password
// pass, configured by environment variables only.
func (s *securedEnv) cdc(pass string) (cmd *exec.Cmd, stderr *syncBuffer, done chan struct{}) {
	s.t.Helper()
	cfg, err := pgx.ParseConfig(s.db)
	if err != nil {
		s.t.Fatal(err)
	}
	cmd = exec.Command(cdcBinary(s.t), "run", "--slot", cfg.Database, "--topic-template", s.kafka.TopicPrefix+"outbox.{{.AggregateType}}", "--admin-addr", "off", "--log-format", "text")
	cmd.Env = append(os.Environ(), "FERRY_POSTGRES_URL="+s.db, "FERRY_KAFKA_BROKERS="+strings.Join(s.kafka.Addrs, ","),
		"FERRY_KAFKA_TLS=true", "FERRY_KAFKA_TLS_CA_FILE="+s.certs.CAFile,
		"FERRY_KAFKA_SASL_MECHANISM=SCRAM-SHA-512", "FERRY_KAFKA_SASL_USERNAME="+scramUser, "FERRY_KAFKA_SASL_PASSWORD="+pass)
	stderr = &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }() // the exit status is read from cmd.ProcessState
	s.t.Cleanup(func() {
		_ = cmd.Process.Kill() // may have exited already
		<-done
		if s.t.Failed() {
			s.t.Logf("cdc stderr:\n%s", stderr.String())
		}
	})
	return cmd, stderr, done
}

// The whole pipeline over a secured broker: cdc publishes outbox rows
// over TLS with SCRAM-SHA-512, the sink consumes them over TLS with PLAIN
// and delivers them in order, and `sink status` reads the consumer lag
// through the same TLS and SASL settings.
func TestSecuredKafka_PipelineOverTLSAndSASL(t *testing.T) {
	s := newSecuredEnv(t)
	s.cdc(scramPass)
	waitFor(t, time.Minute, "cdc streaming", func() bool {
		var ok bool
		_ = s.conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE database = current_database() AND active)`).Scan(&ok)
		return ok
	})
	cfg := s.sinkConfig()
	s.start("--config", cfg)
	want := map[string]int{}
	for n := 1; n <= 20; n++ {
		for _, tenant := range []string{"acme", "globex", "initech"} {
			s.write([4]string{tenant, "product.updated", "p1", fmt.Sprintf(`{"n":%d}`, n)})
			want[tenant] = n
		}
	}
	waitFor(t, time.Minute, "60 events at the partner", func() bool {
		total := 0
		for _, seq := range s.delivered() {
			total += len(seq)
		}
		return total >= 60
	})
	checkInOrder(t, s.delivered(), want)

	st := s.status(cfg, plainPass)
	if len(st) != 1 || st[0].LagError != "" || len(st[0].Lag) == 0 {
		t.Fatalf("sink status over TLS+SASL: %+v", st)
	}
	st = s.status(cfg, "wrong")
	if len(st) != 1 || !strings.Contains(st[0].LagError, "SASL PLAIN authentication failed") {
		t.Fatalf("sink status with a wrong password: lag error %q, want it to name SASL PLAIN", st[0].LagError)
	}
}

// status runs `sink status --json` with the Kafka password pass.
func (s *securedEnv) status(cfg, pass string) []ops.IntegrationStatus {
	s.t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if code := run(ctx, []string{"status", "--json", "--config", cfg}, func(k string) string { return map[string]string{kafkaconf.PasswordEnv: pass}[k] }, &out, &errb); code != 0 {
		s.t.Fatalf("sink status: exit %d: %s", code, errb.String())
	}
	var st []ops.IntegrationStatus
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		s.t.Fatalf("sink status --json: %v\n%s", err, out.String())
	}
	return st
}

// A wrong password is not weather: cdc and the sink both exit non-zero
// within a minute, saying that SASL authentication with their mechanism
// failed (kfake closes the connection on bad credentials), without
// showing the password or blaming an unreachable broker.
func TestSecuredKafka_WrongPasswordExitsNamingSASL(t *testing.T) {
	s := newSecuredEnv(t)
	cmd, stderr, done := s.cdc("not-the-password")
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("cdc with a wrong password still running after a minute:\n%s", stderr.String())
	}
	if code := cmd.ProcessState.ExitCode(); code == 0 || !strings.Contains(stderr.String(), "SASL SCRAM-SHA-512 authentication failed") ||
		!strings.Contains(stderr.String(), "closed the connection during SASL authentication") || strings.Contains(stderr.String(), "not-the-password") || strings.Contains(stderr.String(), "cannot reach") {
		t.Fatalf("cdc exit %d, stderr:\n%s", code, stderr.String())
	}

	s.vars[kafkaconf.PasswordEnv] = "not-the-password"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errb syncBuffer
	code := run(ctx, []string{"--config", s.sinkConfig()}, func(k string) string { return s.vars[k] }, &bytes.Buffer{}, &errb)
	if ctx.Err() != nil {
		t.Fatalf("sink with a wrong password still running after a minute:\n%s", errb.String())
	}
	if code == 0 || !strings.Contains(errb.String(), "SASL PLAIN authentication failed") ||
		!strings.Contains(errb.String(), "closed the connection during SASL authentication") || strings.Contains(errb.String(), "not-the-password") || strings.Contains(errb.String(), "cannot reach") {
		t.Fatalf("sink exit %d, stderr:\n%s", code, errb.String())
	}
}
