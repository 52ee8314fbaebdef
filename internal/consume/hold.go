package consume

import (
	"github.com/twmb/franz-go/pkg/kgo"
)

// Why fetching is held (Engine.heldFor).
const (
	holdPaused  = "integration paused"
	holdBreaker = "circuit breaker open"
	holdBudget  = "max_buffered_bytes reached"
)

// holdLabels are the reasons as ferry_sink_fetch_held names them.
var holdLabels = map[string]string{holdPaused: "paused", holdBreaker: "breaker_open", holdBudget: "max_buffered_bytes"}

// hold pauses fetching every topic of the integration while the lanes
// cannot use more records: the integration is paused, its breaker is
// open, or the records in memory spent the byte budget. It resumes
// fetching once none holds (the budget: below half of it). Called after
// each fetch and every 100 ms (commitLoop).
//
// Pausing instead of letting the lanes park keeps a partner outage's or
// a pause's backlog in Kafka, where it already is durable, rather than
// copying it into ferry.parked_event. The budget never refuses a fetched
// record, so a single record larger than the budget is still delivered.
// Partition pauses for max_buffered_per_partition are separate (franz-go
// keeps topic and partition pauses apart).
func (e *Engine) hold() {
	e.holdMu.Lock()
	defer e.holdMu.Unlock()
	why := ""
	switch {
	case e.isPaused(""):
		why = holdPaused
	case e.breakerHolds():
		why = holdBreaker
	case e.budget != nil && (e.budget.Over() || e.heldFor == holdBudget && !e.budget.Under()):
		why = holdBudget
	}
	if why == e.heldFor {
		return
	}
	for reason, label := range holdLabels {
		v := 0.0
		if reason == why {
			v = 1
		}
		e.m.FetchHeld.WithLabelValues(e.cfg.Name, label).Set(v)
	}
	switch {
	case e.heldFor == "":
		e.cl.PauseFetchTopics(e.cfg.Topics...)
	case why == "":
		e.cl.ResumeFetchTopics(e.cfg.Topics...)
	}
	if why != holdBudget && e.heldFor != holdBudget {
		// (Budget holds come and go with the traffic: not logged.)
		if why == "" {
			e.log.Info("fetching resumed", "was", e.heldFor)
		} else {
			e.log.Info("fetching paused: the backlog waits in Kafka", "reason", why)
		}
	}
	e.heldFor = why
}

// breakerHolds reports whether the open breaker keeps every lane from
// calling the partner: it is open, and either the probe loop decides
// when it half-opens or its open delay has not passed. (Without a
// prober, a delivery after the delay half-opens it.)
func (e *Engine) breakerHolds() bool {
	return e.breaker.IsOpen() && (e.prober != nil || e.breaker.RemainingDelay() > 0)
}

// recordOverhead approximates the memory of a fetched record besides its
// key, value and headers (the kgo.Record, the lane item, the slices).
const recordOverhead = 256

// recordSize is what a fetched record counts against the byte budget.
func recordSize(r *kgo.Record) int64 {
	n := int64(len(r.Key) + len(r.Value) + recordOverhead)
	for _, h := range r.Headers {
		n += int64(len(h.Key) + len(h.Value) + 32)
	}
	return n
}

// detach copies a fetched record's key, value and header values into one
// allocation of its own. franz-go's records are slices of the fetch
// response: one record waiting in a slow lane would otherwise keep its
// whole response (up to fetch_max_bytes) alive, uncounted by the budget
// (sinkbench, 1 MB payloads: peak RSS 343-425 MiB before).
func detach(r *kgo.Record) {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Value)
	}
	buf := make([]byte, 0, n)
	take := func(b []byte) []byte {
		if b == nil {
			return nil
		}
		at := len(buf)
		buf = append(buf, b...)
		return buf[at:len(buf):len(buf)]
	}
	r.Key, r.Value = take(r.Key), take(r.Value)
	hs := make([]kgo.RecordHeader, len(r.Headers))
	for i, h := range r.Headers {
		// franz-go reads each header key into a string of its own.
		hs[i] = kgo.RecordHeader{Key: h.Key, Value: take(h.Value)}
	}
	r.Headers = hs
}
