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
	// Size is the item's bytes in memory (record key, value and headers),
	// counted against the scheduler's Budget while the item is queued.
	// Zero for spilled references.
	Size int64
	// Spilled items live in durable storage: their offsets no longer hold
	// back the partition's watermark.
	Spilled bool
	// Redriven items are an operator's redrive (Redrive): not a record
	// of the partition, so not an offset of its watermark, and never
	// spilled (the caller keeps them durably itself).
	Redriven bool
}

// SpillFunc stores a blocked lane's items durably, in order, after the
// ones it stored for the lane before. It is called from the worker that
// holds the lane. Once it returns nil the items are forgotten: the lane
// keeps only their count and reads them back with a LoadFunc.
type SpillFunc func(tp TP, items []*Item) error

// LoadFunc reads back, in order, up to n of a lane's spilled items that
// come after the reference item after (nil: from the lane's first), as
// reference items (Spilled set, Value the caller's reference). It is
// called from the worker that holds the lane, when the lane's next item
// is in durable storage; an error makes the lane back off and try again.
type LoadFunc func(ctx context.Context, tp TP, key string, after *Item, n int) ([]*Item, error)

// loadPage is how many spilled items a lane reads back at a time: a lane
// with 100,000 parked events holds at most this many references.
const loadPage = 256

// A lane blocked past spillAfter and waiting for its next attempt spills
// what arrives once it holds spillBytes or spillItems of it (the second
// at most half the partition's cap, SetSpill), without waiting for the
// attempt: the retry's backoff reaches a minute, and meanwhile its
// records would pile up in memory, up to the byte budget or the
// partition's cap, which stop fetching for every tenant of the
// integration or the partition until that attempt.
const (
	spillBytes = 1 << 20
	spillItems = 256
)

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
	// Shared marks a wait whose cause is not the lane's own but its whole
	// integration's (an open circuit breaker, a paused integration): the
	// caller stops fetching instead, so the lane's records stay in memory
	// (bounded by the Budget) and are never spilled for it.
	Shared bool
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
	load       LoadFunc
	spillAfter time.Duration
	spillItems int     // see spillBytes
	budget     *Budget // nil: bytes are not counted

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
	bytes    int64 // Size of the items counted in buffered
	running  int
	revoked  bool
	// forgotten: deleted by Revoke, its bytes released; a delivery that
	// outlived Revoke's wait releases nothing more.
	forgotten bool
}

type slot struct {
	offset int64
	done   bool
}

type lane struct {
	p     *partition
	key   string
	queue []*Item // loaded spilled references first, then records in memory
	// unloaded counts the lane's spilled items in durable storage not
	// loaded into queue: they come after queue's spilled references and
	// before its records in memory. cursor is the last spilled reference
	// loaded (nil: none yet), where the next load starts.
	unloaded     int
	cursor       *Item
	state        LaneState
	queued       bool // in the ready list
	running      bool
	timer        *time.Timer
	blockedSince time.Time // zero while the lane flows
	// mem and memBytes count the records in queue that a spill would
	// move (not spilled references, not redriven items); spillDue asks a
	// worker to spill them while the lane waits (see spillBytes), and
	// spillHeld stops asking until the lane's next attempt after a
	// spill that left as much (it failed, or a redriven item holds the
	// records behind it).
	mem       int
	memBytes  int64
	spillDue  bool
	spillHeld bool
	// shared: the lane waits for the integration (Outcome.Shared), not
	// for itself, and never spills.
	shared bool
}

