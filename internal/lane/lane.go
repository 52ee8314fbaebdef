package lane

import (
	"context"
	"sync"
	"time"
)

// TP names a topic partition.
type TP struct {
	Topic     string
	Partition int32
}

// Item is one record queued for delivery.
type Item struct {
	Key    string
	Offset int64
	// Value is the caller's record (the scheduler does not look inside),
	// or, once Spilled, the caller's reference to where it was spilled.
	Value any
	// Spilled items live in durable storage: their offsets no longer hold
	// back the partition's watermark.
	Spilled bool
	// Redriven items are an operator's redrive (Redrive): not a record
	// of the partition, so not an offset of its watermark, and never
	// spilled (the caller keeps them durably itself).
	Redriven bool
}

// SpillFunc stores a blocked lane's items durably, in order, and returns a
// small reference item for each (Spilled set, same Key and Offset). It is
// called from the worker that holds the lane.
type SpillFunc func(tp TP, items []*Item) ([]*Item, error)

// Verdict is what a delivery attempt decided for its lane.
type Verdict int

// Verdicts.
const (
	// Done: the item is finished (delivered, already delivered, skipped);
	// the lane moves to its next item.
	Done Verdict = iota
	// Backoff: the item failed; the lane waits Outcome.Delay, then the
	// same item is attempted again.
	Backoff
	// Park: the item was rejected; the lane waits Outcome.Delay and then
	// re-checks the same item (an operator may have retried or skipped
	// it). The lane reports as parked meanwhile.
	Park
	// Pause: an operator paused the lane; it waits Outcome.Delay and
	// checks again. It reports as paused.
	Pause
)

// Outcome is a DeliverFunc's answer.
type Outcome struct {
	Verdict Verdict
	Delay   time.Duration
}

// DeliverFunc delivers one item. It is called from worker goroutines,
// never twice at once for one lane. ctx ends when the scheduler stops.
type DeliverFunc func(ctx context.Context, tp TP, it *Item) Outcome

// LaneState is a lane's state, for status reports.
type LaneState string

// Lane states (design.md: active, backing_off, parked, paused).
const (
	Active     LaneState = "active"
	BackingOff LaneState = "backing_off"
	Parked     LaneState = "parked"
	Paused     LaneState = "paused"
)

// Scheduler runs lanes over a bounded worker pool.
type Scheduler struct {
	workers int
	deliver DeliverFunc

	spill      SpillFunc
	spillAfter time.Duration

	mu    sync.Mutex
	cond  *sync.Cond // signals ready lanes, finished deliveries and stop
	ready []*lane
	parts map[TP]*partition
	stop  bool
}

type partition struct {
	tp       TP
	lanes    map[string]*lane
	offsets  []slot // in offset order; the head is the lowest unfinished
	next     int64  // the offset after the last added, -1 if none yet
	buffered int
	running  int
	revoked  bool
}

type slot struct {
	offset int64
	done   bool
}

type lane struct {
	p            *partition
	key          string
	queue        []*Item
	state        LaneState
	queued       bool // in the ready list
	running      bool
	timer        *time.Timer
	blockedSince time.Time // zero while the lane flows
}

