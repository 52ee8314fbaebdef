package lane

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// inOrder fails t unless got is 0, 1, 2, …
func inOrder(t *testing.T, got []int64) {
	t.Helper()
	for i, off := range got {
		if off != int64(i) {
			t.Fatalf("delivered out of order at %d: %v", i, got[max(0, i-3):min(len(got), i+3)])
		}
	}
}

// backingOff returns a running scheduler whose every attempt ends in
// out, spilling to a fake store after the lane has been blocked after,
// and its count of attempts.
func backingOff(t *testing.T, out Outcome, after time.Duration) (*Scheduler, *fakeStore, *atomic.Int32) {
	store := newFakeStore()
	attempts := new(atomic.Int32)
	s := New(2, func(context.Context, TP, *Item) Outcome { attempts.Add(1); return out })
	s.SetSpill(after, 0, store.spill, store.load)
	run(t, s)
	return s, store, attempts
}

func run(t *testing.T, s *Scheduler) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestLanesKeepPerKeyOrderUnderConcurrency(t *testing.T) {
	var mu sync.Mutex
	seen := map[string][]int64{}
	active := map[string]bool{}
	s := New(8, func(_ context.Context, _ TP, it *Item) Outcome {
		mu.Lock()
		if active[it.Key] {
			t.Errorf("two deliveries of lane %s at once", it.Key)
		}
		active[it.Key] = true
		mu.Unlock()
		time.Sleep(time.Duration(it.Offset%3) * 100 * time.Microsecond)
		mu.Lock()
		active[it.Key] = false
		seen[it.Key] = append(seen[it.Key], it.Offset)
		mu.Unlock()
		return Outcome{Verdict: Done}
	})
	run(t, s)
	tp := TP{"t", 0}
	for off := int64(0); off < 2000; off++ {
		s.Add(tp, &Item{Key: fmt.Sprintf("k%d", off%17), Offset: off})
	}
	waitFor(t, "all delivered", func() bool { c, _ := s.Committable(tp); return c == 2000 })
	for k, offs := range seen {
		for i := 1; i < len(offs); i++ {
			if offs[i] <= offs[i-1] {
				t.Fatalf("lane %s out of order: %v", k, offs)
			}
		}
	}
}

func TestFailingLaneDoesNotBlockItsPartition(t *testing.T) {
	var attempts atomic.Int32
	var delivered atomic.Int32
	s := New(2, func(_ context.Context, _ TP, it *Item) Outcome {
		if it.Key == "bad" {
			attempts.Add(1)
			return Outcome{Verdict: Backoff, Delay: 20 * time.Millisecond}
		}
		delivered.Add(1)
		return Outcome{Verdict: Done}
	})
	run(t, s)
	tp := TP{"t", 3}
	s.Add(tp, &Item{Key: "bad", Offset: 10})
	for off := int64(11); off < 111; off++ {
		s.Add(tp, &Item{Key: fmt.Sprintf("good%d", off%5), Offset: off})
	}
	waitFor(t, "healthy lanes delivered", func() bool { return delivered.Load() == 100 })
	waitFor(t, "the bad lane retried", func() bool { return attempts.Load() >= 3 })
	if c, _ := s.Committable(tp); c != 10 {
		t.Fatalf("watermark %d: must stay at the failing record's offset 10", c)
	}
	if n := s.LaneCounts()[BackingOff]; n != 1 {
		t.Fatalf("lane states %v", s.LaneCounts())
	}
}

func TestParkedLaneRechecksAndResumes(t *testing.T) {
	var operatorSkipped atomic.Bool
	s := New(1, func(_ context.Context, _ TP, it *Item) Outcome {
		if it.Offset == 0 && !operatorSkipped.Load() {
			return Outcome{Verdict: Park, Delay: 5 * time.Millisecond}
		}
		return Outcome{Verdict: Done}
	})
	run(t, s)
	tp := TP{"t", 0}
	s.Add(tp, &Item{Key: "a", Offset: 0}, &Item{Key: "a", Offset: 1})
	waitFor(t, "parked", func() bool { return s.LaneCounts()[Parked] == 1 })
	operatorSkipped.Store(true)
	waitFor(t, "resumed after the operator's skip", func() bool { c, _ := s.Committable(tp); return c == 2 })
}

