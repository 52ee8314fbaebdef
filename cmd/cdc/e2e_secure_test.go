package main

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ferry-cdc/ferry/internal/kafkaconf"
	"github.com/ferry-cdc/ferry/internal/kafkatest"
	"github.com/ferry-cdc/ferry/internal/pgtest"
)

// cdc in this process (under the race detector) streams outbox rows into a
// broker that speaks only TLS and requires SCRAM-SHA-256, configured by
// the FERRY_KAFKA_* environment alone; then `cdc backfill` publishes the
// same rows again through the same settings.
func TestSecuredKafka_StreamAndBackfillOverTLSAndSCRAM(t *testing.T) {
	certs := kafkatest.NewCerts(t)
	b := kafkatest.NewSecured(t, certs, kfake.EnableSASL(), kfake.Superuser(kafkaconf.MechanismSCRAMSHA256, "cdc", "cdc-secret"))
	vars := map[string]string{
		"FERRY_KAFKA_TLS": "true", "FERRY_KAFKA_TLS_CA_FILE": certs.CAFile, "FERRY_KAFKA_TLS_SERVER_NAME": "localhost",
		"FERRY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "FERRY_KAFKA_SASL_USERNAME": "cdc", "FERRY_KAFKA_SASL_PASSWORD": "cdc-secret",
	}
	getenv := func(k string) string { return vars[k] }
	kc := kafkaconf.Config{Brokers: b.Addrs, TLS: kafkaconf.TLS{Enabled: true, CAFile: certs.CAFile},
		SASL: kafkaconf.SASL{Mechanism: kafkaconf.MechanismSCRAMSHA256, Username: "cdc", Password: "cdc-secret"}}
	b.ClientOpts = kc.Opts()
	e := &env{t: t, db: pgtest.New(t), kafka: b}
	connectEnv(t, e)
	e.setup() // no Kafka needed

	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, e.args(), getenv, io.Discard, &stderr) }()
	var once sync.Once
	stop := func() int {
		code := -1
		once.Do(func() { cancel(); code = <-done })
		return code
	}
	t.Cleanup(func() { stop() })
	var ids []string
	for i := range 30 {
		ids = append(ids, e.insert([]string{"acme", "globex", "initech"}[i%3], "product", "p1", "product.updated", `{"n":1}`))
	}
	recs := e.kafka.Consume(t, time.Minute, hasIDs(ids), e.topic("product"))
	if len(eventIDs(recs)) != len(ids) {
		t.Fatalf("read %d distinct events over TLS+SASL, want %d", len(eventIDs(recs)), len(ids))
	}
	if code := stop(); code != 0 {
		t.Fatalf("cdc exit %d:\n%s", code, stderr.String())
	}

	args := e.args()
	args[0] = "backfill"
	var out, errb syncBuffer
	bctx, bcancel := context.WithTimeout(context.Background(), time.Minute)
	defer bcancel()
	if code := run(bctx, args, getenv, &out, &errb); code != 0 || !strings.Contains(out.String(), "backfilled 30 events") {
		t.Fatalf("backfill exit %d: %s %s", code, out.String(), errb.String())
	}
	recs = e.kafka.Consume(t, time.Minute, kafkatest.AtLeast(60), e.topic("product"))
	for id, n := range eventIDs(recs) {
		if n < 2 {
			t.Errorf("event %s read %d times after the backfill, want 2", id, n)
		}
	}
}