// New returns a scheduler with the given number of workers.
func New(workers int, deliver DeliverFunc) *Scheduler {
	s := &Scheduler{workers: max(1, workers), deliver: deliver, parts: map[TP]*partition{}}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// SetSpill enables durable parking: a lane blocked (backing off, parked
// or paused) for at least after has its queued items spilled with fn.
// Call before Run.
func (s *Scheduler) SetSpill(after time.Duration, fn SpillFunc) {
	s.spillAfter, s.spill = after, fn
}

// AddSpilled puts reference items loaded from durable storage at the front
// of their lanes (a new owner of tp calls it before fetching tp). They do
// not take part in the watermark.
func (s *Scheduler) AddSpilled(tp TP, items ...*Item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.partition(tp)
	for _, it := range items {
		it.Spilled = true
		l := p.lane(it.Key)
		l.queue = append(l.queue, it)
		if l.blockedSince.IsZero() {
			l.blockedSince = time.Now() // it was blocked before: keep spilling while it stays so
		}
		s.enqueue(l)
	}
}

// Redrive appends an item an operator asked to deliver again (kept in
// durable storage by the caller; marked Redriven, so it takes no part in
// the watermark and is never spilled) at the end of its lane, and wakes the lane if it waits
// (backing off, parked or paused: its head is attempted again now, which
// is what the operator's retry of a failed or parked delivery asks for).
// Wake does the second alone, for a renewed request.
func (s *Scheduler) Redrive(tp TP, it *Item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it.Redriven = true
	l := s.partition(tp).lane(it.Key)
	l.queue = append(l.queue, it)
	s.wake(l)
}

// Wake makes a waiting lane of tp attempt its head item now; a lane that
// does not wait, or does not exist, is left as it is.
func (s *Scheduler) Wake(tp TP, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.parts[tp]; p != nil {
		if l := p.lanes[key]; l != nil {
			s.wake(l)
		}
	}
}

// wake ends l's wait and enqueues it; s.mu is held.
func (s *Scheduler) wake(l *lane) {
	if l.timer != nil && l.timer.Stop() {
		l.state, l.timer = Active, nil
	}
	s.enqueue(l)
}

func (s *Scheduler) partition(tp TP) *partition {
	p := s.parts[tp]
	if p == nil {
		p = &partition{tp: tp, lanes: map[string]*lane{}, next: -1}
		s.parts[tp] = p
	}
	return p
}

func (p *partition) lane(key string) *lane {
	l := p.lanes[key]
	if l == nil {
		l = &lane{p: p, key: key, state: Active}
		p.lanes[key] = l
	}
	return l
}

// Run starts the workers and returns when ctx ends and they have exited.
func (s *Scheduler) Run(ctx context.Context) {
	stopWatch := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.stop = true
		s.mu.Unlock()
		s.cond.Broadcast()
	})
	defer stopWatch()
	var wg sync.WaitGroup
	for range s.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.work(ctx)
		}()
	}
	wg.Wait()
	s.mu.Lock()
	for _, p := range s.parts {
		for _, l := range p.lanes {
			if l.timer != nil {
				l.timer.Stop()
			}
		}
	}
	s.mu.Unlock()
}

// Add queues items of one partition, in offset order, and returns how many
// items that partition now buffers (for the caller's fetch back-pressure).
func (s *Scheduler) Add(tp TP, items ...*Item) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.partition(tp)
	for _, it := range items {
		if p.next >= 0 && it.Offset < p.next {
			continue // a refetch of what we already hold
		}
		p.next = it.Offset + 1
		p.offsets = append(p.offsets, slot{offset: it.Offset})
		p.buffered++
		l := p.lane(it.Key)
		l.queue = append(l.queue, it)
		s.enqueue(l)
	}
	return p.buffered
}

// enqueue puts l on the ready list if it can run; s.mu is held.
func (s *Scheduler) enqueue(l *lane) {
	if l.queued || l.running || l.state != Active || len(l.queue) == 0 || l.p.revoked {
		return
	}
	l.queued = true
	s.ready = append(s.ready, l)
	s.cond.Signal()
}

func (s *Scheduler) work(ctx context.Context) {
	for {
		s.mu.Lock()
		for len(s.ready) == 0 && !s.stop {
			s.cond.Wait()
		}
		if s.stop {
			s.mu.Unlock()
			return
		}
		l := s.ready[0]
		s.ready[0] = nil
		s.ready = s.ready[1:]
		l.queued = false
		if l.p.revoked || len(l.queue) == 0 {
			s.mu.Unlock()
			continue
		}
		it := l.queue[0]
		l.running = true
		l.p.running++
		s.mu.Unlock()

		out := s.deliver(ctx, l.p.tp, it)

		s.mu.Lock()
		// Backing off, parked and paused lanes are all blocked: past
		// spillAfter their records move to durable storage.
		if out.Verdict != Done {
			if l.blockedSince.IsZero() {
				l.blockedSince = time.Now()
			}
			if s.spill != nil && time.Since(l.blockedSince) >= s.spillAfter {
				s.spillLane(l) // still holding the lane: no other worker touches it
			}
		}
		l.running = false
		l.p.running--
		switch out.Verdict {
		case Done:
			l.queue[0] = nil
			l.queue = l.queue[1:]
			if !it.Spilled && !it.Redriven {
				l.p.finish(it.Offset)
			}
			l.blockedSince = time.Time{}
			if len(l.queue) == 0 {
				delete(l.p.lanes, l.key) // lanes come and go with their tenants' traffic
			}
			s.enqueue(l)
		case Backoff, Park, Pause:
			l.state = map[Verdict]LaneState{Backoff: BackingOff, Park: Parked, Pause: Paused}[out.Verdict]
			l.timer = time.AfterFunc(out.Delay, func() {
				s.mu.Lock()
				defer s.mu.Unlock()
				l.state, l.timer = Active, nil
				s.enqueue(l)
			})
		}
		s.cond.Broadcast() // Revoke may be waiting for this partition
		s.mu.Unlock()
	}
}

