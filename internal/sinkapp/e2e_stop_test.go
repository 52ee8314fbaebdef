package sinkapp

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// A clean stop (SIGTERM) that comes while a partner call is under way
// lets the call finish and records the partner's answer, so the next
// sink does not send the event again. (Found in a clean-clone make test
// run: the stop cancelled the call and then the log's write, "finish
// e-1: context canceled", the delivery stayed in flight, and the
// restarted sink sent it a second time.)
func TestGuarantee3_StopDuringAPartnerCallRecordsItsAnswer(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	arrived, release := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Idempotency-Key") == "shop:e-stop" {
			select {
			case arrived <- struct{}{}:
				<-release // answer only once the sink was told to stop
			default:
			}
		}
		e.sim.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.simURL = srv.URL
	cfg := e.config("")

	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"run", "--config", cfg, "--instance-id", "stop-1"}, func(string) string { return "" }, io.Discard, &stderr)
	}()
	e.produce("t1", "e-stop", "product.created", `{"n":1}`)
	<-arrived
	cancel() // SIGTERM while the partner holds the call
	close(release)
	if code := <-done; code != 0 {
		t.Fatalf("sink exit %d:\n%s", code, stderr.String())
	}
	if got := e.state("e-stop"); got != "succeeded" {
		t.Fatalf("after the stop the delivery is %q, want succeeded (the partner applied it):\n%s", got, stderr.String())
	}
	if strings.Contains(stderr.String(), "context canceled") {
		t.Errorf("the stop cancelled a delivery-log write:\n%s", stderr.String())
	}

	// The next sink delivers what comes after, and never e-stop again.
	stop := e.start("run", "--config", cfg, "--instance-id", "stop-1")
	e.produce("t1", "e-after", "product.updated", `{"n":2}`)
	waitFor(t, 30*time.Second, "e-after delivered", func() bool { return e.state("e-after") == "succeeded" })
	stop()
	calls := 0
	for _, r := range e.sim.Requests("") {
		if r.IdempotencyKey == "shop:e-stop" {
			calls++
		}
	}
	if calls != 1 {
		t.Fatalf("partner got e-stop %d times, want once: %+v", calls, e.sim.Requests(""))
	}
}

// Two live processes with one instance id: Kafka lets the newer in and
// fences the older, which exits non-zero saying why and what to do
// (docs/operations.md), while the newer one goes on delivering.
func TestSecondProcessWithTheSameInstanceIDFencesTheFirst(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	cfg := e.config("")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var older syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"run", "--config", cfg, "--instance-id", "dup"}, func(string) string { return "" }, io.Discard, &older)
	}()
	e.produce("t1", "e-1", "product.created", `{"n":1}`)
	waitFor(t, 30*time.Second, "e-1 delivered by the older process", func() bool { return e.state("e-1") == "succeeded" })

	stop := e.start("run", "--config", cfg, "--instance-id", "dup")
	select {
	case code := <-done:
		if code != 1 || !strings.Contains(older.String(), "Kafka fenced this process") || !strings.Contains(older.String(), `same instance id "dup"`) {
			t.Fatalf("older process exit %d, want 1 with the fencing explained:\n%s", code, older.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("older process still running 60s after a second process joined with its instance id:\n%s", older.String())
	}
	e.produce("t1", "e-2", "product.updated", `{"n":2}`)
	waitFor(t, 30*time.Second, "e-2 delivered by the newer process", func() bool { return e.state("e-2") == "succeeded" })
	if code, logs := stop(); code != 0 {
		t.Fatalf("newer process exit %d:\n%s", code, logs)
	}
}

// The broker going away mid-run is weather: the sink stays up, says it
// is not ready, counts the reconnects, and once the broker is back
// delivers what came meanwhile, in order and once.
func TestGuarantee7_SinkRidesThroughABrokerOutageMidRun(t *testing.T) {
	e := newEnvWith(t, partnersim.Config{}, kfake.DataDir(t.TempDir()))
	admin := freeAddr(t)
	stop := e.start("--config", e.config(""), "--admin-addr", admin)
	for n := 1; n <= 20; n++ {
		e.produce("acme", fmt.Sprintf("acme-%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
	}
	waitFor(t, time.Minute, "20 delivered before the outage", func() bool { return len(e.delivered()["acme"]) == 20 })

	e.kafka.Stop(t)
	waitFor(t, time.Minute, "not ready while Kafka is down", func() bool {
		code, why := readyz(admin)
		return code == http.StatusServiceUnavailable && strings.Contains(why, "kafka") &&
			metric(admin, `ferry_sink_reconnects_total{target="kafka"}`) >= 1
	})
	e.kafka.Start(t)
	for n := 21; n <= 40; n++ {
		e.produce("acme", fmt.Sprintf("acme-%d", n), "product.updated", fmt.Sprintf(`{"n":%d}`, n))
	}
	waitFor(t, time.Minute, "40 delivered and ready after the outage", func() bool {
		code, _ := readyz(admin)
		return code == http.StatusOK && len(e.delivered()["acme"]) >= 40
	})
	got := e.delivered()["acme"]
	for i, n := range got {
		if n != i+1 {
			t.Fatalf("partner applied %v, want 1..40 in order, each once", got)
		}
	}
	if code, logs := stop(); code != 0 {
		t.Fatalf("sink exit %d:\n%s", code, logs)
	}
}