func TestRevokeWaitsForInFlightAndReturnsWatermark(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	s := New(2, func(_ context.Context, _ TP, it *Item) Outcome {
		if it.Offset == 5 {
			started <- struct{}{}
			<-release
		}
		return Outcome{Verdict: Done}
	})
	run(t, s)
	tp := TP{"t", 1}
	s.Add(tp, &Item{Key: "a", Offset: 5}, &Item{Key: "a", Offset: 6}, &Item{Key: "b", Offset: 7})
	<-started
	got := make(chan map[TP]int64)
	go func() { got <- s.Revoke(context.Background(), []TP{tp}) }()
	select {
	case <-got:
		t.Fatal("Revoke returned while a delivery was in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	offs := <-got
	// 5 finished; 6 was queued behind it and dropped; 7 may or may not have run.
	if o := offs[tp]; o != 6 {
		t.Fatalf("revoke committed %d, want 6 (the first unfinished)", o)
	}
	if _, ok := s.Committable(tp); ok {
		t.Fatal("revoked partition still tracked")
	}
}

// fakeStore is durable storage for spilled items: per lane, in order,
// with a sequence number as the reference.
type fakeStore struct {
	mu     sync.Mutex
	seq    int64
	rows   map[string][]int64 // lane key → seqs, in order
	offset map[int64]int64    // seq → offset
	loads  atomic.Int32
	maxRef atomic.Int32 // the most references one load returned
}

func newFakeStore() *fakeStore {
	return &fakeStore{rows: map[string][]int64{}, offset: map[int64]int64{}}
}

func (f *fakeStore) spill(_ TP, items []*Item) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, it := range items {
		f.seq++
		f.rows[it.Key] = append(f.rows[it.Key], f.seq)
		f.offset[f.seq] = it.Offset
	}
	return nil
}

func (f *fakeStore) load(_ context.Context, _ TP, key string, after *Item, n int) ([]*Item, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loads.Add(1)
	from := int64(0)
	if after != nil {
		from = after.Value.(int64)
	}
	var out []*Item
	for _, seq := range f.rows[key] {
		if seq > from && len(out) < n {
			out = append(out, &Item{Key: key, Offset: f.offset[seq], Value: seq})
		}
	}
	if int32(len(out)) > f.maxRef.Load() {
		f.maxRef.Store(int32(len(out)))
	}
	return out, nil
}

// drop deletes a delivered spilled item, as the engine does.
func (f *fakeStore) drop(key string, seq int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rows := f.rows[key]
	for i, s := range rows {
		if s == seq {
			f.rows[key] = append(rows[:i:i], rows[i+1:]...)
			return
		}
	}
}

func (f *fakeStore) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.rows[key])
}

// stuck is a running scheduler whose lane "stuck" ends each attempt in
// out while blocked is set (counting them), then delivers, recording
// its offsets; other lanes deliver at once. Lanes spill to a fake store
// at once (spillAfter 0), with the partition cap given; delivered
// spilled items are dropped from it, as the engine does.
type stuck struct {
	s        *Scheduler
	store    *fakeStore
	budget   *Budget
	blocked  atomic.Bool
	attempts atomic.Int32
	other    atomic.Bool // a record of another lane was delivered
	mu       sync.Mutex
	got      []int64
}

func newStuck(t *testing.T, out Outcome, partitionCap int) *stuck {
	h := &stuck{store: newFakeStore(), budget: NewBudget(1 << 30)}
	h.blocked.Store(true)
	h.s = New(2, func(_ context.Context, _ TP, it *Item) Outcome {
		if it.Key == "stuck" && h.blocked.Load() {
			h.attempts.Add(1)
			return out
		}
		if it.Spilled {
			h.store.drop(it.Key, it.Value.(int64))
		}
		if it.Key != "stuck" {
			h.other.Store(true)
			return Outcome{Verdict: Done}
		}
		h.mu.Lock()
		h.got = append(h.got, it.Offset)
		h.mu.Unlock()
		return Outcome{Verdict: Done}
	})
	h.s.SetBudget(h.budget)
	h.s.SetSpill(0, partitionCap, h.store.spill, h.store.load)
	run(t, h.s)
	return h
}

// drained waits until n of stuck's records were delivered and returns
// their offsets.
func (h *stuck) drained(t *testing.T, n int) []int64 {
	t.Helper()
	waitFor(t, "the lane drained", func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.got) == n })
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int64(nil), h.got...)
}

