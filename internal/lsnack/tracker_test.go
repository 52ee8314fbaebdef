package lsnack

import (
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

func TestWatermarkWaitsForEarlierTransactions(t *testing.T) {
	tr := New(100)
	a := tr.Add(110, time.Time{})
	b := tr.Add(120, time.Time{})
	c := tr.Add(130, time.Time{})
	tr.Done(c, nil)
	tr.Done(b, nil)
	if lsn, _, n := tr.Acked(); lsn != 100 || n != 1 {
		t.Fatalf("after later txs acked: watermark %v, in flight %d; want 100, 1", lsn, n)
	}
	tr.Done(a, nil)
	if lsn, _, n := tr.Acked(); lsn != 130 || n != 0 {
		t.Fatalf("after all acked: watermark %v, in flight %d; want 130, 0", lsn, n)
	}
}

func TestFailureHoldsWatermark(t *testing.T) {
	tr := New(100)
	a := tr.Add(110, time.Time{})
	b := tr.Add(120, time.Time{})
	boom := errors.New("boom")
	tr.Done(a, boom)
	tr.Done(b, nil)
	if lsn, _, _ := tr.Acked(); lsn != 100 {
		t.Fatalf("watermark moved past a failed transaction: %v", lsn)
	}
	if !errors.Is(tr.Err(), boom) {
		t.Fatalf("Err = %v, want boom", tr.Err())
	}
}

func TestAdvanceOnlyWhenIdle(t *testing.T) {
	tr := New(100)
	p := tr.Add(110, time.Time{})
	if tr.Advance(500) {
		t.Fatal("advanced with a transaction in flight")
	}
	tr.Done(p, nil)
	if !tr.Advance(500) {
		t.Fatal("did not advance when idle")
	}
	if tr.Advance(400) {
		t.Fatal("moved backwards")
	}
}

// Random completion order from many goroutines: the watermark only ever
// equals an end LSN whose predecessors are all done.
func TestConcurrentCompletionNeverSkips(t *testing.T) {
	tr := New(0)
	const n = 5000
	ps := make([]*Pending, n)
	for i := range ps {
		ps[i] = tr.Add(pglogrepl.LSN(i+1), time.Time{})
	}
	done := make([]bool, n)
	var mu sync.Mutex
	order := rand.Perm(n)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for j := w; j < n; j += 8 {
				i := order[j]
				mu.Lock()
				done[i] = true
				mu.Unlock()
				tr.Done(ps[i], nil)
				lsn, _, _ := tr.Acked()
				mu.Lock()
				for k := 0; k < int(lsn); k++ {
					if !done[k] {
						t.Errorf("watermark %d passed transaction %d which is not done", lsn, k+1)
					}
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	if lsn, _, inflight := tr.Acked(); lsn != n || inflight != 0 {
		t.Fatalf("final watermark %d in flight %d", lsn, inflight)
	}
}

// A transaction added at its Begin (end unknown, records already in
// flight) holds the watermark until its end is set and it is done; a
// failure before its end is known is kept.
func TestTransactionAddedBeforeItsEndIsKnown(t *testing.T) {
	tr := New(100)
	a := tr.Add(110, time.Time{})
	b := tr.Add(0, time.Time{}) // being received
	tr.Done(a, nil)
	if lsn, _, n := tr.Acked(); lsn != 110 || n != 1 {
		t.Fatalf("watermark %v, in flight %d; want 110, 1", lsn, n)
	}
	if tr.Advance(500) {
		t.Fatal("advanced past a transaction still being received")
	}
	tr.End(b, 150)
	tr.Done(b, nil)
	if lsn, _, n := tr.Acked(); lsn != 150 || n != 0 {
		t.Fatalf("watermark %v, in flight %d; want 150, 0", lsn, n)
	}

	c := tr.Add(0, time.Time{})
	boom := errors.New("boom")
	tr.Done(c, boom) // a record failed before the Commit arrived
	tr.End(c, 170)
	if lsn, _, _ := tr.Acked(); lsn != 150 || !errors.Is(tr.Err(), boom) {
		t.Fatalf("watermark %v, err %v; want 150 and boom", lsn, tr.Err())
	}
}

// A hold keeps the watermark before the transactions added after it; once
// released with a last transaction, the watermark moves only when that
// transaction and everything before it are acknowledged: never to a
// position inside the held range, where a restarted reader would miss the
// window's start.
func TestHoldKeepsTheWatermarkOutOfTheHeldRange(t *testing.T) {
	tr := New(100)
	a := tr.Add(110, time.Time{})
	h := tr.Hold()
	b := tr.Add(120, time.Time{})
	c := tr.Add(130, time.Time{})
	d := tr.Add(140, time.Time{})
	tr.Done(a, nil)
	tr.Done(b, nil)
	tr.Done(d, nil)
	if lsn, _, n := tr.Acked(); lsn != 110 || n != 2 {
		t.Fatalf("held: watermark %v, in flight %d; want 110, 2", lsn, n)
	}
	tr.Done(h, nil) // acknowledgements do not end a hold
	tr.Release(h, c)
	if lsn, _, _ := tr.Acked(); lsn != 110 {
		t.Fatalf("released with c in flight: watermark %v, want 110 (not 120, inside the held range)", lsn)
	}
	tr.Done(c, nil)
	if lsn, _, n := tr.Acked(); lsn != 140 || n != 0 {
		t.Fatalf("after c: watermark %v, in flight %d; want 140, 0", lsn, n)
	}
	if tr.Advance(150) != true {
		t.Fatal("idle tracker did not advance")
	}
}

// Overlapping holds: the outer one waits for the inner one.
func TestNestedHolds(t *testing.T) {
	tr := New(100)
	outer := tr.Hold()
	a := tr.Add(110, time.Time{})
	inner := tr.Hold()
	b := tr.Add(120, time.Time{})
	c := tr.Add(130, time.Time{})
	tr.Done(a, nil)
	tr.Done(b, nil)
	tr.Done(c, nil)
	tr.Release(outer, b)
	if lsn, _, _ := tr.Acked(); lsn != 100 {
		t.Fatalf("inner hold open: watermark %v, want 100", lsn)
	}
	tr.Release(inner, c)
	if lsn, _, n := tr.Acked(); lsn != 130 || n != 0 {
		t.Fatalf("both released: watermark %v, in flight %d; want 130, 0", lsn, n)
	}
	tr2 := New(100)
	h := tr2.Hold()
	x := tr2.Add(110, time.Time{})
	tr2.Done(x, nil)
	tr2.Release(h, nil)
	if lsn, _, _ := tr2.Acked(); lsn != 110 {
		t.Fatalf("released now: watermark %v, want 110", lsn)
	}
}

// A steady stream (each transaction acknowledged while others are in
// flight) keeps the queue's array bounded by a few times the
// transactions in flight, and the watermark follows the oldest.
func TestSteadyStreamKeepsTheQueueBounded(t *testing.T) {
	const inFlight = 100
	tr := New(0)
	var live []*Pending
	for i := 1; i <= 100_000; i++ {
		live = append(live, tr.Add(pglogrepl.LSN(i), time.Time{}))
		if len(live) > inFlight {
			tr.Done(live[0], nil)
			live = live[1:]
		}
		if c := cap(tr.queue); c > 4*inFlight {
			t.Fatalf("after %d transactions the queue's array holds %d slots for %d in flight", i, c, len(tr.queue))
		}
	}
	if lsn, _, n := tr.Acked(); lsn != pglogrepl.LSN(100_000-inFlight) || n != inFlight {
		t.Fatalf("watermark %v with %d in flight; want %v with %d", lsn, n, pglogrepl.LSN(100_000-inFlight), inFlight)
	}
}
