package chaos

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/ferry-cdc/ferry/internal/partnersim"
)

// partner is the partner simulator behind a recorder that notes each
// event's first successful call (for recovery times) and calls for one
// event that overlap in time (two deliveries of one event at once).
type partner struct {
	sim *partnersim.Server
	tr  *tracker

	mu         sync.Mutex
	inFlight   map[string]int
	concurrent int
	examples   []string
}

// webhookEvent is the part of the sink's webhook body the harness reads.
type webhookEvent struct {
	EventID string  `json:"event_id"`
	Tenant  string  `json:"tenant_id"`
	Payload payload `json:"payload"`
}

func (p *partner) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/events" || r.Method != http.MethodPost {
		p.sim.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read body", http.StatusBadRequest)
		return
	}
	var ev webhookEvent
	_ = json.Unmarshal(body, &ev) // a body that is not an event is the simulator's to refuse
	p.mu.Lock()
	if p.inFlight[ev.EventID] > 0 {
		p.concurrent++
		if len(p.examples) < 5 {
			p.examples = append(p.examples, "two calls at once for event "+ev.EventID+" of tenant "+ev.Tenant+" at "+time.Now().Format("15:04:05.000"))
		}
	}
	p.inFlight[ev.EventID]++
	p.mu.Unlock()
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	p.sim.ServeHTTP(rec, r)
	if rec.status < 300 {
		p.tr.arrive(atPartner, ev.EventID, time.Now())
	}
	p.mu.Lock()
	if p.inFlight[ev.EventID]--; p.inFlight[ev.EventID] == 0 {
		delete(p.inFlight, ev.EventID)
	}
	p.mu.Unlock()
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