// A blocked lane's records move to storage and the lane keeps only their
// count: the watermark passes them, the budget gets their bytes back, and
// once unblocked the lane reads them back a page at a time, in order,
// followed by what arrived in memory meanwhile.
func TestSpilledLaneKeepsCountReadsPagesBackInOrder(t *testing.T) {
	h := newStuck(t, Outcome{Verdict: Park, Delay: time.Millisecond}, 0)
	s, store, budget := h.s, h.store, h.budget
	tp := TP{"t", 0}
	const n = 1000
	for off := int64(0); off < n; off++ {
		s.Add(tp, &Item{Key: "stuck", Offset: off, Size: 100})
	}
	s.Add(tp, &Item{Key: "other", Offset: n, Size: 100})
	waitFor(t, "all spilled and the watermark past them", func() bool {
		c, _ := s.Committable(tp)
		return store.count("stuck") == n && c == n+1
	})
	if u := budget.Used(); u != 0 {
		t.Fatalf("budget still counts %d bytes of spilled records", u)
	}
	s.mu.Lock()
	if l := s.parts[tp].lanes["stuck"]; l == nil || len(l.queue) > loadPage || l.unloaded+len(l.queue) != n {
		t.Errorf("lane holds %d references and counts %d unloaded, want at most %d references", len(l.queue), l.unloaded, loadPage)
	}
	s.mu.Unlock()
	s.Add(tp, &Item{Key: "stuck", Offset: n + 1, Size: 100}) // arrives while parked
	h.blocked.Store(false)
	got := h.drained(t, n+1)
	inOrder(t, got[:n])
	if got[n] != n+1 {
		t.Fatalf("the record that arrived while parked came at %d, not last", got[n])
	}
	if store.loads.Load() < n/loadPage || store.maxRef.Load() > loadPage {
		t.Fatalf("%d loads, at most %d references each: want pages of at most %d", store.loads.Load(), store.maxRef.Load(), loadPage)
	}
	if c, _ := s.Committable(tp); c != n+2 {
		t.Fatalf("watermark %d, want %d", c, n+2)
	}
}

// A lane blocked past spillAfter that waits for its next attempt (an
// hour away here) spills what arrives as it arrives, not at that attempt:
// it never holds spillItems records, or half the partition's cap, in
// memory; the watermark passes them and the budget gets their bytes back.
// Once it flows again, everything comes back in order.
func TestWaitingLaneSpillsWhatArrives(t *testing.T) {
	for _, c := range []struct {
		cap, most int // the partition's cap (SetSpill), the most a lane may hold
	}{{0, spillItems}, {100, 50}} {
		t.Run(fmt.Sprintf("cap %d", c.cap), func(t *testing.T) {
			h := newStuck(t, Outcome{Verdict: Backoff, Delay: time.Hour}, c.cap)
			s, store, budget := h.s, h.store, h.budget
			tp := TP{"t", 0}
			s.Add(tp, &Item{Key: "stuck", Offset: 0, Size: 100})
			waitFor(t, "the first attempt and its spill", func() bool { return store.count("stuck") == 1 })
			const n = 2000
			inMemory := func() int {
				s.mu.Lock()
				defer s.mu.Unlock()
				return s.parts[tp].lanes["stuck"].mem
			}
			for off := int64(1); off <= n; off++ {
				s.Add(tp, &Item{Key: "stuck", Offset: off, Size: 100})
				if off%500 == 0 { // a fetch's worth arrived: it goes to storage before the next
					waitFor(t, fmt.Sprintf("fewer than %d records in memory", c.most), func() bool { return inMemory() < c.most })
				}
			}
			s.Add(tp, &Item{Key: "other", Offset: n + 1, Size: 100})
			waitFor(t, "what arrived spilled, all but the last few, and the other lane's record delivered", func() bool {
				return store.count("stuck") > n-c.most && h.other.Load()
			})
			if a := h.attempts.Load(); a != 1 {
				t.Fatalf("%d attempts, want 1 (the next is an hour away)", a)
			}
			held := inMemory()
			if spilled := store.count("stuck"); spilled+held != n+1 {
				t.Fatalf("%d spilled and %d in memory, want %d in all", spilled, held, n+1)
			}
			want := int64(n + 2) // past everything
			if held > 0 {
				want = int64(store.count("stuck")) // the first record in memory
			}
			if c, _ := s.Committable(tp); c != want {
				t.Fatalf("watermark %d, want %d (past every spilled record)", c, want)
			}
			if u := budget.Used(); u != int64(held)*100 {
				t.Fatalf("budget counts %d bytes, want %d (the records in memory)", u, held*100)
			}
			h.blocked.Store(false)
			s.Wake(tp, "stuck")
			inOrder(t, h.drained(t, n+1))
		})
	}
}

