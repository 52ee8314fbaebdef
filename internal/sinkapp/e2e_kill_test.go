package sinkapp

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/partnersim"
	"github.com/ferry-cdc/ferry/internal/testutil"
)

var (
	sinkOnce sync.Once
	sinkBin  string
	sinkErr  error
)

// sinkBinary builds this command once, for tests that kill it.
func sinkBinary(t *testing.T) string {
	t.Helper()
	sinkOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ferry-sink-bin-")
		if err != nil {
			sinkErr = err
			return
		}
		sinkBin = filepath.Join(dir, "sink")
		if out, err := exec.Command("go", "build", "-o", sinkBin, "../../cmd/sink").CombinedOutput(); err != nil {
			sinkErr = fmt.Errorf("%w: %s", err, out)
		}
	})
	if sinkErr != nil {
		t.Fatalf("build sink: %v", sinkErr)
	}
	return sinkBin
}

// sinkProcess is the sink binary running as a process of its own.
type sinkProcess struct {
	cmd    *exec.Cmd
	stderr *testutil.SyncBuffer
	done   chan struct{}
}

func (e *env) startProcess(args ...string) *sinkProcess {
	e.t.Helper()
	p := &sinkProcess{cmd: exec.Command(sinkBinary(e.t), args...), stderr: &testutil.SyncBuffer{}, done: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }() // the exit status of a killed process says nothing
	return p
}

// kill ends the process with SIGKILL and waits for it to be gone.
func (p *sinkProcess) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// A sink killed with SIGKILL under load and restarted at once, five
// times, gets its partitions back each time (static group membership)
// and resumes delivering; every tenant's events reach the partner in
// order, each applied once. The recovery time of each restart (kill to
// the first partner call of the new process) is logged for
// docs/reliability.md; only resumption, within a generous ceiling, is
// asserted.
func TestGuarantee7_SinkKilledFiveTimesResumesInOrder(t *testing.T) {
	e := newEnv(t, partnersim.Config{Latency: 20 * time.Millisecond, Jitter: 5 * time.Millisecond})
	const tenants, perTenant, kills = 50, 100, 5
	want := map[string]int{}
	for n := 1; n <= perTenant; n++ {
		for i := range tenants {
			tenant := fmt.Sprintf("t%02d", i)
			want[tenant] = perTenant
			e.prod.Produce(context.Background(), eventRecord(e.topic, tenant, fmt.Sprintf("%s-%d", tenant, n), n), func(_ *kgo.Record, err error) {
				if err != nil {
					t.Errorf("produce: %v", err) // t.Errorf is safe off the test goroutine
				}
			})
		}
	}
	if err := e.prod.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Calls are timed as they arrive, before the partner's latency: a
	// call that arrives after a kill comes from the new process.
	var mu sync.Mutex
	var arrivals []time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		e.sim.ServeHTTP(w, r)
	}))
	defer srv.Close()
	e.simURL = srv.URL
	// The engine timeout bounds a dead process's lease on the deliveries
	// it had in flight (timeout + 6s): those tenants wait that long.
	cfg := e.config("    timeout: 3s\n")
	args := []string{"--config", cfg, "--instance-id", "kill-test", "--session-timeout", "30s"}
	total := func() int {
		n := 0
		for _, s := range e.delivered() {
			n += len(s)
		}
		return n
	}
	p := e.startProcess(args...)
	defer func() {
		p.kill()
		if t.Failed() {
			t.Logf("last sink's stderr:\n%s", p.stderr.String())
		}
	}()
	var recovery []time.Duration
	for k := range kills {
		before := total()
		waitFor(t, 2*time.Minute, "deliveries under load", func() bool { return total() >= before+300 })
		p.kill()
		killed := time.Now()
		p = e.startProcess(args...)
		var first time.Time
		waitFor(t, time.Minute, fmt.Sprintf("delivery to resume after kill %d", k+1), func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, at := range arrivals {
				if at.After(killed) {
					first = at
					return true
				}
			}
			return false
		})
		recovery = append(recovery, first.Sub(killed))
		if first.Sub(killed) > 2*time.Second { // for the record, not an assertion
			t.Logf("restart %d took %v; the new process logged:\n%s", k+1, first.Sub(killed), p.stderr.String())
		}
	}
	waitFor(t, 3*time.Minute, "every event", func() bool { return total() >= tenants*perTenant })
	checkInOrder(t, e.delivered(), want)

	sorted := slices.Clone(recovery)
	slices.Sort(sorted)
	t.Logf("recovery after SIGKILL (kill -> first partner call of the restarted sink): %v; p50 %v, max %v",
		recovery, sorted[len(sorted)/2].Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond))
}

// eventRecord is a product event as cdc would produce it, with payload
// {"n": n}.
func eventRecord(topic, tenant, eventID string, n int) *kgo.Record {
	return &kgo.Record{Topic: topic, Key: []byte(tenant), Value: fmt.Appendf(nil, `{"n":%d}`, n), Headers: []kgo.RecordHeader{
		{Key: "event_id", Value: []byte(eventID)}, {Key: "tenant_id", Value: []byte(tenant)},
		{Key: "event_type", Value: []byte("product.updated")}, {Key: "aggregate_type", Value: []byte("product")},
		{Key: "aggregate_id", Value: []byte("p1")}, {Key: "commit_lsn", Value: []byte("0/16B3748")},
	}}
}