// New returns a scheduler with the given number of workers.
func New(workers int, deliver DeliverFunc) *Scheduler {
	s := &Scheduler{workers: max(1, workers), deliver: deliver, parts: map[TP]*partition{}}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// SetSpill enables durable parking: a lane blocked (backing off, parked
// or paused, not Shared) for at least after has its queued items spilled
// with spill, at its attempts and, while it waits, as more arrive, and
// reads them back a page at a time with load. partitionCap is the number
// of items at which the caller stops fetching a partition (0: none); a
// waiting lane spills before it holds half of them. Call before Run.
func (s *Scheduler) SetSpill(after time.Duration, partitionCap int, spill SpillFunc, load LoadFunc) {
	s.spillAfter, s.spill, s.load = after, spill, load
	s.spillItems = spillItems
	if partitionCap > 0 {
		s.spillItems = max(1, min(spillItems, partitionCap/2))
	}
}

// SetBudget counts the Size of queued items against b (shared by the
// schedulers of one process, or one per scheduler). Call before Add.
func (s *Scheduler) SetBudget(b *Budget) {
	s.budget = b
}

// AddSpilled tells the lane of key in tp that n of its items are in
// durable storage, ahead of anything fetched (a new owner of tp calls it
// before fetching tp). They do not take part in the watermark; the lane
// reads them back a page at a time.
func (s *Scheduler) AddSpilled(tp TP, key string, n int) {
	if n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.partition(tp).lane(key)
	l.unloaded += n
	if l.blockedSince.IsZero() {
		l.blockedSince = time.Now() // it was blocked before: keep spilling while it stays so
	}
	s.enqueue(l)
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
		p.bytes += it.Size
		if s.budget != nil {
			s.budget.used.Add(it.Size)
		}
		l := p.lane(it.Key)
		l.queue = append(l.queue, it)
		l.mem++
		l.memBytes += it.Size
		s.spillIfDue(l)
		s.enqueue(l)
	}
	return p.buffered
}

// spillIfDue queues l for a spill if it waits, blocked past spillAfter,
// holding enough in memory; s.mu is held.
func (s *Scheduler) spillIfDue(l *lane) {
	if (l.memBytes >= spillBytes || l.mem >= s.spillItems) && !l.spillHeld && s.waitsToSpill(l) {
		l.spillDue = true
		s.enqueue(l)
	}
}

// waitsToSpill reports whether l waits for its next attempt on its own
// account (not Shared), blocked past spillAfter: what it holds goes to
// durable storage without waiting for the attempt; s.mu is held.
func (s *Scheduler) waitsToSpill(l *lane) bool {
	return s.spill != nil && l.state != Active && !l.shared && !l.running &&
		!l.blockedSince.IsZero() && time.Since(l.blockedSince) >= s.spillAfter
}

// enqueue puts l on the ready list if it can run, or if it waits with a
// spill due; s.mu is held.
func (s *Scheduler) enqueue(l *lane) {
	if l.queued || l.running || l.state != Active && !l.spillDue || l.empty() || l.p.revoked {
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
		if l.p.revoked || l.empty() {
			s.mu.Unlock()
			continue
		}
		l.spillDue = false
		if l.state != Active { // queued to spill while it waits (Add)
			s.spillWaiting(l)
			s.mu.Unlock()
			continue
		}
		l.spillHeld = false // an attempt: a waiting lane may spill again after it
		l.running = true
		l.p.running++
		var out Outcome
		it := s.head(ctx, l) // unlocks s.mu to load
		if it != nil {
			s.mu.Unlock()
			out = s.deliver(ctx, l.p.tp, it)
			s.mu.Lock()
		} else {
			out = Outcome{Verdict: Backoff, Delay: time.Second} // could not load: try again
		}
		// Backing off, parked and paused lanes are all blocked: past
		// spillAfter their records move to durable storage. A Shared wait
		// is the integration's, not the lane's: the caller stops fetching
		// instead.
		if out.Verdict != Done && !out.Shared && it != nil {
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
				l.mem--
				l.memBytes -= it.Size
				s.finish(l.p, it)
			}
			l.blockedSince = time.Time{}
			if l.empty() {
				delete(l.p.lanes, l.key) // lanes come and go with their tenants' traffic
			}
			s.enqueue(l)
		case Backoff, Park, Pause:
			l.state = map[Verdict]LaneState{Backoff: BackingOff, Park: Parked, Pause: Paused}[out.Verdict]
			l.shared = out.Shared
			l.timer = time.AfterFunc(out.Delay, func() {
				s.mu.Lock()
				defer s.mu.Unlock()
				l.state, l.timer = Active, nil
				s.enqueue(l)
			})
			// A lane that will be blocked spillAfter before its next
			// attempt spills then, as the attempt would have: its
			// partition may be paused at its cap, with nothing arriving
			// to ask for it (Add).
			if wait := s.spillAfter - time.Since(l.blockedSince); s.spill != nil && !out.Shared && !l.blockedSince.IsZero() && wait > 0 && wait < out.Delay {
				time.AfterFunc(wait, func() {
					s.mu.Lock()
					defer s.mu.Unlock()
					if l.mem > 0 && s.waitsToSpill(l) {
						l.spillDue = true
						s.enqueue(l)
					}
				})
			}
		}
		s.cond.Broadcast() // Revoke may be waiting for this partition
		s.mu.Unlock()
	}
}