// A lane whose next attempt comes after it has been blocked spillAfter
// spills then, not at that attempt, even with nothing more arriving (its
// partition paused at its cap, say).
func TestWaitingLaneSpillsAtSpillAfter(t *testing.T) {
	s, store, attempts := backingOff(t, Outcome{Verdict: Backoff, Delay: time.Hour}, 200*time.Millisecond)
	tp := TP{"t", 0}
	s.Add(tp, &Item{Key: "stuck", Offset: 0, Size: 100})
	waitFor(t, "the first attempt", func() bool { return attempts.Load() == 1 })
	for off := int64(1); off <= 10; off++ {
		s.Add(tp, &Item{Key: "stuck", Offset: off, Size: 100})
	}
	waitFor(t, "the lane spilled at spillAfter", func() bool { return store.count("stuck") == 11 })
	if a := attempts.Load(); a != 1 {
		t.Fatalf("%d attempts, want 1 (the next is an hour away)", a)
	}
	if c, _ := s.Committable(tp); c != 11 {
		t.Fatalf("watermark %d, want 11", c)
	}
}

// A waiting lane whose spill fails keeps its records in memory and does
// not try again on every record that arrives: only at its next attempt.
func TestWaitingLaneSpillFailureWaitsForTheAttempt(t *testing.T) {
	var calls atomic.Int32
	var attempts atomic.Int32
	s := New(2, func(_ context.Context, _ TP, it *Item) Outcome {
		attempts.Add(1)
		return Outcome{Verdict: Backoff, Delay: time.Hour}
	})
	s.SetSpill(0, 0, func(TP, []*Item) error { calls.Add(1); return fmt.Errorf("database down") }, newFakeStore().load)
	run(t, s)
	tp := TP{"t", 0}
	s.Add(tp, &Item{Key: "stuck", Offset: 0, Size: 100})
	waitFor(t, "the first attempt", func() bool { return calls.Load() == 1 })
	for off := int64(1); off <= 2000; off++ {
		s.Add(tp, &Item{Key: "stuck", Offset: off, Size: 100})
	}
	waitFor(t, "the waiting lane's spill", func() bool { return calls.Load() >= 2 })
	time.Sleep(50 * time.Millisecond)
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d spills for 2,000 records while the database is down, want 2 (the attempt's, one while waiting)", n)
	}
	if c, _ := s.Committable(tp); c != 0 {
		t.Fatalf("watermark %d: records that were not spilled were finished", c)
	}
	s.Wake(tp, "stuck") // the next attempt: its spill, and then one while waiting again
	waitFor(t, "the next attempt", func() bool { return attempts.Load() == 2 })
	waitFor(t, "its spill", func() bool { return calls.Load() >= 3 })
}

