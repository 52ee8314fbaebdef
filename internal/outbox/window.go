package outbox

import (
	"encoding/json"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/ferry-cdc/ferry/internal/lsnack"
	"github.com/ferry-cdc/ferry/internal/metrics"
)

// WatermarkPrefix is the logical message prefix of resync watermarks
// (see Resync): a low mark (non-transactional) opens a request's window,
// alive marks (non-transactional) say its server is still at work,
// a chunk mark (transactional, first in its transaction) says the rest of
// the transaction is the request's resync events, and an end mark
// (transactional) closes the window at its transaction's commit.
const WatermarkPrefix = "ferry.resync"

// windowIdle is how long a window may see no mark of its request before
// the reader gives it up (its server died and nothing serves the request
// again), releasing the slot position it holds. A server writes alive
// marks meanwhile (aliveEvery) through its long statements.
const windowIdle = time.Hour

// mark is a watermark's content.
type mark struct {
	Mark    string `json:"mark"` // low, alive, chunk, end
	Request int64  `json:"request"`
	Attempt int    `json:"attempt"`
	Tenant  string `json:"tenant,omitempty"` // low marks
}

// window is one resync request's open window in the stream: from its low
// mark to the commit of its end mark. It records which of the tenant's
// objects changed inside it (their own events carry a newer state than
// the resync read), and holds the slot's confirmed position before its low
// mark, so a reader restarted inside it decodes the whole window again.
type window struct {
	mark
	keys       map[string]struct{} // aggregate_type "\x00" aggregate_id
	hold       *lsnack.Pending
	seen       time.Time // last mark of the request
	published  int
	superseded int
}

// windows are the resync windows open in one replication session (a new
// session starts before them again: the tracker's holds see to that).
// Owned by the stream goroutine.
type windows struct {
	log     *slog.Logger
	m       *metrics.CDC
	tracker *lsnack.Tracker
	open    map[int64]*window // by request

	chunk     *window // the window whose chunk transaction is being received
	inChunk   bool    // the transaction being received is a chunk (window or not)
	dropMark  mark    // the chunk mark of a chunk without its window
	dropped   int     // its events dropped so far
	ending    *window // the window the transaction being received ends
	now       func() time.Time
	lastSweep time.Time
}

func newWindows(log *slog.Logger, m *metrics.CDC, tracker *lsnack.Tracker) *windows {
	return &windows{log: log, m: m, tracker: tracker, open: map[int64]*window{}, now: time.Now}
}

// message handles a watermark.
func (w *windows) message(lm *pglogrepl.LogicalDecodingMessage) {
	var mk mark
	if err := json.Unmarshal(lm.Content, &mk); err != nil || mk.Request == 0 {
		w.log.Warn("resync watermark not understood; ignored", "content", string(lm.Content))
		return
	}
	old := w.open[mk.Request]
	switch {
	case mk.Mark == "low" && !lm.Transactional:
		win := &window{mark: mk, keys: map[string]struct{}{}, hold: w.tracker.Hold(), seen: w.now()}
		if old != nil {
			// A new attempt: the old one's server gave up. The old hold
			// lasts as long as the new one, so a restart decodes the old
			// attempt's chunks inside their own window again.
			w.close(old, win.hold, "superseded by attempt "+strconv.Itoa(mk.Attempt))
		}
		w.open[mk.Request] = win
		w.m.ResyncWindows.Set(float64(len(w.open)))
	case mk.Mark == "alive" && !lm.Transactional:
		if old != nil && old.Attempt == mk.Attempt {
			old.seen = w.now() // its server is still at work
		}
	case mk.Mark == "chunk" && lm.Transactional:
		w.inChunk = true
		if old != nil && old.Attempt == mk.Attempt {
			w.chunk = old
			old.seen = w.now()
		} else {
			w.dropMark = mk
		}
	case mk.Mark == "end" && lm.Transactional:
		if old != nil && old.Attempt == mk.Attempt {
			w.ending = old
		}
	default:
		w.log.Warn("resync watermark not understood; ignored", "content", string(lm.Content), "transactional", lm.Transactional)
	}
}

// event reports whether e, an event of the transaction being received,
// is published: a resync event of an open window is not when its object
// changed inside the window, and one whose window's start this session
// never saw is not at all. Any other event is, and marks its object
// changed in each open window of its tenant.
func (w *windows) event(e *Event) bool {
	if w.inChunk {
		switch {
		case w.chunk == nil:
			w.dropped++
			w.m.ResyncEvents.WithLabelValues("dropped").Inc()
			return false
		case has(w.chunk.keys, e):
			w.chunk.superseded++
			w.m.ResyncEvents.WithLabelValues("superseded").Inc()
			return false
		}
		w.chunk.published++
		w.m.ResyncEvents.WithLabelValues("published").Inc()
		return true
	}
	if len(w.open) == 0 {
		return true
	}
	for _, win := range w.open {
		if win.Tenant == e.TenantID {
			win.keys[key(e)] = struct{}{}
		}
	}
	return true
}

// commit ends the transaction being received; p is its tracker entry.
func (w *windows) commit(p *lsnack.Pending) {
	if w.inChunk && w.chunk == nil && w.dropped > 0 {
		w.log.Error("resync events dropped: their window's start (low watermark) is before where this session began, so which objects changed inside it is unknown; the request is served again if it is not done, else enable the tenant again",
			"request", w.dropMark.Request, "attempt", w.dropMark.Attempt, "events", w.dropped)
	}
	if w.ending != nil {
		w.close(w.ending, p, "")
	}
	w.chunk, w.inChunk, w.dropped, w.ending = nil, false, 0, nil
	if len(w.open) == 0 {
		return // nothing to sweep: no clock read per transaction
	}
	if now := w.now(); now.Sub(w.lastSweep) > time.Minute {
		w.lastSweep = now
		for _, win := range w.open {
			if now.Sub(win.seen) > windowIdle {
				w.close(win, nil, "no mark for "+windowIdle.String())
			}
		}
	}
}

// close ends win: its hold is released once until (the transaction of its
// end mark, or the hold of the attempt after it) and everything before it
// are done.
func (w *windows) close(win *window, until *lsnack.Pending, why string) {
	delete(w.open, win.Request)
	w.tracker.Release(win.hold, until)
	w.m.ResyncWindows.Set(float64(len(w.open)))
	if why != "" {
		w.log.Warn("resync window given up", "request", win.Request, "attempt", win.Attempt, "tenant_id", win.Tenant, "reason", why)
		return
	}
	w.log.Info("resync window closed", "request", win.Request, "attempt", win.Attempt, "tenant_id", win.Tenant,
		"published", win.published, "superseded", win.superseded, "changed_inside", len(win.keys))
}

func key(e *Event) string { return e.AggregateType + "\x00" + e.AggregateID }

func has(keys map[string]struct{}, e *Event) bool {
	_, ok := keys[key(e)]
	return ok
}