// spillLane moves l's queued, not yet spilled items to durable storage and
// finishes their offsets. s.mu is held on entry and exit; it is released
// around the spill call. The caller holds the lane (running).
func (s *Scheduler) spillLane(l *lane) {
	var items []*Item
	for _, it := range l.queue {
		if !it.Spilled && !it.Redriven {
			items = append(items, it)
		}
	}
	if len(items) == 0 {
		return
	}
	s.mu.Unlock()
	refs, err := s.spill(l.p.tp, items)
	s.mu.Lock()
	if err != nil || len(refs) != len(items) {
		return // kept in memory; the next blocked attempt tries again
	}
	byItem := make(map[*Item]*Item, len(items))
	for i, it := range items {
		refs[i].Spilled = true
		byItem[it] = refs[i]
	}
	for i, it := range l.queue {
		if ref, ok := byItem[it]; ok {
			l.queue[i] = ref
			if !l.p.revoked {
				l.p.finish(it.Offset)
			}
		}
	}
}

// finish marks offset done and advances the watermark; s.mu is held.
func (p *partition) finish(offset int64) {
	p.buffered--
	for i := range p.offsets {
		if p.offsets[i].offset == offset {
			p.offsets[i].done = true
			break
		}
	}
	n := 0
	for n < len(p.offsets) && p.offsets[n].done {
		n++
	}
	if n > 0 {
		k := copy(p.offsets, p.offsets[n:])
		p.offsets = p.offsets[:k]
	}
}

// Committable returns the offset to commit for tp (the lowest offset not
// finished, or the one after the last added when all are), and false when
// nothing was added for tp.
func (s *Scheduler) Committable(tp TP) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.parts[tp]
	if p == nil || p.next < 0 {
		return 0, false
	}
	if len(p.offsets) > 0 {
		return p.offsets[0].offset, true
	}
	return p.next, true
}

// Revoke stops scheduling the partitions, waits (until ctx ends) for their
// deliveries in flight to finish, forgets them and returns the offsets to
// commit for them. Queued items are dropped: the next owner refetches them
// from the committed offset.
func (s *Scheduler) Revoke(ctx context.Context, tps []TP) map[TP]int64 {
	s.mu.Lock()
	for _, tp := range tps {
		if p := s.parts[tp]; p != nil {
			p.revoked = true
			for _, l := range p.lanes {
				if l.timer != nil {
					l.timer.Stop()
				}
			}
		}
	}
	stopWatch := context.AfterFunc(ctx, s.cond.Broadcast)
	defer stopWatch()
	for ctx.Err() == nil && !s.stop && s.runningIn(tps) {
		s.cond.Wait()
	}
	out := map[TP]int64{}
	for _, tp := range tps {
		p := s.parts[tp]
		if p == nil {
			continue
		}
		if p.next >= 0 && p.running == 0 {
			if len(p.offsets) > 0 {
				out[tp] = p.offsets[0].offset
			} else {
				out[tp] = p.next
			}
		}
		delete(s.parts, tp)
	}
	s.mu.Unlock()
	return out
}

func (s *Scheduler) runningIn(tps []TP) bool {
	for _, tp := range tps {
		if p := s.parts[tp]; p != nil && p.running > 0 {
			return true
		}
	}
	return false
}

// Buffered returns the items tp holds unfinished.
func (s *Scheduler) Buffered(tp TP) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.parts[tp]; p != nil {
		return p.buffered
	}
	return 0
}

// LaneCounts returns how many lanes are in each state.
func (s *Scheduler) LaneCounts() map[LaneState]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[LaneState]int{}
	for _, p := range s.parts {
		for _, l := range p.lanes {
			out[l.state]++
		}
	}
	return out
}