// Counts given at assignment (AddSpilled) come before anything fetched.
func TestAddSpilledGoesBeforeFetchedRecords(t *testing.T) {
	store := newFakeStore()
	tp := TP{"t", 2}
	for off := int64(0); off < 600; off++ {
		if err := store.spill(tp, []*Item{{Key: "a", Offset: off}}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var got []int64
	s := New(4, func(_ context.Context, _ TP, it *Item) Outcome {
		if it.Spilled {
			store.drop(it.Key, it.Value.(int64))
		}
		mu.Lock()
		got = append(got, it.Offset)
		mu.Unlock()
		return Outcome{Verdict: Done}
	})
	s.SetSpill(time.Hour, 0, store.spill, store.load)
	s.AddSpilled(tp, "a", 600)
	s.Add(tp, &Item{Key: "a", Offset: 600}, &Item{Key: "a", Offset: 601})
	run(t, s)
	waitFor(t, "all delivered", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 602 })
	inOrder(t, got)
}

// A Shared wait (the integration's, not the lane's) never spills.
func TestSharedWaitDoesNotSpill(t *testing.T) {
	s, store, attempts := backingOff(t, Outcome{Verdict: Backoff, Delay: time.Millisecond, Shared: true}, 0)
	tp := TP{"t", 0}
	s.Add(tp, &Item{Key: "a", Offset: 0}, &Item{Key: "a", Offset: 1})
	waitFor(t, "several attempts", func() bool { return attempts.Load() >= 5 })
	if n := store.count("a"); n != 0 {
		t.Fatalf("%d records spilled for a shared wait", n)
	}
	if c, _ := s.Committable(tp); c != 0 {
		t.Fatalf("watermark %d moved", c)
	}
}

// A lane blocked by its own failure long enough to spill, then waiting
// for the integration (a Shared wait: the breaker opened), spills nothing
// more of what arrives: the caller stops fetching instead.
func TestSharedWaitAfterOwnFailureKeepsArrivals(t *testing.T) {
	store := newFakeStore()
	var attempts atomic.Int32
	s := New(2, func(_ context.Context, _ TP, it *Item) Outcome {
		if attempts.Add(1) == 1 {
			return Outcome{Verdict: Backoff, Delay: 300 * time.Millisecond}
		}
		return Outcome{Verdict: Backoff, Delay: time.Hour, Shared: true}
	})
	s.SetSpill(50*time.Millisecond, 0, store.spill, store.load)
	run(t, s)
	tp := TP{"t", 0}
	s.Add(tp, &Item{Key: "a", Offset: 0, Size: 100})
	waitFor(t, "the second attempt, a shared wait", func() bool { return attempts.Load() == 2 })
	spilled := store.count("a") // the first failure's: 1
	for off := int64(1); off <= 1000; off++ {
		s.Add(tp, &Item{Key: "a", Offset: off, Size: 100})
	}
	time.Sleep(100 * time.Millisecond)
	if n := store.count("a"); n != spilled {
		t.Fatalf("%d records spilled during a shared wait (%d before it)", n-spilled, spilled)
	}
}

// The budget counts queued bytes until they are delivered or their
// partition is revoked.
func TestBudgetCountsQueuedBytes(t *testing.T) {
	release := make(chan struct{})
	s := New(2, func(_ context.Context, tp TP, it *Item) Outcome {
		if tp.Partition == 0 && it.Offset == 0 {
			<-release
		}
		return Outcome{Verdict: Done}
	})
	b := NewBudget(1000)
	s.SetBudget(b)
	run(t, s)
	tp, tp2 := TP{"t", 0}, TP{"t", 1}
	s.Add(tp, &Item{Key: "a", Offset: 0, Size: 600}, &Item{Key: "a", Offset: 1, Size: 600})
	s.Add(tp2, &Item{Key: "b", Offset: 0, Size: 5000}) // larger than the budget alone: still taken
	waitFor(t, "b delivered", func() bool { c, _ := s.Committable(tp2); return c == 1 })
	if u := b.Used(); u != 1200 || !b.Over() {
		t.Fatalf("used %d (over %v), want 1200, over", u, b.Over())
	}
	close(release)
	waitFor(t, "a delivered", func() bool { c, _ := s.Committable(tp); return c == 2 })
	if u := b.Used(); u != 0 || !b.Under() {
		t.Fatalf("used %d after delivery, want 0", u)
	}
	s2 := New(1, func(ctx context.Context, _ TP, it *Item) Outcome {
		return Outcome{Verdict: Park, Delay: time.Hour}
	})
	b2 := NewBudget(1000)
	s2.SetBudget(b2)
	run(t, s2)
	s2.Add(tp, &Item{Key: "a", Offset: 0, Size: 300}, &Item{Key: "a", Offset: 1, Size: 300})
	waitFor(t, "parked", func() bool { return s2.LaneCounts()[Parked] == 1 })
	s2.Revoke(context.Background(), []TP{tp})
	if u := b2.Used(); u != 0 {
		t.Fatalf("used %d after revoke, want 0", u)
	}
}

// A delivery that outlives Revoke's wait does not release its bytes a
// second time.
func TestBudgetAfterRevokeTimesOut(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	s := New(1, func(_ context.Context, _ TP, it *Item) Outcome {
		if it.Key == "a" {
			close(started)
			<-release
		}
		return Outcome{Verdict: Done}
	})
	b := NewBudget(1000)
	s.SetBudget(b)
	run(t, s)
	tp := TP{"t", 0}
	s.Add(tp, &Item{Key: "a", Offset: 0, Size: 100}, &Item{Key: "x", Offset: 1, Size: 100})
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	s.Revoke(ctx, []TP{tp})
	if u := b.Used(); u != 0 {
		t.Fatalf("used %d after revoke", u)
	}
	close(release)
	// One worker: it takes b only once it finished a's bookkeeping.
	s.Add(TP{"t", 1}, &Item{Key: "b", Offset: 0, Size: 300})
	waitFor(t, "b delivered", func() bool { c, _ := s.Committable(TP{"t", 1}); return c == 1 })
	if u := b.Used(); u != 0 {
		t.Fatalf("used %d after the late delivery and b, want 0", u)
	}
}

// A redriven item goes to the end of its lane and wakes the lane at once
// (a parked head is attempted again without waiting out its delay); it
// never holds back the watermark. Wake alone wakes a waiting lane; a
// lane that does not exist is left alone.
func TestRedriveAppendsAndWakesTheLane(t *testing.T) {
	var mu sync.Mutex
	var order []string
	parkHead := atomic.Bool{}
	parkHead.Store(true)
	s := New(2, func(_ context.Context, _ TP, it *Item) Outcome {
		name := fmt.Sprint(it.Value)
		if name == "a0" && parkHead.Load() {
			return Outcome{Verdict: Park, Delay: time.Hour}
		}
		mu.Lock()
		order = append(order, name)
		mu.Unlock()
		return Outcome{Verdict: Done}
	})
	run(t, s)
	tp := TP{"t", 0}
	s.Add(tp, &Item{Key: "a", Offset: 0, Value: "a0"}, &Item{Key: "a", Offset: 1, Value: "a1"}, &Item{Key: "b", Offset: 2, Value: "b2"})
	waitFor(t, "a parked, b delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		c, _ := s.Committable(tp)
		return s.LaneCounts()[Parked] == 1 && c == 0 && len(order) == 1
	})
	s.Wake(TP{"t", 9}, "nobody") // no such partition: nothing happens
	parkHead.Store(false)        // the operator's retry made it deliverable
	s.Redrive(tp, &Item{Key: "a", Offset: -1, Value: "redriven"})
	waitFor(t, "the parked lane woken and drained", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 4
	})
	if got := fmt.Sprint(order); got != "[b2 a0 a1 redriven]" {
		t.Fatalf("delivery order %s, want [b2 a0 a1 redriven]", got)
	}
	if c, _ := s.Committable(tp); c != 3 {
		t.Fatalf("watermark %d, want 3 (the redriven item is not an offset)", c)
	}

	// Wake alone ends a wait.
	parkHead.Store(true)
	s.Add(tp, &Item{Key: "a", Offset: 3, Value: "a0"})
	waitFor(t, "parked again", func() bool { return s.LaneCounts()[Parked] == 1 })
	parkHead.Store(false)
	s.Wake(tp, "a")
	waitFor(t, "woken", func() bool { c, _ := s.Committable(tp); return c == 4 })
}

