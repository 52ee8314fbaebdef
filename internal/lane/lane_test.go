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
// caller keeps those itself; its spill function knows only records).
func TestRedrivenItemsAreNeverSpilled(t *testing.T) {
	var spilled atomic.Int64
	blocked := atomic.Bool{}
	blocked.Store(true)
	s := New(1, func(_ context.Context, _ TP, it *Item) Outcome {
		if blocked.Load() {
			return Outcome{Verdict: Backoff, Delay: 5 * time.Millisecond}
		}
		return Outcome{Verdict: Done}
	})
	s.SetSpill(0, func(_ TP, items []*Item) ([]*Item, error) {
		refs := make([]*Item, len(items))
		for i, it := range items {
			if it.Redriven {
				t.Errorf("a redriven item was spilled: %+v", it)
			}
			spilled.Add(1)
			refs[i] = &Item{Key: it.Key, Offset: it.Offset, Value: it.Value}
		}
		return refs, nil
	})
	run(t, s)
	tp := TP{"t", 0}
	s.Redrive(tp, &Item{Key: "a", Offset: -1, Value: "redriven"})
	s.Add(tp, &Item{Key: "a", Offset: 0, Value: "a0"}, &Item{Key: "a", Offset: 1, Value: "a1"})
	waitFor(t, "the records spilled", func() bool { return spilled.Load() == 2 })
	blocked.Store(false)
	waitFor(t, "the lane drained", func() bool { return s.LaneCounts()[BackingOff] == 0 && s.Buffered(tp) == 0 })
}