func (l *lane) empty() bool { return len(l.queue) == 0 && l.unloaded == 0 }

// spillWaiting spills what a waiting lane holds in memory, between its
// attempts; s.mu is held on entry and exit.
func (s *Scheduler) spillWaiting(l *lane) {
	l.running = true
	l.p.running++
	moved := s.spillLane(l)
	l.running = false
	l.p.running--
	if l.memBytes >= spillBytes || l.mem >= s.spillItems {
		// More arrived during the spill, or nothing moved (the spill
		// failed, or a redriven item holds the records behind it): the
		// second not again before the lane's next attempt.
		l.spillDue, l.spillHeld = moved > 0, moved == 0
	}
	s.enqueue(l)       // its wait may have ended meanwhile (its timer, Wake)
	s.cond.Broadcast() // Revoke may be waiting for this partition
}

// head returns the lane's next item, first reading a page of its spilled
// items back when the next one is in durable storage; nil when that read
// failed. s.mu is held on entry and exit; it is released around the read.
// The caller holds the lane (running).
func (s *Scheduler) head(ctx context.Context, l *lane) *Item {
	if l.unloaded == 0 || len(l.queue) > 0 && l.queue[0].Spilled {
		return l.queue[0]
	}
	tp, key, after := l.p.tp, l.key, l.cursor
	s.mu.Unlock()
	page, err := s.load(ctx, tp, key, after, min(l.unloaded, loadPage))
	s.mu.Lock()
	if err != nil {
		return nil
	}
	if len(page) == 0 {
		// Nothing left where the count says there is more (removed by
		// someone else): go on with what is in memory.
		l.unloaded = 0
		if len(l.queue) == 0 {
			return nil
		}
		return l.queue[0]
	}
	for _, it := range page {
		it.Spilled = true
	}
	l.unloaded = max(0, l.unloaded-len(page))
	l.cursor = page[len(page)-1]
	l.queue = append(page, l.queue...)
	return l.queue[0]
}

// spillLane moves l's queued, not yet spilled items to durable storage and
// finishes their offsets; the lane keeps only their count. s.mu is held on
// entry and exit; it is released around the spill call. The caller holds
// the lane (running). It returns how many items it moved.
func (s *Scheduler) spillLane(l *lane) int {
	// Spilled references are a prefix of the queue; the records in
	// memory follow them (and the unloaded ones).
	n := 0
	for n < len(l.queue) && l.queue[n].Spilled {
		n++
	}
	// Spilled records come back before the lane's items in memory, so
	// only records ahead of the first redriven item (not a record: the
	// caller keeps it, and it stays in memory) can go, or they would
	// overtake it.
	end := n
	for end < len(l.queue) && !l.queue[end].Redriven {
		end++
	}
	items := append([]*Item(nil), l.queue[n:end]...)
	if len(items) == 0 {
		return 0
	}
	s.mu.Unlock()
	err := s.spill(l.p.tp, items)
	s.mu.Lock()
	if err != nil {
		return 0 // kept in memory; the next blocked attempt tries again
	}
	// Add only appends, and the lane is held: the queue is still the
	// references, these items, then what followed them (which stays in
	// memory, after the spilled ones, until the next blocked attempt).
	k := copy(l.queue[n:], l.queue[n+len(items):])
	clear(l.queue[n+k:])
	l.queue = l.queue[:n+k]
	l.unloaded += len(items)
	for _, it := range items {
		l.mem--
		l.memBytes -= it.Size
		if !l.p.revoked {
			s.finish(l.p, it)
		}
	}
	return len(items)
}

// finish marks it's offset done, advances the watermark and releases its
// bytes; s.mu is held.
func (s *Scheduler) finish(p *partition, it *Item) {
	offset := it.Offset
	p.buffered--
	p.bytes -= it.Size
	if s.budget != nil && !p.forgotten {
		s.budget.used.Add(-it.Size)
	}
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
		if s.budget != nil {
			s.budget.used.Add(-p.bytes) // its queued items are dropped
		}
		p.forgotten = true
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
