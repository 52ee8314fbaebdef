package consume

import (
	"context"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferry-cdc/ferry/internal/delivery"
	"github.com/ferry-cdc/ferry/internal/lane"
	"github.com/ferry-cdc/ferry/internal/route"
	"github.com/ferry-cdc/ferry/pkg/connector"
)

// Redrive: an operator's retry files a request in the delivery log
// (delivery/redrive.go). redriveLoop, in the engine that owns the
// delivery's partition, appends it to the end of the tenant's lane,
// after everything the lane has already delivered (or holds), and wakes
// the lane; deliverRedrive delivers the stored copy when the lane gets
// there and closes the request once the lane is done with it. A lane
// still parked or backing off on the same delivery delivers it in place
// first (the retry made it pending); the request then finds it final
// and only closes.

// redriveRef is the in-memory stand-in of a redrive request.
type redriveRef struct {
	seq     int64
	eventID string
}

// redriveQueued is a request this engine holds in a lane.
type redriveQueued struct {
	tp          lane.TP
	key         string
	requestedAt time.Time
}

// redriveLoop picks up new redrive requests for the partitions this
// engine owns every park_recheck (and wakes the lane of a renewed one).
func (e *Engine) redriveLoop(ctx context.Context) error {
	t := time.NewTicker(min(e.cfg.ParkRecheck, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		reqs, err := e.dlog.Requests(ctx, e.cfg.Name)
		if err != nil {
			if ctx.Err() == nil {
				e.dbTrouble(err)
			}
			continue
		}
		e.commitMu.Lock()
		for _, r := range reqs {
			tp := lane.TP{Topic: r.Topic, Partition: r.Partition}
			if !e.owned[tp] {
				continue // another process's, or nobody's yet
			}
			q, held := e.redriving[r.Seq]
			switch {
			case !held:
				e.redriving[r.Seq] = redriveQueued{tp: tp, key: r.LaneKey, requestedAt: r.RequestedAt}
				e.sched.Redrive(tp, &lane.Item{Key: r.LaneKey, Offset: -1, Value: redriveRef{seq: r.Seq, eventID: r.EventID}})
				e.log.Info("redrive requested by an operator: queued at the end of the tenant's lane",
					"event_id", r.EventID, "tenant_id", r.TenantID, "partition", r.Partition)
			case r.RequestedAt.After(q.requestedAt):
				q.requestedAt = r.RequestedAt
				e.redriving[r.Seq] = q
				e.sched.Wake(tp, q.key)
			}
		}
		e.commitMu.Unlock()
	}
}

// forgetRedrives drops the requests held for partitions this engine no
// longer owns (their lanes were dropped; the next owner picks them up).
// commitMu is held.
func (e *Engine) forgetRedrives(tps []lane.TP) {
	for seq, q := range e.redriving {
		for _, tp := range tps {
			if q.tp == tp {
				delete(e.redriving, seq)
			}
		}
	}
}

// deliverRedrive delivers a redrive request's stored copy through the
// lane, and closes the request once the lane is done with it.
func (e *Engine) deliverRedrive(ctx context.Context, tp lane.TP, it *lane.Item, ref redriveRef) lane.Outcome {
	e.commitMu.Lock()
	owned := e.owned[tp]
	e.commitMu.Unlock()
	if !owned {
		return lane.Outcome{Verdict: lane.Done} // revoked meanwhile: the request stays for the next owner
	}
	ev, src, ok, err := e.dlog.Stored(ctx, e.cfg.Name, ref.eventID)
	if err != nil {
		return e.dbTrouble(err)
	}
	out := lane.Outcome{Verdict: lane.Done}
	if ok {
		// The record as the lane knows it: where it came from, for the
		// logs; its commit time is not kept (a redrive's retry.max_age
		// runs from the redrive).
		rec := &kgo.Record{Topic: src.Topic, Partition: src.Partition, Offset: src.Offset, Key: []byte(it.Key)}
		resync := ev.Headers[route.HeaderResync] // a resync event stays one (withResync)
		delete(ev.Headers, route.HeaderResync)
		out = e.deliverEvent(ctx, tp, rec, ev, resync, unusable(ev))
	} else {
		e.log.Warn("redrive request without a stored copy of its event; closed", "event_id", ref.eventID)
	}
	if out.Verdict == lane.Done {
		if err := e.dlog.DoneRedrive(ctx, e.cfg.Name, ref.seq); err != nil {
			return e.dbTrouble(err) // delivered; the next look finds it final and closes it
		}
		e.commitMu.Lock()
		delete(e.redriving, ref.seq)
		e.commitMu.Unlock()
	}
	return out
}

// redriveBudget adjusts a give-up check to a redriven delivery: failed
// attempts count after the redrive, and the age from it.
func redriveBudget(att delivery.Attempt, failed int, committed time.Time) (int, time.Time, bool) {
	if att.Redriven.IsZero() {
		return failed, committed, false
	}
	return failed - att.Base, att.Redriven, true
}

// unusable says why a stored copy cannot be sent ("" when it can): the
// copy of a record rejected as bad input (no tenant, a payload that is
// not JSON) is rejected again, never sent without its payload.
func unusable(ev connector.Event) string {
	switch p := strings.TrimSpace(string(ev.Payload)); {
	case ev.TenantID == "":
		return "the stored copy has no tenant"
	case p == "" || p == "null":
		return "the stored copy has no payload (the record's payload was not JSON)"
	}
	return ""
}