// A blocked lane spills its queued records, never a redriven item (the
// caller keeps those itself; its spill function knows only records), and
// never records behind a redriven one (read back, they would overtake
// it): the lane delivers in its order.
func TestRedrivenItemsAreNeverSpilled(t *testing.T) {
	var spilled atomic.Int64
	blocked := atomic.Bool{}
	blocked.Store(true)
	store := newFakeStore()
	var mu sync.Mutex
	var order []string
	s := New(1, func(_ context.Context, _ TP, it *Item) Outcome {
		if blocked.Load() {
			return Outcome{Verdict: Backoff, Delay: 5 * time.Millisecond}
		}
		name := fmt.Sprint(it.Offset)
		if it.Redriven {
			name = "redriven"
		}
		if it.Spilled {
			store.drop(it.Key, it.Value.(int64))
		}
		mu.Lock()
		order = append(order, name)
		mu.Unlock()
		return Outcome{Verdict: Done}
	})
	s.SetSpill(0, 0, func(tp TP, items []*Item) error {
		for _, it := range items {
			if it.Redriven {
				t.Errorf("a redriven item was spilled: %+v", it)
			}
			spilled.Add(1)
		}
		return store.spill(tp, items)
	}, store.load)
	run(t, s)
	tp := TP{"t", 0}
	s.Add(tp, &Item{Key: "a", Offset: 0}, &Item{Key: "a", Offset: 1})
	s.Redrive(tp, &Item{Key: "a", Offset: -1})
	s.Add(tp, &Item{Key: "a", Offset: 2})
	waitFor(t, "the records ahead of the redriven item spilled", func() bool { return spilled.Load() == 2 })
	blocked.Store(false)
	waitFor(t, "the lane drained", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 4 })
	if got := fmt.Sprint(order); got != "[0 1 redriven 2]" {
		t.Fatalf("delivery order %s, want [0 1 redriven 2]", got)
	}
	if n := spilled.Load(); n != 2 {
		t.Fatalf("%d records spilled, want the 2 ahead of the redriven item", n)
	}
}
