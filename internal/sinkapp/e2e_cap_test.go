package sinkapp

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// inFlight wraps the partner and records the most calls it had at once.
type inFlight struct {
	next      http.Handler
	mu        sync.Mutex
	now, peak int
}

func (f *inFlight) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.now++
	f.peak = max(f.peak, f.now)
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.now--; f.mu.Unlock() }()
	f.next.ServeHTTP(w, r)
}

func (f *inFlight) max() int { f.mu.Lock(); defer f.mu.Unlock(); return f.peak }

// The concurrency cap bounds partner calls in flight for the whole
// integration, however many lanes are ready, and the cap is used in full.
func TestConcurrencyCapBoundsCallsInFlight(t *testing.T) {
	e := newEnv(t, partnersim.Config{Latency: 100 * time.Millisecond})
	f := &inFlight{next: e.sim}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	e.simURL = srv.URL
	for i := range 24 {
		e.produce(fmt.Sprintf("t%02d", i), fmt.Sprintf("e%02d", i), "product.updated", `{"n":1}`)
	}
	e.start("--config", e.config("    concurrency: 3\n"))
	waitFor(t, time.Minute, "24 tenants delivered", func() bool { return len(e.delivered()) == 24 })
	if got := f.max(); got != 3 {
		t.Fatalf("at most %d partner calls were in flight at once, want exactly the cap of 3 (16 workers, 24 ready lanes)", got)
	}
}

// The rate limit spaces partner calls: 40 calls at 20/s (burst 2) take
// at least 1.9 s however fast the partner answers.
func TestRateLimitSpacesPartnerCalls(t *testing.T) {
	e := newEnv(t, partnersim.Config{})
	for i := range 40 {
		e.produce(fmt.Sprintf("t%02d", i), fmt.Sprintf("e%02d", i), "product.updated", `{"n":1}`)
	}
	e.start("--config", e.config("    rate_limit: 20\n"))
	waitFor(t, time.Minute, "40 tenants delivered", func() bool { return len(e.delivered()) == 40 })
	reqs := e.sim.Requests("")
	if span := reqs[len(reqs)-1].Time.Sub(reqs[0].Time); span < 1800*time.Millisecond {
		t.Fatalf("40 calls in %s: faster than the rate limit of 20/s allows (at least 1.9 s)", span)
	}
}
